"""Deterministic evaluation clips from stored segment rows (docs/CONTRACTS.md section 1).

Each segment gives `clips_per_segment` clips, evenly spaced over its frames, or, with a
stride (`stride_s` > 0), the clips that start every `stride_s` seconds of source time (at 0,
stride, 2 * stride, ...; `stride_starts`), at speed 1 and forward: T consecutive stored frames, a centre square crop of the short side resized to
`crop_size`, and the audio of `audio_seconds` centred on the clip's span, resampled to the model's
rate. Short segments repeat their last frame / pad audio with zeros. Nothing is random, so the
same checkpoint always sees the same clips. The cutting is the pretext sampler's own code
(`avtime.pipelines.pretext.clips.fixed_clips`: the same JPEG decoder, crop-and-resize and
half-up rounding); this module adds the resampling to the model's rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from avtime.pipelines.pretext.clips import (
    audio_window,
    clip_starts,
    fixed_clips,
    pcm_float,
    stride_starts,
)
from avtime.pipelines.pretext.plan import audio_length, exact_fps

__all__ = [
    "ClipConfig", "audio_window", "clip_starts", "segment_audio", "segment_clips",
    "segment_starts", "stride_starts",
]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """What one evaluation clip looks like (from the run config of the model)."""

    clip_frames: int  # T
    crop_size: int  # H = W
    audio_seconds: float
    sample_rate: int  # the model's audio rate
    clips_per_segment: int = 4
    stride_s: float = (
        0.0  # > 0: clips start every stride_s seconds instead (clips_per_segment unused)
    )

    def __post_init__(self) -> None:
        if self.clip_frames < 1 or self.crop_size < 8 or self.clips_per_segment < 1:
            raise ValueError("clip_frames >= 1, crop_size >= 8 and clips_per_segment >= 1")
        if not math.isfinite(self.stride_s) or self.stride_s < 0:
            raise ValueError(f"stride_s must be a finite number >= 0, got {self.stride_s}")
        if self.audio_seconds <= 0 or self.sample_rate < 1000:
            raise ValueError("audio_seconds must be > 0 and sample_rate >= 1000")

    @property
    def audio_len(self) -> int:
        """L, samples per audio clip."""
        return audio_length(self.audio_seconds, self.sample_rate)

    @classmethod
    def from_run(cls, cfg: Any, clips_per_segment: int = 4, stride_s: float = 0.0) -> ClipConfig:
        """Clip settings matching a RunConfig's pretext/augment/model settings."""
        return cls(
            clip_frames=cfg.data.pretext.clip_frames,
            crop_size=cfg.data.augment.crop_size,
            audio_seconds=cfg.data.pretext.audio_seconds,
            sample_rate=cfg.model.sample_rate,
            clips_per_segment=clips_per_segment,
            stride_s=stride_s,
        )


def segment_starts(row: dict[str, Any], cfg: ClipConfig) -> list[int]:
    """Start frames (stored frame indices) of a segment row's evaluation clips: evenly spaced
    (`clip_starts`), or on the stride grid of source time (`stride_starts`; possibly none)."""
    n = len(row["frames"])
    if cfg.stride_s <= 0:
        return clip_starts(n, cfg.clip_frames, cfg.clips_per_segment)
    start = Fraction(float(row.get("start_s") or 0.0)).limit_denominator(1_000_000)
    stride = Fraction(repr(float(cfg.stride_s)))
    return stride_starts(n, exact_fps(float(row["fps"])), start, stride)


def segment_audio(row: dict[str, Any], sample_rate: int) -> np.ndarray | None:
    """The row's audio as float32 [S] at `sample_rate`, or None when it has none."""
    pcm = row.get("audio")
    if pcm is None or int(row.get("num_samples") or 0) == 0:
        return None
    wav = pcm_float(pcm)
    stored = int(row["sample_rate"])
    if stored != sample_rate:
        import torch
        import torchaudio.functional as AF

        wav = AF.resample(torch.from_numpy(wav), stored, sample_rate).numpy()
    return wav


def segment_clips(row: dict[str, Any], cfg: ClipConfig) -> dict[str, np.ndarray]:
    """The evaluation clips of one segment row, cut by the sampler's code (`fixed_clips`).

    Returns video uint8 [K, 3, T, S, S], audio float32 [K, L], has_audio float32 [K] (K may be 0
    with a stride).
    """
    return fixed_clips(
        row,
        clip_frames=cfg.clip_frames,
        crop_size=cfg.crop_size,
        clips_per_segment=cfg.clips_per_segment,
        wav=segment_audio(row, cfg.sample_rate),
        sample_rate=cfg.sample_rate,
        audio_len=cfg.audio_len,
        starts=segment_starts(row, cfg),
    )
