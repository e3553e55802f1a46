"""MLflow 3 lineage: datasets as run inputs, checkpoints as logged models, the registry, and the
provenance tags every avtime run carries.

- A dataset is an MLflow `Dataset` (a `MetaDataset` with a profile): name, source URI (local or
  s3://, credentials removed), digest and profile. Training shards are digested from their
  `manifest.json` (sha256, 16 hex chars, the same as the run param `data.manifest_sha256`); an
  evaluation set from its listing (every file's path, label and split).
- Each checkpoint that training keeps is a logged model (`model_type` `avtime-checkpoint`) of the
  training run: the run's config as params, tags `avtime.step` and `avtime.checkpoint` (the
  checkpoint's storage URI; its files are not copied unless asked), and a run output at its step.
- `models:/<model_id>`, `models:/<name>@<alias>` and `models:/<name>/<version>` resolve to the
  checkpoint URI stored on the logged model (`resolve_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from avtime.training.tracking import runs

CONTEXT_TAG = "mlflow.data.context"
TRAINING, EVALUATION, PREPROCESSING = "training", "evaluation", "preprocessing"
MODEL_TYPE = "avtime-checkpoint"
STEP_TAG = "avtime.step"
CHECKPOINT_TAG = "avtime.checkpoint"
MODEL_ID_TAG = "avtime.model_id"
DEFAULT_ALIAS = "final"
PACKAGES = ("avtime", "torch", "ray", "av")
_MODELS_PREFIX = "models:/"


@dataclass(frozen=True, kw_only=True)
class DatasetRef:
    """What MLflow records of one dataset: name, digest, source URI and a profile."""

    name: str
    digest: str
    source: str
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def short(self) -> str:
        """`name@digest[:8]`, as `avtime compare` shows it."""
        return f"{self.name}@{self.digest[:8]}"


def _meta_dataset(ref: DatasetRef) -> Any:
    """An `mlflow.data` Dataset for `ref`: a MetaDataset with the local/s3 source and a profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class ProfiledDataset(MetaDataset):
        """A MetaDataset whose `profile` is the avtime summary (rows, sources, hours...)."""

        @property
        def profile(self) -> Any | None:
            return ref.profile

        def to_dict(self) -> dict[str, str]:
            out = super().to_dict()
            out["profile"] = json.dumps(ref.profile, sort_keys=True)
            return out

    with warnings.catch_warnings():  # a local path matches two equivalent local sources
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(ref.source)
    return ProfiledDataset(source, name=ref.name, digest=ref.digest)


def dataset_entity(ref: DatasetRef) -> Any:
    """The `mlflow.entities.Dataset` of `ref` (what `log_inputs` takes)."""
    return _meta_dataset(ref)._to_mlflow_entity()


def shards_dataset(shards_uri: str, name: str = "") -> DatasetRef:
    """The DatasetRef of preprocessed shards, from their `manifest.json`."""
    from avtime.pipelines import storage
    from avtime.pipelines.schema import MANIFEST_NAME

    raw = storage.read_bytes(storage.join(shards_uri, MANIFEST_NAME))
    doc = json.loads(raw)
    counts = doc.get("counts", {}) if isinstance(doc, dict) else {}
    profile = {
        "rows": int(counts.get("rows", 0)),
        "sources": int(counts.get("sources_with_rows", 0)),
        "inputs": int(counts.get("inputs", 0)),
        "rejects": int(counts.get("rejects", 0)),
        "video_hours": round(float(counts.get("video_seconds", 0.0)) / 3600.0, 4),
        "shards": len(doc.get("shards", [])) if isinstance(doc, dict) else 0,
    }
    source = _source_uri(shards_uri)
    return DatasetRef(
        name=name or source.rsplit("/", 1)[-1] or source,
        digest=hashlib.sha256(raw).hexdigest()[:16],
        source=source,
        profile=profile,
    )


def eval_dataset(listing: Any, split: int | None) -> DatasetRef:
    """The DatasetRef of an evaluation listing (`pipelines.datasets.adapters.Listing`)."""
    items = sorted((it.source, it.label, it.split) for it in listing.items)
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    per_split: dict[str, int] = {}
    for it in listing.items:
        per_split[str(it.split)] = per_split.get(str(it.split), 0) + 1
    name = f"{listing.dataset}-split{split}" if split is not None else listing.dataset
    profile = {
        "dataset": listing.dataset,
        "split": split,
        "files": len(items),
        "classes": len(listing.classes),
        "missing": int(listing.missing),
        "per_split": per_split,
    }
    return DatasetRef(name=name, digest=digest, source=_source_uri(listing.root), profile=profile)


def _source_uri(uri: str) -> str:
    """A dataset's source as logged: URIs without user info, local paths made absolute."""
    text = uri.rstrip("/") or uri
    if "://" in text:
        return runs.redact_url(text)
    from pathlib import Path

    return str(Path(text).expanduser().absolute())


def log_dataset(
    client: Any, run_id: str, ref: DatasetRef, context: str, model_ids: Sequence[str] = ()
) -> None:
    """Log `ref` as an input of the run (with its context), and `model_ids` as model inputs."""
    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput

    dataset = DatasetInput(dataset_entity(ref), [InputTag(CONTEXT_TAG, context)])
    models = [LoggedModelInput(m) for m in model_ids] or None
    client.log_inputs(run_id, datasets=[dataset], models=models)


def package_versions() -> dict[str, str]:
    """Installed versions of avtime, torch, ray and av ("none" when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "none"
    return out


def provenance_tags(device: str) -> dict[str, str]:
    """The tags every avtime run carries: git commit and dirty flag, versions, device type."""
    commit, dirty = runs.git_state()
    tags = {
        "avtime.git.commit": commit,
        "avtime.git.dirty": "true" if dirty else "false",
        "avtime.device": device,
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    tags.update({f"avtime.version.{k}": v for k, v in package_versions().items()})
    return tags


@dataclass(frozen=True, kw_only=True)
class CheckpointModel:
    """What a checkpoint's logged model records beside the run's config."""

    run_id: str
    experiment_id: str
    run_name: str
    step: int
    uri: str  # the checkpoint folder (local or s3://)
    dataset: str = ""  # `name@digest` of the training data
    extra_tags: dict[str, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The logged model's name: `<run name>-step<step>`, with each character MLflow refuses
        in a model name (`/ : . % " '`) replaced by `-` (the exact run name is a tag)."""
        return re.sub(r"[/:.%\"']", "-", f"{self.run_name}-step{self.step}")

    def tags(self) -> dict[str, str]:
        """The logged model's tags."""
        where = runs.redact_url(self.uri)
        tags = {STEP_TAG: str(self.step), CHECKPOINT_TAG: where}
        tags[runs.DESCRIPTION_TAG] = (
            f"avtime checkpoint of run {self.run_name} after {self.step} steps. Weights: {where} "
            f"(evaluate with `avtime eval ... --checkpoint {where}`)."
        )
        tags["avtime.run_name"] = self.run_name
        if self.dataset:
            tags["avtime.dataset"] = self.dataset
        return tags | self.extra_tags


def find_run_model(client: Any, experiment_id: str, run_id: str, step: int) -> Any | None:
    """The logged model of run `run_id` at `step`, or None."""
    found = client.search_logged_models(
        [experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.`{STEP_TAG}` = '{step}'",
        max_results=1,
    )
    return found[0] if found else None


def run_models(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    """Every logged model of run `run_id`, by step."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}'", page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda m: int(m.tags.get(STEP_TAG, "0") or 0))


def create_checkpoint_model(client: Any, ckpt: CheckpointModel, params: Mapping[str, Any]) -> str:
    """Create (or, after a restart, reuse) the logged model of a checkpoint; its id.

    The model starts PENDING; `finalize_checkpoint_model` marks it READY once the checkpoint
    is stored. The run records it as an output at its step, as `mlflow.<flavor>.log_model` does.
    """
    from mlflow.entities import LoggedModelOutput

    found = find_run_model(client, ckpt.experiment_id, ckpt.run_id, ckpt.step)
    if found is not None:
        client.set_logged_model_tags(found.model_id, ckpt.tags())
        return str(found.model_id)
    model = client.create_logged_model(
        ckpt.experiment_id,
        name=ckpt.model_name,
        source_run_id=ckpt.run_id,
        tags=ckpt.tags(),
        params=runs.safe_params({**params, "checkpoint": ckpt.uri}),
        model_type=MODEL_TYPE,
    )
    client.log_outputs(ckpt.run_id, [LoggedModelOutput(model.model_id, step=ckpt.step)])
    return str(model.model_id)


def finalize_checkpoint_model(client: Any, model_id: str, weights_dir: str | None = None) -> None:
    """Mark the model READY; with `weights_dir`, first copy the checkpoint files into it."""
    if weights_dir:
        client.log_model_artifacts(model_id, weights_dir)
    client.finalize_logged_model(model_id, "READY")


def prune_models(client: Any, experiment_id: str, run_id: str, kept: set[str]) -> list[str]:
    """Delete the run's logged models whose checkpoint URI is not in `kept` (checkpoints Ray
    Train dropped under `train.keep_checkpoints`); their ids."""
    dropped = [
        m.model_id
        for m in run_models(client, experiment_id, run_id)
        if m.tags.get(CHECKPOINT_TAG) not in kept
    ]
    for model_id in dropped:
        client.delete_logged_model(model_id)
    return dropped


def register(uri: str, model_id: str, run_id: str, name: str, alias: str = DEFAULT_ALIAS) -> str:
    """Register logged model `model_id` as a new version of `name` and point `alias` at it;
    the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="avtime checkpoints (avtime train)")
    with runs.default_uri(uri):
        mv = client.create_model_version(
            name, source=f"{_MODELS_PREFIX}{model_id}", run_id=run_id, model_id=model_id
        )
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def model_id_of_version(mv: Any) -> str:
    """The logged model behind a model version (its `model_id`, or its `models:/` source)."""
    model_id = getattr(mv, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(mv.source or "")
    if source.startswith(_MODELS_PREFIX):
        return source[len(_MODELS_PREFIX) :].split("/", 1)[0]
    raise ValueError(f"model version {mv.name}/{mv.version} is not an avtime logged model")


def is_models_uri(text: str) -> bool:
    """True for `models:/...` checkpoint references."""
    return text.startswith(_MODELS_PREFIX)


def resolve_checkpoint(ref: str, uri: str) -> tuple[str, str]:
    """(checkpoint URI, model id) of `models:/<model_id>`, `models:/<name>@<alias>` or
    `models:/<name>/<version>`; ValueError naming what is missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    body = ref[len(_MODELS_PREFIX) :].strip("/")
    try:
        if "@" in body:
            name, alias = body.rsplit("@", 1)
            model_id = model_id_of_version(client.get_model_version_by_alias(name, alias))
        elif "/" in body:
            name, version = body.rsplit("/", 1)
            model_id = model_id_of_version(client.get_model_version(name, version))
        else:
            model_id = body
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        msg = exc.message.splitlines()[0]
        raise ValueError(f"{ref}: not found in {runs.redact_url(uri)} ({msg})") from None
    ckpt = model.tags.get(CHECKPOINT_TAG)
    if not ckpt:
        raise ValueError(f"{ref}: logged model {model_id} has no {CHECKPOINT_TAG} tag")
    return str(ckpt), str(model_id)


def model_for_checkpoint(uri: str, run_id: str | None, step: int | None) -> str | None:
    """The logged model of run `run_id`'s checkpoint at `step` in store `uri`, or None (no such
    run or model, e.g. a checkpoint from another store or from before logged models)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id or step is None:
        return None
    client = MlflowClient(tracking_uri=uri)
    try:
        exp_id = str(client.get_run(run_id).info.experiment_id)
        found = find_run_model(client, exp_id, run_id, step)
    except MlflowException:
        return None
    return str(found.model_id) if found is not None else None
