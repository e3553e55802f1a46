"""`avtime sample SHARDS --n N --out FILE.npz [--png SHEET.png]`: see exactly what the model sees.

Draws the first N examples of an epoch with the training sampler (the same generator per
example as the Ray Data stream, so the same clips, labels and augmentations) and saves them with
their source times. docs/pretext.md lists the arrays.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from avtime.pipelines.config import DataConfig
from avtime.pipelines.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from avtime.pipelines.pretext.clips import Example


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", metavar="SHARDS", help="preprocessed shards: folder or s3://")
    parser.add_argument("--n", type=int, required=True, help="number of examples")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="output .npz path")
    parser.add_argument("--png", metavar="SHEET.png", help="also write a contact sheet")
    parser.add_argument("--seed", type=int, default=None, help="stream seed (default: config)")
    parser.add_argument("--epoch", type=int, default=0, help="epoch to draw (default 0)")
    parser.add_argument(
        "--no-augment", action="store_true", help="turn every augmentation off (whole frames)"
    )
    parser.add_argument(
        "--config", default=None, help="preset or YAML whose data config to use (default: defaults)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. data.pretext.clip_frames=8",
    )


def data_config(args: argparse.Namespace) -> DataConfig:
    """The data config of `--config`/`--set`, with `--seed` and `--no-augment` applied."""
    if args.config is not None or args.set:
        from avtime.training.config import load_run_config

        cfg = load_run_config(args.config or "paper", args.set).data
    else:
        cfg = DataConfig()
    if args.seed is not None:
        cfg = replace(cfg, stream=replace(cfg.stream, seed=args.seed))
    if args.no_augment:
        cfg = replace(cfg, augment=replace(cfg.augment, enabled=False))
    return cfg


def label_names(cfg: DataConfig) -> dict[str, list[str]]:
    """Class names of every label array, in index order."""
    from avtime.pipelines.pretext.plan import ORDER_NAMES

    speeds = [f"x{s}" for s in cfg.pretext.speeds]
    direction = ["forward", "reverse"]
    return {
        "label_video_speed": speeds,
        "label_audio_speed": speeds,
        "label_video_reverse": direction,
        "label_audio_reverse": direction,
        "label_video_order": list(ORDER_NAMES),
        "label_audio_order": list(ORDER_NAMES),
        "label_av_order": list(ORDER_NAMES),
    }


def collect(examples: list[Example], cfg: DataConfig, sample_rate: int) -> dict[str, np.ndarray]:
    """The .npz arrays of `examples` (see docs/pretext.md)."""
    import numpy as np

    if not examples:
        raise ValueError("no examples: every segment was skipped (too short for the speeds)")
    keys = [k for k in examples[0] if k not in ("example_key",)]
    out = {k: np.stack([e[k] for e in examples]) for k in keys}
    out["example_key"] = np.array([int(e["example_key"]) for e in examples], dtype=np.int64)
    out["sample_rate"] = np.array(sample_rate, dtype=np.int64)
    out["label_names"] = np.array(json.dumps(label_names(cfg)))
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from avtime.pipelines.pretext.stream import (
        iter_pretext_examples,
        segment_stats,
        shards_sample_rate,
    )

    if args.n < 1:
        raise UsageError("--n must be >= 1")
    cfg = data_config(args)
    sr = shards_sample_rate(args.shards)
    stats = segment_stats(args.shards, cfg, sr)
    it = iter_pretext_examples(args.shards, cfg, epoch=args.epoch, sample_rate=sr)
    examples = list(islice(it, args.n))
    if len(examples) < args.n:
        print(f"avtime sample: only {len(examples)} examples available", file=sys.stderr)
    arrays = collect(examples, cfg, sr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    print(f"wrote {len(examples)} examples to {out}; segments: {stats}")
    if args.png:
        from avtime.pipelines.pretext.contact_sheet import save_sheet

        path = save_sheet(arrays, cfg.pretext.speeds, args.png, max_examples=min(args.n, 8))
        print(f"contact sheet: {path}")
    return 0
