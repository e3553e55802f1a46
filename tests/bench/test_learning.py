"""The learning loop's table: one appended row per seed, margins against random init."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.learning import HEADER, append_row, parse

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
