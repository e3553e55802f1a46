"""Feed: the pretext stream's examples/s per core at a preset (default paper), stage by stage.

    python -m bench.feed_bench [--workdir ~/.cache/avtime/bench-feed] [--videos 32] [--seconds 10]
        [--short-side 128] [--config paper] [--set KEY=VALUE ...] [--examples 192] [--rounds 3]

How many CPU cores keep one GPU busy = the GPU's examples/s / this figure (bench/gpu_check.py
measures the GPU side). Run it pinned to one core, e.g. `taskset -c 1 python -m bench.feed_bench`.

Input: a small synthetic corpus (`avtime synth --videos 32 --seconds 10 --duration-jitter 0`,
cached in the workdir; 32 videos give row groups of 8 rows, as a large corpus has) preprocessed
at the preset's own resolution (`avtime preprocess --short-side 128`: the 128-pixel short side
from which 112² crops are drawn, as for R(2+1)D). Work, in this process, on
one core (pyarrow limited to one thread), CPU seconds of this process: the function every Ray
Data sampling task runs, `pipelines.pretext.stream.sample_units`, over the stream's own work units
(`work_units`, listed once, untimed, like the driver does): read the unit's Parquet row group,
then for each row the whole sampler (`make_example`: plan, JPEG decode of the 2 x T planned
frames, crop + resize, colour jitter and flip, audio cut + speed-up + gain), then collation into
the contract batch (`to_batch`: video uint8 [B, 3, T, S, S], audio float32 [B, L], labels).
Ray's own costs (driver, Arrow conversion of the batches, transfer) are not included.

Stages come from timing the functions of pipelines/pretext/clips.py and stream.py in a second,
instrumented pass (wrappers installed by this benchmark only; nothing in pipelines/ changes):
Parquet read (`unit_examples` minus its rows' sampling), Arrow -> frame bytes, JPEG decode
(`decode_frame`), crop and resize (the rest of `decode_clip`: resize with a crop box, paste,
numpy view), colour jitter (`color_image`; the flip is a view, copied during collation), audio
(`cut_audio` + `augment_audio`), planning and the rest of `make_example` (speed table, plan,
augmentation draws, stacking the two clips, labels), collation (`to_batch`).

Baseline, same run, same examples: the sampler with its clip decoder replaced by the common
per-frame way (`Image.open(...).convert("RGB")` per frame, crop, resize, `ImageEnhance`
brightness/contrast/saturation per frame, mirror per frame, `np.stack`). Rounds alternate the
two loaders (and the instrumented pass) so that load changes hit all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from avtime.pipelines.config import DataConfig
from avtime.pipelines.pretext.augment import VideoAug
from bench.ingest_bench import cores

# 112² crops are drawn from frames of short side 128 (R(2+1)D's 128 x 171 convention).
SHORT_SIDE = {"paper": 128, "demo": 64, "smoke": 64}


def avtime_cli() -> list[str]:
    """The argv prefix that runs the `avtime` command of this interpreter."""
    return [sys.executable, "-m", "avtime.training.cli.main"]


def make_shards(work: Path, videos: int, seconds: float, short_side: int) -> Path:
    """`avtime synth` + `avtime preprocess --short-side` (1 worker each), cached under `work`."""
    tag = f"{videos}x{seconds:g}s"
    src, dst = work / f"src_{tag}", work / f"shards_{tag}_ss{short_side}"
    if not (dst / "manifest.json").exists():
        if not any(src.glob("**/*.mp4")):
            run = [*avtime_cli(), "synth", str(src), "--videos", str(videos)]
            run += ["--seconds", f"{seconds:g}", "--duration-jitter", "0", "--seed", "5"]
            subprocess.run([*run, "--workers", "1", "--quiet"], check=True)
        run = [*avtime_cli(), "preprocess", str(src), str(dst), "--short-side", str(short_side)]
        subprocess.run([*run, "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
    return dst


class StageClock:
    """CPU seconds and calls of wrapped functions, by stage name (nested calls count in both)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def timed(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        """`fn`, adding its CPU time to `stage` on every call."""

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - t0
                self.calls[stage] = self.calls.get(stage, 0) + 1

        return inner


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set `owner.name = value` for the block, then put the original back."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """Time the sampler's stage functions into `clock` for the block (this process only)."""
    from avtime.pipelines.pretext import clips, stream

    targets = [
        (stream, "unit_examples", "unit"), (stream, "sample_row", "row"),
        (stream, "to_batch", "collate"), (stream._LazyFrames, "__getitem__", "frame_bytes"),
        (clips, "decode_clip", "clip"), (clips, "decode_frame", "jpeg"),
        (clips, "color_image", "jitter"), (clips, "cut_audio", "audio_cut"),
        (clips, "augment_audio", "audio_aug"),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for owner, name, stage in targets:
            stack.enter_context(patched(owner, name, clock.timed(getattr(owner, name), stage)))
        yield


def naive_decode_clip(
    frames: Sequence[bytes],
    indices: np.ndarray,
    aug: VideoAug,
    size: int,
    frame_size: tuple[int, int],
) -> np.ndarray:
    """The baseline clip decoder, frame by frame: open, convert to RGB, crop `aug.box`, resize,
    jitter with ImageEnhance, mirror. Same signature and output as `clips.decode_clip`:
    uint8 [T, size, size, 3]."""
    out = []
    for i in indices:
        im = Image.open(io.BytesIO(frames[int(i)])).convert("RGB")
        im = im.crop(aug.box).resize((size, size), Image.Resampling.BILINEAR)
        if aug.jitter:
            im = ImageEnhance.Brightness(im).enhance(aug.brightness)
            im = ImageEnhance.Contrast(im).enhance(aug.contrast)
            im = ImageEnhance.Color(im).enhance(aug.saturation)
        if aug.flip:
            im = ImageOps.mirror(im)
        out.append(np.asarray(im))
    return np.stack(out)


def frame_sizes(shards: Path) -> list[str]:
    """The distinct stored frame sizes (`WxH`) of the shards."""
    import pyarrow.parquet as pq

    sizes = set()
    for path in sorted(shards.glob("part-*.parquet")):
        for row in pq.read_table(path, columns=["width", "height"]).to_pylist():
            sizes.add(f"{row['width']}x{row['height']}")
    return sorted(sizes)


def unit_batches(shards: Path, cfg: DataConfig, epochs: int) -> list[dict[str, np.ndarray]]:
    """The stream's work units for `epochs` epochs (from epoch 1), grouped into the numpy-column
    batches that `sample_units` receives (about `rows_per_task` rows per call)."""
    from avtime.pipelines.pretext.stream import work_units

    units = work_units(str(shards), cfg, epoch=1, epochs=epochs)
    mean_rows = sum(u["stop"] - u["start"] for u in units) / max(1, len(units))
    per_task = max(1, round(cfg.stream.rows_per_task / max(mean_rows, 1.0)))
    groups = [units[i : i + per_task] for i in range(0, len(units), per_task)]
    return [{k: np.array([u[k] for u in g]) for k in g[0]} for g in groups]


def run_tasks(
    tasks: list[dict[str, np.ndarray]], shards: Path, cfg: DataConfig, sample_rate: int
) -> tuple[int, float, float]:
    """(examples, CPU s, wall s) of `sample_units` over `tasks`, in this process."""
    from avtime.pipelines import storage
    from avtime.pipelines.pretext.stream import sample_units

    fs = storage.arrow_filesystem(str(shards))[0]
    n, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    for task in tasks:
        batch = sample_units(task, fs=fs, cfg=cfg, sample_rate=sample_rate)
        n += len(batch["example_key"])
    return n, time.process_time() - cpu0, time.perf_counter() - wall0


def stage_split(clock: StageClock, examples: int) -> dict[str, float]:
    """Exclusive ms of CPU per example of each stage, from the nested timings in `clock`."""
    c = {k: 1000.0 * v / max(1, examples) for k, v in clock.cpu.items()}
    get = c.get
    out = {
        "parquet read": get("unit", 0) - get("row", 0),
        "Arrow -> frame bytes": get("frame_bytes", 0),
        "JPEG decode": get("jpeg", 0),
        "crop + resize": get("clip", 0) - get("jpeg", 0) - get("jitter", 0) - get("frame_bytes", 0),
        "colour jitter (flip: a view)": get("jitter", 0),
        "audio cut + augment": get("audio_cut", 0) + get("audio_aug", 0),
        "plan + rest of make_example": get("row", 0) - get("clip", 0) - get("audio_cut", 0)
        - get("audio_aug", 0),
        "collation (to_batch)": get("collate", 0),
    }  # fmt: skip
    return out


def measure(
    tasks: list[dict[str, np.ndarray]], shards: Path, cfg: DataConfig, sr: int, rounds: int
) -> dict[str, Any]:
    """Alternate ours, the naive baseline and ours instrumented for `rounds` rounds over the
    same tasks; totals of examples, CPU and wall seconds per loader, and the stage clock."""
    from avtime.pipelines.pretext import clips

    totals = {k: [0, 0.0, 0.0] for k in ("ours", "naive", "instrumented")}
    clock = StageClock()
    per_round = max(1, len(tasks) // rounds)
    for r in range(rounds):
        chunk = (
            tasks[r * per_round : (r + 1) * per_round] if r < rounds - 1 else tasks[r * per_round :]
        )
        results = {"ours": run_tasks(chunk, shards, cfg, sr)}
        with patched(clips, "decode_clip", naive_decode_clip):
            results["naive"] = run_tasks(chunk, shards, cfg, sr)
        with instrumented(clock):
            results["instrumented"] = run_tasks(chunk, shards, cfg, sr)
        for key, (n, cpu, wall) in results.items():
            t = totals[key]
            t[0], t[1], t[2] = t[0] + n, t[1] + cpu, t[2] + wall
    return {"totals": totals, "clock": clock}


def report(res: dict[str, Any], label: str) -> dict[str, Any]:
    """Print the rates, the ratio to the baseline and the stage table; return them as a dict."""
    totals, clock = res["totals"], res["clock"]
    rate = {k: n / cpu for k, (n, cpu, _) in totals.items()}
    n_ours, cpu_ours, wall_ours = totals["ours"]
    print(f"  {label}")
    for key, name in (("ours", "ours: sample_units, 1 process"),
                      ("naive", "naive: per-frame PIL decode + ImageEnhance")):  # fmt: skip
        print(
            f"  {name:44s}: {rate[key]:6.1f} examples/s/core ({1000 / rate[key]:6.1f} ms CPU/example)"
        )
    print(f"  ratio ours / naive = {rate['ours'] / rate['naive']:.2f}x (same examples, same run)")
    print(
        f"  wall: {n_ours / wall_ours:.1f} examples/s on this core (CPU share {cpu_ours / wall_ours:.2f})"
    )
    n_inst, cpu_inst, _ = totals["instrumented"]
    stages = stage_split(clock, n_inst)
    total_ms = 1000 * cpu_inst / n_inst
    print(f"  stages (instrumented pass: {total_ms:.1f} ms CPU/example, "
          f"{total_ms * rate['ours'] / 1000 - 1:+.1%} over the plain pass):")  # fmt: skip
    for name, ms in stages.items():
        print(f"    {name:32s} {ms:6.2f} ms/example  {ms / total_ms:6.1%}")
    rest = total_ms - sum(stages.values())
    print(f"    {'unaccounted (loop, timers)':32s} {rest:6.2f} ms/example  {rest / total_ms:6.1%}")
    calls = {k: round(v / n_inst, 2) for k, v in sorted(clock.calls.items())}
    print(f"  calls per example: {json.dumps(calls)}")
    return {"rate": rate, "stages_ms": stages, "total_ms": total_ms, "calls": calls}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feed_bench", description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache/avtime/bench-feed"))
    p.add_argument("--videos", type=int, default=32, help="32: row groups of 8 rows")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--short-side", type=int, default=None, help="default: the preset's (paper 128)")
    p.add_argument("--config", default="paper", help="preset or YAML whose data config to use")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--examples", type=int, default=192, help="timed examples per loader")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(list(argv) if argv is not None else None)
    import pyarrow as pa

    from avtime.pipelines.pretext.stream import shards_sample_rate
    from avtime.training.config import load_run_config

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    cfg = load_run_config(args.config, args.set).data
    short = args.short_side or SHORT_SIDE.get(args.config, 128)
    work = Path(args.workdir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(work, args.videos, args.seconds, short)
    sr = shards_sample_rate(str(shards))
    per_epoch, _, _ = run_tasks(unit_batches(shards, cfg, 1), shards, cfg, sr)  # and warm-up
    if per_epoch == 0:
        print("feed bench: the sampler drew no example from these shards", file=sys.stderr)
        return 1
    epochs = max(args.rounds, -(-args.examples // per_epoch))
    tasks = unit_batches(shards, cfg, epochs)
    pre = cfg.pretext
    print(f"feed bench: {' '.join([args.config, *args.set])}: T={pre.clip_frames}, crop "
          f"{cfg.augment.crop_size}², speeds {'/'.join(map(str, pre.speeds))}, audio "
          f"{pre.audio_seconds:g} s; {per_epoch} examples/epoch from {args.videos} videos of "
          f"{args.seconds:g} s stored at {', '.join(frame_sizes(shards))}; {epochs} epochs, {len(tasks)} tasks; "
          f"{cores()} usable cores, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    res = measure(tasks, shards, cfg, sr, args.rounds)
    report(res, f"{res['totals']['ours'][0]} examples per loader, {args.rounds} rounds")
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
