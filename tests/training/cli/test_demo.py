"""`avtime demo` end to end, shrunk, as a user runs it (the real `avtime` in its own process):
synth -> preprocess -> verify -> train -> eval pretext -> the linear probe against random init
and the controls, with quiet output: no Ray, MLflow or torch INFO or warning lines, no worker
prefixes, no colour codes (those go to DIR/avtime.log)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

# What a library prints on its own: a logging record's level word, a Python warning, a Ray worker
# prefix, an ANSI colour code, Ray Train's per-report dict, or a traceback.
NOISE = re.compile(
    r"\b(INFO|WARNING|WARN|DEBUG)\b|Warning:|\((RayTrainWorker|TrainController|MapBatches|"
    r"MapWorker|ReadParquet|pid=)|\x1b\[|Reporting training result|Traceback|🏃|🧪"
)


def noise_lines(text: str) -> list[str]:
    """The lines of `text` that a library printed rather than avtime (see NOISE)."""
    return [line for line in text.splitlines() if NOISE.search(line)]


def test_noise_lines_finds_what_libraries_print() -> None:
    assert noise_lines("2026-12-07 03:00:01,123\tINFO worker.py:1 -- Started a local Ray") != []
    assert noise_lines("(RayTrainWorker pid=123) step 3/3 | loss 7.9") != []
    assert noise_lines("\x1b[36m(pid=9)\x1b[0m hi") != []
    assert noise_lines("x.py:124: UserWarning: The given NumPy array is not writable") != []
    assert noise_lines("demo: training done in 40 s\nstep 3/3 | loss 7.90 | acc speed 0.25") == []


def test_demo_puts_everything_under_its_workdir_and_reports_heldout_figures(
    tmp_path: Path,
) -> None:
    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--videos", "4", "--heldout-videos", "2"]
    argv += ["--probe-videos", "16"]
    argv += ["--seconds", "3", "--set", "train.steps=3", "--set", "train.checkpoint_every=3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    avtime = str(Path(sys.executable).parent / "avtime")
    done = subprocess.run([avtime, *argv], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    summary = json.loads(out.strip().splitlines()[-1])
    shown = out + done.stderr
    assert noise_lines(shown) == [], noise_lines(shown)[:20]
    assert (work / "avtime.log").is_file()  # where the libraries' lines went instead
    print(f"demo at smoke size: {len(shown.splitlines())} lines on the console")

    probe = summary["probe"]
    assert probe["chance"] == 0.25 and 0.0 <= probe["trained"] <= 1.0
    assert 0.0 <= probe["random"] <= 1.0
    n = probe["test_videos"]
    assert n >= 1
    assert f"linear probe on 16 labelled videos, top-1 on the {n} test videos:" in out
    assert f"\n  {'trained':<12} {100 * probe['trained']:5.1f} %\n" in out
    assert f"\n  {'random init':<12} {100 * probe['random']:5.1f} %  (trained " in out
    # The controls on the same split: a probe on the middle frame, one on the sound level.
    controls = probe["controls"]
    assert set(controls) == {"still_frame", "sound_level"}
    for key, c in controls.items():
        assert 0.0 <= c["top1"] <= 1.0 and c["n"] == n and c["top1"] == c["k"] / n
        name = key.replace("_", " ")
        assert f"\n  {name:<12} {100 * c['top1']:5.1f} %  (trained " in out, name
    assert "controls on folder" in out
    meta = json.loads((work / "corpus/train/synth.json").read_text())
    assert meta["config"]["world"] == "sand"

    assert any((work / "eval_cache").iterdir())  # nothing goes outside the workdir
    for sub in ("corpus/train", "corpus/heldout", "corpus/probe", "shards/train", "shards/heldout"):
        assert any((work / sub).iterdir()), sub
    assert (work / "mlflow.db").is_file() and (work / "demo_result.json").is_file()
    assert Path(summary["checkpoint"]).is_relative_to(work / "checkpoints")
    assert summary["tracking_uri"] == f"sqlite:///{work / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}" in out
    assert summary["metrics"]["step"] == 3

    heads = summary["heldout"]["heads"]
    assert {"speed_video", "direction_audio", "order_video", "order_av"} <= set(heads)
    for h in heads.values():
        assert 0.0 <= h["accuracy"] <= 1.0 and 0.0 < h["chance"] <= 1.0
    assert set(summary["learning_bar"]["heads"]) == set(heads)
    assert isinstance(summary["learning_bar"]["passed"], bool)

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["heldout_acc_speed_video"] == pytest.approx(
        heads["speed_video"]["accuracy"]
    )
    # The orchestrator's probe logs the trained model's eval run in the workdir's store, with
    # the params `avtime eval` logs, nested under the training run; random init logs none.
    evals = client.search_runs(
        [run.info.experiment_id], filter_string="tags.`avtime.kind` = 'eval'"
    )
    assert len(evals) == 1
    ev = evals[0]
    assert ev.data.tags["mlflow.parentRunId"] == summary["mlflow_run_id"]
    assert ev.data.params["protocol"] == "action" and ev.data.params["mode"] == "linear"
    assert ev.data.params["root"] == str(work / "corpus/probe") and ev.data.params["code_version"]
    assert ev.data.metrics["folder.action-linear.top1"] == pytest.approx(probe["trained"])
    for key, c in controls.items():  # the controls beside it, as plain metrics
        assert ev.data.metrics[f"control_{key}_top1"] == pytest.approx(c["top1"])
    # ... and linked to the final checkpoint's logged model, whose page lists the evaluation
    assert ev.data.tags["avtime.model_id"] == summary["model_id"] != ""
    evaluated = client.get_logged_model(summary["model_id"]).metrics
    assert any(m.key == "folder.action-linear.top1" for m in evaluated)
    # Every step ran in the demo's process, each announced by the command that runs it alone.
    for step in ("synth train", "synth test", "synth probe", "preprocess train",
                 "verify heldout", "contact sheet", "training"):  # fmt: skip
        assert f"demo: {step} done in" in out, step
    assert f"demo: avtime verify {work / 'shards/train'} --sample-fraction 0.25" in out

    # The held-out clips embedded with the final checkpoint, and one audio->video search with a
    # held-out video: its k nearest clips (source, span, cosine) and whether its own came first.
    index = work / "embeddings" / summary["run_name"]
    assert json.loads((index / "manifest.json").read_text())["checkpoint"] == summary["checkpoint"]
    search = summary["search"]
    assert Path(search["query"]).is_relative_to(work / "corpus/heldout")
    assert (
        f"demo: avtime search --index {index} --query {search['query']} --from audio --to video "
        "--k 5"
    ) in out
    hits = [line for line in out.splitlines() if re.match(r"^ +\d+  [+-]\d\.\d{4}  ", line)]
    assert 1 <= len(hits) == len(search["hits"]) <= 5
    for line, hit in zip(hits, search["hits"]):
        assert hit["source"] in line and f"{hit['t_start']:.2f}-{hit['t_end']:.2f} s" in line
        assert f"{hit['score']:+.4f}" in line
    verdict = re.search(r"search: the query's own video (came first|ranks #\d|is not among)", out)
    assert verdict is not None and (verdict.group(1) == "came first") == search["self_first"]
    for step in ("embed heldout", "search heldout"):
        assert f"demo: {step} done in" in out, step

    # The contact sheet of what the model sees, and shards that carry the corpus labels.
    from PIL import Image

    with Image.open(work / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 200 and sheet.height > 100
    assert f"contact sheet of what the model sees: {work / 'contact_sheet.png'}" in out
    import pyarrow.dataset as pads

    parts = sorted(str(p) for p in (work / "shards/train").glob("part-*.parquet"))
    table = pads.dataset(parts, format="parquet").to_table(columns=["label", "split"])
    with (work / "corpus/train/labels.csv").open(newline="") as f:
        classes = {row["label"] for row in csv.DictReader(f)}
    assert table.num_rows > 0 and set(table.column("label").to_pylist()) <= classes
    assert None not in table.column("label").to_pylist()
    assert set(table.column("split").to_pylist()) == {"train"}
