"""Controls for a linear probe: how much of the class a still frame or the sound level gives away.

    python -m bench.controls CORPUS_DIR [--size 24] [--workers 2] [--seed 0] [--json]

CORPUS_DIR is a labeled folder as `avtime eval --dataset folder` reads it: a corpus written by
`avtime synth` (videos/*.mp4 and labels.csv with path,label,split; docs/synth.md), of any world,
or class subfolders of videos. The train and test videos are the listing's, the same ones the
linear probe of `avtime eval action` uses. The features and the fits are those of the package,
`avtime.training.eval.controls` (its docstring says what each reads):

    still frame   a logistic probe on the middle frame's size x size RGB pixels
    sound level   on the soundtrack's level (dBFS) and spectral centroid
    both          on the two together

`run_controls(root)` returns, per control, top-1 with its Wilson 95 % interval (`bench.stats`)
and the correctness of each test video (for paired comparisons, `bench.stats.paired_videos`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from avtime.training.eval import controls as core
from avtime.training.eval.controls import (
    CONTROLS,
    CS,
    SILENCE_DB,
    ControlScore,
    VideoFeatures,
    middle_frame,
    sound_level,
    soundtrack,
    video_features,
)
from bench.stats import Accuracy, accuracy

# The package's names the bench re-exports (its tests and callers use `bench.controls.X`).
__all__ = ["CONTROLS", "CS", "SILENCE_DB", "ControlResult", "VideoFeatures", "main",
           "middle_frame", "run_controls", "sound_level", "soundtrack", "table", "video_features"]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ControlResult:
    """One control on the test split: top-1 with its interval, each test video's correctness
    (source -> right), and the C the cross-validation chose."""

    name: str
    top1: Accuracy
    correct: dict[str, bool]
    c: float

    @classmethod
    def of(cls, score: ControlScore) -> ControlResult:
        """The package's score with its Wilson 95 % interval."""
        return cls(
            name=score.name, top1=accuracy(score.k, score.n), correct=score.correct, c=score.c
        )

    def summary(self) -> dict[str, Any]:
        """Plain JSON: name, top1, k, n, low, high, C (not the per-video list)."""
        t = self.top1
        return {"name": self.name, "top1": t.value, "k": t.k, "n": t.n, "low": t.low,
                "high": t.high, "C": self.c}  # fmt: skip


def run_controls(
    root: str, *, size: int = 24, workers: int = 2, seed: int = 0
) -> dict[str, ControlResult]:
    """{control: result} on the labeled folder `root` (its train and test splits)."""
    scores = core.run_controls(root, size=size, workers=workers, seed=seed)
    return {name: ControlResult.of(s) for name, s in scores.items()}


def table(results: dict[str, ControlResult], chance: float) -> str:
    """Markdown table: each control's top-1 (percent) with its Wilson 95 % interval."""
    lines = ["| control | test top-1 % [95 % interval] | right / test videos | C |",
             "|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        lines.append(f"| {r.name} | {r.top1.cell()} | {r.top1.k} / {r.top1.n} | {r.c:g} |")
    lines.append(f"| chance | {100 * chance:.1f} | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.controls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("corpus", help="a labeled folder (labels.csv with path,label,split)")
    p.add_argument("--size", type=int, default=24, help="side of the still frame (default 24)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args(argv)
    from avtime.pipelines.errors import AvtimeError

    try:
        results = run_controls(args.corpus, size=args.size, workers=args.workers, seed=args.seed)
    except (AvtimeError, ValueError, OSError) as exc:
        print(f"bench.controls: {exc}", file=sys.stderr)
        return 2
    print(table(results, 1.0 / max(1, len(_labels(args.corpus)))))
    if args.json:
        print(json.dumps([r.summary() for r in results.values()]))
    return 0


def _labels(root: str) -> list[str]:
    from avtime.pipelines.datasets.adapters import list_dataset

    return list(list_dataset("folder", root).classes)


if __name__ == "__main__":
    sys.exit(main())
