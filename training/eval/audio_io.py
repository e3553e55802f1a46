"""Read an audio file (wav, or any container PyAV opens) as mono float32 at a given rate."""

from __future__ import annotations

import io

import av
import numpy as np

from avtime.pipelines import storage


def read_audio(uri: str, sample_rate: int) -> np.ndarray:
    """The whole first audio stream of `uri` (local or s3://), mono float32 [S] in [-1, 1]."""
    data = storage.read_bytes(uri) if storage.is_s3(uri) else None
    src = io.BytesIO(data) if data is not None else uri
    chunks: list[np.ndarray] = []
    try:
        with av.open(src, mode="r") as container:
            if not container.streams.audio:
                raise ValueError(f"{uri} has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode audio file {uri}: {exc}") from None
    if not chunks:
        raise ValueError(f"{uri} decoded to no audio samples")
    return np.concatenate(chunks).astype(np.float32)
