"""The `avtime` console script.

Each subcommand lives in `training/cli/commands/<name>.py` with two functions:
`add_arguments(parser: argparse.ArgumentParser) -> None` and `run(args: argparse.Namespace) -> int`.
Modules are imported only when their subcommand runs, so `avtime --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence

from avtime.training.cli.errors import one_line

SUBCOMMANDS: dict[str, str] = {
    "synth": "write a synthetic audio-visual corpus of real mp4 files",
    "preprocess": "decode videos into Arrow segment shards (Ray Data), local or s3://",
    "verify": "check preprocessed shards: decode, audio/video alignment, tiling, counts",
    "sample": "draw pretext examples from shards and save what the model sees",
    "train": "pretrain with Ray Train, tracked in MLflow",
    "eval": "evaluate a checkpoint: pretext heads and the paper's transfer protocols",
    "submit": "submit an avtime command to a Ray cluster as a Ray Job",
    "compare": "compare MLflow runs: a table of differing params and metrics, and plots",
    "embed": "write clip embeddings of preprocessed shards as Parquet (local or s3://)",
    "search": "the nearest clips of an embed index to a query video, within or across modalities",
    "demo": "synth -> preprocess -> verify -> train -> eval on the embedded default",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per available subcommand."""
    parser = argparse.ArgumentParser(
        prog="avtime",
        description="Audio-visual contrastive learning with temporal SSL on Ray.",
        epilog="Any subcommand takes --debug: print the traceback of an error, not one line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = _load(name)
        if module is not None:
            module.add_arguments(p)
    return parser


def _load(name: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(f"avtime.training.cli.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"avtime.training.cli.commands.{name}":
            return None
        raise


def non_finite_options(args: argparse.Namespace) -> str:
    """`--name` of the first float option that is NaN or infinite (argparse's float() takes
    "nan" and "inf"), or ''."""
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            return "--" + key.replace("_", "-")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn every failure into one line on stderr and a
    non-zero exit (`--debug`, anywhere on the command line, adds the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in SUBCOMMANDS and not any(a in ("-h", "--help") for a in argv[1:2]):
        parser = argparse.ArgumentParser(prog=f"avtime {argv[0]}")
        module = _load(argv[0])
        if module is None:
            print(f"avtime {argv[0]}: not available in this build", file=sys.stderr)
            return 2
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        args.command = argv[0]
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        module = _load(args.command)
        if module is None:
            print(f"avtime {args.command}: not available in this build", file=sys.stderr)
            return 2
    args.debug = debug
    bad = non_finite_options(args)
    if bad:
        print(f"avtime {args.command}: {bad} must be a finite number", file=sys.stderr)
        return 2
    return one_line(args.command, lambda: int(module.run(args) or 0), debug)


if __name__ == "__main__":
    sys.exit(main())
