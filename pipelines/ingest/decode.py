"""Decode one local media file into fixed-rate segments: encoded frames plus aligned mono audio.

Timeline rules (docs/ingest.md, "Timing"):
- Source time is a stream timestamp minus the container's start time, so it starts near 0.
- The stored timeline starts at t0 = max(range start, time of the first decoded video frame).
  Stored frame i shows the latest source frame whose pts <= t0 + i/fps ("sample and hold").
  It exists while t0 + i/fps < video end (last frame pts + its duration, or the range end).
- Segment k holds stored frames [k*N, (k+1)*N) with N = round(segment_seconds * fps); the
  last one holds the remainder. So segments tile the timeline exactly.
- Audio sample j of a segment is source time start_s + j/sample_rate. The segment's sample
  range is [A(a), A(b)) for frame range [a, b) with A(i) = round((t0 + i/fps) * sample_rate),
  read from the resampled stream by its timestamps; gaps, and time before the audio starts or
  after it ends, are zeros.

Errors before the first frame raise `DecodeError` (the input becomes a reject). An error later
stops decoding; the segments decoded so far are kept and `SegmentDecoder.error` says why.
"""

from __future__ import annotations

import io
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.decode_audio import AudioTrack

SCALE_FLAGS = "fast_bilinear"
MAX_BAD_PACKETS = 200  # undecodable packets skipped before a file counts as broken


class DecodeError(Exception):
    """An input that yields no rows; `stage` and `error_type` go to the rejects ledger."""

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One decoded segment of one source."""

    index: int
    start_s: float
    num_frames: int
    height: int
    width: int
    frames: list[bytes]
    num_samples: int
    audio: bytes | None  # PCM s16le mono, or None when the source has no audio


def output_size(
    width: int, height: int, sar: Fraction | None, rotation: int, short: int
) -> tuple[int, int]:
    """Stored (width, height): display aspect, rotated upright, short side `short`, long side even."""
    disp_w = Fraction(width) * (sar if sar and sar > 0 else 1)
    disp_h = Fraction(height)
    if rotation % 180 != 0:
        disp_w, disp_h = disp_h, disp_w
    if disp_w >= disp_h:
        long_side = max(short, 2 * round(disp_w * short / disp_h / 2))
        return long_side, short
    long_side = max(short, 2 * round(disp_h * short / disp_w / 2))
    return short, long_side


def normalize_rotation(degrees: float) -> int:
    """Counter-clockwise display rotation snapped to 0/90/180/270."""
    return int(round(degrees / 90.0)) % 4 * 90


class FrameEncoder:
    """Scale (fast bilinear), rotate upright and encode frames; rebuilt if the input changes."""

    def __init__(self, cfg: IngestConfig, out_w: int, out_h: int, rotation: int) -> None:
        self.cfg = cfg
        self.out_w, self.out_h, self.rotation = out_w, out_h, rotation
        self._graph: Any = None
        self._key: tuple[int, int, str] | None = None

    def _build(self, frame: av.VideoFrame) -> None:
        g = av.filter.Graph()
        src = g.add_buffer(
            width=frame.width, height=frame.height, format=frame.format,
            time_base=Fraction(1, 1000),
        )  # fmt: skip
        pre_w, pre_h = (
            (self.out_h, self.out_w) if self.rotation in (90, 270) else (self.out_w, self.out_h)
        )
        chain = [g.add("scale", f"{pre_w}:{pre_h}:flags={SCALE_FLAGS}")]
        if self.rotation == 90:  # display = coded turned 90 deg counter-clockwise
            chain.append(g.add("transpose", "cclock"))
        elif self.rotation == 270:
            chain.append(g.add("transpose", "clock"))
        elif self.rotation == 180:
            chain += [g.add("hflip"), g.add("vflip")]
        chain.append(g.add("format", "rgb24"))
        sink = g.add("buffersink")
        node = src
        for nxt in [*chain, sink]:
            node.link_to(nxt)
            node = nxt
        g.configure()
        self._graph = g
        self._key = (frame.width, frame.height, frame.format.name)

    def encode(self, frame: av.VideoFrame) -> bytes:
        """Encoded image bytes (JPEG or PNG) of one source frame."""
        key = (frame.width, frame.height, frame.format.name)
        if key != self._key:
            self._build(frame)
        frame.pts = None
        self._graph.push(frame)
        rgb = self._graph.pull()
        plane = rgb.planes[0]  # wrap the frame's buffer (to_image() would copy it)
        img = Image.frombuffer(
            "RGB", (rgb.width, rgb.height), plane, "raw", "RGB", plane.line_size, 1
        )
        buf = io.BytesIO()
        if self.cfg.frame_format == "jpeg":
            img.save(buf, format="JPEG", quality=self.cfg.jpeg_quality)
        else:
            img.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


def _open(path: str) -> Any:
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError("probe", "NotMedia", f"not a readable media file: {exc}") from None


def _video_stream(container: Any) -> Any:
    attached = av.stream.Disposition.attached_pic
    for s in container.streams.video:
        if not (s.disposition & attached):
            return s
    raise DecodeError("probe", "NoVideoStream", "the file has no video stream")


class SegmentDecoder:
    """Iterate `segments()` of one local file; see the module docstring for the timing rules."""

    def __init__(
        self, path: str, cfg: IngestConfig, *, start_s: float | None = None,
        end_s: float | None = None, timeout_s: float | None = None, threads: int = 0,
    ) -> None:  # fmt: skip
        self.path, self.cfg, self.threads = path, cfg, threads
        self.range_start = Fraction(start_s or 0.0).limit_denominator(1_000_000)
        self.range_end = None if end_s is None else Fraction(end_s).limit_denominator(1_000_000)
        self.deadline = time.monotonic() + (timeout_s if timeout_s else cfg.file_timeout_s)
        self.fps = Fraction(cfg.fps).limit_denominator(1_000_000)
        self.seg_frames = max(1, round(Fraction(cfg.segment_seconds) * self.fps))
        self.error: DecodeError | None = None  # set when decoding stopped early
        self.has_audio = False
        self.frames_decoded = 0
        self.bad_packets = 0

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise DecodeError(
                "decode", "Timeout", f"file took longer than {self.cfg.file_timeout_s}s"
            )

    def segments(self) -> Iterator[Segment]:
        """Decode and yield segments in order; raise DecodeError if nothing is usable."""
        container = _open(self.path)
        try:
            yield from self._run(container)
        finally:
            container.close()

    def _run(self, container: Any) -> Iterator[Segment]:
        vs = _video_stream(container)
        vs.thread_type = "AUTO"
        vs.thread_count = self.threads
        origin = Fraction(container.start_time or 0, 1_000_000)
        audio = AudioTrack.open(self.path, self.cfg.sample_rate, origin)
        self.has_audio = audio is not None
        if audio is None and self.cfg.require_audio:
            raise DecodeError("audio", "NoAudio", "no decodable audio stream (--require-audio)")
        try:
            if self.range_start > 0:
                self._seek(container, vs, origin)
            yield from _Timeline(self, vs, origin, audio).run(container)
        finally:
            if audio is not None:
                audio.close()

    def _seek(self, container: Any, vs: Any, origin: Fraction) -> None:
        if vs.time_base is None:
            return
        target = int((self.range_start + origin) / vs.time_base)
        try:
            container.seek(target, stream=vs, backward=True, any_frame=False)
        except av.error.FFmpegError:
            pass  # decode from the start instead


class _Timeline:
    """The sample-and-hold state machine of one decode."""

    def __init__(self, dec: SegmentDecoder, vs: Any, origin: Fraction, audio: AudioTrack | None):
        self.dec, self.vs, self.origin, self.audio = dec, vs, origin, audio
        self.t0: Fraction | None = None
        self.i = 0  # next stored frame index
        self.prev: Any = None
        self.prev_t = Fraction(0)
        self.before_prev_t: Fraction | None = None  # time of the frame before `prev`
        self.next_t = Fraction(0)  # stored time of frame i (kept in step with i)
        self.step = 1 / dec.fps
        self.tb: Fraction | None = vs.time_base
        self.encoder: FrameEncoder | None = None
        self.serial = 0  # bumped whenever `prev` changes
        self.cache: tuple[int, bytes] | None = None  # (serial of the encoded frame, bytes)
        self.pending: list[bytes] = []
        self.seg_index = 0

    def stored_time(self, i: int) -> Fraction:
        assert self.t0 is not None
        return self.t0 + i / self.dec.fps

    def run(self, container: Any) -> Iterator[Segment]:
        """Decode everything, emit stored frames as segments; errors are kept, not raised."""
        dec = self.dec
        try:
            for frame in self._frames(container):
                dec._check_time()
                done = yield from self._push(frame)
                if done:
                    break
        except DecodeError as exc:
            dec.error = exc
        except (av.error.FFmpegError, ValueError, MemoryError) as exc:
            dec.error = DecodeError("decode", "CorruptFile", f"decoding stopped: {exc}")
        if dec.error is None and dec.bad_packets:
            dec.error = DecodeError(
                "decode", "CorruptPackets", f"skipped {dec.bad_packets} undecodable video packets"
            )
        if self.prev is None:
            err = dec.error or DecodeError("decode", "NoFrames", "no video frame could be decoded")
            dec.error = None
            raise err
        end = self.prev_t + (self._last_duration() or self.step)
        if dec.range_end is not None:
            end = min(end, dec.range_end)
        yield from self._emit_until(end)
        if self.pending:
            yield self._segment()
        if self.i == 0:
            raise DecodeError("decode", "EmptyRange", "no video frame inside the requested range")

    def _frames(self, container: Any) -> Iterator[Any]:
        """Decoded frames; a packet the decoder refuses is skipped (up to a limit)."""
        dec = self.dec
        for packet in container.demux(self.vs):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                dec.bad_packets += 1
                if dec.bad_packets > MAX_BAD_PACKETS:
                    raise
                continue
            yield from frames

    def _frame_time(self, frame: Any) -> Fraction | None:
        tb = self.tb or frame.time_base
        if frame.pts is None or tb is None:
            if self.prev is None:
                return None
            return self.prev_t + (self._last_duration() or self.step)
        t = frame.pts * tb
        return t - self.origin if self.origin else t

    def _push(self, frame: Any) -> Generator[Segment, None, bool]:
        """Handle one decoded frame; return True (via StopIteration value) when past the range."""
        t = self._frame_time(frame)
        if t is None or (self.prev is not None and t <= self.prev_t):
            return False  # no usable timestamp, or out of order: skip
        self.dec.frames_decoded += 1
        if self.prev is None:
            self.t0 = self.next_t = max(self.dec.range_start, t)
            rot = normalize_rotation(frame.rotation or 0)
            w, h = output_size(frame.width, frame.height, self.vs.sample_aspect_ratio, rot,
                               self.dec.cfg.short_side)  # fmt: skip
            self.encoder = FrameEncoder(self.dec.cfg, w, h, rot)
        else:
            yield from self._emit_until(t)
        if self.dec.range_end is not None and t >= self.dec.range_end:
            return True
        self.before_prev_t = self.prev_t if self.prev is not None else None
        self.prev, self.prev_t = frame, t
        self.serial += 1
        return False

    def _last_duration(self) -> Fraction | None:
        """Duration of `prev`: its own, else the gap before it, else 1 / the stream rate."""
        frame = self.prev
        tb = self.tb or (frame.time_base if frame is not None else None)
        if frame is not None and frame.duration and tb is not None:
            return Fraction(frame.duration) * tb
        if self.before_prev_t is not None:
            return self.prev_t - self.before_prev_t
        rate = self.vs.average_rate or self.vs.guessed_rate
        return 1 / Fraction(rate) if rate else None

    def _emit_until(self, t: Fraction) -> Iterator[Segment]:
        """Emit stored frames (copies of `prev`) for every stored time < t."""
        if self.dec.range_end is not None and self.dec.range_end < t:
            t = self.dec.range_end
        while self.next_t < t:
            assert self.encoder is not None
            if self.cache is None or self.cache[0] != self.serial:
                self.cache = (self.serial, self.encoder.encode(self.prev))
            self.pending.append(self.cache[1])
            self.i += 1
            self.next_t += self.step
            if len(self.pending) == self.dec.seg_frames:
                yield self._segment()

    def _segment(self) -> Segment:
        dec = self.dec
        a = self.seg_index * dec.seg_frames
        b = a + len(self.pending)
        sr = dec.cfg.sample_rate
        s_a = round(self.stored_time(a) * sr)
        s_b = round(self.stored_time(b) * sr)
        pcm: bytes | None = None
        if self.audio is not None:
            pcm = self.audio.take(s_a, s_b).astype("<i2").tobytes()
        assert self.encoder is not None
        seg = Segment(
            index=self.seg_index, start_s=float(self.stored_time(a)), num_frames=b - a,
            height=self.encoder.out_h, width=self.encoder.out_w, frames=self.pending,
            num_samples=0 if pcm is None else s_b - s_a, audio=pcm,
        )  # fmt: skip
        self.pending = []
        self.seg_index += 1
        return seg


def probe_duration(path: str) -> float | None:
    """Container duration in seconds, if the container states one."""
    try:
        with av.open(path) as c:
            return None if c.duration is None else c.duration / 1_000_000
    except av.error.FFmpegError:
        return None


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


__all__ = [
    "DecodeError",
    "FrameEncoder",
    "Segment",
    "SegmentDecoder",
    "output_size",
    "pcm_to_float",
    "probe_duration",
]
