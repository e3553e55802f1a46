"""Ingest: `avtime preprocess` vs `ffmpeg -threads 1` per core, memory at 4x the corpus, bytes.

    python -m bench.ingest_bench [--workdir ~/.cache/avtime/bench-ingest] [--videos 48] [--seconds 10]
        [--size 1280x720] [--src-fps 30] [--workers N]

The corpus is one synthetic 720p H.264/AAC clip (`avtime synth` content) hard-linked N times
(4N for the memory figure), cached in the workdir. Every number comes from this one run on this machine:
- speed against ffmpeg: wall time of `ffmpeg -threads 1` decoding + fps filter + fast-bilinear scale of video and
  mono resampling of audio to null outputs, one process per core, against (a) the
  `avtime preprocess` command (Ray startup included) and (b) the same job in a process whose
  Ray is already up (steady state). Also 1 vs N workers (scaling).
- memory growth: peak RSS of the `avtime preprocess` process tree (driver, Ray and its workers) on the 4x
  corpus over the 1x corpus.
- compression: shard bytes against raw uint8 RGB frames at the stored fps and size, and KB per second.
- Per-frame costs of the stages on one file (decode, scale, JPEG via Pillow or PyAV's mjpeg).
The load average is printed: on a shared machine every wall time moves with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.ingest_stages import stage_costs

FPS, SHORT, RATE = 25, 128, 16000


def children_cpu() -> float:
    """CPU seconds of reaped child processes (and their reaped descendants) so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def make_corpus(work: Path, videos: int, seconds: float, size: tuple[int, int], fps: int) -> Path:
    """Base clip (cached) hard-linked into corpus_<videos>/; returns that folder."""
    from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus

    base_dir = work / f"base_{size[0]}x{size[1]}_{fps}_{seconds:g}"
    clips = sorted(base_dir.glob("videos/**/*.mp4"))
    if not clips:
        cfg = SynthConfig(
            videos=1, seconds=seconds, duration_jitter=0.0, sizes=(size,), fps_choices=(fps,),
            sample_rates=(48000,), preset="veryfast",
        )  # fmt: skip
        print(f"writing the base clip ({size[0]}x{size[1]}, {seconds:g} s) ...", flush=True)
        generate_corpus(base_dir, cfg, workers=1)
        clips = sorted(base_dir.glob("videos/**/*.mp4"))
    corpus = work / f"corpus_{videos}_{base_dir.name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        link = corpus / f"v{i:05d}.mp4"
        if not link.exists():
            os.link(clips[0], link)
    return corpus


def ffmpeg_wall(files: list[Path], procs: int, repeat: int = 1) -> tuple[float, float] | None:
    """(wall s, CPU s) of one `ffmpeg -threads 1` per file, `procs` at a time; None if missing."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    vf = f"fps={FPS},scale=-2:{SHORT}:flags=fast_bilinear"

    def one(f: Path) -> None:
        cmd = [
            exe, "-nostdin", "-v", "error", "-threads", "1", "-i", str(f), "-filter_threads", "1",
            "-map", "0:v:0", "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null",
            "-map", "0:a:0", "-ac", "1", "-ar", str(RATE), "-f", "s16le", "-y", "/dev/null",
        ]  # fmt: skip
        subprocess.run(cmd, check=True)

    best: tuple[float, float] | None = None
    for _ in range(repeat):
        t0, c0 = time.monotonic(), children_cpu()
        with ThreadPoolExecutor(procs) as pool:
            list(pool.map(one, files))
        run = (time.monotonic() - t0, children_cpu() - c0)
        best = run if best is None or run[0] < best[0] else best
    return best


def _tree(root: int) -> set[int]:
    """`root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return tree


def _rss_and_cpu(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds so far) of one process; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_pages * os.sysconf("SC_PAGE_SIZE"), (int(fields[11]) + int(fields[12])) / ticks


def watch(proc: subprocess.Popen[Any], every_s: float = 0.25) -> tuple[int, float]:
    """Poll a process tree until it exits: (peak summed RSS, summed CPU s of every process)."""
    peak = 0
    cpu_by_pid: dict[int, float] = {}
    while proc.poll() is None:
        total = 0
        for pid in _tree(proc.pid):
            rss, cpu = _rss_and_cpu(pid)
            total += rss
            cpu_by_pid[pid] = max(cpu, cpu_by_pid.get(pid, 0.0))
        peak = max(peak, total)
        time.sleep(every_s)
    return peak, sum(cpu_by_pid.values())


def run_cli(src: Path, dst: Path, workers: int) -> dict[str, Any]:
    """`avtime preprocess` as a fresh process: wall, peak tree RSS, last line."""
    shutil.rmtree(dst, ignore_errors=True)
    exe = str(Path(sys.executable).with_name("avtime"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    log = dst.parent / f"{dst.name}.log"
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "preprocess", str(src), str(dst), "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        peak, cpu = watch(proc)
    wall = time.monotonic() - t0
    lines = log.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"avtime preprocess failed ({proc.returncode}); see {log}")
    return {"wall": wall, "cpu": cpu, "peak_rss": peak, "summary": lines[-1] if lines else ""}


STEADY = """
import json, os, shutil, sys, time
from avtime.pipelines.raycluster import connect
from bench.ingest_bench import tree_cpu
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import run_ingest
src, work, counts, repeat = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
connect(num_cpus=max(counts))
warm = os.path.join(work, "warm_src")
os.makedirs(warm, exist_ok=True)
first = sorted(os.listdir(src))[0]
if not os.path.exists(os.path.join(warm, first)):
    os.link(os.path.join(src, first), os.path.join(warm, first))
shutil.rmtree(os.path.join(work, "warm_dst"), ignore_errors=True)
run_ingest(warm, os.path.join(work, "warm_dst"), IngestConfig(), workers=max(counts))
out = {}
for w in counts * repeat:
    dst = os.path.join(work, f"steady_{w}")
    shutil.rmtree(dst, ignore_errors=True)
    t0, c0 = time.monotonic(), tree_cpu(os.getpid())
    run_ingest(src, dst, IngestConfig(), workers=w)
    wall, cpu = time.monotonic() - t0, tree_cpu(os.getpid()) - c0
    if w not in out or wall < out[w][0]:
        out[w] = (wall, cpu)
print("RESULT " + json.dumps(out))
"""


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by the live processes of a tree."""
    return sum(_rss_and_cpu(pid)[1] for pid in _tree(root))


def run_steady(
    src: Path, work: Path, worker_counts: Sequence[int], repeat: int
) -> dict[int, tuple[float, float]]:
    """{workers: (best wall s, its CPU s)} of run_ingest with Ray already up and warm."""
    import json

    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-c", STEADY, str(src), str(work), json.dumps(list(worker_counts))]
    proc = subprocess.run(
        [*argv, str(repeat)], capture_output=True, text=True, env=env, check=False, cwd=root
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {int(k): (v[0], v[1]) for k, v in json.loads(line[7:]).items()}
    raise RuntimeError(f"steady-state run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def shard_stats(dst: Path) -> dict[str, float]:
    """Shard bytes, raw RGB bytes at the stored size, seconds of video."""
    import pyarrow.parquet as pq

    shards = sorted(dst.glob("part-*.parquet"))
    size = sum(p.stat().st_size for p in shards)
    raw = 0.0
    seconds = 0.0
    audio = 0.0
    for p in shards:
        t = pq.read_table(p, columns=["num_frames", "height", "width", "duration_s", "num_samples"])
        for r in t.to_pylist():
            raw += r["num_frames"] * r["height"] * r["width"] * 3
            seconds += r["duration_s"]
            audio += 2 * r["num_samples"]
    return {"bytes": size, "raw": raw, "seconds": seconds, "audio": audio}


def _print_ratios(r: dict[str, Any]) -> None:
    def row(name: str, value: float | None, target: str, ok: bool | None) -> None:
        shown = "n/a" if value is None else f"{value:.2f}"
        flag = "" if ok is None else ("  ok" if ok else "  MISS")
        print(f"  {name:56s} {shown:>8s}   {target}{flag}")

    print("\nRatios (this run, this machine):")
    ff = r.get("ffmpeg")
    for key, label in (("cli", "avtime preprocess (incl. Ray startup)"), ("steady", "steady")):
        v = None if ff is None else ff[0] / r[key]
        row(
            f"speed: ffmpeg wall / {label} wall",
            v,
            "target >= 0.8",
            None if v is None else v >= 0.8,
        )
    v = None if ff is None else ff[1] / r["cli_cpu"]
    row("speed: ffmpeg CPU s / avtime preprocess CPU s", v, "(contention-free view)", None)
    v = None if ff is None else ff[1] / r["steady_cpu"]
    row("speed: ffmpeg CPU s / steady CPU s", v, "(contention-free view)", None)
    sc = r["scale"]
    row(f"scaling: 1 worker wall / {r['workers']} workers wall", sc, "target >= 1.8", sc >= 1.8)
    p4 = r["rss4"] / r["rss1"]
    row("memory growth: peak RSS 4x corpus / 1x corpus", p4, "target <= 1.25", p4 <= 1.25)
    p5 = r["p5"]["raw"] / r["p5"]["bytes"]
    row("compression: raw uint8 frames / shard bytes", p5, "target >= 8", p5 >= 8)
    kbps = r["p5"]["bytes"] / r["p5"]["seconds"] / 1024
    pcm = RATE * 2 / 1024
    row(
        "compression: shard KB per second of video", kbps, f"(raw PCM audio alone: {pcm:.1f})", None
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpora, run every measurement, print the ratios."""
    p = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "avtime" / "bench-ingest"))
    p.add_argument(
        "--videos",
        type=int,
        default=96,
        help="videos of the speed corpus (the memory figure uses 4x as many)",
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", default="1280x720")
    p.add_argument("--src-fps", type=int, default=30)
    p.add_argument("--workers", type=int, default=cores())
    p.add_argument("--repeat", type=int, default=2, help="best of N for ffmpeg and steady")
    args = p.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    quarter = max(1, args.videos // 4)
    print(f"cores {cores()}, workers {args.workers}, load average {os.getloadavg()}")
    big = make_corpus(work, 4 * quarter, args.seconds, (w, h), args.src_fps)
    small = make_corpus(work, quarter, args.seconds, (w, h), args.src_fps)
    files = sorted(big.glob("*.mp4"))
    stage_costs(files[0], FPS, SHORT)

    r: dict[str, Any] = {"workers": args.workers}
    r["ffmpeg"] = ffmpeg_wall(files, args.workers, args.repeat)
    if r["ffmpeg"] is None:
        print("ffmpeg not found: the speed figure needs it (apt-get install -y ffmpeg); skipped")
    else:
        print(f"ffmpeg -threads 1, {args.workers} at a time, {len(files)} files: "
              f"{r['ffmpeg'][0]:.1f} s wall, {r['ffmpeg'][1]:.1f} CPU s", flush=True)  # fmt: skip
    for name, corpus in (("4x", big), ("1x", small)):
        out = run_cli(corpus, work / f"out_{name}", args.workers)
        print(f"avtime preprocess, {name} corpus ({len(list(corpus.glob('*.mp4')))} files): "
              f"{out['wall']:.1f} s wall, {out['cpu']:.1f} CPU s, "
              f"peak RSS {out['peak_rss'] / 2**20:.0f} MiB\n  {out['summary']}", flush=True)  # fmt: skip
        r[f"rss{name[0]}"] = out["peak_rss"]
        if name == "4x":
            r["cli"], r["cli_cpu"] = out["wall"], out["cpu"]
    steady = run_steady(big, work, sorted({1, args.workers}), args.repeat)
    r["steady"], r["steady_cpu"] = steady[args.workers]
    r["scale"] = steady[1][0] / steady[args.workers][0]
    for n, (sec, cpu) in steady.items():
        print(f"steady state (Ray up), {n} worker(s), {len(files)} files: {sec:.1f} s wall, "
              f"{cpu:.1f} CPU s ({cpu / sec:.2f} cores obtained)", flush=True)  # fmt: skip
    r["p5"] = shard_stats(work / "out_4x")
    _print_ratios(r)
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
