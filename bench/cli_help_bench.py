"""Time to answer `avtime --help` against `python -c pass`, same run (target: under 1 s).

    python -m bench.cli_help_bench [--runs 7] [--command "avtime eval --help"]

Each command runs N times in a fresh interpreter (the way a user meets it); prints the median
and the spread of each, and the ratio help / bare interpreter. The `avtime` command is run as
`python -m avtime.training.cli.main`, so no console-script wrapper is timed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

RUN_BY_DEFAULT = True


def time_runs(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of `runs` runs of `cmd` (each must exit 0)."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def _line(name: str, times: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cli_help_bench", description=__doc__)
    p.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    p.add_argument("--command", default="avtime --help", help="the avtime command line to time")
    args = p.parse_args(argv)
    words = shlex.split(args.command)
    if words[:1] == ["avtime"]:
        words = words[1:]
    avtime = [sys.executable, "-m", "avtime.training.cli.main", *words]
    base = [sys.executable, "-c", "pass"]
    time_runs(avtime, 1)  # warm the file cache and the .pyc files once
    load0 = os.getloadavg()
    t_base = time_runs(base, args.runs)
    t_help = time_runs(avtime, args.runs)
    load1 = os.getloadavg()
    print(_line("python -c pass", t_base))
    print(_line(args.command, t_help))
    ratio = statistics.median(t_help) / statistics.median(t_base)
    print(f"ratio {args.command!r} / 'python -c pass' (medians): {ratio:.1f}x")
    print(f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
