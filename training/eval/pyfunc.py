"""Log a checkpoint's encoders as an MLflow pyfunc model that `mlflow.pyfunc.load_model` loads.

The model is logged from code (`pyfunc_model.py` beside this file, MLflow models-from-code):
no cloudpickle. Its artifacts are the encoders' weights (`torch.save` of a plain state dict,
read back with `weights_only=True`) and the run config. The signature names the clip tensors
`avtime embed` cuts and the embeddings it writes; `predict` returns the same embeddings.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtime.training.eval.clips import ClipConfig

CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["torch", "torchvision", "torchaudio", "numpy", "pyyaml", "mlflow"]


@dataclass(frozen=True, kw_only=True)
class LoggedEmbedder:
    """Where the pyfunc model went."""

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
    """Log (and register as `name`, with `alias`) the encoders of `loaded` (a LoadedModel)."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from avtime.pipelines.configlib import dump_yaml
    from avtime.training.eval.features import encoder_state

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with tempfile.TemporaryDirectory(prefix="avtime-pyfunc-") as tmp:
        weights, config = Path(tmp, "weights.pt"), Path(tmp, "config.yaml")
        weights.write_bytes(encoder_state(loaded.model, tuple(dims)))
        config.write_text(dump_yaml(loaded.cfg))
        with mlflow.start_run(run_name=f"embedder {name}"):
            mlflow.log_params({"checkpoint": loaded.checkpoint, "modalities": ",".join(dims)})
            info = mlflow.pyfunc.log_model(
                name="embedder",
                python_model=str(CODE),
                artifacts={"weights": str(weights), "config": str(config)},
                signature=signature(clip, dims),
                registered_model_name=name,
                pip_requirements=REQUIREMENTS,
            )
    del torch
    version = getattr(info, "registered_model_version", None)
    model_uri = f"models:/{info.model_id}"
    if alias and version is not None:
        MlflowClient(tracking_uri=uri).set_registered_model_alias(name, alias, str(version))
        model_uri = f"models:/{name}@{alias}"
    return LoggedEmbedder(
        model_id=str(info.model_id), model_uri=model_uri, version=int(version) if version else None
    )
