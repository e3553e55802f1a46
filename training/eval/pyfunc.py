"""A checkpoint's encoders as an MLflow model that both `mlflow.pyfunc.load_model` and
`mlflow.pytorch.load_model` load, without pickle.

One model directory (`save_model`) carries two flavors:
- `python_function`, logged from code (`pyfunc_model.py` beside this file, MLflow
  models-from-code): its artifacts are the encoders' weights (`torch.save` of a plain state
  dict, read back with `weights_only=True`) and the run config. `predict` takes the named clip
  tensors `avtime embed` cuts and returns the embeddings it writes.
- `pytorch`, the encoders exported with `torch.export` (`torch_module.EmbedderModule`, MLflow's
  "pt2" serialization: graph as JSON, weights as tensor records; MLflow refuses to load the
  archive if any record is not weights-only loadable). `mlflow.pytorch.load_model` returns a
  torch module: `module(video, audio) -> {"video": [N, Dv], "audio": [M, Da]}`.

`avtime embed --register` logs it as a new logged model (`log_embedder`); `avtime train` writes
it into the logged models of the checkpoints it keeps with `--log-weights`, and of the final one
it registers (`log_checkpoint_model`).
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtime.training.eval.clips import ClipConfig
from avtime.training.tracking import runs

CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["torch", "torchvision", "torchaudio", "numpy", "pyyaml", "mlflow"]
TORCH_DATA = "torch"  # the pytorch flavor's folder in the model directory
FLAVOR_NAME = "avtime-embedder"


@dataclass(frozen=True, kw_only=True)
class LoggedEmbedder:
    """Where the model went."""

    model_id: str
    model_uri: str  # models:/<name>@<alias> when registered with an alias, else models:/<id>
    version: int | None


def signature(clip: ClipConfig, dims: dict[str, int]) -> Any:
    """Inputs: video uint8 [-1, 3, T, S, S], audio float32 [-1, L]; outputs float32 [-1, D]."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    s, t = clip.crop_size, clip.clip_frames
    dtypes: dict[str, np.dtype[Any]] = {"video": np.dtype(np.uint8), "audio": np.dtype(np.float32)}
    shapes = {"video": (-1, 3, t, s, s), "audio": (-1, clip.audio_len)}
    inputs = Schema([TensorSpec(dtypes[m], shapes[m], m) for m in dims])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, d), m) for m, d in dims.items()])
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_model(
    path: str,
    mlflow_model: Any = None,
    *,
    loaded: Any,
    clip: ClipConfig,
    dims: dict[str, int],
    **_: Any,
) -> None:
    """Write the model directory at `path` (new): the pyfunc flavor, then the pytorch flavor
    beside it, both in one MLmodel. The `save_model` of a flavor module, as `Model.log` calls
    it; `loaded` is a LoadedModel, `dims` {modality: D} the encoders to include."""
    import mlflow
    from mlflow.models import Model

    from avtime.pipelines.configlib import dump_yaml
    from avtime.training.eval.features import encoder_state

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    sig = signature(clip, dims)
    state = encoder_state(loaded.model, tuple(dims))
    with tempfile.TemporaryDirectory(prefix="avtime-mlmodel-") as tmp:
        weights, config = Path(tmp, "weights.pt"), Path(tmp, "config.yaml")
        weights.write_bytes(state)
        config.write_text(dump_yaml(loaded.cfg))
        with warnings.catch_warnings():  # advice for models without a signature or hints
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(
                path, python_model=str(CODE), signature=sig, pip_requirements=REQUIREMENTS,
                artifacts={"weights": str(weights), "config": str(config)},
                mlflow_model=mlflow_model,
            )  # fmt: skip
        conf = _save_torch(loaded.cfg.model, state, clip, dims, sig, Path(tmp, "pt2"))
        Path(tmp, "pt2", conf["model_data"]).rename(Path(path, TORCH_DATA))
    mlflow_model.add_flavor("pytorch", **{**conf, "model_data": TORCH_DATA})
    mlflow_model.model_size_bytes = sum(
        f.stat().st_size for f in Path(path).rglob("*") if f.is_file()
    )
    mlflow_model.save(str(Path(path, "MLmodel")))


def _save_torch(
    model_cfg: Any, state: bytes, clip: ClipConfig, dims: dict[str, int], sig: Any, out: Path
) -> dict[str, Any]:
    """`mlflow.pytorch.save_model` of the exported encoders into `out`; its flavor config."""
    import mlflow.pytorch
    from mlflow.models import Model

    from avtime.training.eval.torch_module import build_embedder, example_inputs

    module = build_embedder(model_cfg, state, tuple(dims))
    with warnings.catch_warnings():  # torch.export's notes on the traced graph
        warnings.simplefilter("ignore")
        mlflow.pytorch.save_model(
            module, str(out), serialization_format="pt2", signature=sig,
            input_example=example_inputs(clip, tuple(dims)), pip_requirements=["torch"],
        )  # fmt: skip
    conf: dict[str, Any] = dict(Model.load(str(out)).flavors["pytorch"])
    return conf


def log_embedder(
    loaded: Any,
    clip: ClipConfig,
    dims: dict[str, int],
    *,
    name: str,
    alias: str = "",
    uri: str,
    experiment: str = "avtime-embed",
) -> LoggedEmbedder:
    """Log (and register as `name`, with `alias`) the encoders of `loaded` (a LoadedModel) as
    a new logged model of a new run in `experiment`."""
    import sys

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run_name = f"embedder {name}"
    with runs.default_uri(uri), mlflow.start_run(experiment_id=exp_id, run_name=run_name):
        mlflow.log_params({"checkpoint": loaded.checkpoint, "modalities": ",".join(dims)})
        info = Model.log(
            None, name="embedder", flavor=sys.modules[__name__], registered_model_name=name,
            flavor_name=FLAVOR_NAME, loaded=loaded, clip=clip, dims=dims,
        )  # fmt: skip
    version = getattr(info, "registered_model_version", None)
    model_uri = f"models:/{info.model_id}"
    if alias and version is not None:
        client.set_registered_model_alias(name, alias, str(version))
        model_uri = f"models:/{name}@{alias}"
    return LoggedEmbedder(
        model_id=str(info.model_id), model_uri=model_uri, version=int(version) if version else None
    )


def log_checkpoint_model(client: Any, model_id: str, checkpoint_uri: str) -> None:
    """Write the loadable model of a training checkpoint into its logged model `model_id` (the
    video and audio encoders the checkpoint has, clips as its config cuts them)."""
    from mlflow.models import Model

    from avtime.training.eval.embed import encoder_dims
    from avtime.training.eval.model_io import load_model

    loaded = load_model(checkpoint_uri)
    mods = ("video", "audio") if loaded.model.audio_dim else ("video",)
    dims = encoder_dims(loaded.model, mods)
    with tempfile.TemporaryDirectory(prefix="avtime-logged-") as tmp:
        path = str(Path(tmp, "model"))
        save_model(
            path, Model(model_id=model_id), loaded=loaded,
            clip=ClipConfig.from_run(loaded.cfg), dims=dims,
        )  # fmt: skip
        client.log_model_artifacts(model_id, path)
