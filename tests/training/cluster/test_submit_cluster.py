"""`avtime submit` against a real Ray head with token auth, started by infra/local_stack.sh on
127.0.0.1 (free ports, its own state dir, the token only in the head's and the client's env).

Jobs: a preprocess of real mp4s on the SeaweedFS S3 (credentials forwarded as secrets, which must
appear in no job metadata and no output), a failing job, the `smoke` training logged to the MLflow
server, then `avtime compare` beside a second run. Bad tokens give a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import S3_SECRET, free_port

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
STACK = ROOT / "infra" / "local_stack.sh"
BUCKET = "submit-it"
EXPERIMENT = "submit-it"
_DROP = ("AWS_", "MLFLOW_", "RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


@dataclass(frozen=True)
class Head:
    address: str
    token: str
    env: dict[str, str]  # what local_stack.sh was run with
    pid: int


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without credentials or Ray/MLflow/S3 settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _ray_tmp(port: int) -> str:
    """A short temp dir for Ray (socket paths), under TMPDIR when that is short enough."""
    base = os.environ.get("TMPDIR", "/tmp")
    return str(Path(base if len(base) < 40 else "/tmp") / f"avtime-ray-test-{port}")


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    state = tmp_path_factory.mktemp("stack")
    gcs, dash, client, nm, om, agent, agent_grpc, metrics, rtenv, worker = _ports(10)
    extra = (
        f"--node-manager-port={nm} --object-manager-port={om} "
        f"--dashboard-agent-listen-port={agent} --dashboard-agent-grpc-port={agent_grpc} "
        f"--metrics-export-port={metrics} --runtime-env-agent-port={rtenv} "
        f"--min-worker-port={worker} --max-worker-port={worker + 100}"
    )
    env = clean_env(
        AVTIME_STACK_DIR=str(state), AVTIME_BIN=str(BIN), AVTIME_RAY_PORT=str(gcs),
        AVTIME_RAY_DASHBOARD_PORT=str(dash), AVTIME_RAY_CLIENT_PORT=str(client),
        AVTIME_RAY_CPUS="4", AVTIME_RAY_EXTRA_ARGS=extra, AVTIME_RAY_TMP=_ray_tmp(gcs),
    )  # fmt: skip
    out = subprocess.run(
        [str(STACK), "start", "ray"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    token = (state / "ray_auth_token").read_text().strip()
    assert token not in out.stdout + out.stderr  # the exports read the file instead
    assert f"RAY_API_SERVER_ADDRESS=http://127.0.0.1:{dash}" in out.stdout
    pid = int((state / "pids" / "ray.pid").read_text())
    yield Head(address=f"http://127.0.0.1:{dash}", token=token, env=env, pid=pid)
    subprocess.run([str(STACK), "stop", "ray"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(env["AVTIME_RAY_TMP"], ignore_errors=True)


def submit(
    head: Head, *args: str, token: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `avtime submit --address HEAD ARGS...` as a user would, with `env` exported."""
    full = clean_env(RAY_AUTH_TOKEN=head.token if token is None else token, **env)
    return subprocess.run(
        [str(BIN / "avtime"), "submit", "--address", head.address, *args],
        env=full, cwd=ROOT, capture_output=True, text=True, timeout=800,
    )  # fmt: skip


def job_client(head: Head):  # type: ignore[no-untyped-def]
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})


@pytest.fixture(scope="module")
def preprocessed(head: Head, s3_server, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Real mp4s on S3, preprocessed by a submitted job with the S3 keys forwarded as secrets."""
    from avtime.training.cli.main import main

    raw = tmp_path_factory.mktemp("raw")
    assert (
        main(["synth", str(raw), "--videos", "3", "--seconds", "2", "--quiet", "--workers", "1"])
        == 0
    )
    s3_server.bucket(BUCKET)
    s3_server.filesystem().put(f"{raw}/", f"{BUCKET}/raw/", recursive=True)
    job_id = f"avtime-test-preprocess-{uuid.uuid4().hex[:8]}"
    proc = submit(
        head, "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY",
        "--submission-id", job_id, "--",
        "avtime", "preprocess", f"s3://{BUCKET}/raw", f"s3://{BUCKET}/shards", "--workers", "1",
        **s3_server.env,
    )  # fmt: skip
    return proc, job_id


@pytest.mark.integration
def test_preprocess_on_s3_with_forwarded_secrets(head: Head, preprocessed, s3_server) -> None:  # type: ignore[no-untyped-def]
    proc, job_id = preprocessed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[avtime job] forwarded secrets: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in proc.stdout
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    fs = s3_server.filesystem()
    manifest = json.loads(fs.cat(f"{BUCKET}/shards/manifest.json"))
    assert manifest["counts"]["inputs"] == 3 and manifest["counts"]["rows"] >= 3
    # the secret reached the job (the head has no S3 keys) but no metadata, output or log
    client = job_client(head)
    info = client.get_job_info(job_id)
    assert info.runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert "AWS_SECRET_ACCESS_KEY" not in info.runtime_env["env_vars"]
    seen = [
        info.model_dump_json(),
        json.dumps([j.model_dump(mode="json") for j in client.list_jobs()]),
        client.get_job_logs(job_id),
        proc.stdout,
        proc.stderr,
    ]
    assert all(S3_SECRET not in text for text in seen)
    dry = submit(head, "--env", "AWS_SECRET_ACCESS_KEY", "--dry-run", "--", "avtime", "verify",
                 f"s3://{BUCKET}/shards", **s3_server.env)  # fmt: skip
    assert dry.returncode == 0 and S3_SECRET not in dry.stdout
    assert json.loads(dry.stdout)["secrets"] == {"AWS_SECRET_ACCESS_KEY": "***"}


@pytest.mark.integration
def test_failing_job_gives_nonzero_exit(head: Head, tmp_path: Path) -> None:
    proc = submit(head, "--", "avtime", "synth", str(tmp_path / "x"), "--videos", "0")
    assert proc.returncode != 0
    assert "FAILED" in proc.stderr and "avtime synth: config error" in proc.stdout  # streamed
    nowait = submit(
        head, "--no-wait", "--", "avtime", "synth", str(tmp_path / "y"), "--videos", "0"
    )
    assert nowait.returncode == 0
    job_id = nowait.stdout.strip().splitlines()[-1]
    client = job_client(head)
    while str(client.get_job_status(job_id)).split(".")[-1] not in (
        "SUCCEEDED",
        "FAILED",
        "STOPPED",
    ):
        time.sleep(1)
    assert str(client.get_job_status(job_id)).endswith("FAILED")


@pytest.mark.integration
def test_bad_or_missing_token_is_a_clear_error(head: Head, tmp_path: Path) -> None:
    wrong = "not-the-token-0123456789"
    proc = submit(head, "--", "avtime", "synth", "out", "--videos", "1", token=wrong)
    assert proc.returncode == 2
    assert "authentication failed" in proc.stderr and "rejected the token" in proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    home = str(tmp_path)  # no ~/.ray/auth_token there either
    proc = submit(head, "--", "avtime", "synth", "out", "--videos", "1", token="", HOME=home)
    assert proc.returncode == 2 and "authentication required" in proc.stderr
    dead = subprocess.run(
        [str(BIN / "avtime"), "submit", "--address", f"http://127.0.0.1:{free_port()}", "--",
         "avtime", "synth", "out", "--videos", "1"],
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dead.returncode == 2 and "cannot reach the Ray dashboard" in dead.stderr


def _second_run(uri: str, first: str) -> str:
    """A second run beside the submitted one: same params but one, its own loss curve."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    base = client.get_run(first)
    run = client.create_run(base.info.experiment_id, run_name="smoke-warmer")
    params = dict(base.data.params, **{"loss.temperature": "0.2"})
    items = sorted(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    metrics = [Metric("loss", 20.0 - 2 * s, 1000 + s, s) for s in range(1, 7)]
    metrics += [Metric("acc_speed_video", 0.1 * s, 1000 + s, s) for s in range(1, 7)]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
    ev = client.create_run(
        base.info.experiment_id, run_name="eval-retrieval-folder",
        tags={"avtime.parent_run_id": first, "mlflow.parentRunId": first, "avtime.kind": "eval"},
    )  # fmt: skip
    client.log_metric(ev.info.run_id, "folder.retrieval.R1", 0.5)
    client.set_terminated(ev.info.run_id)
    return str(run.info.run_id)


@pytest.mark.slow
def test_submit_smoke_training_then_compare(
    head: Head,
    preprocessed,
    s3_server,
    mlflow_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    assert preprocessed[0].returncode == 0
    proc = submit(
        head, "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY",
        "--mlflow-uri", mlflow_server.uri, "--",
        "avtime", "train", "--config", "smoke", "--data", f"s3://{BUCKET}/shards",
        "--experiment", EXPERIMENT, "--set", f"train.storage_path=s3://{BUCKET}/checkpoints",
        **s3_server.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads(
        next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{"))
    )
    run_id = summary["mlflow_run_id"]
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
    assert all(S3_SECRET not in v for v in run.data.params.values())
    second = _second_run(mlflow_server.uri, run_id)
    png = tmp_path / "compare.png"
    cmp = subprocess.run(
        [str(BIN / "avtime"), "compare", "--experiment", EXPERIMENT, "--metrics",
         "loss,acc_speed_video", "--plot", str(png)],
        env=clean_env(MLFLOW_TRACKING_URI=mlflow_server.uri), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr
    print(cmp.stdout)  # the table, for the record
    lines = cmp.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#  run"))
    assert "loss.temperature" in lines[header] and "eval:folder.retrieval.R1" in lines[header]
    table = [line for line in lines[header + 1 :] if line[:1].isdigit()]  # the runs' rows
    rows = {line.split()[2]: line for line in table}
    assert any(line.startswith("checkpoints (MLflow logged models)") for line in lines)
    assert set(rows) == {run_id[:8], second[:8]}
    assert rows[run_id[:8]].split()[-1] == "0.5"  # its linked eval result
    assert png.stat().st_size > 10_000


@pytest.mark.integration
def test_local_stack_stops_the_head_by_pid(head: Head) -> None:
    out = subprocess.run(
        [str(STACK), "stop", "ray"], env=head.env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"stopped (process group {head.pid})" in out.stderr
    ps = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    alive = [line.split() for line in ps.splitlines() if line.split()]
    assert not [s for g, s in alive if g == str(head.pid) and not s.startswith("Z")]
    status = subprocess.run([str(STACK), "status"], env=head.env, capture_output=True, text=True)
    assert "ray: stopped" in status.stdout
