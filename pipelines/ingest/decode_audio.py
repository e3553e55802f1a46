"""Pull-based audio for `pipelines.ingest.decode`: a second demuxer over the same file, resampled to
mono s16 at the stored rate and placed on the source timeline by its timestamps.

Reading audio through its own demuxer keeps memory bounded however the file interleaves its
streams: the video loop asks for samples [a, b) and only that much audio is decoded ahead.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

MAX_BAD_PACKETS = 200
JITTER_S = 0.002  # timestamp jitter treated as continuous audio (not a gap or an overlap)


class AudioTrack:
    """Samples of one audio stream on the global index `round(source_time * sample_rate)`."""

    def __init__(self, container: Any, stream: Any, sample_rate: int, origin: Fraction) -> None:
        self.container, self.stream, self.sr = container, stream, sample_rate
        self.offset = round(origin * sample_rate)  # global index of source time 0
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        self.base = 0  # global index of the first buffered sample
        self.chunks: list[np.ndarray] = []
        self.size = 0  # buffered samples
        self.eof = False
        self.error: str | None = None
        self.jitter = max(1, round(JITTER_S * sample_rate))
        self._frames = self._iter()
        self._started = False

    @classmethod
    def open(cls, path: str, sample_rate: int, origin: Fraction) -> AudioTrack | None:
        """The file's best audio stream, or None if it has none that decodes."""
        try:
            container = av.open(path, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError:
            return None
        if not container.streams.audio:
            container.close()
            return None
        stream = container.streams.best("audio") or container.streams.audio[0]
        try:
            stream.codec_context  # noqa: B018 (raises if no decoder)
        except (av.error.FFmpegError, ValueError):
            container.close()
            return None
        track = cls(container, stream, sample_rate, origin)
        if not track._prime():
            track.close()
            return None
        return track

    def _prime(self) -> bool:
        """Decode until the first samples arrive; False if the stream yields none."""
        self._pull()
        return self.size > 0 or not self.eof

    def _iter(self) -> Iterator[tuple[int | None, np.ndarray]]:
        def convert(frames: list[Any]) -> Iterator[tuple[int | None, np.ndarray]]:
            for out in frames:
                pos = None
                if out.pts is not None and out.time_base is not None:
                    pos = round(out.pts * out.time_base * self.sr) - self.offset
                yield pos, out.to_ndarray().reshape(-1).astype(np.int16, copy=False)

        bad = 0
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                bad += 1  # a damaged packet: its samples become a gap (silence)
                if bad > MAX_BAD_PACKETS:
                    raise
                continue
            for frame in frames:
                yield from convert(self.resampler.resample(frame))
        yield from convert(self.resampler.resample(None))

    def _pull(self) -> None:
        try:
            pos, data = next(self._frames)
        except StopIteration:
            self.eof = True
            return
        except (av.error.FFmpegError, ValueError) as exc:
            self.eof, self.error = True, f"audio decoding stopped: {exc}"
            return
        self._append(pos, data)

    def _append(self, pos: int | None, data: np.ndarray) -> None:
        end = self.base + self.size
        if not self._started:
            self._started = True
            self.base = end = pos if pos is not None else 0
        if pos is None or abs(pos - end) <= self.jitter:
            pos = end
        if pos > end:  # a gap: silence
            data = np.concatenate([np.zeros(pos - end, dtype=np.int16), data])
        elif pos < end:  # an overlap: keep what is new
            data = data[end - pos :]
        if data.size:
            self.chunks.append(data)
            self.size += data.size

    def take(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) as int16, zeros where there is no audio; forgets samples before b."""
        while not self.eof and self.base + self.size < b:
            self._pull()
        buf = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)
        out = np.zeros(max(0, b - a), dtype=np.int16)
        lo, hi = max(a, self.base), min(b, self.base + buf.size)
        if hi > lo:
            out[lo - a : hi - a] = buf[lo - self.base : hi - self.base]
        drop = min(max(0, b - self.base), buf.size)
        rest = buf[drop:]
        self.chunks = [rest] if rest.size else []
        self.size = rest.size
        self.base += drop
        return out

    def close(self) -> None:
        self.container.close()
