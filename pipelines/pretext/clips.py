"""Turn a segment row and a pretext plan into the arrays of one example.

`make_example(row, cfg, rng, key)` is the whole sampler: plan (pipelines.pretext.plan), then decode only
the JPEG frames the two video clips show (Pillow, with `Image.draft` for a cheap downscaled DCT
decode when the crop is much larger than the output), crop/flip/jitter (pipelines.pretext.augment), and
cut, speed up and reverse the two audio clips from the PCM s16le bytes. `encode_example` is the
same sampler without the pixels (the planned frames' JPEG bytes and the augmentation parameters,
for `data.stream.decode_on = "device"`); both start from `plan_row`.

A row is a mapping with the columns of docs/CONTRACTS.md section 1 (frames as a sequence of
encoded images, audio as bytes or None).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from avtime.pipelines.config import DEFAULT_SAMPLE_RATE, DataConfig
from avtime.pipelines.pretext.augment import (
    VideoAug,
    augment_audio,
    centre_box,
    color_image,
    draw_video_aug,
)
from avtime.pipelines.pretext.plan import (
    ClipPlan,
    ExamplePlan,
    Geometry,
    SpeedTable,
    exact_fps,
    plan_example,
    segment_geometry,
    speed_table,
)

Example = dict[str, np.ndarray]


def row_geometry(
    row: Mapping[str, Any], cfg: DataConfig, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> tuple[Geometry, SpeedTable]:
    """Geometry and speed table of a segment row (metadata columns only)."""
    sr = int(row["sample_rate"]) if int(row["sample_rate"] or 0) > 0 else sample_rate
    has_audio = row.get("audio") is not None and int(row["num_samples"]) > 0
    geom = segment_geometry(
        num_frames=int(row["num_frames"]),
        fps=float(row["fps"]),
        sample_rate=sr,
        num_samples=int(row["num_samples"]) if has_audio else 0,
        cfg=cfg.pretext,
    )
    return geom, speed_table(geom, cfg.pretext.speeds, cfg.pretext.short_segment_rule)


def decode_frame(data: bytes, width: int, height: int, reduce: int) -> Image.Image:
    """One stored frame as an RGB image, JPEGs decoded at 1/`reduce` scale in the DCT.

    RGB JPEGs of the row's known size go straight to libjpeg (`Image.frombytes`), skipping
    Pillow's Python header parser; anything else (PNG, greyscale) goes through `Image.open`.
    """
    if data[:2] == b"\xff\xd8":
        try:
            size = (math.ceil(width / reduce), math.ceil(height / reduce))
            return Image.frombytes("RGB", size, data, "jpeg", "RGB", "", reduce)
        except (OSError, ValueError):
            pass
    im: Image.Image = Image.open(io.BytesIO(data))
    if reduce > 1:
        im.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_clip(
    frames: Sequence[bytes],
    indices: np.ndarray,
    aug: VideoAug,
    size: int,
    frame_size: tuple[int, int],
) -> np.ndarray:
    """Decode `frames[indices]`, crop `aug.box`, resize to size x size, jitter and flip.

    `frame_size` is the stored (width, height). Returns uint8 [T, S, S, 3]. JPEG frames are
    decoded at 1/2, 1/4 or 1/8 scale when the crop box stays at least `size` pixels wide at that
    scale. The resized frames are pasted into one tall image, so the colour jitter and the
    conversion to numpy run once per clip.
    """
    width, height = frame_size
    left, top, right, bottom = aug.box
    reduce = 1
    while reduce < 8 and min(right - left, bottom - top) >= 2 * reduce * size:
        reduce *= 2
    tall = Image.new("RGB", (size, size * len(indices)))
    for k, i in enumerate(indices):
        im = decode_frame(frames[int(i)], width, height, reduce)
        sx, sy = im.size[0] / width, im.size[1] / height
        box = (left * sx, top * sy, right * sx, bottom * sy)
        tall.paste(im.resize((size, size), Image.Resampling.BILINEAR, box=box), (0, k * size))
    out = np.asarray(color_image(tall, aug)).reshape(len(indices), size, size, 3)
    return out[:, :, ::-1] if aug.flip else out


def cut_audio(pcm: np.ndarray | None, clip: ClipPlan, audio_len: int) -> np.ndarray:
    """The audio clip after its temporal transform, float32 [L] in [-1, 1].

    Reads `audio_speed * L` stored samples from `audio_start`, averages each run of `audio_speed`
    samples (a tape played `audio_speed` times faster, box-filtered against aliasing) and flips it
    when reversed. `pcm` is the row's int16 samples, or None for a row without audio (zeros).
    """
    if pcm is None:
        return np.zeros(audio_len, dtype=np.float32)
    n = clip.audio_speed * audio_len
    seg = pcm[clip.audio_start : clip.audio_start + n].astype(np.float32) * np.float32(1 / 32768)
    if clip.audio_speed > 1:
        seg = seg.reshape(audio_len, clip.audio_speed).mean(axis=1, dtype=np.float32)
    return seg[::-1].copy() if clip.audio_reverse else seg


def plan_arrays(row: Mapping[str, Any], geom: Geometry, plan: ExamplePlan) -> Example:
    """Labels and source times of a plan (no pixels): the `label_*`, `video_t`, `audio_span`,
    `audio_speed`, `audio_reverse` and `video_speed` arrays of one example."""
    c1, c2 = plan.clips
    fps = Fraction(geom.fps_num, geom.fps_den)
    start = Fraction(float(row["start_s"]))
    video_t = np.array(
        [[float(start + int(i) / fps) for i in c.frame_indices(geom.clip_frames)] for c in (c1, c2)]
    )
    span = [
        [float(start + Fraction(a, geom.sample_rate)) for a in (c.audio_start, c.audio_end(geom))]
        for c in (c1, c2)
    ]
    return {
        "video_t": video_t,
        "audio_span": np.array(span, dtype=np.float64),
        "video_speed": np.array([c1.video_speed, c2.video_speed], dtype=np.int64),
        "audio_speed": np.array([c1.audio_speed, c2.audio_speed], dtype=np.int64),
        "audio_reverse": np.array([c1.audio_reverse, c2.audio_reverse], dtype=np.int64),
        "label_video_speed": np.array(plan.speed_class_video, dtype=np.int64),
        "label_audio_speed": np.array(plan.speed_class_audio, dtype=np.int64),
        "label_video_reverse": np.array([c1.video_reverse, c2.video_reverse], dtype=np.int64),
        "label_audio_reverse": np.array([c1.audio_reverse, c2.audio_reverse], dtype=np.int64),
        "label_video_order": np.array(plan.video_order, dtype=np.int64),
        "label_audio_order": np.array(plan.audio_order, dtype=np.int64),
        "label_av_order": np.array(plan.av_order, dtype=np.int64),
    }


@dataclass(frozen=True)
class PlannedExample:
    """An example before its pixels: plan, the two clips' augmentations and the pixel-free
    arrays (`plan_arrays`, `audio` float32 [2, L], `has_audio` float32 [])."""

    geom: Geometry
    plan: ExamplePlan
    augs: tuple[VideoAug, VideoAug]
    arrays: Example


def plan_row(
    row: Mapping[str, Any],
    cfg: DataConfig,
    rng: np.random.Generator,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> PlannedExample | None:
    """Plan, augmentation draws and audio of one example (None when the segment is skipped).

    Both renderings (`make_example`, `encode_example`) start here, so one seed gives one plan and
    one set of augmentation parameters whichever of them draws the pixels.
    """
    geom, table = row_geometry(row, cfg, sample_rate)
    if table.status == "skipped":
        return None
    plan = plan_example(geom, table, rng)
    width, height = int(row["width"]), int(row["height"])
    aug1, aug2 = (draw_video_aug(cfg.augment, width, height, rng) for _ in range(2))
    has_audio = row.get("audio") is not None and int(row["num_samples"]) > 0
    pcm = np.frombuffer(row["audio"], dtype="<i2") if has_audio else None
    audio = np.stack([cut_audio(pcm, c, geom.audio_len) for c in plan.clips])
    if has_audio:
        audio = np.stack([augment_audio(a, cfg.augment, rng) for a in audio])
    out = plan_arrays(row, geom, plan)
    out.update(audio=audio, has_audio=np.array(float(has_audio), dtype=np.float32))
    return PlannedExample(geom=geom, plan=plan, augs=(aug1, aug2), arrays=out)


def make_example(
    row: Mapping[str, Any],
    cfg: DataConfig,
    rng: np.random.Generator,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> Example | None:
    """One pretext example from one segment row, or None when the segment is skipped.

    Returns `video` uint8 [2, T, S, S, 3] (playback order), `audio` float32 [2, L], `has_audio`
    float32 [], and the arrays of `plan_arrays`.
    """
    p = plan_row(row, cfg, rng, sample_rate=sample_rate)
    if p is None:
        return None
    frame_size = (int(row["width"]), int(row["height"]))
    size, t = cfg.augment.crop_size, p.geom.clip_frames
    video = np.stack(
        [
            decode_clip(row["frames"], c.frame_indices(t), aug, size, frame_size)
            for c, aug in zip(p.plan.clips, p.augs)
        ]
    )
    return p.arrays | {"video": video}


def encode_example(
    row: Mapping[str, Any],
    cfg: DataConfig,
    rng: np.random.Generator,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> Example | None:
    """`make_example` with the pixels left encoded, for decoding on the training device.

    Same plan and draws as `make_example` for the same `rng`. Instead of `video` it returns, per
    clip k in (1, 2): `jpeg{k}` object [] (the T planned frames' encoded bytes, concatenated in
    playback order) and `jpeg{k}_len` int64 [T] (their lengths); and `box` int64 [2, 4] (crop box
    in stored pixels, left/top/right/bottom), `flip` int64 [2], `color` float64 [2, 3]
    (brightness, contrast, saturation). training/engine/device_decode.py renders them.
    """
    p = plan_row(row, cfg, rng, sample_rate=sample_rate)
    if p is None:
        return None
    out = dict(p.arrays)
    for k, clip in enumerate(p.plan.clips, start=1):
        data = [bytes(row["frames"][int(i)]) for i in clip.frame_indices(p.geom.clip_frames)]
        blob = np.empty((), dtype=object)
        blob[()] = b"".join(data)
        out[f"jpeg{k}"] = blob
        out[f"jpeg{k}_len"] = np.array([len(d) for d in data], dtype=np.int64)
    out["box"] = np.array([a.box for a in p.augs], dtype=np.int64)
    out["flip"] = np.array([a.flip for a in p.augs], dtype=np.int64)
    out["color"] = np.array(
        [[a.brightness, a.contrast, a.saturation] for a in p.augs], dtype=np.float64
    )
    return out


# Fixed clips: the deterministic clips evaluation reads, cut by the same decoder and rules.


def pcm_float(pcm: bytes) -> np.ndarray:
    """Stored PCM s16le bytes -> float32 [S] in [-1, 1) (the sampler's scale, 1/32768)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)


def half_up(x: Fraction) -> int:
    """The one rounding rule for clip positions: round half up, on exact Fractions."""
    return math.floor(x + Fraction(1, 2))


def clip_starts(num_frames: int, clip_frames: int, k: int) -> list[int]:
    """Start frames of k clips of `clip_frames` evenly spaced over `num_frames` stored frames
    (all 0 when the segment is shorter than a clip)."""
    span = max(0, num_frames - clip_frames)
    if k == 1:
        return [span // 2]
    return [half_up(Fraction(i * span, k - 1)) for i in range(k)]


def stride_starts(
    num_frames: int, fps: Fraction, start_s: Fraction, stride_s: Fraction
) -> list[int]:
    """Start frames of the clips that begin every `stride_s` seconds of source time (at 0,
    stride, 2 * stride, ...) inside a segment of `num_frames` stored frames from `start_s` at
    `fps`. Grid time t starts at stored frame half_up((t - start_s) * fps) when that frame is in
    the segment, so segments that tile a timeline share its grid out, each time exactly once."""
    if stride_s <= 0:
        raise ValueError(f"stride must be > 0 seconds, got {stride_s}")
    out: list[int] = []
    k = max(0, math.floor(start_s / stride_s) - 1)
    while True:
        i = half_up((k * stride_s - start_s) * fps)
        if i >= num_frames:
            return out
        if i >= 0:
            out.append(i)
        k += 1


def audio_window(wav: np.ndarray | None, center: Fraction | float, length: int) -> np.ndarray:
    """`length` samples of float32 `wav` [S] centred on sample `center` (half up), kept inside the
    segment; zero-padded when it is shorter. float32 [length]; zeros when `wav` is None."""
    out = np.zeros(length, dtype=np.float32)
    if wav is None or len(wav) == 0:
        return out
    start = half_up(Fraction(center) - Fraction(length, 2))
    start = max(0, min(start, len(wav) - length))
    piece = wav[start : start + length]
    out[: len(piece)] = piece
    return out


def fixed_clips(
    row: Mapping[str, Any],
    *,
    clip_frames: int,
    crop_size: int,
    clips_per_segment: int,
    wav: np.ndarray | None,
    sample_rate: int,
    audio_len: int,
    starts: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """`clips_per_segment` evenly spaced clips of one segment row (or clips at the given
    `starts`, stored frame indices, e.g. from `stride_starts`), at speed 1, forward.

    Video: T consecutive stored frames (the last repeated past the end), the centred square
    crop resized to `crop_size` by `decode_clip`, the sampler's decoder. Audio: `audio_len`
    samples of `wav` (the row's audio at `sample_rate`, None = silent) centred on the clip's span.
    Returns video uint8 [K, 3, T, S, S], audio float32 [K, L], has_audio float32 [K].
    """
    frames = row["frames"]
    n = len(frames)
    if n == 0:
        raise ValueError(f"segment {row.get('video_id')}/{row.get('segment')} has no frames")
    width, height = int(row["width"]), int(row["height"])
    aug = VideoAug(box=centre_box(width, height), flip=False)
    if starts is None:
        starts = clip_starts(n, clip_frames, clips_per_segment)
    if not starts:
        return {
            "video": np.zeros((0, 3, clip_frames, crop_size, crop_size), dtype=np.uint8),
            "audio": np.zeros((0, audio_len), dtype=np.float32),
            "has_audio": np.zeros(0, dtype=np.float32),
        }
    fps = exact_fps(float(row["fps"]))
    videos, audio = [], []
    for s in starts:
        idx = np.minimum(np.arange(s, s + clip_frames), n - 1)
        clip = decode_clip(frames, idx, aug, crop_size, (width, height))  # [T, S, S, 3]
        videos.append(clip.transpose(3, 0, 1, 2))
        centre = Fraction(2 * s + min(clip_frames, n), 2) / fps * sample_rate
        audio.append(audio_window(wav, centre, audio_len))
    has = np.full(len(starts), 0.0 if wav is None else 1.0, dtype=np.float32)
    return {"video": np.stack(videos), "audio": np.stack(audio), "has_audio": has}
