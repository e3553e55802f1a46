"""A full destination: `avtime preprocess` ends in one line that says so and what to do, and a
rerun once there is space finishes with every input (a real tmpfs, a real Ray job, real mp4s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.media import Spec, write_media

pytestmark = pytest.mark.integration


def _mount(path: Path, size: str, remount: bool = False) -> bool:
    opts = f"remount,size={size}" if remount else f"size={size}"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not _mount(disk, "48k"):
        pytest.skip("needs root and a tmpfs mount to make a full disk")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _preprocess(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    avtime = str(Path(sys.executable).parent / "avtime")
    cmd = [avtime, "preprocess", str(src), str(dst), "--workers", "1", "--rows-per-shard", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_a_full_destination_is_one_line_and_a_rerun_finishes(
    tmp_path: Path, small_disk: Path
) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(3):
        write_media(src / f"v{i}.mp4", Spec(seconds=2.0, width=160, height=120))
    dst = small_disk / "shards"
    failed = _preprocess(src, dst)
    lines = [line for line in failed.stderr.splitlines() if line.startswith("avtime ")]
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert "no space left on the device" in lines[0] and "free some space" in lines[0], lines[0]
    assert _mount(small_disk, "64m", remount=True)
    again = _preprocess(src, dst)
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["counts"]["inputs"] == 3 and manifest["counts"]["rejects"] == 0
