"""The cluster side of `avtime submit`: connect with a Ray token, submit, stream logs, exit code.

Uses the Ray Jobs SDK with an explicit `Authorization: Bearer <token>` header when a Ray token is
available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, in Ray's order), so it works
whatever RAY_AUTH_MODE says on this machine. The project is uploaded from a snapshot taken at
submit time, so files edited during the upload cannot make Ray's two content hashes disagree.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from avtime.training.cluster import jobenv
from avtime.training.cluster.submit import MASK, TERMINAL, JobSpec, SubmitError

RETRY_S = 60.0  # how long a "not ready" cluster is retried
NOT_READY = ("no available agent", "try again later")


def auth_token(environ: Mapping[str, str]) -> str | None:
    """The Ray auth token, in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_value = environ.get("RAY_AUTH_TOKEN_PATH")
    if path_value:
        path = Path(path_value).expanduser()
        if not path.is_file():
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: no such file")
        return path.read_text().strip() or None
    default = Path(environ.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    if not default.is_file():
        return None
    return default.read_text().strip() or None


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """`Authorization: Bearer <token>` when a Ray token is available, else {}."""
    token = auth_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str, environ: Mapping[str, str]) -> Any:
    """A JobSubmissionClient for `address`; connection and auth problems become SubmitError."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers(environ)
    try:
        return JobSubmissionClient(address, headers=headers or None)
    except AuthenticationError as exc:
        raise SubmitError(auth_message(address, str(exc), bool(headers))) from None
    except ConnectionError:
        raise SubmitError(
            f"cannot reach the Ray dashboard at {address}: is the cluster up, and is its "
            "dashboard port forwarded here (kubectl port-forward svc/<cluster>-head-svc 8265, "
            "or ray dashboard infra/aws/cluster.yaml)?"
        ) from None


def auth_message(address: str, detail: str, sent_token: bool) -> str:
    """A one-line explanation of a 401/403 from the cluster (never includes the token)."""
    if "Forbidden" in detail or "invalid" in detail.lower() or sent_token:
        return (
            f"authentication failed: the Ray cluster at {address} rejected the token "
            "(403 Forbidden). Set RAY_AUTH_TOKEN to this cluster's token (on the head: "
            "`ray get-auth-token`; KubeRay: the cluster's auth Secret)"
        )
    return (
        f"authentication required: the Ray cluster at {address} uses token auth and no token "
        "was found. export RAY_AUTH_TOKEN=<token> (on the head: `ray get-auth-token`)"
    )


def submit(client: Any, spec: JobSpec, environ: Mapping[str, str]) -> str:
    """Submit `spec`. The code snapshot and the secrets package live in a private temp dir only
    until they are uploaded."""
    from ray.exceptions import AuthenticationError

    values = {name: environ[name] for name in spec.secret_names}
    with tempfile.TemporaryDirectory(prefix="avtime-submit-") as tmp:
        runtime_env = dict(spec.runtime_env)
        if "working_dir" in runtime_env:
            code = Path(tmp) / "code"
            snapshot(Path(runtime_env["working_dir"]), runtime_env.get("excludes", ()), code)
            runtime_env["working_dir"] = str(code)
        if values:
            runtime_env["py_modules"] = [str(jobenv.write_package(Path(tmp) / "secrets", values))]

        def once() -> str:
            return str(
                client.submit_job(
                    entrypoint=spec.entrypoint,
                    submission_id=spec.submission_id,
                    runtime_env=runtime_env,
                    metadata=spec.metadata,
                    entrypoint_num_cpus=spec.entrypoint_num_cpus,
                )
            )

        try:
            return retry_not_ready(once)
        except AuthenticationError as exc:
            raise SubmitError(auth_message(spec.address, str(exc), True)) from None
        except RuntimeError as exc:
            raise SubmitError(f"the cluster refused the job: {_redact(str(exc), values)}") from None


def is_not_ready(exc: BaseException) -> bool:
    """True for the job API's transient answers right after `ray start` (the job agent is not
    up yet): "No available agent to submit job, please try again later"."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in NOT_READY)


def retry_not_ready(
    call: Callable[[], str], *, deadline_s: float = RETRY_S, pause_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> str:  # fmt: skip
    """`call()`, retried while the cluster answers that it is not ready, for up to
    `deadline_s`; one line on stderr says so. Other errors, and the last one, propagate."""
    end = clock() + deadline_s
    told = False
    while True:
        try:
            return call()
        except RuntimeError as exc:
            if not is_not_ready(exc) or clock() + pause_s > end:
                raise
            if not told:
                print(
                    f"[avtime submit] the cluster's job agent is not ready yet; retrying for up "
                    f"to {deadline_s:.0f} s",
                    file=sys.stderr,
                )
                told = True
            sleep(pause_s)


def _redact(text: str, values: Mapping[str, str]) -> str:
    for value in values.values():
        if value:
            text = text.replace(value, MASK)
    return text


def follow(client: Any, job_id: str, out: TextIO, poll_s: float = 1.0) -> int:
    """Stream the job's logs to `out` until it ends; return 0 if it succeeded, else non-zero."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream closed early; the job may still be running
        out.write(f"[avtime submit] log stream ended early ({exc}); waiting for the job\n")
    status = str(client.get_job_status(job_id))
    while status.split(".")[-1] not in TERMINAL:
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    return exit_code(client.get_job_info(job_id))


def exit_code(info: Any) -> int:
    """0 for SUCCEEDED; the driver's exit code (or 1) for FAILED or STOPPED."""
    status = str(getattr(info, "status", "")).split(".")[-1]
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code != 0 else 1


def project_files(root: Path, excludes: Sequence[str] = ()) -> list[str]:
    """Relative paths to upload: git's tracked and unignored files, else every file."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        return sorted({p for p in out.decode().split("\0") if p})
    except (OSError, subprocess.SubprocessError):
        return _walk(root, excludes)


def _walk(root: Path, excludes: Sequence[str]) -> list[str]:
    """Every file under `root`, not descending into excluded folders (e.g. .venv)."""
    out = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not excluded(str(rel / d), excludes)]
        out += [str(rel / f) if str(rel) != "." else f for f in files]
    return sorted(out)


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """True if `path` or any of its folders matches a pattern (gitignore-style names/globs)."""
    parts = path.split("/")
    for pattern in patterns:
        pat = pattern.strip("/")
        if fnmatch.fnmatch(path, pat) or any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def snapshot(root: Path, excludes: Sequence[str], dest: Path) -> int:
    """Copy the files to upload from `root` into `dest`; return how many were copied."""
    count = 0
    for rel in project_files(root, excludes):
        src = root / rel
        if excluded(rel, excludes) or not src.is_file():
            continue  # deleted since listing, or a link to a folder
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    return count
