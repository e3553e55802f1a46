"""One error type for what avtime tells a user: `AvtimeError` carries its exit code and its line.

Raise a subclass with a message that says what went wrong and what to do; `avtime`'s `main`
prints `avtime COMMAND: <message>` on stderr and exits with the error's code (the traceback only
with `--debug`). The codes (README, "When something goes wrong"):

    2    the command could not start: a bad option, config or input (a missing path, a file
         that is not what it should be, a checkpoint that is not one), or a store it needs
         (S3, MLflow, a Ray cluster) that does not answer or refuses the credentials
    1    the work started and failed (a job error, a run that holds the lock, too many rejects)
    130  interrupted (Ctrl-C)

This module imports nothing, so every layer may raise these (`models` keeps raising
ValueError, which `main` treats as a bad input: exit 2).
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_CHARS = 600


def one_line(text: str) -> str:
    """`text` on one line (whitespace runs become one space), at most MAX_CHARS characters."""
    return " ".join(text.split())[:MAX_CHARS]


class AvtimeError(Exception):
    """An error whose message is written for the user. `exit_code` is the process's exit code;
    `prefix` goes before the message (e.g. "config error: ")."""

    exit_code: int = EXIT_FAILED
    prefix: str = ""

    def line(self) -> str:
        """The one line printed after `avtime COMMAND: `."""
        return one_line(self.prefix + str(self))


class UsageError(AvtimeError, ValueError):
    """A bad option, value or input on the command line: fix the command and rerun. Exit 2.
    Also a ValueError, so code that validates values may catch it as one."""

    exit_code = EXIT_USAGE


class MissingInputError(UsageError):
    """An input path (folder, file, dataset) that does not exist. Exit 2."""


class StoreError(AvtimeError):
    """A store the command needs (S3, MLflow, a Ray cluster) cannot be reached or refuses
    the credentials. Exit 2: nothing ran; fix the endpoint or credentials and rerun."""

    exit_code = EXIT_USAGE


class ClusterError(StoreError):
    """The Ray cluster cannot be reached, refuses the token, or cannot be started."""


class TrackingError(StoreError):
    """The MLflow tracking store cannot be reached or is not an MLflow store."""


class JobError(AvtimeError):
    """The work started and failed (a task crashed, the storage stopped answering mid-job, the
    destination is held by another run). Exit 1; a rerun resumes where one is possible."""

    exit_code = EXIT_FAILED


class Interrupted(AvtimeError):
    """Stopped by the user (Ctrl-C) with something to say about what keeps running. Exit 130."""

    exit_code = EXIT_INTERRUPTED
