"""One line for every failure a user can cause or meet: what went wrong and what to do.

`main` runs each subcommand inside `one_line`: any exception becomes one line on stderr and a
non-zero exit code; the traceback is printed only with `--debug`. `describe` unwraps the chains
that Ray and the S3 client wrap errors in (Ray's `UserCodeException`, `RayTaskError`,
`__cause__`) down to the first error that says something, and names the known kinds:
S3 unreachable or refusing credentials, a Parquet file that is not one, YAML that does not
parse, a file that is not UTF-8, a missing path.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from avtime.pipelines import storage

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_CHARS = 600

# Errors whose message is already written for the user (ours, and Python's own file errors).
USER_ERRORS = (
    "ConfigError", "StorageError", "IngestError", "ListingError", "VerifyError", "LayoutError",
    "SubmitError", "CompareError", "CheckpointError", "SampleError", "LockError", "ClusterError",
)  # fmt: skip
S3_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")


chain = storage.error_chain  # `exc`, then what it wraps (Ray's .cause, __cause__)


def _first_line(text: str) -> str:
    return " ".join(text.split())[:MAX_CHARS]


def _s3(exc: BaseException) -> str | None:
    name = type(exc).__name__
    if name in storage.S3_UNREACHABLE:
        return (
            f"cannot reach S3 at {storage.redacted_endpoint()} ({name}); check that the server "
            "is up and AWS_ENDPOINT_URL"
        )
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) or str(exc)
    if name in ("ClientError", "PermissionError") and any(c in code for c in S3_AUTH_CODES):
        return (
            f"S3 at {storage.redacted_endpoint()} refused the credentials ({_first_line(code)}); check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if name == "NoCredentialsError":
        return "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    return None


def _known(exc: BaseException) -> str | None:
    """The message for one known kind of error, or None."""
    name = type(exc).__name__
    if name in USER_ERRORS:
        return _first_line(str(exc))
    s3 = _s3(exc)
    if s3 is not None:
        return s3
    if name in ("ArrowInvalid", "ArrowIOError") and "arquet" in str(exc):
        return f"a file is not valid Parquet ({_first_line(str(exc))}); run `avtime verify` on it"
    if name in ("YAMLError", "ScannerError", "ParserError", "ComposerError"):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return f"the YAML file does not parse{where}: {_first_line(str(problem))}"
    if isinstance(exc, UnicodeDecodeError):
        return f"a text file is not UTF-8 (byte {exc.object[exc.start]:#04x} at {exc.start})"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        return f"{exc.filename} is in the way: a file where a folder is needed; pick another path"
    if name in ("DatabaseError", "OperationalError") and "database" in str(exc).lower():
        return (
            f"the MLflow tracking store is not an MLflow database "
            f"({_first_line(str(exc).split(' [SQL:')[0])}); "
            "check --tracking-uri or MLFLOW_TRACKING_URI"
        )
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        what = exc.strerror or str(exc)
        return f"{exc.filename}: {what.lower()}" if exc.filename else _first_line(str(exc))
    return None


def describe(exc: BaseException) -> str:
    """One line (no newlines) for `exc`: the first known error in its chain, else the root's
    type and message."""
    links = list(chain(exc))
    for link in links:
        known = _known(link)
        if known is not None:
            return known
    unreachable = storage.s3_unreachable(exc)  # also inside a Ray task's remote traceback
    if unreachable is not None:
        return (
            f"cannot reach S3 at {storage.redacted_endpoint()} ({unreachable}); check that the "
            "server is up and AWS_ENDPOINT_URL"
        )
    root = links[-1]
    if isinstance(root, ValueError) and str(root):
        return _first_line(str(root))
    return _first_line(f"{type(root).__name__}: {root}") + " (rerun with --debug for details)"


def one_line(command: str, run: Callable[[], int], debug: bool) -> int:
    """Run `run()`; turn any exception into one stderr line and an exit code (traceback with
    `debug`). Ctrl-C exits 130; a usage/config mistake 2; anything else 1."""
    try:
        return run()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"avtime {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every failure is turned into a line
        if debug:
            traceback.print_exc()
        code = EXIT_USAGE if type(exc).__name__ == "ConfigError" else EXIT_ERROR
        prefix = "config error: " if code == EXIT_USAGE else ""
        print(f"avtime {command}: {prefix}{describe(exc)}", file=sys.stderr)
        return code
