"""`avtime embed`: write clip embeddings of preprocessed shards as Parquet (docs/embed.md).

avtime embed --checkpoint CKPT|models:/NAME@ALIAS|random --data SHARDS --out DST
    [--modality video,audio] [--clips 4 | --stride SECONDS] [--batch-size 16] [--actors 1]
"""

from __future__ import annotations

import argparse
import math


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `avtime embed`."""
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder/URI, models:/<model_id>, models:/<name>@<alias>, "
                             "or 'random'")  # fmt: skip
    parser.add_argument("--data", required=True,
                        help="preprocessed shards (a folder or s3://...), or raw videos (a folder, "
                             "file or CSV/JSONL listing), decoded first into OUT/_shards")  # fmt: skip
    parser.add_argument("--out", required=True, help="destination folder or s3://... prefix")
    parser.add_argument("--modality", default="video,audio",
                        help="encoders to run: video, audio or video,audio (default)")  # fmt: skip
    parser.add_argument("--clips", type=int, default=None,
                        help="clips per stored segment, evenly spaced as eval cuts them "
                             "(default 4)")  # fmt: skip
    parser.add_argument("--stride", default=None, metavar="SECONDS",
                        help="instead of --clips: a clip starts every SECONDS of each video "
                             "(at 0, SECONDS, 2*SECONDS, ...)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="clips per encoder call")
    parser.add_argument("--actors", type=int, default=1,
                        help="encoder actors (one GPU each when the cluster has GPUs)")  # fmt: skip
    parser.add_argument("--shards-per-part", type=int, default=32,
                        help="input shards per committed output part (the unit a rerun "
                             "resumes from)")  # fmt: skip
    parser.add_argument("--config", default="demo", help="preset/YAML for --checkpoint random")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for --checkpoint random (repeatable)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of --checkpoint random")
    parser.add_argument("--register", default="", metavar="NAME[@ALIAS]",
                        help="also log the encoders as an MLflow pyfunc model registered as NAME "
                             "(with ALIAS): mlflow.pyfunc.load_model('models:/NAME@ALIAS') "
                             "embeds clips as this command does (store: MLFLOW_TRACKING_URI or "
                             "./mlflow.db)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Embed; print the summary line. 2 on bad input (one line on stderr)."""
    from avtime.pipelines.errors import UsageError
    from avtime.training.eval.embed import EmbedRequest, embed
    from avtime.training.eval.features import ExtractConfig

    if args.batch_size < 1 or args.actors < 1 or (args.clips is not None and args.clips < 1):
        raise UsageError("--batch-size, --actors and --clips must be >= 1")
    if args.clips is not None and args.stride is not None:
        raise UsageError("--clips and --stride exclude each other: give one")
    req = EmbedRequest(
        checkpoint=args.checkpoint, data=args.data, out=args.out,
        modalities=tuple(m.strip() for m in args.modality.split(",") if m.strip()),
        clips_per_segment=args.clips or 4, stride_s=parse_stride(args.stride),
        config=args.config, overrides=tuple(args.overrides),
        seed=args.seed, shards_per_part=args.shards_per_part,
    )  # fmt: skip
    result = embed(req, ExtractConfig(batch_size=args.batch_size, actors=args.actors))
    print(result.summary_line(), flush=True)
    if args.register:
        return _register(args, req)
    return 0


def parse_stride(text: str | None, option: str = "--stride") -> float:
    """Seconds of `--stride` (0.0 when not given); UsageError unless a positive finite number."""
    from avtime.pipelines.errors import UsageError

    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{option} must be a positive number of seconds, got {text}")
    return value


def _register(args: argparse.Namespace, req: object) -> int:
    """Log and register the pyfunc model (`--register NAME[@ALIAS]`); print its URI."""
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.embed import encoder_dims
    from avtime.training.eval.model_io import load_model
    from avtime.training.eval.pyfunc import log_embedder
    from avtime.training.tracking.runs import tracking_uri

    name, _, alias = args.register.partition("@")
    loaded = load_model(
        args.checkpoint, config=args.config, overrides=args.overrides, seed=args.seed
    )
    dims = encoder_dims(loaded.model, getattr(req, "modalities", ("video", "audio")))
    logged = log_embedder(
        loaded, ClipConfig.from_run(loaded.cfg, args.clips or 4), dims, name=name, alias=alias,
        uri=tracking_uri(),
    )  # fmt: skip
    print(f"embed: MLflow pyfunc model {logged.model_uri} (model {logged.model_id}, version "
          f"{logged.version})")  # fmt: skip
    return 0
