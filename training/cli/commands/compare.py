"""`avtime compare --experiment NAME [--metrics m1,m2] [--filter ...] [--sort M] [--by dataset]
[--plot out.png]`.

Prints one row per training run (the params that differ, its training dataset, final and best
metrics, linked eval results as `eval:` columns), best first, then each run's checkpoints
(logged models) with the evaluations logged against them, and optionally writes a PNG of the
metric curves and of each checkpoint evaluation against the checkpoint step. Runs that trained
on different data are compared with a warning.
The rules (best = min for loss-like names, max otherwise; how eval runs link) are in
`training.tracking.compare` and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment", default="avtime", help="MLflow experiment name (default: avtime)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store, sqlite:///path or http://host:port "
        "(default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    parser.add_argument(
        "--metrics",
        default="",
        help="comma-separated metrics (default: the loss-like ones, at most 4)",
    )
    parser.add_argument(
        "--params", default="", help="comma-separated params to show (default: those that differ)"
    )
    parser.add_argument(
        "--filter",
        default="",
        help="MLflow search filter, e.g. \"params.`loss.temperature` = '0.1'\"",
    )
    parser.add_argument(
        "--sort",
        default=None,
        help="sort by this metric's best value, or a column (loss:final, eval:top1); "
        "default: the first metric",
    )
    parser.add_argument(
        "--by", choices=("dataset",), default=None,
        help="group the rows by training dataset (name@digest)",
    )  # fmt: skip
    parser.add_argument("--plot", default=None, metavar="PNG", help="write metric curves here")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--max-runs", type=int, default=200, help="at most this many runs")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from avtime.training.tracking import compare
    from avtime.training.tracking.runs import redact_url, tracking_uri

    uri = args.tracking_uri or tracking_uri()
    _check_reachable(uri, redact_url)
    client = MlflowClient(tracking_uri=uri)
    cmp = compare.build_comparison(
        client,
        args.experiment,
        metrics=_split(args.metrics),
        filter_string=args.filter,
        sort=args.sort,
        params=_split(args.params),
        max_runs=args.max_runs,
        by=args.by or "",
    )
    for warning in cmp.warnings:
        print(f"avtime compare: {warning}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(compare.records(cmp, models=True), indent=2))
    elif args.format == "csv":
        print(_csv(compare.records(cmp)), end="")
    else:
        print(f"store: {redact_url(uri)}")
        print(compare.render_table(cmp))
    if args.plot:
        curves = compare.write_plot(client, cmp, args.plot)
        print(f"wrote {args.plot} ({curves} curves)", file=sys.stderr)
    return 0


def _check_reachable(uri: str, redact: Callable[[str], str]) -> None:
    """Fail early, naming the store, when it does not exist or its server does not answer."""
    import urllib.error
    import urllib.request
    from pathlib import Path

    from avtime.training.tracking.compare import CompareError

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise CompareError(
                f"no MLflow database at {path}: pass --tracking-uri sqlite:///PATH/mlflow.db "
                "or http://HOST:PORT, or set MLFLOW_TRACKING_URI"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10)
        except urllib.error.HTTPError:
            pass  # it answers (maybe behind auth); MLflow will say more
        except (urllib.error.URLError, OSError) as exc:
            raise CompareError(
                f"cannot reach the MLflow server at {redact(uri)} ({exc}): is it up, and is "
                "--tracking-uri / MLFLOW_TRACKING_URI right?"
            ) from None


def _csv(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
