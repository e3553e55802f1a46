"""The avtime encoders as an MLflow pyfunc model, logged as code (MLflow models-from-code).

`training.eval.pyfunc.log_embedder` logs this file as the `python_model`: MLflow stores the
source, not a pickle, and the weights travel as an artifact (`torch.save` of the encoders'
state dict, loaded back with `weights_only=True`) beside the run config (`config.yaml`).

`predict` takes named tensors, as `avtime embed` cuts them (training/eval/clips.py):
    video: uint8 [N, 3, T, S, S]     audio: float32 [N, L]   (either or both)
and returns float32 embeddings, the pooled encoder features that `avtime embed` writes:
    video: [N, Dv]                   audio: [N, Da]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class AVEmbedder(PythonModel):  # type: ignore[misc]
    """Video and audio encoders of an avtime checkpoint, as a pyfunc model."""

    def load_context(self, context: Any) -> None:
        """Build the model from `config.yaml` and load `weights.pt` (weights only)."""
        import io

        import torch

        from avtime.training.eval.features import Encoder
        from avtime.training.eval.model_io import config_from_yaml_text

        cfg = config_from_yaml_text(Path(context.artifacts["config"]).read_text())
        state = Path(context.artifacts["weights"]).read_bytes()
        sd = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
        mods = tuple(m for m in ("video", "audio") if any(k.startswith(f"{m}.") for k in sd))
        self.encoders = {m: Encoder(cfg.model, state, (m,), "cpu") for m in mods}

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Named clip tensors {name: array} -> named embeddings {name: float32 [N, D]} (see the
        module docstring). Not annotated: MLflow would read the hints as a schema; the logged
        signature (tensor specs) is the schema."""
        out: dict[str, np.ndarray] = {}
        for name, encoder in self.encoders.items():
            if name not in model_input:
                continue
            x = np.asarray(model_input[name])
            batch = {name: x.astype(np.uint8 if name == "video" else np.float32)}
            out[name] = encoder(batch)[f"feat_{name}"]
        return out


mlflow.models.set_model(AVEmbedder())
