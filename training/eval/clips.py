"""Deterministic evaluation clips from stored segment rows (docs/CONTRACTS.md section 1).

Each segment gives `clips_per_segment` clips, evenly spaced over its frames, at speed 1 and
forward: T consecutive stored frames, a centre square crop of the short side resized to
`crop_size`, and the audio of `audio_seconds` centred on the clip's span, resampled to the model's
rate. Short segments repeat their last frame / pad audio with zeros. Nothing is random, so the
same checkpoint always sees the same clips. The cutting is the pretext sampler's own code
(`avtime.pipelines.pretext.clips.fixed_clips`: the same JPEG decoder, crop-and-resize and
half-up rounding); this module adds the resampling to the model's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avtime.pipelines.pretext.clips import audio_window, clip_starts, fixed_clips, pcm_float
from avtime.pipelines.pretext.plan import audio_length

__all__ = ["ClipConfig", "audio_window", "clip_starts", "segment_audio", "segment_clips"]


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """What one evaluation clip looks like (from the run config of the model)."""

    clip_frames: int  # T
    crop_size: int  # H = W
    audio_seconds: float
    sample_rate: int  # the model's audio rate
    clips_per_segment: int = 4

    def __post_init__(self) -> None:
        if self.clip_frames < 1 or self.crop_size < 8 or self.clips_per_segment < 1:
            raise ValueError("clip_frames >= 1, crop_size >= 8 and clips_per_segment >= 1")
        if self.audio_seconds <= 0 or self.sample_rate < 1000:
            raise ValueError("audio_seconds must be > 0 and sample_rate >= 1000")

    @property
    def audio_len(self) -> int:
        """L, samples per audio clip."""
        return audio_length(self.audio_seconds, self.sample_rate)

    @classmethod
    def from_run(cls, cfg: Any, clips_per_segment: int = 4) -> ClipConfig:
        """Clip settings matching a RunConfig's pretext/augment/model settings."""
        return cls(
            clip_frames=cfg.data.pretext.clip_frames,
            crop_size=cfg.data.augment.crop_size,
            audio_seconds=cfg.data.pretext.audio_seconds,
            sample_rate=cfg.model.sample_rate,
            clips_per_segment=clips_per_segment,
        )


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

    Returns video uint8 [K, 3, T, S, S], audio float32 [K, L], has_audio float32 [K].
    """
    return fixed_clips(
        row,
        clip_frames=cfg.clip_frames,
        crop_size=cfg.crop_size,
        clips_per_segment=cfg.clips_per_segment,
        wav=segment_audio(row, cfg.sample_rate),
        sample_rate=cfg.sample_rate,
        audio_len=cfg.audio_len,
    )
