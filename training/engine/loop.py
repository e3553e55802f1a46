"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`).

Ray stays at one boundary: the first line turns Ray's config dict into the typed `RunConfig` and
`JobSpec`. The rest is split into setup (`build_state`, `restore`), one optimiser step
(`train_step`: the pure-torch step of `training/engine/step.py`, which bench/gpu_check.py times
too), metrics (`Window`) and checkpoint/report (`report`) helpers.

Every `log_every` steps rank 0 logs the loss terms, head accuracies, lr, examples/s and the fraction of step time spent waiting for data. Every
`checkpoint_every` steps, and at the end, rank 0 saves model, optimiser, scheduler, queue, step
and data epoch, and every rank calls `ray.train.report`. A restarted worker resumes from the
latest checkpoint and keeps logging to the same MLflow run.

MLflow 3: step metrics carry the training dataset (name and digest). At each checkpoint rank 0
first creates the checkpoint's logged model (`training.tracking.lineage`; PENDING, with the run's
config as params and the checkpoint's storage URI as a tag), logs that step's metrics linked to
it, and marks it READY once Ray Train has stored the checkpoint (copying the files into the
model only with `JobSpec.log_weights`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

from avtime.models.av import AVModel
from avtime.pipelines import storage
from avtime.pipelines.configlib import dump_yaml, flatten, from_dict, to_dict
from avtime.pipelines.logs import quiet_worker
from avtime.training.config import RunConfig
from avtime.training.engine import checkpoint
from avtime.training.engine.step import StepState, build_step_state, unwrap
from avtime.training.engine.step import train_step as engine_step
from avtime.training.engine.step_config import StepConfig
from avtime.training.tracking.runs import Logger, MlflowLogger, NullLogger, TrackingSpec

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Run-level facts the workers need beside the RunConfig (no credentials)."""

    tracking_uri: str
    run_id: str
    examples_per_epoch: int  # examples in one data epoch (usable rows x examples_per_row)
    fit_start_unix: float = 0.0  # when the driver called fit(); 0 = unknown
    system_metrics: bool = True
    run_name: str = ""  # the run's name under the storage path
    checkpoint_root: str = ""  # URI of the run's checkpoint folder (local or s3://)
    dataset_name: str = ""  # the training data's MLflow dataset
    dataset_digest: str = ""
    log_weights: bool = False  # copy each checkpoint's files into its MLflow logged model

    def tracking(self, run_id: str) -> TrackingSpec:
        """Where rank 0 logs: this job's store, `run_id`, and the dataset to link metrics to."""
        return TrackingSpec(
            tracking_uri=self.tracking_uri, run_id=run_id, system_metrics=self.system_metrics,
            run_name=self.run_name, dataset_name=self.dataset_name,
            dataset_digest=self.dataset_digest,
        )  # fmt: skip

    def checkpoint_uri(self, step: int) -> str:
        """Where Ray Train stores the checkpoint of `step` ("" when the root is unknown)."""
        if not self.checkpoint_root:
            return ""
        return f"{self.checkpoint_root.rstrip('/')}/{checkpoint.dir_name(step)}"


def loop_config(cfg: RunConfig, job: JobSpec) -> dict[str, Any]:
    """The plain dict handed to Ray as `train_loop_config`."""
    return {"run": to_dict(cfg), "job": asdict(job)}


def parse_loop_config(config: dict[str, Any]) -> tuple[RunConfig, JobSpec]:
    """Inverse of `loop_config`."""
    return from_dict(RunConfig, config["run"]), from_dict(JobSpec, config["job"])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: set up, resume, train to `cfg.train.steps`, report."""
    cfg, job = parse_loop_config(config)
    import ray.train
    import ray.train.torch

    quiet_worker()
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    st = build_state(cfg, ray.train.torch.get_device(), world)
    restored = restore(st, ray.train.get_checkpoint(), job.checkpoint_root)
    run_id = st.run_id or job.run_id
    st.run_id = run_id
    logger: Logger = MlflowLogger(job.tracking(run_id)) if rank == 0 else NullLogger()
    try:
        logger.set_tags(device_tags(st.device))
        if restored:
            logger.log({"resumed_from_step": float(st.step)}, st.step)
        shard = ray.train.get_dataset_shard("train")
        batches = _batches_forever(shard, cfg, st.device)
        run_steps(st, batches, logger, job, rank=rank)
        if rank == 0:
            _log_encoders(st, logger)
    except BaseException:
        if isinstance(logger, MlflowLogger):
            logger.close(status="FAILED")
        raise
    logger.close()


@dataclass(kw_only=True)
class WorkerState(StepState):
    """Everything one worker trains and checkpoints: the step's state (`step.StepState`) and the
    run's bookkeeping (data position, MLflow run)."""

    cfg: RunConfig
    world_size: int = 1
    examples_seen: int = 0
    epoch_base: int = 0  # data epoch at which this attempt's stream started
    seen_base: int = 0  # examples_seen when this attempt started
    examples_per_epoch: int = 1
    run_id: str = ""

    @property
    def global_batch(self) -> int:
        """Examples per optimiser step over all workers."""
        s = self.cfg.data.stream.batch_size
        return s * self.cfg.optim.accum_steps * self.world_size

    @property
    def data_epoch(self) -> int:
        """The data epoch the next example comes from."""
        done = self.examples_seen - self.seen_base
        return self.epoch_base + done // max(1, self.examples_per_epoch)


def step_config(cfg: RunConfig) -> StepConfig:
    """What the training step reads of `cfg`."""
    return StepConfig(
        model=cfg.model, loss=cfg.loss, optim=cfg.optim, num_speeds=len(cfg.data.pretext.speeds),
        total_steps=cfg.train.steps, seed=cfg.train.seed,
    )  # fmt: skip


def build_state(cfg: RunConfig, device: torch.device, world_size: int = 1) -> WorkerState:
    """Model (DDP when distributed), optimiser, schedule and queue on `device`, from scratch
    (`step.build_step_state`)."""
    core = build_step_state(step_config(cfg), device)
    parts = {f.name: getattr(core, f.name) for f in fields(core)}
    return WorkerState(cfg=cfg, world_size=world_size, **parts)


def restore(st: WorkerState, ckpt: Any, root: str = "") -> bool:
    """Load a Ray checkpoint (or a local folder) into `st`; False when there is none.

    When it does not load (a truncated `state.pt`) and `root` names the run's checkpoint
    folder, the newest checkpoint there that loads is used instead (`find_resumable`, one
    line naming the skipped file).
    """
    if ckpt is None:
        return False
    try:
        meta, state, where = _load(ckpt, st.device)
        _apply(st, state, where)
    except checkpoint.CheckpointError as exc:
        if not root:
            raise
        log.warning("%s", exc)
        fs, path = storage.arrow_filesystem(root)
        found = checkpoint.find_resumable(fs, path, notify=lambda line: log.warning("%s", line))
        if found is None:
            raise
        uri = f"s3://{found[0]}" if storage.is_s3(root) else found[0]
        meta, state, where = _load(uri, st.device)
        _apply(st, state, where)
    st.step, st.examples_seen, st.run_id = meta.step, meta.examples_seen, meta.mlflow_run_id
    st.epoch_base, st.seen_base = meta.data_epoch, meta.examples_seen
    log.info("resumed from step %d (data epoch %d)", meta.step, meta.data_epoch)
    return True


def _load(ckpt: Any, device: torch.device) -> tuple[checkpoint.CheckpointMeta, Any, str]:
    """(meta, state, the checkpoint's name for messages) of a Ray checkpoint, folder or URI."""
    if isinstance(ckpt, (str, Path)):
        local, tmp = checkpoint.fetch(str(ckpt))
        try:
            meta, state = checkpoint.load(local, map_location=device)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return meta, state, str(ckpt)
    with ckpt.as_directory() as folder:
        meta, state = checkpoint.load(folder, map_location=device)
    return meta, state, str(getattr(ckpt, "path", folder))


def _apply(st: WorkerState, state: Any, where: str) -> None:
    """Load the state dicts of a checkpoint into `st` (model checked against its shapes)."""
    checkpoint.load_weights(unwrap(st.model), state["model"], f"{where}/{checkpoint.STATE_FILE}")
    st.optimizer.load_state_dict(state["optimizer"])
    st.scheduler.load_state_dict(state["scheduler"])
    if st.queue is not None and "queue" in state:
        st.queue.load_state_dict(state["queue"])
    if st.key_encoder is not None:  # a checkpoint without one restarts it from the model
        st.key_encoder.model.load_state_dict(state.get("key_encoder", state["model"]))


def train_step(st: WorkerState, micro_batches: list[Batch]) -> dict[str, float]:
    """One optimiser step over `micro_batches` (`step.train_step`, gradient accumulation), then
    count its examples; returns the terms (global, averaged over micro-batches), `lr` and
    `grad_norm`."""
    terms = engine_step(st, micro_batches)
    st.examples_seen += st.global_batch
    return terms


@dataclass
class Window:
    """Running sums between two log steps: data-wait and step time, and the terms."""

    wait_s: float = 0.0
    total_s: float = 0.0
    steps: int = 0
    examples: int = 0
    terms: dict[str, float] = field(default_factory=dict)

    def add(self, wait_s: float, total_s: float, examples: int, terms: dict[str, float]) -> None:
        self.wait_s, self.total_s = self.wait_s + wait_s, self.total_s + total_s
        self.steps, self.examples = self.steps + 1, self.examples + examples
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v

    def metrics(self) -> dict[str, float]:
        """Mean terms, examples/s and the data-wait fraction over the window."""
        out = {k: v / max(1, self.steps) for k, v in self.terms.items()}
        out["examples_per_s"] = self.examples / max(self.total_s, 1e-9)
        out["data_wait_fraction"] = self.wait_s / max(self.total_s, 1e-9)
        return out


def run_steps(
    st: WorkerState, batches: Iterator[Batch], logger: Logger, job: JobSpec, *, rank: int = 0
) -> dict[str, float]:
    """Train until `cfg.train.steps`, logging and checkpointing; returns the last metrics."""
    tcfg = st.cfg.train
    st.examples_per_epoch = job.examples_per_epoch
    window, last = Window(), {"step": float(st.step)}
    fresh = st.step == 0
    params = flatten(st.cfg)  # each checkpoint's logged model records the run's config
    while st.step < tcfg.steps:
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(st.cfg.optim.accum_steps)]
        t1 = time.perf_counter()
        terms = train_step(st, micro)
        window.add(t1 - t0, time.perf_counter() - t0, st.global_batch, terms)
        if fresh and st.step == 1 and rank == 0:
            _first_step(st, micro[0], logger, job)
        done = st.step == tcfg.steps
        keep = st.step % tcfg.checkpoint_every == 0 or done
        model_id = None
        if keep:
            model_id = logger.begin_checkpoint(st.step, job.checkpoint_uri(st.step), params)
        if st.step % tcfg.log_every == 0 or done or keep:
            last = window.metrics() | {"step": float(st.step), "data_epoch": float(st.data_epoch)}
            logger.log(last, st.step, model_id=model_id)
            window = Window()
            if rank == 0 and (st.step % (5 * tcfg.log_every) == 0 or done):
                log.info(progress_line(last, tcfg.steps))  # print() is teed twice under Train V2
        if keep:
            saved = partial(_checkpoint_stored, logger, model_id, job.log_weights)
            report(st, last, with_checkpoint=True, rank=rank, saved=saved)
    if not fresh and st.step >= tcfg.steps and last.keys() == {"step"}:
        report(st, last, with_checkpoint=False, rank=rank)  # resumed a finished run
    return last


def progress_line(metrics: dict[str, float], steps: int) -> str:
    """One console line: step, loss, head accuracies, examples/s and the data-wait share."""
    accs = " ".join(
        f"{k.removeprefix('acc_')} {v:.2f}"
        for k, v in sorted(metrics.items())
        if k.startswith("acc_")
    )
    return (
        f"train: step {int(metrics['step'])}/{steps} loss {metrics.get('loss', float('nan')):.3f} "
        f"| acc {accs} | {metrics.get('examples_per_s', 0.0):.0f} ex/s, "
        f"data wait {100 * metrics.get('data_wait_fraction', 0.0):.0f}%"
    )


def report(
    st: WorkerState,
    metrics: dict[str, float],
    *,
    with_checkpoint: bool,
    rank: int,
    saved: Callable[[str], None] | None = None,
) -> None:
    """`ray.train.report` on every rank; rank 0 attaches a checkpoint folder when asked, and
    `saved(folder)` runs once Ray Train has stored it (the local folder still exists)."""
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="avtime-ckpt-") as tmp:
        ckpt = None
        if rank == 0:
            meta = checkpoint.CheckpointMeta(
                step=st.step, data_epoch=st.data_epoch, examples_seen=st.examples_seen,
                mlflow_run_id=st.run_id,
            )  # fmt: skip
            checkpoint.save(tmp, meta, st.state_dicts(), dump_yaml(st.cfg))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint.dir_name(st.step))
        if saved is not None:
            saved(tmp)


def _checkpoint_stored(logger: Logger, model_id: str | None, weights: bool, folder: str) -> None:
    """Mark the checkpoint's logged model READY (with its files when `weights`)."""
    logger.end_checkpoint(model_id, folder if weights else None)


def device_tags(device: torch.device) -> dict[str, str]:
    """The run tags naming the device rank 0 trains on (type, and the GPU's name on CUDA)."""
    tags = {"avtime.device": device.type}
    if device.type == "cuda":
        tags["avtime.device_name"] = torch.cuda.get_device_name(device)
    return tags


def _batches_forever(shard: Any, cfg: RunConfig, device: torch.device) -> Iterator[Batch]:
    """Full batches of the worker's shard, passing over it again if it runs out."""
    passes = 0
    while True:
        n = 0
        for batch in _shard_batches(shard, cfg, device):
            n += 1
            yield batch
        if n == 0:
            raise RuntimeError(
                "the training stream gave this worker no full batch: add data, lower "
                "data.stream.batch_size, or use fewer workers"
            )
        passes += 1
        log.warning("training stream exhausted after %d batches; pass %d again", n, passes)


def _shard_batches(shard: Any, cfg: RunConfig, device: torch.device) -> Iterator[Batch]:
    """One pass over the shard as full contract batches on `device`. With
    `data.stream.decode_on = "device"` the shard holds encoded batches (JPEG bytes and
    augmentation parameters), decoded and augmented here on `device` (`device_decode`)."""
    size = cfg.data.stream.batch_size
    if cfg.data.stream.decode_on == "device":
        from avtime.training.engine.device_decode import decode_batch

        for encoded in shard.iter_batches(
            batch_size=size, drop_last=True, prefetch_batches=2, batch_format="numpy"
        ):
            yield decode_batch(encoded, cfg.data.augment.crop_size, device)
        return
    yield from shard.iter_torch_batches(
        batch_size=size, drop_last=True, prefetch_batches=2, device=device,
        pin_memory=device.type == "cuda",
    )  # fmt: skip


def _first_step(st: WorkerState, batch: Batch, logger: Logger, job: JobSpec) -> None:
    """After the first step of a fresh run: startup time and a contact sheet of the batch."""
    from avtime.pipelines.pretext.contact_sheet import save_batch

    if job.fit_start_unix > 0:
        logger.log({"startup_s": time.time() - job.fit_start_unix}, st.step)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_batch(
            batch, st.cfg.data.pretext.speeds, Path(tmp) / "batch.png",
            sample_rate=st.cfg.model.sample_rate,
        )  # fmt: skip
        logger.log_artifact(path, "contact_sheet")


def _log_encoders(st: WorkerState, logger: Logger) -> None:
    """The final encoder weights as an artifact `encoders/encoders.pt`."""
    model = unwrap(st.model)
    assert isinstance(model, AVModel)
    state = {"video": model.video.state_dict()}
    audio = model.audio
    if audio is not None:
        state["audio"] = audio.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoders.pt"
        torch.save(state, path)
        logger.log_artifact(path, "encoders")
