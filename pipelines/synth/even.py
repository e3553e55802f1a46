"""The `even` world: the `sand` studio, with classes that no still frame and no sound level show.

An audit of the `sand` world (docs/synth.md, "Worlds") found that a still frame and the sound's
level give the class away: the marks in the sand draw each class's footprint, where the objects
are in one frame follows how they are launched, the ring time follows the class's bounciness,
loudness follows the impact speed and a slide scrapes. `even` keeps the studio, the object look
and the physics of `sand`, and changes what a class is:

- **A class is a pace.** Every video shows the same mix of motions (each object is launched as a
  `drop`, `throw`, `slide` or `lob`, at random, in every class), and the class is how fast the
  video's world runs (`PACES`): each episode is the `sand` world's episode played at that pace,
  gaps and rests included. Playing a motion faster keeps the places it passes through and the
  share of time it spends at each, so the distribution of a still frame is the same in every
  class; only motion over time shows the pace. The fastest pace is under twice the slowest, so
  a playback speed of 2x or more is never a class's own pace.
- **No footprints.** Impacts press no dents and slides plough no furrows.
- **One arrow of time for every video.** The sand dries as the video runs, under one law of the
  video's source time (`dryness`): the ground strip lightens, and impacts ring shorter and
  brighter (`ring_time`, `partial_gain`). The law is the same in every video and every class, so
  it orders two clips of one video and gives the playback direction, and carries no class.
- **Sound from the sand, not the class.** An object's ring time is drawn from one spread for
  every class (`BASE_RING_S`), impacts sound at their strength in the unpaced motion, slides are
  silent, and each soundtrack's impacts are scaled to a level drawn from one range for every
  video (`LEVEL_RMS`). The rhythm of the impacts still follows the pace.

Pure numpy; `pipelines.synth.corpus`, `pipelines.synth.render` call these for `world="even"`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from avtime.pipelines.synth.sand import OBJECT_COLOR, OBJECT_RADIUS, SAND
from avtime.pipelines.synth.scene import (
    CLASSES,
    Episode,
    MotionClass,
    SceneObject,
    impact_pitch,
    simulate_episode,
)

PACES: tuple[tuple[str, float], ...] = (  # (class name, pace): under 2x from slowest to fastest
    ("slow", 0.62),
    ("steady", 0.8),
    ("brisk", 1.0),
    ("fast", 1.22),
)
LAUNCHES = CLASSES[:4]  # drop, throw, slide, lob: every class draws from all four

DRY_TAU_S = 6.0  # dryness 1 - exp(-t / tau): the same law in every video
WET_SAND = (128.0, 108.0, 76.0)  # the ground strip at t = 0; it lightens towards SAND
RING_SHORTEN = 0.6  # the ring time falls to 1 - RING_SHORTEN of its base as the sand dries
BRIGHTEN = 1.5  # a partial k's amplitude gains a factor (1 + BRIGHTEN * dryness) ** (k / 3)
BASE_RING_S = (0.12, 0.35)  # an object's ring time on wet sand, the same spread in every class
LEVEL_RMS = (0.03, 0.08)  # each soundtrack's impact level (RMS), the same range in every class


def dryness(t: float | np.ndarray) -> float | np.ndarray:
    """How dry the sand is at source time t (s): 0 at t <= 0, rising towards 1."""
    return 1.0 - np.exp(-np.maximum(t, 0.0) / DRY_TAU_S)


def ground_color(t: float) -> np.ndarray:
    """The ground strip's colour [3] float32 at source time t (s): wet sand drying to SAND."""
    d = float(dryness(t))
    wet, dry = np.asarray(WET_SAND, np.float32), np.asarray(SAND, np.float32)
    return wet + d * (dry - wet)


def ring_time(base_s: float, t: float) -> float:
    """The ring time (s) of an impact at time t (s) of an object whose wet-sand ring is base_s."""
    return base_s * (1.0 - RING_SHORTEN * float(dryness(t)))


def partial_gain(k: int, t: float) -> float:
    """The amplitude factor of partial k (0 = the fundamental) of an impact at time t (s)."""
    return float((1.0 + BRIGHTEN * float(dryness(t))) ** (k / 3.0))


def even_object(rng: np.random.Generator, mclass: MotionClass) -> SceneObject:
    """An object of the one look. Restitution follows the class (the trajectory); the ring
    time (`decay_s`, on wet sand) and the pitch (from a hidden size) do not."""
    hidden_radius = rng.uniform(0.045, 0.1)
    return SceneObject(
        radius=OBJECT_RADIUS,
        shape="disc",
        color=OBJECT_COLOR,
        pitch_hz=impact_pitch(rng, hidden_radius),
        restitution=rng.uniform(*mclass.restitution),
        decay_s=float(rng.uniform(*BASE_RING_S)),
    )


def level_of(seed: int) -> float:
    """The impact level (RMS) of one soundtrack, drawn from `LEVEL_RMS` by its audio seed."""
    lo, hi = LEVEL_RMS
    u = np.random.default_rng([seed, 7]).uniform()
    return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


def set_level(events: np.ndarray, rms: float) -> np.ndarray:
    """`events` [2, N] (the impacts' mix) scaled to stereo RMS `rms`; silence stays silent."""
    now = float(np.sqrt(np.mean(events * events))) if events.size else 0.0
    return events if now < 1e-9 else events * (rms / now)


def paced(ep: Episode, pace: float, t0: float) -> Episode:
    """`ep` (simulated from time 0) played at `pace` from time t0: times divide by the pace,
    speeds multiply by it and accelerations by its square, so the path is the same. Impact
    strengths are those of the unpaced motion, so the sound and the rings do not show the pace."""
    seg = ep.seg.copy()
    seg[:, 2:4] *= pace
    seg[:, 4:6] *= pace * pace
    events = [replace(ev, t=t0 + ev.t / pace) for ev in ep.events]
    scrapes = [(t0 + a / pace, t0 + b / pace, v * pace, x) for a, b, v, x in ep.scrapes]
    return Episode(
        ep.obj, t0 + ep.t_start / pace, t0 + ep.t_end / pace, t0 + ep.seg_t / pace, seg,
        events, scrapes,
    )  # fmt: skip


def draw_paced_episodes(
    rng: np.random.Generator, pace: float, n_objects: int, duration: float, aspect: float
) -> list[Episode]:
    """Episodes of `n_objects` slots at `pace`, back to back, overlapping [0, duration): the
    `scene.draw_episodes` schedule with every time (first start, gaps) divided by the pace, and
    each object launched as one of `LAUNCHES` at random."""
    episodes = []
    for slot in range(n_objects):
        t = (rng.uniform(-2.0, 0.5) + 0.4 * slot) / pace
        while t < duration:
            launch = LAUNCHES[int(rng.integers(len(LAUNCHES)))]
            ep = paced(
                simulate_episode(rng, launch, even_object(rng, launch), 0.0, aspect), pace, t
            )
            if ep.t_end > 0:
                episodes.append(ep)
            t = ep.t_end + rng.uniform(0.2, 0.9) / pace
    return episodes
