"""The synthetic audio-visual corpus (`avtime synth`): config, per-video plans, mp4s, labels.

A video shows 1-3 objects at a time, each a short *episode*: the object enters from off-screen,
moves under one physics shared by the whole corpus (gravity, damped bounces, friction:
`pipelines.synth.scene`), and leaves the frame or comes to rest and vanishes in a puff of smoke.
The class of a video is its *motion class* (how objects are launched, how fast, how bouncy). How
much of it one still frame or the sound's level shows depends on the world (docs/synth.md,
"Worlds": in `sand` much of it, in `even` as little as the world could be made to show).
Appearance, background, launch side, frame rate, size, duration and sample rate are nuisances
drawn independently of the class. Impacts sound at their exact time and draw effects that run
one way in time (`pipelines.synth.render`), so playback speed and the arrow of time can be read
from the content, as in real video.

Ground truth (off by default; `SynthConfig.ground_truth=True`): the frame-index code in the
bottom band and the audio time code of `pipelines.synth.groundtruth`. The band is the ground strip
under the floor, so the scene is the same either way.

Outputs of `generate_corpus(out_dir, cfg)` (a local folder or an s3:// URI), see docs/synth.md:
- `videos/<name>.mp4`: H.264 (yuv420p) + AAC stereo;
- `labels.csv`: path (relative to the CSV's folder), label (class name), split;
- `meta/<name>.json`: fps, size, duration, sample rate, class, objects and every event time;
- `synth.json`: the config, the class list and the counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avtime.pipelines import storage
from avtime.pipelines.synth import groundtruth as gt
from avtime.pipelines.synth.ambience import AMBIENCE_RMS, LOW_HZ, QUIET_RMS
from avtime.pipelines.synth.avwrite import write_av
from avtime.pipelines.synth.even import PACES, draw_paced_episodes, level_of
from avtime.pipelines.synth.lamps import LAMP_HALF, draw_lamps
from avtime.pipelines.synth.render import render_audio, render_frames
from avtime.pipelines.synth.sand import marks_of, studio_palette, uniform_object
from avtime.pipelines.synth.scene import (
    BOUNCE_KEEP_VX,
    CLASSES,
    FRICTION,
    GRAVITY,
    STOP_VY,
    MotionClass,
    VideoPlan,
    draw_episodes,
    draw_palette,
)

__all__ = [
    "CLASSES",
    "MotionClass",
    "SynthConfig",
    "VideoJob",
    "VideoPlan",
    "generate_corpus",
    "make_video",
    "plan_corpus",
    "plan_video",
    "render_audio",
    "render_frames",
    "video_meta",
]

WORLDS = ("dusk", "sand", "even")  # docs/synth.md, "Worlds"

DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (192, 144),
    (224, 160),
    (256, 176),
    (256, 192),
    (144, 192),
)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What `avtime synth` writes. The same config and seed give the same corpus."""

    videos: int = 8
    seconds: float = 10.0  # mean duration
    duration_jitter: float = 0.2  # durations are drawn from seconds * [1 - j, 1 + j]
    classes: int = 4  # the first K of CLASSES
    seed: int = 0
    fps_choices: tuple[int, ...] = (24, 25, 30)
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES  # (width, height)
    sample_rates: tuple[int, ...] = (44100, 48000)
    max_objects: int = 3  # objects on screen at once: 1..max_objects per video
    ground_truth: bool = False  # frame-index code in the pixels, time code in the audio
    world: Literal["dusk", "sand", "even"] = "dusk"  # see docs/synth.md, "Worlds"
    lamps: bool | None = None  # dusk lamps (pipelines.synth.lamps); None: on in the dusk world
    ambience: bool | None = None  # sky-coloured noise bed; None: on in the dusk world
    test_fraction: float = 0.2  # per class, this fraction goes to split "test"
    split: str | None = None  # if set, every video gets this split instead
    crf: int = 23
    preset: str = "veryfast"
    audio_bitrate: int = 128_000

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {list(WORLDS)}, got {self.world!r}")
        for name in ("lamps", "ambience"):  # unset: the world's default
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.world == "dusk")
        if self.videos < 1:
            raise ValueError(f"videos must be >= 1, got {self.videos}")
        if not 0 < self.seconds <= 600:
            raise ValueError(f"seconds must be in (0, 600], got {self.seconds}")
        if not 0 <= self.duration_jitter < 1:
            raise ValueError(f"duration_jitter must be in [0, 1), got {self.duration_jitter}")
        most = len(PACES) if self.world == "even" else len(CLASSES)
        if not 1 <= self.classes <= most:
            raise ValueError(
                f"classes must be in [1, {most}] in the {self.world} world, got {self.classes}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not self.fps_choices or any(f <= 0 for f in self.fps_choices):
            raise ValueError(f"fps_choices must be positive, got {self.fps_choices}")
        for w, h in self.sizes:
            if w % 2 or h % 2 or min(w, h) < 64:
                raise ValueError(f"sizes must be even and at least 64, got {w}x{h}")
        if not self.sizes:
            raise ValueError("sizes must not be empty")
        if not self.sample_rates or any(r < 8000 for r in self.sample_rates):
            raise ValueError(f"sample_rates must be >= 8000, got {self.sample_rates}")
        if not 1 <= self.max_objects <= 8:
            raise ValueError(f"max_objects must be in [1, 8], got {self.max_objects}")
        if not 0 <= self.test_fraction <= 1:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        if self.split is not None and (not self.split or "," in self.split):
            raise ValueError(f"split must be a non-empty name without commas, got {self.split!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.ground_truth:
            longest = self.seconds * (1 + self.duration_jitter) * max(self.fps_choices)
            if longest > gt.MAX_FRAME_INDEX:
                raise ValueError(
                    f"ground_truth codes frame indices up to {gt.MAX_FRAME_INDEX}; "
                    f"videos of up to {longest:.0f} frames are too long"
                )

    @property
    def class_names(self) -> list[str]:
        if self.world == "even":  # a class is a pace (pipelines.synth.even)
            return [name for name, _ in PACES[: self.classes]]
        return [c.name for c in CLASSES[: self.classes]]


def plan_video(cfg: SynthConfig, index: int, class_index: int, split: str, name: str) -> VideoPlan:
    """All random choices of one video (deterministic in cfg.seed and index)."""
    plan_seq, audio_seq, lamp_seq = np.random.SeedSequence([cfg.seed, 1, index]).spawn(3)
    rng = np.random.default_rng(plan_seq)
    fps = int(cfg.fps_choices[rng.integers(len(cfg.fps_choices))])
    width, height = cfg.sizes[rng.integers(len(cfg.sizes))]
    sample_rate = int(cfg.sample_rates[rng.integers(len(cfg.sample_rates))])
    seconds = cfg.seconds * rng.uniform(1 - cfg.duration_jitter, 1 + cfg.duration_jitter)
    num_frames = max(1, int(round(seconds * fps)))
    plan = VideoPlan(
        name=name,
        index=index,
        class_index=class_index,
        split=split,
        fps=fps,
        width=int(width),
        height=int(height),
        num_frames=num_frames,
        sample_rate=sample_rate,
        num_samples=int(round(num_frames * sample_rate / fps)),
        ground_truth=cfg.ground_truth,
        episodes=[],
        audio_seed=int(audio_seq.generate_state(1)[0]),
        ambience=bool(cfg.ambience),
        world=cfg.world,
    )
    studio = cfg.world in ("sand", "even")  # one studio, one object look
    plan.palette = studio_palette() if studio else draw_palette(rng, plan.aspect)
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    if cfg.world == "even":
        plan.pace = PACES[class_index][1]
        plan.episodes = draw_paced_episodes(rng, plan.pace, n_objects, plan.duration_s, plan.aspect)
    else:
        plan.episodes = draw_episodes(
            rng,
            CLASSES[class_index],
            n_objects,
            plan.duration_s,
            plan.aspect,
            uniform_object if cfg.world == "sand" else None,
        )
    if cfg.lamps:
        plan.lamps = draw_lamps(np.random.default_rng(lamp_seq), plan.duration_s, plan.aspect)
    return plan


# ---------------------------------------------------------------------------------------------
# Writing one video and the corpus
# ---------------------------------------------------------------------------------------------


def video_meta(plan: VideoPlan, cfg: SynthConfig, path: str) -> dict[str, Any]:
    """Plain-JSON sidecar of one video (see docs/synth.md)."""
    events = []
    objects = []
    for k, ep in enumerate(plan.episodes):
        o = ep.obj
        objects.append(
            {
                "id": k,
                "shape": o.shape,
                "radius_px": o.radius * plan.floor_px,
                "color": [round(c, 1) for c in o.color],
                "pitch_hz": round(o.pitch_hz, 3),
                "restitution": round(o.restitution, 4),
                "t_start": ep.t_start,
                "t_end": ep.t_end,
            }
        )
        for ev in ep.events:
            if not 0 <= ev.t < plan.duration_s:
                continue
            events.append(
                {
                    "t": ev.t,
                    "frame": ev.t * plan.fps,
                    "kind": ev.kind,
                    "object": k,
                    "x_px": ev.x * plan.floor_px,
                    "y_px": plan.floor_px - ev.y * plan.floor_px,
                    "strength": round(ev.strength, 4),
                }
            )
    events.sort(key=lambda e: e["t"])
    even = plan.world == "even"
    mclass = {"name": PACES[plan.class_index][0], "pace": plan.pace} if even else None
    mclass = mclass or asdict(CLASSES[plan.class_index])
    return {
        "name": plan.name,
        "path": path,
        "label": mclass["name"],
        "class_index": plan.class_index,
        "split": plan.split,
        "seed": cfg.seed,
        "index": plan.index,
        "fps": plan.fps,
        "width": plan.width,
        "height": plan.height,
        "num_frames": plan.num_frames,
        "duration_s": plan.duration_s,
        "sample_rate": plan.sample_rate,
        "channels": 2,
        "num_samples": plan.num_samples,
        "video_codec": "h264",
        "audio_codec": "aac",
        "ground_truth": plan.ground_truth,
        "floor_y_px": plan.floor_px,
        "code_band_rows": [plan.floor_px, plan.height],
        "time_code": asdict(gt.AUDIO_TIME_CODE) if plan.ground_truth else None,
        "physics": {
            "gravity": GRAVITY,
            "friction": FRICTION,
            "bounce_keep_vx": BOUNCE_KEEP_VX,
            "stop_vy": STOP_VY,
            "units": "scene heights (floor to top of frame) and seconds",
            "scene_height_px": plan.floor_px,
        },
        "motion_class": mclass,
        "objects": objects,
        "events": events,
        "lamps": _lamp_meta(plan),
        "ambience": _ambience_meta(plan),
        "world": plan.world,
        "marks": _marks_meta(plan),
        "sound_level_rms": level_of(plan.audio_seed) if plan.world == "even" else None,
    }


def _marks_meta(plan: VideoPlan) -> list[dict[str, float]] | None:
    """The sidecar's `marks` (sand world): each dent's or furrow's start time and place (px)."""
    if plan.world != "sand":
        return None
    s = plan.floor_px
    return [
        {"t": m.t, "x_px": m.x * s, "size_px": m.size * s}
        | ({} if m.x_end is None else {"x_end_px": m.x_end * s, "t_end": float(m.t_end or 0)})
        for m in marks_of(plan.episodes)
        if m.t < plan.duration_s
    ]


def _ambience_meta(plan: VideoPlan) -> dict[str, Any] | None:
    """The sidecar's `ambience`: the exponent, the level and the sky colour that shows it."""
    if not plan.ambience:
        return None
    return {
        "beta": round(float(plan.palette["ambience_beta"]), 5),
        "rms": QUIET_RMS if plan.ground_truth else AMBIENCE_RMS,
        "low_hz": LOW_HZ,
        "sky_top": [round(c, 1) for c in plan.palette["sky_top"]],
    }


def _lamp_meta(plan: VideoPlan) -> dict[str, Any] | None:
    """The sidecar's `lamps`: colour, base tone, and per lamp its time, pixel centre and tone."""
    if plan.lamps is None:
        return None
    fp = plan.floor_px
    return {
        "color": [round(c, 1) for c in plan.lamps.color],
        "base_hz": round(plan.lamps.base_hz, 3),
        "half_px": LAMP_HALF * fp,
        "items": [
            {
                "t_on": lamp.t_on,
                "x_px": lamp.x * fp,
                "y_px": fp - lamp.y * fp,
                "tone_hz": round(lamp.tone_hz, 3),
            }
            for lamp in plan.lamps.lamps
        ],
    }


@dataclass(frozen=True)
class VideoJob:
    index: int
    name: str
    class_index: int
    split: str

    @property
    def rel_path(self) -> str:
        return f"videos/{self.name}.mp4"


def plan_corpus(cfg: SynthConfig) -> list[VideoJob]:
    """Names, balanced classes and per-class splits of every video (deterministic in the seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    classes = rng.permutation(np.arange(cfg.videos) % cfg.classes)
    splits = ["train"] * cfg.videos
    if cfg.split is not None:
        splits = [cfg.split] * cfg.videos
    else:
        for c in range(cfg.classes):
            members = np.nonzero(classes == c)[0]
            n_test = int(round(cfg.test_fraction * len(members)))
            for i in rng.permutation(members)[:n_test]:
                splits[int(i)] = "test"
    return [
        VideoJob(i, f"sy{cfg.seed}_{i:05d}", int(classes[i]), splits[i]) for i in range(cfg.videos)
    ]


def make_video(cfg: SynthConfig, job: VideoJob, out_dir: str | Path) -> dict[str, Any]:
    """Plan, render and write one video and its sidecar; returns the sidecar dict.

    `out_dir` is a local folder or an s3:// URI. The mp4 is encoded into a local file first and
    then published atomically (renamed, or uploaded), so a reader never sees half a video.
    """
    out = str(out_dir)
    plan = plan_video(cfg, job.index, job.class_index, job.split, job.name)
    audio = render_audio(plan)
    target = storage.join(out, job.rel_path)
    # S3: encode in a fresh local temp folder, upload, remove that folder (and only it).
    # Local: encode next to the target, so publishing is a rename on the same disk.
    temp_dir = Path(storage.local_scratch("avtime-synth-")) if storage.is_s3(out) else None
    folder = temp_dir if temp_dir is not None else Path(target).parent
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / f".{job.name}.{os.getpid()}.partial.mp4"
    try:
        write_av(
            local,
            render_frames(plan),
            plan.fps,
            audio,
            plan.sample_rate,
            crf=cfg.crf,
            preset=cfg.preset,
            audio_bitrate=cfg.audio_bitrate,
            threads=1,
        )
        storage.put_file(local, target)
    finally:
        local.unlink(missing_ok=True)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    meta = video_meta(plan, cfg, job.rel_path)
    storage.write_bytes(
        storage.join(out, "meta", f"{job.name}.json"), json.dumps(meta, indent=1).encode()
    )
    return meta


def _make_video_star(args: tuple[SynthConfig, VideoJob, str]) -> dict[str, Any]:
    return make_video(*args)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def generate_corpus(
    out_dir: str | Path,
    cfg: SynthConfig,
    *,
    workers: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Write the corpus into `out_dir`; returns the sidecars in index order.

    `workers` processes render and encode in parallel (default: the CPUs this process may use);
    the output does not depend on it. `on_progress` is called once per finished video.
    """
    out = str(out_dir)
    storage.check_location(out, must_exist=False)
    storage.makedirs(out)
    jobs = plan_corpus(cfg)
    n_workers = min(workers or default_workers(), len(jobs))
    metas: dict[int, dict[str, Any]] = {}
    if n_workers <= 1:
        for job in jobs:
            metas[job.index] = make_video(cfg, job, out)
            if on_progress:
                on_progress(metas[job.index])
    else:
        with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_make_video_star, (cfg, job, out)) for job in jobs]
            for fut in as_completed(futures):
                meta = fut.result()
                metas[meta["index"]] = meta
                if on_progress:
                    on_progress(meta)
    ordered = [metas[j.index] for j in jobs]
    rows = io.StringIO(newline="")
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for m in ordered:
        writer.writerow([m["path"], m["label"], m["split"]])
    storage.write_bytes(storage.join(out, "labels.csv"), rows.getvalue().encode())
    summary = {
        "config": asdict(cfg),
        "classes": cfg.class_names,
        "videos": len(ordered),
        "splits": {
            s: sum(m["split"] == s for m in ordered) for s in sorted({m["split"] for m in ordered})
        },
        "frame_code": {
            "band_fraction": gt.BAND_FRACTION,
            "rows": gt.CODE_ROWS,
            "cols": gt.CODE_COLS,
            "index_bits": gt.INDEX_BITS,
        },
        "time_code": asdict(gt.AUDIO_TIME_CODE),
    }
    storage.write_bytes(storage.join(out, "synth.json"), json.dumps(summary, indent=1).encode())
    return ordered
