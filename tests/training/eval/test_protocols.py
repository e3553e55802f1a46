"""Every protocol end to end, through `avtime eval`, on tiny trees in the official layouts.

The trees are fabricated from synthetic mp4s and wavs (tests.fabricate); the model is the
`smoke` preset's tiny one, from a real checkpoint folder (linked to a pretraining MLflow run on
the test MLflow server) or `random`. One local Ray and one decode cache serve the whole module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avtime.pipelines.configlib import dump_yaml
from avtime.training.cli.main import main
from avtime.training.config import load_run_config
from avtime.training.engine import checkpoint as ckpt
from avtime.training.eval.model_io import build_model, load_model
from tests.fabricate import make_tree
from tests.servers import scoped_environ

pytestmark = pytest.mark.integration
FAST = ["--clips", "2", "--short-side", "32", "--config", "smoke"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("eval_trees")
    return {
        "ucf101": make_tree("ucf101", base / "ucf101", per_class=3, classes=3),
        "hmdb51": make_tree("hmdb51", base / "hmdb51", per_class=3, classes=2),
        "esc50": make_tree("esc50", base / "esc50", per_fold=1, classes=2),
        "vggsound": make_tree("vggsound", base / "vggsound", per_class=3, classes=2),
        "folder": make_tree("folder", base / "folder", per_class=3, classes=2),
    }


@pytest.fixture(scope="module")
def aws(s3_server: Any) -> Iterator[Any]:
    """The test S3's AWS_* variables, set before the module's Ray starts (its workers read S3)."""
    with scoped_environ(s3_server.env):
        yield s3_server


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, aws: Any, mlflow_server: Any, ray_local: None
) -> Iterator[Path]:
    """S3 and MLflow at the test servers, one Ray and one eval cache for the module."""
    cache = tmp_path_factory.mktemp("eval_cache")
    with scoped_environ(
        {"MLFLOW_TRACKING_URI": mlflow_server.uri, "AVTIME_EVAL_CACHE": str(cache)}
    ):
        yield cache


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, env: Path) -> tuple[Path, str]:
    """A checkpoint folder as `avtime train` writes it, and its (fake) pretraining run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("avtime-eval-test") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("avtime-eval-test")
    run_id = client.create_run(exp_id, run_name="pretrain").info.run_id
    cfg = load_run_config("smoke")
    model = build_model(cfg, seed=5)
    folder = tmp_path_factory.mktemp("ckpt") / ckpt.dir_name(6)
    meta = ckpt.CheckpointMeta(step=6, data_epoch=1, examples_seen=48, mlflow_run_id=run_id)
    ckpt.save(folder, meta, {"model": model.state_dict()}, dump_yaml(cfg))
    return folder, run_id


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc = main(["eval", *argv, *FAST, "--json"])
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert rc == 0, captured.err[-6000:]
    result: dict[str, Any] = json.loads(out[-1])
    return result


def test_checkpoint_round_trip(pretrained: tuple[Path, str]) -> None:
    folder, run_id = pretrained
    loaded = load_model(str(folder.parent))  # a run folder: picks the newest step_*
    assert loaded.parent_run_id == run_id and loaded.step == 6
    fresh = build_model(loaded.cfg, seed=5)
    for k, v in fresh.state_dict().items():
        assert (loaded.model.state_dict()[k] == v).all(), k


def test_action_linear_ucf101_logs_linked_run(
    trees: dict[str, Path], pretrained: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, parent = pretrained
    r = _eval(capsys, "action", "--checkpoint", str(folder), "--dataset", "ucf101",
              "--root", str(trees["ucf101"]), "--split", "1")  # fmt: skip
    assert 0.0 <= r["top1"] <= 1.0
    assert r["test_videos"] == 3 and r["train_videos"] == 6 and r["num_classes"] == 3
    assert r["checkpoint"] == str(folder) and r["dataset"] == "ucf101"
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_run(r["mlflow_run_id"])
    assert run.data.tags["avtime.parent_run_id"] == parent
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["ucf101-split1.action-linear.top1"] == pytest.approx(r["top1"])
    assert run.data.params["checkpoint_step"] == "6"


def test_action_linear_hmdb51_random(
    trees: dict[str, Path], env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # not MLFLOW_TRACKING_URI
    r = _eval(capsys, "action", "--checkpoint", "random", "--dataset", "hmdb51",
              "--root", str(trees["hmdb51"]), "--split", "2", "--tracking-uri", store,
              "--experiment", "baselines")  # fmt: skip
    assert 0.0 <= r["top1"] <= 1.0 and r["checkpoint"] == "random"
    assert r["train_videos"] == 4 and r["test_videos"] == 2  # "unused" files are left out
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=store).get_run(r["mlflow_run_id"])
    assert (
        MlflowClient(tracking_uri=store).get_experiment(run.info.experiment_id).name == "baselines"
    )
    assert run.data.metrics["hmdb51-split2.action-linear.top1"] == pytest.approx(r["top1"])


def test_action_finetune_folder(
    trees: dict[str, Path], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _eval(capsys, "action", "--mode", "finetune", "--epochs", "1", "--checkpoint", "random",
              "--dataset", "folder", "--root", str(trees["folder"]))  # fmt: skip
    assert 0.0 <= r["top1"] <= 1.0 and r["epochs"] == 1 and r["test_videos"] == 2


def test_retrieval_ucf101(
    trees: dict[str, Path], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _eval(capsys, "retrieval", "--checkpoint", "random", "--dataset", "ucf101",
              "--root", str(trees["ucf101"]), "--split", "3")  # fmt: skip
    assert r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@20"]
    assert r["R@5"] == 1.0  # 6 gallery videos hold every class: k >= 6 always hits
    assert r["queries"] == 3 and r["gallery"] == 6


def test_retrieval_vggsound_from_s3(
    trees: dict[str, Path], env: Path, aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = aws.bucket("avtime-eval-vggsound")
    fs = aws.filesystem()
    fs.put(str(trees["vggsound"]) + "/", bucket[len("s3://") :] + "/vgg/", recursive=True)
    v = _eval(capsys, "retrieval", "--checkpoint", "random", "--dataset", "vggsound",
              "--root", f"{bucket}/vgg")  # fmt: skip
    assert v["queries"] == 2 and v["gallery"] == 4  # the listed but missing clip is skipped
    assert 0.0 <= v["R@1"] <= v["R@5"] == 1.0


def test_audio_esc50_five_folds(
    trees: dict[str, Path], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _eval(capsys, "audio", "--checkpoint", "random", "--dataset", "esc50",
              "--root", str(trees["esc50"]))  # fmt: skip
    assert len(r["fold_accuracy"]) == 5 and r["folds"] == ["1", "2", "3", "4", "5"]
    assert r["mean_accuracy"] == pytest.approx(sum(r["fold_accuracy"]) / 5)
    assert r["files"] == 10
    # Two pure tones an octave apart: even random audio features separate them.
    assert r["mean_accuracy"] >= 0.8


def test_fingerprint_vggsound_mild(
    trees: dict[str, Path],
    env: Path,
    pretrained: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint's fingerprint scores come with random init's, per distortion."""
    r = _eval(capsys, "fingerprint", "--checkpoint", str(pretrained[0]), "--dataset",
              "vggsound", "--root", str(trees["vggsound"]), "--distortions", "mild")  # fmt: skip
    per = r["per_distortion"]
    assert set(per) == {
        "reencode", "resize", "crop", "blur", "brightness_contrast", "fps", "audio_noise",
        "temporal_crop",
    }  # fmt: skip
    for scores in per.values():
        assert 0.0 <= scores["R@1"] <= scores["mAP"] <= 1.0
    random_per = r["random_init"]["per_distortion"]
    assert set(random_per) == set(per)
    for scores in random_per.values():
        assert 0.0 <= scores["R@1"] <= scores["mAP"] <= 1.0
    assert r["gallery"] == 2 and r["queries"] == 16
    files = list(env.glob("vggsound-fpfiles-*/*/*.mp4"))
    assert len(files) == 16


@pytest.mark.unit
def test_bad_layout_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "action", "--checkpoint", "random", "--dataset", "ucf101",
               "--root", str(tmp_path), "--no-mlflow"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "ucfTrainTestlist" in err and "docs/eval.md" in err
