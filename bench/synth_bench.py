"""Throughput of `avtime synth`: videos per second with W workers against 1 worker, same run.

    python -m bench.synth_bench [--videos 200] [--seconds 10] [--workers 2] [--baseline-videos 10]

Prints wall time, CPU time (this process and its workers), videos/s, the parallel/serial ratio
and the load average, since a shared machine slows every number here.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run(videos: int, seconds: float, workers: int, seed: int) -> tuple[float, float, float]:
    """(wall s, cpu s, seconds of video) for one corpus in a fresh temp folder."""
    from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus

    out = tempfile.mkdtemp(prefix="avtime-synth-bench-")
    try:
        cpu0, t0 = _cpu_s(), time.perf_counter()
        metas = generate_corpus(out, SynthConfig(videos=videos, seconds=seconds, seed=seed),
                                workers=workers)  # fmt: skip
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, sum(m["duration_s"] for m in metas)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synth_bench", description=__doc__)
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--baseline-videos", type=int, default=10)
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    b_wall, b_cpu, b_sec = _run(args.baseline_videos, args.seconds, 1, seed=1)
    wall, cpu, sec = _run(args.videos, args.seconds, args.workers, seed=0)
    load1 = os.getloadavg()
    base_rate, rate = args.baseline_videos / b_wall, args.videos / wall
    print(f"synth baseline: {args.baseline_videos} x {args.seconds:g} s videos, 1 worker: "
          f"{b_wall:.1f} s wall, {b_cpu:.1f} s CPU, {base_rate:.2f} videos/s, "
          f"{b_cpu / args.baseline_videos:.2f} CPU-s/video")  # fmt: skip
    print(f"synth: {args.videos} x {args.seconds:g} s videos ({sec:.0f} s of video), "
          f"{args.workers} workers: {wall:.1f} s wall, {cpu:.1f} s CPU, {rate:.2f} videos/s, "
          f"{cpu / args.videos:.2f} CPU-s/video")  # fmt: skip
    print(
        f"ratio {args.workers} workers / 1 worker (videos/s): {rate / base_rate:.2f}x; "
        f"load average before {load0[0]:.1f}, after {load1[0]:.1f} on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
