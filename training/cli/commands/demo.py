"""`avtime demo [--workdir DIR]`: the whole pipeline on the embedded default, on a laptop.

synth (a train corpus, a held-out corpus and a labelled probe corpus, all in the `sand` world)
-> preprocess (with the corpus labels) -> verify -> a contact sheet of training examples
(`avtime sample`) -> train the `demo` preset -> `eval pretext` on the held-out shards -> the
linear probe (`eval action --mode linear`) on the probe corpus, for the checkpoint and for random
init of the same configuration, beside two controls on the same split (a logistic probe on the
middle frame's pixels, "still frame", and on the soundtrack's level and spectral centroid,
"sound level"; `training.eval.controls`) -> `avtime embed` of the held-out shards with the
final checkpoint and one `avtime search --from audio --to video` with a held-out video as the
query. Everything goes under DIR:

    DIR/corpus/{train,heldout,probe}   synthetic mp4s   DIR/shards/{train,heldout}   Arrow shards
    DIR/checkpoints/             training checkpoints   DIR/mlflow.db, DIR/mlartifacts/   MLflow
    DIR/eval_cache/              the probe's decoded clips
    DIR/embeddings/<run name>/   the held-out clips' embeddings (the search index)
    DIR/contact_sheet.png        what the model sees    DIR/demo_result.json         last line

Each step is a function of `training.experiment` (the orchestrator `bench.learning` and
`bench.ablation_bench` use too); before each, the demo prints the avtime command that runs the
same step on its own. Rerunning with the same DIR reuses the corpus and shards and resumes (or re-reports) the run.
The last line is the JSON object of `avtime train`, plus `heldout` (the pretext evaluation),
`learning_bar` (`training.experiment.LEARNING_BAR`: each head >= chance + 30 points,
audio->video R@1 >= 5x chance) and `probe`
(top-1 of the trained model and of random init on the probe corpus's test videos, chance, the
number of test videos, and `controls`: {still_frame, sound_level: {top1, k, n, C}}) and `search`
(the query, its nearest clips and whether its own video came first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from avtime.training import experiment as exp

T = TypeVar("T")
# The controls printed beside the probe (`training.eval.controls`; "both" is left to bench).
CONTROLS = ("still frame", "sound level")
CONTROL_NOTES = {
    "still frame": "a probe on the middle frame's pixels",
    "sound level": "a probe on the soundtrack's level and spectral centroid",
}
# The learning bar (each head >= chance + 30 points, a->v R@1 >= 5x chance): one definition,
# shared with bench.learning.
LEARNING_BAR = exp.LEARNING_BAR


def exit_note() -> str:
    """Why the demo exits 0 when its learning bar fails (shown in `avtime demo --help`)."""
    bar = LEARNING_BAR
    return (
        "Exit status: 0 when every step ran, non-zero when one failed. The learning bar (each "
        f"held-out pretext head at least {100 * bar.head_points:.0f} points over chance, "
        f"audio->video R@1 at least {bar.retrieval_x:g}x chance) does not set it: the demo "
        "preset does not clear it on every head yet (docs/notes/learning-log.md), and the "
        "closing lines list each check with its figures and verdict."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"{exit_note()} {parser.epilog or ''}".strip()
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
        "--world", choices=("sand", "dusk", "even"), default="sand",
        help="the synthetic world (docs/synth.md, 'Worlds'; default sand)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the demo preset, e.g. --set train.steps=200 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--experiment", default="avtime-demo", help="MLflow experiment")


def _step(name: str, argv: list[str], fn: Callable[[], T]) -> T:
    """Run one step (the avtime command `argv` would run it); stop the demo if it fails."""
    print(f"demo: avtime {' '.join(argv)}", flush=True)
    try:
        return exp.timed(name, fn, prefix="demo: ")
    except exp.StepError as exc:
        raise SystemExit(f"avtime demo: {name} failed: {exc}") from exc


def _synth(args: argparse.Namespace, out: Path, n: int, seed: int, split: str | None) -> None:
    """One corpus of the demo's world; split None: 30 % test, the rest train (the probe's).
    Reused when the one at `out` was written with the same config (`exp.make_corpus`)."""
    from avtime.pipelines.synth.corpus import SynthConfig

    # One duration for all: every segment then has one geometry, so the sampler's speed table
    # is computed once per process instead of once per video.
    cfg = SynthConfig(
        videos=n, seconds=args.seconds, duration_jitter=0.0, seed=seed, world=args.world,
        split=split, test_fraction=0.3,
    )  # fmt: skip
    argv = ["synth", str(out), "--videos", str(n), "--seconds", str(args.seconds)]
    argv += ["--duration-jitter", "0", "--seed", str(seed), "--world", args.world, "--quiet"]
    argv += ["--split", split] if split else ["--test-fraction", "0.3"]
    _step(
        f"synth {split or 'probe'}", argv, partial(exp.make_corpus, exp.Corpus(out=out, synth=cfg))
    )


def prepare_data(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """Synth, preprocess and verify both corpora; return (train shards, held-out shards)."""
    from avtime.pipelines.config import IngestConfig

    corpus, shards = root / "corpus", root / "shards"
    _synth(args, corpus / "train", args.videos, 0, "train")
    _synth(args, corpus / "heldout", args.heldout_videos, 1, "test")
    if args.probe_videos > 0:
        _synth(args, corpus / "probe", args.probe_videos, 2, None)
    for split in ("train", "heldout"):
        job = exp.Shards(
            src=corpus / split, dst=shards / split, ingest=IngestConfig(short_side=64), labels=True
        )
        argv = ["preprocess", str(job.src), str(job.dst), "--short-side", "64",
                "--labels", str(job.src / "labels.csv")]  # fmt: skip
        _step(f"preprocess {split}", argv, partial(exp.make_shards, job))
        argv = ["verify", str(shards / split), "--sample-fraction", "0.25"]
        _step(f"verify {split}", argv, partial(exp.check_shards, shards / split, 0.25))
    return shards / "train", shards / "heldout"


def contact_sheet(root: Path, train_shards: Path, cfg: Any, overrides: list[str]) -> Path:
    """`avtime sample` on the training shards: 8 demo examples as `root/contact_sheet.png`."""
    req = exp.SheetRequest(
        shards=train_shards, data=cfg.data, npz=root / "samples.npz", png=root / "contact_sheet.png"
    )
    argv = ["sample", str(train_shards), "--n", "8", "--config", "demo"]
    argv += [f"--set={o}" for o in overrides]  # the same config as training; sample reads .data
    argv += ["--out", str(req.npz), "--png", str(req.png)]
    return _step("contact sheet", argv, lambda: exp.contact_sheet(req))


def linear_probe(
    root: Path, checkpoint: str, overrides: list[str], seed: int, uri: str
) -> dict[str, Any]:
    """Top-1 of the linear probe on the probe corpus: `trained`, `random` (same config),
    `chance` (one over the classes), `test_videos`, and `controls` ({still_frame, sound_level:
    {top1, k, n, C}} on the same split). The trained model's probe is logged as an eval run,
    with the controls' top-1 as `control_<name>_top1` metrics."""
    p = exp.Probe(
        root=root / "corpus" / "probe", cache=root / "eval_cache", config="demo",
        overrides=tuple(overrides), seed=seed, log=True, tracking_uri=uri, controls=CONTROLS,
    )  # fmt: skip
    contrast = exp.probe_against_random(p, checkpoint)
    return {
        "trained": float(contrast.trained["action"]["top1"]),
        "random": float(contrast.random["action"]["top1"]),
        "chance": contrast.chance,
        "test_videos": int(contrast.trained["action"]["test_videos"]),
        "controls": {s.key: s.summary() for s in contrast.controls.values()},
    }


def probe_lines(probe: dict[str, Any], videos: int) -> list[str]:
    """The probe's closing block: top-1 of the trained model, random init, the controls (each
    with the trained model's margin over it) and chance, aligned."""
    trained, n = probe["trained"], probe["test_videos"]

    def row(name: str, top1: float, note: str = "") -> str:
        return f"  {name:<12} {100 * top1:5.1f} %" + (f"  ({note})" if note else "")

    def over(top1: float) -> str:
        return f"trained {100 * (trained - top1):+.1f} points"

    lines = [f"linear probe on {videos} labelled videos, top-1 on the {n} test videos:"]
    lines += [row("trained", trained), row("random init", probe["random"], over(probe["random"]))]
    for name in CONTROLS:
        c = probe["controls"].get(name.replace(" ", "_"))
        if c is not None:
            other = f"; {c['n']} test videos" if c["n"] != n else ""
            lines.append(row(name, c["top1"], f"{over(c['top1'])}; {CONTROL_NOTES[name]}{other}"))
    return [*lines, row("chance", probe["chance"])]


def embed_and_search(root: Path, checkpoint: str, run_name: str, shards: Path) -> dict[str, Any]:
    """Embed the held-out shards with the final checkpoint into DIR/embeddings/<run name>, then
    search their video clips with the audio of the first held-out video."""
    query = sorted((root / "corpus" / "heldout").rglob("*.mp4"))[0]
    s = exp.HeldoutSearch(
        checkpoint=checkpoint, shards=shards, out=root / "embeddings" / run_name, query=query
    )
    argv = ["embed", "--checkpoint", checkpoint, "--data", str(shards), "--out", str(s.out)]
    _step("embed heldout", argv, partial(exp.embed_corpus, s))
    argv = ["search", "--index", str(s.out), "--query", str(query), "--from", "audio",
            "--to", "video", "--k", str(s.k)]  # fmt: skip
    return _step("search heldout", argv, partial(exp.search_audio_to_video, s))


def run(args: argparse.Namespace) -> int:
    from avtime.training.config import load_run_config
    from avtime.training.engine.trainer import TrainRequest, ensure_ray
    from avtime.training.tracking.runs import tracking_uri

    t0 = time.monotonic()
    root = Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_run_config("demo", args.overrides)
    ensure_ray(cfg.train)  # one Ray for every step, sized for training beside Ray Data
    train_shards, heldout_shards = prepare_data(args, root)
    sheet = contact_sheet(root, train_shards, cfg, args.overrides)
    uri = tracking_uri(root)
    request = TrainRequest(
        cfg=cfg, data=str(train_shards), experiment=args.experiment, workdir=str(root),
        tracking_uri=uri,
    )  # fmt: skip
    outcome = exp.timed("training", lambda: exp.pretrain(request), prefix="demo: ")
    heldout = exp.heldout_pretext(outcome.checkpoint, heldout_shards)
    exp.log_heldout(uri, outcome.mlflow_run_id, heldout, cfg.train.steps)
    summary = outcome.summary()
    summary["heldout"] = heldout
    summary["learning_bar"] = LEARNING_BAR.judge(heldout)
    if args.probe_videos > 0:
        summary["probe"] = linear_probe(
            root, outcome.checkpoint, args.overrides, cfg.train.seed, uri
        )
    summary["search"] = embed_and_search(root, outcome.checkpoint, outcome.run_name, heldout_shards)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (root / "demo_result.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    _report(args, summary, sheet)
    return 0


def _report(args: argparse.Namespace, summary: dict[str, Any], sheet: Path) -> None:
    """The closing lines; the last is the JSON object of the run."""
    from avtime.training.tracking.runs import ui_command

    print(f"contact sheet of what the model sees: {sheet}")
    print("held-out pretext heads against the learning bar:")
    for line in LEARNING_BAR.report(summary["heldout"]):
        print(line)
    if "probe" in summary:
        for line in probe_lines(summary["probe"], args.probe_videos):
            print(line)
    s = summary["search"]
    first = "came first" if s["self_first"] else "did not come first"
    print(f"audio->video search of the held-out clips with {Path(s['query']).name}: its own "
          f"video {first} (index {s['index']})")  # fmt: skip
    print(f"MLflow store: {summary['tracking_uri']} (experiment {args.experiment})")
    print(f"  open the UI: {ui_command(summary['tracking_uri'])}")
    print(json.dumps(summary, sort_keys=True))
    sys.stdout.flush()
