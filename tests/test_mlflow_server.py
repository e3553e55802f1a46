"""The MLflow server commands the docs give answer a cluster's Host headers, and only those.

Since MLflow 3.5 `mlflow server` refuses a request whose Host header is not on --allowed-hosts
with 403 ("Invalid Host header"). Each way the project starts a server is run here for real, on
127.0.0.1 on a free port, with only what cannot run on a test machine swapped (bind address, port,
database path, S3 artifact destination); --allowed-hosts, --serve-artifacts and --workers are
used as written:

- the command in docs/cluster.md ("MLflow server for a cluster", a machine of its own);
- the arguments of the Deployment in infra/kuberay/mlflow.yaml;
- infra/local_stack.sh start mlflow;
- tests/servers.py's start_mlflow(allowed_hosts=...), with the patterns the docs describe.

Requests are sent with http.client so the Host header is the one a cluster client would send;
a control request with an unlisted Host must get 403, so the tests fail if the check is off.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.servers import free_port, start_mlflow, stop_group, wait_http

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).parent / "mlflow")
API = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
EVIL = "evil.example.com"
K8S_HOSTS = [
    "mlflow.mlflow.svc.cluster.local:5000",
    "mlflow.mlflow.svc.cluster.local",
    "mlflow.mlflow.svc:5000",
    "mlflow.mlflow:5000",
    "mlflow:5000",
]


def status(port: int, host: str, path: str = API) -> int:
    """HTTP status of GET path on 127.0.0.1:port, sent with this Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def with_options(argv: list[str], values: dict[str, str]) -> list[str]:
    """argv with each `--name value` / `--name=value` in values given the new value; every one
    of them must be there already (so the documented command keeps its shape)."""
    out, seen, i = [], set(), 0
    while i < len(argv):
        name, eq, _ = argv[i].partition("=")
        if name in values:
            out.append(f"{name}={values[name]}")
            seen.add(name)
            i += 1 if eq else 2
        else:
            out.append(argv[i])
            i += 1
    assert seen == set(values), f"not in the command: {set(values) - seen}"
    return out


def local_values(tmp: Path, port: int) -> dict[str, str]:
    return {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination": str(tmp / "artifacts"),
    }


def docs_command() -> list[str]:
    """The `mlflow server ...` line of docs/cluster.md, as the shell would split it."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]
    (line,) = [ln for b in blocks for ln in b.splitlines() if ln.startswith("mlflow server ")]
    argv = shlex.split(line)  # $HOME, $AVTIME_BUCKET: only in the options swapped for local ones
    return argv


def manifest_command() -> list[str]:
    """command + args of the Deployment in infra/kuberay/mlflow.yaml."""
    docs = yaml.safe_load_all((ROOT / "infra" / "kuberay" / "mlflow.yaml").read_text())
    (deploy,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return list(c["command"]) + list(c["args"])


@contextlib.contextmanager
def run_server(argv: list[str], tmp: Path) -> Iterator[int]:
    """Run `mlflow server` as argv says (argv[0] 'mlflow' -> this venv's); yield its port."""
    assert argv[:2] == ["mlflow", "server"], argv
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [MLFLOW, "server", *with_options(argv[2:], local_values(tmp, port))]
    with open(tmp / "mlflow.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)  # a loaded CI box is slow
        yield port
    finally:
        stop_group(proc)  # the server and its job consumers


def assert_answers(port: int, allowed: list[str]) -> None:
    for host in allowed:
        assert status(port, host) == 200, host
    assert status(port, EVIL) == 403  # the control: the check is on
    assert status(port, f"{EVIL}:5000") == 403
    assert status(port, EVIL, "/health") == 200  # exempt: probes need no Host


def test_docs_command_answers_its_names(tmp_path: Path) -> None:
    argv = docs_command()
    assert "--allowed-hosts" in " ".join(argv) and "--serve-artifacts" in argv
    with run_server(argv, tmp_path) as port:
        assert_answers(port, ["mlflow.internal", "mlflow.internal:5000", "localhost:5000",
                              f"127.0.0.1:{port}"])  # fmt: skip
        assert status(port, "mlflow.mlflow.svc.cluster.local:5000") == 403  # not its name


def test_kubernetes_manifest_answers_the_service_names(tmp_path: Path) -> None:
    argv = manifest_command()
    with run_server(argv, tmp_path) as port:
        assert_answers(port, [*K8S_HOSTS, "localhost:5000", f"127.0.0.1:{port}"])
        assert status(port, "mlflow.internal:5000") == 403
        assert status(port, "10.1.2.3:5000") == 403  # the list replaced MLflow's default


def test_local_stack_answers_cluster_names(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "AVTIME_STACK_DIR": str(tmp_path / "state"),
        "AVTIME_BIN": str(Path(sys.executable).parent),
        "AVTIME_MLFLOW_PORT": str(port),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    script = str(ROOT / "infra" / "local_stack.sh")
    out = subprocess.run([script, "start", "mlflow"], env=env, capture_output=True, text=True,
                         timeout=400)  # fmt: skip
    try:
        assert out.returncode == 0, out.stderr
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in out.stdout
        assert_answers(port, [*K8S_HOSTS, "mlflow.internal", "mlflow.internal:5000",
                              f"127.0.0.1:{port}", f"localhost:{port}"])  # fmt: skip
    finally:
        stop = subprocess.run([script, "stop", "mlflow"], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert stop.returncode == 0 and "mlflow: stopped" in stop.stderr, stop.stderr


def test_allowed_hosts_patterns_as_documented(tmp_path: Path) -> None:
    """What docs/cluster.md says about the list: `*` patterns match the whole header, port
    included, and an explicit list replaces the default (localhost, private IPs)."""
    patterns = "mlflow.mlflow.svc.cluster.local:*,*.internal,10.*"
    server = start_mlflow(tmp_path, timeout=300, allowed_hosts=patterns)
    try:
        port = int(server.uri.rsplit(":", 1)[1])
        for host in ("mlflow.mlflow.svc.cluster.local:5000", "mlflow.mlflow.svc.cluster.local:80",
                     "mlflow.internal", "10.0.1.23:5000"):  # fmt: skip
            assert status(port, host) == 200, host
        for host in ("mlflow.internal:5000", "mlflow.mlflow.svc.cluster.local",
                     f"127.0.0.1:{port}", "192.168.1.5:5000", EVIL):  # fmt: skip
            assert status(port, host) == 403, host
    finally:
        server.stop()
