"""The logged models `avtime train` keeps load with `mlflow.pyfunc.load_model` and with
`mlflow.pytorch.load_model`, by registry alias, without unpickling anything but tensors.

Real parts: `avtime train` (smoke preset, 2 Ray Train workers on CPU) with `--log-weights` and
`--register`, a sqlite MLflow store, `avtime embed` through the registry alias, real mp4s.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from avtime.training.cli.main import main
from avtime.training.eval.embed import read_embeddings
from avtime.training.tracking import lineage

pytestmark = pytest.mark.integration
NAME, ALIAS = "avtime-flavors", "prod"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Iterator[dict[str, Any]]:
    """Four 2-second videos, their shards, and a smoke-size training run that logs its
    checkpoints' files (`--log-weights`) and registers the final one as NAME@ALIAS."""
    root = tmp_path_factory.mktemp("flavors")
    argv = ["synth", str(root / "corpus"), "--videos", "4", "--seconds", "2", "--quiet"]
    assert main(argv + ["--duration-jitter", "0"]) == 0
    pre = ["preprocess", str(root / "corpus"), str(root / "shards"), "--short-side", "32"]
    assert main(pre) == 0
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
            mp.delenv(var, raising=False)
        work = root / "work"
        argv = ["train", "--config", "smoke", "--data", str(root / "shards"), "--workdir",
                str(work), "--log-weights", "--register", NAME, "--alias", ALIAS]  # fmt: skip
        assert main(argv) == 0
        uri = f"sqlite:///{work / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        yield {"root": root, "shards": str(root / "shards"), "uri": uri}


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row-wise cosine of float32 [N, D] and [N, D]."""
    num = (got * want).sum(1)
    return np.asarray(num / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1))


def test_pytorch_flavor_by_alias_embeds_as_avtime_embed(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`mlflow.pytorch.load_model("models:/NAME@ALIAS")` is a torch module; on the clips
    `avtime embed` cuts, its video and audio embeddings are embed's rows (cosine >= 1 - 1e-5),
    and the pyfunc flavor of the same model predicts the same."""
    import mlflow
    import pyarrow.parquet as pq

    from avtime.pipelines.pretext.stream import shard_paths
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.features import SHARD_COLUMNS, sample_clips
    from avtime.training.eval.model_io import load_model

    out = trained["root"] / "emb"
    ref = f"models:/{NAME}@{ALIAS}"
    argv = ["embed", "--checkpoint", ref, "--data", trained["shards"], "--out", str(out)]
    assert main([*argv, "--clips", "2"]) == 0, capsys.readouterr().err
    table = read_embeddings(str(out))
    rows = {
        (v, int(s), int(c)): i
        for i, (v, s, c) in enumerate(zip(table["video_id"].to_pylist(),
                                          table["segment"].to_pylist(), table["clip"].to_pylist()))
    }  # fmt: skip
    module = mlflow.pytorch.load_model(ref)
    assert isinstance(module, torch.nn.Module)
    clip = ClipConfig.from_run(load_model(ref).cfg, 2)
    batch = sample_clips(pq.read_table(shard_paths(trained["shards"])[0], columns=SHARD_COLUMNS),
                         cfg=clip)  # fmt: skip
    with torch.inference_mode():
        got = module(torch.from_numpy(batch["video"]), torch.from_numpy(batch["audio"]))
    predicted = mlflow.pyfunc.load_model(ref).predict(
        {"video": batch["video"], "audio": batch["audio"]}
    )
    keys = zip(batch["video_id"], batch["segment"], batch["clip"])
    order = [rows[(str(v), int(s), int(c))] for v, s, c in keys]
    for mod in ("video", "audio"):
        want = np.asarray(table[mod].to_pylist(), dtype=np.float32)[order]
        assert got[mod].shape == want.shape
        assert _cosines(got[mod].numpy(), want).min() >= 1 - 1e-5, mod
        assert _cosines(np.asarray(predicted[mod]), want).min() >= 1 - 1e-5, mod


def test_every_kept_model_loads_both_ways_and_holds_no_pickle(trained: dict[str, Any]) -> None:
    """Each checkpoint the run kept (`--log-weights`) is a logged model with both flavors; its
    files are JSON/YAML/text, source code, and torch zip archives whose records load with
    `torch.load(weights_only=True)` (the pt2 graph is checked by MLflow itself on load, with
    pickle deserialization disallowed); no pickle stream, no cloudpickle."""
    import mlflow

    client = MlflowClient(tracking_uri=trained["uri"])
    run_id = client.get_model_version_by_alias(NAME, ALIAS).run_id
    exp_id = client.get_run(run_id).info.experiment_id
    models = lineage.run_models(client, exp_id, run_id)
    assert len(models) >= 2  # the smoke preset keeps more than the final checkpoint
    for model in models:
        uri = f"models:/{model.model_id}"
        local = Path(mlflow.artifacts.download_artifacts(uri))
        mlmodel = (local / "MLmodel").read_text()
        assert (
            "pytorch:" in mlmodel and "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel
        )
        assert (local / "state.pt").is_file()  # the checkpoint's own files, from --log-weights
        for f in (p for p in local.rglob("*") if p.is_file()):
            assert f.suffix not in (".pkl", ".pickle", ".cloudpickle"), f
            assert not f.read_bytes()[:1] == b"\x80", f  # a bare pickle stream
            if zipfile.is_zipfile(f) and f.suffix != ".pt2":
                torch.load(f, map_location="cpu", weights_only=True)
        assert isinstance(mlflow.pytorch.load_model(uri), torch.nn.Module)
        inputs = [i.name for i in mlflow.pyfunc.load_model(uri).metadata.get_input_schema().inputs]
        assert inputs == ["video", "audio"]
    meta = json.loads((local / "meta.json").read_text())
    assert meta["step"] == int(models[-1].tags[lineage.STEP_TAG])


def test_readme_snippet_loads_the_registered_model(trained: dict[str, Any]) -> None:
    """README's "Loading a logged model" snippet, run as written on this run's registered
    model (its URI put in place of the example's)."""
    readme = Path(__file__).resolve().parents[3] / "README.md"
    text = readme.read_text()
    start = text.index("```python", text.index("**Loading a logged model.**"))
    code = text[start + len("```python") : text.index("```", start + 3)]
    assert 'uri = "models:/avtime-paper@final"' in code
    scope: dict[str, Any] = {}
    exec(code.replace("models:/avtime-paper@final", f"models:/{NAME}@{ALIAS}"), scope)  # noqa: S102
    assert scope["emb"]["video"].shape[0] == 2 and scope["same"]["audio"].shape[0] == 2
