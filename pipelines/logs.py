"""Quiet by default: avtime's own lines (and Ray Data's progress bars) on the console; the INFO
lines and warnings of Ray, MLflow, torch and the other libraries go to a log file.

`avtime --verbose ...` (or `AVTIME_VERBOSE=1`, which Ray's worker processes inherit) shows them
all as before. The log file is `<workdir>/avtime.log` for commands with a workdir (the demo),
else `avtime.log` in the system's temp folder under `avtime/`; it is appended to, and the
command names it once when something was written there at WARNING or above.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

VERBOSE_ENV = "AVTIME_VERBOSE"
# Libraries whose own console handlers are replaced by the log file (Ray installs its handler
# on import; `route_library_logs` is called again once Ray is imported).
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "huey", "sqlalchemy", "urllib3", "botocore",
                   "s3fs", "fsspec", "aiobotocore", "matplotlib", "PIL", "filelock")  # fmt: skip
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbose() -> bool:
    """Whether this process (or the avtime command that started its Ray) asked for --verbose."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def default_log_file(workdir: str | None = None) -> Path:
    """`<workdir>/avtime.log`, or `<temp>/avtime/avtime.log` without a workdir."""
    if workdir:
        return Path(workdir).absolute() / "avtime.log"
    return Path(tempfile.gettempdir()) / "avtime" / "avtime.log"


class _AvtimeOnly(logging.Filter):
    """Pass records of avtime's own loggers (the console shows only those)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("avtime")


def setup(log_file: Path, *, show_all: bool = False) -> None:
    """Route logging for this process: every record to `log_file`, avtime's own to the
    console; with `show_all`, everything to the console as the libraries would print it.

    Sets the variables that Ray's and MLflow's own console output obey (they are read at
    import, and Ray's workers inherit them when this process starts Ray): no `(pid=...)`
    prefixes or colour codes on forwarded worker lines, MLflow's records through the root
    logger.
    """
    if show_all:
        os.environ[VERBOSE_ENV] = "1"
        logging.basicConfig(level=logging.INFO, format=_FORMAT)
        return
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    to_file.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.addFilter(_AvtimeOnly())
    console.setLevel(logging.INFO)
    for handler in (to_file, console):
        setattr(handler, "_avtime", True)  # noqa: B010 - marks the handlers this module added
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_avtime", False)]:
        root.removeHandler(old)
        old.close()
    root.handlers += [to_file, console]  # others (a test runner's) stay
    root.setLevel(logging.INFO)
    setattr(root, "_avtime_quiet", True)  # noqa: B010 - route_library_logs acts only after setup
    logging.captureWarnings(True)  # warnings.warn -> the `py.warnings` logger -> the file
    warnings.simplefilter("default")
    route_library_logs()


def route_library_logs() -> None:
    """Send the records of `LIBRARY_LOGGERS` through the root logger's handlers (the log file)
    instead of their own console handlers. Call again after a library that configures its
    logger on import (Ray) has been imported. Does nothing under --verbose."""
    if verbose() or not getattr(logging.getLogger(), "_avtime_quiet", False):
        return
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in LIBRARY_LOGGERS]
    for name in {*LIBRARY_LOGGERS, *names}:
        lib = logging.getLogger(name)
        keep: list[logging.Handler] = [
            h for h in lib.handlers if isinstance(h, logging.FileHandler)
        ]
        lib.handlers = keep  # their own files (Ray's session logs) stay; consoles go
        lib.propagate = True


def quiet_worker() -> None:
    """In a Ray worker process: keep library INFO lines and warnings off the forwarded output
    (WARNING and above of avtime's own loggers still show). Nothing under --verbose."""
    if verbose():
        return
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("avtime").setLevel(logging.INFO)
    warnings.simplefilter("ignore")
