"""One line and one exit code for every failure a user can cause or meet.

`main` alone catches what a subcommand raises and calls `classify`: it walks the chain that
Ray and the S3 client wrap errors in (`storage.error_chain`: Ray's `.cause`, `__cause__`) and
takes the first link it knows, by type (`isinstance`):

- an `AvtimeError` (pipelines/errors.py): its own line and exit code;
- S3 that does not answer or refuses the credentials, an MLflow store that does not answer or
  is not one: exit 2 (`StoreError`'s code);
- a bad input: YAML that does not parse, a file that is not UTF-8 or not Parquet, a missing
  path, a file where a folder is needed, any other ValueError (`models` raises those): exit 2;
- a full disk or another OS error: exit 1.

Anything else is exit 1 with its type and message. Ctrl-C is exit 130. A Ray task's error
crosses the process boundary as text; `storage.s3_unreachable` is the one place that reads it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from avtime.pipelines import storage
from avtime.pipelines.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AvtimeError,
    StoreError,
    one_line,
)

S3_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
# (module, class) of third-party errors, matched with isinstance when their module is loaded.
S3_CLIENT_ERRORS = (("botocore.exceptions", "ClientError"),)
S3_NO_CREDENTIALS = (("botocore.exceptions", "NoCredentialsError"),)
PARQUET_ERRORS = (("pyarrow.lib", "ArrowInvalid"), ("pyarrow.lib", "ArrowIOError"))
YAML_ERRORS = (("yaml", "YAMLError"),)
SQL_ERRORS = (("sqlalchemy.exc", "DatabaseError"), ("sqlite3", "DatabaseError"))
HTTP_UNREACHABLE = (("requests.exceptions", "ConnectionError"),)
MLFLOW_ERRORS = (("mlflow.exceptions", "MlflowException"),)
Describer = Callable[[BaseException], "tuple[int, str] | None"]

chain = storage.error_chain  # `exc`, then what it wraps (Ray's .cause, __cause__)


def _is(exc: BaseException, specs: tuple[tuple[str, str], ...]) -> bool:
    types = storage.loaded_types(specs)
    return bool(types) and isinstance(exc, types)


def _unreachable_s3(name: str) -> str:
    return (
        f"cannot reach S3 at {storage.redacted_endpoint()} ({name}); check that the server is up "
        "and AWS_ENDPOINT_URL"
    )


def _s3(exc: BaseException) -> tuple[int, str] | None:
    """S3 that does not answer, or refuses the credentials."""
    if _is(exc, storage.S3_UNREACHABLE_TYPES):
        return StoreError.exit_code, _unreachable_s3(type(exc).__name__)
    if _is(exc, S3_NO_CREDENTIALS):
        return (
            StoreError.exit_code,
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    if _is(exc, S3_CLIENT_ERRORS) or isinstance(exc, PermissionError):
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) or str(exc)
        if any(c in code for c in S3_AUTH_CODES):
            return StoreError.exit_code, (
                f"S3 at {storage.redacted_endpoint()} refused the credentials "
                f"({one_line(code)}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
    return None


def _tracking(exc: BaseException) -> tuple[int, str] | None:
    """An MLflow store that does not answer, or a file that is not an MLflow database."""
    text = str(exc)
    if _is(exc, SQL_ERRORS) and "database" in text.lower():
        return StoreError.exit_code, (
            f"the MLflow tracking store is not an MLflow database "
            f"({one_line(text.split(' [SQL:')[0])}); check --tracking-uri or MLFLOW_TRACKING_URI"
        )
    if _is(exc, MLFLOW_ERRORS) and any(_is(link, HTTP_UNREACHABLE) for link in chain(exc)):
        return StoreError.exit_code, (
            f"cannot reach the MLflow server ({one_line(storage.redact_url(text))[:200]}); check "
            "that it is up and --tracking-uri / MLFLOW_TRACKING_URI"
        )
    return None


def _bad_input(exc: BaseException) -> tuple[int, str] | None:
    """A file that is not what it should be, or a path that is missing or in the way."""
    text = str(exc)
    if _is(exc, PARQUET_ERRORS) and "arquet" in text:
        return (
            EXIT_USAGE,
            f"a file is not valid Parquet ({one_line(text)}); run `avtime verify` on it",
        )
    if _is(exc, YAML_ERRORS):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or text
        return EXIT_USAGE, f"the YAML file does not parse{where}: {one_line(str(problem))}"
    if isinstance(exc, UnicodeDecodeError):
        return (
            EXIT_USAGE,
            f"a text file is not UTF-8 (byte {exc.object[exc.start]:#04x} at {exc.start})",
        )
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        return (
            EXIT_USAGE,
            f"{exc.filename} is in the way: a file where a folder is needed; pick another path",
        )
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        what = exc.strerror or text
        return EXIT_USAGE, f"{exc.filename}: {what.lower()}" if exc.filename else one_line(text)
    return None


def _environment(exc: BaseException) -> tuple[int, str] | None:
    """A full disk, or another OS error: the work failed (exit 1)."""
    if storage.disk_full(exc):
        name = getattr(exc, "filename", None)
        where = f" at {name}" if name else ""
        return EXIT_FAILED, f"no space left on the device{where}; free some space and rerun"
    return None


DESCRIBERS: tuple[Describer, ...] = (_s3, _tracking, _bad_input, _environment)


def _wrapper(exc: BaseException) -> bool:
    """Ray's RayTaskError/UserCodeException wrap the real error in `.cause` (a RayTaskError may
    even subclass the real error's type, with the remote traceback as its message)."""
    return isinstance(getattr(exc, "cause", None), BaseException)


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line without newlines) for `exc`: the first link of its chain that is an
    AvtimeError or a known kind, else the S3 fault read from a Ray task's text, else the root."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    links = [link for link in chain(exc) if not _wrapper(link)] or [exc]
    for link in links:
        if isinstance(link, AvtimeError):
            return link.exit_code, link.line()
        for describe_one in DESCRIBERS:
            known = describe_one(link)
            if known is not None:
                return known
    unreachable = storage.s3_unreachable(exc)  # also inside a Ray task's remote traceback
    if unreachable is not None:
        return StoreError.exit_code, _unreachable_s3(unreachable)
    root = links[-1]
    if isinstance(root, ValueError) and str(root):
        return EXIT_USAGE, one_line(str(root))
    if isinstance(root, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    return EXIT_FAILED, one_line(
        f"{type(root).__name__}: {root}"
    ) + " (rerun with --debug for details)"


def describe(exc: BaseException) -> str:
    """The one line for `exc` (see `classify`)."""
    return classify(exc)[1]


def report(command: str, exc: BaseException) -> int:
    """Print `avtime COMMAND: <line>` on stderr; return the exit code."""
    code, line = classify(exc)
    print(f"avtime {command}: {line}", file=sys.stderr)
    return code
