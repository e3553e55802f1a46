"""The sampler's labels against the content it produced (in-memory rows whose pixels code the
frame index and whose audio is a ramp of the sample index; see pretext_rows.py)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from avtime.pipelines.config import AugmentConfig, DataConfig, PretextConfig
from avtime.pipelines.pretext.clips import make_example
from tests.pipelines.pretext.rows import decode_index, make_row, ramp_position

CFG = DataConfig(augment=AugmentConfig(enabled=False, crop_size=16))
SPEEDS = CFG.pretext.speeds


def order_of(x: tuple[Fraction, Fraction], y: tuple[Fraction, Fraction]) -> int:
    if max(x[0], y[0]) < min(x[1], y[1]):
        return 2
    return 0 if x[1] <= y[0] else 1


def video_from_pixels(
    ex: dict[str, np.ndarray], c: int, fps: Fraction, t: int
) -> tuple[int, bool, tuple[Fraction, Fraction], list[int]]:
    """(speed, reversed, span in s, indices) of video clip c, read from its pixels only."""
    idx = [decode_index(f) for f in ex["video"][c]]
    steps = set(np.diff(idx).tolist())
    assert len(steps) == 1, idx  # a constant frame step
    step = steps.pop()
    speed, rev = abs(step), step < 0
    lo = min(idx)
    return speed, rev, (Fraction(lo) / fps, Fraction(lo + t * speed) / fps), idx


def audio_from_ramp(
    wave: np.ndarray, num_samples: int, sr: int
) -> tuple[int, bool, tuple[Fraction, Fraction]]:
    """(speed, reversed, span in s) of an audio clip, read from the ramp values only."""
    pos = ramp_position(wave.astype(np.float64), num_samples)
    k = np.arange(len(pos))
    slope, icpt = np.polyfit(k, pos, 1)
    speed = int(round(abs(slope)))
    assert abs(abs(slope) - speed) < 0.05, slope
    first = icpt if slope > 0 else icpt + slope * (len(pos) - 1)  # position of the earliest
    start = int(round(first - (speed - 1) / 2))  # box filter: output k averages s samples
    return speed, slope < 0, (Fraction(start, sr), Fraction(start + speed * len(pos), sr))


@pytest.mark.unit
@pytest.mark.parametrize("num_frames", [250, 130, 60])
def test_frames_audio_and_orders_match_labels(num_frames: int) -> None:
    row = make_row(num_frames=num_frames, start_s=20.0)
    fps, sr, t = Fraction(25), 16000, CFG.pretext.clip_frames
    seen_edges = set()
    for seed in range(40):
        ex = make_example(row, CFG, np.random.default_rng(seed))
        assert ex is not None
        spans = []
        for c in range(2):
            speed, rev, vspan, idx = video_from_pixels(ex, c, fps, t)
            assert SPEEDS[int(ex["label_video_speed"][c])] == speed
            assert int(ex["label_video_reverse"][c]) == rev
            np.testing.assert_allclose(ex["video_t"][c], 20.0 + np.array(idx) / 25.0, atol=1e-9)
            assert 0 <= min(idx) and max(idx) < num_frames
            seen_edges.update({min(idx) == 0, max(idx) + speed >= num_frames})
            a_speed, a_rev, aspan = audio_from_ramp(ex["audio"][c], row["num_samples"], sr)
            assert SPEEDS[int(ex["label_audio_speed"][c])] == a_speed == ex["audio_speed"][c]
            assert int(ex["label_audio_reverse"][c]) == a_rev == ex["audio_reverse"][c]
            np.testing.assert_allclose(
                ex["audio_span"][c], [20.0 + float(aspan[0]), 20.0 + float(aspan[1])], atol=3 / sr
            )
            spans.append((vspan, aspan))
        (v1, a1), (v2, a2) = spans
        assert int(ex["label_video_order"]) == order_of(v1, v2)
        assert int(ex["label_audio_order"]) == order_of(a1, a2)
        assert tuple(ex["label_av_order"]) == (order_of(v1, a2), order_of(v2, a1))
    if num_frames == 60:
        assert True in seen_edges  # short segments: clips reach the segment edges


@pytest.mark.unit
def test_segment_without_audio_gives_zeros_and_labels() -> None:
    row = make_row(audio=False)
    ex = make_example(row, CFG, np.random.default_rng(0))
    assert ex is not None
    assert float(ex["has_audio"]) == 0.0
    assert ex["audio"].shape == (2, 10240) and not ex["audio"].any()
    assert ex["label_audio_speed"].shape == (2,) and ex["label_av_order"].shape == (2,)
    with_audio = make_example(make_row(audio=True), CFG, np.random.default_rng(0))
    assert with_audio is not None and float(with_audio["has_audio"]) == 1.0
    # the plan does not depend on whether the audio is stored
    np.testing.assert_array_equal(ex["video_t"], with_audio["video_t"])


@pytest.mark.unit
def test_skipped_segment_and_rules() -> None:
    tiny = make_row(num_frames=12)  # shorter than one clip at x1 (16 frames)
    assert make_example(tiny, CFG, np.random.default_rng(0)) is None
    short = make_row(num_frames=130)
    skip_cfg = replace(CFG, pretext=replace(CFG.pretext, short_segment_rule="skip"))
    assert make_example(short, skip_cfg, np.random.default_rng(0)) is None
    ex = make_example(short, CFG, np.random.default_rng(0))
    assert ex is not None and ex["label_video_speed"].max() <= 2  # x8 dropped, x1..x4 kept


@pytest.mark.unit
def test_other_frame_rates_and_clip_lengths() -> None:
    cfg = replace(CFG, pretext=PretextConfig(clip_frames=7, speeds=(1, 2, 4), audio_seconds=0.3))
    row = make_row(num_frames=200, fps=29.97, sample_rate=22050)
    fps = Fraction(2997, 100)
    for seed in range(10):
        ex = make_example(row, cfg, np.random.default_rng(seed))
        assert ex is not None
        assert ex["audio"].shape == (2, 6615)
        for c in range(2):
            speed, _, _, idx = video_from_pixels(ex, c, fps, 7)
            np.testing.assert_allclose(ex["video_t"][c], np.array(idx) * 100 / 2997, atol=1e-9)
            assert cfg.pretext.speeds[int(ex["label_video_speed"][c])] == speed


@pytest.mark.unit
def test_same_rng_same_example() -> None:
    row = make_row(width=64, height=48)
    cfg = DataConfig(augment=AugmentConfig(crop_size=32, audio_noise=0.1))
    a = make_example(row, cfg, np.random.default_rng(5))
    b = make_example(row, cfg, np.random.default_rng(5))
    c = make_example(row, cfg, np.random.default_rng(6))
    assert a is not None and b is not None and c is not None
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
