"""The driver side of `avtime train`: a Ray Train V2 `TorchTrainer` fed by the pretext stream.

`train(request)` connects to Ray (or starts a local cluster whose logical CPUs leave room for
Ray Data), opens or continues the MLflow run, builds the trainer and runs `fit()`:
- `ScalingConfig`: workers, GPUs, and `cpus_per_worker` CPUs each (fractional on small machines).
- `datasets={"train": StreamFactory(...)}`: Ray Train calls the factory each time it starts a
  worker group, so after a failure the stream restarts at the data epoch of the latest checkpoint.
  The factory's dataset covers every epoch the remaining steps need, in one pass.
- `DataConfig`: Ray Data may use every CPU the training workers do not hold (a resource limit).
- `RunConfig(name, storage_path, FailureConfig(max_failures))`: checkpoints land in
  `<storage>/<name>/step_XXXXXXXX` (local or s3://); rerunning the same command resumes there.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avtime.pipelines import logs, raycluster, storage
from avtime.pipelines.config import DataConfig
from avtime.pipelines.configlib import dump_yaml, flatten
from avtime.pipelines.errors import Interrupted
from avtime.pipelines.ingest.lock import DestinationLock
from avtime.training.config import RunConfig, TrainConfig
from avtime.training.engine import budget, checkpoint
from avtime.training.engine.loop import JobSpec, loop_config, train_loop_per_worker
from avtime.training.tracking import lineage, runs

MIN_DATA_CPUS = 0.5  # logical CPUs Ray Data needs beside the training workers
EPOCH_MARGIN = 1  # a spare data epoch: drop_last and the equal split across workers lose rows
RUN_LOCK = "_avtime/lock.json"  # in the run's checkpoint folder: one `avtime train` per run
FINISH_DEADLINE_S = 5.0  # how long Ctrl-C waits for MLflow to mark the run KILLED
WORKER_NICENESS = 0  # of a local Ray's workers (Ray's default is 15); samplers go to 19 themselves


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What `avtime train` was asked to do."""

    cfg: RunConfig
    data: str  # shards folder or s3:// prefix
    experiment: str = runs.DEFAULT_EXPERIMENT
    name: str = ""  # run name under the storage path; "" = preset + config hash
    workdir: str = ""  # default home of checkpoints/ and mlflow.db; "" = cwd
    tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI or sqlite in workdir
    register: str = ""  # registered model name for the final checkpoint's logged model
    alias: str = lineage.DEFAULT_ALIAS  # the alias `register` points at the new version
    log_weights: bool = False  # copy checkpoint files into their logged models


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    """Where a finished run put things, and its final metrics."""

    mlflow_run_id: str
    tracking_uri: str
    checkpoint: str
    run_name: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_id: str = ""  # the final checkpoint's MLflow logged model
    registered: str = ""  # `models:/<name>@<alias>` (or `/<version>`) when registered

    def summary(self) -> dict[str, Any]:
        """The JSON object `avtime train` prints on its last line."""
        return {
            "mlflow_run_id": self.mlflow_run_id,
            "tracking_uri": runs.redact_url(self.tracking_uri),
            "checkpoint": self.checkpoint,
            "run_name": self.run_name,
            "metrics": self.metrics,
            "model_id": self.model_id,
            "registered": self.registered,
        }


@dataclass(frozen=True)
class Storage:
    """A storage location as a URI, and as the pyarrow filesystem + path Ray Train uses."""

    uri: str
    fs: Any
    path: str

    @classmethod
    def at(cls, uri: str) -> Storage:
        fs, path = storage.arrow_filesystem(uri)
        return cls(uri=uri, fs=fs, path=path)

    def uri_of(self, path: str) -> str:
        """The URI of a path inside this filesystem."""
        return f"s3://{path}" if storage.is_s3(self.uri) else path


def ensure_local_ray(min_cpus: float = 1.0) -> None:
    """Connect to `RAY_ADDRESS`, else start a local Ray with at least `min_cpus` logical CPUs."""
    # The dashboard serves the state API, which Ray Train's placement-group cleaner polls: without
    # it, the cleaner logs "Failed to query Ray Train Controller actor state" every second.
    # Ray starts its workers at niceness 15 (`worker_niceness`); at 0 the Train worker competes
    # like a plain process, while the sampling tasks lower themselves to `data.stream.nice`.
    raycluster.connect(
        num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)),
        log_to_driver=True,
        include_dashboard=True,
        system_config={"worker_niceness": WORKER_NICENESS},
    )


def worker_bundles(tcfg: TrainConfig) -> list[dict[str, float]]:
    """The resources training asks a cluster for: one bundle per Train worker, and the CPUs
    Ray Data needs beside them (`MIN_DATA_CPUS`)."""
    per_worker: dict[str, float] = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        per_worker["GPU"] = 1.0
    return [dict(per_worker) for _ in range(tcfg.num_workers)] + [{"CPU": MIN_DATA_CPUS}]


def ensure_ray(tcfg: TrainConfig) -> None:
    """`ensure_local_ray` with room for the workers and Ray Data; check the budget now."""
    ensure_local_ray(tcfg.num_workers * tcfg.cpus_per_worker + MIN_DATA_CPUS)
    check_resources(tcfg, raycluster.cluster_resources())


@contextmanager
def ray_for_training(tcfg: TrainConfig) -> Iterator[dict[str, float]]:
    """`ensure_local_ray` with room for the workers and Ray Data. On a cluster, ask its
    autoscaler for them and wait (`raycluster.grown`); then check the budget. Inside: the
    cluster's resources after it grew; on exit the request is withdrawn."""
    ensure_local_ray(tcfg.num_workers * tcfg.cpus_per_worker + MIN_DATA_CPUS)
    with raycluster.grown(worker_bundles(tcfg), what="avtime train", minimum=[]) as resources:
        check_resources(tcfg, resources)
        yield resources


def cluster_cpus() -> float:
    """Logical CPUs of the connected Ray cluster (now: call it after the cluster grew)."""
    return float(raycluster.cluster_resources().get("CPU", 0))


def check_resources(tcfg: TrainConfig, resources: dict[str, float]) -> None:
    """Raise ValueError if the workers would take every CPU (Ray Data would then starve)."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    train_cpus = tcfg.num_workers * tcfg.cpus_per_worker
    if train_cpus + MIN_DATA_CPUS > cpus:
        raise ValueError(
            f"{tcfg.num_workers} workers x {tcfg.cpus_per_worker} CPUs leave Ray Data less than "
            f"{MIN_DATA_CPUS} of the cluster's {cpus:g} CPUs, which deadlocks the stream; lower "
            "train.cpus_per_worker or train.num_workers"
        )
    if tcfg.use_gpu and gpus < tcfg.num_workers:
        raise ValueError(
            f"train.use_gpu needs {tcfg.num_workers} GPUs, the cluster has {gpus:g}; "
            "set train.use_gpu=false or train.num_workers lower"
        )


def check_sample_rate(data: str, cfg: RunConfig) -> int:
    """The audio rate stored in `data`'s manifest, which must be the model's `model.sample_rate`:
    the log-mel front end assumes its own rate, and the training stream feeds the stored one
    unresampled. A mismatch raises ValueError naming both rates and both fixes."""
    from avtime.pipelines.pretext.stream import shards_sample_rate

    stored = shards_sample_rate(data)
    if stored != cfg.model.sample_rate:
        raise ValueError(
            f"{data} stores audio at {stored} Hz but model.sample_rate is "
            f"{cfg.model.sample_rate} Hz; add --set model.sample_rate={stored}, or preprocess "
            f"again with --sample-rate {cfg.model.sample_rate}"
        )
    return stored


def examples_per_epoch(data: str, cfg: DataConfig) -> int:
    """Segment rows the sampler draws from, times examples per row: rows too short for every
    configured speed are skipped (`segment_stats`, from the shards' metadata columns), so they
    do not count; the stream would otherwise run out before the last steps."""
    from avtime.pipelines.pretext.stream import segment_stats
    from avtime.pipelines.schema import MANIFEST_NAME

    uri = storage.join(data, MANIFEST_NAME)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} is missing; run `avtime preprocess SRC {data}` first")
    stats = segment_stats(data, cfg)
    rows = stats["ok"] + stats["restricted"]
    if rows + stats["skipped"] < 1:
        raise ValueError(f"{data} holds no segment rows (see its rejects.parquet)")
    if rows < 1:
        raise ValueError(
            f"all {stats['skipped']} segments in {data} are too short for the speeds "
            f"{cfg.pretext.speeds} at {cfg.pretext.clip_frames} frames a clip: lower "
            "data.pretext.speeds or data.pretext.clip_frames, or preprocess longer segments"
        )
    return rows * cfg.stream.examples_per_row


@dataclass(frozen=True)
class StreamFactory:
    """Builds the training stream when Ray Train starts (or restarts) the worker group.

    The stream starts at the data epoch of the latest checkpoint in `run_dir` and covers the
    epochs the remaining optimiser steps need, plus `EPOCH_MARGIN`.
    """

    data: str
    cfg: RunConfig
    fs: Any
    run_dir: str
    examples_per_epoch: int

    def epochs(self) -> tuple[int, int]:
        """(first epoch, number of epochs) for the steps still to do."""
        latest = checkpoint.find_latest(self.fs, self.run_dir)
        start_step, start_epoch = (latest[1].step, latest[1].data_epoch) if latest else (0, 0)
        t = self.cfg.train
        per_step = self.cfg.data.stream.batch_size * self.cfg.optim.accum_steps * t.num_workers
        remaining = max(0, t.steps - start_step) * per_step
        return start_epoch, math.ceil(remaining / self.examples_per_epoch) + EPOCH_MARGIN

    def __call__(self) -> Any:
        from avtime.pipelines.pretext.stream import build_pretext_dataset

        epoch, epochs = self.epochs()
        ds = build_pretext_dataset(self.data, self.cfg.data, epoch=epoch, epochs=epochs)
        # The loop prints its own progress line; Ray Data's bars for a stream that runs as long
        # as training would redraw every second and flood non-terminal logs.
        ds.context.enable_progress_bars = False
        return ds


def run_name(req: TrainRequest) -> str:
    """`req.name`, or `<preset>-<hash of config and data>`: the same command resumes its run."""
    if req.name:
        return req.name
    digest = hashlib.sha256((dump_yaml(req.cfg) + req.data).encode()).hexdigest()[:10]
    return f"{req.cfg.preset}-{digest}"


def storage_for(req: TrainRequest) -> Storage:
    """`train.storage_path`, or `<workdir>/checkpoints` (absolute)."""
    uri = req.cfg.train.storage_path
    if not uri:
        uri = str((Path(req.workdir or ".") / "checkpoints").absolute())
    storage.check_location(uri, must_exist=False)
    if not storage.is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
    return Storage.at(uri)


def build_trainer(
    req: TrainRequest, job: JobSpec, where: Storage, name: str, factory: StreamFactory
) -> Any:
    """The TorchTrainer of one run."""
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    t = req.cfg.train
    per_worker = worker_bundles(t)[0]
    data_cpus = max(MIN_DATA_CPUS, cluster_cpus() - t.num_workers * t.cpus_per_worker)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(req.cfg, job),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=per_worker
        ),
        datasets={"train": factory},
        dataset_config=DataConfig(
            datasets_to_split="all",
            execution_options=ExecutionOptions(resource_limits=ExecutionResources(cpu=data_cpus)),
        ),
        run_config=RayRunConfig(
            name=name,
            storage_path=where.path,
            storage_filesystem=where.fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints or None),
            # Train V2's RunConfig takes it; mypy reads ray.air's RunConfig stub.
            logging_config=LoggingConfig(log_level="INFO" if logs.verbose() else "WARNING"),  # type: ignore[call-arg]
        ),
    )


def open_tracking(
    req: TrainRequest, uri: str, name: str, resume_id: str | None, data: lineage.DatasetRef
) -> str:
    """Create the MLflow run (params, provenance tags, dataset input, config artifact), or
    continue `resume_id` (tags and dataset input logged again: the code may have changed)."""
    from mlflow import MlflowClient

    params = runs.run_params(flatten(req.cfg), shards_uri=req.data)
    tags = {"avtime.preset": req.cfg.preset, "avtime.run_name": name}
    run_id = runs.open_run(
        uri=uri, experiment=req.experiment, run_name=name, params=params, tags=tags,
        run_id=resume_id,
    )  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    device = "cuda" if req.cfg.train.use_gpu else "cpu"
    for key, value in lineage.provenance_tags(device).items():
        client.set_tag(run_id, key, value)
    lineage.log_dataset(client, run_id, data, lineage.TRAINING)
    if resume_id is None:
        with tempfile.TemporaryDirectory(prefix="avtime-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(dump_yaml(req.cfg))
            runs.log_artifact_file(uri, run_id, path, "config")
    return run_id


def train(req: TrainRequest) -> TrainOutcome:
    """Run (or resume) one training job to `cfg.train.steps`; see the module docstring.

    Before Ray starts: the MLflow store answers (`check_tracking`), the data has the sample rate
    and enough examples for one step (`budget.check_batch`), and this process holds the run's
    lock, so a second `avtime train` on the same run stops at once naming the first.
    """
    uri = req.tracking_uri or runs.tracking_uri(req.workdir or None)
    runs.check_tracking(uri)
    per_epoch = examples_per_epoch(req.data, req.cfg.data)
    rate = check_sample_rate(req.data, req.cfg)
    budget.check_batch(req.cfg, per_epoch, worker_memory=None, sample_rate=rate)
    where, name = storage_for(req), run_name(req)
    with run_lock(where, name) as lock, ray_for_training(req.cfg.train) as resources:
        memory = resources.get("memory")
        per_worker = None if memory is None else float(memory) / max(1, req.cfg.train.num_workers)
        budget.check_batch(req.cfg, per_epoch, worker_memory=per_worker, sample_rate=rate)
        return _train_on_ray(req, uri, per_epoch, where, name, lock)


def run_lock(where: Storage, name: str) -> DestinationLock:
    """The lock of run `name` (a file in its checkpoint folder, local or S3; renewed while the
    run lives, stale after a minute or at once when its process on this host is gone)."""
    return DestinationLock(
        f"{where.uri.rstrip('/')}/{name}", job="train", name=RUN_LOCK,
        remedy="wait for it to finish, or give this run another --name",
        notify=lambda line: print(f"avtime {line}", file=sys.stderr),
    )  # fmt: skip


def _train_on_ray(
    req: TrainRequest, uri: str, per_epoch: int, where: Storage, name: str, lock: DestinationLock
) -> TrainOutcome:
    """`train` once Ray holds what the run needs: open the run, fit, record the models."""
    run_dir = f"{where.path.rstrip('/')}/{name}"
    latest = checkpoint.find_resumable(where.fs, run_dir, notify=_say)
    data = lineage.shards_dataset(req.data)
    run_id = open_tracking(req, uri, name, latest[1].mlflow_run_id if latest else None, data)
    lock.describe(mlflow_run=run_id)
    job = JobSpec(
        tracking_uri=uri, run_id=run_id, examples_per_epoch=per_epoch, fit_start_unix=time.time(),
        run_name=name, checkpoint_root=where.uri_of(run_dir), dataset_name=data.name,
        dataset_digest=data.digest, log_weights=req.log_weights,
    )  # fmt: skip
    factory = StreamFactory(req.data, req.cfg, where.fs, run_dir, per_epoch)
    trainer = build_trainer(req, job, where, name, factory)
    result = _fit(trainer, uri, run_id)
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} ended without a checkpoint in {where.uri}")
    ckpt_uri = where.uri_of(result.checkpoint.path)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if _is_number(v)}
    runs.set_final_checkpoint(uri, run_id, ckpt_uri)
    model_id, registered = finish_models(req, uri, run_id, where, run_dir)
    return TrainOutcome(
        mlflow_run_id=run_id, tracking_uri=uri, checkpoint=ckpt_uri, run_name=name,
        metrics=metrics, model_id=model_id, registered=registered,
    )  # fmt: skip


def finish_models(
    req: TrainRequest, uri: str, run_id: str, where: Storage, run_dir: str
) -> tuple[str, str]:
    """After fit: delete the logged models of checkpoints Ray Train dropped, tag the run with
    the final checkpoint's model, write the MLflow model files (`training.eval.pyfunc`) into
    every kept model with `--log-weights` and into the final one when it is registered, and
    register it when asked; (model id, `models:/` ref)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = str(client.get_run(run_id).info.experiment_id)
    kept = checkpoint.committed(where.fs, run_dir)
    if kept is not None:
        lineage.prune_models(client, exp_id, run_id, {where.uri_of(f"{run_dir}/{n}") for n in kept})
    meta = checkpoint.find_latest(where.fs, run_dir)
    final = lineage.find_run_model(client, exp_id, run_id, meta[1].step) if meta else None
    if final is None:
        return "", ""
    model_id = str(final.model_id)
    client.set_tag(run_id, lineage.MODEL_ID_TAG, model_id)
    loadable = lineage.run_models(client, exp_id, run_id) if req.log_weights else [final]
    if req.log_weights or req.register:
        from avtime.training.eval.pyfunc import log_checkpoint_model

        for model in loadable:  # mlflow.pyfunc / mlflow.pytorch.load_model load these
            log_checkpoint_model(client, model.model_id, model.tags[lineage.CHECKPOINT_TAG])
    if not req.register:
        return model_id, ""
    version = lineage.register(uri, model_id, run_id, req.register, req.alias)
    client.set_tag(run_id, "avtime.registered", f"{req.register}/{version}")
    suffix = f"@{req.alias}" if req.alias else f"/{version}"
    return model_id, f"models:/{req.register}{suffix}"


def _fit(trainer: Any, uri: str, run_id: str) -> Any:
    """`trainer.fit()`, ending the MLflow run as KILLED on Ctrl-C or SIGTERM and as FAILED on a
    crash, so no run is left RUNNING; when the server does not answer within
    `FINISH_DEADLINE_S`, Ctrl-C raises `Interrupted` (exit 130), whose one line says so.

    fit() runs in a helper thread, so Ray Train does not install its own SIGINT handler (which
    exits the process without a word); this thread waits, turns SIGTERM into KeyboardInterrupt,
    marks the run and re-raises. Leaving then ends the driver, and with it the run's workers.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if in_main else None
    worker = threading.Thread(target=target, name="avtime-fit", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        if runs.finish_run(uri, run_id, status="KILLED", deadline_s=FINISH_DEADLINE_S):
            raise
        raise Interrupted(  # still exit 130, in one line that says what is left open
            f"interrupted; the MLflow run {run_id} stays RUNNING (its server did not answer in "
            f"{FINISH_DEADLINE_S:g} s): run the same command again to end it"
        ) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if "error" in box:
        runs.finish_run(uri, run_id, status="FAILED")
        raise box["error"]
    return box["result"]


def _say(line: str) -> None:
    print(f"avtime train: {line}", file=sys.stderr, flush=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
