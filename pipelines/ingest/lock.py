"""One writer per destination: a lock file in `DST/_progress/lock.json`, local or s3://.

Two `avtime preprocess` runs on one DST would delete each other's shards as orphans and write
rows twice; two `avtime train` runs on one run folder would overwrite each other's checkpoints.
So a run takes the lock before it touches DST (`job` names the command in its messages,
`name` the lock file, and `details` what else the owner wants a second run to read):

- The lock names its owner (host, pid, a random token) and the time it was last renewed; a
  thread renews it every `renew_s` while the run lives, and the run removes it when it ends.
- A second run finds a live lock and fails at once with a message naming the owner.
- A lock not renewed for `stale_s` (its run was killed) is taken over, with a message; so is
  at once a lock whose owner ran on this host and whose process is gone.
- Taking the lock is write-then-check: write our record, wait `settle_s`, read it back. Two runs
  that race both write; the later write wins and the earlier writer sees a record not its own
  and backs off. This needs only read-after-write consistency, which local disks and S3 give.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avtime.pipelines import storage
from avtime.pipelines.errors import JobError

LOCK_NAME = "_progress/lock.json"
RENEW_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0


class LockError(JobError, RuntimeError):
    """The destination is locked by a live run; the message names it."""


def _record(token: str, details: dict[str, str]) -> dict[str, Any]:
    host, pid = socket.gethostname(), os.getpid()
    owner = ", ".join([f"{host} pid {pid}", *(f"{k} {v}" for k, v in details.items())])
    return {
        "owner": owner,
        "host": host,
        "pid": pid,
        "token": token,
        "renewed_unix": time.time(),
        "details": details,
    }


def _gone(held: dict[str, Any]) -> bool:
    """True when the lock's owner ran on this host and its process no longer exists (a run
    killed with SIGKILL): its lock need not age `stale_s` first."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _read(uri: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except ValueError:  # half-written or foreign: treat as stale
        return {"owner": "unknown", "token": "", "renewed_unix": 0.0}
    return doc if isinstance(doc, dict) else None


@dataclass
class DestinationLock:
    """The lock of one destination; `acquire()` before writing, `release()` after."""

    dst: str
    job: str = "preprocess"  # the command, in messages
    name: str = LOCK_NAME  # the lock file, relative to `dst`
    details: dict[str, str] = field(default_factory=dict)  # shown to a second run; see `describe`
    remedy: str = "wait for it to finish, or use another DST"  # what a second run can do
    renew_s: float = RENEW_S
    stale_s: float = STALE_S
    settle_s: float = SETTLE_S
    notify: Callable[[str], None] = print
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return storage.join(self.dst, self.name)

    def _write(self) -> None:
        storage.write_bytes(self.uri, json.dumps(_record(self.token, self.details)).encode())

    def describe(self, **details: str) -> None:
        """Add `details` (e.g. the MLflow run id) to the lock record, written at once."""
        self.details.update(details)
        self._write()

    def _check_free(self) -> None:
        """Raise LockError when a live run holds the lock; note a stale one we take over."""
        held = _read(self.uri)
        if held is None or held.get("token") == self.token:
            return
        age = time.time() - float(held.get("renewed_unix", 0.0))
        if _gone(held):
            self.notify(
                f"{self.job}: taking over the lock of {held.get('owner')} on {self.dst} (that "
                "process no longer exists)"
            )
            return
        if age < self.stale_s:
            raise LockError(
                f"{self.dst} is being written by another {self.job} run ({held.get('owner')}, "
                f"lock renewed {age:.0f} s ago); {self.remedy}. A "
                f"lock not renewed for {self.stale_s:.0f} s is taken over"
            )
        self.notify(
            f"{self.job}: taking over the stale lock of {held.get('owner')} on {self.dst} "
            f"(not renewed for {age:.0f} s; its run is gone)"
        )

    def acquire(self) -> None:
        """Take the lock or raise LockError; then keep it renewed until `release()`."""
        self._check_free()
        self._write()
        time.sleep(self.settle_s)
        held = _read(self.uri)
        if held is None or held.get("token") != self.token:
            owner = (held or {}).get("owner", "another run")
            raise LockError(
                f"{self.dst}: another {self.job} run ({owner}) took it at the same time"
            )
        self._thread = threading.Thread(target=self._renew, daemon=True, name="avtime-lock")
        self._thread.start()

    def _renew(self) -> None:
        failed = False
        while not self._stop.wait(self.renew_s):
            try:
                held = _read(self.uri)
                if held is not None and held.get("token") not in (self.token, None):
                    self.notify(f"{self.job}: lost the lock on {self.dst} to {held.get('owner')}")
                    return
                self._write()
                failed = False
            except Exception as exc:  # noqa: BLE001 - the job itself reports storage faults
                if not failed:
                    self.notify(
                        f"{self.job}: could not renew the lock on {self.dst} ({type(exc).__name__})"
                    )
                failed = True

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours (best effort: a storage fault
        here must not hide the job's own error; the lock then goes stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_s + 5)
        try:
            held = _read(self.uri)
            if held is not None and held.get("token") == self.token:
                storage.remove(self.uri)
        except Exception as exc:  # noqa: BLE001
            self.notify(
                f"{self.job}: could not remove the lock on {self.dst} ({type(exc).__name__})"
            )

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
