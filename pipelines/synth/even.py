"""The `even` world: the `sand` studio with every static cue to the class evened out.

An audit of the `sand` world (docs/synth.md, "Worlds") found that a still frame and the sound's
level give the class away: the marks in the sand draw each class's footprint, the ring time
follows the class's bounciness, loudness follows the impact speed and a slide scrapes. `even`
keeps the studio, the object look, the physics and the classes of `sand`, and changes four
things so that only motion and sound *over time* tell the classes apart:

- **No footprints.** Impacts press no dents and slides plough no furrows.
- **One arrow of time for every video.** The sand dries as the video runs, under one law of the
  video's source time (`dryness`): the ground strip lightens, and impacts ring shorter and
  brighter (`ring_time`, `partial_gain`). The law is the same in every video and every class, so
  it orders two clips of one video, gives the playback direction and the playback speed (the
  rate of change), and carries no class.
- **Ring time from the sand, not the object.** An object's ring time is drawn from one spread for
  every class (`base_ring_time`), then shortened by the dryness; bounciness still shapes the
  trajectory.
- **One loudness distribution.** Slides are silent, and each soundtrack's impacts are scaled to
  a level drawn from one range for every video (`LEVEL_RMS`), so neither the mean level nor its
  spectral balance depends on the class; the rhythm and timing of the impacts still do.

Pure numpy; `pipelines.synth.render` and `pipelines.synth.corpus` call these for `world="even"`.
"""

from __future__ import annotations

import math

import numpy as np

from avtime.pipelines.synth.sand import OBJECT_COLOR, OBJECT_RADIUS, SAND
from avtime.pipelines.synth.scene import MotionClass, SceneObject, impact_pitch

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
