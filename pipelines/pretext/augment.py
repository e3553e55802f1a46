"""Augmentations of pretext clips: video crop/flip/colour jitter, audio gain/noise.

Every function is pure given its `rng` (numpy Generator). The parameters of a video clip are drawn
once per clip (`draw_video_aug`) and applied to every frame, so augmentation never changes the
temporal content. With `AugmentConfig.enabled = False` every clip shows the whole stored frame
resized to `crop_size` x `crop_size` (the aspect ratio is not kept, nothing is cut off), with no
flip, no jitter, no gain and no noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from avtime.pipelines.config import AugmentConfig

_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of the random resized crop


@dataclass(frozen=True, kw_only=True)
class VideoAug:
    """Per-clip video augmentation: crop box in stored pixels, flip and colour factors."""

    box: tuple[int, int, int, int]  # (left, top, right, bottom), stored-frame pixels
    flip: bool
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def jitter(self) -> bool:
        return (self.brightness, self.contrast, self.saturation) != (1.0, 1.0, 1.0)


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a width x height frame."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def random_resized_box(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A torchvision-style random resized crop box: area fraction in `scale`, aspect ratio in
    [3/4, 4/3] (log-uniform); falls back to the centre square after 10 tries."""
    area = width * height
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    return centre_box(width, height)


def draw_video_aug(
    cfg: AugmentConfig, width: int, height: int, rng: np.random.Generator
) -> VideoAug:
    """Draw one clip's augmentation parameters (always consumes the same rng draws)."""
    box = random_resized_box(width, height, cfg.crop_scale, rng)
    flip = bool(rng.integers(2))
    j = cfg.color_jitter
    b, c, s = rng.uniform(max(0.0, 1.0 - j), 1.0 + j, size=3)
    if not cfg.enabled:
        return VideoAug(box=(0, 0, width, height), flip=False)
    return VideoAug(
        box=box,
        flip=flip and cfg.flip,
        brightness=float(b) if j > 0 else 1.0,
        contrast=float(c) if j > 0 else 1.0,
        saturation=float(s) if j > 0 else 1.0,
    )


def color_lut(aug: VideoAug, mean_grey: float) -> list[int]:
    """The 768-entry RGB lookup table of contrast (around `mean_grey`) then brightness."""
    v = np.arange(256, dtype=np.float64)
    out = aug.brightness * (aug.contrast * v + (1.0 - aug.contrast) * mean_grey)
    table: list[int] = np.clip(np.round(out), 0, 255).astype(np.int64).tolist()
    return table * 3


def apply_color(clip: np.ndarray, aug: VideoAug) -> np.ndarray:
    """Colour jitter of a clip, uint8 [T, H, W, 3] -> uint8 [T, H, W, 3].

    Saturation blends each pixel with its grey; contrast scales around the clip's mean grey;
    brightness scales. One set of factors for the whole clip, so the jitter is constant in time.
    Runs as three Pillow C operations on the clip viewed as one tall image.
    """
    if not aug.jitter:
        return clip
    t, h, w, _ = clip.shape
    tall = Image.fromarray(np.ascontiguousarray(clip).reshape(t * h, w, 3))
    return np.asarray(color_image(tall, aug)).reshape(t, h, w, 3)


def color_image(tall: Image.Image, aug: VideoAug) -> Image.Image:
    """`apply_color` on a clip already laid out as one tall RGB image (frames stacked)."""
    if not aug.jitter:
        return tall
    grey = tall.convert("L")
    if aug.saturation != 1.0:
        tall = Image.blend(Image.merge("RGB", (grey, grey, grey)), tall, aug.saturation)
    mean = float(np.asarray(grey)[::2, ::2].mean())
    return tall.point(color_lut(aug, mean))


def augment_audio(wave: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gain in [-audio_gain_db, +audio_gain_db] dB and white noise of std audio_noise x
    the clip RMS; float32 [L] -> float32 [L] clipped to [-1, 1]. Identity when disabled."""
    gain_db = rng.uniform(-1.0, 1.0) * cfg.audio_gain_db
    noise = rng.standard_normal(wave.shape[0], dtype=np.float32) if cfg.audio_noise > 0 else None
    if not cfg.enabled:
        return wave
    out = wave * np.float32(10.0 ** (gain_db / 20.0))
    if noise is not None:
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) or 1e-3
        out = out + noise * np.float32(cfg.audio_noise * rms)
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)
