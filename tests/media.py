"""Write small real media files with PyAV for tests: odd containers, streams and damage.

Every video frame carries its source frame index as a 4x4 grid of black/white cells (16 bits)
in the middle of the picture, and three coloured corner squares (top-left red, top-right green,
bottom-left blue) that show which way is up. Audio is a quiet 440 Hz tone with a loud 20 ms
burst at every whole second of source time, so alignment can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_BITS = 16
BURST_S = 0.02

CONTAINER_CODECS = {  # extension -> (video codec, pixel format, audio codec)
    ".mp4": ("libx264", "yuv420p", "aac"),
    ".mov": ("libx264", "yuv420p", "aac"),
    ".mkv": ("libx264", "yuv420p", "aac"),
    ".webm": ("libvpx", "yuv420p", "libopus"),
    ".avi": ("mpeg4", "yuv420p", "pcm_s16le"),
}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What to write. `audio_rate=None` writes no audio; `video=False` writes audio only."""

    seconds: float = 2.0
    fps: float = 25.0
    width: int = 160
    height: int = 120
    video: bool = True
    audio_rate: int | None = 16000
    audio_layout: str = "stereo"
    audio_start_s: float = 0.0
    rotation: int = 0  # counter-clockwise display rotation written as a display matrix
    vfr: bool = False  # alternate frame durations of 0.5x and 1.5x the nominal period
    pix_fmt: str | None = None
    faststart: bool = False


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 picture of frame `index` (upright)."""
    img = np.full((height, width, 3), 96, dtype=np.uint8)
    c = max(2, min(width, height) // 6)
    img[:c, :c] = (255, 0, 0)
    img[:c, width - c :] = (0, 255, 0)
    img[height - c :, :c] = (0, 0, 255)
    x0, y0, x1, y1 = width // 4, height // 4, 3 * width // 4, 3 * height // 4
    for bit in range(CODE_BITS):
        r, col = divmod(bit, 4)
        ya, yb = y0 + (y1 - y0) * r // 4, y0 + (y1 - y0) * (r + 1) // 4
        xa, xb = x0 + (x1 - x0) * col // 4, x0 + (x1 - x0) * (col + 1) // 4
        img[ya:yb, xa:xb] = 255 if (index >> bit) & 1 else 0
    return img


def read_index(rgb: np.ndarray) -> int:
    """Inverse of `frame_image`'s code on an upright (possibly resized) RGB picture."""
    h, w = rgb.shape[:2]
    gray = rgb.astype(np.float32).mean(axis=2)
    x0, y0, x1, y1 = w / 4, h / 4, 3 * w / 4, 3 * h / 4
    value = 0
    for bit in range(CODE_BITS):
        r, col = divmod(bit, 4)
        cy = y0 + (y1 - y0) * (r + 0.5) / 4
        cx = x0 + (x1 - x0) * (col + 0.5) / 4
        patch = gray[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2]
        value |= int(patch.mean() > 128) << bit
    return value


def corner_colours(rgb: np.ndarray) -> dict[str, str]:
    """Dominant colour ('r', 'g', 'b' or '-') of each corner: tl, tr, bl, br."""
    h, w = rgb.shape[:2]
    c = max(1, min(h, w) // 16)
    out = {}
    for name, (ys, xs) in {
        "tl": (slice(0, c), slice(0, c)), "tr": (slice(0, c), slice(w - c, w)),
        "bl": (slice(h - c, h), slice(0, c)), "br": (slice(h - c, h), slice(w - c, w)),
    }.items():  # fmt: skip
        m = rgb[ys, xs].reshape(-1, 3).mean(axis=0)
        out[name] = "rgb"[int(m.argmax())] if m.max() > 160 and m.max() - m.min() > 100 else "-"
    return out


def audio_signal(t: np.ndarray) -> np.ndarray:
    """Float mono signal at source times `t`: a quiet tone plus a burst at each whole second."""
    tone = 0.05 * np.sin(2 * np.pi * 440 * t)
    burst = (np.mod(t, 1.0) < BURST_S) * 0.8 * np.sin(2 * np.pi * 1000 * t)
    return (tone + burst).astype(np.float32)


def _add_video(out: av.container.OutputContainer, spec: Spec, ext: str) -> av.VideoStream:
    codec, pix_fmt, _ = CONTAINER_CODECS[ext]
    rate = Fraction(spec.fps).limit_denominator(1001)
    v = out.add_stream(codec, rate=rate)
    turned = (spec.rotation // 90) % 2 == 1  # coded pictures are stored turned
    v.width, v.height = (spec.height, spec.width) if turned else (spec.width, spec.height)
    v.pix_fmt = spec.pix_fmt or pix_fmt
    if codec == "libx264":
        v.options = {"preset": "ultrafast", "crf": "20"}
    elif codec == "libvpx":
        v.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "1M"}
    else:
        v.codec_context.qscale = 3
        v.codec_context.max_b_frames = 0  # AVI has no pts: B-frames would shift the timeline
    if spec.vfr:
        v.codec_context.time_base = Fraction(1, 1000)
    if spec.rotation:
        v.set_display_rotation(spec.rotation)
    return v


def _video_frames(spec: Spec) -> list[tuple[int, Fraction]]:
    """(index, pts seconds) of each source frame."""
    period = 1 / Fraction(spec.fps).limit_denominator(1001)
    out, t, i = [], Fraction(0), 0
    while t < Fraction(spec.seconds).limit_denominator(1000):
        out.append((i, t))
        step = period if not spec.vfr else (period / 2 if i % 2 == 0 else period * 3 / 2)
        t += step
        i += 1
    return out


def _audio_frames(a: av.AudioStream, spec: Spec) -> list[tuple[Fraction, av.AudioFrame]]:
    """(start time, frame) of every audio frame, in the encoder's sample format."""
    assert spec.audio_rate is not None
    rate = a.codec_context.sample_rate
    nch = av.AudioLayout(spec.audio_layout).nb_channels
    size = a.codec_context.frame_size or 1024
    fmt = a.codec_context.format.name if a.codec_context.format else "fltp"
    start, total = round(spec.audio_start_s * rate), round(spec.seconds * rate)
    out = []
    for pos in range(start, total, size):
        sig = audio_signal((pos + np.arange(size)) / rate)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(sig[None, :], nch, axis=0), format="fltp", layout=spec.audio_layout
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, pos, Fraction(1, rate)
        if fmt != "fltp":
            resampler = av.AudioResampler(format=fmt, layout=spec.audio_layout, rate=rate)
            frame = resampler.resample(frame)[0]
            frame.pts, frame.time_base = pos, Fraction(1, rate)
        out.append((Fraction(pos, rate), frame))
    return out


def _mux_all(
    out: av.container.OutputContainer, v: av.VideoStream | None, a: av.AudioStream | None,
    spec: Spec,
) -> None:  # fmt: skip
    """Encode and mux video and audio in time order (AVI needs real interleaving)."""
    # Coded pictures are the upright picture turned clockwise by the display rotation, so a
    # player that applies the rotation shows `frame_image` upright.
    k = spec.rotation // 90
    coded_w, coded_h = (spec.height, spec.width) if k % 2 else (spec.width, spec.height)
    audio = _audio_frames(a, spec) if a is not None else []
    video = _video_frames(spec) if v is not None else []
    events = [(t, 1, n) for n, (t, _) in enumerate(audio)]
    events += [(t, 0, n) for n, (_, t) in enumerate(video)]
    for _, kind, n in sorted(events):
        if kind == 1:
            assert a is not None
            packets = a.encode(audio[n][1])
        else:
            assert v is not None
            index, t = video[n]
            img = np.ascontiguousarray(np.rot90(frame_image(index, coded_w, coded_h), k=-k))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if spec.vfr:
                frame.pts, frame.time_base = int(t * 1000), Fraction(1, 1000)
            packets = v.encode(frame)
        for pkt in packets:
            out.mux(pkt)
    for stream in (v, a):
        if stream is not None:
            for pkt in stream.encode():
                out.mux(pkt)


def write_media(path: str | Path, spec: Spec = Spec()) -> Path:
    """Write `path`; the container follows the extension (.mp4 .mov .mkv .webm .avi)."""
    path = Path(path)
    ext = path.suffix.lower()
    options = {"movflags": "faststart"} if spec.faststart else {}
    with av.open(str(path), "w", options=options) as out:
        v = _add_video(out, spec, ext) if spec.video else None
        a = None
        if spec.audio_rate is not None:
            codec = CONTAINER_CODECS[ext][2]
            rate = 48000 if codec == "libopus" else spec.audio_rate
            a = out.add_stream(codec, rate=rate)
            a.layout = spec.audio_layout
        _mux_all(out, v, a, spec)
    return path


def truncate(path: str | Path, fraction: float) -> Path:
    """Cut a file to `fraction` of its bytes, as an interrupted download would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_bytes_file(path: str | Path, data: bytes) -> Path:
    """A file with given contents (zero-byte or not-a-video inputs)."""
    path = Path(path)
    path.write_bytes(data)
    return path


def odd_corpus(folder: str | Path, *, heavy: bool = True) -> dict[str, Path]:
    """One file of every odd kind the ingest job must survive, keyed by a short name.

    `heavy` adds a short 4K file and a 25 s file (3 segments at the default 10 s).
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "mp4": write_media(d / "plain.mp4", Spec()),
        "mkv": write_media(d / "plain.mkv", Spec(seconds=1.5)),
        "webm": write_media(d / "plain.webm", Spec(seconds=1.5)),
        "avi": write_media(d / "plain.avi", Spec(seconds=1.5)),
        "mov": write_media(d / "plain.mov", Spec(seconds=1.5)),
        "no_audio": write_media(d / "no_audio.mp4", Spec(audio_rate=None)),
        "audio_only": write_media(d / "audio_only.mp4", Spec(video=False)),
        "vfr": write_media(d / "vfr.mkv", Spec(vfr=True)),
        "odd_dims": write_media(d / "odd_dims.mkv", Spec(width=161, height=97, pix_fmt="yuv444p")),
        # a phone video: upright portrait, stored as landscape pictures plus a display matrix
        "rotated": write_media(d / "rotated.mp4", Spec(rotation=90, width=96, height=160)),
        "surround": write_media(d / "surround.mp4", Spec(audio_layout="5.1", audio_rate=48000)),
        "audio_8k": write_media(d / "audio_8k.mp4", Spec(audio_rate=8000)),
        "late_audio": write_media(d / "late_audio.mp4", Spec(audio_start_s=0.5)),
        "truncated": truncate(write_media(d / "truncated.mkv", Spec(seconds=3.0)), 0.6),
        "truncated_mp4": truncate(write_media(d / "truncated_mp4.mp4", Spec(seconds=3.0)), 0.6),
        "truncated_faststart": truncate(
            write_media(d / "truncated_fs.mp4", Spec(seconds=3.0, faststart=True)), 0.6
        ),
        "zero_byte": write_bytes_file(d / "zero.mov", b""),
        "not_video": write_bytes_file(d / "not_video.mp4", b"this is not a video\n" * 50),
    }
    if heavy:
        files["uhd"] = write_media(d / "uhd.mp4", Spec(seconds=0.4, width=3840, height=2160))
        files["long"] = write_media(
            d / "long.mkv", Spec(seconds=25.0, fps=10, width=96, height=64, audio_rate=8000)
        )
    return files


def decode_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples float64 [N], rate) of a file's first audio stream, downmixed to mono by PyAV."""
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        rs = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [g.to_ndarray().reshape(-1) for f in c.decode(audio=0) for g in rs.resample(f)]
    return np.concatenate(chunks).astype(np.float64), rate


def decode_rgb(path: str | Path) -> np.ndarray:
    """Every video frame of `path` as float64 [N, H, W, 3] (RGB, 0..255)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
