"""`avtime verify SHARDS`: check preprocessed shards: decode, audio/video alignment, tiling, counts.

Exit status: 0 when no problem is found, 1 when any is, 2 when the dataset cannot be verified at
all (no manifest, unreachable S3, bad arguments). See docs/verify.md.
"""

from __future__ import annotations

import argparse

from avtime.pipelines.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shards", metavar="SHARDS", help="`avtime preprocess` output: folder or s3://bucket/prefix"
    )
    parser.add_argument(
        "--sample-fraction", type=float, default=1.0, metavar="F",
        help="share of rows whose frames are decoded, in [0, 1] (default 1: all); "
        "every other check covers every row",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame-decode sample")
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object on the last line"
    )
    parser.add_argument("--png", metavar="REPORT.png", help="write a one-page report image")
    parser.add_argument(
        "--cpus-per-task", type=float, default=0.5,
        help="logical CPUs of each shard-checking Ray task (default 0.5)",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="worst offenders to list (default 10)")


def run(args: argparse.Namespace) -> int:
    from avtime.pipelines.verify.job import verify_dataset
    from avtime.pipelines.verify.report import summary_text, write_png

    if args.cpus_per_task <= 0 or args.top < 0:
        raise UsageError("--cpus-per-task must be > 0 and --top >= 0")
    report = verify_dataset(
        args.shards,
        sample_fraction=args.sample_fraction,
        seed=args.seed,
        cpus_per_task=args.cpus_per_task,
        max_worst=args.top,
    )
    print(summary_text(report, max_lines=args.top), flush=True)
    if args.png:
        write_png(report, args.png)
        print(f"wrote {args.png}", flush=True)
    if args.json:
        print(report.to_json(), flush=True)
    return 0 if report.ok else 1
