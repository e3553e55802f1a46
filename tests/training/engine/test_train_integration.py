"""`avtime train` on real Ray (2 Train workers on CPU), real MLflow (sqlite and `mlflow server`
over HTTP) and real S3 (SeaweedFS), on shards preprocessed from real synthetic mp4s.

The fault-tolerance test kills one training worker process from the test (SIGKILL, found among
the children of this Ray's raylet) once the first checkpoint exists; Ray Train restarts the
worker group from that checkpoint and the run finishes in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from avtime.pipelines.configlib import apply_overrides
from avtime.training.cli.main import main
from avtime.training.config import RunConfig, smoke
from avtime.training.engine import checkpoint
from avtime.training.engine.trainer import (
    TrainOutcome,
    TrainRequest,
    check_sample_rate,
    train,
)
from tests.servers import S3_KEY, S3_SECRET, MlflowServer, S3Server

pytestmark = pytest.mark.integration

STEP_METRICS = (
    "loss", "loss_vv", "loss_va", "loss_speed_video", "loss_speed_audio",
    "loss_direction_video", "loss_direction_audio", "loss_order_video", "loss_order_audio",
    "loss_order_av", "acc_speed_video", "acc_speed_audio", "acc_direction_video",
    "acc_direction_audio", "acc_order_video", "acc_order_audio", "acc_order_av", "lr",
    "examples_per_s", "data_wait_fraction",
)  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Iterator[str]:
    """Six 3-second synthetic videos, preprocessed to 32-pixel shards."""
    root = tmp_path_factory.mktemp("train-data")
    argv = ["synth", str(root / "corpus"), "--videos", "6", "--seconds", "3", "--quiet"]
    assert main(argv + ["--duration-jitter", "0"]) == 0
    assert (
        main(["preprocess", str(root / "corpus"), str(root / "shards"), "--short-side", "32"]) == 0
    )
    yield str(root / "shards")


def test_train_refuses_shards_stored_at_another_audio_rate(
    tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`preprocess --sample-rate 22050` then `train` at the model's 16 kHz: one clear line,
    exit 2, before Ray Train starts; with the model set to the stored rate the check passes."""
    argv = ["synth", str(tmp_path / "c"), "--videos", "2", "--seconds", "2", "--quiet"]
    assert main(argv) == 0
    pre = ["preprocess", str(tmp_path / "c"), str(tmp_path / "s"), "--short-side", "32"]
    assert main(pre + ["--sample-rate", "22050"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", "smoke", "--data", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "22050 Hz" in err and "16000 Hz" in err and "model.sample_rate=22050" in err
    cfg = apply_overrides(smoke(), ["model.sample_rate=22050"])
    assert check_sample_rate(str(tmp_path / "s"), cfg) == 22050


def _metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run_id, key)})


def _last_json(text: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return out


def test_smoke_two_workers_tracks_mlflow_and_checkpoints_locally(
    shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    argv = ["train", "--config", "smoke", "--data", shards, "--workdir", str(work)]
    assert main(argv + ["--experiment", "smoke-test", "--register", "avtime-smoke"]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["registered"] == "models:/avtime-smoke@final"
    cfg = smoke()
    assert summary["tracking_uri"] == f"sqlite:///{work / 'mlflow.db'}"
    assert summary["metrics"]["step"] == cfg.train.steps
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == checkpoint.dir_name(cfg.train.steps)
    run_dir = ckpt.parent
    assert run_dir.parent == work / "checkpoints"
    steps = range(cfg.train.checkpoint_every, cfg.train.steps + 1, cfg.train.checkpoint_every)
    for step in steps:
        meta, state = checkpoint.load(run_dir / checkpoint.dir_name(step))
        assert meta.step == step and meta.mlflow_run_id == summary["mlflow_run_id"]
        assert set(state) == {"model", "optimizer", "scheduler", "queue"}

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "smoke-test"
    params = run.data.params
    assert params["optim.lr"] == str(cfg.optim.lr) and params["train.num_workers"] == "2"
    assert len(params["data.manifest_sha256"]) == 16 and params["code_version"] != "unknown"
    for key in STEP_METRICS:
        assert _metric_steps(client, run.info.run_id, key) == list(range(1, cfg.train.steps + 1))
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    artifacts = {a.path for d in ("config", "encoders", "contact_sheet")
                 for a in client.list_artifacts(run.info.run_id, d)}  # fmt: skip
    assert artifacts == {"config/config.yaml", "encoders/encoders.pt", "contact_sheet/batch.png"}
    models = _check_lineage(
        client, run, shards, {s: run_dir / checkpoint.dir_name(s) for s in steps}
    )
    assert summary["model_id"] == models[cfg.train.steps].model_id
    assert run.data.tags["avtime.model_id"] == summary["model_id"]
    version = client.get_model_version_by_alias("avtime-smoke", "final")
    assert version.source == f"models:/{summary['model_id']}"
    assert version.run_id == run.info.run_id

    argv = ["eval", "pretext", "--checkpoint", str(ckpt), "--data", shards, "--json"]
    assert main(argv + ["--epochs", "1"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert set(result["heads"]) == {
        "speed_video", "speed_audio", "direction_video", "direction_audio",
        "order_video", "order_audio", "order_av",
    }  # fmt: skip
    for head in result["heads"].values():
        assert 0.0 <= head["accuracy"] <= 1.0 and 0.0 < head["chance"] <= 0.5
    assert 0.0 <= result["retrieval_a2v"]["r1"] <= 1.0
    _eval_through_the_registry(summary, ckpt, tmp_path, monkeypatch, capsys)


def _eval_through_the_registry(
    summary: dict[str, Any],
    ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`avtime eval --checkpoint models:/avtime-smoke@final` loads the path's checkpoint and logs
    its metrics against the logged model and the evaluation set; compare lists them."""
    from avtime.training.eval.model_io import load_model
    from tests.fabricate import make_tree

    uri, model_id = summary["tracking_uri"], summary["model_id"]
    by_path = load_model(str(ckpt))
    for ref in (f"models:/{model_id}", "models:/avtime-smoke@final", "models:/avtime-smoke/1"):
        loaded = load_model(ref, tracking_uri=uri)
        assert loaded.resolved == str(ckpt) and loaded.model_id == model_id
        assert (loaded.step, loaded.parent_run_id) == (by_path.step, by_path.parent_run_id)
        for key, value in by_path.model.state_dict().items():
            assert (loaded.model.state_dict()[key] == value).all(), key
    tree = make_tree("ucf101", tmp_path / "ucf101", per_class=3, classes=3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AVTIME_EVAL_CACHE", str(tmp_path / "eval_cache"))
    argv = ["eval", "action", "--checkpoint", "models:/avtime-smoke@final", "--dataset", "ucf101",
            "--root", str(tree), "--clips", "2", "--short-side", "32", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["checkpoint_uri"] == str(ckpt) and result["model_id"] == model_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["avtime.parent_run_id"] == summary["mlflow_run_id"]
    assert run.data.tags["avtime.git.commit"] and run.data.tags["avtime.device"] == "cpu"
    [data] = run.inputs.dataset_inputs
    assert data.dataset.name == "ucf101-split1" and len(data.dataset.digest) == 16
    assert {t.value for t in data.tags} == {"evaluation"}
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    evals = [m for m in client.get_logged_model(model_id).metrics if m.run_id == run.info.run_id]
    top1 = {m.key: m for m in evals}["ucf101-split1.action-linear.top1"]
    assert top1.value == pytest.approx(result["top1"]) and top1.dataset_name == "ucf101-split1"
    assert top1.dataset_digest == data.dataset.digest
    argv = ["compare", "--tracking-uri", uri, "--experiment", "smoke-test"]
    assert main(argv + ["--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["dataset"] == f"shards@{row_digest(client, summary)}"
    final = {m["model_id"]: m for m in row["models"]}[model_id]
    assert final["evals"]["ucf101-split1.action-linear.top1"] == pytest.approx(result["top1"])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "checkpoints (MLflow logged models) and their evaluations:" in out
    assert model_id in out


def row_digest(client: MlflowClient, summary: dict[str, Any]) -> str:
    """The first 8 characters of the training run's manifest digest."""
    return str(client.get_run(summary["mlflow_run_id"]).data.params["data.manifest_sha256"][:8])


def _check_lineage(
    client: MlflowClient, run: Any, shards: str, checkpoints: dict[int, Any]
) -> dict[int, Any]:
    """The run's MLflow 3 records: provenance tags, the training dataset input (digest of the
    manifest, profile), one READY logged model per kept checkpoint (step, storage URI, config
    params, run output at its step, that step's metrics linked to it and the dataset)."""
    from avtime.pipelines import storage
    from avtime.training.tracking import lineage

    tags = run.data.tags
    assert len(tags["avtime.git.commit"]) == 40 and tags["avtime.git.dirty"] in ("true", "false")
    assert tags["avtime.device"] == "cpu" and tags["avtime.version.torch"] not in ("", "none")
    assert {f"avtime.version.{p}" for p in ("avtime", "torch", "ray", "av")} <= set(tags)
    [data] = run.inputs.dataset_inputs
    assert {t.key: t.value for t in data.tags} == {"mlflow.data.context": "training"}
    assert data.dataset.digest == run.data.params["data.manifest_sha256"]
    assert data.dataset.name == "shards" and data.dataset.source_type == "local"
    assert json.loads(data.dataset.source)["uri"] == shards.rstrip("/")
    profile = json.loads(data.dataset.profile)
    manifest = json.loads(storage.read_bytes(f"{shards}/manifest.json"))["counts"]
    assert profile["rows"] == manifest["rows"] > 0 and profile["sources"] == 6
    assert profile["rejects"] == 0 and 0 < profile["video_hours"] < 0.01
    found = lineage.run_models(client, run.info.experiment_id, run.info.run_id)
    models = {int(m.tags["avtime.step"]): m for m in found}
    assert sorted(models) == sorted(checkpoints)
    outputs = {o.model_id: o.step for o in run.outputs.model_outputs}
    for step, model in models.items():
        assert model.tags["avtime.checkpoint"] == str(checkpoints[step])
        assert str(model.status) == "READY"
        assert model.model_type == "avtime-checkpoint" and outputs[model.model_id] == step
        assert model.params["optim.lr"] == run.data.params["optim.lr"]
        linked = {m.key: m for m in model.metrics}
        assert {"loss", "acc_order_av", "lr"} <= set(linked)
        loss = linked["loss"]
        assert loss.step == step and loss.run_id == run.info.run_id
        assert (loss.dataset_name, loss.dataset_digest) == (data.dataset.name, data.dataset.digest)
    return models


def test_smoke_on_s3_logs_to_mlflow_server_without_secrets(
    shards: str, tmp_path: Path, s3_env: S3Server, mlflow_server: MlflowServer
) -> None:
    bucket = s3_env.bucket("avtime-train")
    overrides = [f"train.storage_path={bucket}/ckpt", "train.steps=4", "train.keep_checkpoints=1"]
    cfg = apply_overrides(smoke(), overrides)
    outcome = train(
        TrainRequest(cfg=cfg, data=shards, workdir=str(tmp_path), tracking_uri=mlflow_server.uri,
                     register="avtime-s3", alias="best")
    )  # fmt: skip
    assert outcome.checkpoint == f"{bucket}/ckpt/{outcome.run_name}/step_00000004"
    fs = s3_env.filesystem()
    fs.invalidate_cache()
    folder = f"avtime-train/ckpt/{outcome.run_name}/{checkpoint.dir_name(4)}"
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(folder)} >= {"state.pt", "meta.json"}
    local, tmp = checkpoint.fetch(outcome.checkpoint)
    assert tmp is not None and checkpoint.load(local)[0].step == 4

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # keep_checkpoints=1: the step-3 checkpoint was dropped, and with it its logged model
    models = _check_lineage(client, run, shards, {4: outcome.checkpoint})
    assert outcome.registered == "models:/avtime-s3@best"
    assert models[4].model_id == outcome.model_id
    from avtime.training.eval.model_io import load_model

    loaded = load_model("models:/avtime-s3@best", tracking_uri=mlflow_server.uri)
    assert loaded.resolved == outcome.checkpoint and loaded.step == 4
    assert _metric_steps(client, run.info.run_id, "loss") == [1, 2, 3, 4]
    assert run.data.params["train.storage_path"] == f"{bucket}/ckpt"
    logged = json.dumps({"params": run.data.params, "tags": run.data.tags})
    assert S3_SECRET not in logged and S3_KEY not in logged


def _train_workers() -> list[Any]:
    """Live Ray Train worker processes of this test's Ray (children of its raylet)."""
    import psutil
    import ray

    node = ray._private.worker._global_node
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = []
    for proc in raylet.children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "RayTrainWorker" in " ".join(
                proc.cmdline()
            ):
                found.append(proc)
        except psutil.Error:  # exited while we looked
            continue
    return found


def _kill_one_worker_after_first_checkpoint(run_dir: Path, timeout: float = 600.0) -> int:
    """Once Ray Train has committed a checkpoint, SIGKILL one training worker; its pid."""
    import pyarrow.fs as pafs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            checkpoint.find_latest(pafs.LocalFileSystem(), str(run_dir)) is not None
            and (run_dir / checkpoint.RAY_SNAPSHOT).is_file()
        ):
            workers = _train_workers()
            if workers:
                os.kill(workers[-1].pid, signal.SIGKILL)
                return int(workers[-1].pid)
        time.sleep(0.1)
    raise TimeoutError(f"no committed checkpoint appeared under {run_dir}")


def test_killed_worker_restarts_from_checkpoint_in_the_same_mlflow_run(
    shards: str, tmp_path: Path
) -> None:
    base = smoke()
    cfg: RunConfig = replace(
        base,
        train=replace(base.train, steps=30, checkpoint_every=5, max_failures=2),
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    request = TrainRequest(cfg=cfg, data=shards, workdir=str(tmp_path), tracking_uri=uri, name="ft")
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["outcome"] = train(request)
        except BaseException as exc:  # surfaced by the assertion below
            box["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    killed = _kill_one_worker_after_first_checkpoint(tmp_path / "checkpoints" / "ft")
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    outcome: TrainOutcome = box["outcome"]
    assert killed not in [p.pid for p in _train_workers()]
    assert outcome.metrics["step"] == 30 and outcome.checkpoint.endswith("step_00000030")

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("avtime").experiment_id])
    assert [r.info.run_id for r in runs] == [outcome.mlflow_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["avtime.resumed"] == "false"
    resumed = client.get_metric_history(run.info.run_id, "resumed_from_step")
    assert resumed and all(m.value % 5 == 0 and 5 <= m.value < 30 for m in resumed)
    for key in ("loss", "lr", "acc_order_av", "data_wait_fraction"):
        assert _metric_steps(client, run.info.run_id, key) == list(range(1, 31))
    from avtime.training.tracking import lineage

    # one READY logged model per checkpoint step: a step saved again after the restart reuses it
    models = lineage.run_models(client, run.info.experiment_id, run.info.run_id)
    assert [int(m.tags["avtime.step"]) for m in models] == list(range(5, 31, 5))
    assert {str(m.status) for m in models} == {"READY"}


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(
    shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checkpoints at steps 2 and 4; state.pt of step 4 cut in half (a full disk); the same
    command with more steps says so in one line and resumes from step 2 in the same MLflow run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["train", "--config", "smoke", "--data", shards, "--workdir", str(tmp_path),
            "--name", "cut", "--set", "train.checkpoint_every=2", "--set", "train.num_workers=1"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main([*argv, "--set", "train.steps=4"]) == 0
        state = tmp_path / "checkpoints" / "cut" / checkpoint.dir_name(4) / checkpoint.STATE_FILE
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        capsys.readouterr()
        assert main([*argv, "--set", "train.steps=6"]) == 0
    err = capsys.readouterr().err
    assert f"avtime train: checkpoint {state.parent} is unreadable (" in err, err[-3000:]
    assert f"resuming from {state.parent.parent / checkpoint.dir_name(2)} (step 2)" in err
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("avtime").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_step")] == [2]
    assert run.info.status == "FINISHED" and _metric_steps(client, run.info.run_id, "loss")[-1] == 6


def test_a_batch_larger_than_the_data_is_refused_before_ray(shards: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "avtime"), "train", "--config", "smoke", "--data",
         shards, "--workdir", str(tmp_path), "--set", "data.stream.batch_size=100000"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    print(f"oversized batch: exit {done.returncode} after {time.monotonic() - started:.1f} s")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "one optimiser step takes 200000 examples" in lines[0], lines[0]
    assert "lower data.stream.batch_size" in lines[0]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_local_ray_runs_workers_at_niceness_zero_and_samplers_lower_themselves() -> None:
    """The Ray `avtime train` starts (no RAY_ADDRESS) gives its workers, the Train worker among
    them, niceness 0 rather than Ray's 15; a sampling task still drops to `data.stream.nice`.
    In a child process: this module's Ray is already up, and niceness cannot be undone."""
    import subprocess
    import sys

    code = (
        "import os, ray\n"
        "from avtime.pipelines.config import StreamConfig\n"
        "from avtime.pipelines.pretext.stream import lower_priority\n"
        "from avtime.training.engine.trainer import ensure_local_ray\n"
        "ensure_local_ray(1)\n"
        "worker = ray.remote(num_cpus=0.1)(lambda: os.nice(0))\n"
        "def sampler():\n"
        "    lower_priority(StreamConfig().nice)\n"
        "    return os.nice(0)\n"
        "print(ray.get(worker.remote()), ray.get(ray.remote(num_cpus=0.1)(sampler).remote()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    worker_nice, sampler_nice = (int(v) for v in out.stdout.split()[-2:])
    assert (worker_nice, sampler_nice) == (os.nice(0), 19)


class _Trainer:
    """Stands in for TorchTrainer in `_fit`: its fit() raises, or signals this process."""

    def __init__(self, action: str) -> None:
        self.action = action

    def fit(self) -> None:
        if self.action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        raise RuntimeError("worker crashed")


def test_fit_ends_the_mlflow_run_killed_on_sigterm_and_failed_on_a_crash(tmp_path: Path) -> None:
    from avtime.training.engine.trainer import _fit
    from avtime.training.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    before = signal.getsignal(signal.SIGTERM)
    for action, status, raised in (("sigterm", "KILLED", KeyboardInterrupt),
                                   ("crash", "FAILED", RuntimeError)):  # fmt: skip
        run_id = runs.open_run(
            uri=uri, experiment="signals", run_name=action, params={}, tags={}, run_id=None
        )
        assert client.get_run(run_id).info.status == "RUNNING"
        with pytest.raises(raised):
            _fit(_Trainer(action), uri, run_id)
        assert client.get_run(run_id).info.status == status
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def _train_proc(shards: str, tmp_path: Path, uri: str) -> Any:
    """`avtime train` on a long run named `dup`, in a session of its own (as a terminal's job)."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "avtime"), "train", "--config", "smoke",
         "--set", "train.steps=100000", "--set", "train.num_workers=1", "--data", shards,
         "--workdir", str(tmp_path), "--experiment", "ctrl-c", "--name", "dup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def _logging_run(client: MlflowClient, proc: Any, tmp_path: Path) -> Any:
    deadline = time.monotonic() + 300
    run = None
    while run is None or "loss" not in run.data.metrics:
        assert proc.poll() is None and time.monotonic() < deadline, "training never logged"
        time.sleep(1.0)
        exp = client.get_experiment_by_name("ctrl-c") if (tmp_path / "mlflow.db").exists() else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        run = runs[0] if runs else None
    return run


def test_a_second_train_on_the_run_stops_and_ctrl_c_to_the_group_ends_the_first(
    shards: str, tmp_path: Path
) -> None:
    """Two `avtime train --name dup`: the second stops at once naming the first (host, pid,
    MLflow run). Then SIGINT to the first's whole process group, as a terminal's Ctrl-C sends
    it: exit 130, one line, the run KILLED, the run lock released, no process of it left."""
    import psutil
    import ray  # noqa: F401 - puts Ray's vendored psutil on the path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    first = _train_proc(shards, tmp_path, uri)
    run = _logging_run(client, first, tmp_path)
    second = _train_proc(shards, tmp_path, uri)
    _, err = second.communicate(timeout=120)
    said = [line for line in err.splitlines() if line.startswith("avtime")]
    assert second.returncode == 1 and len(said) == 1, err[-3000:]
    assert "is being written by another train run" in said[0]
    assert f"pid {first.pid}" in said[0] and f"mlflow_run {run.info.run_id}" in said[0]
    lock = tmp_path / "checkpoints" / "dup" / "_avtime" / "lock.json"
    assert json.loads(lock.read_text())["pid"] == first.pid  # the second left it alone
    family = [first.pid, *(p.pid for p in psutil.Process(first.pid).children(recursive=True))]
    started = time.monotonic()
    os.killpg(first.pid, signal.SIGINT)
    _, err = first.communicate(timeout=120)
    print(f"Ctrl-C to the process group: exit {first.returncode} after "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert first.returncode == 130, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("avtime")] == [
        "avtime train: interrupted"
    ]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not lock.exists()

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 60
    while (alive := [p for p in family if running(p)]) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert not alive, [psutil.Process(p).cmdline()[:3] for p in alive if running(p)]
