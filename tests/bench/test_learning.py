"""The learning loop's table: one appended row per seed, margins against random init."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.learning import (
    HEADER,
    append_controls,
    append_pretext,
    append_row,
    append_summary,
    parse,
)
from bench.protocol import Entry, cell
from bench.stats import accuracy, paired_videos

pytestmark = pytest.mark.unit


def _row(seed: int, trained: float, random: float, **extra: object) -> dict[str, object]:
    vids = [f"/c/v{i}.mp4" for i in range(40)]
    right = lambda acc: {v: i < round(acc * 40) for i, v in enumerate(vids)}  # noqa: E731
    return {"date": "2026-12-05", "label": "whole", "overrides": ["loss.w_vv=0.3"], "synth": "",
            "on": "val s300", "seed": seed, "steps": 1500, "train_min": 10.04,
            "trained": {"action": trained, "retrieval": 0.425, "n": 40, "queries": 40,
                        "videos": right(trained)},
            "random": {"action": random, "retrieval": 0.275, "n": 40, "queries": 40,
                       "videos": right(random)}} | extra  # fmt: skip


def test_rows_append_with_intervals_and_paired_margins(tmp_path: Path) -> None:
    out = tmp_path / "2026-12-05-learning.md"
    append_row(out, _row(1, 0.65, 0.175))
    append_row(out, _row(2, 0.65, 0.175, synth="--no-lamps"))
    text = out.read_text()
    assert text.count(HEADER) == 1 and text.startswith("# Learning loop, 2026-12-05")
    rows = [line for line in text.splitlines() if line.startswith("| 2026-12-05")]
    assert len(rows) == 2
    cells = rows[0].split(" | ")
    assert cells[4:8] == ["val s300", "1", "1500", "10.0"]
    assert cells[8] == accuracy(26, 40).cell() and cells[9] == accuracy(7, 40).cell()
    # 26 vs 7 of the same 40 videos, the random init's right ones among the trained's
    assert cells[10] == paired_videos(_row(1, 0.65, 0.175)["trained"]["videos"],  # type: ignore[index]
                                      _row(1, 0.65, 0.175)["random"]["videos"]).cell()  # type: ignore[index]  # fmt: skip
    assert cells[10].startswith("+47.5 [") and "(19/0 of 40)" in cells[10]
    assert cells[11] == accuracy(17, 40).cell() and cells[13] == "+15.0 |"
    assert "`loss.w_vv=0.3`" in rows[0] and "`--no-lamps`" in rows[1]
    assert len(cells) == HEADER.splitlines()[0].count(" | ") + 1


def test_controls_rows_and_the_paired_summary(tmp_path: Path) -> None:
    out = tmp_path / "t.md"
    still = Entry(name="still frame", top1=(0.5,), n=40, seeded=False)
    sound = Entry(name="sound level", top1=(0.3,), n=40, seeded=False)
    append_controls(out, "2026-12-05", "--world sand", "test s9", [still, sound])
    append_controls(out, "2026-12-05", "--world sand", "test s9", [still, sound])  # once
    lines = out.read_text().splitlines()
    controls = [line for line in lines if "| control: " in line]
    assert len(controls) == 2 and "| `--world sand` | test s9 | - |" in controls[0]
    assert f"| {cell([0.5], 40)} |" in controls[0]
    rows = [_row(0, 0.65, 0.4), _row(1, 0.70, 0.45), _row(2, 0.60, 0.50)]
    text = append_summary(out, "whole", rows, [still, sound])
    assert "Paired differences of `whole` on val s300, seeds 0,1,2:" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| whole − random init",
        "| whole − still frame",
        "| random init − still frame",
    ]
    assert "| +20.0 [" in table[1] and "(3 seeds)" in table[1]  # 0.25, 0.25, 0.10
    assert table[2].split(" | ")[1].startswith("+15.0 [")  # 0.65, 0.70, 0.60 against 0.5
    assert table[1].split(" | ")[2].startswith("+25.0 [")  # seed 0 per video: 26 vs 16 of 40
    assert text in out.read_text()
    append_row(out, _row(3, 0.55, 0.25))  # after a summary: the row still joins the first table
    lines = out.read_text().splitlines()
    first = lines.index(next(line for line in lines if line.startswith("|")))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    assert lines[end - 1].startswith("| 2026-12-05 | whole |") and "| 3 |" in lines[end - 1]
    assert sum(line.startswith("| 2026-12-05 | whole |") for line in lines) == 1


def test_parse_defaults() -> None:
    args = parse(["--set", "loss.w_va=0.5", "--seeds", "0,1"])
    assert args.overrides == ["loss.w_va=0.5"] and args.seeds == "0,1" and args.steps == 1500
    assert args.eval_videos == 200 and args.test_videos == 400 and args.on == "val"


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
