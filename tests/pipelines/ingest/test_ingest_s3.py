"""`avtime preprocess` against a real SeaweedFS S3 over HTTP: sources read from S3, shards
written to S3 through s3fs/pyarrow, resume, and clear fast failures for bad endpoints."""

from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from PIL import Image

from avtime.pipelines import storage
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import run_ingest
from avtime.pipelines.ingest.listing import InputItem
from avtime.pipelines.ingest.worker import process_group
from avtime.pipelines.raycluster import connect
from tests.media import Spec, write_bytes_file, write_media
from tests.pipelines.ingest.helpers import check_contract, read_dst, row_digests, shard_files
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
        mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray, whatever the shell points at
        if ray.is_initialized():
            ray.shutdown()
        connect(num_cpus=4)
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
    assert out.returncode == 2
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
    assert out.returncode == 2
    assert "failed a request" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr


@pytest.mark.integration
def test_refused_credentials_and_missing_bucket(s3_src: str, s3_server: S3Server) -> None:
    bad = dict(s3_server.env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    out = _cli([f"{s3_src}/videos", "s3://avtime-out/x"], bad)
    assert out.returncode == 2 and "refused" in out.stderr and "wrong-secret" not in out.stderr
    out = _cli(["s3://no-such-bucket/videos", "s3://avtime-out/x"], s3_server.env)
    assert out.returncode == 2 and "does not exist" in out.stderr


class FlakyS3Proxy:
    """An HTTP proxy in front of the real S3 that answers every `fail_every`-th request with
    503 SlowDown (a transient error) and forwards the others unchanged."""

    def __init__(self, upstream: str, fail_every: int) -> None:
        self.upstream = urlparse(upstream)
        self.fail_every, self.requests, self.failed = fail_every, 0, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for uploads

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = io.BytesIO()
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        out.write(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return out.getvalue()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with proxy.lock:
                    proxy.requests += 1
                    fail = proxy.requests % proxy.fail_every == 0
                    proxy.failed += int(fail)
                if fail:
                    msg = b"<Error><Code>SlowDown</Code><Message>try again</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"
                }
                headers["Content-Length"] = str(len(body))
                up = proxy.upstream
                conn = http.client.HTTPConnection(up.hostname or "", up.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                skip = ("transfer-encoding", "connection")
                if self.command != "HEAD":  # a HEAD answer keeps the object's length
                    skip += ("content-length",)
                for k, v in resp.getheaders():
                    if k.lower() not in skip:
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_transient_s3_errors_are_retried(
    s3_src: str, s3_ray: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FlakyS3Proxy(s3_ray.endpoint, fail_every=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        items = [InputItem(source=f"{s3_src}/videos/{n}") for n in ("a.mp4", "c.mkv")]
        dst = "s3://avtime-out/flaky"
        marker = process_group(0, items, dst, CFG)  # the worker's code path, in this process
        assert [o["reject"] for o in marker["outcomes"]] == [None, None]
        assert [o["rows"] for o in marker["outcomes"]] == [2, 2]
        fs, root = storage.arrow_filesystem(dst)
        rows = 0
        for shard in marker["shards"]:
            table = pq.read_table(f"{root}/{shard['path']}", filesystem=fs)
            rows += table.num_rows
            Image.open(io.BytesIO(table.column("frames")[0].as_py()[-1])).load()
        assert rows == 4
        assert storage.exists(f"{dst}/_progress/group-00000.json")
    finally:
        proxy.close()
    assert proxy.failed >= 3  # the job really met (and survived) transient errors


@pytest.mark.integration
def test_s3_dying_mid_job_is_named_in_one_line(
    s3_src: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """The S3 server stops answering once the Ray Data job has started (its tasks read inputs
    and write shards): `avtime preprocess` ends in one line naming S3, the endpoint and what it
    was doing, not Ray's generic "UDF failed"."""
    from tests.servers import TcpForwarder

    proxy = TcpForwarder(urlparse(s3_server.endpoint).port or 80)
    env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": proxy.endpoint,
           "RAY_AUTH_MODE": "disabled"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    dst = f"{s3_server.bucket('avtime-out')}/outage"
    proc = subprocess.Popen(
        [sys.executable, "-m", "avtime.training.cli.main", "preprocess", f"{s3_src}/videos", dst,
         "--workers", "1", "--verbose"],  # --verbose: Ray Data's "Starting execution" line
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "Starting execution" in line:  # the Ray Data job (its tasks) has begun
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(180), "".join(lines[-30:])
    proxy.kill()
    proc.wait(timeout=600)
    reader.join(timeout=30)
    err = "".join(lines)
    ours = [line for line in err.splitlines() if line.startswith("avtime")]
    assert proc.returncode == 1, err[-3000:]
    assert len(ours) == 1 and "Traceback" not in err, err[-3000:]
    assert f"S3 at {proxy.endpoint} stopped answering" in ours[0]
    assert "wrote shards to s3://avtime-out/outage" in ours[0] and "rerun" in ours[0]
    assert "UDF failed" not in ours[0]
