"""The configs of one training step (`training/engine/step.py`): plain dataclasses, no torch.

`OptimConfig` is the run config's `optim` section (`training.config.RunConfig` imports it from
here); `StepConfig` gathers what the step reads of a whole run config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from avtime.models.config import LossConfig, ModelConfig


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimiser and schedule."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    accum_steps: int = 1  # gradient accumulation micro-steps per optimiser step

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; weight_decay and grad_clip must be >= 0")
        if self.warmup_steps < 0 or self.accum_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and accum_steps >= 1")


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What the step needs of the run config (`training.engine.loop.step_config` makes it)."""

    model: ModelConfig
    loss: LossConfig
    optim: OptimConfig
    num_speeds: int  # len(data.pretext.speeds)
    total_steps: int  # train.steps: the length of the lr schedule
    seed: int = 0  # train.seed: seeds the model's initial weights
