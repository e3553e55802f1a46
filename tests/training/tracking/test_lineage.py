"""MLflow 3 lineage on a real sqlite store: datasets with digests and profiles, checkpoints as
logged models (reused after a restart, pruned with their checkpoints), registration, resolving
`models:/...`, provenance tags, `avtime compare` with datasets and per-model evaluations, and
`avtime preprocess --experiment`."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from avtime.training.cli.main import main
from avtime.training.tracking import compare, lineage

COUNTS = {"inputs": 5, "rows": 12, "rejects": 1, "sources_with_rows": 4, "video_seconds": 7200.0}


def _shards(folder: Path, counts: dict[str, Any] = COUNTS) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": 1, "counts": counts, "shards": [{"path": "part-00000-000.parquet"}]}
    (folder / "manifest.json").write_text(json.dumps(doc))
    return str(folder)


def _store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("lineage")


@pytest.mark.unit
def test_shards_dataset_digests_the_manifest_and_profiles_the_counts(tmp_path: Path) -> None:
    shards = _shards(tmp_path / "demo")
    ref = lineage.shards_dataset(shards)
    raw = (tmp_path / "demo" / "manifest.json").read_bytes()
    assert ref.digest == hashlib.sha256(raw).hexdigest()[:16] and ref.name == "demo"
    assert ref.profile == {
        "rows": 12, "sources": 4, "inputs": 5, "rejects": 1, "video_hours": 2.0, "shards": 1
    }  # fmt: skip
    entity = lineage.dataset_entity(ref)
    assert entity.source_type == "local" and json.loads(entity.source) == {"uri": shards}
    assert json.loads(entity.profile) == ref.profile
    s3 = lineage.DatasetRef(name="x", digest="ab" * 8, source="s3://bucket/shards")
    assert lineage.dataset_entity(s3).source_type == "s3"
    assert lineage.shards_dataset(shards, name="named").name == "named"


@pytest.mark.unit
def test_provenance_tags() -> None:
    tags = lineage.provenance_tags("cuda")
    assert tags["avtime.device"] == "cuda" and tags["avtime.git.dirty"] in ("true", "false")
    assert len(tags["avtime.git.commit"]) == 40
    assert tags["mlflow.source.git.commit"] == tags["avtime.git.commit"]
    for pkg in ("avtime", "torch", "ray", "av"):
        assert tags[f"avtime.version.{pkg}"] not in ("", "none"), pkg


def _checkpoint(client: MlflowClient, exp: str, run_id: str, step: int, root: str) -> str:
    ckpt = lineage.CheckpointModel(
        run_id=run_id, experiment_id=exp, run_name="r", step=step, uri=f"{root}/step_{step}"
    )
    model_id = lineage.create_checkpoint_model(client, ckpt, {"optim.lr": 0.1, "s3.secret": "x"})
    lineage.finalize_checkpoint_model(client, model_id)
    return model_id


@pytest.mark.unit
def test_checkpoint_models_register_resolve_and_prune(tmp_path: Path) -> None:
    uri, client, exp = _store(tmp_path)
    run_id = client.create_run(exp, run_name="r").info.run_id
    ids = {step: _checkpoint(client, exp, run_id, step, "/ck/r") for step in (3, 6)}
    assert _checkpoint(client, exp, run_id, 6, "/ck/r") == ids[6]  # a restart reuses it
    model = client.get_logged_model(ids[6])
    assert model.name == "r-step6" and str(model.status) == "READY"
    assert model.params == {"optim.lr": "0.1", "s3.secret": "***", "checkpoint": "/ck/r/step_6"}
    assert "Weights: /ck/r/step_6" in model.tags["mlflow.note.content"]  # the model's description
    outputs = client.get_run(run_id).outputs.model_outputs
    assert sorted((o.step, o.model_id) for o in outputs) == [(3, ids[3]), (6, ids[6])]
    assert lineage.register(uri, ids[6], run_id, "reg", "best") == "1"
    for ref in (f"models:/{ids[6]}", "models:/reg@best", "models:/reg/1"):
        assert lineage.resolve_checkpoint(ref, uri) == ("/ck/r/step_6", ids[6])
    for bad in ("models:/reg@nope", "models:/m-0000", "models:/other/1"):
        with pytest.raises(ValueError, match="not found"):
            lineage.resolve_checkpoint(bad, uri)
    assert lineage.model_for_checkpoint(uri, run_id, 3) == ids[3]
    assert lineage.model_for_checkpoint(uri, "0" * 32, 3) is None
    assert lineage.prune_models(client, exp, run_id, {"/ck/r/step_6"}) == [ids[3]]
    assert [m.model_id for m in lineage.run_models(client, exp, run_id)] == [ids[6]]


def _training_run(client: MlflowClient, exp: str, name: str, shards: str, loss: float) -> str:
    run_id = client.create_run(exp, run_name=name).info.run_id
    ref = lineage.shards_dataset(shards)
    lineage.log_dataset(client, run_id, ref, lineage.TRAINING)
    model_id = _checkpoint(client, exp, run_id, 4, f"/ck/{name}")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", loss, now, 4, model_id=model_id)])
    client.set_terminated(run_id)
    evaluation = client.create_run(exp, run_name=f"eval-{name}",
                                   tags={compare.PARENT_TAG: run_id})  # fmt: skip
    top1 = Metric("ucf101.top1", 1.0 - loss, now, 0, model_id=model_id, dataset_name="ucf101",
                  dataset_digest="d" * 16)  # fmt: skip
    client.log_batch(evaluation.info.run_id, metrics=[top1])
    return model_id


@pytest.mark.unit
def test_compare_shows_datasets_warns_groups_and_lists_model_evals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, client, exp = _store(tmp_path)
    a = _shards(tmp_path / "a")
    b = _shards(tmp_path / "b", {**COUNTS, "rows": 99})
    ids = {name: _training_run(client, exp, name, shards, loss)
           for name, shards, loss in (("a1", a, 0.5), ("b1", b, 0.2), ("a2", a, 0.3))}  # fmt: skip
    cmp = compare.build_comparison(client, "lineage", sort="loss:final", by="dataset")
    digest = {n: lineage.shards_dataset(s).digest[:8] for n, s in (("a", a), ("b", b))}
    assert [(r.name, r.dataset) for r in cmp.rows] == [
        ("b1", f"b@{digest['b']}"), ("a2", f"a@{digest['a']}"), ("a1", f"a@{digest['a']}")
    ]  # fmt: skip
    assert cmp.warnings and "different data" in cmp.warnings[0]
    model = {r.name: r.models for r in cmp.rows}["a2"][0]
    assert (model.model_id, model.step, model.checkpoint) == (ids["a2"], 4, "/ck/a2/step_4")
    assert model.evals == {"ucf101.top1": pytest.approx(0.7)}  # not the run's own loss
    png = tmp_path / "plot.png"
    argv = ["compare", "--tracking-uri", uri, "--experiment", "lineage", "--by", "dataset"]
    assert main([*argv, "--metrics", "loss", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert "different data" in captured.err and png.stat().st_size > 10_000
    lines = captured.out.splitlines()
    assert f"-- dataset b@{digest['b']}: 1 run(s)" in lines
    assert f"-- dataset a@{digest['a']}: 2 run(s)" in lines
    assert any(ids["a1"] in line and "ucf101.top1=0.5" in line for line in lines)
    assert main([*argv, "--format", "csv"]) == 0
    assert "dataset" in capsys.readouterr().out.splitlines()[0].split(",")


@pytest.mark.integration
def test_preprocess_experiment_logs_dataset_manifest_rejects_and_verify(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    corpus, shards = tmp_path / "corpus", tmp_path / "shards"
    assert main(["synth", str(corpus), "--videos", "2", "--seconds", "2", "--quiet"]) == 0
    (corpus / "broken.mp4").write_bytes(b"not a video")
    argv = ["preprocess", str(corpus), str(shards), "--short-side", "32", "--experiment", "data"]
    assert main(argv) == 0
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("data").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["avtime.kind"] == "preprocess"
    [data] = run.inputs.dataset_inputs
    assert data.dataset.digest == lineage.shards_dataset(str(shards)).digest
    assert {t.value for t in data.tags} == {"preprocessing"}
    assert run.data.metrics["rejects"] == 1 and run.data.metrics["verify_ok"] == 1.0
    arts = {
        a.path for d in ("dataset", "verify") for a in client.list_artifacts(run.info.run_id, d)
    }
    assert arts == {"dataset/manifest.json", "dataset/rejects_summary.json",
                    "verify/report.json", "verify/report.txt", "verify/report.png"}  # fmt: skip
    local = client.download_artifacts(
        run.info.run_id, "dataset/rejects_summary.json", str(tmp_path)
    )
    summary = json.loads(Path(local).read_text())
    assert summary["total"] == 1 and summary["first"][0]["source"].endswith("broken.mp4")


@pytest.mark.unit
def test_a_run_name_with_characters_mlflow_refuses_still_logs_its_checkpoints(
    tmp_path: Path,
) -> None:
    """A run named `sweep-lr0.1/a:b` (MLflow refuses `/ : . % " '` in model names) used to fail
    at its first checkpoint, after the whole run; its models now log under a cleaned name and
    keep the exact run name as a tag."""
    _uri, client, exp = _store(tmp_path)
    name = "sweep-lr0.1/a:b%'q\""
    run_id = client.create_run(exp, run_name=name).info.run_id
    ckpt = lineage.CheckpointModel(
        run_id=run_id, experiment_id=exp, run_name=name, step=5, uri="/ck/x/step_5"
    )
    model_id = lineage.create_checkpoint_model(client, ckpt, {})
    model = client.get_logged_model(model_id)
    assert model.name == "sweep-lr0-1-a-b--q--step5"
    assert model.tags["avtime.run_name"] == name
    assert lineage.find_run_model(client, exp, run_id, 5).model_id == model_id
