"""Decode and augment encoded pretext batches on the training device (`decode_on = "device"`).

With `data.stream.decode_on = "device"` the sampling tasks ship, per clip, the planned frames'
JPEG bytes and the augmentation parameters (pipelines/pretext/clips.py `encode_example`, collated
by stream.py `encoded_video`); `decode_batch` turns such a batch into the contract batch on the
training worker's device. It reproduces the CPU sampler's rendering (clips.py `decode_clip`,
augment.py `color_image`) step by step:

- decode: `torchvision.io.decode_jpeg` of all 2 x B x T frames in one batched call on `device`
  (nvJPEG on CUDA), always at full resolution;
- crop + resize: Pillow's BILINEAR resize with a box, as two matrix products per clip with
  Pillow's weights (a triangle filter widened by the downscale factor, so antialiased; pixels
  outside the box but inside the frame count at the edges), horizontal pass then vertical, each
  rounded half up to uint8 as Pillow does;
- colour jitter: Pillow's grey (ITU-R 601-2, fixed point), saturation as a blend with grey
  (truncated), then the contrast (around the clip's mean grey) + brightness lookup table;
- flip of the width axis.

The one planned difference: the CPU path decodes at 1/2, 1/4 or 1/8 DCT scale when the crop box
is at least twice the output (never at the paper preset: 112² crops of 128-px frames); this path
resizes the full-resolution frame instead. JPEG decoders may also differ by a level or so.

Imports only numpy, torch and torchvision: bench/gpu_check.py loads this file on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

Tensor = torch.Tensor
ENCODED_KEYS = ("jpeg1", "jpeg2", "jpeg1_len", "jpeg2_len", "box", "flip", "color")


def decode_batch(
    batch: Mapping[str, Any], size: int, device: torch.device | str
) -> dict[str, Tensor]:
    """An encoded batch (stream.py `encoded_video` columns + the rest of the contract batch, as
    numpy arrays or tensors) -> the contract batch on `device`: video1/2 uint8 [B, 3, T, S, S]
    with S = `size`, and every other numeric column as a tensor (non-numeric ones are dropped).

    Both clips of every example go through one `decode_jpeg` call.
    """
    dev = torch.device(device)
    out: dict[str, Tensor] = {}
    for k, v in batch.items():
        tensor = None if k in ENCODED_KEYS else _to_tensor(v, dev)
        if tensor is not None:
            out[k] = tensor
    lengths = [np.asarray(batch[k], dtype=np.int64) for k in ("jpeg1_len", "jpeg2_len")]
    b, t = lengths[0].shape
    box, flip, color = (np.asarray(batch[k]) for k in ("box", "flip", "color"))  # [B, 2, ...]
    video = render_clips(
        [*batch["jpeg1"], *batch["jpeg2"]],
        np.concatenate(lengths).reshape(2 * b, t),
        np.concatenate([box[:, 0], box[:, 1]]).reshape(2 * b, 4),
        np.concatenate([flip[:, 0], flip[:, 1]]).reshape(2 * b),
        np.concatenate([color[:, 0], color[:, 1]]).reshape(2 * b, 3),
        size,
        dev,
    )
    out["video1"], out["video2"] = video[:b], video[b:]
    return out


def _to_tensor(value: Any, device: torch.device) -> Tensor | None:
    """A numeric column as a tensor on `device`; None for strings, bytes and objects."""
    if isinstance(value, Tensor):
        return value.to(device)
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return None
    return torch.from_numpy(np.require(arr, requirements=["C", "W"])).to(device)


def render_clips(
    blobs: Sequence[bytes],
    lengths: np.ndarray,
    box: np.ndarray,
    flip: np.ndarray,
    color: np.ndarray,
    size: int,
    device: torch.device,
) -> Tensor:
    """N clips from their concatenated JPEGs: `blobs` N bytes, `lengths` int [N, T], `box` int
    [N, 4] (left, top, right, bottom in stored pixels), `flip` [N], `color` float [N, 3]
    (brightness, contrast, saturation) -> uint8 [N, 3, T, S, S] on `device`."""
    n, t = lengths.shape
    if n == 0:
        return torch.zeros((0, 3, t, size, size), dtype=torch.uint8, device=device)
    frames = decode_jpegs(blobs, lengths, device)  # N * T of [3, H, W]
    clips = torch.stack(
        [resize_clip(torch.stack(frames[i * t : (i + 1) * t]), box[i], size) for i in range(n)]
    )  # [N, T, 3, S, S] float32, integer values
    clips = color_jitter(clips, torch.as_tensor(color, dtype=torch.float64, device=device))
    flips = torch.as_tensor(flip, device=device).bool().view(n, 1, 1, 1, 1)
    clips = torch.where(flips, clips.flip(-1), clips)
    return clips.to(torch.uint8).permute(0, 2, 1, 3, 4).contiguous()


def decode_jpegs(blobs: Sequence[bytes], lengths: np.ndarray, device: torch.device) -> list[Tensor]:
    """Split each blob into its JPEGs (`lengths` int [N, T]) and decode all N * T of them in one
    `decode_jpeg` call on `device`; returns N * T uint8 [3, H, W] (clip-major)."""
    data: list[Tensor] = []
    for blob, lens in zip(blobs, lengths):
        buf = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        data.extend(torch.split(buf, [int(x) for x in lens]))
    frames = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(frames) if isinstance(frames, list) else [frames]


def pil_bilinear_weights(
    start: int, stop: int, in_size: int, out_size: int, device: torch.device
) -> Tensor:
    """float32 [out_size, in_size]: Pillow's BILINEAR weights for resizing the span
    [start, stop) of an axis of `in_size` pixels to `out_size` (Resample.c precompute_coeffs:
    support 1 x the downscale factor, window clipped to the axis, rows normalised)."""
    f64 = torch.float64
    scale = (stop - start) / out_size
    fscale = max(scale, 1.0)
    centre = start + (torch.arange(out_size, dtype=f64, device=device) + 0.5) * scale
    lo = torch.trunc(centre - fscale + 0.5).clamp(min=0)[:, None]
    hi = torch.trunc(centre + fscale + 0.5).clamp(max=in_size)[:, None]
    x = torch.arange(in_size, dtype=f64, device=device)[None, :]
    w = (1.0 - ((x - centre[:, None] + 0.5) / fscale).abs()).clamp(min=0.0)
    w = torch.where((x >= lo) & (x < hi), w, torch.zeros_like(w))
    return (w / w.sum(dim=1, keepdim=True)).to(torch.float32)


def resize_clip(frames: Tensor, box: Sequence[int] | np.ndarray, size: int) -> Tensor:
    """uint8 [T, 3, H, W] -> float32 [T, 3, S, S] (integer values): crop `box` (left, top,
    right, bottom) and resize to S x S as Pillow's BILINEAR resize with that box does."""
    left, top, right, bottom = (int(v) for v in box)
    h, w = frames.shape[-2:]
    wx = pil_bilinear_weights(left, right, w, size, frames.device)  # [S, W]
    wy = pil_bilinear_weights(top, bottom, h, size, frames.device)  # [S, H]
    x = torch.floor(frames.float() @ wx.T + 0.5).clamp(0, 255)  # [T, 3, H, S]
    return torch.floor(wy @ x + 0.5).clamp(0, 255)


def color_jitter(clips: Tensor, color: Tensor) -> Tensor:
    """augment.py `color_image` on float32 [N, T, 3, S, S] clips (integer values) with float64
    [N, 3] (brightness, contrast, saturation) factors; clips whose factors are all 1 pass
    through. Returns float32 [N, T, 3, S, S] (integer values)."""
    n, t, _, s, _ = clips.shape
    c = clips.to(torch.int32)
    grey = (c[:, :, 0] * 19595 + c[:, :, 1] * 38470 + c[:, :, 2] * 7471 + 32768) >> 16
    mean = grey.reshape(n, t * s, s)[:, ::2, ::2].to(torch.float64).mean(dim=(1, 2))  # [N]
    g = grey[:, :, None].to(torch.float32)  # [N, T, 1, S, S]
    sat = color[:, 2].to(torch.float32).view(n, 1, 1, 1, 1)
    blended = torch.floor((g + sat * (clips - g)).clamp(0, 255))
    bright, contrast = color[:, 0:1], color[:, 1:2]  # [N, 1]
    v = torch.arange(256, dtype=torch.float64, device=clips.device)[None, :]
    lut = torch.round(bright * (contrast * v + (1.0 - contrast) * mean[:, None])).clamp(0, 255)
    idx = blended.to(torch.int64).reshape(n, -1)
    jittered = lut.gather(1, idx).reshape(clips.shape).to(torch.float32)
    jitter = (color != 1.0).any(dim=1).view(n, 1, 1, 1, 1)
    return torch.where(jitter, jittered, clips)
