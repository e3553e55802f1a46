"""A PNG contact sheet of pretext examples: every frame, every label and both waveforms.

Input is the dict that `avtime sample` saves (`video` uint8 [N, 2, T, H, W, 3], `video_t`,
`audio` float32 [N, 2, L], `audio_span`, `audio_speed`, `audio_reverse`, `label_*`). One block
per example: a header with the order labels, then for each clip i its caption (speed, direction,
source times) above its T frames, and audio clip i's caption above its waveform (left) and its
spectrogram (right; a sped-up clip sits higher, a reversed chirp runs the other way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from avtime.pipelines.pretext.plan import ORDER_NAMES

PAD = 6
TEXT_H = 13
WAVE_H = 36
MAX_FRAME = 96  # frames are shown at most this many pixels wide


def _frame_size(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, MAX_FRAME / max(h, w))
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def _header(d: Mapping[str, np.ndarray], i: int) -> str:
    av = d["label_av_order"][i]
    return (
        f"#{i}  order v1,v2: {ORDER_NAMES[int(d['label_video_order'][i])]}   "
        f"a1,a2: {ORDER_NAMES[int(d['label_audio_order'][i])]}   "
        f"v1,a2: {ORDER_NAMES[int(av[0])]}   v2,a1: {ORDER_NAMES[int(av[1])]}"
    )


def _video_caption(d: Mapping[str, np.ndarray], i: int, c: int, speeds: Sequence[int]) -> str:
    s = speeds[int(d["label_video_speed"][i, c])]
    rev = "reverse" if int(d["label_video_reverse"][i, c]) else "forward"
    if "video_t" not in d:  # a training batch carries no source times
        return f"v{c + 1}  x{s} {rev}"
    t = d["video_t"][i, c]
    return f"v{c + 1}  x{s} {rev}  frames show t = {t[0]:.2f} .. {t[-1]:.2f} s"


def _audio_caption(d: Mapping[str, np.ndarray], i: int, c: int, speeds: Sequence[int]) -> str:
    s = speeds[int(d["label_audio_speed"][i, c])]
    rev = "reverse" if int(d["label_audio_reverse"][i, c]) else "forward"
    silent = " (no audio)" if "has_audio" in d and not float(d["has_audio"][i]) else ""
    if "audio_span" not in d:
        return f"a{c + 1}  x{s} {rev}{silent}"
    a0, a1 = d["audio_span"][i, c]
    return f"a{c + 1}  x{s} {rev}  covers {a0:.2f} .. {a1:.2f} s{silent}"


def _draw_wave(draw: ImageDraw.ImageDraw, wave: np.ndarray, x0: int, y0: int, width: int) -> None:
    """Min/max envelope of `wave` in a width x WAVE_H box (grey axis, blue trace)."""
    mid = y0 + WAVE_H // 2
    draw.rectangle((x0, y0, x0 + width - 1, y0 + WAVE_H - 1), outline=(200, 200, 200))
    draw.line((x0, mid, x0 + width - 1, mid), fill=(200, 200, 200))
    if wave.size == 0:
        return
    cols = np.array_split(np.asarray(wave, dtype=np.float32), width)
    scale = (WAVE_H / 2 - 1) / max(float(np.max(np.abs(wave))), 1e-3)
    for k, col in enumerate(cols):
        if col.size:
            lo, hi = float(col.min()), float(col.max())
            draw.line((x0 + k, mid - hi * scale, x0 + k, mid - lo * scale), fill=(30, 70, 200))


def spectrogram_image(wave: np.ndarray, width: int, height: int) -> Image.Image:
    """Log-magnitude spectrogram (256-sample Hann windows, low frequencies at the bottom)."""
    x = np.asarray(wave, dtype=np.float32)
    n, hop = 256, 128
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    starts = np.arange(0, x.size - n + 1, hop)
    frames = np.stack([x[s : s + n] for s in starts]) * np.hanning(n).astype(np.float32)
    mag = np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-4).T[::-1]  # [F, time]
    lo, hi = float(mag.min()), float(mag.max())
    grey = ((mag - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR).convert("RGB")


def render_sheet(
    d: Mapping[str, np.ndarray], speeds: Sequence[int], max_examples: int = 8
) -> Image.Image:
    """The contact sheet image of the first `max_examples` examples of a sample dict."""
    video = d["video"]
    n = min(max_examples, video.shape[0])
    _, _, t, h, w, _ = video.shape
    fw, fh = _frame_size(h, w)
    width = PAD + t * fw + PAD
    block = TEXT_H + 2 * (TEXT_H + fh) + 2 * (TEXT_H + WAVE_H) + 2 * PAD
    sheet = Image.new("RGB", (max(width, 560), max(1, n) * block), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        y = i * block
        draw.text((PAD, y), _header(d, i), fill=(160, 0, 0))
        y += TEXT_H
        for c in range(2):
            draw.text((PAD, y), _video_caption(d, i, c, speeds), fill="black")
            y += TEXT_H
            for f in range(t):
                im = Image.fromarray(np.ascontiguousarray(video[i, c, f]))
                sheet.paste(im.resize((fw, fh), Image.Resampling.BILINEAR), (PAD + f * fw, y))
            y += fh
        for c in range(2):
            draw.text((PAD, y), _audio_caption(d, i, c, speeds), fill="black")
            y += TEXT_H
            half = t * fw // 2
            _draw_wave(draw, d["audio"][i, c], PAD, y, half - PAD // 2)
            sheet.paste(spectrogram_image(d["audio"][i, c], half, WAVE_H), (PAD + half, y))
            y += WAVE_H
        draw.line((0, (i + 1) * block - 2, sheet.width, (i + 1) * block - 2), fill=(120, 120, 120))
    return sheet


def save_sheet(
    d: Mapping[str, np.ndarray], speeds: Sequence[int], path: str | Path, max_examples: int = 8
) -> Path:
    """Write the contact sheet PNG to `path` and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_sheet(d, speeds, max_examples).save(out, format="PNG")
    return out


def batch_as_sample(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A training batch (the stream's contract: video1/2 uint8 [B, 3, T, S, S], audio1/2 float32
    [B, L], label_*; numpy arrays or CPU tensors) as the sample dict `render_sheet` draws:
    video uint8 [B, 2, T, S, S, 3], audio float32 [B, 2, L] and the same labels."""

    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    video = np.stack([arr(batch["video1"]), arr(batch["video2"])], axis=1)
    out = {k: arr(v) for k, v in batch.items() if k.startswith("label_") or k == "has_audio"}
    out["video"] = video.transpose(0, 1, 3, 4, 5, 2)
    out["audio"] = np.stack([arr(batch["audio1"]), arr(batch["audio2"])], axis=1)
    return out


def save_batch(
    batch: Mapping[str, Any], speeds: Sequence[int], path: str | Path, max_examples: int = 4
) -> Path:
    """The contact sheet of a training batch (what the model sees, with its labels) as a PNG."""
    return save_sheet(batch_as_sample(batch), speeds, path, max_examples)
