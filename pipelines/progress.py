"""A tiny stderr progress bar for `avtime synth`, in plain Python.

tqdm is a dependency too (Ray Data draws its own progress bars with it); this bar is kept
because it also writes a line per tenth of the way when stderr is not a terminal (logs, CI).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`[#####.....] 12/200  3.4/s  eta 55s`, redrawn in place on a terminal.

    On a non-terminal stream (a log file, CI) it prints a line at each tenth of the way instead
    of carriage returns.
    """

    def __init__(self, total: int, label: str = "", unit: str = "", stream: TextIO | None = None):
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._render()

    def update(self, n: int = 1) -> None:
        self.count = min(self.total, self.count + n)
        self._render()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        frac = self.count / self.total if self.total else 1.0
        width = 30
        filled = int(round(width * frac))
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        if self.count >= self.total:
            eta_s = f"{elapsed:.1f}s"
        else:
            eta_s = f"eta {eta:.0f}s" if rate > 0 else "eta ?"
        bar = "#" * filled + "." * (width - filled)
        head = f"{self.label} " if self.label else ""
        return f"{head}[{bar}] {self.count}/{self.total} {rate:.2f} {self.unit}/s {eta_s}"

    def _render(self) -> None:
        if self._tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
            return
        decile = int(10 * self.count / self.total) if self.total else 10
        if decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line() + "\n")
            self.stream.flush()
