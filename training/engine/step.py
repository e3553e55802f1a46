"""One training step, in plain torch: what `avtime train` runs, and what bench/gpu_check.py times.

This module imports only torch, `avtime.models` and its own configs (`step_config.py`, plain
dataclasses): no Ray, PyAV, MLflow, pyarrow or yaml, so the GPU check runs this very code on a
machine that has torch alone. The Ray Train loop
(`training/engine/loop.py`) wraps it with data, metrics and checkpoints.

Per step: each of `accum_steps` micro-batches runs forward under bf16 autocast on CUDA (fp32 on
CPU), the momentum key encoder (when `loss.key_momentum > 0`) embeds the same clips, `total_loss`
reads the feature queue, the step pushes the keys' embeddings into it (`enqueue`), and backward
runs without a DDP all-reduce except on the last micro-batch. Then the global gradient norm is
clipped, the optimiser steps, the key encoder follows the model (MoCo's eq. 2), and the warmup +
cosine schedule steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from avtime.models.av import AVModel
from avtime.models.losses import enqueue, total_loss
from avtime.models.momentum import KeyEncoder
from avtime.models.queue import FeatureQueue
from avtime.training.engine.step_config import OptimConfig, StepConfig

Batch = dict[str, torch.Tensor]


@dataclass(kw_only=True)
class StepState:
    """Model (DDP-wrapped when distributed), optimiser, schedule, queue and key encoder."""

    spec: StepConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    queue: FeatureQueue | None
    device: torch.device
    key_encoder: KeyEncoder | None = None  # fills the queue when loss.key_momentum > 0
    step: int = 0  # optimiser steps taken

    def state_dicts(self) -> dict[str, Any]:
        """Tensors to checkpoint: model, optimizer, scheduler, and queue / key encoder if any."""
        out = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.queue is not None:
            out["queue"] = self.queue.state_dict()
        if self.key_encoder is not None:
            out["key_encoder"] = self.key_encoder.model.state_dict()
        return out


def build_step_state(spec: StepConfig, device: torch.device) -> StepState:
    """Model (DDP when distributed), optimiser, schedule, queue and key encoder on `device`,
    from scratch (weights seeded with `spec.seed`)."""
    torch.manual_seed(spec.seed)
    model = AVModel(spec.model, num_speeds=spec.num_speeds, loss_cfg=spec.loss).to(device)
    queue = None
    if spec.loss.queue_size > 0:
        queue = FeatureQueue(spec.loss.queue_size, spec.model.embed_dim).to(device)
    key_encoder = None
    if queue is not None and spec.loss.key_momentum > 0:
        key_encoder = KeyEncoder(model, spec.loss.key_momentum)
    optimizer = build_optimizer(model, spec.optim)
    scheduler = build_scheduler(optimizer, spec.optim, spec.total_steps)
    return StepState(
        spec=spec, model=wrap_ddp(model, device), optimizer=optimizer, scheduler=scheduler,
        queue=queue, device=device, key_encoder=key_encoder,
    )  # fmt: skip


def train_step(st: StepState, micro_batches: Sequence[Batch]) -> dict[str, float]:
    """One optimiser step over `micro_batches` (gradient accumulation); returns the terms.

    Each batch holds the pretext keys of docs/CONTRACTS.md section 2 on `st.device` (video1/2
    uint8 [B, 3, T, S, S], audio1/2 float32 [B, L], labels). The returned terms are global
    (averaged over workers by `total_loss`) and averaged over micro-batches, plus `lr` (the lr
    this step used) and `grad_norm` (before clipping).
    """
    n = len(micro_batches)
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        with no_sync(st.model, sync=i == n - 1):
            terms = _micro_step(st, batch, n)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) / n
    params = [p for p in st.model.parameters() if p.grad is not None]
    clip = st.spec.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    sums["lr"] = float(st.optimizer.param_groups[0]["lr"])
    sums["grad_norm"] = float(grad_norm)
    st.optimizer.step()
    if st.key_encoder is not None:
        st.key_encoder.update(unwrap(st.model))
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    return sums


def _micro_step(st: StepState, batch: Batch, n: int) -> dict[str, torch.Tensor]:
    """Forward, loss (reads the queue), push the keys into the queue, backward of loss / n."""
    clips = (batch["video1"], batch["video2"], batch["audio1"], batch["audio2"])
    with autocast(st.device):
        out = st.model(*clips)
        keys = st.key_encoder(*clips) if st.key_encoder is not None else out
    loss, terms = total_loss(out, batch, st.spec.loss, st.queue)
    if st.queue is not None:
        enqueue(st.queue, keys, batch)
    (loss / n).backward()
    return terms


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr before optimiser step `step` (0-based).

    Linear warmup from 1/warmup to 1 over `warmup_steps`, then a cosine decay to 0 at
    `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on weight matrices and kernels only (not biases or norms)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine (`lr_factor`), stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps)
    )


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel when torch.distributed runs more than one process, else `model`.

    The model builds only the heads its losses use, so every parameter gets a gradient and
    `find_unused_parameters` stays off.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or `model` itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def no_sync(model: nn.Module, sync: bool) -> AbstractContextManager[object]:
    """DDP's `no_sync()` for accumulation micro-steps that must not all-reduce gradients."""
    fn = getattr(model, "no_sync", None)
    if sync or not callable(fn):
        return nullcontext()
    ctx: AbstractContextManager[object] = fn()
    return ctx


def autocast(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
