"""`avtime preprocess SRC DST`: decode videos into Arrow segment shards (docs/ingest.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.errors import JobError, MissingInputError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of `avtime preprocess` (defaults from IngestConfig)."""
    d = IngestConfig()
    parser.add_argument(
        "src", metavar="SRC", help="folder, s3://bucket/prefix, or .csv/.jsonl listing"
    )
    parser.add_argument("dst", metavar="DST", help="output folder or s3://bucket/prefix")
    parser.add_argument("--labels", metavar="CSV", help="CSV with path,label[,split] columns")
    parser.add_argument(
        "--fps", type=float, default=d.fps, help=f"stored frame rate (default {d.fps:g})"
    )
    parser.add_argument(
        "--short-side", type=int, default=d.short_side,
        help=f"stored frames' short side in pixels (default {d.short_side})",
    )  # fmt: skip
    parser.add_argument(
        "--sample-rate", type=int, default=d.sample_rate,
        help=f"stored mono audio rate in Hz (default {d.sample_rate})",
    )  # fmt: skip
    parser.add_argument(
        "--segment-seconds", type=float, default=d.segment_seconds,
        help=f"longest segment in seconds (default {d.segment_seconds:g})",
    )  # fmt: skip
    parser.add_argument(
        "--frame-format", choices=["jpeg", "png"], default=d.frame_format,
        help=f"stored image format (default {d.frame_format})",
    )  # fmt: skip
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="1..100")
    parser.add_argument(
        "--require-audio", action="store_true", help="reject videos without an audio stream"
    )
    parser.add_argument(
        "--max-reject-fraction", type=float, default=d.max_reject_fraction,
        help="exit non-zero when rejects/inputs exceeds this (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--file-timeout", type=float, default=d.file_timeout_s,
        help="per-file decode time limit in seconds (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--rows-per-shard", type=int, default=d.rows_per_shard, help="segment rows per shard"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel decode tasks (default: CPUs)"
    )
    _mlflow_arguments(parser)


def _mlflow_arguments(parser: argparse.ArgumentParser) -> None:
    """`--experiment` and the verify report it logs."""
    parser.add_argument(
        "--experiment", default="", metavar="NAME",
        help="also log an MLflow run in experiment NAME: the shards as a dataset, the manifest, "
        "a rejects summary and a verify report (store: MLFLOW_TRACKING_URI or ./mlflow.db)",
    )  # fmt: skip
    parser.add_argument(
        "--verify-fraction", type=float, default=0.1, metavar="F",
        help="with --experiment: share of rows whose frames verify decodes (default 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--no-verify", action="store_true", help="with --experiment: skip the verify report"
    )


def run(args: argparse.Namespace) -> int:
    """Run the job; 0 = success, 1 = nothing usable / too many rejects / job error, 2 = usage
    (errors are raised; `main` prints them)."""
    from avtime.pipelines.ingest.job import run_ingest

    try:
        cfg = replace(
            IngestConfig(), fps=args.fps, short_side=args.short_side,
            sample_rate=args.sample_rate, segment_seconds=args.segment_seconds,
            frame_format=args.frame_format, jpeg_quality=args.jpeg_quality,
            require_audio=args.require_audio, max_reject_fraction=args.max_reject_fraction,
            file_timeout_s=args.file_timeout, rows_per_shard=args.rows_per_shard,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    check_source(args.src)
    res = run_ingest(args.src, args.dst, cfg, labels=args.labels, workers=args.workers)
    code = 0
    if res.rows == 0:
        print("avtime preprocess: no usable rows came out (see rejects.parquet)", file=sys.stderr)
        code = 1
    elif res.reject_fraction > cfg.max_reject_fraction:
        print(
            f"avtime preprocess: reject fraction {res.reject_fraction:.3f} exceeds "
            f"--max-reject-fraction {cfg.max_reject_fraction}",
            file=sys.stderr,
        )
        code = 1
    print(res.summary_line(), flush=True)
    if args.experiment and res.rows > 0:
        code = max(code, _log_run(args, cfg))
    return code


def check_source(src: str) -> None:
    """A local SRC that does not exist is a usage mistake (exit 2), named before Ray starts."""
    if "://" not in src and not Path(src).exists():
        raise MissingInputError(
            f"{src} does not exist: pass a folder of videos, a .csv/.jsonl listing of them, "
            "or s3://bucket/prefix (make some with `avtime synth FOLDER --videos 8`)"
        )


def _log_run(args: argparse.Namespace, cfg: IngestConfig) -> int:
    """Log the preprocessing as an MLflow run (`--experiment`); 0, or a JobError (exit 1)."""
    from dataclasses import asdict

    from avtime.pipelines.verify.job import VerifyError
    from avtime.training.tracking.preprocess_log import log_preprocessing
    from avtime.training.tracking.runs import redact_url, tracking_uri

    uri = tracking_uri()
    params = {**asdict(cfg), "src": args.src, "dst": args.dst, "labels": args.labels or ""}
    try:
        run_id = log_preprocessing(
            uri=uri, experiment=args.experiment, dst=args.dst, params=params,
            verify_fraction=None if args.no_verify else args.verify_fraction,
        )  # fmt: skip
    except (VerifyError, OSError, ValueError) as exc:
        raise JobError(f"the shards are written, but MLflow logging failed: {exc}") from exc
    print(f"MLflow run {run_id} in experiment {args.experiment!r} at {redact_url(uri)}")
    return 0
