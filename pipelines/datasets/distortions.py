"""Fingerprint distortions: each one reads a real video file and writes a new, distorted one.

The robust-fingerprinting protocol (docs/eval.md) queries a gallery of originals with distorted
copies. Every distortion decodes the source with PyAV, changes the frames and/or audio in numpy,
and encodes a new mp4 (H.264 + AAC, via `pipelines.synth.avwrite.write_av`), so the bytes and the
decoded frames both differ from the source. Each kind has a "mild" and a "strong" setting:

| kind | mild | strong |
|---|---|---|
| reencode | H.264 at 0.05 bits/pixel, AAC 32 kb/s | 0.01 bits/pixel, AAC 16 kb/s |
| resize | scale 0.5 | scale 0.25 |
| crop | keep 80% of each side | keep 50% |
| blur | Gaussian, sigma = 1% of the short side (>= 1 px) | 3% (>= 2 px) |
| brightness_contrast | +0.1 brightness, x1.2 contrast | +0.3, x1.6 |
| fps | frame rate x0.6 | x0.3 |
| audio_noise | white noise at 20 dB SNR | 5 dB SNR |
| temporal_crop | keep 80% of the duration | keep 50% |

Random choices (crop offsets, noise, temporal crop start) come from a seed, so runs repeat.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Literal

import av
import numpy as np

from avtime.pipelines import storage
from avtime.pipelines.synth.avwrite import write_av

Kind = Literal[
    "reencode", "resize", "crop", "blur", "brightness_contrast", "fps", "audio_noise",
    "temporal_crop",
]  # fmt: skip
KINDS: tuple[str, ...] = (
    "reencode", "resize", "crop", "blur", "brightness_contrast", "fps", "audio_noise",
    "temporal_crop",
)  # fmt: skip
_MILD: dict[str, float] = {
    "reencode": 0.05, "resize": 0.5, "crop": 0.8, "blur": 0.01, "brightness_contrast": 1.0,
    "fps": 0.6, "audio_noise": 20.0, "temporal_crop": 0.8,
}  # fmt: skip
_STRONG: dict[str, float] = {
    "reencode": 0.01, "resize": 0.25, "crop": 0.5, "blur": 0.03, "brightness_contrast": 3.0,
    "fps": 0.3, "audio_noise": 5.0, "temporal_crop": 0.5,
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Distortion:
    """One distortion: a kind and its strength parameter (see the module table)."""

    kind: Kind
    amount: float
    strength: Literal["mild", "strong"] = "mild"

    @property
    def name(self) -> str:
        """Report key: the kind for mild settings, `<kind>_strong` for strong ones."""
        return self.kind if self.strength == "mild" else f"{self.kind}_strong"


def distortion_set(which: Literal["mild", "strong", "all"] = "all") -> tuple[Distortion, ...]:
    """The standard distortions: mild, strong, or both (mild first)."""
    mild = tuple(Distortion(kind=k, amount=_MILD[k], strength="mild") for k in KINDS)  # type: ignore[arg-type]
    strong = tuple(Distortion(kind=k, amount=_STRONG[k], strength="strong") for k in KINDS)  # type: ignore[arg-type]
    if which not in ("mild", "strong", "all"):
        raise ValueError(f"distortion set must be mild, strong or all, got {which!r}")
    return mild if which == "mild" else strong if which == "strong" else mild + strong


@dataclass
class Clip:
    """A decoded file: frames uint8 [N, H, W, 3] at `fps`; audio float32 [C, S] or None."""

    frames: np.ndarray
    fps: Fraction
    audio: np.ndarray | None
    sample_rate: int


@contextlib.contextmanager
def _open_source(src: str) -> Iterator[str | IO[bytes]]:
    if storage.is_s3(src):
        fs, path = storage.filesystem(src)
        with fs.open(path, "rb") as f:
            yield f
    else:
        yield src


def read_clip(src: str) -> Clip:
    """Decode a whole (short) file: every video frame as RGB, all audio as float planar."""
    with _open_source(src) as handle, av.open(handle, mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"{src} has no video stream")
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(vs)]
    audio, sr = _read_audio(src)
    if not frames:
        raise ValueError(f"{src} decoded to no frames")
    return Clip(frames=np.stack(frames), fps=Fraction(rate), audio=audio, sample_rate=sr)


def _read_audio(src: str) -> tuple[np.ndarray | None, int]:
    with _open_source(src) as handle, av.open(handle, mode="r") as container:
        if not container.streams.audio:
            return None, 0
        ast = container.streams.audio[0]
        sr = int(ast.rate or ast.codec_context.sample_rate)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sr)
        chunks = []
        for frame in container.decode(ast):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return None, 0
    return np.concatenate(chunks, axis=1).astype(np.float32), sr


def _rng(seed: int, src: str, name: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{src}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _even(x: float) -> int:
    return max(16, int(round(x / 2)) * 2)


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    out = [
        np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR))
        for f in frames
    ]
    return np.stack(out)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    filt = ImageFilter.GaussianBlur(radius=sigma)
    return np.stack([np.asarray(Image.fromarray(f).filter(filt)) for f in frames])


def _crop(frames: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = frames.shape
    ch, cw = min(h, _even(h * keep)), min(w, _even(w * keep))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return frames[:, y0 : y0 + ch, x0 : x0 + cw]


def _brightness_contrast(frames: np.ndarray, level: float) -> np.ndarray:
    brightness, contrast = 0.1 * level, 1.0 + 0.2 * level
    x = (frames.astype(np.float32) - 128.0) * contrast + 128.0 + 255.0 * brightness
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _change_fps(clip: Clip, factor: float) -> tuple[np.ndarray, Fraction]:
    new_fps = Fraction(max(1.0, float(clip.fps) * factor)).limit_denominator(1001)
    n_out = max(1, int(len(clip.frames) * new_fps / clip.fps))
    idx = [min(len(clip.frames) - 1, int(i * clip.fps / new_fps)) for i in range(n_out)]
    return clip.frames[idx], new_fps


def _add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) or 1e-3
    noise = rng.standard_normal(audio.shape).astype(np.float32) * rms / (10 ** (snr_db / 20))
    return np.clip(audio + noise, -1.0, 1.0)


def _temporal_crop(clip: Clip, keep: float, rng: np.random.Generator) -> Clip:
    n = len(clip.frames)
    n_keep = max(1, int(round(n * keep)))
    start = int(rng.integers(0, n - n_keep + 1))
    audio = clip.audio
    if audio is not None:
        a0 = int(start * clip.sample_rate / clip.fps)
        a1 = int((start + n_keep) * clip.sample_rate / clip.fps)
        audio = audio[:, a0:a1]
    frames = clip.frames[start : start + n_keep]
    return Clip(frames=frames, fps=clip.fps, audio=audio, sample_rate=clip.sample_rate)


def distort_clip(clip: Clip, spec: Distortion, rng: np.random.Generator) -> tuple[Clip, dict]:
    """The distorted clip and extra `write_av` options (the reencode kind sets a low bitrate)."""
    frames, fps, audio = clip.frames, clip.fps, clip.audio
    options: dict = {}
    _, h, w, _ = frames.shape
    if spec.kind == "reencode":
        bitrate = max(2000, int(spec.amount * h * w * float(fps)))
        options = {"video_options": {"crf": "-1", "b": str(bitrate)}}
        options["audio_bitrate"] = 32_000 if spec.strength == "mild" else 16_000
    elif spec.kind == "resize":
        frames = _resize(frames, _even(h * spec.amount), _even(w * spec.amount))
    elif spec.kind == "crop":
        frames = _crop(frames, spec.amount, rng)
    elif spec.kind == "blur":
        floor = 1.0 if spec.strength == "mild" else 2.0
        frames = _blur(frames, max(floor, spec.amount * min(h, w)))
    elif spec.kind == "brightness_contrast":
        frames = _brightness_contrast(frames, spec.amount)
    elif spec.kind == "fps":
        frames, fps = _change_fps(clip, spec.amount)
    elif spec.kind == "audio_noise":
        audio = None if audio is None else _add_noise(audio, spec.amount, rng)
    elif spec.kind == "temporal_crop":
        return _temporal_crop(clip, spec.amount, rng), options
    else:
        raise ValueError(f"unknown distortion kind {spec.kind!r}; choose one of {list(KINDS)}")
    return Clip(frames=frames, fps=fps, audio=audio, sample_rate=clip.sample_rate), options


def apply_distortion(src: str, dst: str | Path, spec: Distortion, *, seed: int = 0) -> Path:
    """Decode `src`, distort it, and write a new mp4 at `dst`; returns `dst`."""
    clip = read_clip(src)
    _, h, w, _ = clip.frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        clip.frames = clip.frames[:, : h - h % 2, : w - w % 2]
    out, options = distort_clip(clip, spec, _rng(seed, src, spec.name))
    dst = Path(dst)
    write_av(
        dst, out.frames, out.fps, out.audio, out.sample_rate if out.audio is not None else None,
        **options,
    )  # fmt: skip
    return dst
