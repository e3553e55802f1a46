"""MLflow tracking: one run per training job, continued on resume; rank 0 logs through `Logger`.

The driver opens the run (`open_run`): it logs the flattened resolved config, the data manifest
hash and the code version as params, and the resolved config YAML as an artifact. The rank-0
training worker then attaches to that run id (`MlflowLogger`) with system metrics on, and logs
step metrics and artifacts through the small `Logger` interface. The run id travels in every
checkpoint, so a restarted worker, or a later `avtime train` that resumes the same checkpoints,
continues the same run.

The tracking store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<cwd>/mlflow.db`. With a
sqlite store the artifacts go to `mlartifacts/` beside the database file. Nothing that looks like
a credential is logged: `safe_params` masks secret-looking keys and URL user info.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from avtime.pipelines.storage import redact_url  # the one URL redactor (also for S3)

DEFAULT_EXPERIMENT = "avtime"
SYSTEM_METRICS_INTERVAL_S = 5.0
_SECRET_KEY = re.compile(r"secret|passw|token|credential|access_key|api_key|auth", re.IGNORECASE)


class Logger(Protocol):
    """What the training loop logs through (rank 0 only); see `MlflowLogger`, `NullLogger`."""

    def log(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        """Record scalar metrics at optimiser step `step` (linked to logged model `model_id`)."""

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file under `artifact_path` of the run."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run."""

    def begin_checkpoint(self, step: int, uri: str, params: Mapping[str, Any]) -> str | None:
        """Create the logged model of the checkpoint about to be stored at `uri`; its id."""

    def end_checkpoint(self, model_id: str | None, weights_dir: str | None = None) -> None:
        """The checkpoint is stored: mark its model READY (copying `weights_dir` if given)."""

    def close(self) -> None:
        """Flush and detach (the run stays open for a later resume unless finished)."""


class NullLogger:
    """The logger of every rank but 0: does nothing."""

    def log(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        return None

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, str]) -> None:
        return None

    def begin_checkpoint(self, step: int, uri: str, params: Mapping[str, Any]) -> str | None:
        return None

    def end_checkpoint(self, model_id: str | None, weights_dir: str | None = None) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class TrackingSpec:
    """Where rank 0 logs: a tracking URI and the run id the driver opened."""

    tracking_uri: str
    run_id: str
    system_metrics: bool = True
    run_name: str = ""  # names the checkpoints' logged models
    dataset_name: str = ""  # the training data: step metrics are linked to it
    dataset_digest: str = ""


class MlflowLogger:
    """Attaches this process to an existing MLflow run and logs to it.

    Step metrics carry the training dataset (name and digest) and, at checkpoint steps, the
    checkpoint's logged model (see `training.tracking.lineage`).

    Args:
        spec: the tracking URI, run id, run name and training dataset.
    """

    def __init__(self, spec: TrackingSpec) -> None:
        import mlflow

        self._mlflow = mlflow
        self._spec = spec
        mlflow.set_tracking_uri(spec.tracking_uri)
        if spec.system_metrics:
            _import_psutil()
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        self._run = mlflow.start_run(run_id=spec.run_id, log_system_metrics=spec.system_metrics)
        self._client = mlflow.MlflowClient(tracking_uri=spec.tracking_uri)

    def log(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ds = (self._spec.dataset_name or None, self._spec.dataset_digest or None)
        if None in ds:
            ds = (None, None)
        items = [
            Metric(k, float(v), now, step, model_id=model_id, dataset_name=ds[0],
                   dataset_digest=ds[1])
            for k, v in metrics.items()
        ]  # fmt: skip
        self._client.log_batch(self._spec.run_id, metrics=items)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(local_path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(safe_params(tags))

    def begin_checkpoint(self, step: int, uri: str, params: Mapping[str, Any]) -> str | None:
        from avtime.training.tracking import lineage

        dataset = ""
        if self._spec.dataset_name:
            dataset = f"{self._spec.dataset_name}@{self._spec.dataset_digest}"
        ckpt = lineage.CheckpointModel(
            run_id=self._spec.run_id, experiment_id=self._run.info.experiment_id,
            run_name=self._spec.run_name or self._run.info.run_name or self._spec.run_id[:8],
            step=step, uri=uri, dataset=dataset,
        )  # fmt: skip
        return lineage.create_checkpoint_model(self._client, ckpt, params)

    def end_checkpoint(self, model_id: str | None, weights_dir: str | None = None) -> None:
        from avtime.training.tracking import lineage

        if model_id:
            lineage.finalize_checkpoint_model(self._client, model_id, weights_dir)

    def close(self, status: str = "FINISHED") -> None:
        """End the run in this process with `status` (FINISHED, FAILED or KILLED)."""
        self._mlflow.end_run(status=status)


def _import_psutil() -> None:
    """MLflow's system metrics need psutil; Ray vendors one, which `import ray` puts on sys.path."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        import ray  # noqa: F401


def tracking_uri(workdir: str | Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<workdir or cwd>/mlflow.db` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(workdir) if workdir is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').absolute()}"


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_url(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a sqlite store: `<db folder>/mlartifacts/<experiment>`; else the server's default."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts" / experiment).absolute().as_uri()


def experiment_id(client: Any, uri: str, name: str) -> str:
    """Id of experiment `name`, created (with a local artifact root for sqlite) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(uri, name)))


def open_run(
    *,
    uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    """Create a run (logging `params`), or with `run_id` check that run exists; return its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient(tracking_uri=uri)
    if run_id:
        client.get_run(run_id)  # raises if the store lost it
        client.set_tag(run_id, "avtime.resumed", "true")
        return run_id
    exp = experiment_id(client, uri, experiment)
    run = client.create_run(exp, run_name=run_name, tags=dict(safe_params(tags or {})))
    items = sorted(safe_params(params).items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        chunk = [Param(k, v) for k, v in items[i : i + 100]]
        client.log_batch(run.info.run_id, params=chunk, tags=[RunTag("avtime.resumed", "false")])
    return str(run.info.run_id)


def log_artifact_file(uri: str, run_id: str, local_path: str | Path, artifact_path: str) -> None:
    """Upload one file to a run from the driver."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).log_artifact(run_id, str(local_path), artifact_path)


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    """Set one tag on a run (URL user info removed)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).set_tag(run_id, key, redact_url(value))


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run terminated (the rank-0 worker usually did already)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as strings, with secret-looking keys masked and URL user info replaced by `***`."""
    out: dict[str, str] = {}
    for key, value in params.items():
        text = "" if value is None else str(value)
        if _SECRET_KEY.search(key) and text:
            text = "***"
        out[key] = redact_url(text)[:6000]
    return out


def git_state(root: str | Path | None = None) -> tuple[str, bool]:
    """(commit sha, has local changes) of the avtime source tree; ("unknown", False) outside git."""
    here = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        sha = _git(here, "rev-parse", "HEAD")
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown", False
    return sha, bool(dirty)


def code_version(root: str | Path | None = None) -> str:
    """The git sha of the avtime source tree (`-dirty` with local changes), else the version."""
    sha, dirty = git_state(root)
    if sha != "unknown":
        return f"{sha}-dirty" if dirty else sha
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"avtime-{version('avtime')}"
    except PackageNotFoundError:
        return "unknown"


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


def manifest_hash(shards_uri: str) -> str:
    """sha256 of the shards' `manifest.json` (first 16 hex chars); "none" if it is missing."""
    from avtime.pipelines import storage
    from avtime.pipelines.schema import MANIFEST_NAME

    uri = storage.join(shards_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        return "none"
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:16]


def run_params(flat_config: Mapping[str, Any], *, shards_uri: str) -> dict[str, Any]:
    """The params of a training run: the flattened config plus data and code provenance."""
    params = dict(flat_config)
    params["data.shards"] = shards_uri
    params["data.manifest_sha256"] = manifest_hash(shards_uri)
    params["code_version"] = code_version()
    return params
