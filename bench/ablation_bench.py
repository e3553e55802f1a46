"""Ablation: full method vs contrastive-only vs temporal-only vs random init, on the synth corpus.

    python -m bench.ablation_bench [--workdir ablation_out] [--steps 500] [--seeds 0,1,2]
        [--classes 4] [--pretrain-videos 64] [--eval-videos 80] [--seconds 6]

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
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TEMPORAL = ("w_speed", "w_direction", "w_order_intra", "w_order_inter")
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "contrastive-only": tuple(f"loss.{w}=0" for w in TEMPORAL),
    "temporal-only": ("loss.w_vv=0", "loss.w_va=0"),
}
EXPERIMENT = "avtime-ablation"
RUN_BY_DEFAULT = False  # hours on a small machine: `python -m bench ablation` runs it


def _avtime(*argv: str, cwd: Path) -> dict[str, Any]:
    """Run an avtime subcommand; return the JSON object of its last line (or {})."""
    exe = str(Path(sys.executable).with_name("avtime"))
    t0 = time.monotonic()
    proc = subprocess.run([exe, *argv], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise RuntimeError(f"avtime {' '.join(argv[:2])} failed with {proc.returncode}")
    print(f"  avtime {argv[0]} done in {time.monotonic() - t0:.0f} s", flush=True)
    lines = proc.stdout.strip().splitlines()
    try:
        out: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        out = {}
    return out


def prepare(args: argparse.Namespace, work: Path) -> None:
    """Both corpora and the pretraining shards (skipped when already there)."""
    common = ["--classes", str(args.classes), "--seconds", str(args.seconds), "--quiet"]
    if not (work / "pretrain" / "labels.csv").exists():
        _avtime("synth", "pretrain", "--videos", str(args.pretrain_videos), "--seed", "100",
                "--split", "train", *common, cwd=work)  # fmt: skip
    if not (work / "evalset" / "labels.csv").exists():
        _avtime("synth", "evalset", "--videos", str(args.eval_videos), "--seed", "200",
                "--test-fraction", "0.3", *common, cwd=work)  # fmt: skip
    if not (work / "shards" / "manifest.json").exists():
        _avtime("preprocess", "pretrain", "shards", cwd=work)


def pretrain(args: argparse.Namespace, work: Path, variant: str, seed: int) -> dict[str, Any]:
    """One pretraining run (cached in runs/<name>.json)."""
    name = f"abl-{variant}-s{seed}-{args.steps}"
    record = work / "runs" / f"{name}.json"
    if record.exists():
        cached: dict[str, Any] = json.loads(record.read_text())
        return cached
    print(f"pretraining {name}", flush=True)
    sets = [f"train.steps={args.steps}", f"train.seed={seed}", f"data.stream.seed={seed}",
            f"train.checkpoint_every={args.steps}", *VARIANTS[variant]]  # fmt: skip
    argv = ["train", "--config", args.config, "--data", "shards", "--name", name,
            "--workdir", str(work), "--experiment", EXPERIMENT]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    out = _avtime(*argv, cwd=work)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(out))
    return out


def evaluate(
    args: argparse.Namespace, work: Path, checkpoint: str, seed: int, fingerprint: bool
) -> dict[str, Any]:
    """Linear probe + retrieval (one extraction), optionally fingerprint; logged to MLflow."""
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.datasets.adapters import list_dataset
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.fingerprint import FingerprintConfig, run_fingerprint
    from avtime.training.eval.model_io import load_model
    from avtime.training.eval.protocols import (
        EvalContext,
        run_action_linear,
        run_audio,
        run_retrieval,
        train_test_video_features,
    )
    from avtime.training.tracking.eval_log import log_eval, metric_prefix

    loaded = load_model(checkpoint, config=args.config, seed=seed)
    ctx = EvalContext(
        loaded=loaded,
        listing=list_dataset("folder", str(work / "evalset")),
        cache=str(work / "eval_cache"),
        clip=ClipConfig.from_run(loaded.cfg, args.clips),
        ingest=IngestConfig(),
    )
    feats = train_test_video_features(ctx, ("video", "audio"))
    res: dict[str, Any] = {"action": run_action_linear(ctx, feats)}
    res["retrieval"] = run_retrieval(ctx, feats)
    res["audio"] = run_audio(ctx, feats)
    if fingerprint:
        fp = FingerprintConfig(distortions="mild", max_videos=args.fingerprint_videos)
        res["fingerprint"] = run_fingerprint(ctx, fp)
    params = {"checkpoint": checkpoint, "seed": seed, "bench": "ablation", "clips": args.clips}
    for proto, result in res.items():
        mode = "linear" if proto in ("action", "audio") else None
        log_eval(
            protocol=proto, dataset="folder", params=params, result=result,
            parent_run_id=loaded.parent_run_id, prefix=metric_prefix(proto, "folder", None, mode),
        )  # fmt: skip
    return res


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
