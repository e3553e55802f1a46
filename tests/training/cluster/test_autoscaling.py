"""A cluster that starts empty, on one machine: Ray's fake multi-node autoscaler.

The head (`ray start --head --autoscaling-config=...` with `RAY_FAKE_CLUSTER=1`) offers no CPUs;
worker nodes of 1 CPU (0 to 3 of them) are started by the same autoscaler code the cloud
launchers run, as real raylets on this machine. Against it, over `avtime submit` (real SeaweedFS
S3, a real `mlflow server`):
(a) a preprocess grows the cluster and finishes; (b) a 2-worker smoke training grows it and
finishes, with its checkpoints on S3 and a FINISHED MLflow run; (c) a worker node's raylet is
killed mid-training: the autoscaler replaces the node and training resumes from the last
checkpoint in the same MLflow run; (d) a request the cluster can never meet fails in one line.

The module's Ray processes are found by their own temp dir and stopped by PID (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
BUCKET = "autoscale-it"
EXPERIMENT = "autoscale-it"
MAX_WORKERS = 3
_DROP = ("AWS_", "MLFLOW_", "RAY_", "AVTIME_CLUSTER")


@dataclass(frozen=True)
class Cluster:
    gcs: str  # host:port for RAY_ADDRESS
    dashboard: str  # http URL for `avtime submit --address`
    temp_dir: str


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without credentials or Ray/MLflow/S3 settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"  # this test cluster only
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def autoscaling_config(gcs_port: int) -> dict[str, object]:
    """A fake_multinode cluster: a head with no CPUs, 0-3 workers of 1 CPU each."""
    small = 100 * 1024 * 1024
    return {
        "cluster_name": f"avtime-fake-{gcs_port}",
        "max_workers": MAX_WORKERS,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": 1, "object_store_memory": small},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": 0.2,
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands",
                           "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
                           "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }  # fmt: skip


def own_pids(*marks: str) -> list[int]:
    """Processes whose command line names one of `marks` (this module's Ray temp dir, or its
    GCS address for the processes that name no path), and nobody else's."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace") + " "
        if any(m in cmdline for m in marks):
            pids.append(int(entry.name))
    return pids


def stop_own(*marks: str) -> None:
    """SIGTERM, then SIGKILL, every process of this module's Ray."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in own_pids(*marks):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while own_pids(*marks) and time.monotonic() < deadline:
            time.sleep(0.5)


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _wait_for_jobs(url: str, timeout: float) -> None:
    """The job API answers once the head's job agent is up (it can take ~20 s)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    gcs, dash, client, agent, agent_grpc, metrics, rtenv, nm, om, worker = _ports(10)
    temp_dir = f"/tmp/avtime-as-{gcs}"  # short: Ray's socket paths live under it
    cfg = tmp_path_factory.mktemp("autoscaler") / "cluster.json"
    cfg.write_text(json.dumps(autoscaling_config(gcs)))
    env = clean_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    cmd = [
        str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=0",
        f"--autoscaling-config={cfg}", f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        "--object-store-memory=100000000", "--disable-usage-stats",
        # free ports, so several clusters can share the machine
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rtenv}",
        f"--node-manager-port={nm}", f"--object-manager-port={om}",
        f"--min-worker-port={worker}", f"--max-worker-port={worker + 100}",
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        url = f"http://127.0.0.1:{dash}"
        _wait_for_jobs(url, timeout=120)
        yield Cluster(gcs=f"127.0.0.1:{gcs}", dashboard=url, temp_dir=temp_dir)
    finally:
        stop_own(temp_dir, f":{gcs} ")


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str
    first_line_at: dict[str, float]  # a marker -> seconds after the start of its first line
    started_unix: float  # when `avtime submit` was started


def submit(
    cluster: Cluster,
    s3_env: dict[str, str],
    *args: str,
    markers: tuple[str, ...] = (),
    on_line=None,
) -> Job:  # type: ignore[no-untyped-def]
    """`avtime submit --address DASHBOARD --env AWS_* ARGS...`, its output timed line by line."""
    cmd = [str(BIN / "avtime"), "submit", "--address", cluster.dashboard,
           "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY", *args]  # fmt: skip
    t0, started = time.monotonic(), time.time()
    proc = subprocess.Popen(
        cmd, env=clean_env(**s3_env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True)
    reader.start()
    lines, seen = [], {}
    for line in proc.stdout or []:
        lines.append(line)
        for m in markers:
            if m in line and m not in seen:
                seen[m] = time.monotonic() - t0
        if on_line is not None:
            on_line(line)
    proc.wait(timeout=900)
    reader.join(timeout=10)
    return Job(proc.returncode, "".join(lines), "".join(err), seen, started)


@pytest.fixture(scope="module")
def raw_videos(s3_server, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    """Real mp4s with audio (written by `avtime synth`) on the S3 server."""
    from avtime.training.cli.main import main

    raw = tmp_path_factory.mktemp("raw")
    args = ["synth", str(raw), "--videos", "3", "--seconds", "2", "--quiet", "--workers", "1"]
    assert main(args) == 0
    s3_server.bucket(BUCKET)
    s3_server.filesystem().put(f"{raw}/", f"{BUCKET}/raw/", recursive=True)
    return f"s3://{BUCKET}/raw"


@pytest.fixture(scope="module")
def shards(cluster: Cluster, raw_videos: str, s3_server) -> tuple[Job, str]:  # type: ignore[no-untyped-def]
    """(a)'s job: `avtime preprocess` on the empty cluster."""
    dst = f"s3://{BUCKET}/shards"
    job = submit(
        cluster, s3_server.env, "--", "avtime", "preprocess", raw_videos, dst, "--workers", "2"
    )
    return job, dst


def _cpus(cluster: Cluster) -> float:
    out = subprocess.run(
        [str(BIN / "python"), "-c",
         "import ray; ray.init(log_to_driver=False); print(ray.cluster_resources().get('CPU', 0))"],
        env=clean_env(RAY_ADDRESS=cluster.gcs), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_a_preprocess_grows_the_empty_cluster(cluster: Cluster, shards, s3_server) -> None:  # type: ignore[no-untyped-def]
    job, dst = shards
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    # it found the cluster empty (the head offers no CPUs) and waited for the autoscaler
    assert "avtime preprocess: waiting for the cluster: 0/2 CPUs" in job.stdout
    manifest = json.loads(s3_server.filesystem().cat(f"{dst.removeprefix('s3://')}/manifest.json"))
    assert manifest["counts"]["inputs"] == 3 and manifest["counts"]["rows"] >= 3


def _wait_until_empty(cluster: Cluster, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _cpus(cluster) > 0:
        assert time.monotonic() < deadline, "the idle worker nodes were not removed"
        time.sleep(5)


def _train_args(shards_uri: str, mlflow_uri: str, name: str, *sets: str) -> list[str]:
    return [
        "--mlflow-uri", mlflow_uri, "--",
        "avtime", "train", "--config", "smoke", "--data", shards_uri, "--experiment", EXPERIMENT,
        "--name", name, "--set", "train.num_workers=2",
        "--set", f"train.storage_path=s3://{BUCKET}/checkpoints", *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip


def _summary(job: Job) -> dict[str, object]:
    line = next(x for x in reversed(job.stdout.splitlines()) if x.startswith("{"))
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.mark.integration
def test_b_training_grows_the_cluster_and_finishes(
    cluster: Cluster,
    shards,
    s3_server,
    mlflow_server,  # type: ignore[no-untyped-def]
) -> None:
    assert shards[0].returncode == 0
    _wait_until_empty(cluster)  # (a)'s nodes go once idle: the training starts from nothing
    job = submit(
        cluster, s3_server.env, *_train_args(shards[1], mlflow_server.uri, "grow"),
        markers=("waiting for the cluster",),
    )  # fmt: skip
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "avtime train: waiting for the cluster: 0/1.5 CPUs" in job.stdout
    steps = _listing(s3_server.filesystem(), f"{BUCKET}/checkpoints/grow")
    assert any(p.endswith("step_00000006") for p in steps), steps
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(str(_summary(job)["mlflow_run_id"]))
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    first = min(history, key=lambda m: m.step)
    print(f"submit to first step: {first.timestamp / 1000 - job.started_unix:.1f} s")  # the report


@pytest.mark.integration
def test_d_a_request_that_can_never_be_met_fails_in_one_line(
    cluster: Cluster,
    raw_videos: str,
    s3_server,  # type: ignore[no-untyped-def]
) -> None:
    workers = MAX_WORKERS + 2  # 1 CPU a task: more nodes than the autoscaler may start
    out = subprocess.run(
        [str(BIN / "avtime"), "preprocess", raw_videos, f"s3://{BUCKET}/never", "--workers",
         str(workers)],
        env=clean_env(RAY_ADDRESS=cluster.gcs, AVTIME_CLUSTER_TIMEOUT_S="20", **s3_server.env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [x for x in out.stderr.splitlines() if x.startswith("avtime preprocess: ")]
    last = errors[-1]
    assert "the cluster did not grow to what the job needs within 20 s" in last, out.stderr
    assert f"/{workers} CPUs" in last and "AVTIME_CLUSTER_TIMEOUT_S" in last
    assert "Traceback" not in out.stderr
    assert _cpus(cluster) <= MAX_WORKERS


def _listing(fs, path: str) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        return [str(p) for p in fs.ls(path, refresh=True)]
    except FileNotFoundError:
        return []


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


_ALIVE_TRAIN_WORKERS = """
import json
from ray.util.state import list_actors
actors = list_actors(address=ADDRESS, detail=True, filters=[
    ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
print(json.dumps([a.pid for a in actors]))
"""


def _raylet_of_a_training_node(cluster: Cluster) -> int | None:
    """The PID of the raylet whose node runs one of the live Ray Train workers (a worker node:
    the head offers no CPUs); None if there is none yet. The live workers come from Ray's state
    API, so a process left from an earlier job is never taken; a worker is its raylet's child."""
    out = subprocess.run(
        [str(BIN / "python"), "-c", _ALIVE_TRAIN_WORKERS.replace("ADDRESS", repr(cluster.dashboard))],
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if out.returncode != 0:
        return None
    raylets = {
        pid for pid in own_pids(cluster.temp_dir)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"raylet")
    }  # fmt: skip
    for pid in json.loads(out.stdout.strip().splitlines()[-1]):
        try:
            parent = _parent(int(pid))
        except (OSError, ValueError, IndexError):
            continue
        if parent in raylets:
            return parent
    return None


@pytest.mark.slow
def test_c_a_lost_node_is_replaced_and_training_resumes(
    cluster: Cluster,
    shards,
    s3_server,
    mlflow_server,  # type: ignore[no-untyped-def]
) -> None:
    assert shards[0].returncode == 0
    steps, every = 16, 4
    fs = s3_server.filesystem()
    killed: dict[str, int] = {}
    done = threading.Event()

    def kill_after_first_checkpoint() -> None:
        """Once the run's first checkpoint is on S3, SIGKILL the raylet of a node that runs a
        Train worker, as a lost VM would end it."""
        while not done.wait(1.0):
            if not any("step_" in p for p in _listing(fs, f"{BUCKET}/checkpoints/lost")):
                continue
            pid = _raylet_of_a_training_node(cluster)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        job = submit(
            cluster, s3_server.env,
            *_train_args(shards[1], mlflow_server.uri, "lost", f"train.steps={steps}",
                         f"train.checkpoint_every={every}"),
        )  # fmt: skip
    finally:
        done.set()
    assert killed, "training ended before a node could be killed"
    assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-2000:]
    names = [p.rsplit("/", 1)[-1] for p in _listing(fs, f"{BUCKET}/checkpoints/lost")]
    assert f"step_{steps:08d}" in names
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(str(_summary(job)["mlflow_run_id"]))
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert max(m.step for m in history) == steps  # the exact step count, in one run
    resumed = [
        int(m.value) for m in client.get_metric_history(run.info.run_id, "resumed_from_step")
    ]
    print(f"resumed from step {resumed}")
    assert resumed and all(r % every == 0 and 0 < r < steps for r in resumed)
