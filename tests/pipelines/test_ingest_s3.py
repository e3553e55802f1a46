"""`avtime preprocess` against a real SeaweedFS S3 over HTTP: sources read from S3, shards
written to S3 through s3fs/pyarrow, resume, and clear fast failures for bad endpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.config import IngestConfig
from pipelines.ingest import run_ingest
from tests.media import Spec, write_bytes_file, write_media
from tests.pipelines.ingest_helpers import check_contract, read_dst, row_digests, shard_files
from tests.servers import S3Server

CFG = IngestConfig(segment_seconds=1.0, rows_per_shard=4, rows_per_row_group=2)


@pytest.fixture(scope="module")
def s3_ray(s3_server: S3Server) -> Iterator[S3Server]:
    """AWS env vars pointing at the test S3, set before a local Ray starts (workers inherit)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env.items():
            mp.setenv(key, value)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        yield s3_server
        ray.shutdown()


@pytest.fixture(scope="module")
def s3_src(s3_ray: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    local = tmp_path_factory.mktemp("s3media")
    files = [
        write_media(local / "a.mp4", Spec()),
        write_media(local / "b.webm", Spec(seconds=1.5)),
        write_media(local / "c.mkv", Spec(audio_rate=None)),
        write_media(local / "phone.mov", Spec(rotation=90, width=96, height=160)),
        write_bytes_file(local / "zero.mp4", b""),
        write_bytes_file(local / "junk.avi", b"junk" * 100),
    ]
    bucket = s3_ray.bucket("avtime-src")
    fs = s3_ray.filesystem()
    for f in files:
        fs.put_file(str(f), f"avtime-src/videos/{f.name}")
    listing = "path,label\nvideos/a.mp4,x\nvideos/c.mkv,y\nvideos/zero.mp4,z\n"
    fs.pipe_file("avtime-src/list.csv", listing.encode())
    return bucket


@pytest.mark.integration
def test_s3_to_s3(s3_src: str, s3_ray: S3Server) -> None:
    dst = s3_ray.bucket("avtime-out") + "/run1"
    res = run_ingest(f"{s3_src}/videos", dst, CFG, workers=2)
    assert (res.inputs, res.rejects, res.sources_with_rows) == (6, 2, 4)
    manifest, rows, rejects = read_dst(dst)
    check_contract(manifest, rows, rejects)
    assert all(s.startswith("s3://avtime-src/videos/") for s in rows.column("source").to_pylist())
    got = {r["source"].rsplit("/", 1)[-1]: r["error_type"] for r in rejects.to_pylist()}
    assert got == {"zero.mp4": "EmptyFile", "junk.avi": "NotMedia"}
    phone = [r for r in rows.to_pylist() if r["source"].endswith("phone.mov")]
    assert {(r["width"], r["height"]) for r in phone} == {(128, 214)}
    assert shard_files(dst) == sorted(s["path"] for s in manifest["shards"])
    assert not storage.list_files(f"{dst}/_tmp")

    again = run_ingest(f"{s3_src}/videos", dst, CFG, workers=2)
    assert again.skipped_inputs == 6
    assert row_digests(read_dst(dst)[1]) == row_digests(rows)


@pytest.mark.integration
def test_s3_listing_with_labels(s3_src: str, s3_ray: S3Server, tmp_path: Path) -> None:
    dst = tmp_path / "local_dst"  # S3 sources, local shards
    res = run_ingest(f"{s3_src}/list.csv", str(dst), CFG, workers=2)
    assert (res.inputs, res.rejects) == (3, 1)
    manifest, rows, rejects = read_dst(str(dst))
    check_contract(manifest, rows, rejects)
    labels = {r["source"].rsplit("/", 1)[-1]: r["label"] for r in rows.to_pylist()}
    assert labels == {"a.mp4": "x", "c.mkv": "y"}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "avtime")
    full_env = dict(os.environ, **env, RAY_AUTH_MODE="disabled")
    # the timeout only guards the test run against a hang; the command fails in seconds
    return subprocess.run(
        [exe, "preprocess", *args], env=full_env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.integration
def test_dead_endpoint_fails_fast_with_a_clear_message(s3_server: S3Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    env = dict(s3_server.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    out = _cli(["s3://avtime-src/videos", "s3://avtime-out/dead"], env)
    assert out.returncode == 1
    assert "cannot connect to the S3 endpoint" in out.stderr
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in out.stderr + out.stdout


@pytest.mark.integration
def test_silent_endpoint_times_out_with_a_clear_message() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:  # accept connections and never answer
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{srv.getsockname()[1]}",
            "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        }  # fmt: skip
        out = _cli(["s3://bucket/videos", "/tmp/unused-avtime-dst"], env)
    finally:
        srv.close()
        for c in held:
            c.close()
    assert out.returncode == 1
    assert "failed a request" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr


@pytest.mark.integration
def test_refused_credentials_and_missing_bucket(s3_src: str, s3_server: S3Server) -> None:
    bad = dict(s3_server.env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    out = _cli([f"{s3_src}/videos", "s3://avtime-out/x"], bad)
    assert out.returncode == 1 and "refused" in out.stderr and "wrong-secret" not in out.stderr
    out = _cli(["s3://no-such-bucket/videos", "s3://avtime-out/x"], s3_server.env)
    assert out.returncode == 1 and "does not exist" in out.stderr
