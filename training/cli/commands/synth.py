"""`avtime synth OUT --videos N`: write a synthetic audio-visual corpus of real mp4 files.

See docs/synth.md for what the videos show, the ground-truth codes and the output layout.
"""

from __future__ import annotations

import argparse
import time

from avtime.pipelines.configlib import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avtime.pipelines.synth.scene import CLASSES  # light: no av, unlike .corpus

    parser.add_argument(
        "out", metavar="OUT", help="output folder (created if missing) or s3://bucket/prefix"
    )
    parser.add_argument("--videos", type=int, required=True, help="number of videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="mean duration (default 10)")
    parser.add_argument(
        "--duration-jitter",
        type=float,
        default=0.2,
        help="durations vary in seconds * [1-j, 1+j] (default 0.2; 0 = all the same)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=4,
        help=f"number of motion classes, 1..{len(CLASSES)} (default 4: "
        + ", ".join(c.name for c in CLASSES[:4])
        + "; in the even world 1..4 paces: slow, steady, brisk, fast)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument(
        "--ground-truth",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="draw the frame-index code and mix in the audio time code (for tests; off by default)",
    )
    parser.add_argument(
        "--world",
        choices=("dusk", "sand", "even"),
        default="dusk",
        help="dusk: varied scenes ordered by lamps; sand: one studio, one object look, marks "
        "in the floor order the clips; even: sand without the still-frame and sound-level cues "
        "to the class, drying sand orders the clips (docs/synth.md, 'Worlds'; default dusk)",
    )
    parser.add_argument(
        "--lamps",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dusk lamps that come on through each video, with their tones (default: on in the "
        "dusk world)",
    )
    parser.add_argument(
        "--ambience",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a noise bed whose spectral slope the sky's hue shows (default: on in the dusk "
        "world; off: a quiet pink floor)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of each class put in split 'test' (default 0.2)",
    )
    parser.add_argument(
        "--split", default=None, help="put every video in this split (e.g. a held-out corpus)"
    )
    parser.add_argument(
        "--max-objects", type=int, default=3, help="at most this many objects at once (default 3)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes (default: all usable CPUs)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from avtime.pipelines.progress import ProgressBar
    from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus

    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    try:
        cfg = SynthConfig(
            videos=args.videos,
            seconds=args.seconds,
            duration_jitter=args.duration_jitter,
            classes=args.classes,
            seed=args.seed,
            ground_truth=args.ground_truth,
            world=args.world,
            lamps=args.lamps,
            ambience=args.ambience,
            test_fraction=args.test_fraction,
            split=args.split,
            max_objects=args.max_objects,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    bar = None if args.quiet else ProgressBar(cfg.videos, label="synth", unit="videos")
    start = time.monotonic()
    metas = generate_corpus(
        args.out,
        cfg,
        workers=args.workers or None,
        on_progress=(lambda _m: bar.update()) if bar else None,
    )
    if bar:
        bar.close()
    elapsed = time.monotonic() - start
    seconds = sum(m["duration_s"] for m in metas)
    print(
        f"wrote {len(metas)} videos ({seconds:.0f} s of video) to {args.out} in {elapsed:.1f} s "
        f"({len(metas) / elapsed:.2f} videos/s); labels: {args.out}/labels.csv"
    )
    return 0
