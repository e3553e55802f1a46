"""`avtime demo [--workdir DIR]`: the whole pipeline on the embedded default, on a laptop.

synth (a train corpus, a held-out corpus and a labelled probe corpus, all in the `sand` world)
-> preprocess (with the corpus labels) -> verify -> a contact sheet of training examples
(`avtime sample`) -> train the `demo` preset -> `eval pretext` on the held-out shards -> the
linear probe (`eval action --mode linear`) on the probe corpus, for the checkpoint and for random
init of the same configuration. Everything goes under DIR:

    DIR/corpus/{train,heldout,probe}   synthetic mp4s   DIR/shards/{train,heldout}   Arrow shards
    DIR/checkpoints/             training checkpoints   DIR/mlflow.db, DIR/mlartifacts/   MLflow
    DIR/eval_cache/              the probe's decoded clips
    DIR/contact_sheet.png        what the model sees    DIR/demo_result.json         last line

Rerunning with the same DIR reuses the corpus and shards and resumes (or re-reports) the run.
The last line is the JSON object of `avtime train`, plus `heldout` (the pretext evaluation),
`learning_bar` (each head >= chance + 30 points, audio->video R@1 >= 5x chance) and `probe`
(top-1 of the trained model and of random init on the probe corpus's test videos).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

BAR_POINTS = 0.30  # each head must beat chance by this much
BAR_RETRIEVAL_X = 5.0  # audio->video R@1 must reach this multiple of chance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default="demo_out", help="everything goes here (default demo_out)"
    )
    parser.add_argument("--videos", type=int, default=64, help="training videos (default 64)")
    parser.add_argument(
        "--heldout-videos", type=int, default=24, help="held-out videos (default 24)"
    )
    parser.add_argument(
        "--probe-videos", type=int, default=200,
        help="labelled videos for the linear probe, 30 %% of them test (default 200, as bench.learning; 0 = skip)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=6.0, help="mean video length (default 6)")
    parser.add_argument(
        "--world", choices=("sand", "dusk"), default="sand",
        help="the synthetic world (docs/synth.md, 'Worlds'; default sand)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the demo preset, e.g. --set train.steps=200 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--experiment", default="avtime-demo", help="MLflow experiment")


def _step(name: str, argv: list[str]) -> None:
    """Run one avtime subcommand in this process; stop the demo if it fails."""
    from avtime.training.cli.main import main

    t0 = time.monotonic()
    print(f"demo: avtime {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"avtime demo: {name} failed (exit {rc}); see the output above")
    print(f"demo: {name} done in {time.monotonic() - t0:.0f} s", flush=True)


def _synth(args: argparse.Namespace, out: Path, n: int, seed: int, split: str | None) -> None:
    """One corpus of the demo's world; split None: 30 % test, the rest train (the probe's)."""
    if (out / "labels.csv").is_file():
        print(f"demo: reusing the corpus in {out}")
        return
    argv = ["synth", str(out), "--videos", str(n), "--seconds", str(args.seconds)]
    # One duration for all: every segment then has one geometry, so the sampler's speed table
    # is computed once per process instead of once per video.
    argv += ["--duration-jitter", "0", "--seed", str(seed), "--world", args.world, "--quiet"]
    argv += ["--split", split] if split else ["--test-fraction", "0.3"]
    _step(f"synth {split or 'probe'}", argv)


def _verify_available() -> bool:
    from avtime.training.cli.main import _load

    return _load("verify") is not None


def prepare_data(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """Synth, preprocess and verify both corpora; return (train shards, held-out shards)."""
    corpus, shards = root / "corpus", root / "shards"
    _synth(args, corpus / "train", args.videos, 0, "train")
    _synth(args, corpus / "heldout", args.heldout_videos, 1, "test")
    if args.probe_videos > 0:
        _synth(args, corpus / "probe", args.probe_videos, 2, None)
    for split in ("train", "heldout"):
        _step(
            f"preprocess {split}",
            [
                "preprocess", str(corpus / split), str(shards / split), "--short-side", "64",
                "--labels", str(corpus / split / "labels.csv"),
            ],
        )  # fmt: skip
        if _verify_available():
            _step(f"verify {split}", ["verify", str(shards / split), "--sample-fraction", "0.25"])
    return shards / "train", shards / "heldout"


def contact_sheet(root: Path, train_shards: Path, overrides: list[str]) -> Path:
    """`avtime sample` on the training shards: 8 demo examples as `root/contact_sheet.png`."""
    sheet = root / "contact_sheet.png"
    argv = ["sample", str(train_shards), "--n", "8", "--config", "demo"]
    argv += [f"--set={o}" for o in overrides]  # the same config as training; sample reads .data
    _step("contact sheet", argv + ["--out", str(root / "samples.npz"), "--png", str(sheet)])
    return sheet


def _eval_json(argv: list[str]) -> dict[str, Any]:
    """Run `avtime eval ...` in this process; its JSON line (the output goes on to stdout)."""
    from avtime.training.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["eval", *argv, "--json"])
    sys.stdout.write(buf.getvalue())
    if rc != 0:
        raise SystemExit(f"avtime demo: eval {argv[0]} failed (exit {rc}); see the output above")
    out: dict[str, Any] = json.loads(buf.getvalue().strip().splitlines()[-1])
    return out


def linear_probe(root: Path, checkpoint: str, overrides: list[str], seed: int) -> dict[str, float]:
    """Top-1 of the linear probe on the probe corpus: `trained`, `random` (same config) and
    `chance` (one over the classes)."""
    base = ["action", "--mode", "linear", "--dataset", "folder", "--root",
            str(root / "corpus" / "probe"), "--config", "demo", "--seed", str(seed),
            "--cache-dir", str(root / "eval_cache")]  # fmt: skip
    sets = [f"--set={o}" for o in overrides]
    trained = _eval_json([*base, "--checkpoint", checkpoint])
    random = _eval_json([*base, "--checkpoint", "random", "--no-mlflow", *sets])
    classes = len(json.loads((root / "corpus" / "probe" / "synth.json").read_text())["classes"])
    return {
        "trained": float(trained["top1"]),
        "random": float(random["top1"]),
        "chance": 1.0 / max(1, classes),
    }


def learning_bar(heldout: dict[str, Any]) -> dict[str, Any]:
    """Whether every head beats chance by 30 points and R@1 reaches 5x chance."""
    heads = {
        name: h["accuracy"] - h["chance"] >= BAR_POINTS for name, h in heldout["heads"].items()
    }
    retrieval = heldout["retrieval_a2v"]["x_chance"] >= BAR_RETRIEVAL_X
    return {"passed": all(heads.values()) and retrieval, "heads": heads, "retrieval_a2v": retrieval}


def log_heldout(uri: str, run_id: str, heldout: dict[str, Any], step: int) -> None:
    """Held-out figures as metrics of the training run (`heldout_acc_<head>`, R@1)."""
    from mlflow import MlflowClient

    metrics = {f"heldout_acc_{k}": h["accuracy"] for k, h in heldout["heads"].items()}
    metrics["heldout_a2v_r1"] = heldout["retrieval_a2v"]["r1"]
    metrics["heldout_a2v_r1_x_chance"] = heldout["retrieval_a2v"]["x_chance"]
    client = MlflowClient(tracking_uri=uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step)


def run(args: argparse.Namespace) -> int:
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest, ensure_ray, train
    from avtime.training.eval.pretext import evaluate_pretext, summary_lines
    from avtime.training.tracking.runs import tracking_uri, ui_command

    t0 = time.monotonic()
    root = Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_run_config("demo", args.overrides)
    ensure_ray(cfg.train)  # one Ray for every step, sized for training beside Ray Data
    train_shards, heldout_shards = prepare_data(args, root)
    sheet = contact_sheet(root, train_shards, args.overrides)
    t_train = time.monotonic()
    uri = tracking_uri(root)
    request = TrainRequest(
        cfg=cfg, data=str(train_shards), experiment=args.experiment, workdir=str(root),
        tracking_uri=uri,
    )  # fmt: skip
    outcome = train(request)
    print(f"demo: training done in {time.monotonic() - t_train:.0f} s", flush=True)
    heldout = evaluate_pretext(outcome.checkpoint, str(heldout_shards))
    log_heldout(uri, outcome.mlflow_run_id, heldout, cfg.train.steps)
    for line in summary_lines(heldout):
        print(line)
    summary = outcome.summary()
    summary["heldout"] = heldout
    summary["learning_bar"] = learning_bar(heldout)
    if args.probe_videos > 0:
        summary["probe"] = linear_probe(root, outcome.checkpoint, args.overrides, cfg.train.seed)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (root / "demo_result.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"contact sheet of what the model sees: {sheet}")
    print(f"MLflow store: {summary['tracking_uri']} (experiment {args.experiment})")
    print(f"  open the UI: {ui_command(summary['tracking_uri'])}")
    print(f"learning bar {'passed' if summary['learning_bar']['passed'] else 'NOT passed'}")
    if "probe" in summary:
        p = summary["probe"]
        print(
            f"linear probe on {args.probe_videos} labelled videos (30 % test): trained "
            f"{100 * p['trained']:.1f} % against random init {100 * p['random']:.1f} % "
            f"({100 * (p['trained'] - p['random']):+.1f} points; chance {100 * p['chance']:.0f} %)"
        )
    print(json.dumps(summary, sort_keys=True))
    sys.stdout.flush()
    return 0
