"""The learning loop's table: one appended row per seed, margins against random init."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.learning import HEADER, append_pretext, append_row, parse

pytestmark = pytest.mark.unit


def test_rows_append_with_margins(tmp_path: Path) -> None:
    out = tmp_path / "2026-12-05-learning.md"
    row = {"date": "2026-12-05", "label": "whole", "overrides": ["loss.w_vv=0.3"], "synth": "",
           "seed": 1, "steps": 1500, "train_min": 10.04,
           "trained": {"action": 0.65, "retrieval": 0.425},
           "random": {"action": 0.175, "retrieval": 0.275}}  # fmt: skip
    append_row(out, row)
    append_row(out, {**row, "seed": 2, "synth": "--no-lamps"})
    text = out.read_text()
    assert text.count(HEADER) == 1 and text.startswith("# Learning loop, 2026-12-05")
    rows = [line for line in text.splitlines() if line.startswith("| 2026-12-05")]
    assert len(rows) == 2
    assert "| 65.0 (17.5) | +47.5 | 42.5 (27.5) | +15.0 |" in rows[0]
    assert "`loss.w_vv=0.3`" in rows[0] and "`--no-lamps`" in rows[1] and "| 10.0 |" in rows[0]


def test_parse_defaults() -> None:
    args = parse(["--set", "loss.w_va=0.5", "--seeds", "0,1"])
    assert args.overrides == ["loss.w_va=0.5"] and args.seeds == "0,1" and args.steps == 1500
    assert args.eval_videos == 200


def test_pretext_rows_mark_every_head_under_the_bar(tmp_path: Path) -> None:
    """Rows of the pretext-head accuracy on held-out videos: a head under the learning bar
    (chance + 30 points) and an a->v R@1 under 5x chance get a star."""
    out = tmp_path / "2026-12-05-learning-pretext.md"
    row = {"date": "2026-12-05", "label": "sand", "seed": 0}
    heads = {
        "order_video": {"accuracy": 0.64, "chance": 1 / 3},  # 0.633 is the bar
        "order_av": {"accuracy": 0.62, "chance": 1 / 3},
        "speed_video": {"accuracy": 0.97, "chance": 1 / 3},
    }
    append_pretext(out, row, {"heads": heads, "retrieval_a2v": {"r1": 0.2, "x_chance": 4.9}})
    append_pretext(
        out, {**row, "seed": 1}, {"heads": heads, "retrieval_a2v": {"r1": 0.3, "x_chance": 7.2}}
    )
    lines = out.read_text().splitlines()
    assert "| label | seed | order_av | order_video | speed_video | a->v R@1 (x chance) |" in lines
    assert "| sand | 0 | 0.620* | 0.640 | 0.970 | 0.200 (4.9x*) |" in lines
    assert "| sand | 1 | 0.620* | 0.640 | 0.970 | 0.300 (7.2x) |" in lines
