"""The contact sheet explains itself: a title, a legend for clips and labels, axes with units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.pretext.contact_sheet import render_sheet, save_sheet, spectrogram

pytestmark = pytest.mark.unit


def _sample(n: int = 2, t: int = 4, s: int = 16, length: int = 1600) -> dict[str, np.ndarray]:
    video = np.zeros((n, 2, t, s, s, 3), np.uint8)
    video[:, 0, ..., 0] = 255  # v1 red, v2 blue
    video[:, 1, ..., 2] = 255
    return {
        "video": video, "audio": np.zeros((n, 2, length), np.float32),
        "video_t": np.tile(np.linspace(1.0, 1.6, t), (n, 2, 1)),
        "audio_span": np.tile([0.9, 1.7], (n, 2, 1)), "sample_rate": np.array(8000),
        "label_video_speed": np.zeros((n, 2), np.int64), "label_audio_speed": np.full((n, 2), 2),
        "label_video_reverse": np.zeros((n, 2), np.int64), "label_audio_reverse": np.ones((n, 2), np.int64),
        "label_video_order": np.array([0, 1]), "label_audio_order": np.array([2, 0]),
        "label_av_order": np.array([[0, 1], [2, 2]]),
    }  # fmt: skip


def test_title_legend_and_axes_with_units() -> None:
    fig = render_sheet(_sample(), (1, 2, 4, 8))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert fig.get_suptitle() == "What the model sees: 2 pretext examples"
    legend = texts[0]
    for word in (
        "v1, v2",
        "a1, a2",
        "x1/x2/x4/x8",
        "forward/reverse",
        "first before second",
        "overlap",
    ):
        assert word in legend, word
    assert "example 1.  order (v1, v2): first before second;  (a1, a2): overlap" in texts[1]
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert "v1: x1 forward, frames from source t = 1.00 .. 1.60 s" in titles
    assert "a2: x4 reverse, covers source t = 0.90 .. 1.70 s" in titles
    labels = {(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes}
    assert ("clip time (s)", "amplitude") in labels
    assert ("clip time (s)", "frequency (kHz)") in labels
    assert ("source time of each frame (s)", "") in labels
    strip = next(ax for ax in fig.axes if ax.get_xlabel().startswith("source time"))
    assert [t.get_text() for t in strip.get_xticklabels()] == ["1.00", "1.20", "1.40", "1.60"]
    spec = next(ax for ax in fig.axes if ax.get_ylabel() == "frequency (kHz)")
    assert spec.get_ylim() == (0.0, 4.0)  # Nyquist of 8 kHz audio
    wave = next(ax for ax in fig.axes if ax.get_ylabel() == "amplitude")
    assert wave.get_xlim() == (0.0, 0.2)  # 1600 samples at 8 kHz


def test_png_shows_the_frames_and_reads_big_enough(tmp_path: Path) -> None:
    path = save_sheet(_sample(), (1, 2, 4, 8), tmp_path / "sheet.png")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    colours = set(map(tuple, pixels.reshape(-1, 3).tolist()))
    assert (255, 0, 0) in colours and (0, 0, 255) in colours
    assert pixels.shape[1] >= 1200  # 13 in at 100 dpi: 10-pt text stays readable


def test_spectrogram_puts_a_tone_in_its_frequency_bin() -> None:
    sr, f = 8000, 1000.0
    t = np.arange(4000) / sr
    spec = spectrogram(np.sin(2 * np.pi * f * t).astype(np.float32))
    assert spec.shape[0] == 129
    assert int(np.argmax(spec.mean(axis=1))) == round(f / (sr / 256))  # bin 32
