"""`avtime train --config PRESET|FILE.yaml [--set key=value ...] [--data SHARDS]`.

Pretrains with Ray Train, tracked in MLflow (see docs/training.md). Rerunning the same command
resumes from the run's latest checkpoint. The last line printed is one JSON object with
`mlflow_run_id`, `tracking_uri`, `checkpoint` and the final `metrics`.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="a preset (smoke, demo, paper) or a YAML file"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.steps=100 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--data", default="shards", help="preprocessed shards: folder or s3:// (default ./shards)"
    )
    parser.add_argument("--experiment", default="avtime", help="MLflow experiment (default avtime)")
    parser.add_argument(
        "--name", default="",
        help="run name under the storage path (default: preset + config hash, so the same "
        "command resumes its run)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", default="",
        help="folder for checkpoints/ and mlflow.db when not configured (default: cwd)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from avtime.pipelines.configlib import ConfigError
    from avtime.pipelines.storage import StorageError
    from avtime.training.config import load_run_config
    from avtime.training.engine.tracking import ui_command
    from avtime.training.engine.trainer import TrainRequest, train

    cfg = load_run_config(args.config, args.overrides)
    request = TrainRequest(
        cfg=cfg, data=args.data, experiment=args.experiment, name=args.name, workdir=args.workdir
    )
    try:
        outcome = train(request)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError, StorageError) as exc:
        print(f"avtime train: {exc}", file=sys.stderr)
        return 2
    summary = outcome.summary()
    print(f"MLflow run {outcome.mlflow_run_id} at {summary['tracking_uri']}")
    print(f"  open the UI: {ui_command(summary['tracking_uri'])}")
    print(f"final checkpoint: {outcome.checkpoint}")
    print(json.dumps(summary, sort_keys=True))
    return 0
