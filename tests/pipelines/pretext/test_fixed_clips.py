"""Fixed (evaluation) clips are cut by the sampler's own code, with its half-up rounding; the
training batch's contact sheet is drawn by the one contact-sheet module."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.pretext.clips import audio_window, clip_starts, fixed_clips, pcm_float
from avtime.pipelines.pretext.contact_sheet import batch_as_sample, save_batch
from avtime.pipelines.pretext.plan import audio_length
from avtime.training.eval.clips import ClipConfig

pytestmark = pytest.mark.unit


def _jpeg(rgb: tuple[int, int, int], w: int = 48, h: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_eval_audio_length_rounds_half_up_like_the_sampler() -> None:
    # 2.5 and 0.5 samples: Python's round() gives 2 and 0 (to even); the sampler gives 3 and 1.
    for seconds, expected in ((0.00015625, 3), (0.00003125, 1), (0.64, 10240)):
        cfg = ClipConfig(clip_frames=4, crop_size=16, audio_seconds=seconds, sample_rate=16000)
        assert cfg.audio_len == audio_length(seconds, 16000) == expected


def test_clip_starts_and_window_round_half_up() -> None:
    assert clip_starts(100, 16, 4) == [0, 28, 56, 84]
    assert clip_starts(11, 4, 3) == [0, 4, 7]  # 3.5 -> 4 (round() would give 4), 7 exact
    assert clip_starts(9, 4, 5) == [0, 1, 3, 4, 5]  # 1.25 -> 1, 2.5 -> 3, 3.75 -> 4
    wav = np.arange(20, dtype=np.float32)
    assert audio_window(wav, Fraction(9, 2), 4).tolist() == [3, 4, 5, 6]  # 2.5 -> 3
    assert audio_window(wav, 100, 4).tolist() == [16, 17, 18, 19]  # kept inside
    assert audio_window(None, 3, 2).tolist() == [0, 0]


def test_fixed_clips_shapes_pixels_and_audio_centre() -> None:
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    frames = [_jpeg(colours[i % 3]) for i in range(10)]
    row = {"frames": frames, "width": 48, "height": 32, "fps": 5.0, "video_id": "v", "segment": 0}
    pcm = (np.arange(4000, dtype=np.int16) * 8).astype("<i2").tobytes()
    wav = pcm_float(pcm)
    out = fixed_clips(
        row, clip_frames=4, crop_size=16, clips_per_segment=2, wav=wav, sample_rate=400,
        audio_len=40,
    )  # fmt: skip
    assert out["video"].shape == (2, 3, 4, 16, 16) and out["video"].dtype == np.uint8
    # clip 2 starts at frame 6: frames 6..9 are red, green, blue, red
    centre = out["video"][1, :, :, 8, 8].T.astype(int)  # [T, 3]
    assert [int(np.argmax(c)) for c in centre] == [0, 1, 2, 0]
    # its audio is centred on the span's middle, frame 8 = 1.6 s = sample 640
    assert out["audio"][1, 0] == pytest.approx(wav[620]) and out["audio"].shape == (2, 40)
    assert out["has_audio"].tolist() == [1.0, 1.0]


def test_training_batch_contact_sheet(tmp_path: Path) -> None:
    b, t, s = 2, 3, 8
    red = np.zeros((b, 3, t, s, s), dtype=np.uint8)
    red[:, 0] = 255
    blue = np.zeros_like(red)
    blue[:, 2] = 255
    batch = {
        "video1": red, "video2": blue, "audio1": np.zeros((b, 64), np.float32),
        "audio2": np.zeros((b, 64), np.float32), "has_audio": np.ones(b, np.float32),
        "label_video_speed": np.zeros((b, 2), np.int64), "label_audio_speed": np.ones((b, 2), np.int64),
        "label_video_reverse": np.zeros((b, 2), np.int64), "label_audio_reverse": np.ones((b, 2), np.int64),
        "label_video_order": np.array([0, 1]), "label_audio_order": np.array([2, 0]),
        "label_av_order": np.array([[0, 1], [2, 2]]),
    }  # fmt: skip
    sample = batch_as_sample(batch)
    assert sample["video"].shape == (b, 2, t, s, s, 3)
    assert (sample["video"][:, 0, ..., 0] == 255).all() and (
        sample["video"][:, 1, ..., 2] == 255
    ).all()
    path = save_batch(batch, (1, 2, 4, 8), tmp_path / "batch.png")
    with Image.open(path) as im:
        pixels = set(map(tuple, np.asarray(im.convert("RGB")).reshape(-1, 3).tolist()))
    assert (255, 0, 0) in pixels and (0, 0, 255) in pixels
