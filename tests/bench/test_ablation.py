"""The ablation's tables: every variant, random init and the controls, with intervals and
paired differences (from cached per-run results, no training)."""

from __future__ import annotations

import pytest

from avtime.training.experiment import ACTION_VIDEOS
from bench.ablation_bench import differences, parse, table
from bench.protocol import Entry, cell

pytestmark = pytest.mark.unit
VIDS = [f"/w/evalset/videos/v{i}.mp4" for i in range(60)]


def _run(top1: float, r1: float, audio: float) -> dict[str, object]:
    right = {v: i < round(top1 * 60) for i, v in enumerate(VIDS)}
    return {"action": {"top1": top1, "test_videos": 60},
            "retrieval": {"R@1": r1, "R@5": 0.9, "R@10": 1.0, "R@20": 1.0, "queries": 60},
            "audio": {"mean_accuracy": audio}, ACTION_VIDEOS: right}  # fmt: skip


RESULTS = {
    "full": [_run(0.70, 0.8, 0.6), _run(0.65, 0.75, 0.55)],
    "temporal-only": [_run(0.60, 0.5, 0.5), _run(0.55, 0.45, 0.5)],
    "random init": [_run(0.45, 0.4, 0.5), _run(0.40, 0.45, 0.45)],
}
CONTROLS = [
    Entry(name="still frame", top1=(0.5,), n=60, seeded=False,
          videos=({v: i % 2 == 0 for i, v in enumerate(VIDS)},)),
    Entry(name="sound level", top1=(0.35,), n=60, seeded=False),
]  # fmt: skip


def test_the_table_has_every_variant_random_init_and_the_controls() -> None:
    lines = table(RESULTS, CONTROLS).splitlines()
    names = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert names == ["full", "temporal-only", "random init", "control: still frame",
                     "control: sound level"]  # fmt: skip
    full = lines[2].split(" | ")
    assert full[2] == cell([0.70, 0.65], 60) and full[3] == cell([0.8, 0.75], 60)
    assert full[2].startswith("67.5 ± 3.5 [")
    still = lines[5].split(" | ")
    assert still[2] == cell([0.5], 60) and still[3:] == ["-"] * 4 + ["- |"]


def test_differences_are_paired_across_seeds_and_per_video() -> None:
    lines = differences(RESULTS, CONTROLS, 0).splitlines()
    pairs = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert pairs == [
        "full − temporal-only", "full − random init", "full − still frame",
        "temporal-only − random init", "temporal-only − still frame",
        "random init − still frame",
    ]  # fmt: skip
    full_random = lines[3].split(" | ")
    assert full_random[1].startswith("+25.0 [") and full_random[1].endswith("(2 seeds)")
    assert "(15/0 of 60)" in full_random[2]  # seed 0: 42 vs 27 right, nested


def test_parse_defaults() -> None:
    args = parse([])
    assert (args.on, args.eval_videos, args.test_videos, args.synth_args) == ("val", 200, 400, "")
