"""The ambience of the synthetic corpus, read back from real mp4 files on their own.

The rendered bed alone has the plan's spectral slope, also after playing it 4x faster the way the
pretext sampler does. In the decoded mp4s the hue of the sky gives the sidecar's exponent back,
and so does the slope of the quiet stretches above 2.5 kHz where the bed outweighs the impacts.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import av
import numpy as np
import pytest

from avtime.pipelines.synth.ambience import (
    AMBIENCE_RMS,
    BETA_MAX,
    HUE_SPAN,
    beta_of_color,
    noise_bed,
    sky_color,
)
from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus, plan_video
from avtime.pipelines.synth.render import render_audio
from tests.media import decode_mono


def _top_rows(path: Path) -> np.ndarray:
    """Mean RGB of the top 3 rows over the first 10 frames (the sky above any lamp or object)."""
    with av.open(str(path)) as c:
        rows = [f.to_ndarray(format="rgb24")[:3] for _, f in zip(range(10), c.decode(video=0))]
    return np.mean(np.stack(rows).reshape(-1, 3).astype(float), axis=0)


def spectral_exponent(x: np.ndarray, rate: float, lo: float = 150.0, hi: float = 4000.0) -> float:
    """beta of a power spectrum ~ 1 / f^beta, read from the quiet stretches between events: the
    Hann-windowed periodograms of the quietest fifth of the 2048-sample frames, averaged, then
    the median bin of each of 12 log-spaced bands between lo and hi (so the ringing partials of an
    impact do not count), fitted in log-log."""
    n = 2048
    frames = x[: len(x) // n * n].reshape(-1, n) * np.hanning(n)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = spec.sum(axis=1)
    psd = spec[energy <= np.percentile(energy, 20)].mean(axis=0)
    f = np.fft.rfftfreq(n, 1.0 / rate)
    edges = np.geomspace(lo, hi, 13)
    centres, power = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        k = (f >= a) & (f < b)
        if k.any():
            centres.append(np.log(np.sqrt(a * b)))
            power.append(np.log(np.median(psd[k])))
    return float(-np.polyfit(centres, power, 1)[0])


@pytest.mark.unit
def test_noise_bed_has_the_power_law_and_level_asked_for() -> None:
    rng = np.random.default_rng(0)
    for beta in (0.0, 0.8, 2.0):
        bed = noise_bed(rng, beta, 16000, 16000 * 8, rms=0.02)
        assert bed.shape == (2, 16000 * 8)
        assert np.allclose(bed.std(axis=1), 0.02)
        assert abs(np.corrcoef(bed)[0, 1]) < 0.05  # independent channels
        assert spectral_exponent(bed[0], 16000) == pytest.approx(beta, abs=0.1)


@pytest.mark.unit
def test_sky_hue_encodes_beta_and_bad_beta_is_refused() -> None:
    for beta in np.linspace(0.0, BETA_MAX, 9):
        for u in (0.0, 0.5, 0.99):
            rgb = sky_color(float(beta), u, 1.0 - u)
            hue = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]
            assert hue == pytest.approx(HUE_SPAN * beta / BETA_MAX, abs=1e-9)
            assert beta_of_color(rgb) == pytest.approx(beta, abs=1e-9)
    with pytest.raises(ValueError, match="beta must be in"):
        sky_color(BETA_MAX + 0.1, 0.5, 0.5)


@pytest.mark.unit
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_rendered_bed_has_the_plan_beta_at_1x_and_4x(index: int) -> None:
    """The soundtrack without its objects is the bed alone: its slope is the plan's beta, and
    still is after the sampler's 4x speed-up (runs of 4 samples averaged)."""
    cfg = SynthConfig(videos=4, seconds=6.0, duration_jitter=0.0, seed=5, lamps=False)
    plan = plan_video(cfg, index, index % cfg.classes, "train", f"v{index}")
    plan.episodes = []
    wave, rate = render_audio(plan).mean(axis=0), plan.sample_rate
    beta = plan.palette["ambience_beta"]
    assert wave.std() == pytest.approx(AMBIENCE_RMS / np.sqrt(2), rel=0.1)  # two independent chs
    assert spectral_exponent(wave, rate) == pytest.approx(beta, abs=0.12)
    fast = wave[: len(wave) // 4 * 4].reshape(-1, 4).mean(axis=1)
    assert spectral_exponent(fast, rate / 4, hi=0.3 * rate / 4) == pytest.approx(beta, abs=0.15)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth_ambience")
    cfg = SynthConfig(videos=4, seconds=6.0, duration_jitter=0.0, classes=4, seed=5, lamps=False)
    return out, generate_corpus(out, cfg, workers=1)


@pytest.mark.integration
def test_decoded_sound_and_sky_carry_the_sidecar_beta(corpus: tuple[Path, list[dict]]) -> None:
    """In the decoded files: the sky's hue gives beta back; above 2.5 kHz, in the quiet stretches,
    the bed sets the slope, which rises with beta."""
    out, metas = corpus
    betas, heard = [], []
    for m in metas:
        amb = m["ambience"]
        assert amb is not None and 0.0 <= amb["beta"] <= BETA_MAX
        assert amb["rms"] == AMBIENCE_RMS
        seen = beta_of_color(_top_rows(out / m["path"]))
        assert seen == pytest.approx(amb["beta"], abs=0.15), m["name"]
        wave, rate = decode_mono(out / m["path"])
        betas.append(amb["beta"])
        heard.append(spectral_exponent(wave, rate, lo=2500.0, hi=min(9000.0, 0.4 * rate)))
    assert np.ptp(betas) > 0.9  # seed 5 spans the range
    # AAC re-shapes the faint highs, so the decoded slopes are not beta itself; they keep its order.
    assert np.argsort(heard).tolist() == np.argsort(betas).tolist(), (betas, heard)
    assert np.corrcoef(betas, heard)[0, 1] > 0.9, (betas, heard)


def _quiet_high_power(wave: np.ndarray, rate: float) -> float:
    """Mean power above 2.5 kHz in the quietest fifth of the 2048-sample frames."""
    frames = wave[: len(wave) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = spec.sum(axis=1)
    high = np.fft.rfftfreq(2048, 1.0 / rate) >= 2500.0
    return float(spec[energy <= np.percentile(energy, 20)][:, high].mean())


@pytest.mark.integration
def test_ambience_off_leaves_only_a_quiet_floor(tmp_path: Path) -> None:
    """The same video with the bed off keeps its events but is far quieter above 2.5 kHz between
    them (a 0.004 pink floor against the bed)."""
    kw = {"videos": 1, "seconds": 4.0, "duration_jitter": 0.0, "seed": 5, "lamps": False}
    (on,) = generate_corpus(tmp_path / "on", SynthConfig(**kw), workers=1)
    (off,) = generate_corpus(tmp_path / "off", SynthConfig(**kw, ambience=False), workers=1)
    assert off["ambience"] is None and on["ambience"] is not None
    assert off["events"] == on["events"]
    quiet_on = _quiet_high_power(*decode_mono(tmp_path / "on" / on["path"]))
    quiet_off = _quiet_high_power(*decode_mono(tmp_path / "off" / off["path"]))
    assert quiet_on > 10 * quiet_off, (quiet_on, quiet_off)
