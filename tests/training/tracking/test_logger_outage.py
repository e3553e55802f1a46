"""MLflow as a dependency with a deadline: a real `mlflow server` dies while the rank-0 logger
logs; logging never blocks, the metrics wait, and they arrive once the server is back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from avtime.training.tracking import runs
from tests.servers import free_port, start_mlflow


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's whole process group (its job consumers too), as a lost VM."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


pytestmark = pytest.mark.integration


def _serve(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """A real `mlflow server` on `port`, its store in `workdir` (so a restart finds the runs)."""
    return start_mlflow(workdir, timeout=240.0, port=port).proc


def test_a_dead_server_never_blocks_logging_and_the_metrics_arrive_later(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path, port)
    said: list[str] = []
    try:
        run_id = runs.open_run(uri=uri, experiment="outage", run_name="r", params={"a": 1})
        spec = runs.TrackingSpec(tracking_uri=uri, run_id=run_id, system_metrics=False)
        logger = runs.MlflowLogger(spec, notify=said.append)
        logger.log({"loss": 3.0}, 1)
        assert logger._sender.flush(30) == 0  # noqa: SLF001 - the server is up: sent
        _kill(server)
        started = time.monotonic()
        for step in range(2, 12):
            logger.log({"loss": 3.0 - step / 10}, step)
        key = logger.begin_checkpoint(11, str(tmp_path / "ck" / "step_11"), {"x": "1"})
        logger.log({"acc_video_speed": 0.5}, 11, model_id=key)
        logger.end_checkpoint(key)
        assert (
            time.monotonic() - started < 10.0
        )  # nothing waited on the dead server (a hang is minutes)
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.2)
        assert said and said[0].startswith(f"MLflow at {uri} is not answering")
        assert "training goes on" in said[0]
        server = _serve(tmp_path, port)
        before = mlflow.get_tracking_uri()
        assert before == uri  # the logger's store is the process's while it logs
        logger.close()
        assert any(line.startswith(f"MLflow at {uri} answers again") for line in said)
        assert mlflow.get_tracking_uri() != uri  # and not after: `models:/` lookups go elsewhere
        client = MlflowClient(tracking_uri=uri)
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, 12))
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
        assert [(m.name, str(m.status)) for m in models] == [("r-step11", "READY")]
        linked = client.get_logged_model(models[0].model_id).metrics
        assert [(m.key, m.step, m.value) for m in linked] == [("acc_video_speed", 11, 0.5)]
    finally:
        _kill(server)


def test_close_gives_up_in_bounded_time_and_says_so(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path, port)
    said: list[str] = []
    try:  # the server's group goes even when starting the run fails
        run_id = runs.open_run(uri=uri, experiment="outage", run_name="r", params={})
        logger = runs.MlflowLogger(
            runs.TrackingSpec(tracking_uri=uri, run_id=run_id, system_metrics=False), said.append
        )
    finally:
        _kill(server)
    logger.log({"loss": 1.0}, 7)
    monkeypatch.setattr(runs, "CLOSE_DEADLINE_S", 3.0)
    started = time.monotonic()
    logger.close(status="KILLED")
    assert time.monotonic() - started < 30.0  # a bound, not a speed: without one it hangs
    assert "did not take 1 queued items" in said[-1] and "metrics up to step 7" in said[-1]
    started = time.monotonic()
    assert runs.finish_run(uri, run_id, "KILLED", deadline_s=2.0) is False
    assert time.monotonic() - started < 20.0


@pytest.mark.unit
def test_check_tracking_names_the_store(tmp_path: Path) -> None:
    runs.check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(runs.TrackingError, match="folder .*nope does not exist"):
        runs.check_tracking(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    port = free_port()
    started = time.monotonic()
    with pytest.raises(
        runs.TrackingError,
        match=f"cannot reach the MLflow server at http://\\*\\*\\*@127.0.0.1:{port}",
    ) as err:
        runs.check_tracking(f"http://u:secret@127.0.0.1:{port}")
    assert "secret" not in str(err.value)
    assert time.monotonic() - started < 30.0
