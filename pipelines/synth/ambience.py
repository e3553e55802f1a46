"""The ambience of a synthetic scene: a steady noise bed whose colour the sky's hue gives away.

Real scenes sound like what they look like at any playback speed: a beach hisses, a room hums.
In the synthetic corpus nothing else ties a video's look to its sound in a way that survives the
pretext sampler's independent audio and video speeds, since a speed change moves every pitch by
octaves. So each video gets one number, its *ambience exponent* beta in [0, `BETA_MAX`], shown
and heard:

- **Heard:** a stereo noise bed with power spectrum ~ 1 / f^beta (white at 0, pink at 1, brown at
  2) from `LOW_HZ` up, at `AMBIENCE_RMS`. Playing a power law faster only rescales it, so its
  slope, -3·beta dB per octave, is the same at every speed and in either direction.
- **Seen:** the sky's hue is `HUE_SPAN * beta / BETA_MAX` (red through yellow and green to blue),
  with a random saturation and brightness, so colour jitter that scales brightness, contrast or
  saturation keeps the link.

`sky_color` and `noise_bed` are pure functions; `pipelines.synth.scene.draw_palette` and
`pipelines.synth.render.render_audio` call them. The sidecar's `ambience` key records beta.
"""

from __future__ import annotations

import colorsys

import numpy as np

BETA_MAX = 2.0
HUE_SPAN = 0.7  # the sky's hue runs over [0, HUE_SPAN] turns as beta runs over [0, BETA_MAX]
AMBIENCE_RMS = 0.04  # the bed's level (the old fixed pink floor was 0.004)
QUIET_RMS = 0.004  # the bed's level when the ground-truth time code shares the band
LOW_HZ = 40.0  # the power law holds from here up; flat below, so brown noise does not drift
SATURATION = (0.3, 0.65)
VALUE = (0.35, 0.8)


def sky_color(beta: float, u_sat: float, u_val: float) -> tuple[float, float, float]:
    """RGB 0..255 of the sky top for exponent `beta`; u_sat, u_val in [0, 1) pick saturation and
    brightness within `SATURATION` and `VALUE`."""
    if not 0.0 <= beta <= BETA_MAX:
        raise ValueError(f"beta must be in [0, {BETA_MAX}], got {beta}")
    hue = HUE_SPAN * beta / BETA_MAX
    sat = SATURATION[0] + (SATURATION[1] - SATURATION[0]) * u_sat
    val = VALUE[0] + (VALUE[1] - VALUE[0]) * u_val
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (255.0 * r, 255.0 * g, 255.0 * b)


def beta_of_color(rgb: tuple[float, float, float] | np.ndarray) -> float:
    """Inverse of `sky_color` up to saturation and brightness: beta from an RGB's hue."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue = colorsys.rgb_to_hsv(r, g, b)[0]
    return BETA_MAX * hue / HUE_SPAN


def noise_bed(
    rng: np.random.Generator, beta: float, sample_rate: int, num_samples: int, rms: float
) -> np.ndarray:
    """Stereo float64 [2, num_samples]: independent noise per channel, power ~ 1 / f^beta above
    `LOW_HZ` (flat below), scaled to `rms` per channel."""
    n = num_samples
    spec = np.fft.rfft(rng.standard_normal((2, n)), axis=1)
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), LOW_HZ)
    bed = np.fft.irfft(spec * freqs ** (-beta / 2.0), n, axis=1)
    std = np.maximum(bed.std(axis=1, keepdims=True), 1e-12)
    return bed * (rms / std)
