"""Ctrl-C as a terminal sends it: SIGINT to the whole process group of a real `avtime` command,
started in a session of its own, once the command is really working (its Ray tasks run, or its
MLflow run logs). Each command exits 130 with one line of ours and no traceback after the
signal, releases its lock, ends its MLflow run KILLED where it has one, and leaves no process of
its session behind (Ray's own included). (Before the signal, Ray Train's own actors may forward a
warning with a traceback when the CPUs are overloaded; that is not the interrupt's doing.) `train` and `preprocess` have theirs beside their other tests
(tests/training/engine/test_train_integration.py, tests/training/cli/test_errors.py).

The last test kills the MLflow server under a running `avtime train` (SIGKILL to its process
group, as a lost VM) and then presses Ctrl-C: the driver gives the dead server a bounded time,
exits 130 in one line, and the same command, run again once the server is back, ends the run.

Each test prints its exit code, the time from SIGINT to exit and the line, for the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.servers import free_port, start_mlflow

AVTIME = str(Path(sys.executable).parent / "avtime")
EXIT_BOUND_S = 60.0  # generous on 2 loaded cores; the figure printed is what the record keeps
SESSION_EMPTY_S = 30.0  # Ray's processes may need a moment after the driver is gone


def _env(**extra: str) -> dict[str, str]:
    """This environment without MLflow and Ray settings (a laptop's defaults), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


def session_processes(sid: int) -> dict[int, str]:
    """Live (non-zombie) processes of session `sid`, from /proc: pid -> start of its cmdline."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
            if int(fields[3]) != sid or fields[0] in ("Z", "X"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # gone meanwhile
        found[int(entry.name)] = cmd[:120]
    return found


def ray_task_running(proc: subprocess.Popen[bytes], title: str) -> bool:
    """A Ray worker of `proc`'s session runs a task or actor whose process title starts `title`."""
    return any(cmd.startswith(title) for cmd in session_processes(proc.pid).values())


@dataclass
class Run:
    """A real `avtime` command in its own session, its stdout and stderr going to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    argv: list[str]

    @classmethod
    def start(cls, argv: list[str], cwd: Path, env: dict[str, str], tag: str) -> Run:
        out, err = cwd / f"{tag}.stdout", cwd / f"{tag}.stderr"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                [AVTIME, *argv], cwd=cwd, env=env, stdout=o, stderr=e, start_new_session=True
            )
        return cls(proc=proc, out=out, err=err, argv=argv)

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 600.0) -> None:
        """Poll `ready` until it holds; fail if the command ends or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.proc.poll()
            assert code is None, f"{what}: never happened (exit {code}): {self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
            time.sleep(0.2)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")


@dataclass
class Interrupted:
    """What Ctrl-C to the group led to: exit code, seconds to exit, stderr (all of it, and what
    came after the signal), processes left."""

    code: int
    seconds: float
    err: str
    after: str
    left: dict[int, str]

    @property
    def ours(self) -> list[str]:
        """The lines avtime itself printed on stderr."""
        return [line for line in self.err.splitlines() if line.startswith("avtime")]


def ctrl_c(run: Run, name: str) -> Interrupted:
    """SIGINT to `run`'s process group, as a terminal's Ctrl-C; wait for the exit, then for its
    session to empty; print the figures for the record."""
    before = run.err.stat().st_size
    started = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    try:
        code = run.proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        pytest.fail(f"{name}: still running 300 s after Ctrl-C: {run.stderr()[-3000:]}")
    seconds = time.monotonic() - started
    deadline = time.monotonic() + SESSION_EMPTY_S
    while (left := session_processes(run.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # do not leave them to the next test; the assertion below still fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    err = run.stderr()
    after = run.err.read_bytes()[before:].decode(errors="replace")
    result = Interrupted(code=code, seconds=seconds, err=err, after=after, left=left)
    print(f"Ctrl-C to `avtime {name}`'s process group: exit {code} after {seconds:.1f} s, "
          f"{result.ours}, {len(left)} processes left")  # fmt: skip
    return result


def assert_one_line(result: Interrupted, command: str) -> None:
    """Exit 130, `avtime COMMAND: interrupted` the one line of ours, no traceback after the
    signal, nothing left."""
    assert result.code == 130, result.err[-3000:]
    assert result.ours == [f"avtime {command}: interrupted"], result.err[-3000:]
    assert "Traceback" not in result.after, result.after[-3000:]
    assert result.seconds < EXIT_BOUND_S, result.seconds
    assert not result.left, result.left


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    """The runs of `experiment` in the store at `uri` ([] while it has none)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id])) if exp else []


def logging_run(uri: str, experiment: str) -> Callable[[], bool]:
    """True once `experiment` has a run that logged a `loss`."""

    def ready() -> bool:
        return any("loss" in r.data.metrics for r in mlflow_runs(uri, experiment))

    return ready


def printed(run: Run, text: str) -> Callable[[], bool]:
    """True once `run` printed `text` (on stdout or stderr)."""
    return lambda: text in run.stdout() or text in run.stderr()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 3-second synthetic videos, 30 % of them test (a `folder` eval dataset), and their
    32-pixel shards, made by the real CLI in processes of their own."""
    root = tmp_path_factory.mktemp("interrupts")
    env = _env()
    for argv in (
        ["synth", "corpus", "--videos", "8", "--seconds", "3", "--duration-jitter", "0",
         "--test-fraction", "0.3", "--quiet"],
        ["preprocess", "corpus", "shards", "--short-side", "32"],
    ):  # fmt: skip
        done = subprocess.run(
            [AVTIME, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.integration
def test_ctrl_c_during_verify(data: Path, tmp_path: Path) -> None:
    run = Run.start(["verify", str(data / "shards")], tmp_path, _env(), "verify")
    run.wait_for(lambda: ray_task_running(run.proc, "ray::MapBatches"), "verify's shard tasks")
    assert_one_line(ctrl_c(run, "verify"), "verify")


@pytest.mark.integration
def test_ctrl_c_during_eval_releases_the_cache_lock(data: Path, tmp_path: Path) -> None:
    """`eval action --mode linear` on a folder dataset, stopped while it decodes the videos into
    its cache (a preprocess job with its own lock): no MLflow run is opened before the
    protocol's figures exist, so none is left RUNNING."""
    argv = ["eval", "action", "--mode", "linear", "--dataset", "folder",
            "--root", str(data / "corpus"), "--checkpoint", "random", "--config", "smoke",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    run = Run.start(argv, tmp_path, _env(), "eval")
    locks = lambda: list((tmp_path / "cache").glob("*/shards/_progress/lock.json"))  # noqa: E731
    run.wait_for(lambda: bool(locks()) and ray_task_running(run.proc, "ray::MapBatches"),
                 "eval's decode tasks")  # fmt: skip
    assert_one_line(ctrl_c(run, "eval"), "eval")
    assert locks() == []
    assert mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "avtime") == []


@pytest.mark.integration
def test_ctrl_c_during_embed_releases_the_destination_lock(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", "random", "--config", "smoke", "--data",
            str(data / "shards"), "--out", str(out)]  # fmt: skip
    run = Run.start(argv, tmp_path, _env(), "embed")
    lock = out / "_progress" / "lock.json"
    run.wait_for(lambda: lock.exists() and ray_task_running(run.proc, "ray::MapWorker"),
                 "embed's encoder actor")  # fmt: skip
    assert_one_line(ctrl_c(run, "embed"), "embed")
    assert not lock.exists()


@pytest.mark.slow
def test_ctrl_c_during_the_demo_s_training(tmp_path: Path) -> None:
    """The demo at smoke size with a training that would not end, stopped once it logs steps:
    the training run KILLED and its lock released."""
    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--videos", "4", "--heldout-videos", "2",
            "--probe-videos", "0", "--seconds", "3", "--set", "train.steps=100000"]  # fmt: skip
    run = Run.start(argv, tmp_path, _env(), "demo")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # The training's own progress line first: opening the sqlite store while the demo creates
    # it would race MLflow's schema migration (two processes migrating one new database).
    run.wait_for(printed(run, "train: step "), "the demo's training")
    assert logging_run(uri, "avtime-demo")()
    (lock,) = (work / "checkpoints").glob("*/_avtime/lock.json")
    result = ctrl_c(run, "demo")
    assert_one_line(result, "demo")
    assert [r.info.status for r in mlflow_runs(uri, "avtime-demo")] == ["KILLED"]
    assert not lock.exists()


@contextlib.contextmanager
def mlflow_server(store: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real `mlflow server` on `port` with its store in `store`; SIGKILLed to its whole group
    when the block ends (if the test has not already)."""
    proc = start_mlflow(store, timeout=240.0, port=port).proc
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server's whole process group (its job consumers too), as a lost VM."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_the_mlflow_server_killed_mid_train_then_ctrl_c(data: Path, tmp_path: Path) -> None:
    """`avtime train` logs to a real `mlflow server` over HTTP; once a checkpoint is committed,
    the server dies (SIGKILL to its group), then Ctrl-C to train's group. Train exits 130 in a
    bounded time with one line saying the run stays RUNNING and that a rerun ends it, leaves
    no process and releases its lock. With the server back on the same port and store, the
    run is still RUNNING, with the steps logged before the server died; the same command run
    again resumes it and ends it FINISHED.

    The server dies and Ctrl-C comes within a poll of the first checkpoint (the lock names
    the MLflow run), long before the run's last step."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(MLFLOW_TRACKING_URI=uri)
    argv = ["train", "--config", "smoke", "--set", "train.num_workers=1",
            "--set", "train.steps=40", "--set", "train.checkpoint_every=2",
            "--data", str(data / "shards"), "--workdir", str(tmp_path),
            "--experiment", "server-lost", "--name", "lost"]  # fmt: skip
    run_dir = tmp_path / "checkpoints" / "lost"
    t0 = time.monotonic()
    with mlflow_server(tmp_path / "mlflow", port) as server:
        print(f"mlflow server up in {time.monotonic() - t0:.0f} s")
        run = Run.start(argv, tmp_path, env, "train")
        committed = run_dir / "checkpoint_manager_snapshot.json"
        logged = logging_run(uri, "server-lost")
        run.wait_for(lambda: committed.exists() and logged(), "a checkpoint and logged steps")
        run_id = json.loads((run_dir / "_avtime" / "lock.json").read_text())["details"]
        run_id = run_id["mlflow_run"]
        kill_group(server)
        print(f"first checkpoint committed, server killed at {time.monotonic() - t0:.0f} s")
        result = ctrl_c(run, "train")
    assert result.code == 130, result.err[-3000:]
    assert len(result.ours) == 1, result.err[-3000:]
    line = result.ours[0]
    assert line.startswith("avtime train: interrupted"), line
    assert f"MLflow run {run_id} stays RUNNING" in line and "run the same command" in line, line
    assert "Traceback" not in result.after, result.after[-3000:]
    assert result.seconds < EXIT_BOUND_S, result.seconds
    assert not result.left, result.left
    assert not (run_dir / "_avtime" / "lock.json").exists()

    t0 = time.monotonic()
    with mlflow_server(tmp_path / "mlflow", port):
        client = MlflowClient(tracking_uri=uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert 1 in {m.step for m in client.get_metric_history(run_id, "loss")}
        again = subprocess.run([AVTIME, *argv], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600)  # fmt: skip
        print(f"server restarted and the rerun done in {time.monotonic() - t0:.0f} s")
        assert again.returncode == 0, again.stderr[-3000:]
        summary = json.loads(again.stdout.strip().splitlines()[-1])
        assert summary["mlflow_run_id"] == run_id
        ended = client.get_run(run_id)
        assert ended.info.status == "FINISHED"
        assert ended.data.tags["avtime.resumed"] == "true"
