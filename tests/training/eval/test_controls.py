"""The probe's controls in the package (`training.eval.controls`) on hand-made videos whose
middle frame gives the class away, and how `avtime demo` prints them beside the probe."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avtime.training import experiment as exp
from avtime.training.cli.commands.demo import probe_lines
from avtime.training.eval import controls

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 210)}
RATE = 16_000


def write_video(path: Path, rgb: Sequence[int], tone_hz: float) -> None:
    """0.5 s of one solid colour (32x32, 8 fps) with a mono tone of `tone_hz`."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=8)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        aus = c.add_stream("aac", rate=RATE, layout="mono")
        frame = np.empty((32, 32, 3), np.uint8)
        frame[:] = rgb
        for i in range(4):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 8)
            c.mux(vs.encode(vf))
        t = np.arange(RATE // 2) / RATE
        tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)[None, :]
        af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        af.sample_rate, af.pts = RATE, 0
        c.mux(aus.encode(af))
        c.mux(vs.encode())
        c.mux(aus.encode())


@pytest.fixture(scope="module")
def coloured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 6 videos (4 train, 2 test): the colour is the class, the tone is random."""
    root = tmp_path_factory.mktemp("coloured")
    rng = np.random.default_rng(5)
    rows = []
    for label, rgb in COLOURS.items():
        for i in range(6):
            name = f"{label}{i}.mp4"
            jitter = tuple(int(v + rng.integers(-10, 11)) for v in rgb)
            write_video(root / name, jitter, float(rng.uniform(200, 4000)))
            rows.append({"path": name, "label": label, "split": "test" if i >= 4 else "train"})
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.integration
def test_a_still_frame_that_gives_the_class_away_scores_every_test_video(coloured: Path) -> None:
    test = {str(coloured / f"{c}{i}.mp4") for c in COLOURS for i in (4, 5)}
    scores = controls.run_controls(str(coloured), ("still frame", "sound level"), workers=2)
    assert list(scores) == ["still frame", "sound level"]
    still, sound = scores["still frame"], scores["sound level"]
    assert (still.k, still.n, still.top1) == (6, 6, 1.0) and all(still.correct.values())
    assert set(still.correct) == set(sound.correct) == test
    assert sound.n == 6 and sound.k == sum(sound.correct.values()) and 0 <= sound.top1 <= 1
    assert still.summary() == {"top1": 1.0, "k": 6, "n": 6, "C": still.c}
    assert exp.control_metrics(scores) == {
        "control_still_frame_top1": 1.0, "control_sound_level_top1": sound.top1
    }  # fmt: skip


@pytest.mark.unit
def test_unknown_controls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="controls must be some of"):
        exp.Probe(root=tmp_path, cache=tmp_path, controls=("still life",))
    assert exp.probe_controls(exp.Probe(root=tmp_path, cache=tmp_path)) == {}


@pytest.mark.unit
def test_the_demo_prints_the_controls_beside_the_probe() -> None:
    probe = {
        "trained": 0.6, "random": 0.45, "chance": 0.25, "test_videos": 60,
        "controls": {"still_frame": {"top1": 0.5, "k": 30, "n": 60, "C": 1.0},
                     "sound_level": {"top1": 0.7, "k": 42, "n": 60, "C": 10.0}},
    }  # fmt: skip
    lines = probe_lines(probe, 200)
    assert lines[0] == "linear probe on 200 labelled videos, top-1 on the 60 test videos:"
    assert [line.split()[0] for line in lines[1:]] == ["trained", "random", "still", "sound",
                                                       "chance"]  # fmt: skip
    assert lines[2].startswith("  random init   45.0 %  (trained +15.0 points)")
    assert lines[3].startswith("  still frame   50.0 %  (trained +10.0 points; ")
    assert lines[4].startswith("  sound level   70.0 %  (trained -10.0 points; ")
    assert lines[5] == "  chance        25.0 %"
    del probe["controls"]["sound_level"]
    assert len(probe_lines(probe, 200)) == 5
