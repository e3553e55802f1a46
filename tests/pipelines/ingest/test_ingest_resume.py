"""Kill `avtime preprocess` mid-way (SIGKILL on its whole process group) and rerun: the DST must
end with exactly the rows of a clean run, and no shard may ever be visible half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import run_ingest
from tests.media import Spec, write_media
from tests.pipelines.ingest.helpers import check_contract, read_dst, row_digests, shard_files

FILES = 12
CFG = IngestConfig(segment_seconds=1.0, rows_per_shard=2)  # what the CLI flags below give


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resume_src")
    for i in range(FILES):
        write_media(folder / f"v{i:02d}.mp4", Spec(seconds=4.0, width=160, height=120))
    return folder


def _start_cli(src: Path, dst: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "avtime")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    argv = [exe, "preprocess", str(src), str(dst), "--segment-seconds", "1"]
    argv += ["--rows-per-shard", "2", "--workers", "1"]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _kill_after_first_marker(proc: subprocess.Popen[bytes], dst: Path, limit_s: float) -> int:
    """SIGKILL the CLI's process group once one group has finished; return markers seen."""
    marker = dst / "_progress" / "group-00000.json"
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # A Ray worker outside the group may finish the task it holds before it notices that its
    # raylet is gone; count the markers once that count has been still for 3 s.
    count, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 3.0:
        now = len(list((dst / "_progress").glob("group-*.json")))
        if now != count:
            count, still_since = now, time.monotonic()
        time.sleep(0.1)
    return count


@pytest.mark.integration
def test_killed_run_resumes_to_the_rows_of_a_clean_run(
    src: Path, tmp_path: Path, ray_local: None
) -> None:
    clean = tmp_path / "clean"
    run_ingest(str(src), str(clean), CFG, workers=1)
    _, clean_rows, _ = read_dst(str(clean))

    dst = tmp_path / "killed"
    proc = _start_cli(src, dst, tmp_path / "cli.log")
    markers = _kill_after_first_marker(proc, dst, limit_s=300)
    log = (tmp_path / "cli.log").read_text(errors="replace")
    assert 1 <= markers < FILES // 2, (
        f"the kill did not land mid-run ({markers} groups done):\n{log}"
    )
    assert not (dst / "manifest.json").exists()
    for name in shard_files(str(dst)):  # whatever is visible is a whole Parquet file
        assert pq.read_metadata(dst / name).num_rows > 0

    res = run_ingest(str(src), str(dst), CFG, workers=1)
    assert res.skipped_inputs == 2 * markers and res.inputs == FILES  # 2 inputs per group
    manifest, rows, rejects = read_dst(str(dst))
    check_contract(manifest, rows, rejects)
    assert row_digests(rows) == row_digests(clean_rows)
    assert rows.num_rows == clean_rows.num_rows == FILES * 4
    assert shard_files(str(dst)) == sorted(s["path"] for s in manifest["shards"])
