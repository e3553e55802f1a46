"""The learning loop: does a configuration's pretraining beat random init? One row per seed.

    python -m bench.learning [--label NAME] [--set KEY=VALUE ...] [--seeds 0] [--steps 1500]
        [--synth-args "--world sand"] [--workdir learning_out] [--out FILE.md] [--pretext]

For each seed, one row:
1. the real `avtime train --config demo` path on an unlabeled pretraining corpus (`avtime
   synth`, seed 100, cached in the workdir), with the `--set` overrides and `train.seed`;
2. the linear probe (`avtime eval action --mode linear`: cross-validated L2, whole-video
   predictions) and retrieval R@k on a held-out labeled corpus (seed 300, never used by a test),
   for the checkpoint and for random init of the same configuration at the same seed.

3. with `--pretext`, S2: every pretext head's accuracy and audio->video R@1 on held-out shards
   of a third corpus (24 videos, seed 301), written to `<out>-pretext.md` beside the table.

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
from pathlib import Path
from typing import Any

from bench.ablation_bench import _avtime

PRETRAIN_SEED, EVAL_SEED, PRETEXT_SEED = 100, 300, 301  # corpus seeds no test uses
RUN_BY_DEFAULT = False  # a quarter hour per row: `python -m bench learning` runs it
HEADER = (
    "| date | label | overrides | corpus | seed | steps | train min | probe top-1 (random) | "
    "margin | R@1 (random) | margin |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def prepare(args: argparse.Namespace, work: Path) -> None:
    """The pretraining corpus and its shards, and the labeled held-out corpus (cached)."""
    extra = shlex.split(args.synth_args)
    common = ["--classes", "4", "--seconds", str(args.seconds), "--quiet", *extra]
    if not (work / "pretrain" / "labels.csv").exists():
        _avtime("synth", "pretrain", "--videos", str(args.pretrain_videos), "--seed",
                str(PRETRAIN_SEED), "--split", "train", *common, cwd=work)  # fmt: skip
    if not (work / "evalset" / "labels.csv").exists():
        _avtime("synth", "evalset", "--videos", str(args.eval_videos), "--seed", str(EVAL_SEED),
                "--test-fraction", "0.3", *common, cwd=work)  # fmt: skip
    if not (work / "shards" / "manifest.json").exists():
        _avtime("preprocess", "pretrain", "shards", cwd=work)
    if args.pretext and not (work / "heldout_shards" / "manifest.json").exists():
        if not (work / "heldout" / "labels.csv").exists():
            _avtime("synth", "heldout", "--videos", "24", "--seed", str(PRETEXT_SEED), *common,
                    cwd=work)  # fmt: skip
        _avtime("preprocess", "heldout", "heldout_shards", cwd=work)


def pretext(work: Path, checkpoint: str) -> dict[str, Any]:
    """S2 of one checkpoint: `avtime eval pretext` on the held-out shards (2 passes)."""
    return _avtime("eval", "pretext", "--checkpoint", checkpoint, "--data", "heldout_shards",
                   "--json", cwd=work)  # fmt: skip


def append_pretext(path: Path, row: dict[str, Any], result: dict[str, Any]) -> None:
    """Append one S2 row: each head's accuracy (* = under chance + 30 points) and a->v R@1."""
    heads = result["heads"]
    names = sorted(heads)
    if not path.exists():
        path.write_text(
            f"# Held-out pretext heads (S2), {row['date']}\n\n`python -m bench.learning "
            "--pretext`: `avtime eval pretext` on 24 held-out videos (seed 301, the row's synth "
            "flags). * marks a head under chance + 30 points; the a->v bar is 5x chance.\n\n"
            f"| label | seed | {' | '.join(names)} | a->v R@1 (x chance) |\n"
            f"|---|---|{'---|' * len(names)}---|\n"
        )
    cells = [
        f"{heads[n]['accuracy']:.3f}{'*' if heads[n]['accuracy'] < heads[n]['chance'] + 0.3 else ''}"
        for n in names
    ]
    r = result["retrieval_a2v"]
    with path.open("a") as f:
        f.write(
            f"| {row['label']} | {row['seed']} | {' | '.join(cells)} | {r['r1']:.3f} "
            f"({r['x_chance']:.1f}x{'' if r['x_chance'] >= 5 else '*'}) |\n"
        )


def pretrain(args: argparse.Namespace, work: Path, seed: int) -> tuple[str, float]:
    """(checkpoint URI, wall minutes) of one `avtime train` run."""
    sets = [f"train.steps={args.steps}", f"train.seed={seed}", f"data.stream.seed={seed}",
            f"train.checkpoint_every={args.steps}", *args.overrides]  # fmt: skip
    name = f"learn-{args.label}-s{seed}-{args.steps}-{int(time.time())}"
    argv = ["train", "--config", "demo", "--data", "shards", "--name", name,
            "--workdir", str(work), "--experiment", "avtime-learning"]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    t0 = time.monotonic()
    out = _avtime(*argv, cwd=work)
    return str(out["checkpoint"]), (time.monotonic() - t0) / 60


def probe(args: argparse.Namespace, work: Path, checkpoint: str, seed: int) -> dict[str, float]:
    """Linear probe top-1 and retrieval R@1 of `checkpoint` (or random init) on the evalset."""
    scores: dict[str, float] = {}
    for protocol, key in (("action", "top1"), ("retrieval", "R@1")):
        argv = ["eval", protocol, "--checkpoint", checkpoint, "--dataset", "folder", "--root",
                "evalset", "--config", "demo", "--seed", str(seed), "--json", "--no-mlflow"]  # fmt: skip
        if protocol == "action":
            argv += ["--mode", "linear"]
        for s in args.overrides if checkpoint == "random" else ():
            argv += ["--set", s]
        scores[protocol] = float(_avtime(*argv, cwd=work)[key])
    return scores


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
    p.add_argument("--pretext", action="store_true", help="also measure S2 on held-out shards")
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
        row = {"date": today, "label": args.label, "overrides": args.overrides,
               "synth": args.synth_args, "seed": seed, "steps": args.steps,
               "train_min": train_min, "trained": probe(args, work, ckpt, seed),
               "random": probe(args, work, "random", seed)}  # fmt: skip
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
