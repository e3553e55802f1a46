"""The paper preset's audio clip length: a switchable choice, and the trade-off its docs state
(training/config.py paper(), docs/training.md "Presets")."""

from __future__ import annotations

import pytest

from avtime.pipelines.pretext.plan import segment_geometry, speed_table
from avtime.training.config import load_run_config, paper

pytestmark = pytest.mark.unit


def table_on_10s_segment(
    audio_seconds: float, seconds: int = 10
) -> tuple[str, tuple[int, ...], int]:
    """(status, speeds kept, feasible speed tuples) of a 10 s (or `seconds`), 25 fps, 16 kHz
    segment."""
    cfg = load_run_config("paper", [f"data.pretext.audio_seconds={audio_seconds}"]).data.pretext
    geom = segment_geometry(
        num_frames=25 * seconds, fps=25.0, sample_rate=16000, num_samples=16000 * seconds, cfg=cfg
    )
    table = speed_table(geom, cfg.speeds, cfg.short_segment_rule)
    return table.status, table.speeds, len(table.tuples)


def test_the_default_is_the_span_of_a_16_frame_clip_and_can_be_switched() -> None:
    pre = paper().data.pretext
    assert pre.audio_seconds == pytest.approx(pre.clip_frames / 25.0) == 0.64
    cfg = load_run_config("paper", ["data.pretext.audio_seconds=2.0"])
    assert cfg.data.pretext.audio_seconds == 2.0
    assert cfg.data.pretext.speeds == pre.speeds and cfg.model == paper().model


def test_longer_audio_costs_speed_tuples_then_x8_on_10s_segments() -> None:
    assert table_on_10s_segment(0.64) == ("ok", (1, 2, 4, 8), 207)
    assert table_on_10s_segment(1.0) == ("ok", (1, 2, 4, 8), 167)
    assert table_on_10s_segment(1.28)[:2] == ("restricted", (1, 2, 4))
    assert table_on_10s_segment(2.0)[:2] == ("restricted", (1, 2, 4))
    assert table_on_10s_segment(2.0, seconds=20)[:2] == ("ok", (1, 2, 4, 8))
