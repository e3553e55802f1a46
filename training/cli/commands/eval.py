"""`avtime eval`: the paper's transfer protocols, and the pretext heads.

    avtime eval {action,retrieval,audio,fingerprint} --checkpoint CKPT|models:/...|random
        --dataset {ucf101,hmdb51,esc50,vggsound,folder} --root PATH|s3://...
        [--split 1|2|3] [--mode linear|finetune] [--json]
    avtime eval pretext ...   (the trainer's pretext-head evaluation, training/eval/pretext.py)

See docs/eval.md for the protocols, dataset layouts and the MLflow run each eval logs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PROTOCOLS = ("action", "retrieval", "audio", "fingerprint")
DATASETS = ("ucf101", "hmdb51", "esc50", "vggsound", "folder")


def _pretext_module() -> Any:
    """training/eval/pretext.py (light at import: it imports torch inside its functions)."""
    return importlib.import_module("avtime.training.eval.pretext")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder/URI, models:/<model_id>, models:/<name>@<alias>, "
                        "or 'random'")  # fmt: skip
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="dataset root: local path or s3://...")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="UCF101/HMDB51 split")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--config", default="demo", help="preset/YAML for --checkpoint random")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --checkpoint random (repeatable)")  # fmt: skip
    p.add_argument("--cache-dir", default=None,
                   help="decoded shards and distorted files (default $AVTIME_EVAL_CACHE "
                        "or ./eval_cache)")  # fmt: skip
    p.add_argument("--clips", type=int, default=4, help="evaluation clips per stored segment")
    p.add_argument("--short-side", type=int, default=128, help="decode frames to this short side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder call")
    p.add_argument("--workers", type=int, default=None, help="decode tasks at once")
    p.add_argument("--l2", type=float, default=None,
                   help="linear probe L2 weight (default: chosen from 1e-3..10 by cross-validation "
                        "over whole training videos)")  # fmt: skip
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for the eval run and for models:/ checkpoints (default: "
                        "MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")  # fmt: skip
    p.add_argument("--experiment", default=None,
                   help="experiment of an eval run whose checkpoint has no training run in the "
                        "store (default: the training run's experiment, else 'avtime')")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands: one per protocol, plus `pretext` (the trainer's pretext heads)."""
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    helps = {
        "action": "action recognition: linear probe or fine-tuning, top-1 per video",
        "retrieval": "video retrieval: test queries train by cosine, R@1/5/10/20",
        "audio": "audio classification: linear probe, 5-fold CV on ESC-50",
        "fingerprint": "robust fingerprinting: distorted copies query the originals",
    }
    for name in PROTOCOLS:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        _common(p)
        if name == "action":
            p.add_argument("--mode", choices=("linear", "finetune"), default="linear")
            p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
            p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning head learning rate")
        if name == "fingerprint":
            p.add_argument("--distortions", choices=("mild", "strong", "all"), default="all")
            p.add_argument("--max-videos", type=int, default=0, help="gallery cap (0 = all)")
    p = sub.add_parser("pretext", help="accuracy of the pretext heads on held-out shards")
    _pretext_module().add_arguments(p)


@contextmanager
def _ray_for(workers: int | None) -> Iterator[None]:
    """Join `RAY_ADDRESS` (and, on a cluster, wait for `workers` decode tasks' CPUs, one task's
    by default), else start a local Ray with at least 4 logical CPUs."""
    from avtime.pipelines import raycluster

    cpus = max(4, os.cpu_count() or 1, workers or 0)
    raycluster.connect(num_cpus=cpus, log_to_driver=raycluster.on_cluster())
    with raycluster.grown([{"CPU": 1.0}] * (workers or 1), what="avtime eval", minimum=[]):
        yield


def _context(args: argparse.Namespace) -> Any:
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.datasets.adapters import list_dataset
    from avtime.training.eval.cache import cache_root
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.features import ExtractConfig
    from avtime.training.eval.linear import LinearProbeConfig
    from avtime.training.eval.model_io import load_model
    from avtime.training.eval.protocols import EvalContext

    listing = list_dataset(args.dataset, args.root, args.split)
    for note in listing.notes:
        print(f"eval: {note}", file=sys.stderr)
    loaded = load_model(
        args.checkpoint, config=args.config, overrides=args.overrides, seed=args.seed,
        tracking_uri=_store(args),
    )  # fmt: skip
    return EvalContext(
        loaded=loaded,
        listing=listing,
        cache=cache_root(args.cache_dir),
        clip=ClipConfig.from_run(loaded.cfg, args.clips),
        extract=ExtractConfig(batch_size=args.batch_size),
        ingest=IngestConfig(short_side=args.short_side),
        probe=(
            LinearProbeConfig(seed=args.seed)
            if args.l2 is None
            else LinearProbeConfig(l2=args.l2, l2_grid=(), seed=args.seed)
        ),
        workers=args.workers,
    )


def _run_protocol(args: argparse.Namespace, ctx: Any) -> dict[str, Any]:
    from avtime.training.eval import protocols

    if args.protocol == "action" and args.mode == "linear":
        return protocols.run_action_linear(ctx)
    if args.protocol == "action":
        from avtime.training.eval.finetune import FinetuneConfig, run_action_finetune

        ft = FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
        return run_action_finetune(ctx, ft)
    if args.protocol == "retrieval":
        return protocols.run_retrieval(ctx)
    if args.protocol == "audio":
        return protocols.run_audio(ctx)
    from avtime.training.eval.fingerprint import FingerprintConfig, run_fingerprint

    fp = FingerprintConfig(distortions=args.distortions, max_videos=args.max_videos, seed=args.seed)
    return run_fingerprint(ctx, fp)


def _log(args: argparse.Namespace, ctx: Any, result: dict[str, Any]) -> tuple[str, str] | None:
    """Log the eval run, linked to the checkpoint's logged model and the evaluation set;
    (run id, model id or "")."""
    if args.no_mlflow:
        return None
    import torch

    from avtime.training.tracking import lineage
    from avtime.training.tracking.eval_log import eval_params, log_eval, metric_prefix

    uri = _store(args)
    split = args.split if args.dataset in ("ucf101", "hmdb51") else None
    prefix = metric_prefix(args.protocol, args.dataset, split, getattr(args, "mode", None))
    loaded = ctx.loaded
    model_id = loaded.model_id or lineage.model_for_checkpoint(
        uri, loaded.parent_run_id, loaded.step
    )
    run_id = log_eval(
        protocol=args.protocol,
        dataset=args.dataset,
        params=eval_params(
            protocol=args.protocol,
            dataset=args.dataset,
            root=args.root,
            split=split,
            mode=getattr(args, "mode", ""),
            checkpoint=args.checkpoint,
            checkpoint_uri=loaded.resolved,
            checkpoint_step=loaded.step,
            preset=loaded.cfg.preset,
            clips_per_segment=args.clips,
            short_side=args.short_side,
            seed=args.seed,
            distortions=getattr(args, "distortions", ""),
            model_id=model_id or "",
        ),  # fmt: skip
        result=result,
        parent_run_id=loaded.parent_run_id,
        prefix=prefix,
        uri=uri,
        model_id=model_id,
        data=lineage.eval_dataset(ctx.listing, split),
        device="cuda" if torch.cuda.is_available() else "cpu",
        experiment=args.experiment,
    )
    return run_id, model_id or ""


def _store(args: argparse.Namespace) -> str:
    """The MLflow store this eval uses: `--tracking-uri`, else the default."""
    from avtime.training.tracking.runs import tracking_uri

    return str(args.tracking_uri or tracking_uri())


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Run one protocol; print a summary (and a JSON line with --json); log to MLflow."""
    if args.protocol == "pretext":
        return int(_pretext_module().run(args) or 0)
    t0 = time.monotonic()
    if not args.no_mlflow:
        from avtime.training.tracking.runs import check_tracking

        check_tracking(_store(args))
    ctx = _context(args)
    with _ray_for(args.workers):
        result = _run_protocol(args, ctx)
    logged = _log(args, ctx, result)
    result = {**result, "checkpoint": args.checkpoint, "dataset": args.dataset}
    if ctx.loaded.resolved and ctx.loaded.resolved != args.checkpoint:
        result["checkpoint_uri"] = ctx.loaded.resolved
    if args.dataset in ("ucf101", "hmdb51"):
        result["split"] = args.split
    if logged:
        result["mlflow_run_id"] = logged[0]
        if logged[1]:
            result["model_id"] = logged[1]
    result["seconds"] = round(time.monotonic() - t0, 1)
    from avtime.training.tracking.eval_log import summary_line

    print(f"eval {args.protocol} on {args.dataset}: {summary_line(result)}")
    if args.json:
        print(json.dumps(_clean(result), sort_keys=True))
    return 0
