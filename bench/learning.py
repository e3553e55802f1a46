"""The learning loop: does a configuration's pretraining beat random init? One row per seed.

    python -m bench.learning [--label NAME] [--set KEY=VALUE ...] [--seeds 0] [--steps 1500]
        [--synth-args "--world sand"] [--workdir learning_out] [--out FILE.md] [--pretext]

Not a `*_bench` module, so `python -m bench` does not run it: `python -m bench.learning` does.
Every step is a function of `training.experiment`, the orchestrator `avtime demo` uses too.
For each seed, one row:
1. `avtime train --config demo` (in this process) on an unlabeled pretraining corpus (`avtime
   synth`, seed 100, cached in the workdir), with the `--set` overrides and `train.seed`;
2. the linear probe (`avtime eval action --mode linear`: cross-validated L2, whole-video
   predictions) and retrieval R@k on a held-out labeled corpus (seed 300, never used by a test),
   for the checkpoint and for random init of the same configuration at the same seed, from one
   feature extraction each;
3. with `--pretext`, the pretext-head accuracy on held-out videos: every pretext head's
   accuracy and audio->video R@1 on the shards of a third corpus (24 videos, seed 301), judged
   by the demo's learning bar (`training.experiment.LEARNING_BAR`) and written to
   `<out>-pretext.md` beside the table.

Each row is appended to a dated markdown table (default `bench/results/<today>-learning.md`)
as soon as it ends, so every experiment lands, negative ones included. The baseline of every
row is random init measured in the same run; the ratio printed is the probe's margin over it.
A row takes about 12 to 15 minutes on 2 CPU cores at the default 1,500 steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from avtime.pipelines.config import IngestConfig
from avtime.training import experiment as exp

PRETRAIN_SEED, EVAL_SEED, PRETEXT_SEED = 100, 300, 301  # corpus seeds no test uses
LEARNING_BAR = exp.LEARNING_BAR  # the demo's bar, one definition
HEADER = (
    "| date | label | overrides | corpus | seed | steps | train min | probe top-1 (random) | "
    "margin | R@1 (random) | margin |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _corpus(args: argparse.Namespace, out: Path, videos: int, seed: int, *split: str) -> None:
    """One synthetic corpus with 4 classes and the row's `--synth-args` (cached)."""
    flags = ["--videos", str(videos), "--seed", str(seed), "--classes", "4", "--seconds",
             str(args.seconds), *split, *shlex.split(args.synth_args)]  # fmt: skip
    corpus = exp.Corpus(out=out, synth=exp.synth_config(flags))
    exp.timed(f"synth {out.name}", partial(exp.make_corpus, corpus), prefix="  ")


def _shards(src: Path, dst: Path) -> None:
    """Shards of a corpus at the default ingest settings (cached)."""
    job = exp.Shards(src=src, dst=dst, ingest=IngestConfig(), reuse=True)
    exp.timed(f"preprocess {src.name}", partial(exp.make_shards, job), prefix="  ")


def prepare(args: argparse.Namespace, work: Path) -> None:
    """The pretraining corpus and its shards, and the labeled held-out corpus (cached)."""
    _corpus(args, work / "pretrain", args.pretrain_videos, PRETRAIN_SEED, "--split", "train")
    _corpus(args, work / "evalset", args.eval_videos, EVAL_SEED, "--test-fraction", "0.3")
    _shards(work / "pretrain", work / "shards")
    if args.pretext:
        _corpus(args, work / "heldout", 24, PRETEXT_SEED)
        _shards(work / "heldout", work / "heldout_shards")


def pretext(work: Path, checkpoint: str) -> dict[str, Any]:
    """The pretext-head accuracy on held-out videos of one checkpoint (2 passes)."""
    return exp.heldout_pretext(checkpoint, work / "heldout_shards")


def append_pretext(path: Path, row: dict[str, Any], result: dict[str, Any]) -> None:
    """Append one row of the pretext-head accuracy on held-out videos: each head's accuracy
    (* = under the learning bar) and a->v R@1 over chance (* = under the bar)."""
    heads = result["heads"]
    names = sorted(heads)
    bar = LEARNING_BAR
    if not path.exists():
        path.write_text(
            f"# Pretext-head accuracy on held-out videos, {row['date']}\n\n`python -m "
            "bench.learning --pretext`: `avtime eval pretext` on 24 held-out videos (seed 301, the "
            f"row's synth flags). * marks a head under chance + {100 * bar.head_points:.0f} points "
            f"and an a->v R@1 under {bar.retrieval_x:g}x chance (the demo's learning bar).\n\n"
            f"| label | seed | {' | '.join(names)} | a->v R@1 (x chance) |\n"
            f"|---|---|{'---|' * len(names)}---|\n"
        )
    cells = [f"{heads[n]['accuracy']:.3f}{'' if bar.head_passes(heads[n]) else '*'}" for n in names]
    r = result["retrieval_a2v"]
    with path.open("a") as f:
        f.write(
            f"| {row['label']} | {row['seed']} | {' | '.join(cells)} | {r['r1']:.3f} "
            f"({r['x_chance']:.1f}x{'' if bar.retrieval_passes(r) else '*'}) |\n"
        )


def pretrain(args: argparse.Namespace, work: Path, seed: int) -> tuple[str, float]:
    """(checkpoint URI, wall minutes) of one training run of the demo preset."""
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest

    sets = [f"train.steps={args.steps}", f"train.seed={seed}", f"data.stream.seed={seed}",
            f"train.checkpoint_every={args.steps}", *args.overrides]  # fmt: skip
    req = TrainRequest(
        cfg=load_run_config("demo", sets), data=str(work / "shards"),
        name=f"learn-{args.label}-s{seed}-{args.steps}-{int(time.time())}",
        workdir=str(work), experiment="avtime-learning",
    )  # fmt: skip
    t0 = time.monotonic()
    out = exp.timed("train", partial(exp.pretrain, req), prefix="  ")
    return out.checkpoint, (time.monotonic() - t0) / 60


def probe_config(args: argparse.Namespace, work: Path, seed: int) -> exp.Probe:
    """Linear probe and retrieval on the evalset; random init gets the row's overrides."""
    return exp.Probe(
        root=work / "evalset", cache=work / "eval_cache", config="demo",
        overrides=tuple(args.overrides), seed=seed, protocols=("action", "retrieval"),
    )  # fmt: skip


def scores(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"action": linear probe top-1, "retrieval": R@1} of `exp.probe`'s results."""
    return {
        "action": float(results["action"]["top1"]),
        "retrieval": float(results["retrieval"]["R@1"]),
    }


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row to the dated table (writing its header and machine line first)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# Learning loop, {row['date']}\n\n`python -m bench.learning` (see its docstring); "
            f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU. Chance is 25 %. "
            "Random init is the same configuration at the same seed, measured in the same row.\n\n"
            + HEADER
        )
    p, r = row["trained"], row["random"]
    with path.open("a") as f:
        f.write(
            f"| {row['date']} | {row['label']} | `{' '.join(row['overrides']) or '-'}` | "
            f"`{row['synth'] or 'default'}` | {row['seed']} | {row['steps']} | "
            f"{row['train_min']:.1f} | {100 * p['action']:.1f} ({100 * r['action']:.1f}) | "
            f"{100 * (p['action'] - r['action']):+.1f} | {100 * p['retrieval']:.1f} "
            f"({100 * r['retrieval']:.1f}) | {100 * (p['retrieval'] - r['retrieval']):+.1f} |\n"
        )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--label", default="demo", help="a short name for the row")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--synth-args", default="", help="extra `avtime synth` flags for both corpora")
    p.add_argument("--pretrain-videos", type=int, default=64)
    p.add_argument("--eval-videos", type=int, default=200)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--workdir", default="learning_out")
    p.add_argument(
        "--pretext",
        action="store_true",
        help="also measure the pretext-head accuracy on held-out videos",
    )
    p.add_argument(
        "--out", default="", help="results table (default bench/results/<date>-learning.md)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    today = dt.date.today().isoformat()
    out = Path(args.out or Path(__file__).parent / "results" / f"{today}-learning.md")
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    prepare(args, work)
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.monotonic()
        ckpt, train_min = pretrain(args, work, seed)
        contrast = exp.probe_against_random(probe_config(args, work, seed), ckpt)
        row = {"date": today, "label": args.label, "overrides": args.overrides,
               "synth": args.synth_args, "seed": seed, "steps": args.steps,
               "train_min": train_min, "trained": scores(contrast.trained),
               "random": scores(contrast.random)}  # fmt: skip
        append_row(out, row)
        if args.pretext:
            append_pretext(out.with_name(out.stem + "-pretext.md"), row, pretext(work, ckpt))
        margin = row["trained"]["action"] - row["random"]["action"]
        print(f"row {args.label} seed {seed}: probe margin over random init "
              f"{100 * margin:+.1f} points; {(time.monotonic() - t0) / 60:.1f} min -> {out}")  # fmt: skip
        print(json.dumps(row, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
