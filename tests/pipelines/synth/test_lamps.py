"""Dusk lamps of the synthetic corpus, read back from real mp4 files on their own.

The pixels at each lamp's sidecar position are read from the decoded frames, and the tones from
the spectrum of the decoded audio; the count of lit lamps seen in the pixels must grow with time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus, plan_video
from avtime.pipelines.synth.lamps import (
    FLASH_LIFE,
    LAMP_PERIOD_S,
    TONE_FADE_S,
    draw_lamps,
    lamp_color,
)
from tests.media import decode_mono, decode_rgb


@pytest.fixture(scope="module")
def lamp_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth_lamps")
    cfg = SynthConfig(videos=3, seconds=5.0, duration_jitter=0.0, classes=3, seed=11)
    return out, generate_corpus(out, cfg, workers=1)


def _lit_mask(frames: np.ndarray, lamps: dict, fps: float) -> np.ndarray:
    """[N frames, K lamps]: the 3x3 patch at the lamp centre is within 40 of the lamp colour
    (median over the patch, so a passing object rarely fools it)."""
    color = np.asarray(lamps["color"])
    out = np.zeros((len(frames), len(lamps["items"])), bool)
    for k, lamp in enumerate(lamps["items"]):
        x, y = int(round(lamp["x_px"])), int(round(lamp["y_px"]))
        patch = frames[:, y - 1 : y + 2, x - 1 : x + 2].reshape(len(frames), -1, 3)
        out[:, k] = np.linalg.norm(np.median(patch, axis=1) - color, axis=1) < 40
    return out


@pytest.mark.integration
def test_lamps_light_up_in_the_pixels_when_the_sidecar_says(
    lamp_corpus: tuple[Path, list[dict]],
) -> None:
    out, metas = lamp_corpus
    for m in metas:
        frames, fps, lamps = decode_rgb(out / m["path"]), m["fps"], m["lamps"]
        assert len(lamps["items"]) == round(m["duration_s"] / LAMP_PERIOD_S)
        lit = _lit_mask(frames, lamps, fps)
        t = np.arange(len(frames)) / fps
        for k, lamp in enumerate(lamps["items"]):
            before = t < lamp["t_on"] - 0.05
            steady = t > lamp["t_on"] + FLASH_LIFE + 0.05
            if steady.any():
                assert lit[steady, k].mean() >= 0.9, (m["name"], k)
            if before.any():
                assert lit[before, k].mean() <= 0.1, (m["name"], k)
        # The count of lit lamps read from the pixels grows with time, as the sidecar says.
        count = lit.sum(axis=1)
        expected = np.array(
            [sum(ti > lp["t_on"] + FLASH_LIFE for lp in lamps["items"]) for ti in t]
        )
        assert np.mean(np.abs(count - expected) <= 1) >= 0.95
        assert count[-5:].mean() > count[:5].mean() + 3


@pytest.mark.integration
def test_lamp_tones_sound_from_their_time_on(lamp_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = lamp_corpus
    on_checked = off_checked = 0
    for m in metas:
        audio, rate = decode_mono(out / m["path"])
        items = m["lamps"]["items"]
        n = int(0.2 * rate)
        win = np.hanning(n)
        freqs = np.fft.rfftfreq(n, 1.0 / rate)
        impacts = np.array([e["t"] for e in m["events"] if e["kind"] == "impact"] + [-9.0])
        for j0 in range(0, len(audio) - n, n // 2):
            t0, t1 = j0 / rate, (j0 + n) / rate
            if np.any((impacts > t0 - 0.6) & (impacts < t1)):
                continue  # an impact's partials could sit on a lamp tone: read quiet windows
            mag = np.abs(np.fft.rfft(audio[j0 : j0 + n] * win))
            floor = np.median(mag[(freqs > 500) & (freqs < 2500)])
            for lamp in items:
                peak = mag[np.argmin(np.abs(freqs - lamp["tone_hz"]))]
                if t0 > lamp["t_on"] + TONE_FADE_S:  # on for the whole window
                    assert peak > 8 * floor, (m["name"], lamp, t0)
                    on_checked += 1
                elif t1 < lamp["t_on"]:  # not on yet
                    assert peak < 4 * floor, (m["name"], lamp, t0)
                    off_checked += 1
    assert on_checked >= 5 and off_checked >= 5, (on_checked, off_checked)


@pytest.mark.unit
def test_lamp_plan_is_steady_pale_and_tied_to_its_hue() -> None:
    rng = np.random.default_rng(0)
    for duration in (2.0, 6.0, 12.5):
        lamps = draw_lamps(rng, duration, aspect=1.4)
        t_on = np.array([lp.t_on for lp in lamps.lamps])
        assert len(t_on) == max(2, round(duration / LAMP_PERIOD_S))
        assert np.all(np.diff(t_on) > 0) and 0 <= t_on[0] and t_on[-1] < duration
        # Evenly spaced with jitter: lamp k comes on in the k-th slice of the video.
        slice_ = duration / len(t_on)
        assert np.all(np.floor(t_on / slice_) == np.arange(len(t_on)))
        assert min(lamps.color) >= 165
        assert lamps.color == lamp_color(lamps.hue)
        assert lamps.base_hz == pytest.approx(600.0 * 2.0**lamps.hue)
        tones = [lp.tone_hz for lp in lamps.lamps]
        assert np.all(np.diff(tones) > 0) and tones[0] == pytest.approx(lamps.base_hz)
        cells = {(round(lp.x, 1), round(lp.y, 1)) for lp in lamps.lamps}
        assert len(cells) == len(lamps.lamps)


@pytest.mark.unit
def test_no_lamps_option_leaves_them_out(tmp_path: Path) -> None:
    plan = plan_video(SynthConfig(lamps=False), 0, 0, "train", "v")
    assert plan.lamps is None
    metas = generate_corpus(tmp_path, SynthConfig(videos=1, seconds=1.0, lamps=False), workers=1)
    assert metas[0]["lamps"] is None
    assert json.loads((tmp_path / "meta" / f"{metas[0]['name']}.json").read_text())["lamps"] is None
