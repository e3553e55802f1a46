"""Load the model to evaluate: a training checkpoint, or `random` (the random-init baseline).

A checkpoint is a folder (local or s3://) written by `avtime train`: `state.pt` (the model state
dict under "model"), `config.yaml` (the resolved RunConfig) and `meta.json` (step and MLflow run
id). A training run's folder holding `step_XXXXXXXX/` checkpoints is accepted too: the newest
complete one is used. `models:/<model_id>`, `models:/<name>@<alias>` and `models:/<name>/<version>`
name a checkpoint through its MLflow logged model (`training.tracking.lineage`): the checkpoint URI
stored on the model is loaded. `random` builds the same model from a preset (or YAML) config with
a seeded random init, so both go through the same evaluation code.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from avtime.models.av import AVModel
from avtime.pipelines.configlib import ConfigError, from_dict
from avtime.training.config import RunConfig, load_run_config
from avtime.training.engine import checkpoint as ckpt
from avtime.training.tracking import lineage, runs

RANDOM = "random"


@dataclass
class LoadedModel:
    """The model in eval mode, its run config and where it came from."""

    model: AVModel
    cfg: RunConfig
    checkpoint: str  # the URI given, or "random"
    parent_run_id: str | None  # the pretraining MLflow run (None for random)
    step: int | None  # optimiser steps of the checkpoint
    resolved: str = ""  # the checkpoint URI loaded (a `models:/` ref resolved); "" for random
    model_id: str | None = None  # the checkpoint's MLflow logged model, when named by one


def build_model(cfg: RunConfig, seed: int = 0) -> AVModel:
    """A freshly initialised AVModel for `cfg` (seeded, eval mode)."""
    torch.manual_seed(seed)
    model = AVModel(cfg.model, len(cfg.data.pretext.speeds), loss_cfg=cfg.loss)
    return model.eval()


def config_from_yaml_text(text: str) -> RunConfig:
    """The RunConfig stored in a checkpoint's config.yaml."""
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError("checkpoint config.yaml is not a mapping")
    return from_dict(RunConfig, raw)


def _resolve_folder(folder: Path) -> Path:
    """`folder` itself if it is a checkpoint, else its newest complete `step_*` child."""
    if (folder / ckpt.META_FILE).is_file():
        return folder
    steps = sorted(
        (p for p in folder.glob(f"{ckpt.DIR_PREFIX}*") if (p / ckpt.STATE_FILE).is_file()),
        reverse=True,
    )
    if not steps:
        raise FileNotFoundError(
            f"{folder} is not an avtime checkpoint (no {ckpt.META_FILE}) and holds no "
            f"{ckpt.DIR_PREFIX}* checkpoints; pass a folder written by `avtime train` or 'random'"
        )
    return steps[0]


def _model_state(state: Any) -> dict[str, torch.Tensor]:
    sd = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(sd, dict):
        raise ckpt.CheckpointError("checkpoint state.pt has no 'model' state dict")
    return sd


def load_model(
    checkpoint: str,
    *,
    config: str = "demo",
    overrides: Sequence[str] = (),
    seed: int = 0,
    tracking_uri: str | None = None,
) -> LoadedModel:
    """The model for `checkpoint` (a folder/URI, a `models:/` ref resolved in the MLflow store
    `tracking_uri` (default: `MLFLOW_TRACKING_URI` or ./mlflow.db), or "random" with
    preset/YAML `config`)."""
    if checkpoint == RANDOM:
        cfg = load_run_config(config, overrides)
        return LoadedModel(
            model=build_model(cfg, seed), cfg=cfg, checkpoint=RANDOM, parent_run_id=None, step=None
        )
    resolved, model_id = checkpoint, None
    if lineage.is_models_uri(checkpoint):
        uri = tracking_uri or runs.tracking_uri()
        resolved, model_id = lineage.resolve_checkpoint(checkpoint, uri)
    local, tmp = _fetch(resolved)
    try:
        folder = _resolve_folder(local)
        rel = folder.relative_to(local).as_posix()
        where = (
            str(folder) if tmp is None else resolved.rstrip("/") + ("" if rel == "." else f"/{rel}")
        )
        meta, state = ckpt.load(folder)
        cfg = config_from_yaml_text(ckpt.read_config_yaml(folder))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    model = build_model(cfg, seed)
    shown = where if checkpoint == resolved else f"{where} ({checkpoint})"
    ckpt.load_weights(model, _model_state(state), f"{shown}/{ckpt.STATE_FILE}")
    return LoadedModel(
        model=model.eval(),
        cfg=cfg,
        checkpoint=checkpoint,
        parent_run_id=meta.mlflow_run_id or None,
        step=meta.step,
        resolved=resolved,
        model_id=model_id,
    )


def _fetch(uri: str) -> tuple[Path, Path | None]:
    """A local copy of a checkpoint folder or run folder (S3 is downloaded to a temp dir)."""
    if uri.startswith("s3://"):
        return ckpt.fetch(uri)
    path = Path(uri).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {uri} does not exist (or pass 'random')")
    return path, None


def model_state_bytes(model: AVModel) -> bytes:
    """The model's state dict serialised with torch.save (to ship to Ray actors)."""
    with tempfile.SpooledTemporaryFile() as f:
        torch.save(model.state_dict(), f)
        f.seek(0)
        return f.read()
