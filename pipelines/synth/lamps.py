"""Dusk lamps: a slow process that runs through each whole synthetic video, seen and heard.

Object episodes are independent of each other, so two clips from different episodes carry no cue
to which came first; in real video, scenes change over minutes (light, crowds, a meal eaten) and
that slow change orders clips. The corpus gets one such process: as the video goes on, lamps in
the sky come on one at a time and stay on, each with a quiet sustained tone.

- **Seen:** lamp k comes on at `t_on[k]`, about every `LAMP_PERIOD_S` seconds (evenly spaced with
  jitter, so the count of lit lamps grows steadily with time). It lights with a flash that shrinks
  and fades over `FLASH_LIFE`, a one-way-in-time effect, then stays a small pale square. The lamps
  of one video share a hue.
- **Heard:** lamp k adds a sine at `base_hz * (1 + TONE_STEP * k)` that fades in over
  `TONE_FADE_S` (no onset click), so the chord grows upward as lamps come on. `base_hz` is tied to
  the video's lamp hue (one octave of pitch per turn of hue), so sound and picture agree.
- **Checkable:** the sidecar lists every lamp (time, position, tone); pixels and samples follow it.
  `pipelines.synth.render` draws the lamps and mixes in `lamp_tones`.

Lamp colours keep every channel above 165, so a lamp never passes for an object (whose colour has
one channel at most 70). Tones lie between 600 Hz and ~2 kHz, inside the band of the ground-truth
audio time code, so a video with ground truth on keeps its lamps but not their tones.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

LAMP_PERIOD_S = 0.8  # one lamp comes on about this often
LAMP_HALF = 0.035  # half the side of a lamp square, scene heights
LAMP_SATURATION = 0.35
FLASH_LIFE = 0.4  # seconds
FLASH_COLOR = (255.0, 255.0, 250.0)
TONE_STEP = 0.06  # lamp k's tone is base * (1 + TONE_STEP * k)
TONE_AMPLITUDE = 0.012
TONE_FADE_S = 0.2
BASE_LO_HZ = 600.0  # base tone at hue 0; hue 1 would be one octave up


@dataclass(frozen=True)
class Lamp:
    """One lamp: when it comes on, where (scene units, centre) and its tone."""

    t_on: float
    x: float
    y: float
    tone_hz: float


@dataclass(frozen=True)
class LampSet:
    """The lamps of one video, in the order they come on, and their shared colour."""

    lamps: tuple[Lamp, ...]
    color: tuple[float, float, float]  # RGB 0..255
    hue: float
    base_hz: float


def lamp_color(hue: float) -> tuple[float, float, float]:
    """The pale lamp colour of a hue in [0, 1): every channel >= 165."""
    r, g, b = colorsys.hsv_to_rgb(hue, LAMP_SATURATION, 1.0)
    return (255.0 * r, 255.0 * g, 255.0 * b)


def draw_lamps(rng: np.random.Generator, duration: float, aspect: float) -> LampSet:
    """Lamps on a grid of sky cells (3 rows between y = 0.62 and 0.92), one per cell, coming on
    about every `LAMP_PERIOD_S` s through [0, duration)."""
    n = max(2, int(round(duration / LAMP_PERIOD_S)))
    rows = 3
    cols = max(2, math.ceil(n / rows) + 1)
    cells = rng.permutation(rows * cols)[:n]
    width = (aspect - 0.16) / cols
    lamps = []
    hue = float(rng.uniform(0.0, 1.0))
    base = BASE_LO_HZ * 2.0**hue
    for k, cell in enumerate(cells):
        row, col = divmod(int(cell), cols)
        x = 0.08 + (col + rng.uniform(0.3, 0.7)) * width
        y = 0.62 + 0.15 * row + rng.uniform(-0.02, 0.02)
        t_on = (k + rng.uniform(0.15, 0.85)) * duration / n
        lamps.append(Lamp(float(t_on), float(x), float(y), float(base * (1 + TONE_STEP * k))))
    return LampSet(tuple(lamps), lamp_color(hue), hue, float(base))


def lamp_tones(lamps: LampSet, sample_rate: int, num_samples: int) -> np.ndarray:
    """Mono float64 [num_samples]: each lamp's sine from its `t_on`, faded in over
    `TONE_FADE_S` with a raised cosine; tones above 0.45 * sample_rate are left out."""
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    out = np.zeros(num_samples, np.float64)
    for lamp in lamps.lamps:
        if lamp.tone_hz > 0.45 * sample_rate:
            continue
        j0 = max(int(math.ceil(lamp.t_on * sample_rate)), 0)
        if j0 >= num_samples:
            continue
        since = t[j0:] - lamp.t_on
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.minimum(since / TONE_FADE_S, 1.0))
        out[j0:] += TONE_AMPLITUDE * ramp * np.sin(2 * np.pi * lamp.tone_hz * since)
    return out
