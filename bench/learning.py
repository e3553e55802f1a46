"""The learning loop: does a configuration's pretraining beat random init and the controls?

    python -m bench.learning [--label NAME] [--set KEY=VALUE ...] [--seeds 0] [--steps 1500]
        [--synth-args "--world sand"] [--on val|test] [--eval-videos 200] [--test-videos 400]
        [--workdir learning_out] [--out FILE.md] [--pretext]

Not a `*_bench` module, so `python -m bench` does not run it: `python -m bench.learning` does.
Every step is a function of `training.experiment`, the orchestrator `avtime demo` uses too.
The protocol (`bench.protocol`): choose configurations on the validation corpus (`--on val`,
the default: seed 300, `--eval-videos` 200, 60 test videos); report on the test corpus (`--on
test`: seed 4001, never used for choosing, sized so that its *test split* has at least
`--test-videos` 400 videos, half of the corpus) only once the choice is made.

For each seed, one row:
1. `avtime train --config demo` (in this process) on an unlabeled pretraining corpus (`avtime
   synth`, seed 100, cached in the workdir), with the `--set` overrides and `train.seed`;
2. the linear probe (`avtime eval action --mode linear`: cross-validated L2, whole-video
   predictions) and retrieval R@k on the `--on` corpus, for the checkpoint and for random init
   of the same configuration at the same seed, from one feature extraction each; each figure
   with its Wilson 95 % interval, and the probe's margin over random init paired per test video
   (bootstrap 95 % interval, exact McNemar test);
3. with `--pretext`, the pretext-head accuracy on held-out videos: every pretext head's
   accuracy and audio->video R@1 on the shards of a third corpus (24 videos, seed 301), judged
   by the demo's learning bar (`training.experiment.LEARNING_BAR`) and written to
   `<out>-pretext.md` beside the table.

Before the first row, the controls of the same corpus and split (`bench.controls`: a logistic
probe on the middle frame's 24x24 pixels, on the soundtrack's level and spectral centroid, and on
both) go into the table as rows. After the last seed, the paired differences across seeds
(trained - random init, trained - the best control, random init - the best control; mean and
t-interval) follow the rows.

Every corpus in the workdir is checked against the requested flags (world, videos, seed, ...)
and rebuilt when they differ (`training.experiment.make_corpus`). Each row is appended to a dated
markdown table (default `bench/results/<today>-learning.md`) as soon as it ends, so every
experiment lands, negative ones included. A row takes about 12 to 15 minutes on 2 CPU cores at
the default 1,500 steps and the validation corpus; the test corpus decodes about 4x as many
videos.
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
from bench import protocol as proto
from bench.stats import accuracy_of, paired_videos

PRETRAIN_SEED, PRETEXT_SEED = proto.PRETRAIN_SEED, 301  # corpus seeds no test uses
LEARNING_BAR = exp.LEARNING_BAR  # the demo's bar, one definition
HEADER = (
    "| date | label | overrides | corpus | on | seed | steps | train min | probe top-1 % "
    "[95 %] | random init [95 %] | margin, per video [95 %], McNemar | R@1 % [95 %] | "
    "random init [95 %] | margin |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _synth(args: argparse.Namespace, videos: int, seed: int, *split: str) -> Any:
    """The SynthConfig of one corpus: 4 classes and the row's `--synth-args`."""
    flags = ["--videos", str(videos), "--seed", str(seed), "--classes", "4", "--seconds",
             str(args.seconds), *split, *shlex.split(args.synth_args)]  # fmt: skip
    return exp.synth_config(flags)


def _corpus(out: Path, cfg: Any) -> None:
    """Write the corpus at `out`, or reuse it when it was written with `cfg`."""
    corpus = exp.Corpus(out=out, synth=cfg)
    exp.timed(f"synth {out.name}", partial(exp.make_corpus, corpus), prefix="  ")


def _shards(src: Path, dst: Path) -> None:
    """Shards of a corpus at the default ingest settings (cached)."""
    job = exp.Shards(src=src, dst=dst, ingest=IngestConfig(), reuse=True)
    exp.timed(f"preprocess {src.name}", partial(exp.make_shards, job), prefix="  ")


def eval_set(args: argparse.Namespace) -> tuple[proto.EvalCorpus, Any]:
    """The `--on` corpus and its SynthConfig (the test corpus grown to `--test-videos`)."""
    ec = proto.eval_corpus(args.on, val_videos=args.eval_videos, test_videos=args.test_videos)
    cfg = _synth(args, ec.videos, ec.seed, "--test-fraction", f"{ec.test_fraction:g}")
    return ec, proto.sized(cfg, ec.min_test) if ec.min_test else cfg


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, proto.EvalCorpus]:
    """The pretraining corpus and its shards, and the labeled `--on` corpus (cached); returns
    the labeled corpus's folder and which corpus it is."""
    _corpus(
        work / "pretrain", _synth(args, args.pretrain_videos, PRETRAIN_SEED, "--split", "train")
    )
    ec, cfg = eval_set(args)
    _corpus(ec.folder(work), cfg)
    _shards(work / "pretrain", work / "shards")
    if args.pretext:
        _corpus(work / "heldout", _synth(args, 24, PRETEXT_SEED))
        _shards(work / "heldout", work / "heldout_shards")
    return ec.folder(work), ec


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


def probe_config(args: argparse.Namespace, root: Path, work: Path, seed: int) -> exp.Probe:
    """Linear probe and retrieval on the labeled corpus `root`; random init gets the row's
    overrides."""
    return exp.Probe(
        root=root, cache=work / "eval_cache", config="demo",
        overrides=tuple(args.overrides), seed=seed, protocols=("action", "retrieval"),
    )  # fmt: skip


def scores(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"action": probe top-1, "retrieval": R@1, "n": test videos, "queries": retrieval
    queries, "videos": {test video: right}} of `exp.probe`'s results."""
    action, retrieval = results["action"], results["retrieval"]
    return {
        "action": float(action["top1"]),
        "retrieval": float(retrieval["R@1"]),
        "n": int(action.get("test_videos", 0)),
        "queries": int(retrieval.get("queries", 0)),
        "videos": dict(results.get(exp.ACTION_VIDEOS, {})),
    }


def _start(path: Path, date: str) -> None:
    """Write the table's title, machine line and header when the file is new."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Learning loop, {date}\n\n`python -m bench.learning` (see its docstring); "
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU. Chance is 25 %. "
        "Random init is the same configuration at the same seed, measured in the same row. "
        "Intervals: Wilson 95 % on the test videos (queries for R@1); the probe's margin is "
        "paired per test video (bootstrap 95 %, exact McNemar p). Control rows: a logistic "
        "probe on the same train/test split (`bench.controls`).\n\n" + HEADER
    )


def _pct(value: float, n: int) -> str:
    return accuracy_of(value, n).cell() if n else f"{100 * value:.1f}"


def add_to_table(path: Path, lines: Sequence[str]) -> None:
    """Put `lines` (each ending in a newline) after the last line of the file's first table,
    so that rows stay in the table when paired-difference tables follow it."""
    text = path.read_text().splitlines(keepends=True)
    first = next((i for i, t in enumerate(text) if t.startswith("|")), len(text))
    end = first
    while end < len(text) and text[end].startswith("|"):
        end += 1
    path.write_text("".join(text[:end] + list(lines) + text[end:]))


def append_controls(
    path: Path, date: str, synth: str, on: str, controls: Sequence[proto.Entry]
) -> None:
    """Append the controls of the `on` corpus as rows (once per file and corpus)."""
    _start(path, date)
    text, lines = path.read_text(), []
    for c in controls:
        line = (f"| {date} | control: {c.name} | - | `{synth or 'default'}` | {on} | - | - | "
                f"- | {proto.entry_cell(c)} | - | - | - | - | - |\n")  # fmt: skip
        if f"| control: {c.name} | - | `{synth or 'default'}` | {on} |" not in text:
            lines.append(line)
    add_to_table(path, lines)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row to the dated table (writing its header and machine line first)."""
    _start(path, row["date"])
    p, r = row["trained"], row["random"]
    n, q = p.get("n", 0), p.get("queries", 0)
    if p.get("videos") and r.get("videos"):
        paired = paired_videos(p["videos"], r["videos"]).cell()
    else:
        paired = f"{100 * (p['action'] - r['action']):+.1f}"
    add_to_table(
        path,
        [
            f"| {row['date']} | {row['label']} | `{' '.join(row['overrides']) or '-'}` | "
            f"`{row['synth'] or 'default'}` | {row.get('on', '-')} | {row['seed']} | "
            f"{row['steps']} | {row['train_min']:.1f} | {_pct(p['action'], n)} | "
            f"{_pct(r['action'], n)} | {paired} | {_pct(p['retrieval'], q)} | "
            f"{_pct(r['retrieval'], q)} | {100 * (p['retrieval'] - r['retrieval']):+.1f} |\n"
        ],
    )


def entries(label: str, rows: Sequence[dict[str, Any]], key: str) -> proto.Entry:
    """The trained (`key` "trained") or random-init ("random") entry of the rows, one per seed."""
    name = label if key == "trained" else proto.RANDOM
    runs = [row[key] for row in rows]
    return proto.Entry(
        name=name, top1=tuple(float(r["action"]) for r in runs), n=int(runs[0].get("n", 0)),
        videos=tuple(r["videos"] for r in runs) if all(r.get("videos") for r in runs) else (),
    )  # fmt: skip


def append_summary(
    path: Path, label: str, rows: Sequence[dict[str, Any]], controls: Sequence[proto.Entry]
) -> str:
    """Append (and return) the paired differences of the probe's top-1 across the rows' seeds:
    trained - random init, trained - the best control, random init - the best control."""
    trained, random = entries(label, rows, "trained"), entries(label, rows, "random")
    pairs = proto.comparisons([trained], random, controls)
    seeds = ",".join(str(row["seed"]) for row in rows)
    text = (
        f"\nPaired differences of `{label}` on {rows[0].get('on', '-')}, seeds {seeds}:\n\n"
        + proto.difference_table(pairs, rows[0]["seed"])
        + "\n\n"
    )
    with path.open("a") as f:
        f.write(text)
    return text


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--label", default="demo", help="a short name for the row")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--synth-args", default="", help="extra `avtime synth` flags for every corpus")
    p.add_argument("--pretrain-videos", type=int, default=64)
    p.add_argument(
        "--on", choices=("val", "test"), default="val",
        help="report on the validation corpus (default; for choosing) or the test corpus",
    )  # fmt: skip
    p.add_argument(
        "--eval-videos", type=int, default=proto.VAL_VIDEOS,
        help="videos of the validation corpus (default 200, 30 %% of them test)",
    )  # fmt: skip
    p.add_argument(
        "--test-videos", type=int, default=proto.TEST_VIDEOS,
        help="least number of test videos of the test corpus (default 400, half the corpus)",
    )  # fmt: skip
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
    root, ec = prepare(args, work)
    on = f"{ec.name} s{ec.seed}"
    controls = exp.timed(
        "controls", partial(proto.cached_controls, root, work / "controls"), prefix="  "
    )
    append_controls(out, today, args.synth_args, on, controls)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(one_row(args, work, root, seed, on, today, out))
    print(append_summary(out, args.label, rows, controls), flush=True)
    return 0


def one_row(
    args: argparse.Namespace, work: Path, root: Path, seed: int, on: str, today: str, out: Path
) -> dict[str, Any]:
    """Pretrain at one seed, probe against random init, append the row (and pretext row)."""
    t0 = time.monotonic()
    ckpt, train_min = pretrain(args, work, seed)
    contrast = exp.probe_against_random(probe_config(args, root, work, seed), ckpt)
    row = {"date": today, "label": args.label, "overrides": args.overrides,
           "synth": args.synth_args, "on": on, "seed": seed, "steps": args.steps,
           "train_min": train_min, "trained": scores(contrast.trained),
           "random": scores(contrast.random)}  # fmt: skip
    append_row(out, row)
    if args.pretext:
        append_pretext(out.with_name(out.stem + "-pretext.md"), row, pretext(work, ckpt))
    margin = row["trained"]["action"] - row["random"]["action"]
    print(f"row {args.label} seed {seed} on {on}: probe margin over random init "
          f"{100 * margin:+.1f} points; {(time.monotonic() - t0) / 60:.1f} min -> {out}")  # fmt: skip
    brief = {k: v for k, v in row.items() if k not in ("trained", "random")}
    for side in ("trained", "random"):
        brief[side] = {k: v for k, v in row[side].items() if k != "videos"}
    print(json.dumps(brief, sort_keys=True), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
