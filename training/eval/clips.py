"""Deterministic evaluation clips from stored segment rows (docs/CONTRACTS.md section 1).

Each segment gives `clips_per_segment` clips, evenly spaced over its frames, at speed 1 and
forward: T consecutive stored frames, a centre square crop of the short side resized to
`crop_size`, and the audio of `audio_seconds` centred on the clip's span, resampled to the model's
rate. Short segments repeat their last frame / pad audio with zeros. Nothing is random, so the
same checkpoint always sees the same clips.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np


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
        return int(round(self.audio_seconds * self.sample_rate))

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


def clip_starts(num_frames: int, clip_frames: int, k: int) -> list[int]:
    """Start frames of k clips of `clip_frames` evenly spaced over `num_frames` stored frames."""
    span = max(0, num_frames - clip_frames)
    if k == 1:
        return [span // 2]
    return [int(round(i * span / (k - 1))) for i in range(k)]


def _frame(data: bytes, size: int) -> np.ndarray:
    """A stored image -> centre square crop resized to size x size, uint8 [3, size, size]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        w, h = rgb.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def segment_audio(row: dict[str, Any], sample_rate: int) -> np.ndarray | None:
    """The row's audio as float32 [S] at `sample_rate`, or None when it has none."""
    pcm = row.get("audio")
    if pcm is None or int(row.get("num_samples") or 0) == 0:
        return None
    wav = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    stored = int(row["sample_rate"])
    if stored != sample_rate:
        import torch
        import torchaudio.functional as AF

        wav = AF.resample(torch.from_numpy(wav), stored, sample_rate).numpy()
    return wav


def audio_window(wav: np.ndarray | None, center: float, length: int) -> np.ndarray:
    """`length` samples of wav centred on sample `center`, kept inside; zero-padded if short."""
    out = np.zeros(length, dtype=np.float32)
    if wav is None or len(wav) == 0:
        return out
    start = int(round(center - length / 2))
    start = max(0, min(start, len(wav) - length))
    piece = wav[start : start + length]
    out[: len(piece)] = piece
    return out


def segment_clips(row: dict[str, Any], cfg: ClipConfig) -> dict[str, np.ndarray]:
    """The evaluation clips of one segment row.

    Returns video uint8 [K, 3, T, S, S], audio float32 [K, L], has_audio float32 [K].
    """
    frames = list(row["frames"])
    n = len(frames)
    if n == 0:
        raise ValueError(f"segment {row.get('video_id')}/{row.get('segment')} has no frames")
    t = cfg.clip_frames
    starts = clip_starts(n, t, cfg.clips_per_segment)
    cache: dict[int, np.ndarray] = {}
    videos = []
    for s in starts:
        idx = [min(n - 1, s + i) for i in range(t)]
        for i in idx:
            if i not in cache:
                cache[i] = _frame(frames[i], cfg.crop_size)
        videos.append(np.stack([cache[i] for i in idx], axis=1))  # [3, T, S, S]
    wav = segment_audio(row, cfg.sample_rate)
    fps = float(row["fps"])
    audio = [
        audio_window(wav, (s + min(t, n) / 2) / fps * cfg.sample_rate, cfg.audio_len)
        for s in starts
    ]
    has = 0.0 if wav is None else 1.0
    return {
        "video": np.stack(videos),
        "audio": np.stack(audio),
        "has_audio": np.full(len(starts), has, dtype=np.float32),
    }
