"""`avtime --help`, `avtime CMD --help` and argparse usage errors answer without importing the
heavy libraries (torch, ray, mlflow, av): each is run in a fresh interpreter that then lists
which of them `sys.modules` holds. (How fast that is: bench/cli_help_bench.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from avtime.training.cli.main import SUBCOMMANDS

pytestmark = pytest.mark.integration

HEAVY = ("torch", "ray", "mlflow", "av")
PROBE = f"""
import contextlib, io, json, sys
from avtime.training.cli.main import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as exc:
        code = exc.code
heavy = sorted(m for m in {repr(HEAVY)} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}}))
"""


def probe(argv: list[str]) -> dict[str, object]:
    """Run `avtime ARGV` in a fresh interpreter: its exit code, output, and heavy modules."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_top_level_help_imports_no_heavy_library() -> None:
    result = probe(["--help"])
    assert result["code"] == 0 and "COMMAND" in str(result["out"])
    assert result["heavy"] == [], result["heavy"]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help_imports_no_heavy_library(command: str) -> None:
    result = probe([command, "--help"])
    assert result["code"] == 0 and f"avtime {command}" in str(result["out"])
    assert result["heavy"] == [], result["heavy"]


@pytest.mark.parametrize(
    "argv",
    [
        ["nosuch"],
        ["train"],  # --config is required
        ["preprocess", "only-src"],
        ["eval", "action", "--dataset", "nope"],
        ["synth", "out", "--videos", "many"],
        ["preprocess", "v", "out", "--fps", "nan"],
    ],
)
def test_usage_errors_import_no_heavy_library(argv: list[str]) -> None:
    result = probe(argv)
    assert result["code"] == 2, result
    assert result["heavy"] == [], result["heavy"]


def test_eval_pretext_help_imports_no_heavy_library() -> None:
    result = probe(["eval", "pretext", "--help"])
    assert result["code"] == 0 and "--checkpoint" in str(result["out"])
    assert result["heavy"] == [], result["heavy"]
