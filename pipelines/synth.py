"""The synthetic audio-visual corpus: scene physics, rendering and sound, written as real mp4s.

A video shows 1-3 objects at a time, each a short *episode*: the object enters from off-screen,
moves under one physics shared by the whole corpus, and leaves the frame or comes to rest and
vanishes in a puff of smoke. The class of a video is its *motion class* (how objects are
launched, how fast, how bouncy): it can't be read from one still frame, only from motion over
time and from the sounds tied to it. Appearance (shape, colour, size), background, launch side,
frame rate, size, duration and sample rate are nuisances drawn independently of the class.

Physics (scene units: the floor is y = 0 and the top of the frame is y = 1):
- gravity `GRAVITY` pulls every object down; a floor bounce keeps `e` (the restitution, set by
  the class) of the vertical speed and `BOUNCE_KEEP_VX` of the horizontal speed;
- below `STOP_VY` the object stays on the floor and slides, slowed by friction (`FRICTION`)
  until it stops, rests for a moment and vanishes.
Each floor impact makes a sound with a sharp attack at the exact (sub-sample) impact time,
decaying slowly at a pitch set by the object's size (smaller = higher), louder for harder
impacts and panned by its position; sliding makes a scrape whose loudness follows the speed.
Impacts also draw one-way effects, bold enough to survive 64x64 crops: a ring that expands and
fades, and dust that spreads and fades; vanishing leaves a puff that spreads and fades. So
playback speed and the arrow of time can be read from the content, as in real video.

Ground truth (off by default; `SynthConfig.ground_truth=True` turns it on): the frame-index
code in the bottom band and the audio time code of `pipelines.groundtruth`.
The band is always the ground strip under the floor, so the scene is the same either way.

Outputs of `generate_corpus(out_dir, cfg)`:
- `videos/<name>.mp4`: H.264 (yuv420p) + AAC stereo;
- `labels.csv`: path (relative to the CSV's folder), label (class name), split;
- `meta/<name>.json`: fps, size, duration, sample rate, class, objects and every event time;
- `synth.json`: the config, the class list and the counts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines import groundtruth as gt
from pipelines import storage
from pipelines.avwrite import write_av

# Physics constants shared by the whole corpus (scene heights, seconds).
GRAVITY = 4.5
BOUNCE_KEEP_VX = 0.88
STOP_VY = 0.35
FRICTION = 0.7  # sliding deceleration
IMPACT_REF = 3.0  # an impact at this speed has strength 1

# Effects (seconds, scene heights).
RING_LIFE = 0.6
DUST_LIFE = 0.8
POOF_LIFE = 0.7
RING_COLOR = np.array([245.0, 245.0, 240.0], np.float32)
SMOKE_COLOR = np.array([200.0, 200.0, 205.0], np.float32)

Launch = Literal["drop", "throw", "slide", "lob"]


@dataclass(frozen=True)
class MotionClass:
    """One class of the corpus: how its objects are launched, how fast and how bouncy."""

    name: str
    launch: Launch
    speed: float
    restitution: tuple[float, float]


CLASSES: tuple[MotionClass, ...] = (
    MotionClass("drop", "drop", 1.0, (0.66, 0.78)),  # falls from the top, bounces in place
    MotionClass("throw", "throw", 1.0, (0.66, 0.78)),  # thrown sideways, bounces along
    MotionClass("slide", "slide", 1.0, (0.15, 0.25)),  # lands low and slides to a stop
    MotionClass("lob", "lob", 1.0, (0.66, 0.78)),  # tossed up high, slow sideways
    MotionClass("drop_dead", "drop", 1.0, (0.30, 0.42)),  # clay: few, dull bounces
    MotionClass("throw_fast", "throw", 1.8, (0.66, 0.78)),
    MotionClass("lob_dead", "lob", 1.0, (0.30, 0.42)),
    MotionClass("slide_fast", "slide", 1.7, (0.15, 0.25)),
)

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
    test_fraction: float = 0.2  # per class, this fraction goes to split "test"
    split: str | None = None  # if set, every video gets this split instead
    crf: int = 23
    preset: str = "veryfast"
    audio_bitrate: int = 128_000

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ValueError(f"videos must be >= 1, got {self.videos}")
        if not 0 < self.seconds <= 600:
            raise ValueError(f"seconds must be in (0, 600], got {self.seconds}")
        if not 0 <= self.duration_jitter < 1:
            raise ValueError(f"duration_jitter must be in [0, 1), got {self.duration_jitter}")
        if not 1 <= self.classes <= len(CLASSES):
            raise ValueError(f"classes must be in [1, {len(CLASSES)}], got {self.classes}")
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
        return [c.name for c in CLASSES[: self.classes]]


# ---------------------------------------------------------------------------------------------
# Physics: episodes as piecewise-quadratic segments, with exact event times
# ---------------------------------------------------------------------------------------------


@dataclass
class SceneObject:
    radius: float  # scene heights
    shape: Literal["disc", "square"]
    color: tuple[float, float, float]  # 0..255
    pitch_hz: float
    restitution: float
    decay_s: float  # sound decay time constant


@dataclass
class Event:
    t: float
    kind: Literal["impact", "vanish"]
    x: float
    y: float
    strength: float


@dataclass
class Episode:
    obj: SceneObject
    t_start: float
    t_end: float
    # Segment k is valid from seg_t[k]: x = x0 + vx*dt + ax*dt^2/2, same for y.
    seg_t: np.ndarray
    seg: np.ndarray  # [K, 6]: x0, y0, vx, vy, ax, ay
    events: list[Event]
    scrapes: list[tuple[float, float, float, float]]  # (t0, t1, speed at t0, x at t0)

    def positions(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(visible mask, x, y) at `times`."""
        idx = np.clip(np.searchsorted(self.seg_t, times, side="right") - 1, 0, len(self.seg_t) - 1)
        dt = times - self.seg_t[idx]
        s = self.seg[idx]
        x = s[:, 0] + s[:, 2] * dt + 0.5 * s[:, 4] * dt * dt
        y = s[:, 1] + s[:, 3] * dt + 0.5 * s[:, 5] * dt * dt
        visible = (times >= self.t_start) & (times < self.t_end)
        return visible, x, y


def simulate_episode(
    rng: np.random.Generator, mclass: MotionClass, obj: SceneObject, t0: float, aspect: float
) -> Episode:
    """Launch `obj` at time t0 the way `mclass` says, and integrate it exactly until it leaves."""
    r = obj.radius
    side = 1.0 if rng.random() < 0.5 else -1.0
    if mclass.launch == "drop":
        x = rng.uniform(0.25, aspect - 0.25)
        y = 1.0 + r
        vx = rng.uniform(-0.06, 0.06)
        vy = -rng.uniform(0.0, 0.4) * mclass.speed
    elif mclass.launch == "throw":
        x, y = -r, rng.uniform(0.45, 0.8)
        vx, vy = rng.uniform(0.5, 0.7) * mclass.speed, rng.uniform(0.0, 0.5)
    elif mclass.launch == "slide":
        x, y = -r, r + rng.uniform(0.03, 0.08)
        vx, vy = rng.uniform(0.95, 1.25) * mclass.speed, 0.0
    else:  # lob
        x, y = -r, rng.uniform(0.12, 0.3)
        vx, vy = rng.uniform(0.28, 0.42) * mclass.speed, rng.uniform(2.3, 2.8)
    if side < 0 and mclass.launch != "drop":
        x, vx = aspect - x, -vx
    x_lo, x_hi = -r - 0.01, aspect + r + 0.01
    e = obj.restitution

    def exit_time(xp: float, v: float, a: float) -> float:
        """Time until x leaves [x_lo, x_hi] moving at v with acceleration a (a opposes v)."""
        if v == 0:
            return math.inf
        bound = x_hi if v > 0 else x_lo
        dist = bound - xp
        if a == 0:
            return dist / v if dist / v >= 0 else math.inf
        disc = v * v + 2 * a * dist
        if disc < 0:
            return math.inf
        return (-v + math.copysign(math.sqrt(disc), v)) / a if a != 0 else math.inf

    seg_t: list[float] = []
    segs: list[tuple[float, ...]] = []
    events: list[Event] = []
    scrapes: list[tuple[float, float, float, float]] = []
    t = t0
    mode = "flight"
    for _ in range(100):
        if mode == "flight":
            h = max(y - r, 0.0)
            t_floor = (vy + math.sqrt(vy * vy + 2 * GRAVITY * h)) / GRAVITY
            t_exit = exit_time(x, vx, 0.0)
            seg_t.append(t)
            segs.append((x, y, vx, vy, 0.0, -GRAVITY))
            if t_exit < t_floor:
                t += t_exit
                break
            x += vx * t_floor
            v_impact = vy - GRAVITY * t_floor
            t += t_floor
            y = r
            events.append(Event(t, "impact", x, r, min(1.0, -v_impact / IMPACT_REF)))
            vy = -e * v_impact
            vx *= BOUNCE_KEEP_VX
            if vy < STOP_VY:
                vy = 0.0
                mode = "slide"
        elif mode == "slide":
            speed = abs(vx)
            seg_t.append(t)
            if speed < 1e-3:
                segs.append((x, r, 0.0, 0.0, 0.0, 0.0))
                mode = "rest"
                continue
            a = -math.copysign(FRICTION, vx)
            t_stop = speed / FRICTION
            t_exit = exit_time(x, vx, a)
            segs.append((x, r, vx, 0.0, a, 0.0))
            if t_exit < t_stop:
                scrapes.append((t, t + t_exit, speed, x))
                t += t_exit
                break
            scrapes.append((t, t + t_stop, speed, x))
            x += vx * t_stop + 0.5 * a * t_stop * t_stop
            t += t_stop
            vx = 0.0
            mode = "rest"
        else:  # rest, then vanish
            seg_t.append(t)
            segs.append((x, r, 0.0, 0.0, 0.0, 0.0))
            t += rng.uniform(0.3, 0.8)
            events.append(Event(t, "vanish", x, r, 1.0))
            break
    return Episode(
        obj=obj,
        t_start=t0,
        t_end=t,
        seg_t=np.asarray(seg_t),
        seg=np.asarray(segs, dtype=np.float64),
        events=events,
        scrapes=scrapes,
    )


# ---------------------------------------------------------------------------------------------
# One video's plan: every random choice, made up front from the video's own seed
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoPlan:
    name: str
    index: int
    class_index: int
    split: str
    fps: int
    width: int
    height: int
    num_frames: int
    sample_rate: int
    num_samples: int
    ground_truth: bool
    episodes: list[Episode]
    palette: dict[str, Any] = field(default_factory=dict)
    audio_seed: int = 0

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def floor_px(self) -> int:
        return self.height - gt.band_height(self.height)

    @property
    def aspect(self) -> float:
        return self.width / self.floor_px


def _muted_color(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _object_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated colour: one channel high, one low, one random."""
    c = np.array([rng.uniform(200, 255), rng.uniform(20, 70), rng.uniform(20, 255)])
    rng.shuffle(c)
    return (float(c[0]), float(c[1]), float(c[2]))


def plan_video(cfg: SynthConfig, index: int, class_index: int, split: str, name: str) -> VideoPlan:
    """All random choices of one video (deterministic in cfg.seed and index)."""
    plan_seq, audio_seq = np.random.SeedSequence([cfg.seed, 1, index]).spawn(2)
    rng = np.random.default_rng(plan_seq)
    fps = int(cfg.fps_choices[rng.integers(len(cfg.fps_choices))])
    width, height = cfg.sizes[rng.integers(len(cfg.sizes))]
    sample_rate = int(cfg.sample_rates[rng.integers(len(cfg.sample_rates))])
    seconds = cfg.seconds * rng.uniform(1 - cfg.duration_jitter, 1 + cfg.duration_jitter)
    num_frames = max(1, int(round(seconds * fps)))
    num_samples = int(round(num_frames * sample_rate / fps))
    mclass = CLASSES[class_index]
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
        num_samples=num_samples,
        ground_truth=cfg.ground_truth,
        episodes=[],
        audio_seed=int(audio_seq.generate_state(1)[0]),
    )
    sky_top = _muted_color(rng, 60, 200)
    sky_bottom = np.clip(sky_top + rng.uniform(-50, 50, 3), 30, 230)
    ground = _muted_color(rng, 40, 120)
    props = []
    for _ in range(int(rng.integers(2, 5))):
        w = rng.uniform(0.1, 0.4) * plan.aspect
        h = rng.uniform(0.15, 0.6)
        x = rng.uniform(-0.1, plan.aspect)
        props.append((x, w, h, _muted_color(rng, 50, 180).tolist()))
    plan.palette = {
        "sky_top": sky_top.tolist(),
        "sky_bottom": sky_bottom.tolist(),
        "ground": ground.tolist(),
        "props": props,
        "dust": np.clip(ground + 90, 0, 255).tolist(),
    }
    duration = plan.duration_s
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    for slot in range(n_objects):
        # The first episode may start before t=0, so the first frames are not empty.
        t = rng.uniform(-2.0, 0.5) + 0.4 * slot
        while t < duration:
            radius = rng.uniform(0.045, 0.1)
            e = rng.uniform(*mclass.restitution)
            obj = SceneObject(
                radius=radius,
                shape="disc" if rng.random() < 0.7 else "square",
                color=_object_color(rng),
                pitch_hz=float(300.0 * (0.07 / radius) ** 1.2 * rng.uniform(0.92, 1.08)),
                restitution=e,
                decay_s=float(0.05 + 0.55 * max(e - 0.25, 0.0)),
            )
            ep = simulate_episode(rng, mclass, obj, t, plan.aspect)
            if ep.t_end > 0:
                plan.episodes.append(ep)
            t = ep.t_end + rng.uniform(0.2, 0.9)
    return plan


# ---------------------------------------------------------------------------------------------
# Rendering: numpy on float32 patches; only bounding boxes are touched
# ---------------------------------------------------------------------------------------------


def _background(plan: VideoPlan) -> np.ndarray:
    h, w, fp = plan.height, plan.width, plan.floor_px
    pal = plan.palette
    ramp = (np.arange(h, dtype=np.float32) / max(fp - 1, 1))[:, None]
    top = np.asarray(pal["sky_top"], np.float32)
    bottom = np.asarray(pal["sky_bottom"], np.float32)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = (top + (bottom - top) * np.clip(ramp, 0, 1))[:, None, :]
    scale = fp
    for x, pw, ph, color in pal["props"]:
        x0, x1 = int(max(x * scale, 0)), int(min((x + pw) * scale, w))
        y0 = int(max(fp - ph * scale, 0))
        if x1 > x0:
            bg[y0:fp, x0:x1] = 0.55 * bg[y0:fp, x0:x1] + 0.45 * np.asarray(color, np.float32)
    bg[fp:] = np.asarray(pal["ground"], np.float32)
    bg[fp : fp + max(1, h // 96)] *= 0.6  # the floor edge
    return bg


def _box(cx: float, cy: float, rx: float, ry: float, w: int, h: int):  # type: ignore[no-untyped-def]
    x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), w)
    y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)
    ys = (np.arange(y0, y1, dtype=np.float32) + (0.5 - cy))[:, None]
    return x0, x1, y0, y1, xs, ys


def _blend(frame: np.ndarray, box, alpha: np.ndarray, color: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    x0, x1, y0, y1 = box[:4]
    patch = frame[y0:y1, x0:x1]
    patch += alpha[..., None] * (color - patch)


class _Renderer:
    """Draws the frames of one plan."""

    def __init__(self, plan: VideoPlan):
        self.plan = plan
        self.bg = _background(plan)
        self.scale = float(plan.floor_px)
        self.times = np.arange(plan.num_frames) / plan.fps
        self.tracks = [ep.positions(self.times) for ep in plan.episodes]
        # Effects: (t0, life, kind, x, y, strength, extra)
        eff: list[tuple[float, float, str, float, float, float, float]] = []
        for ep in plan.episodes:
            for ev in ep.events:
                if ev.kind == "impact":
                    eff.append((ev.t, RING_LIFE, "ring", ev.x, ev.y, ev.strength, ep.obj.radius))
                    if ev.strength > 0.12:
                        eff.append((ev.t, DUST_LIFE, "dust", ev.x, 0.0, ev.strength, 1.0))
                        eff.append((ev.t, DUST_LIFE, "dust", ev.x, 0.0, ev.strength, -1.0))
                else:
                    eff.append((ev.t, POOF_LIFE, "poof", ev.x, ev.y, 1.0, ep.obj.radius))
        self.effects = eff
        self.eff_t0 = np.array([e[0] for e in eff])
        self.eff_life = np.array([e[1] for e in eff])
        self.dust = np.asarray(plan.palette["dust"], np.float32)

    def px(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale, self.plan.floor_px - y * self.scale

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(self.plan.num_frames):
            yield self.frame(i)

    def frame(self, i: int) -> np.ndarray:
        """Frame i: background, dust and rings, shadows, objects, then smoke puffs on top."""
        plan = self.plan
        t = float(self.times[i])
        img = self.bg.copy()
        scene = img[: plan.floor_px]  # every effect and object stays above the floor line
        active = np.nonzero((self.eff_t0 <= t) & (t < self.eff_t0 + self.eff_life))[0]
        for k in active:
            if self.effects[k][2] != "poof":
                self._effect(scene, self.effects[k], t)
        visible = [
            (ep, float(xs[i]), float(ys[i]))
            for (vis, xs, ys), ep in zip(self.tracks, plan.episodes)
            if vis[i]
        ]
        for ep, x, y in visible:
            self._shadow(scene, x, y, ep.obj.radius)
        for ep, x, y in visible:
            cx, cy = self.px(x, y)
            self._object(scene, cx, cy, self.scale * ep.obj.radius, ep.obj)
        for k in active:
            if self.effects[k][2] == "poof":
                self._effect(scene, self.effects[k], t)
        out = np.clip(img, 0, 255).astype(np.uint8)
        if plan.ground_truth:
            gt.draw_frame_code(out, i)
        return out

    def _effect(self, scene: np.ndarray, effect: tuple, t: float) -> None:  # type: ignore[type-arg]
        """One impact ring, dust cloud or vanishing puff, `t - t0` seconds into its life."""
        t0, life, kind, x, y, strength, extra = effect
        age = (t - t0) / life
        s = self.scale
        if kind == "dust":  # a cloud that drifts sideways, rises, spreads and fades
            cx, cy = self.px(x + extra * (0.05 + 0.35 * age) * (0.5 + strength), 0.03 + 0.12 * age)
            sigma = s * (0.03 + 0.09 * age) * (0.6 + 0.6 * strength)
            self._puff(scene, cx, cy, sigma, 0.75 * (1 - age) ** 1.5, self.dust)
        elif kind == "ring":  # expands from the object's rim, thins and fades
            cx, cy = self.px(x, y)
            radius = s * (extra + (0.12 + 0.4 * strength) * age**0.7)
            width = s * (0.05 + 0.04 * strength) * (1.0 - 0.6 * age)
            alpha = (0.5 + 0.5 * strength) * (1.0 - age) ** 1.5
            self._ring(scene, cx, cy, radius, width, alpha)
        else:  # poof: six smoke puffs spreading out from where the object vanished
            cx, cy = self.px(x, y)
            r = s * extra
            for j in range(6):
                ang = 2 * math.pi * j / 6 + 0.3
                dist = r * (0.3 + 2.2 * age**0.6)
                px, py = cx + dist * math.cos(ang), cy - 0.8 * dist * math.sin(ang)
                self._puff(scene, px, py, r * (0.5 + age), 0.8 * (1 - age) ** 1.3, SMOKE_COLOR)

    def _shadow(self, scene: np.ndarray, x: float, y: float, radius: float) -> None:
        """A soft elliptical shadow on the floor, wider and fainter the higher the object."""
        above = max(y - radius, 0.0)
        rx = self.scale * radius * (1.2 + 0.6 * above)
        box = _box(x * self.scale, scene.shape[0] - 1.0, rx, 0.3 * rx, *scene.shape[1::-1])
        if box is not None:
            d = (box[4] / rx) ** 2 + (box[5] / (0.3 * rx)) ** 2
            alpha = np.clip(1.0 - d, 0, 1) * (0.45 / (1.0 + 3.0 * above))
            _blend(scene, box, alpha, np.zeros(3, np.float32))

    @staticmethod
    def _object(img: np.ndarray, cx: float, cy: float, r: float, obj: SceneObject) -> None:
        box = _box(cx, cy, r, r, *img.shape[1::-1])
        if box is None:
            return
        xs, ys = box[4], box[5]
        if obj.shape == "disc":
            d = np.sqrt(xs * xs + ys * ys) - r
        else:
            d = np.maximum(np.abs(xs), np.abs(ys)) - 0.88 * r
        alpha = np.clip(0.5 - d, 0.0, 1.0)
        shade = 1.15 - 0.3 * (ys + r) / (2 * r)  # lit from above
        color = np.asarray(obj.color, np.float32) * shade[..., None]
        _blend(img, box, alpha, np.minimum(color, 255.0))

    @staticmethod
    def _ring(
        img: np.ndarray, cx: float, cy: float, radius: float, width: float, alpha: float
    ) -> None:
        box = _box(cx, cy, radius + width, radius + width, *img.shape[1::-1])
        if box is None or alpha <= 0.01:
            return
        xs, ys = box[4], box[5]
        d = np.abs(np.sqrt(xs * xs + ys * ys) - radius) - 0.5 * width
        a = np.clip(0.5 - d, 0.0, 1.0) * alpha
        _blend(img, box, a, RING_COLOR)

    @staticmethod
    def _puff(
        img: np.ndarray, cx: float, cy: float, sigma: float, alpha: float, color: np.ndarray
    ) -> None:
        if alpha <= 0.01 or sigma <= 0.3:
            return
        box = _box(cx, cy, 2.5 * sigma, 2.5 * sigma, *img.shape[1::-1])
        if box is None:
            return
        xs, ys = box[4], box[5]
        a = alpha * np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
        _blend(img, box, a, color)


def render_frames(plan: VideoPlan) -> Iterator[np.ndarray]:
    """The video's frames, uint8 [H, W, 3], one at a time."""
    return _Renderer(plan).frames()


# ---------------------------------------------------------------------------------------------
# Sound
# ---------------------------------------------------------------------------------------------

PARTIALS = ((1.0, 1.0), (2.32, 0.5), (4.25, 0.25), (6.63, 0.12))  # (ratio, amplitude)
EVENT_GAIN_WITH_CODE = 0.5  # events are 6 dB quieter when the time code is mixed in


def _pan(x: float, aspect: float) -> tuple[float, float]:
    p = min(max(x / aspect, 0.0), 1.0)
    return math.cos(p * math.pi / 2) * math.sqrt(2), math.sin(p * math.pi / 2) * math.sqrt(2)


def render_audio(plan: VideoPlan) -> np.ndarray:
    """Stereo float32 [2, num_samples] in [-1, 1]."""
    rng = np.random.default_rng(plan.audio_seed)
    sr, n = plan.sample_rate, plan.num_samples
    out = np.zeros((2, n), np.float64)
    # Ambient: quiet pink-ish noise.
    spec = np.fft.rfft(rng.standard_normal((2, n)), axis=1)
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 20.0)
    ambient = np.fft.irfft(spec / np.sqrt(f), n, axis=1)
    out += ambient * (0.004 / max(float(ambient.std()), 1e-12))
    gain = EVENT_GAIN_WITH_CODE if plan.ground_truth else 1.0
    for ep in plan.episodes:
        obj = ep.obj
        for ev in ep.events:
            if ev.kind != "impact":
                continue
            j0 = int(math.ceil(ev.t * sr))  # first sample at or after the impact
            lo = max(j0, 0)
            hi = min(j0 + int(5 * obj.decay_s * sr), n)
            if hi <= lo:
                continue
            tau = (np.arange(lo, hi, dtype=np.float64) / sr - ev.t).astype(np.float32)
            wave = np.zeros(hi - lo, np.float32)
            for k, (ratio, amp) in enumerate(PARTIALS):
                fk = obj.pitch_hz * ratio
                decay = obj.decay_s / (1 + 0.8 * k)  # higher partials die out sooner
                m = min(int(5 * decay * sr), hi - lo)
                phase = rng.uniform(0, 2 * np.pi)
                if fk > 0.45 * sr or m <= 0:
                    continue
                tk = tau[:m]
                wave[:m] += amp * np.exp(-tk / decay) * np.sin(2 * np.pi * fk * tk + phase)
            m = min(int(0.01 * sr), hi - lo)  # a 10 ms broadband click marks the attack
            wave[:m] += 0.6 * rng.standard_normal(m) * np.exp(-tau[:m] / 0.0015)
            m = min(int(0.0005 * sr) + 1, hi - lo)
            wave[:m] *= np.minimum(tau[:m] / 0.0005, 1.0)  # 0.5 ms attack
            amp_total = gain * 0.45 * ev.strength**1.3
            gl, gr = _pan(ev.x, plan.aspect)
            out[0, lo:hi] += amp_total * gl * wave
            out[1, lo:hi] += amp_total * gr * wave
        for t0, t1, speed, x in ep.scrapes:
            lo, hi = max(int(math.ceil(t0 * sr)), 0), min(int(math.ceil(t1 * sr)), n)
            if hi <= lo:
                continue
            since = np.arange(lo, hi) / sr - t0
            v = np.maximum(speed - FRICTION * since, 0.0)
            noise = rng.standard_normal(hi - lo)
            noise = np.convolve(noise, np.ones(6) / 6, mode="same")  # a gentle low-pass
            env = gain * 0.12 * (v / 1.2) * np.minimum(since / 0.01, 1.0)
            gl, gr = _pan(x, plan.aspect)
            out[0, lo:hi] += gl * env * noise
            out[1, lo:hi] += gr * env * noise
    if plan.ground_truth:
        out += gt.AUDIO_TIME_CODE.render(n, sr)[None, :]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


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
    mclass = CLASSES[plan.class_index]
    return {
        "name": plan.name,
        "path": path,
        "label": mclass.name,
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
        "motion_class": asdict(mclass),
        "objects": objects,
        "events": events,
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
