"""Augmentations: one crop/flip/jitter per clip, constant in time; audio gain and noise; off."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.config import AugmentConfig, DataConfig
from avtime.pipelines.pretext.augment import VideoAug, apply_color, augment_audio, draw_video_aug
from avtime.pipelines.pretext.clips import decode_clip, make_example
from tests.pipelines.pretext.rows import make_row


def gradient_jpeg(width: int = 96, height: int = 64) -> bytes:
    """A frame with a horizontal and a vertical gradient (so crops and flips are visible)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.unit
def test_one_augmentation_per_clip_constant_in_time() -> None:
    row = make_row(num_frames=250, width=96, height=64)
    row["frames"] = [gradient_jpeg()] * 250  # every frame the same picture
    cfg = DataConfig(augment=AugmentConfig(crop_size=32, color_jitter=0.4))
    differs = 0
    for seed in range(6):
        ex = make_example(row, cfg, np.random.default_rng(seed))
        assert ex is not None and ex["video"].shape == (2, 16, 32, 32, 3)
        for c in range(2):
            clip = ex["video"][c].astype(np.int16)
            assert np.abs(clip - clip[0]).max() == 0  # same crop, flip and colour every frame
        differs += not np.array_equal(ex["video"][0, 0], ex["video"][1, 0])
    assert differs >= 5  # the two clips of an example get their own augmentation


@pytest.mark.unit
def test_flip_mirrors_and_crop_box() -> None:
    frames = [gradient_jpeg()]
    box = (10, 4, 74, 60)
    plain = decode_clip(frames, np.array([0]), VideoAug(box=box, flip=False), 32, (96, 64))
    flipped = decode_clip(frames, np.array([0]), VideoAug(box=box, flip=True), 32, (96, 64))
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
    # red rises left to right inside the crop, from about 255*10/95 to 255*74/95
    red = plain[0, 16, :, 0].astype(float)
    assert (
        red[0] < red[-1] and abs(red[0] - 255 * 10 / 95) < 12 and abs(red[-1] - 255 * 74 / 95) < 12
    )


@pytest.mark.unit
def test_colour_jitter_factors() -> None:
    rng = np.random.default_rng(0)
    clip = rng.integers(40, 200, size=(4, 8, 8, 3)).astype(np.uint8)
    same = apply_color(clip, VideoAug(box=(0, 0, 8, 8), flip=False))
    np.testing.assert_array_equal(same, clip)
    bright = apply_color(clip, VideoAug(box=(0, 0, 8, 8), flip=False, brightness=1.2))
    np.testing.assert_allclose(bright.astype(float), np.clip(clip * 1.2, 0, 255), atol=1.01)
    grey = apply_color(clip, VideoAug(box=(0, 0, 8, 8), flip=False, saturation=0.0))
    assert np.abs(grey.astype(int) - grey[..., :1]).max() <= 1  # R = G = B


@pytest.mark.unit
def test_draw_video_aug_respects_switches() -> None:
    rng = np.random.default_rng(1)
    off = AugmentConfig(enabled=False)
    for _ in range(5):
        a = draw_video_aug(off, 171, 128, rng)
        assert a.box == (0, 0, 171, 128) and not a.flip and not a.jitter
    no_flip = AugmentConfig(flip=False, color_jitter=0.0, crop_scale=(0.5, 0.5))
    for _ in range(20):
        a = draw_video_aug(no_flip, 171, 128, rng)
        left, top, right, bottom = a.box
        assert not a.flip and not a.jitter
        assert 0 <= left < right <= 171 and 0 <= top < bottom <= 128
        assert abs((right - left) * (bottom - top) / (171 * 128) - 0.5) < 0.05


@pytest.mark.unit
def test_audio_gain_noise_and_off() -> None:
    rng = np.random.default_rng(2)
    wave = (0.1 * np.sin(np.arange(1000) / 7.0)).astype(np.float32)
    for _ in range(20):
        out = augment_audio(wave, AugmentConfig(audio_gain_db=6.0), rng)
        ratio = float(np.abs(out).max() / np.abs(wave).max())
        assert 10 ** (-6 / 20) - 1e-4 <= ratio <= 10 ** (6 / 20) + 1e-4
        np.testing.assert_allclose(out / ratio, wave, atol=1e-5)  # a pure gain
    noisy = augment_audio(wave, AugmentConfig(audio_gain_db=0.0, audio_noise=0.5), rng)
    resid = noisy - wave
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    assert 0.4 * rms < float(resid.std()) < 0.6 * rms
    off = augment_audio(wave, AugmentConfig(enabled=False, audio_noise=0.5), rng)
    np.testing.assert_array_equal(off, wave)


@pytest.mark.unit
def test_reduced_jpeg_decode_matches_full_decode() -> None:
    """A crop much larger than the output is decoded at 1/2 or 1/4 scale in the DCT; the result
    stays close to a full decode resized with Pillow."""
    frames = [gradient_jpeg(192, 128)]
    box = (0, 0, 192, 128)
    small = decode_clip(frames, np.array([0]), VideoAug(box=box, flip=False), 16, (192, 128))
    full = Image.open(io.BytesIO(frames[0])).convert("RGB").resize((16, 16), Image.Resampling.BOX)
    assert np.abs(small[0].astype(int) - np.asarray(full).astype(int)).mean() < 4
