"""Ablation: full method vs contrastive-only vs temporal-only vs random init, on the synth corpus.

    python -m bench.ablation_bench [--workdir ablation_out] [--steps 500] [--seeds 0,1,2]
        [--classes 4] [--pretrain-videos 64] [--eval-videos 80] [--seconds 6]

Every step is a function of `training.experiment` (the orchestrator of `avtime demo`), run in
this process:

1. `avtime synth` writes two corpora: an unlabeled pretraining corpus and a labeled evaluation
   corpus (other seed, its own train/test split). `avtime preprocess` decodes the first.
2. `avtime train --config demo` pretrains each variant for `--steps` steps per seed, with the
   other loss weights set to 0 (contrastive-only: speed/direction/order weights 0; temporal-only:
   w_vv = w_va = 0). Runs land in the MLflow experiment `avtime-ablation` under the workdir.
3. Each checkpoint, and the randomly initialised demo model per seed, is evaluated on the
   evaluation corpus with the `folder` adapter: linear probe top-1 and retrieval R@k, from one
   feature extraction, plus a linear probe on the audio features (train/test split of the same
   corpus); all are logged as eval runs linked to their pretraining run. The full
   method (first seed) and random init also run the fingerprint protocol (mild distortions).
4. Prints a markdown table: mean +- std over seeds, and the difference to random init.

Everything is cached in the workdir (corpora, shards, checkpoints, per-run results), so a
rerun after an interruption continues where it stopped. Expensive: on 2 CPU cores each 500-step
demo run takes 4 minutes alone and up to 13 minutes beside other jobs; the whole bench took 80
minutes (bench/results/2026-11-27-ablation.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from avtime.pipelines.config import IngestConfig
from avtime.training import experiment as exp

TEMPORAL = ("w_speed", "w_direction", "w_order_intra", "w_order_inter")
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "contrastive-only": tuple(f"loss.{w}=0" for w in TEMPORAL),
    "temporal-only": ("loss.w_vv=0", "loss.w_va=0"),
}
EXPERIMENT = "avtime-ablation"
RUN_BY_DEFAULT = False  # hours on a small machine: `python -m bench ablation` runs it


def prepare(args: argparse.Namespace, work: Path) -> None:
    """Both corpora and the pretraining shards (skipped when already there)."""
    common = ["--classes", str(args.classes), "--seconds", str(args.seconds)]
    corpora = (("pretrain", args.pretrain_videos, 100, ["--split", "train"]),
               ("evalset", args.eval_videos, 200, ["--test-fraction", "0.3"]))  # fmt: skip
    for name, videos, seed, split in corpora:
        flags = ["--videos", str(videos), "--seed", str(seed), *common, *split]
        synth = exp.synth_config(flags)
        exp.timed(
            f"  synth {name}", partial(exp.make_corpus, exp.Corpus(out=work / name, synth=synth))
        )
    shards = exp.Shards(
        src=work / "pretrain", dst=work / "shards", ingest=IngestConfig(), reuse=True
    )
    exp.timed("  preprocess", partial(exp.make_shards, shards))


def pretrain(args: argparse.Namespace, work: Path, variant: str, seed: int) -> dict[str, Any]:
    """One pretraining run (cached in runs/<name>.json): `TrainOutcome.summary()`."""
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest

    name = f"abl-{variant}-s{seed}-{args.steps}"
    record = work / "runs" / f"{name}.json"
    if record.exists():
        cached: dict[str, Any] = json.loads(record.read_text())
        return cached
    print(f"pretraining {name}", flush=True)
    sets = [f"train.steps={args.steps}", f"train.seed={seed}", f"data.stream.seed={seed}",
            f"train.checkpoint_every={args.steps}", *VARIANTS[variant]]  # fmt: skip
    req = TrainRequest(
        cfg=load_run_config(args.config, sets), data=str(work / "shards"), name=name,
        workdir=str(work), experiment=EXPERIMENT,
    )  # fmt: skip
    out = exp.timed("  train", partial(exp.pretrain, req)).summary()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(out))
    return out


def evaluate(
    args: argparse.Namespace, work: Path, checkpoint: str, seed: int, fingerprint: bool
) -> dict[str, Any]:
    """Linear probe, retrieval and the audio linear probe (one extraction), optionally
    fingerprint (mild distortions); each logged to MLflow as an eval run."""
    protocols = ("action", "retrieval", "audio", *(("fingerprint",) if fingerprint else ()))
    p = exp.Probe(
        root=work / "evalset", cache=work / "eval_cache", config=args.config, seed=seed,
        protocols=protocols, clips=args.clips, fingerprint_videos=args.fingerprint_videos,
        log=True, params={"bench": "ablation"},
    )  # fmt: skip
    return dict(exp.probe(p, checkpoint))


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: linear top-1 and retrieval R@k (percent, mean ± std over seeds)."""
    keys = ["R@1", "R@5", "R@10", "R@20"]
    lines = [
        "| variant | seeds | video linear top-1 | "
        + " | ".join(f"retrieval {k}" for k in keys)
        + " | audio linear top-1 |",
        "|---|---|---|" + "---|" * (len(keys) + 1),
    ]
    for name, runs in results.items():
        top1 = [r["action"]["top1"] for r in runs]
        cells = [_fmt([r["retrieval"][k] for r in runs]) for k in keys]
        audio = _fmt([r["audio"]["mean_accuracy"] for r in runs if "audio" in r])
        lines.append(
            f"| {name} | {len(runs)} | {_fmt(top1)} | " + " | ".join(cells) + f" | {audio} |"
        )
    return "\n".join(lines)


def differences(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each variant minus random init, in points (mean over seeds)."""
    base = results.get("random init", [])
    if not base:
        return []
    b_top1 = statistics.fmean(r["action"]["top1"] for r in base)
    b_r1 = statistics.fmean(r["retrieval"]["R@1"] for r in base)
    out = []
    for name, runs in results.items():
        if name == "random init" or not runs:
            continue
        top1 = statistics.fmean(r["action"]["top1"] for r in runs)
        r1 = statistics.fmean(r["retrieval"]["R@1"] for r in runs)
        line = (
            f"{name} vs random init: video linear top-1 {100 * (top1 - b_top1):+.1f} points, "
            f"retrieval R@1 {100 * (r1 - b_r1):+.1f} points"
        )
        if all("audio" in r for r in runs + base):
            a = statistics.fmean(r["audio"]["mean_accuracy"] for r in runs)
            b_a = statistics.fmean(r["audio"]["mean_accuracy"] for r in base)
            line += f", audio linear top-1 {100 * (a - b_a):+.1f} points"
        out.append(line)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ablation_bench", description=__doc__)
    p.add_argument("--workdir", default="ablation_out")
    p.add_argument("--config", default="demo")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--pretrain-videos", type=int, default=64)
    p.add_argument("--eval-videos", type=int, default=80)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--fingerprint-videos", type=int, default=16, help="0 skips fingerprinting")
    args = p.parse_args(argv)
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    t0 = time.monotonic()
    prepare(args, work)
    ckpts = {(v, s): pretrain(args, work, v, s)["checkpoint"] for v in variants for s in seeds}
    results = _evaluate_all(args, work, ckpts, seeds)
    print(f"\nablation: {args.config} preset, {args.steps} steps, seeds {seeds}, "
          f"{args.classes} classes, {args.pretrain_videos} pretraining videos, "
          f"{args.eval_videos} eval videos x {args.seconds:g} s; {time.monotonic() - t0:.0f} s")  # fmt: skip
    print(table(results))
    for line in differences(results):
        print(line)
    for name, runs in results.items():
        for r in runs:
            if "fingerprint" in r:
                per = r["fingerprint"]["per_distortion"]
                cells = ", ".join(f"{k} {v['R@1']:.2f}/{v['mAP']:.2f}" for k, v in per.items())
                print(f"fingerprint (mild, R@1/mAP) {name}: {cells}")
    (work / "ablation_results.json").write_text(json.dumps(results, indent=1))
    return 0


def _evaluate_all(
    args: argparse.Namespace, work: Path, ckpts: dict[tuple[str, int], str], seeds: list[int]
) -> dict[str, list[dict[str, Any]]]:
    from avtime.pipelines.raycluster import connect

    connect(num_cpus=4)
    results: dict[str, list[dict[str, Any]]] = {}
    for (variant, seed), ckpt in ckpts.items():
        cache = work / "runs" / f"eval-{variant}-s{seed}-{args.steps}.json"
        if not cache.exists():
            first = variant == "full" and seed == seeds[0] and args.fingerprint_videos > 0
            cache.write_text(json.dumps(evaluate(args, work, ckpt, seed, first)))
        results.setdefault(variant, []).append(json.loads(cache.read_text()))
    for seed in seeds:
        cache = work / "runs" / f"eval-random-s{seed}.json"
        if not cache.exists():
            first = seed == seeds[0] and args.fingerprint_videos > 0
            cache.write_text(json.dumps(evaluate(args, work, "random", seed, first)))
        results.setdefault("random init", []).append(json.loads(cache.read_text()))
    return results


if __name__ == "__main__":
    sys.exit(main())
