"""URIs on local disk or S3, behind one small API.

`s3://bucket/key` goes through s3fs, configured only from the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and
`AWS_SESSION_TOKEN` when set). Connects time out after a few seconds and transient errors are
retried a bounded number of times, so a dead endpoint fails fast with a `StorageError` that says
what to check. Credentials never appear in messages. Anything else is a local path.

Writes are atomic: `write_bytes` and `put_file` make a file visible only once it is complete
(local: a temp file in the same folder, then rename; S3: a single PUT or a completed multipart
upload, which S3 publishes atomically).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from avtime.pipelines.errors import StoreError

S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 30.0
S3_MAX_ATTEMPTS = 4  # botocore attempts per request ("standard" retry mode: backoff + jitter)
S3FS_RETRIES = 2
CHECK_TIMEOUT_S = 8.0  # the up-front check of SRC/DST gives up sooner than data transfers
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


# Errors that mean "S3 did not answer", as (module, class) of botocore, aiohttp, urllib3 and
# builtins. A live exception is matched with isinstance (against the modules already imported:
# an error of a module never imported cannot have been raised); the names are also read in the
# text of a Ray task's error, whose remote traceback arrives as a message.
S3_UNREACHABLE_TYPES = (
    ("botocore.exceptions", "EndpointConnectionError"),
    ("botocore.exceptions", "ConnectTimeoutError"),
    ("botocore.exceptions", "ReadTimeoutError"),
    ("botocore.exceptions", "ConnectionClosedError"),
    ("aiohttp", "ClientConnectorError"),
    ("aiohttp", "ServerDisconnectedError"),
    ("urllib3.exceptions", "ReadTimeoutError"),
    ("builtins", "ConnectionRefusedError"),
)
S3_UNREACHABLE = tuple(dict.fromkeys(name for _, name in S3_UNREACHABLE_TYPES))
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


class StorageError(StoreError, RuntimeError):
    """A storage location cannot be reached, read or written. The message says what to check.
    Exit 2."""


def redact_url(text: str) -> str:
    """`text` with the user info (`user:password@`) of every URL in it replaced by `***@`.
    The one redactor for messages, MLflow params and tags."""
    return _URL_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


def redacted_endpoint() -> str:
    """The S3 endpoint for messages, redacted (`redact_url`)."""
    return redact_url(endpoint_url())


def loaded_types(specs: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The exception classes `(module, name)` of `specs` whose modules are already imported."""
    found = (getattr(sys.modules.get(mod), name, None) for mod, name in specs)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: Ray's `.cause`, else `__cause__` or `__context__` (no cycles)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)


def s3_unreachable(exc: BaseException) -> str | None:
    """The name of the first error in `exc`'s chain (`error_chain`) that means S3 did not
    answer, or None. A Ray task's error arrives as text (the remote traceback inside the
    RayTaskError's message), so the messages are read too: the one place errors are
    recognised by text."""
    types = loaded_types(S3_UNREACHABLE_TYPES)
    pattern = re.compile(r"\b(" + "|".join(S3_UNREACHABLE) + r")\b")
    for link in error_chain(exc):
        if types and isinstance(link, types):
            return next(t.__name__ for t in types if isinstance(link, t))
        found = pattern.findall(str(link))
        if found:
            return str(found[0])
    return None


_DISK_FULL = re.compile(r"No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]")


def disk_full(exc: BaseException) -> bool:
    """True when `exc`'s chain says a disk is full (ENOSPC, or a quota): as an OSError, or as
    the text of an error raised inside a Ray task (see `s3_unreachable`)."""
    for link in error_chain(exc):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _DISK_FULL.search(str(link)):
            return True
    return False


def is_s3(uri: str) -> bool:
    """True for `s3://...` URIs."""
    return uri.startswith(("s3://", "s3a://"))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI with '/'."""
    out = base.rstrip("/") if is_s3(base) else str(base).rstrip(os.sep) or os.sep
    for p in parts:
        out = f"{out}/{p.strip('/')}" if is_s3(base) else os.path.join(out, p)
    return out


def s3_path(uri: str) -> str:
    """`bucket/key` of an s3:// URI (what s3fs calls a path)."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri!r} names no bucket; expected s3://bucket/prefix")
    return f"{parsed.netloc}{parsed.path}".rstrip("/")


def endpoint_url() -> str:
    """The S3 endpoint from AWS_ENDPOINT_URL, or AWS's regional endpoint."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return url.rstrip("/")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return f"https://s3.{region}.amazonaws.com"


def s3_filesystem(
    *, read_timeout_s: float = S3_READ_TIMEOUT_S, attempts: int = S3_MAX_ATTEMPTS,
    retries: int = S3FS_RETRIES,
) -> Any:  # fmt: skip
    """An s3fs filesystem from the standard AWS env vars, with short timeouts and retries."""
    import s3fs

    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    fs = s3fs.S3FileSystem(
        key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        token=os.environ.get("AWS_SESSION_TOKEN") or None,
        endpoint_url=endpoint_url(),
        client_kwargs={"region_name": region},
        config_kwargs={
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": read_timeout_s,
            "retries": {"max_attempts": attempts, "mode": "standard"},
        },
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    fs.retries = retries  # s3fs's own retries on top of botocore's, with backoff
    return fs


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(), s3_path(uri)
    import fsspec

    return fsspec.filesystem("file"), str(Path(uri).expanduser().absolute())


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path) for pyarrow/Ray readers; S3 goes through s3fs."""
    import pyarrow.fs as pafs

    if is_s3(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(s3_filesystem())), s3_path(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def check_endpoint(timeout_s: float = S3_CONNECT_TIMEOUT_S) -> None:
    """Raise StorageError at once if the S3 endpoint's TCP port does not answer."""
    url = endpoint_url()
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise StorageError(
            f"cannot connect to the S3 endpoint {redact_url(url)} ({exc.__class__.__name__}: {exc}); "
            "check AWS_ENDPOINT_URL and that the server is up"
        ) from None


def check_location(uri: str, *, must_exist: bool) -> None:
    """Fail fast, with a clear message, if `uri` cannot be used (dead endpoint, no bucket...)."""
    if not is_s3(uri):
        if must_exist and not Path(uri).exists():
            raise StorageError(f"{uri} does not exist")
        return
    check_endpoint()
    fs = s3_filesystem(read_timeout_s=CHECK_TIMEOUT_S, attempts=1, retries=1)
    path = s3_path(uri)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
        if must_exist and not fs.exists(path):
            raise StorageError(f"{uri} does not exist")
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"bucket s3://{bucket} does not exist; create it first") from None
    except PermissionError as exc:
        raise StorageError(
            f"access to s3://{bucket} was refused ({_short(exc)}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from None
    except Exception as exc:
        raise StorageError(
            f"the S3 endpoint {redacted_endpoint()} failed a request for {uri} ({_short(exc)}); "
            "check AWS_ENDPOINT_URL and that the server is an S3 service that is up"
        ) from None


def _short(exc: BaseException) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."


def exists(uri: str) -> bool:
    """True if the file exists."""
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str) -> bytes:
    """Whole file contents."""
    fs, path = filesystem(uri)
    data: bytes = fs.cat_file(path)
    return data


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files under a folder/prefix as URIs of the same kind (sorted); [] if it does not exist."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    found = fs.find(path) if recursive else fs.ls(path, detail=False)
    out = []
    for p in found:
        p = str(p)
        if is_s3(uri):
            out.append(f"s3://{p}")
        elif os.path.isfile(p):
            out.append(p)
    return sorted(out)


def file_size(uri: str) -> int:
    """Size in bytes."""
    fs, path = filesystem(uri)
    return int(fs.size(path))


def makedirs(uri: str) -> None:
    """Create a local folder (no-op on S3, which has no folders)."""
    if not is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)


def put_file(local: str | Path, uri: str) -> None:
    """Publish a finished local file at `uri` atomically (rename on local disk, upload on S3)."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        fs.put_file(str(local), path)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(local, target)
    except OSError:  # another device: copy next to the target, then rename
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)


def get_file(uri: str, local: str | Path) -> None:
    """Copy `uri` to the local path `local`."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        fs.get_file(path, str(local))
    else:
        shutil.copyfile(uri, local)


def remove(uri: str) -> None:
    """Delete a file if it exists."""
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def local_scratch(prefix: str = "avtime-") -> str:
    """A fresh local temp folder (caller removes it)."""
    return tempfile.mkdtemp(prefix=prefix)
