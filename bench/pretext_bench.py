"""Pretext stream: examples/s/core of the sampler and the Ray Data stream vs a naive PyAV loader.

    python -m bench.pretext_bench [--workdir ~/.cache/avtime/bench-pretext] [--videos 6]
        [--seconds 12] [--size 320x240] [--src-fps 30] [--examples 64] [--naive-examples 24]
        [--config paper] [--examples-per-row 4]

A synthetic corpus (cached in the workdir) is preprocessed once into shards. Then, in this run
and on this machine:
- ours, 1 process: `make_example` (the stream's sampler: plan, decode only the needed JPEG
  frames, crop/flip/jitter, cut and speed up the audio) on rows already in memory; CPU seconds
  of this process, so ex/s/core.
- naive, 1 process, the same clips: for every example open the source mp4 with PyAV, seek and
  decode each of the two video clips, convert every decoded frame of the clip's span to RGB (as
  pytorchvideo's PyAV decoder does), take the frames nearest to the example's frame times and
  resize them to the crop size; decode each of the two audio clips, resample to mono 16 kHz, cut,
  speed up and reverse. The common approach in research code. CPU seconds of this process.
  A kinder variant converts only the picked frames to RGB; its ratio is printed too.
- the Ray Data stream end to end (`build_pretext_dataset`, parquet read included) over every
  row for `--epochs` epochs, `examples_per_row` examples each, on a local Ray with all usable
  cores, after one untimed warm-up epoch: examples per CPU-second of the driver and every Ray
  process (from /proc) after the first batch (steady state; the fixed cost of planning a
  dataset is left out), wall time to the first batch, and examples per wall second per core.
The speed-up is the ratio stream / naive in examples per CPU-second (target >= 5x); the sampler alone is
printed too. The load average is
printed: on a shared machine wall times move with it, CPU seconds much less.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avtime.pipelines.config import DataConfig
from bench.ingest_bench import cores


def make_shards(work: Path, videos: int, seconds: float, size: tuple[int, int], fps: int) -> Path:
    """Synthetic corpus and its shards, cached under `work`."""
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.ingest.job import run_ingest
    from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus

    tag = f"{videos}x{seconds:g}s_{size[0]}x{size[1]}_{fps}"
    src, dst = work / f"src_{tag}", work / f"shards_{tag}"
    if not (dst / "manifest.json").exists():
        cfg = SynthConfig(
            videos=videos, seconds=seconds, duration_jitter=0.1, sizes=(size,),
            fps_choices=(fps,), seed=1,
        )  # fmt: skip
        if not any(src.glob("**/*.mp4")):
            generate_corpus(src, cfg)
        run_ingest(str(src), str(dst), IngestConfig(), workers=cores())
    return dst


def load_rows(shards: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from avtime.pipelines.pretext.stream import COLUMNS

    rows: list[dict[str, Any]] = []
    for p in sorted(shards.glob("part-*.parquet")):
        rows.extend(pq.read_table(p, columns=[*COLUMNS, "source"]).to_pylist())
    return rows


def run_ours(jobs: list[tuple[dict[str, Any], int]], cfg: DataConfig) -> tuple[list[Any], float]:
    """Examples of (row, repeat) jobs with the stream's sampler and generators; returns
    ([(row, repeat, example)] for the rows not skipped, CPU seconds)."""
    from avtime.pipelines.pretext.clips import make_example
    from avtime.pipelines.pretext.stream import example_rng

    out: list[Any] = []
    cpu0 = time.process_time()
    for row, repeat in jobs:
        rng = example_rng(cfg.stream.seed, 0, row["video_id"], row["segment"], repeat)
        ex = make_example(row, cfg, rng)
        if ex is not None:
            out.append((row, repeat, ex))
    return out, time.process_time() - cpu0


def _nearest_frames(container: Any, times: np.ndarray, size: int, convert_all: bool) -> np.ndarray:
    """Decode from the keyframe before min(times) to max(times); frames nearest to `times`.

    `convert_all`: convert every decoded frame of the span to an RGB array first, then pick (as
    pytorchvideo's PyAV decoder does); otherwise convert only the picked frames.
    """
    stream = container.streams.video[0]
    t0, t1 = float(times.min()), float(times.max())
    period = 1.0 / float(stream.average_rate or 25)
    container.seek(int(max(t0 - period, 0) / stream.time_base), stream=stream, backward=True)
    got_t, got_f = [], []
    for frame in container.decode(stream):
        ft = float(frame.time)
        if ft < t0 - period:
            continue
        got_t.append(ft)
        got_f.append(frame.to_ndarray(format="rgb24") if convert_all else frame)
        if ft > t1 + period:
            break
    ts = np.array(got_t)
    pick = [int(np.argmin(np.abs(ts - t))) for t in times]
    images = [Image.fromarray(got_f[i]) if convert_all else got_f[i].to_image() for i in pick]
    return np.stack(
        [np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)) for im in images]
    )


def _audio_clip(
    container: Any, span: np.ndarray, speed: int, reverse: bool, length: int
) -> np.ndarray:
    """Decode, resample to mono 16 kHz, cut [t0, t1), speed up by averaging, reverse."""
    import av

    stream = container.streams.audio[0]
    t0, t1 = float(span[0]), float(span[1])
    container.seek(int(max(t0 - 0.1, 0) / stream.time_base), stream=stream, backward=True)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
    chunks, first = [], None
    for frame in container.decode(stream):
        if first is None:
            first = float(frame.time)
        for rf in resampler.resample(frame):
            chunks.append(rf.to_ndarray().reshape(-1))
        if first + sum(len(c) for c in chunks) / 16000 >= t1 + 0.05:
            break
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    a = int(round((t0 - (first or 0.0)) * 16000))
    seg = np.zeros(speed * length, np.float32)
    part = wave[max(a, 0) : max(a, 0) + speed * length]
    seg[: len(part)] = part
    out = seg.reshape(length, speed).mean(1)
    return out[::-1].copy() if reverse else out


def run_naive(pairs: list[Any], cfg: DataConfig, convert_all: bool) -> float:
    """The same clips, decoded from the source mp4 for every example; CPU seconds."""
    import av

    size = cfg.augment.crop_size
    cpu0 = time.process_time()
    for row, _, ex in pairs:
        with av.open(row["source"]) as container:
            container.streams.video[0].thread_type = "NONE"  # one core, like each of ours
            for c in range(2):
                _nearest_frames(container, ex["video_t"][c], size, convert_all)
            if container.streams.audio:
                length = ex["audio"].shape[1]
                for c in range(2):
                    speed, rev = int(ex["audio_speed"][c]), bool(ex["audio_reverse"][c])
                    _audio_clip(container, ex["audio_span"][c], speed, rev, length)
    return time.process_time() - cpu0


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process and every live descendant (the local Ray's
    processes), from /proc; NaN where /proc is not available."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = text.rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except OSError:
        return float("nan")
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in tree if p in stats)


def run_stream(
    shards: Path, cfg: DataConfig, n_cores: int, epochs: int
) -> tuple[int, float, float, float, int]:
    """(examples, wall s, wall s after the first batch, CPU s of driver + Ray processes after
    the first batch, examples after the first batch) of the
    Ray Data stream over `epochs` epochs, on a local Ray warmed up by one untimed epoch."""
    from avtime.pipelines.pretext.stream import build_pretext_dataset
    from avtime.pipelines.raycluster import connect

    connect(num_cpus=n_cores)
    for _ in build_pretext_dataset(str(shards), cfg, epoch=100).iter_batches(batch_size=64):
        pass  # warm-up: worker processes, imports, speed tables
    t0, cpu0 = time.perf_counter(), tree_cpu()
    n, n_first, t_first, cpu_first = 0, 0, t0, cpu0
    ds = build_pretext_dataset(str(shards), cfg, epoch=0, epochs=epochs)
    for batch in ds.iter_batches(batch_size=cfg.stream.batch_size, batch_format="numpy"):
        if n == 0:
            t_first, n_first, cpu_first = time.perf_counter(), len(batch["video1"]), tree_cpu()
        n += len(batch["video1"])
    end = time.perf_counter()
    return n, end - t0, max(end - t_first, 1e-9), tree_cpu() - cpu_first, n - n_first


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pretext_bench", description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache/avtime/bench-pretext"))
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--size", default="320x240")
    p.add_argument("--src-fps", type=int, default=30)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--naive-examples", type=int, default=24)
    p.add_argument("--config", default="paper", help="preset whose data config to use")
    p.add_argument("--examples-per-row", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10, help="epochs the stream runs (timed)")
    args = p.parse_args(list(argv) if argv is not None else None)
    from avtime.training.config import load_run_config

    cfg = load_run_config(args.config).data
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(args.workdir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(work, args.videos, args.seconds, (w, h), args.src_fps)
    rows = load_rows(shards)
    n_cores = cores()
    print(f"pretext bench: {len(rows)} segment rows from {args.videos} videos {w}x{h}@{args.src_fps}"
          f" ({args.config}: T={cfg.pretext.clip_frames}, crop {cfg.augment.crop_size}); "
          f"{n_cores} cores, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    jobs = [(rows[k % len(rows)], k // len(rows)) for k in range(args.examples)]
    run_ours(jobs[: len(rows)], cfg)  # warm up caches (speed tables, imports)
    pairs, ours_cpu = run_ours(jobs, cfg)
    naive_pairs = pairs[: args.naive_examples]
    # alternate blocks of the three loaders so that load changes hit all of them alike
    cpu = {"ours": 0.0, "naive": 0.0, "naive_picked": 0.0}
    counts = dict.fromkeys(cpu, 0)
    for k in range(0, len(naive_pairs), 4):
        block = naive_pairs[k : k + 4]
        _, c = run_ours([(r, k) for r, k, _ in block], cfg)
        cpu["ours"] += c
        cpu["naive"] += run_naive(block, cfg, convert_all=True)
        cpu["naive_picked"] += run_naive(block, cfg, convert_all=False)
        for key in counts:
            counts[key] += len(block)
    rate = {key: counts[key] / cpu[key] for key in cpu}
    ours_rate = (len(pairs) + counts["ours"]) / (ours_cpu + cpu["ours"])
    stream_cfg = replace(cfg, stream=replace(cfg.stream, examples_per_row=args.examples_per_row))
    n, total, steady, stream_cpu, n_after = run_stream(shards, stream_cfg, n_cores, args.epochs)
    stream_rate = n_after / stream_cpu
    naive_rate = rate["naive"]
    for name, r in (
        ("ours: sampler, 1 process", ours_rate),
        ("ours: Ray Data stream, steady, all procs", stream_rate),
        ("naive: PyAV, every span frame to RGB", naive_rate),
        ("naive: PyAV, picked frames to RGB", rate["naive_picked"]),
    ):
        print(f"  {name:42s}: {r:6.1f} examples/s/core ({1000 / r:6.1f} ms CPU per example)")
    print(
        f"  speed-up (stream) = {stream_rate / naive_rate:.1f}x the naive loader "
        f"({stream_rate / rate['naive_picked']:.1f}x the picked-frames variant); "
        f"sampler alone {ours_rate / naive_rate:.1f}x ({ours_rate / rate['naive_picked']:.1f}x). "
        "Target >= 5x."
    )
    print(
        f"  stream wall: {n} examples over {args.epochs} epochs in {total:.1f} s, first batch after "
        f"{total - steady:.1f} s, then {n_after / steady / n_cores:.1f} examples/s/core "
        f"({n_cores} cores, load average {os.getloadavg()[0]:.2f})"
    )
    return 0 if stream_rate / naive_rate >= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
