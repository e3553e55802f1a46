"""Configs of the data side: ingest, pretext sampling, augmentation and the training stream.

Frozen, keyword-only dataclasses, validated in `__post_init__` (ValueError names the field).
`training.config.RunConfig` composes them with the model and optimiser configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

SPEEDS_ALLOWED = (1, 2, 4, 8)
# The stored audio rate when nothing else says: ingest's default, and the rate an audio-less row
# (which stores sample_rate 0) is planned at. A model reads its rate from its own config
# (`model.sample_rate`); `avtime train` refuses shards whose rate differs from it.
DEFAULT_SAMPLE_RATE = 16000


def check_finite(cfg: Any) -> None:
    """Raise ValueError naming every float field of dataclass `cfg` that is NaN or infinite
    (NaN slips past `x <= 0` checks and would reach manifest.json as bare `NaN`)."""
    bad = [
        f.name
        for f in fields(cfg)
        if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name))
    ]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be finite numbers, not NaN or infinity")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """How raw videos become Arrow segment rows (see docs/CONTRACTS.md)."""

    fps: float = 25.0  # stored frame rate; every source is resampled to it
    short_side: int = 128  # stored frames are resized so their short side is this
    sample_rate: int = DEFAULT_SAMPLE_RATE  # stored audio: mono, this rate
    segment_seconds: float = 10.0  # long sources are cut into segments of at most this
    frame_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 90
    require_audio: bool = False
    max_reject_fraction: float = 1.0
    file_timeout_s: float = 600.0  # a per-file decode time limit
    rows_per_shard: int = 64
    rows_per_row_group: int = 8

    def __post_init__(self) -> None:
        check_finite(self)
        if self.rows_per_shard < 1 or self.rows_per_row_group < 1 or self.file_timeout_s <= 0:
            raise ValueError(
                "rows_per_shard and rows_per_row_group must be >= 1, file_timeout_s > 0"
            )
        if self.fps <= 0 or self.short_side < 16 or self.sample_rate < 4000:
            raise ValueError("fps must be > 0, short_side >= 16 and sample_rate >= 4000")
        if self.segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {self.segment_seconds}")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError("max_reject_fraction must be in [0, 1]")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in [1, 100]")


@dataclass(frozen=True, kw_only=True)
class PretextConfig:
    """Clip sampling and temporal labels (docs/method.md)."""

    clip_frames: int = 16  # T, frames per video clip
    speeds: tuple[int, ...] = (1, 2, 4, 8)  # allowed speed factors; class i <-> speeds[i]
    audio_seconds: float = 0.64  # audio clip length (seconds of output, before speed-up)
    short_segment_rule: Literal["restrict", "skip"] = "restrict"

    def __post_init__(self) -> None:
        check_finite(self)
        if self.clip_frames < 2:
            raise ValueError(f"clip_frames must be >= 2, got {self.clip_frames}")
        bad = [s for s in self.speeds if s not in SPEEDS_ALLOWED]
        if bad or not self.speeds or list(self.speeds) != sorted(set(self.speeds)):
            raise ValueError(f"speeds must be an increasing subset of {SPEEDS_ALLOWED}")
        if self.audio_seconds <= 0:
            raise ValueError("audio_seconds must be > 0")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Augmentations; `enabled=False` turns all of them off."""

    enabled: bool = True
    crop_size: int = 112  # output H = W of every video clip
    crop_scale: tuple[float, float] = (0.4, 1.0)  # area fraction range of the random crop
    flip: bool = True
    color_jitter: float = 0.3  # brightness/contrast/saturation strength, 0 = off
    audio_gain_db: float = 6.0  # random gain in [-x, +x] dB, 0 = off
    audio_noise: float = 0.0  # std of added white noise relative to clip RMS, 0 = off

    def __post_init__(self) -> None:
        check_finite(self)
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be >= 8, got {self.crop_size}")


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """The Ray Data training stream."""

    batch_size: int = 8  # per training worker
    cpus_per_task: float = 0.5  # logical CPUs of each map_batches sampling task
    rows_per_task: int = 4  # segment rows per map_batches call
    examples_per_row: int = 1  # examples drawn from each segment row per epoch
    seed: int = 0
    # Sampling tasks raise their process's niceness to this (Ray starts workers at 15), so where
    # CPUs are short the Train worker runs first and the stream fills the gaps; -1 leaves it.
    nice: int = 19
    # Where the video clips are decoded and augmented: "cpu" (the sampling tasks ship pixels) or
    # "device" (they ship the planned frames' JPEG bytes and the augmentation parameters, and
    # each training worker decodes and augments them in batches on its device; docs/training.md).
    decode_on: Literal["cpu", "device"] = "cpu"

    def __post_init__(self) -> None:
        check_finite(self)
        if self.decode_on not in ("cpu", "device"):
            raise ValueError(f'decode_on must be "cpu" or "device", got {self.decode_on!r}')
        if self.batch_size < 1 or self.rows_per_task < 1 or self.examples_per_row < 1:
            raise ValueError("batch_size, rows_per_task and examples_per_row must be >= 1")
        if self.cpus_per_task <= 0:
            raise ValueError("cpus_per_task must be > 0")
        if not -1 <= self.nice <= 19:
            raise ValueError(f"nice must be -1 (leave it) or in [0, 19], got {self.nice}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The data side of a training run."""

    pretext: PretextConfig = PretextConfig()
    augment: AugmentConfig = AugmentConfig()
    stream: StreamConfig = StreamConfig()
