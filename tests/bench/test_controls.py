"""bench.controls on a tiny real synth corpus: the features it reads and the table it prints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus
from bench import controls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 two-second sand videos, 4 classes, 30 % test."""
    out = tmp_path_factory.mktemp("controls") / "corpus"
    cfg = SynthConfig(videos=12, seconds=2.0, classes=4, test_fraction=0.3, seed=23, world="sand")
    generate_corpus(out, cfg, workers=1)
    return out


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_middle_frame_is_the_frame_nearest_the_middle(corpus: Path) -> None:
    for row in _rows(corpus)[:3]:
        path = str(corpus / row["path"])
        meta = json.loads((corpus / "meta" / f"{Path(path).stem}.json").read_text())
        with av.open(path) as c:
            frames = list(c.decode(video=0))  # every frame, no seeking
        times = np.array([float(f.time) for f in frames])
        middle = meta["num_frames"] / meta["fps"] / 2  # the sidecar's duration
        want = frames[int(np.argmin(np.abs(times - middle)))]
        got, t = controls.middle_frame(path, 24)
        assert t == pytest.approx(float(want.time))
        expected = want.reformat(width=24, height=24, format="rgb24", interpolation="AREA")
        assert got.shape == (24, 24, 3) and got.dtype == np.uint8
        assert np.array_equal(got, expected.to_ndarray())


def test_the_sound_level_is_that_of_the_decoded_mono_soundtrack(corpus: Path) -> None:
    path = str(corpus / _rows(corpus)[0]["path"])
    with av.open(path) as c:
        rate = c.streams.audio[0].rate
        to_packed = av.AudioResampler(format="flt", layout="stereo", rate=rate)
        stereo = np.concatenate(
            [
                g.to_ndarray().reshape(-1, 2)
                for f in c.decode(audio=0)
                for g in to_packed.resample(f)
            ]
        ).astype(np.float64)  # [N, 2]
    mono = stereo.mean(axis=1)
    samples, sr = controls.soundtrack(path)
    assert sr == rate and samples.shape == mono.shape
    np.testing.assert_allclose(samples, mono, atol=1e-6)
    level, centroid = controls.sound_level(samples, sr)
    assert level == pytest.approx(20 * np.log10(np.sqrt(np.mean(mono**2))), abs=1e-4)
    assert 0 < centroid < sr / 2
    f = controls.video_features(path)
    assert (f.level_db, f.centroid_hz) == pytest.approx((level, centroid))


def test_sound_level_of_known_signals() -> None:
    rate = 48_000
    t = np.arange(rate * 2) / rate
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    level, centroid = controls.sound_level(tone, rate)
    assert level == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1e-3)
    assert centroid == pytest.approx(1000, abs=15)
    two = 0.25 * (np.sin(2 * np.pi * 500 * t) + np.sin(2 * np.pi * 2000 * t))
    assert controls.sound_level(two, rate)[1] == pytest.approx(1250, abs=20)
    assert controls.sound_level(np.zeros(100), rate) == (controls.SILENCE_DB, 0.0)
    assert controls.sound_level(np.zeros(0), 0) == (controls.SILENCE_DB, 0.0)


def test_controls_score_the_test_split_and_print_a_table(
    corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(corpus)
    test = {str(corpus / r["path"]) for r in rows if r["split"] == "test"}
    results = controls.run_controls(str(corpus), workers=2)
    assert list(results) == list(controls.CONTROLS)
    for r in results.values():
        assert set(r.correct) == test and r.top1.n == len(test)
        assert r.top1.k == sum(r.correct.values()) and r.top1.low <= r.top1.value <= r.top1.high
        assert r.c in controls.CS or r.c == 1.0
    assert controls.main([str(corpus), "--json", "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| control | test top-1 % [95 % interval]")
    assert [line.split(" | ")[0] for line in out[2:6]] == [
        "| still frame", "| sound level", "| both", "| chance"
    ]  # fmt: skip
    summary = json.loads(out[-1])
    assert [s["name"] for s in summary] == list(controls.CONTROLS)
    assert all(s["n"] == len(test) and 0 <= s["low"] <= s["top1"] <= s["high"] for s in summary)


def test_a_folder_without_a_test_split_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert controls.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.controls: ") and len(err.strip().splitlines()) == 1
