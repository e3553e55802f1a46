"""Job-side half of `avtime submit`'s secret forwarding.

Secrets named with `avtime submit --env NAME` never go into the Ray job's `runtime_env.env_vars`
(the job API returns those to anyone who can list jobs). Instead the submitter writes them into a
tiny private Python package, `avtime_job_secrets/secrets.json`, and ships it as a runtime_env
`py_modules` entry. Ray stores that package in the cluster's internal KV store (the job API can
check that a package exists but never returns its content), pins it for the job's lifetime, and
unpacks it on each node that runs the job. The job metadata only holds its opaque `gcs://` URI.

In the cluster, two things read it:
- the entrypoint `avtime submit --exec -- avtime ...` (the job's driver) calls `load_into_environ`
  and then runs the avtime command in the same process;
- every Ray worker process of the job runs `setup_hook` (the runtime_env
  `worker_process_setup_hook`), so Ray Data tasks and Ray Train workers see the same variables.

This module is imported in every worker process, so it imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "avtime_job_secrets"
FILENAME = "secrets.json"
SETUP_HOOK = "avtime.training.cluster.jobenv.setup_hook"


def write_package(parent: Path, values: Mapping[str, str]) -> Path:
    """Write the secrets package under `parent` (a private temp dir); return its directory.

    A random salt goes into the file, so the package's content hash (which Ray puts in its
    `gcs://_ray_pkg_<hash>.zip` URI) cannot be used to guess the secret values offline.
    """
    pkg = parent / PACKAGE
    pkg.mkdir(mode=0o700, parents=True, exist_ok=False)
    (pkg / "__init__.py").write_text('"""Secrets forwarded by avtime submit (do not log)."""\n')
    path = pkg / FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        json.dump({"salt": secrets.token_hex(16), "env": dict(values)}, f)
    return pkg


def package_file() -> Path | None:
    """The `secrets.json` of this job's secrets package, or None if the job has none."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / FILENAME
    return path if path.is_file() else None


def read_secrets() -> dict[str, str]:
    """The forwarded secrets ({} when the job has no secrets package)."""
    path = package_file()
    if path is None:
        return {}
    data = json.loads(path.read_text())
    env = data.get("env", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in env.items()}


def load_into_environ() -> list[str]:
    """Put the forwarded secrets into `os.environ`; return their names (never the values)."""
    values = read_secrets()
    os.environ.update(values)
    return sorted(values)


def setup_hook() -> None:
    """Ray `worker_process_setup_hook`: runs once at the start of each worker process."""
    load_into_environ()
