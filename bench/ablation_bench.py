"""Ablation: full method vs contrastive-only vs temporal-only vs random init and the controls.

    python -m bench.ablation_bench [--workdir ablation_out] [--steps 500] [--seeds 0,1,2]
        [--classes 4] [--pretrain-videos 64] [--seconds 6] [--synth-args "--world sand"]
        [--on val|test] [--eval-videos 200] [--test-videos 400]

Every step is a function of `training.experiment` (the orchestrator of `avtime demo`), run in
this process. The protocol (`bench.protocol`): choose configurations on the validation corpus
(`--on val`, the default: seed 300, `--eval-videos` videos, 30 % test); report on the test
corpus (`--on test`: seed 4001, never used for choosing, sized so that its *test split* has at
least `--test-videos` 400 videos, half the corpus) once the choice is made.

1. `avtime synth` writes two corpora with the `--synth-args` (e.g. the world): an unlabeled
   pretraining corpus (seed 100) and the labeled `--on` corpus. A corpus already in the
   workdir is checked against the requested flags and rebuilt when they differ.
   `avtime preprocess` decodes the first.
2. `avtime train --config demo` pretrains each variant for `--steps` steps per seed, with the
   other loss weights set to 0 (contrastive-only: speed/direction/order weights 0; temporal-only:
   w_vv = w_va = 0). Runs land in the MLflow experiment `avtime-ablation` under the workdir.
3. Each checkpoint, and the randomly initialised demo model per seed, is evaluated on the
   `--on` corpus with the `folder` adapter: linear probe top-1 and retrieval R@k, from one
   feature extraction, plus a linear probe on the audio features (train/test split of the same
   corpus); all are logged as eval runs linked to their pretraining run. The full
   method (first seed) and random init also run the fingerprint protocol (mild distortions).
4. The controls (`bench.controls`) on the same corpus and split: a logistic probe on the middle
   frame's 24x24 pixels, on the soundtrack's level and spectral centroid, and on both.
5. Prints a markdown table, one row per variant, random init and each control: mean ± std over
   seeds and the Wilson 95 % interval on the test videos (queries for R@k); then the paired
   differences of the video probe's top-1 (full vs each other variant, each variant vs random
   init and vs the best control): across seeds (mean, t-interval) and, on the first seed, per
   test video (bootstrap interval, exact McNemar test).

Everything is cached in the workdir (corpora, shards, checkpoints, per-run results, named by
the corpus they came from), so a rerun after an interruption continues where it stopped.
Expensive: on 2 CPU cores each 500-step demo run takes 4 minutes alone and up to 13 minutes
beside other jobs; the whole bench took 80 minutes on 80 validation videos
(bench/results/2026-11-27-ablation.md), and the test corpus decodes 4x the validation corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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

TEMPORAL = ("w_speed", "w_direction", "w_order_intra", "w_order_inter")
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "contrastive-only": tuple(f"loss.{w}=0" for w in TEMPORAL),
    "temporal-only": ("loss.w_vv=0", "loss.w_va=0"),
}
EXPERIMENT = "avtime-ablation"
RUN_BY_DEFAULT = False  # hours on a small machine: `python -m bench ablation` runs it
RETRIEVAL_KS = ("R@1", "R@5", "R@10", "R@20")


def _synth(args: argparse.Namespace, *flags: str) -> Any:
    """The SynthConfig of one corpus: the bench's classes and seconds, then `--synth-args`."""
    common = ["--classes", str(args.classes), "--seconds", str(args.seconds)]
    return exp.synth_config([*flags, *common, *shlex.split(args.synth_args)])


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, proto.EvalCorpus]:
    """Both corpora and the pretraining shards (reused when they match); returns the labeled
    corpus's folder and which corpus it is."""
    ec = proto.eval_corpus(args.on, val_videos=args.eval_videos, test_videos=args.test_videos)
    pretrain = _synth(args, "--videos", str(args.pretrain_videos), "--seed",
                      str(proto.PRETRAIN_SEED), "--split", "train")  # fmt: skip
    labeled = _synth(args, *ec.flags())
    labeled = proto.sized(labeled, ec.min_test) if ec.min_test else labeled
    for out, cfg in ((work / "pretrain", pretrain), (ec.folder(work), labeled)):
        corpus = exp.Corpus(out=out, synth=cfg)
        exp.timed(f"  synth {out.name}", partial(exp.make_corpus, corpus))
    shards = exp.Shards(
        src=work / "pretrain", dst=work / "shards", ingest=IngestConfig(), reuse=True
    )
    exp.timed("  preprocess", partial(exp.make_shards, shards))
    return ec.folder(work), ec


def pretrain(args: argparse.Namespace, work: Path, variant: str, seed: int) -> dict[str, Any]:
    """One pretraining run (cached in runs/<name>.json, named by the pretraining corpus):
    `TrainOutcome.summary()`."""
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest

    name = f"abl-{variant}-s{seed}-{args.steps}-{proto.corpus_key(work / 'pretrain')}"
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
    args: argparse.Namespace, root: Path, work: Path, checkpoint: str, seed: int, fingerprint: bool
) -> dict[str, Any]:
    """Linear probe, retrieval and the audio linear probe (one extraction) on the labeled corpus
    `root`, optionally fingerprint (mild distortions); each logged to MLflow as an eval run."""
    protocols = ("action", "retrieval", "audio", *(("fingerprint",) if fingerprint else ()))
    p = exp.Probe(
        root=root, cache=work / "eval_cache", config=args.config, seed=seed,
        protocols=protocols, clips=args.clips, fingerprint_videos=args.fingerprint_videos,
        log=True, params={"bench": "ablation", "corpus": root.name},
    )  # fmt: skip
    return dict(exp.probe(p, checkpoint))


def entry(name: str, runs: list[dict[str, Any]]) -> proto.Entry:
    """The video probe's entry of one variant's runs (one per seed)."""
    videos = [r.get(exp.ACTION_VIDEOS) for r in runs]
    return proto.Entry(
        name=name, top1=tuple(float(r["action"]["top1"]) for r in runs),
        n=int(runs[0]["action"].get("test_videos", 0)),
        videos=tuple(v for v in videos if v) if all(videos) else (),
    )  # fmt: skip


def table(results: dict[str, list[dict[str, Any]]], controls: Sequence[proto.Entry]) -> str:
    """Markdown table, percent: mean ± std over seeds [Wilson 95 % on the test videos, or the
    queries for R@k]; the controls' one figure is their test top-1 (they have no retrieval)."""
    lines = [
        "| variant | seeds | video linear top-1 | "
        + " | ".join(f"retrieval {k}" for k in RETRIEVAL_KS)
        + " | audio linear top-1 |",
        "|---|---|---|" + "---|" * (len(RETRIEVAL_KS) + 1),
    ]
    for name, runs in results.items():
        n = int(runs[0]["action"].get("test_videos", 0))
        queries = int(runs[0]["retrieval"].get("queries", 0))
        top1 = proto.cell([r["action"]["top1"] for r in runs], n)
        cells = [proto.cell([r["retrieval"][k] for r in runs], queries) for k in RETRIEVAL_KS]
        audio = proto.cell([r["audio"]["mean_accuracy"] for r in runs if "audio" in r], n)
        lines.append(f"| {name} | {len(runs)} | {top1} | " + " | ".join(cells) + f" | {audio} |")
    dashes = " | ".join("-" for _ in RETRIEVAL_KS)
    for c in controls:
        lines.append(f"| control: {c.name} | - | {proto.entry_cell(c)} | {dashes} | - |")
    return "\n".join(lines)


def differences(
    results: dict[str, list[dict[str, Any]]], controls: Sequence[proto.Entry], first_seed: int
) -> str:
    """The paired differences of the video probe's top-1 (`bench.protocol.comparisons`)."""
    variants = [entry(n, runs) for n, runs in results.items() if n != proto.RANDOM]
    random = entry(proto.RANDOM, results[proto.RANDOM]) if proto.RANDOM in results else None
    return proto.difference_table(proto.comparisons(variants, random, controls), first_seed)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ablation_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", default="ablation_out")
    p.add_argument("--config", default="demo")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--pretrain-videos", type=int, default=64)
    p.add_argument("--synth-args", default="", help="extra `avtime synth` flags for both corpora")
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
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--fingerprint-videos", type=int, default=16, help="0 skips fingerprinting")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    t0 = time.monotonic()
    root, ec = prepare(args, work)
    controls = exp.timed("  controls", partial(proto.cached_controls, root, work / "controls"))
    ckpts = {(v, s): pretrain(args, work, v, s)["checkpoint"] for v in variants for s in seeds}
    results = _evaluate_all(args, root, work, ckpts, seeds)
    n_test = controls[0].n if controls else 0
    print(f"\nablation: {args.config} preset, {args.steps} steps, seeds {seeds}, "
          f"{args.classes} classes, {args.pretrain_videos} pretraining videos, "
          f"`{args.synth_args or 'default'}`; reported on the {ec.describe(n_test)}; "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    print(table(results, controls))
    print()
    print(differences(results, controls, seeds[0]))
    for name, runs in results.items():
        for r in runs:
            if "fingerprint" in r:
                per = r["fingerprint"]["per_distortion"]
                cells = ", ".join(f"{k} {v['R@1']:.2f}/{v['mAP']:.2f}" for k, v in per.items())
                print(f"fingerprint (mild, R@1/mAP) {name}: {cells}")
    (work / f"ablation_results-{root.name}.json").write_text(json.dumps(results, indent=1))
    return 0


def _evaluate_all(
    args: argparse.Namespace,
    root: Path,
    work: Path,
    ckpts: dict[tuple[str, int], str],
    seeds: list[int],
) -> dict[str, list[dict[str, Any]]]:
    """{variant or random init: [result per seed]}, each cached in runs/ under the labeled
    corpus's name and key and the checkpoint's digest."""
    from avtime.pipelines.raycluster import connect

    connect(num_cpus=4)
    tag = f"{root.name}-{proto.corpus_key(root)}"
    results: dict[str, list[dict[str, Any]]] = {}
    jobs = [(v, s, ckpt) for (v, s), ckpt in ckpts.items()]
    jobs += [(proto.RANDOM, s, "random") for s in seeds]
    for variant, seed, ckpt in jobs:
        of = "random" if ckpt == "random" else hashlib.sha1(ckpt.encode()).hexdigest()[:8]
        cache = work / "runs" / f"eval-{tag}-{variant.replace(' ', '-')}-s{seed}-{of}.json"
        if not cache.exists():
            first = variant in ("full", proto.RANDOM) and seed == seeds[0]
            fp = first and args.fingerprint_videos > 0
            cache.write_text(json.dumps(evaluate(args, root, work, ckpt, seed, fp)))
        results.setdefault(variant, []).append(json.loads(cache.read_text()))
    return results


if __name__ == "__main__":
    sys.exit(main())
