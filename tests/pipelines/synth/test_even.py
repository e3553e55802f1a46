"""The even world: the sand studio, with classes (paces) that no still frame or sound level shows.

Checked against independent computations: a paced episode's path against the unpaced one, the
ring time measured from a rendered impact's envelope, the soundtrack's level against the drawn
level, and the decoded ground strip of real mp4 files getting lighter with time under the one law.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from avtime.pipelines.synth import even
from avtime.pipelines.synth.ambience import QUIET_RMS
from avtime.pipelines.synth.corpus import CLASSES, SynthConfig, generate_corpus, plan_video
from avtime.pipelines.synth.render import impact_sound, render_audio
from avtime.pipelines.synth.sand import studio_palette
from avtime.pipelines.synth.scene import Event, simulate_episode
from tests.media import decode_rgb


@pytest.mark.unit
def test_the_one_law_dries_the_sand_and_shortens_and_brightens_the_ring() -> None:
    t = np.array([0.0, 1.0, 3.0, 6.0, 30.0])
    d = even.dryness(t)
    assert d[0] == 0 and np.all(np.diff(d) > 0) and d[-1] < 1
    assert d[3] == pytest.approx(1 - math.exp(-1))  # at t = tau
    assert even.ring_time(0.3, 0.0) == pytest.approx(0.3)
    assert even.ring_time(0.3, 6.0) == pytest.approx(0.3 * (1 - even.RING_SHORTEN * d[3]))
    assert even.partial_gain(0, 9.0) == 1.0 and even.partial_gain(3, 6.0) > even.partial_gain(3, 1)
    dark, light = even.ground_color(0.0), even.ground_color(12.0)
    assert np.all(light > dark)


@pytest.mark.unit
def test_ring_time_follows_the_sand_not_the_class() -> None:
    """Restitution still follows the class; the wet-sand ring time has one spread for all."""
    rng = np.random.default_rng(0)
    for mclass in CLASSES[:4]:
        objs = [even.even_object(rng, mclass) for _ in range(300)]
        decay = np.array([o.decay_s for o in objs])
        lo, hi = even.BASE_RING_S
        assert decay.min() >= lo and decay.max() <= hi
        assert abs(decay.mean() - (lo + hi) / 2) < 0.02  # uniform on the same range
        e = np.array([o.restitution for o in objs])
        assert e.min() >= mclass.restitution[0] and e.max() <= mclass.restitution[1]


def _envelope_decay_s(wave: np.ndarray, sr: int) -> float:
    """The 1/e decay time (s) of a wave's fundamental, from the log of its 5 ms RMS frames."""
    hop = int(0.005 * sr)
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    t = (np.arange(len(rms)) + 0.5) * hop / sr
    keep = (t > 0.03) & (rms > rms.max() * 1e-3)
    slope = np.polyfit(t[keep], np.log(rms[keep]), 1)[0]
    return float(-1.0 / slope)


@pytest.mark.unit
def test_a_later_impact_rings_shorter_under_the_law() -> None:
    sr = 48000
    obj = even.even_object(np.random.default_rng(1), CLASSES[0])
    obj.pitch_hz = 400.0
    waves = {}
    for t in (0.2, 8.0):
        ev = Event(t, "impact", 1.0, 0.07, 0.8)
        _, waves[t] = impact_sound(
            np.random.default_rng(2), obj, ev, sr, int((t + 3) * sr), drying=True
        )
    early, late = (_envelope_decay_s(waves[t], sr) for t in (0.2, 8.0))
    # the fundamental dominates the envelope after the click: its decay is the ring time
    assert early == pytest.approx(even.ring_time(obj.decay_s, 0.2), rel=0.15)
    assert late == pytest.approx(even.ring_time(obj.decay_s, 8.0), rel=0.15)
    assert late < 0.75 * early


@pytest.mark.unit
def test_every_soundtrack_has_its_drawn_level_whatever_the_class() -> None:
    cfg = SynthConfig(videos=8, seconds=3.0, classes=4, seed=11, world="even")
    lo, hi = even.LEVEL_RMS
    for i in range(8):
        plan = plan_video(cfg, i, i % 4, "train", f"v{i}")
        audio = render_audio(plan).astype(np.float64)
        impacts = any(ev.kind == "impact" for ep in plan.episodes for ev in ep.events)
        want = even.level_of(plan.audio_seed) if impacts else 0.0
        assert lo <= even.level_of(plan.audio_seed) <= hi
        rms = float(np.sqrt((audio**2).mean()))
        # independent: impacts and the quiet floor are uncorrelated, so their powers add
        assert rms == pytest.approx(math.hypot(want, QUIET_RMS), rel=0.1)
        assert plan.palette == studio_palette() and plan.lamps is None


@pytest.mark.integration
def test_the_decoded_ground_strip_lightens_with_time(tmp_path: Path) -> None:
    cfg = SynthConfig(videos=2, seconds=6.0, duration_jitter=0.0, classes=2, seed=3, world="even")
    metas = generate_corpus(tmp_path, cfg, workers=1)
    for meta in metas:
        frames = decode_rgb(tmp_path / meta["path"])
        strip = frames[:, meta["floor_y_px"] + 2 :].astype(np.float64).mean(axis=(1, 2, 3))
        # the same law in every video: the strip's mean follows the dryness's shape
        want = even.dryness(np.arange(len(frames)) / meta["fps"])
        assert np.corrcoef(strip, want)[0, 1] > 0.99
        assert strip[-1] - strip[0] > 15  # grey levels: wet to dry is visible after the codec
        assert meta["marks"] is None and meta["world"] == "even"
        assert even.LEVEL_RMS[0] <= meta["sound_level_rms"] <= even.LEVEL_RMS[1]


@pytest.mark.unit
def test_a_paced_episode_keeps_its_path_and_its_share_of_time_at_each_place() -> None:
    base = simulate_episode(np.random.default_rng(4), CLASSES[1], even.even_object(
        np.random.default_rng(5), CLASSES[1]), 0.0, 1.5)  # fmt: skip
    pace, t0 = 1.22, 0.3
    fast = even.paced(base, pace, t0)
    tau = np.linspace(base.t_start, base.t_end - 1e-6, 400)
    _, bx, by = base.positions(tau)
    vis, fx, fy = fast.positions(t0 + tau / pace)
    assert vis.all()
    np.testing.assert_allclose(fx, bx, atol=1e-9)  # the same place at the paced time
    np.testing.assert_allclose(fy, by, atol=1e-9)
    assert fast.t_end - fast.t_start == pytest.approx((base.t_end - base.t_start) / pace)
    assert [e.t for e in fast.events] == pytest.approx([t0 + e.t / pace for e in base.events])
    assert [e.strength for e in fast.events] == [e.strength for e in base.events]


@pytest.mark.unit
def test_classes_are_paces_and_every_class_draws_every_launch() -> None:
    paces = [p for _, p in even.PACES]
    assert paces == sorted(paces) and paces[-1] < 2 * paces[0]  # 2x playback is no class's pace
    cfg = SynthConfig(videos=8, seconds=6.0, classes=4, seed=2, world="even")
    assert cfg.class_names == [n for n, _ in even.PACES]
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(world="even", classes=5)
    for c, (_, pace) in enumerate(even.PACES):
        plans = [plan_video(cfg, i, c, "train", f"v{i}") for i in range(10)]
        assert {p.pace for p in plans} == {pace}
        launched = {(e.obj.restitution < 0.3) for p in plans for e in p.episodes}
        assert launched == {True, False}  # slides (restitution < 0.3) and bouncers in each class
