"""Unit tests of the tracking helpers: no credentials in params, URIs, code version."""

from __future__ import annotations

from pathlib import Path

import pytest

from avtime.training.tracking import runs

pytestmark = pytest.mark.unit


def test_safe_params_masks_secret_keys_and_url_user_info() -> None:
    out = runs.safe_params(
        {
            "train.storage_path": "s3://AKIAXX:hunter2@bucket/ckpt",
            "aws_secret_access_key": "hunter2",
            "api_token": "tok",
            "optim.lr": 0.001,
            "train.use_gpu": False,
            "note": None,
        }
    )
    assert "hunter2" not in " ".join(out.values()) and "tok" not in out.values()
    assert out["train.storage_path"] == "s3://***@bucket/ckpt"
    assert out["optim.lr"] == "0.001" and out["train.use_gpu"] == "False" and out["note"] == ""


def test_tracking_uri_defaults_to_sqlite_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs.tracking_uri(tmp_path / "w") == f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert runs.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_code_version_is_the_git_sha_of_the_tree() -> None:
    version = runs.code_version()
    sha = version.removesuffix("-dirty")
    assert len(sha) == 40 and all(c in "0123456789abcdef" for c in sha)


def test_manifest_hash_changes_with_the_manifest(tmp_path: Path) -> None:
    assert runs.manifest_hash(str(tmp_path)) == "none"
    (tmp_path / "manifest.json").write_text('{"a": 1}')
    first = runs.manifest_hash(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"a": 2}')
    assert len(first) == 16 and runs.manifest_hash(str(tmp_path)) != first


def test_runs_open_in_a_model_training_experiment_with_source_and_description(
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = runs.open_run(uri=uri, experiment="e", run_name="r", params={"a": 1})
    exp = client.get_experiment_by_name("e")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.source.name"].startswith("avtime")
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    runs.set_final_checkpoint(uri, run_id, "s3://user:pw@host/b/ck/r/step_00000006")
    tags = client.get_run(run_id).data.tags
    assert tags["avtime.checkpoint"] == "s3://***@host/b/ck/r/step_00000006"
    assert "Final checkpoint: s3://***@host/b/ck/r/step_00000006" in tags["mlflow.note.content"]
    assert "pw" not in tags["mlflow.note.content"]
    other = client.create_experiment("theirs", tags={"mlflow.experimentKind": "genai_development"})
    runs.open_run(uri=uri, experiment="theirs", run_name="r2", params={})
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "genai_development"
    assert runs.source_name(["/x/.venv/bin/avtime", "--debug", "train", "shards"]) == "avtime train"
    assert runs.source_name(["pytest", "-q"]) == "avtime"
