"""One writer per destination: the DST lock (unit), and two real `avtime preprocess` runs on
one DST (integration: the second fails at once naming the first; nothing is duplicated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avtime.pipelines.ingest.lock import LOCK_NAME, DestinationLock, LockError
from avtime.training.cli.main import main


@pytest.mark.unit
def test_second_holder_fails_naming_the_owner_and_release_frees(tmp_path: Path) -> None:
    first = DestinationLock(str(tmp_path), renew_s=0.05, settle_s=0.01)
    first.acquire()
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    assert held["token"] == first.token and f"pid {os.getpid()}" in held["owner"]
    time.sleep(0.2)  # renewed meanwhile
    assert json.loads((tmp_path / LOCK_NAME).read_text())["renewed_unix"] > held["renewed_unix"]
    with pytest.raises(LockError, match=f"another preprocess run .*pid {os.getpid()}"):
        DestinationLock(str(tmp_path), settle_s=0.01).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with DestinationLock(str(tmp_path), settle_s=0.01):  # free again
        assert (tmp_path / LOCK_NAME).exists()


@pytest.mark.unit
def test_a_train_lock_names_its_job_details_and_remedy(tmp_path: Path) -> None:
    def train_lock() -> DestinationLock:
        return DestinationLock(
            str(tmp_path), job="train", name="_avtime/lock.json", settle_s=0.01,
            remedy="wait for it to finish, or give this run another --name",
        )  # fmt: skip

    first = train_lock()
    with first:
        first.describe(mlflow_run="abc123")
        held = json.loads((tmp_path / "_avtime" / "lock.json").read_text())
        assert held["details"] == {"mlflow_run": "abc123"}
        with pytest.raises(LockError) as err:
            train_lock().acquire()
        text = str(err.value)
        assert (
            f"another train run ({os.uname().nodename} pid {os.getpid()}, mlflow_run abc123" in text
        )
        assert "give this run another --name" in text and "another DST" not in text
    assert not (tmp_path / "_avtime" / "lock.json").exists()


@pytest.mark.unit
def test_a_stale_lock_is_taken_over_with_a_message(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).parent.mkdir(parents=True)
    old = {"owner": "gone-host pid 1", "token": "dead", "renewed_unix": time.time() - 120}
    (tmp_path / LOCK_NAME).write_text(json.dumps(old))
    notes: list[str] = []
    lock = DestinationLock(str(tmp_path), stale_s=60, settle_s=0.01, notify=notes.append)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.token
    assert len(notes) == 1 and "stale lock of gone-host pid 1" in notes[0]
    lock.release()


@pytest.mark.unit
def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).parent.mkdir(parents=True)
    held = {"owner": "x", "host": socket.gethostname(), "pid": dead.pid, "token": "t",
            "renewed_unix": time.time()}  # fmt: skip
    (tmp_path / LOCK_NAME).write_text(json.dumps(held))
    notes: list[str] = []
    with DestinationLock(str(tmp_path), settle_s=0.01, notify=notes.append):
        assert len(notes) == 1 and "no longer exists" in notes[0]
    held["pid"] = os.getpid()  # alive: refused
    (tmp_path / LOCK_NAME).write_text(json.dumps(held))
    with pytest.raises(LockError):
        DestinationLock(str(tmp_path), settle_s=0.01).acquire()


@pytest.mark.unit
def test_a_racer_that_writes_last_wins(tmp_path: Path) -> None:
    """Write-then-check: when another run's record lands while this run settles (both found
    the lock free), this run reads a record not its own and backs off."""
    import threading

    a = DestinationLock(str(tmp_path), settle_s=0.5)
    errors: list[BaseException] = []

    def take_a() -> None:
        try:
            a.acquire()
        except LockError as exc:
            errors.append(exc)

    t = threading.Thread(target=take_a)
    t.start()
    deadline = time.monotonic() + 5
    while not (tmp_path / LOCK_NAME).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    racer = {"owner": "other-host pid 7", "token": "b", "renewed_unix": time.time()}
    (tmp_path / LOCK_NAME).write_text(json.dumps(racer))  # b's write, after a's
    t.join()
    assert len(errors) == 1 and "other-host pid 7" in str(errors[0])
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "b"  # b keeps it


@pytest.mark.integration
def test_two_preprocess_runs_on_one_destination(tmp_path: Path, ray_local: None) -> None:
    argv = ["synth", str(tmp_path / "c"), "--videos", "6", "--seconds", "4", "--quiet"]
    assert main(argv + ["--duration-jitter", "0"]) == 0
    dst = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(
        [sys.executable, "-m", "avtime.training.cli.main", "preprocess", str(tmp_path / "c"),
         str(dst), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (dst / LOCK_NAME).exists() and first.poll() is None:
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "avtime.training.cli.main", "preprocess", str(tmp_path / "c"),
         str(dst), "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode != 0
    line = second.stderr.strip()
    assert len(line.splitlines()) == 1 and "being written by another preprocess run" in line
    assert f"pid {first.pid}" in line
    manifest = json.loads((dst / "manifest.json").read_text())
    listed = {s["path"] for s in manifest["shards"]}
    assert {p.name for p in dst.glob("part-*.parquet")} == listed  # no stray shards
    ids = [r for p in sorted(dst.glob("part-*.parquet")) for r in pq.read_table(p).column(
        "video_id").to_pylist()]  # fmt: skip
    assert len(set(ids)) == 6 and manifest["counts"]["inputs"] == 6
    assert not (dst / LOCK_NAME).exists()  # released


@pytest.mark.unit
def test_manifest_json_is_strict() -> None:
    """NaN or infinity can never reach manifest.json as bare `NaN` (invalid JSON)."""
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.schema import build_manifest, manifest_to_bytes

    doc = build_manifest(code_version="x", frame_format="jpeg", config={"fps": float("nan")},
                         inputs=[], counts={}, shards=[])  # fmt: skip
    with pytest.raises(ValueError, match="JSON"):
        manifest_to_bytes(doc)
    for bad in ({"fps": float("nan")}, {"segment_seconds": float("inf")}, {"rows_per_shard": 0}):
        with pytest.raises(ValueError):
            IngestConfig(**bad)  # type: ignore[arg-type]
