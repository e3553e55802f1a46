"""`avtime train --config PRESET|FILE.yaml [--set key=value ...] [--data SHARDS]`.

Pretrains with Ray Train, tracked in MLflow (see docs/training.md). Rerunning the same command
resumes from the run's latest checkpoint. The last line printed is one JSON object with
`mlflow_run_id`, `tracking_uri`, `checkpoint`, the final `metrics`, the final checkpoint's
logged `model_id` and, with `--register NAME`, `registered` (`models:/NAME@final`).
"""

from __future__ import annotations

import argparse
import json


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
    parser.add_argument(
        "--register", default="", metavar="NAME",
        help="register the final checkpoint's MLflow logged model as a new version of NAME",
    )  # fmt: skip
    parser.add_argument(
        "--alias", default="final",
        help="with --register: the alias moved to the new version (default: final; '' = none)",
    )  # fmt: skip
    parser.add_argument(
        "--log-weights", action="store_true",
        help="also copy each checkpoint's files into its MLflow logged model (default: the "
        "model records the checkpoint's storage URI only)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest, train
    from avtime.training.tracking.runs import ui_command

    cfg = load_run_config(args.config, args.overrides)
    request = TrainRequest(
        cfg=cfg, data=args.data, experiment=args.experiment, name=args.name, workdir=args.workdir,
        register=args.register, alias=args.alias, log_weights=args.log_weights,
    )  # fmt: skip
    outcome = train(request)
    summary = outcome.summary()
    print(f"MLflow run {outcome.mlflow_run_id} at {summary['tracking_uri']}")
    print(f"  open the UI: {ui_command(summary['tracking_uri'])}")
    print(f"final checkpoint: {outcome.checkpoint}")
    if outcome.model_id:
        print(f"  its MLflow logged model: models:/{outcome.model_id}")
    if outcome.registered:
        print(f"  registered as {outcome.registered}")
    print(json.dumps(summary, sort_keys=True))
    return 0
