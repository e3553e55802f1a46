"""A contact sheet of a training batch: what the model sees, with its labels (Pillow only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ORDER_NAMES = ("1<2", "2<1", "overlap")
GAP = 6
TEXT_H = 14


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _caption(batch: Mapping[str, Any], i: int, clip: int, speeds: Sequence[int]) -> str:
    speed = speeds[int(_np(batch["label_video_speed"])[i, clip])]
    rev = "rev" if int(_np(batch["label_video_reverse"])[i, clip]) else "fwd"
    text = f"v{clip + 1}: x{speed} {rev}"
    if clip == 1:
        text += f"  order {ORDER_NAMES[int(_np(batch['label_video_order'])[i])]}"
    return text


def render(batch: Mapping[str, Any], speeds: Sequence[int], max_rows: int = 4) -> Image.Image:
    """One row per example: the T frames of v1, a gap, the T frames of v2, captioned.

    Args:
        batch: a pretext batch (docs/CONTRACTS.md section 2): video1, video2 uint8 [B, 3, T, H, W]
            and the video labels.
        speeds: the speed factors (class i = speeds[i]).
    """
    v1, v2 = _np(batch["video1"]), _np(batch["video2"])
    rows = min(max_rows, v1.shape[0])
    _, _, t, h, w = v1.shape
    width = 2 * t * w + GAP
    sheet = Image.new("RGB", (width, rows * (h + TEXT_H + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(rows):
        y = i * (h + TEXT_H + GAP)
        for clip, video in enumerate((v1, v2)):
            x0 = clip * (t * w + GAP)
            for f in range(t):
                frame = np.ascontiguousarray(video[i, :, f].transpose(1, 2, 0))
                sheet.paste(Image.fromarray(frame), (x0 + f * w, y + TEXT_H))
            draw.text((x0 + 2, y + 1), _caption(batch, i, clip, speeds), fill="black")
    return sheet


def save(batch: Mapping[str, Any], speeds: Sequence[int], path: str | Path) -> Path:
    """Render the contact sheet of `batch` to a PNG at `path`."""
    out = Path(path)
    render(batch, speeds).save(out, format="PNG")
    return out
