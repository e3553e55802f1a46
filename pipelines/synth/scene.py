"""Scene physics of the synthetic corpus: motion classes, objects, and exact episode integration.

Scene units: the floor is y = 0 and the top of the frame is y = 1; x uses the same unit, from the
left edge. One physics holds for the whole corpus:
- gravity `GRAVITY` pulls every object down; a floor bounce keeps `e` (the restitution, set by
  the class) of the vertical speed and `BOUNCE_KEEP_VX` of the horizontal speed;
- below a bounce speed of `STOP_VY` the object stays on the floor and slides, slowed by
  `FRICTION`, until it stops; it rests 0.3-0.8 s and vanishes.
Flight is a parabola and sliding a constant deceleration, so every impact time is exact.

An *episode* is one object's life: it enters from off-screen the way its motion class launches
it, and ends when it leaves the frame or vanishes after resting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from avtime.pipelines.synth import groundtruth as gt
from avtime.pipelines.synth.ambience import BETA_MAX, sky_color
from avtime.pipelines.synth.lamps import LampSet

GRAVITY = 4.5  # scene heights / s^2
BOUNCE_KEEP_VX = 0.88  # horizontal speed kept at a floor bounce
STOP_VY = 0.35  # below this bounce speed the object slides instead
FRICTION = 0.7  # sliding deceleration, scene heights / s^2
IMPACT_REF = 3.0  # an impact at this speed has strength 1

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
    MotionClass("slide", "slide", 1.0, (0.15, 0.25)),  # thrown flat and fast, slides to a stop
    MotionClass("lob", "lob", 1.0, (0.66, 0.78)),  # tossed up high, slow sideways
    MotionClass("drop_dead", "drop", 1.0, (0.30, 0.42)),  # clay: few, dull bounces
    MotionClass("throw_fast", "throw", 1.8, (0.66, 0.78)),
    MotionClass("lob_dead", "lob", 1.0, (0.30, 0.42)),
    MotionClass("slide_fast", "slide", 1.7, (0.15, 0.25)),
)


@dataclass
class SceneObject:
    radius: float  # scene heights
    shape: Literal["disc", "square"]
    color: tuple[float, float, float]  # RGB 0..255
    pitch_hz: float  # fundamental of its impact sound
    restitution: float
    decay_s: float  # impact sound decay time constant


@dataclass
class Event:
    t: float  # exact source time (s)
    kind: Literal["impact", "vanish"]
    x: float  # object centre, scene units
    y: float
    strength: float  # impact speed / IMPACT_REF, at most 1


@dataclass
class Episode:
    """One object from entry to exit. Segment k holds from seg_t[k]: x = x0 + vx dt + ax dt^2/2."""

    obj: SceneObject
    t_start: float
    t_end: float
    seg_t: np.ndarray  # [K] segment start times
    seg: np.ndarray  # [K, 6]: x0, y0, vx, vy, ax, ay
    events: list[Event]
    scrapes: list[tuple[float, float, float, float]]  # sliding: (t0, t1, speed at t0, x at t0)

    def positions(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(visible mask, x, y) at `times` [N] (s)."""
        idx = np.clip(np.searchsorted(self.seg_t, times, side="right") - 1, 0, len(self.seg_t) - 1)
        dt = times - self.seg_t[idx]
        s = self.seg[idx]
        x = s[:, 0] + s[:, 2] * dt + 0.5 * s[:, 4] * dt * dt
        y = s[:, 1] + s[:, 3] * dt + 0.5 * s[:, 5] * dt * dt
        visible = (times >= self.t_start) & (times < self.t_end)
        return visible, x, y


@dataclass
class VideoPlan:
    """Every random choice of one video, made up front; rendering only reads it."""

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
    lamps: LampSet | None = None  # dusk lamps (pipelines.synth.lamps); None = none
    ambience: bool = True  # the sky-coloured noise bed (pipelines.synth.ambience); else pink floor
    audio_seed: int = 0
    world: str = "dusk"  # "sand": one studio, one look, marks (synth.sand); "even": synth.even
    pace: float = 1.0  # how fast the world runs ("even": the class, synth.even); effects follow

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def floor_px(self) -> int:
        """Image row of the floor line; below it is the ground strip (the code band)."""
        return self.height - gt.band_height(self.height)

    @property
    def aspect(self) -> float:
        """Scene width in scene units."""
        return self.width / self.floor_px


def launch_state(
    rng: np.random.Generator, mclass: MotionClass, radius: float, aspect: float
) -> tuple[float, float, float, float]:
    """(x, y, vx, vy) of an object entering the scene as `mclass` launches it."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    r, k = radius, mclass.speed
    if mclass.launch == "drop":  # from just above the top, nearly straight down
        x, y = rng.uniform(0.25, aspect - 0.25), 1.0 + r
        return x, y, rng.uniform(-0.06, 0.06), -rng.uniform(0.0, 0.4) * k
    if mclass.launch == "throw":
        x, y = -r, rng.uniform(0.45, 0.8)
        vx, vy = rng.uniform(0.5, 0.7) * k, rng.uniform(0.0, 0.5)
    elif mclass.launch == "slide":  # a flat, fast throw: lands with a thud, then slides
        x, y = -r, rng.uniform(0.35, 0.75)
        vx, vy = rng.uniform(0.95, 1.25) * k, rng.uniform(0.0, 0.3)
    else:  # lob
        x, y = -r, rng.uniform(0.12, 0.3)
        vx, vy = rng.uniform(0.28, 0.42) * k, rng.uniform(2.3, 2.8)
    if side < 0:  # mirrored: enters from the right
        x, vx = aspect - x, -vx
    return x, y, vx, vy


def exit_time(x: float, v: float, a: float, lo: float, hi: float) -> float:
    """Time until x leaves [lo, hi], moving at v with an acceleration a that opposes v (or 0)."""
    if v == 0:
        return math.inf
    dist = (hi if v > 0 else lo) - x
    if a == 0:
        return dist / v if dist / v >= 0 else math.inf
    disc = v * v + 2 * a * dist
    if disc < 0:
        return math.inf
    return (-v + math.copysign(math.sqrt(disc), v)) / a


def simulate_episode(
    rng: np.random.Generator, mclass: MotionClass, obj: SceneObject, t0: float, aspect: float
) -> Episode:
    """Launch `obj` at time t0 the way `mclass` says, and integrate it exactly until it leaves."""
    r, e = obj.radius, obj.restitution
    x, y, vx, vy = launch_state(rng, mclass, r, aspect)
    lo, hi = -r - 0.01, aspect + r + 0.01
    seg_t: list[float] = []
    segs: list[tuple[float, ...]] = []
    events: list[Event] = []
    scrapes: list[tuple[float, float, float, float]] = []
    t = t0
    while len(segs) < 100:  # flight segments, one per bounce
        t_floor = (vy + math.sqrt(vy * vy + 2 * GRAVITY * max(y - r, 0.0))) / GRAVITY
        t_exit = exit_time(x, vx, 0.0, lo, hi)
        seg_t.append(t)
        segs.append((x, y, vx, vy, 0.0, -GRAVITY))
        if t_exit < t_floor:
            return Episode(obj, t0, t + t_exit, np.asarray(seg_t), np.asarray(segs), events, [])
        t, x, y = t + t_floor, x + vx * t_floor, r
        v_impact = vy - GRAVITY * t_floor
        events.append(Event(t, "impact", x, r, min(1.0, -v_impact / IMPACT_REF)))
        vy, vx = -e * v_impact, vx * BOUNCE_KEEP_VX
        if vy < STOP_VY:
            break
    speed = abs(vx)
    if speed >= 1e-3:  # slide to a stop, or out of the frame
        a = -math.copysign(FRICTION, vx)
        t_stop = speed / FRICTION
        t_exit = exit_time(x, vx, a, lo, hi)
        seg_t.append(t)
        segs.append((x, r, vx, 0.0, a, 0.0))
        if t_exit < t_stop:
            scrapes.append((t, t + t_exit, speed, x))
            return Episode(
                obj, t0, t + t_exit, np.asarray(seg_t), np.asarray(segs), events, scrapes
            )
        scrapes.append((t, t + t_stop, speed, x))
        x += vx * t_stop + 0.5 * a * t_stop * t_stop
        t += t_stop
    seg_t.append(t)  # rest, then vanish
    segs.append((x, r, 0.0, 0.0, 0.0, 0.0))
    t += rng.uniform(0.3, 0.8)
    events.append(Event(t, "vanish", x, r, 1.0))
    return Episode(obj, t0, t, np.asarray(seg_t), np.asarray(segs), events, scrapes)


def _muted_color(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _object_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated colour: one channel high, one low, one random."""
    c = np.array([rng.uniform(200, 255), rng.uniform(20, 70), rng.uniform(20, 255)])
    rng.shuffle(c)
    return (float(c[0]), float(c[1]), float(c[2]))


def draw_palette(rng: np.random.Generator, aspect: float) -> dict[str, Any]:
    """Background colours and static props (x, width, height, colour) of one video.

    The sky's hue shows the ambience exponent (`pipelines.synth.ambience`); the sky darkens or
    lightens towards the floor without changing hue.
    """
    u = rng.uniform(0.0, 1.0, 3)
    beta = float(BETA_MAX * u[0])
    sky_top = np.asarray(sky_color(beta, float(u[1]), float(u[2])))
    sky_bottom = np.clip(sky_top * (1.0 + rng.uniform(-50, 50, 3)[0] / 125.0), 0, 255)
    ground = _muted_color(rng, 40, 120)
    props = []
    for _ in range(int(rng.integers(2, 5))):
        w = rng.uniform(0.1, 0.4) * aspect
        h = rng.uniform(0.15, 0.6)
        x = rng.uniform(-0.1, aspect)
        props.append((x, w, h, _muted_color(rng, 50, 180).tolist()))
    return {
        "sky_top": sky_top.tolist(),
        "sky_bottom": sky_bottom.tolist(),
        "ground": ground.tolist(),
        "props": props,
        "dust": np.clip(ground + 90, 0, 255).tolist(),
        "ambience_beta": beta,
    }


def impact_pitch(rng: np.random.Generator, radius: float) -> float:
    """Fundamental (Hz) of an object of `radius` (scene heights): smaller is higher, +-8 %."""
    return float(300.0 * (0.07 / radius) ** 1.2 * rng.uniform(0.92, 1.08))


def sound_decay(restitution: float) -> float:
    """Impact sound decay time (s): bouncy objects ring (~0.3 s), clay thuds (~0.1 s)."""
    return float(0.05 + 0.55 * max(restitution - 0.25, 0.0))


def draw_object(rng: np.random.Generator, mclass: MotionClass) -> SceneObject:
    """A new object: size sets the pitch (smaller = higher), restitution sets the sound decay."""
    radius = rng.uniform(0.045, 0.1)
    e = rng.uniform(*mclass.restitution)
    return SceneObject(
        radius=radius,
        shape="disc" if rng.random() < 0.7 else "square",
        color=_object_color(rng),
        pitch_hz=impact_pitch(rng, radius),
        restitution=e,
        decay_s=sound_decay(e),
    )


def draw_episodes(
    rng: np.random.Generator,
    mclass: MotionClass,
    n_objects: int,
    duration: float,
    aspect: float,
    new_object: Callable[[np.random.Generator, MotionClass], SceneObject] | None = None,
) -> list[Episode]:
    """Episodes of `n_objects` object slots, back to back, that overlap [0, duration).

    `new_object` draws each object (default `draw_object`, the dusk world's varied looks).
    """
    new_object = new_object or draw_object
    episodes = []
    for slot in range(n_objects):
        # The first episode may start before t=0, so the first frames are not empty.
        t = rng.uniform(-2.0, 0.5) + 0.4 * slot
        while t < duration:
            ep = simulate_episode(rng, mclass, new_object(rng, mclass), t, aspect)
            if ep.t_end > 0:
                episodes.append(ep)
            t = ep.t_end + rng.uniform(0.2, 0.9)
    return episodes
