"""The `avtime` console script.

Each subcommand lives in `training/cli/commands/<name>.py` with two functions:
`add_arguments(parser: argparse.ArgumentParser) -> None` and `run(args: argparse.Namespace) -> int`.
A command module imports only light things at its top (argparse, the standard library, the
config dataclasses); torch, ray, mlflow and av are imported inside `run`, so `avtime --help`,
`avtime CMD --help` and usage errors answer at once (tests/training/cli/test_help.py).
Errors: a command raises (an `AvtimeError` from pipelines/errors.py, or anything else) and
`main` alone turns it into one line and an exit code (training/cli/errors.py).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from avtime.pipelines import logs
from avtime.pipelines.errors import EXIT_USAGE
from avtime.training.cli import errors

SUBCOMMANDS: dict[str, str] = {
    "synth": "write a synthetic audio-visual corpus of real mp4 files",
    "preprocess": "decode videos into Parquet segment shards (Ray Data), local or s3://",
    "verify": "check preprocessed shards: decode, audio/video alignment, tiling, counts",
    "sample": "draw pretext examples from shards and save what the model sees",
    "train": "pretrain with Ray Train, tracked in MLflow",
    "eval": "evaluate a checkpoint: pretext heads and the paper's transfer protocols",
    "submit": "submit an avtime command to a Ray cluster as a Ray Job",
    "compare": "compare MLflow runs: a table of differing params and metrics, and plots",
    "embed": "write clip embeddings of preprocessed shards as Parquet (local or s3://)",
    "search": "the nearest clips of an embed index to a query video, within or across modalities",
    "demo": "the whole pipeline on a synthetic corpus it makes, in one folder: synth, preprocess, verify, train, eval",
}


EPILOG = (
    "Any subcommand takes --debug (print the traceback of an error, not one line) and --verbose "
    "(show the INFO lines and warnings of Ray, MLflow and torch, which otherwise go to "
    "avtime.log in the workdir or the temp folder)."
)


def build_parser(arguments: bool = True) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per subcommand (with each one's arguments, or,
    for `avtime --help` and an unknown command, only its name and help line)."""
    parser = argparse.ArgumentParser(
        prog="avtime",
        description="Audio-visual contrastive learning with temporal SSL on Ray.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if arguments:
            _load(name).add_arguments(p)
    return parser


def _load(name: str) -> ModuleType:
    """The module of subcommand `name` (light at import: torch, ray, mlflow and av are imported
    inside `run`, so `--help` and usage errors answer at once)."""
    return importlib.import_module(f"avtime.training.cli.commands.{name}")


def non_finite_options(args: argparse.Namespace) -> str:
    """`--name` of the first float option that is NaN or infinite (argparse's float() takes
    "nan" and "inf"), or ''."""
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            return "--" + key.replace("_", "-")
    return ""


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, ModuleType | None]:
    """(args, the subcommand's module); (None, None) when no subcommand was given (help was
    printed). Only the named subcommand's module is imported when one is named."""
    if argv and argv[0] in SUBCOMMANDS:
        parser = argparse.ArgumentParser(
            prog=f"avtime {argv[0]}", description=SUBCOMMANDS[argv[0]], epilog=EPILOG
        )
        module = _load(argv[0])
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        args.command = argv[0]
        return args, module
    parser = build_parser(arguments=False)
    parser.parse_args(argv)  # exits: help, or an unknown command
    parser.print_help()
    return None, None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn every failure into one line on stderr and its exit
    code (`errors.classify`; `--debug`, anywhere on the command line, adds the traceback). This
    is the only place an error becomes an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, loud = "--debug" in argv, "--verbose" in argv
    args, module = parse([a for a in argv if a not in ("--debug", "--verbose")])
    if args is None or module is None:
        return 0
    args.debug = debug
    log_file = logs.default_log_file(getattr(args, "workdir", None))
    logs.setup(log_file, show_all=loud or logs.verbose())
    bad = non_finite_options(args)
    if bad:
        print(f"avtime {args.command}: {bad} must be a finite number", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(module.run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the one place for all
        if debug:
            traceback.print_exc()
        return errors.report(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
