"""Write real video files (H.264 + AAC in mp4 by default) from numpy arrays, with PyAV.

`write_av(path, frames, fps, audio, sample_rate)` is the one entry point. The synthetic corpus
uses it, and so can any test that needs a real file: give it uint8 RGB frames [N, H, W, 3] (or an
iterable of [H, W, 3] frames, to stream) at `fps`, and optionally float audio [C, S] in [-1, 1]
at `sample_rate`. Container and codecs are options (e.g. `.mkv` with `mpeg4` + `libopus`).

Timing: frame i has pts i / fps and audio sample j has pts j / sample_rate, both starting at 0;
the AAC encoder's priming samples are hidden by the mp4 edit list, so PyAV decodes audio sample 0
at time 0. Packets are interleaved as they are encoded. With `threads=1` (the default) libx264
output is byte-for-byte reproducible (macroblock-tree rate control is off for that reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    elif isinstance(fps, int) or float(fps).is_integer():
        rate = Fraction(int(fps))
    else:
        rate = Fraction(float(fps)).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return rate


def _frames_iter(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for frame in frames:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        yield arr


def write_av(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    video_codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    crf: int = 23,
    preset: str = "veryfast",
    gop: int | None = None,
    video_options: Mapping[str, str] | None = None,
    audio_codec: str = "aac",
    audio_bitrate: int = 128_000,
    audio_options: Mapping[str, str] | None = None,
    threads: int = 1,
    container_format: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Encode `frames` (and `audio`) into `path`; returns the number of video frames written.

    frames: uint8 RGB, [N, H, W, 3] or an iterable of [H, W, 3] (H and W even for yuv420p).
    audio: float [C, S] (C = 1 or 2) or [S] in [-1, 1], or None for a file without audio.
    `crf` and `preset` apply to libx264/libx265; `video_options` are passed to the encoder as is
    and override them; `audio_options` likewise for the audio encoder (for the native `aac`
    encoder the default is `aac_coder=fast`, 3x faster than its default coder). `gop` is the keyframe interval in frames (default: the encoder's).
    """
    rate = _as_fraction(fps)
    it = _frames_iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    height, width = first.shape[:2]
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    samples: np.ndarray | None = None
    rate_hz = 0
    if audio is not None:
        if sample_rate is None or sample_rate <= 0:
            raise ValueError("audio needs a sample_rate > 0")
        rate_hz = int(sample_rate)
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None, :]
        if samples.ndim != 2 or samples.shape[0] not in (1, 2):
            raise ValueError(f"audio must be [C, S] with C in (1, 2), got {samples.shape}")
        samples = np.ascontiguousarray(np.clip(samples, -1.0, 1.0))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w", format=container_format)
    try:
        if metadata:
            container.metadata.update(dict(metadata))
        vstream: Any = container.add_stream(video_codec, rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
        vstream.time_base = Fraction(1) / rate
        vstream.codec_context.time_base = Fraction(1) / rate
        vstream.codec_context.thread_count = threads
        options: dict[str, str] = {}
        if video_codec in ("libx264", "libx265"):
            options = {"crf": str(crf), "preset": preset}
        if video_codec == "libx264":
            # Macroblock-tree rate control made libx264 (asm paths) give different bytes for the
            # same frames from one run to the next on smooth synthetic content; without it the
            # output is reproducible.
            options["x264-params"] = "mbtree=0"
        options.update(video_options or {})
        vstream.options = options
        if gop is not None:
            vstream.codec_context.gop_size = gop

        astream: Any = None
        aframe_size = 1024
        resampler: Any = None
        layout = "mono"
        if samples is not None:
            assert sample_rate is not None
            layout = "stereo" if samples.shape[0] == 2 else "mono"
            astream = container.add_stream(audio_codec, rate=sample_rate)
            astream.layout = layout
            astream.time_base = Fraction(1, sample_rate)
            if audio_bitrate:
                astream.bit_rate = audio_bitrate
            aopts = {"aac_coder": "fast"} if audio_codec == "aac" else {}
            aopts.update(audio_options or {})
            astream.options = aopts
            formats = [f.name for f in (astream.codec_context.codec.audio_formats or [])]
            if formats and "fltp" not in formats:
                resampler = av.AudioResampler(format=formats[0], layout=layout, rate=sample_rate)
            astream.codec_context.format = formats[0] if resampler else "fltp"
            aframe_size = int(astream.codec_context.frame_size or 1024)

        apos = 0

        def encode_audio_until(end: int) -> None:
            nonlocal apos
            assert samples is not None and astream is not None
            while apos < end:
                n = min(aframe_size, end - apos)
                chunk = np.ascontiguousarray(samples[:, apos : apos + n])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate = rate_hz
                frame.pts = apos
                frame.time_base = Fraction(1, rate_hz)
                out_frames = resampler.resample(frame) if resampler else [frame]
                for f in out_frames:
                    for packet in astream.encode(f):
                        container.mux(packet)
                apos += n

        count = 0
        for arr in _chain(first, it):
            if arr.shape[:2] != (height, width):
                raise ValueError(f"frame {count} is {arr.shape[:2]}, expected {(height, width)}")
            vframe = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vframe.pts = count
            vframe.time_base = Fraction(1) / rate
            for packet in vstream.encode(vframe):
                container.mux(packet)
            count += 1
            if samples is not None:
                # Keep audio up to the end of this frame, in whole codec frames.
                end = int(count * sample_rate / rate)  # type: ignore[operator]
                end = min(samples.shape[1], end - end % aframe_size)
                encode_audio_until(end)
        for packet in vstream.encode():
            container.mux(packet)
        if samples is not None and astream is not None:
            encode_audio_until(samples.shape[1])
            if resampler is not None:
                for f in resampler.resample(None):
                    for packet in astream.encode(f):
                        container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    finally:
        container.close()
    return count


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
