"""`avtime submit`: run an avtime command on a Ray cluster as a Ray Job.

The job spec is built here from plain options, so it can be printed (`--dry-run`) and tested
without a cluster:
- entrypoint: the avtime command line itself, checked with avtime's own parser. When secrets are
  forwarded it is wrapped as `avtime submit --exec -- <command>` (see `training.cluster.jobenv`).
- runtime_env: the project as `working_dir` (with `excludes`), optionally its pip requirements
  (`--pip`) or a container image (`--image`), and the non-secret settings as `env_vars`
  (MLflow tracking URI, S3 endpoint, region).
- secrets (`--env NAME`): read from the caller's environment, shipped in a private package, never
  in `env_vars`, job metadata, the printed spec or the logs.

Talking to the cluster (`connect`, `submit`, `follow`) is in `training.cluster.submit_cluster`.
"""

from __future__ import annotations

import json
import secrets as _random
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from avtime.pipelines.errors import ClusterError
from avtime.training.cluster import jobenv

MASK = "***"
PLAIN_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
DEFAULT_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", "*.egg-info", "build", "dist", "data", "demo_out", "mlruns", "mlartifacts",
    "*.db", "checkpoints", "*.mp4", "*.parquet", "*.pt", "*.ckpt",
)  # fmt: skip
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(ClusterError):
    """A problem the user can fix; the message says what and how."""


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """What `avtime submit` was asked to do (already parsed from the command line)."""

    address: str | None
    command: Sequence[str]
    env_names: Sequence[str] = ()
    working_dir: Path | None = None
    excludes: Sequence[str] = ()
    pip: bool = False
    image: str | None = None
    mlflow_uri: str | None = None
    s3_endpoint: str | None = None
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A Ray job, ready to submit. `secret_names` are resolved from the environment at submit."""

    address: str
    command: tuple[str, ...]
    entrypoint: str
    submission_id: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    secret_names: tuple[str, ...] = ()
    entrypoint_num_cpus: float | None = None
    warnings: tuple[str, ...] = field(default=())


def project_root() -> Path | None:
    """The avtime source tree this code runs from, if it is a checkout (has pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def normalize_address(address: str | None, environ: Mapping[str, str]) -> str:
    """The dashboard URL (`http://host:8265`) from `--address` or RAY_API_SERVER_ADDRESS."""
    value = address or environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not value and environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        value = environ["RAY_ADDRESS"]
    if not value:
        raise SubmitError(
            "no cluster address: pass --address http://HEAD:8265 (the Ray dashboard), "
            "or set RAY_API_SERVER_ADDRESS"
        )
    if value.startswith("ray://"):
        raise SubmitError(
            f"--address {value}: use the Ray dashboard's HTTP address (http://HEAD:8265) for "
            "job submission, not the ray:// client address"
        )
    if "://" not in value:
        value = f"http://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubmitError(f"--address {value}: expected http(s)://HOST:PORT")
    return value.rstrip("/")


def validate_command(command: Sequence[str]) -> tuple[str, ...]:
    """Check that `command` is a valid avtime command line (parsed by avtime's own parser)."""
    cmd = tuple(command)
    if cmd and cmd[0] != "--":
        raise SubmitError(
            f"put `--` before the avtime command: avtime submit [options] -- {shlex.join(cmd)}"
        )
    cmd = cmd[1:]
    if not cmd:
        raise SubmitError(
            "no command: put the avtime command after `--`, e.g. "
            "avtime submit --address http://HEAD:8265 -- avtime train --config smoke"
        )
    if cmd[0] != "avtime":
        raise SubmitError(
            f"the command after `--` must start with `avtime`, got {shlex.join(cmd)!r}"
        )
    if len(cmd) < 2 or cmd[1].startswith("-"):
        raise SubmitError("name the avtime subcommand to run, e.g. `-- avtime train ...`")
    if cmd[1] == "submit":
        raise SubmitError("a submitted job cannot itself run `avtime submit`")
    check_avtime_args(cmd[1:])
    return cmd


def check_avtime_args(args: Sequence[str]) -> None:
    """Parse `args` with `training.cli.main.build_parser()`; raise SubmitError if it rejects them."""
    import contextlib
    import io

    from avtime.training.cli.main import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            last = err.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
            msg = f"`avtime {shlex.join(args)}` is not a valid command: {last[0]}"
            raise SubmitError(msg) from None


def _secret_uri(uri: str) -> bool:
    """True when a URI carries a password (user:password@host)."""
    try:
        return bool(urlsplit(uri).password)
    except ValueError:
        return False


def split_env(
    opts: SubmitOptions, environ: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...], list[str]]:
    """(plain env_vars, secret names, warnings) for the job."""
    plain = {k: environ[k] for k in PLAIN_ENV if environ.get(k)}
    if opts.mlflow_uri:
        plain["MLFLOW_TRACKING_URI"] = opts.mlflow_uri
    if opts.s3_endpoint:
        plain["AWS_ENDPOINT_URL"] = opts.s3_endpoint
    names: list[str] = []
    for name in opts.env_names:
        if not name or "=" in name or not name.replace("_", "").isalnum():
            raise SubmitError(
                f"--env {name!r}: give the NAME of a variable in your environment (no =VALUE)"
            )
        if name not in environ:
            raise SubmitError(f"--env {name}: not set in your environment; export it first")
        if name not in names:
            names.append(name)
    uri = plain.get("MLFLOW_TRACKING_URI", "")
    flags = {"MLFLOW_TRACKING_URI": ("--mlflow-uri", opts.mlflow_uri),
             "AWS_ENDPOINT_URL": ("--s3-endpoint", opts.s3_endpoint)}  # fmt: skip
    for var, (flag, given) in flags.items():
        if not _secret_uri(plain.get(var, "")):
            continue  # a password in the URI makes the whole URI a secret, never an env_var
        plain.pop(var)
        if var not in names:
            if given:
                raise SubmitError(
                    f"{flag} carries a password: put the URL in {var} and forward it with "
                    f"--env {var}, so it travels only as a secret"
                )
            names.append(var)
    for name in names:
        plain.pop(name, None)
    return plain, tuple(names), _tracking_warnings(uri)


def _tracking_warnings(uri: str) -> list[str]:
    if not uri:
        return [
            "no MLFLOW_TRACKING_URI: the job logs to a sqlite file inside its working dir on "
            "the cluster, which disappears with the cluster; pass --mlflow-uri http://HOST:5000"
        ]
    if not uri.startswith(("http://", "https://", "databricks")):
        return [f"MLFLOW_TRACKING_URI {uri!r} is a path on the cluster's nodes, not this machine"]
    return []


def pip_requirements(root: Path) -> list[str]:
    """The `[project] dependencies` of the project's pyproject.toml."""
    path = root / "pyproject.toml"
    if not path.is_file():
        raise SubmitError(f"--pip: {path} does not exist; pass --working-dir PROJECT")
    deps = tomllib.loads(path.read_text()).get("project", {}).get("dependencies", [])
    return [str(d) for d in deps]


def build_runtime_env(opts: SubmitOptions, plain_env: Mapping[str, str]) -> dict[str, Any]:
    """The runtime_env, without the secrets package (added at submit time)."""
    if opts.pip and opts.image:
        raise SubmitError("--pip and --image exclude each other: an image carries its packages")
    env: dict[str, Any] = {}
    if opts.working_dir is not None:
        if not opts.working_dir.is_dir():
            raise SubmitError(f"--working-dir {opts.working_dir}: not a directory")
        env["working_dir"] = str(opts.working_dir)
        env["excludes"] = [*DEFAULT_EXCLUDES, *opts.excludes]
    if opts.pip:
        env["pip"] = pip_requirements(opts.working_dir or project_root() or Path.cwd())
    if opts.image:
        env["image_uri"] = opts.image
    if plain_env:
        env["env_vars"] = dict(plain_env)
    return env


def build_spec(opts: SubmitOptions, environ: Mapping[str, str]) -> JobSpec:
    """Check the options and turn them into a JobSpec; raise SubmitError on bad input."""
    address = normalize_address(opts.address, environ)
    command = validate_command(opts.command)
    plain, secret_names, warnings = split_env(opts, environ)
    runtime_env = build_runtime_env(opts, plain)
    entrypoint = shlex.join(command)
    if secret_names:
        entrypoint = shlex.join(("avtime", "submit", "--exec", "--", *command))
        runtime_env["worker_process_setup_hook"] = jobenv.SETUP_HOOK
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    submission_id = opts.submission_id or f"avtime-{command[1]}-{stamp}-{_random.token_hex(3)}"
    metadata = {"avtime.command": command[1], "avtime.submitted_by": _user(environ)}
    return JobSpec(
        address=address,
        command=command,
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env=runtime_env,
        metadata=metadata,
        secret_names=secret_names,
        entrypoint_num_cpus=opts.entrypoint_num_cpus,
        warnings=tuple(warnings),
    )


def _user(environ: Mapping[str, str]) -> str:
    import getpass

    try:
        return environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def render_spec(spec: JobSpec) -> str:
    """The job spec as JSON, as it will be submitted; secret values are never included."""
    runtime_env = dict(spec.runtime_env)
    if spec.secret_names:
        runtime_env["py_modules"] = [f"<private package {jobenv.PACKAGE}: secrets by name>"]
    doc: dict[str, Any] = {
        "address": spec.address,
        "submission_id": spec.submission_id,
        "entrypoint": spec.entrypoint,
        "runtime_env": runtime_env,
        "metadata": spec.metadata,
        "secrets": {name: MASK for name in spec.secret_names},
    }
    if spec.entrypoint_num_cpus is not None:
        doc["entrypoint_num_cpus"] = spec.entrypoint_num_cpus
    return json.dumps(doc, indent=2)
