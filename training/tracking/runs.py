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

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from avtime.pipelines.errors import TrackingError
from avtime.pipelines.storage import redact_url  # the one URL redactor (also for S3)

DEFAULT_EXPERIMENT = "avtime"
# MLflow's own tags: the UI opens an experiment with this kind as model training (not GenAI),
# shows a run's or a model's description from the note, and a run's source from its name.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
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


# Bounds on one MLflow HTTP call (MLflow's own defaults retry for minutes): the logger's calls
# run in a background thread, and a driver waiting on a dead server must give up in seconds.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
CLOSE_DEADLINE_S = 30.0  # how long `close` waits for unsent items before giving up on them
MAX_PENDING = 20_000  # unsent items kept while the server is down; older ones are dropped


def bound_http_calls() -> None:
    """Cap MLflow's HTTP retries and timeout in this process, unless the user set them."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


class _Sender:
    """Runs MLflow calls in order on a background thread, so a slow or dead server never
    blocks training. A failed call is kept at the head and retried with backoff; the first
    failure and the recovery are each one line to `notify`. Items past `MAX_PENDING` are
    dropped oldest first (and counted)."""

    def __init__(self, where: str, notify: Callable[[str], None]) -> None:
        self._where, self._notify = where, notify
        self._items: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._stop, self.down, self.dropped = False, False, 0
        self._thread = threading.Thread(target=self._run, name="avtime-mlflow", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        with self._cond:
            if len(self._items) >= MAX_PENDING:
                self._items.popleft()
                self.dropped += 1
            self._items.append(call)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def flush(self, deadline_s: float) -> int:
        """Wait up to `deadline_s` for every item to be sent; the number still unsent."""
        end = time.monotonic() + deadline_s
        with self._cond:
            while self._items and time.monotonic() < end:
                self._cond.wait(min(0.2, max(0.0, end - time.monotonic())))
            return len(self._items)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 1.0
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if not self._items:
                    return
                call = self._items[0]
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - any failure: keep the item, retry later
                self._failed(exc)
                with self._cond:
                    self._cond.wait(backoff)
                    if self._stop:
                        return
                backoff = min(30.0, backoff * 2)
                continue
            with self._cond:
                self._items.popleft()
                self._cond.notify_all()
            if self.down:
                self.down, backoff = False, 1.0
                self._notify(f"MLflow at {self._where} answers again; sending what was kept")

    def _failed(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            self._notify(
                f"MLflow at {self._where} is not answering ({type(exc).__name__}); training goes "
                "on, and its metrics are kept and sent when the server is back"
            )


class MlflowLogger:
    """Attaches this process to an existing MLflow run and logs to it, without blocking.

    Every call is queued and sent in order by a background thread (`_Sender`): while the server
    is down, training goes on and the metrics wait (up to `MAX_PENDING` items). Step metrics
    carry the training dataset (name and digest) and, at checkpoint steps, the checkpoint's
    logged model (see `training.tracking.lineage`), which `begin_checkpoint` names by a key
    that the sender resolves once the model exists. Files handed over are copied first, so
    the caller may delete them at once.

    Args:
        spec: the tracking URI, run id, run name and training dataset.
        notify: where the logger's own lines go (one when the server stops answering, one when
            it is back, and one at `close` if items could not be sent).
    """

    def __init__(self, spec: TrackingSpec, notify: Callable[[str], None] = print) -> None:
        import mlflow

        bound_http_calls()
        self._mlflow, self._spec, self._notify = mlflow, spec, notify
        with contextlib.ExitStack() as scope:  # the tracking URI, put back at `close` (or now)
            scope.enter_context(default_uri(spec.tracking_uri))
            if spec.system_metrics:
                _import_psutil()
                mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
            self._run = mlflow.start_run(run_id=spec.run_id, log_system_metrics=spec.system_metrics)
            self._uri_scope = scope.pop_all()
        self._client = mlflow.MlflowClient(tracking_uri=spec.tracking_uri)
        self._models: dict[str, str] = {}  # begin_checkpoint's key -> logged model id
        self._spool = Path(tempfile.mkdtemp(prefix="avtime-mlflow-"))
        self._sender = _Sender(redact_url(spec.tracking_uri), notify)
        self._last_step = -1

    def log(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ds = (self._spec.dataset_name or None, self._spec.dataset_digest or None)
        if None in ds:
            ds = (None, None)
        values = {k: float(v) for k, v in metrics.items()}
        self._last_step = max(self._last_step, step)

        def send() -> None:
            model = self._models.get(model_id or "")
            items = [
                Metric(k, v, now, step, model_id=model, dataset_name=ds[0], dataset_digest=ds[1])
                for k, v in values.items()
            ]
            self._client.log_batch(self._spec.run_id, metrics=items)

        self._sender.submit(send)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        kept = self._keep(Path(local_path))
        run_id = self._spec.run_id
        self._sender.submit(lambda: self._client.log_artifact(run_id, str(kept), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        clean = safe_params(tags)
        run_id = self._spec.run_id

        def send() -> None:
            for k, v in clean.items():
                self._client.set_tag(run_id, k, v)

        self._sender.submit(send)

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
        key, params = f"checkpoint-{step}", dict(params)

        def send() -> None:
            self._models[key] = lineage.create_checkpoint_model(self._client, ckpt, params)

        self._sender.submit(send)
        return key

    def end_checkpoint(self, model_id: str | None, weights_dir: str | None = None) -> None:
        from avtime.training.tracking import lineage

        if not model_id:
            return
        kept = self._keep(Path(weights_dir)) if weights_dir else None

        def send() -> None:
            if model_id in self._models:
                lineage.finalize_checkpoint_model(
                    self._client, self._models[model_id], None if kept is None else str(kept)
                )

        self._sender.submit(send)

    def _keep(self, path: Path) -> Path:
        """A copy of file or folder `path` in the logger's spool, for a later send."""
        dest = self._spool / f"{len(list(self._spool.iterdir())):06d}" / path.name
        dest.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            shutil.copy2(path, dest)
        return dest

    def close(self, status: str = "FINISHED") -> None:
        """Send what is queued (waiting up to `CLOSE_DEADLINE_S`), then end the run in this
        process with `status` (FINISHED, FAILED or KILLED). If the server does not answer by
        then, say so in one line and leave the run open: a rerun resumes it and ends it."""
        left = self._sender.flush(CLOSE_DEADLINE_S)
        self._sender.stop()
        if not left:  # MLflow keeps the active run per thread: end it on this one
            self._mlflow.end_run(status=status)
        if left or self._sender.dropped:
            self._notify(
                f"MLflow at {redact_url(self._spec.tracking_uri)} did not take {left} queued "
                f"items (and {self._sender.dropped} dropped while it was down; metrics up to step "
                f"{self._last_step}); the run's end is recorded when the same command runs again"
            )
        shutil.rmtree(self._spool, ignore_errors=True)
        self._uri_scope.close()


def _import_psutil() -> None:
    """MLflow's system metrics need psutil; Ray vendors one, which `import ray` puts on sys.path."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        import ray  # noqa: F401


@contextlib.contextmanager
def default_uri(uri: str) -> Iterator[None]:
    """Make `uri` MLflow's process-wide tracking URI inside the block, then put back what was
    there (nothing set means `MLFLOW_TRACKING_URI` or the default applies again), so that a
    store this process used never outlives its use (a stopped server would answer later
    `models:/` lookups)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before = getattr(utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]


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
    """Id of experiment `name`, created (with a local artifact root for sqlite) if missing.

    An experiment without a kind is marked as model training, so MLflow's UI opens it on its
    runs and models rather than on the GenAI overview; a kind set by someone else is kept.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        location = _artifact_location(uri, name)
        return str(client.create_experiment(name, artifact_location=location, tags=tags))
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def source_name(argv: list[str] | None = None) -> str:
    """What started this process, for a run's Source column: `avtime <command>`."""
    args = sys.argv if argv is None else argv
    command = next((a for a in args[1:] if not a.startswith("-")), "")
    return f"avtime {command}".strip() if Path(args[0]).name == "avtime" else "avtime"


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
    source = {SOURCE_NAME_TAG: source_name(), SOURCE_TYPE_TAG: "LOCAL"}
    run = client.create_run(exp, run_name=run_name, tags=source | dict(safe_params(tags or {})))
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


def set_final_checkpoint(uri: str, run_id: str, checkpoint: str) -> None:
    """Tag the run with its final checkpoint and say where the weights are in its description,
    which MLflow's UI shows on the run's page."""
    from mlflow import MlflowClient

    where = redact_url(checkpoint)
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, "avtime.checkpoint", where)
    note = (
        f"avtime training run. Final checkpoint: {where} . Each kept checkpoint is a logged model "
        "of this run (its description and `checkpoint` param give its folder); evaluate one with "
        f"`avtime eval action --checkpoint {where}`."
    )
    client.set_tag(run_id, DESCRIPTION_TAG, note)


def finish_run(
    uri: str, run_id: str, status: str = "FINISHED", deadline_s: float | None = None
) -> bool:
    """Mark the run terminated (the rank-0 worker usually did already). With `deadline_s`,
    give up after that long (a dead server must not hold up Ctrl-C) and return False; the
    rerun that resumes the run ends it."""
    from mlflow import MlflowClient

    bound_http_calls()
    if deadline_s is None:
        MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)
        return True
    done = threading.Event()

    def mark() -> None:
        with contextlib.suppress(Exception):
            MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)
            done.set()

    threading.Thread(target=mark, name="avtime-finish-run", daemon=True).start()
    return done.wait(deadline_s)


def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, naming the store, when a tracking URI cannot be used: a sqlite file
    whose folder does not exist, or a server that does not answer or refuses this host name
    (MLflow >= 3.5 answers 403 to Host headers not in its `--allowed-hosts`)."""
    import urllib.error
    import urllib.request

    shown = redact_url(uri)
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow store {shown}: folder {folder} does not exist")
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace")
        if exc.code == 403 and "host" in body.lower():
            raise TrackingError(
                f"the MLflow server at {shown} refuses this host name (403 Invalid Host header): "
                "start it with --allowed-hosts listing the name in the URI (see docs/cluster.md)"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow server at {shown} ({reason}): is it up, and is "
            "--tracking-uri / MLFLOW_TRACKING_URI right?"
        ) from None


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
