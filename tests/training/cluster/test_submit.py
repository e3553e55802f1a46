"""`avtime submit` without a cluster: the job spec, secret handling, token lookup, exit codes,
the job-side secrets package and the code snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from avtime.training.cli.main import main
from avtime.training.cluster import jobenv
from avtime.training.cluster.submit import SubmitError, SubmitOptions, build_spec, render_spec
from avtime.training.cluster.submit_cluster import (
    auth_headers,
    auth_token,
    excluded,
    exit_code,
    retry_not_ready,
    snapshot,
)

SECRET = "s3cr3t-value-never-shown"
ENV = {
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "AWS_ENDPOINT_URL": "http://s3:8333",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "HOME": "/nonexistent",
}


def opts(*command: str, **kw: object) -> SubmitOptions:
    base: dict[str, object] = {"address": "127.0.0.1:8265", "command": ["--", *command]}
    base.update(kw)
    return SubmitOptions(**base)  # type: ignore[arg-type]


@pytest.mark.unit
def test_spec_keeps_secrets_out_of_env_vars_and_print() -> None:
    spec = build_spec(
        opts("avtime", "synth", "out", "--videos", "2",
             env_names=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], working_dir=Path(".")),
        ENV,
    )  # fmt: skip
    assert spec.address == "http://127.0.0.1:8265"
    assert spec.entrypoint == "avtime submit --exec -- avtime synth out --videos 2"
    assert spec.secret_names == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert spec.runtime_env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ENDPOINT_URL": "http://s3:8333",
    }
    assert spec.runtime_env["worker_process_setup_hook"] == jobenv.SETUP_HOOK
    assert ".venv" in spec.runtime_env["excludes"]
    text = render_spec(spec)
    assert SECRET not in text and "AKIAEXAMPLE" not in text
    doc = json.loads(text)
    assert doc["secrets"] == {"AWS_ACCESS_KEY_ID": "***", "AWS_SECRET_ACCESS_KEY": "***"}
    assert SECRET not in json.dumps(spec.metadata) and spec.metadata["avtime.command"] == "synth"


@pytest.mark.unit
def test_plain_command_and_overrides() -> None:
    spec = build_spec(
        opts("avtime", "train", "--config", "smoke", mlflow_uri="http://other:5000", pip=True,
             working_dir=Path(".")),
        {"AWS_DEFAULT_REGION": "eu-west-1"},
    )  # fmt: skip
    assert spec.entrypoint == "avtime train --config smoke"  # no secrets: no wrapper
    assert "worker_process_setup_hook" not in spec.runtime_env
    assert spec.runtime_env["env_vars"] == {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "MLFLOW_TRACKING_URI": "http://other:5000",
    }
    assert any(dep.startswith("ray[") for dep in spec.runtime_env["pip"])
    assert spec.submission_id.startswith("avtime-train-")


@pytest.mark.unit
def test_password_in_tracking_uri_is_a_secret() -> None:
    env = {"MLFLOW_TRACKING_URI": "https://bob:hunter2@mlflow.example.com"}
    spec = build_spec(opts("avtime", "train", "--config", "smoke"), env)
    assert spec.secret_names == ("MLFLOW_TRACKING_URI",)
    assert "hunter2" not in render_spec(spec)
    assert "env_vars" not in spec.runtime_env


@pytest.mark.unit
def test_password_in_s3_endpoint_is_a_secret() -> None:
    env = {"AWS_ENDPOINT_URL": "https://key:s3cret-pw@s3.example.com", "AWS_REGION": "eu-west-1"}
    spec = build_spec(opts("avtime", "train", "--config", "smoke"), env)
    assert spec.secret_names == ("AWS_ENDPOINT_URL",)
    assert spec.runtime_env["env_vars"] == {"AWS_REGION": "eu-west-1"}
    assert "s3cret-pw" not in render_spec(spec) and "s3cret-pw" not in json.dumps(spec.metadata)
    with pytest.raises(SubmitError, match="--s3-endpoint carries a password"):
        build_spec(
            opts("avtime", "train", "--config", "smoke", s3_endpoint="https://k:pw@s3.x"), {}
        )


@pytest.mark.unit
def test_not_ready_cluster_is_retried_for_a_minute(capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    calls: list[float] = []

    def sleep(s: float) -> None:
        now[0] += s

    def agent_starting() -> str:
        calls.append(now[0])
        if now[0] < 20:
            raise RuntimeError("No available agent to submit job, please try again later.")
        return "raysubmit_1"

    assert retry_not_ready(agent_starting, sleep=sleep, clock=lambda: now[0]) == "raysubmit_1"
    assert calls[-1] == 20 and len(calls) == 11
    assert capsys.readouterr().err.count("not ready yet") == 1

    def never_ready() -> str:
        raise RuntimeError("No available agent to submit job, please try again later.")

    now[0] = 0.0
    with pytest.raises(RuntimeError, match="No available agent"):
        retry_not_ready(never_ready, sleep=sleep, clock=lambda: now[0])
    assert 58 <= now[0] <= 60

    def refused() -> str:
        raise RuntimeError("Job with submission_id x already exists")

    now[0] = 0.0
    with pytest.raises(RuntimeError, match="already exists"):
        retry_not_ready(refused, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 0.0  # other errors are not retried


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kw", "command", "message"),
    [
        ({}, ("avtime", "synth"), "not a valid command"),
        ({}, ("python", "x.py"), "must start with `avtime`"),
        ({}, ("avtime", "submit", "--dry-run"), "cannot itself run"),
        ({}, ("avtime", "nosuch"), "invalid choice"),
        ({}, (), "no command"),
        ({"address": None}, ("avtime", "train", "--config", "smoke"), "no cluster address"),
        ({"address": "ray://h:10001"}, ("avtime", "train", "--config", "smoke"), "not the ray://"),
        ({"env_names": ["NOT_SET_ANYWHERE"]}, ("avtime", "train", "--config", "smoke"),
         "not set in your environment"),
        ({"env_names": ["A=b"]}, ("avtime", "train", "--config", "smoke"), "no =VALUE"),
        ({"pip": True, "image": "img"}, ("avtime", "train", "--config", "smoke"), "exclude"),
    ],
)  # fmt: skip
def test_bad_input_names_the_problem(kw: dict, command: tuple[str, ...], message: str) -> None:
    with pytest.raises(SubmitError, match=message):
        build_spec(opts(*command, **kw), {})


@pytest.mark.unit
def test_missing_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["submit", "--address", "h:8265", "--dry-run", "avtime", "train", "--config", "x"])
    assert code == 2
    assert "put `--` before the avtime command" in capsys.readouterr().err


@pytest.mark.unit
def test_dry_run_prints_masked_spec(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVTIME_TEST_SECRET", SECRET)
    argv = ["submit", "--address", "http://h:8265", "--env", "AVTIME_TEST_SECRET", "--dry-run"]
    assert main([*argv, "--", "avtime", "train", "--config", "smoke", "--data", "s3://b/s"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    doc = json.loads(out)
    assert doc["secrets"] == {"AVTIME_TEST_SECRET": "***"}
    assert doc["entrypoint"].endswith("avtime train --config smoke --data s3://b/s")


@pytest.mark.unit
def test_token_lookup_order(tmp_path: Path) -> None:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text("from-path\n")
    home = {"HOME": str(tmp_path)}
    assert auth_token({**home, "RAY_AUTH_TOKEN": "from-env"}) == "from-env"
    assert auth_token({**home, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}) == "from-path"
    assert auth_headers(home) == {"Authorization": "Bearer from-home"}
    assert auth_headers({"HOME": str(tmp_path / "none")}) == {}
    with pytest.raises(SubmitError, match="no such file"):
        auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("status", "driver_code", "expected"),
    [("SUCCEEDED", 0, 0), ("FAILED", 3, 3), ("FAILED", None, 1), ("STOPPED", None, 1),
     ("JobStatus.SUCCEEDED", None, 0)],
)  # fmt: skip
def test_exit_code(status: str, driver_code: int | None, expected: int) -> None:
    assert exit_code(SimpleNamespace(status=status, driver_exit_code=driver_code)) == expected


@pytest.mark.unit
def test_secrets_package_round_trip(tmp_path: Path) -> None:
    pkg = jobenv.write_package(tmp_path, {"AVT_A": "1", "AVT_B": SECRET})
    assert (pkg / jobenv.FILENAME).stat().st_mode & 0o077 == 0  # private to the user
    code = (
        "import os; from avtime.training.cluster import jobenv; names = jobenv.load_into_environ(); "
        "print(names, os.environ['AVT_B'] == " + repr(SECRET) + ")"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{tmp_path}:{Path.cwd()}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "['AVT_A', 'AVT_B'] True"
    assert jobenv.read_secrets() == {}  # no package on this process's path


@pytest.mark.unit
def test_snapshot_copies_only_project_files(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for rel in ["a.py", "pkg/b.py", ".venv/lib/x.py", "data/big.bin", "pkg/__pycache__/b.pyc",
                "notes.db", "ignored_dir/c.py"]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / ".gitignore").write_text("ignored_dir/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    excludes = [".venv", "data", "__pycache__", "*.db"]
    assert excluded("pkg/__pycache__/b.pyc", excludes) and not excluded("pkg/b.py", excludes)
    assert snapshot(root, excludes, tmp_path / "snap") == 3
    copied = sorted(str(p.relative_to(tmp_path / "snap")) for p in (tmp_path / "snap").rglob("*"))
    assert [c for c in copied if "." in Path(c).name] == [".gitignore", "a.py", "pkg/b.py"]
