"""Pretext planning: exact spans, label balance, speed table, short segments, segment edges.

Labels are checked against an independent calculation in Fractions of seconds (not the planner's
integer tick clock), and the class balance over 2,000 examples on realistic segment lengths.
"""

from __future__ import annotations

import collections
from fractions import Fraction

import numpy as np
import pytest

from avtime.pipelines.config import PretextConfig
from avtime.pipelines.pretext.plan import (
    ExamplePlan,
    Geometry,
    audio_length,
    exact_fps,
    plan_example,
    segment_geometry,
    speed_table,
    valid_starts,
)

CFG = PretextConfig()  # T=16, speeds 1/2/4/8, 0.64 s audio


def geom(num_frames: int = 250, fps: float = 25.0, sr: int = 16000, audio: bool = True) -> Geometry:
    n = int(num_frames * sr / exact_fps(fps)) if audio else 0
    return segment_geometry(num_frames=num_frames, fps=fps, sample_rate=sr, num_samples=n, cfg=CFG)


def order_of(x: tuple[Fraction, Fraction], y: tuple[Fraction, Fraction]) -> int:
    """Independent order: 0 if x ends before y starts, 1 the reverse, 2 if they intersect."""
    if max(x[0], y[0]) < min(x[1], y[1]):
        return 2
    return 0 if x[1] <= y[0] else 1


def fraction_spans(g: Geometry, plan: ExamplePlan) -> list[tuple[tuple[Fraction, Fraction], ...]]:
    """(video span, audio span) in seconds of each clip, from its frame and sample indices."""
    fps = Fraction(g.fps_num, g.fps_den)
    out = []
    for c in plan.clips:
        idx = c.frame_indices(g.clip_frames)
        v0 = Fraction(int(idx.min()), 1) / fps
        v = (v0, v0 + Fraction(g.clip_frames * c.video_speed) / fps)
        a = (
            Fraction(c.audio_start, g.sample_rate),
            Fraction(c.audio_start + c.audio_speed * g.audio_len, g.sample_rate),
        )
        out.append((v, a))
    return out


def realistic_segments() -> list[Geometry]:
    """10 s segments at 25 fps (most rows) and shorter last segments, some without audio."""
    full = [geom(250), geom(250, audio=False)]
    last = [geom(n) for n in (60, 90, 130, 170, 210)] + [geom(110, audio=False)]
    return full * 6 + last


@pytest.mark.unit
def test_labels_match_independent_span_calculation() -> None:
    rng = np.random.default_rng(0)
    for g in (geom(250), geom(199, fps=29.97, sr=22050), geom(70), geom(250, fps=24.0)):
        table = speed_table(g, CFG.speeds, "restrict")
        for _ in range(300):
            p = plan_example(g, table, rng)
            (v1, a1), (v2, a2) = fraction_spans(g, p)
            assert p.video_order == order_of(v1, v2)
            assert p.audio_order == order_of(a1, a2)
            assert p.av_order == (order_of(v1, a2), order_of(v2, a1))
            for (v, a), c in zip(((v1, a1), (v2, a2)), p.clips):
                # audio clip i is centred on video clip i's span (within half a sample)
                assert abs((v[0] + v[1]) / 2 - (a[0] + a[1]) / 2) <= Fraction(1, 2 * g.sample_rate)
                assert 0 <= v[0] and v[1] <= Fraction(g.num_frames * g.fps_den, g.fps_num)
                assert 0 <= c.audio_start and c.audio_end(g) <= g.num_samples
                assert c.video_speed in table.speeds and c.audio_speed in table.speeds


@pytest.mark.unit
def test_order_classes_balanced_over_2000_examples() -> None:
    rng = np.random.default_rng(1)
    segs = realistic_segments()
    counts: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    n = 0
    while n < 2000:
        g = segs[int(rng.integers(len(segs)))]
        table = speed_table(g, CFG.speeds, "restrict")
        if table.status == "skipped":
            continue
        p = plan_example(g, table, rng)
        counts["video"][p.video_order] += 1
        counts["audio"][p.audio_order] += 1
        counts["v1a2"][p.av_order[0]] += 1
        counts["v2a1"][p.av_order[1]] += 1
        n += 1
    for task, c in counts.items():
        fractions = [c[k] / n for k in range(3)]
        assert all(abs(f - 1 / 3) <= 0.05 for f in fractions), (task, fractions)


@pytest.mark.unit
def test_order_is_independent_of_speeds() -> None:
    """Within every speed pair of (v1, v2), the video order stays near uniform: speeds (clip
    lengths) do not give the order away."""
    g = geom(250)
    table = speed_table(g, CFG.speeds, "restrict")
    rng = np.random.default_rng(2)
    groups: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for _ in range(6000):
        p = plan_example(g, table, rng)
        groups[p.speed_class_video].append(p.video_order)
        groups[(9, 9)].append(p.audio_order)
    # x8 with x8 never occurs on a 10 s segment: two 5.12 s clips could not be apart
    assert (3, 3) not in groups and (3, 0) in groups and (0, 3) in groups
    for key, orders in groups.items():
        if len(orders) >= 200:
            freq = np.bincount(orders, minlength=3) / len(orders)
            assert np.abs(freq - 1 / 3).max() < 0.1, (key, freq)


@pytest.mark.unit
def test_speed_table_marginals_uniform_and_feasible() -> None:
    g = geom(250)
    table = speed_table(g, CFG.speeds, "restrict")
    assert table.status == "ok" and table.speeds == (1, 2, 4, 8)
    for j in range(4):
        marg = np.bincount(table.tuples[:, j], weights=table.probs, minlength=4)
        np.testing.assert_allclose(marg, 0.25, atol=1e-6)
    # every tuple whose clip groups (video and audio of one clip) both reach x8 is excluded:
    # two 5.12 s groups do not fit side by side in 10 s
    both8 = (table.tuples[:, :2].max(1) == 3) & (table.tuples[:, 2:].max(1) == 3)
    assert not both8.any()
    assert len(table.tuples) == 4**4 - 7 * 7


@pytest.mark.unit
@pytest.mark.parametrize(
    ("frames", "restrict_speeds", "restrict_status"),
    [(250, (1, 2, 4, 8), "ok"), (130, (1, 2, 4), "restricted"), (40, (1,), "restricted"),
     (16, (), "skipped")],
)  # fmt: skip
def test_short_segment_rules(
    frames: int, restrict_speeds: tuple[int, ...], restrict_status: str
) -> None:
    g = geom(frames)
    r = speed_table(g, CFG.speeds, "restrict")
    assert (r.speeds, r.status) == (restrict_speeds, restrict_status)
    s = speed_table(g, CFG.speeds, "skip")
    assert s.status == ("ok" if restrict_status == "ok" else "skipped")
    if r.status != "skipped":
        # the restricted table is balanced too: uniform marginals over its own speeds
        k = len(r.speeds)
        marg = np.bincount(r.tuples[:, 0], weights=r.probs, minlength=k)
        np.testing.assert_allclose(marg, 1 / k, atol=1e-6)
    else:
        with pytest.raises(ValueError, match="too short"):
            plan_example(g, r, np.random.default_rng(0))


@pytest.mark.unit
def test_valid_starts_reach_both_segment_edges() -> None:
    g = geom(250)
    for vs, sa in ((1, 1), (8, 1), (1, 8), (4, 2)):
        f = valid_starts(g, vs, sa)
        # independent bounds: video inside [0, N), audio (centred, length sa*L) inside the track
        half_a = Fraction(sa * g.audio_len, 2 * g.sample_rate)
        half_v = Fraction(g.clip_frames * vs, 2 * 25)
        lo = max(Fraction(0), half_a - half_v) * 25
        hi = min(Fraction(250 - 16 * vs), (Fraction(10) - half_a - half_v) * 25)
        assert int(f[0]) == int(np.ceil(float(lo))) and int(f[-1]) == int(np.floor(float(hi)))
    # sampled clips do touch the edges: over many draws a start of 0 and the last start occur
    rng = np.random.default_rng(3)
    table = speed_table(g, CFG.speeds, "restrict")
    starts = collections.defaultdict(set)
    for _ in range(4000):
        p = plan_example(g, table, rng)
        for c in p.clips:
            starts[(c.video_speed, c.audio_speed)].add(c.video_start)
    f11 = valid_starts(g, 1, 1)
    assert int(f11[0]) in starts[(1, 1)] and int(f11[-1]) in starts[(1, 1)]


@pytest.mark.unit
def test_audio_less_segment_is_planned_on_a_virtual_track() -> None:
    with_audio, without = geom(250), geom(250, audio=False)
    assert without.num_samples == with_audio.num_samples == 160000
    t1 = speed_table(with_audio, CFG.speeds, "restrict")
    t2 = speed_table(without, CFG.speeds, "restrict")
    np.testing.assert_array_equal(t1.tuples, t2.tuples)


@pytest.mark.unit
def test_exact_times_helpers() -> None:
    assert exact_fps(np.float32(29.97)) == Fraction(2997, 100)
    assert exact_fps(np.float32(30000 / 1001)) == Fraction(30000, 1001)
    assert audio_length(0.64, 16000) == 10240
    assert audio_length(0.5, 22050) == 11025  # 11025.0 exactly
    assert audio_length(0.01, 44100) == 441
