"""A momentum key encoder: the slowly moving copy of the model whose embeddings fill the queue.

MoCo (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
eq. 2) keeps a key encoder theta_k <- m * theta_k + (1 - m) * theta_q after every optimiser
step, so that the rows of a feature queue come from nearly the same encoder however old they are.
Jenni et al. (AAAI 2023) use a queue with nearest-neighbour positives but do not say how its rows
are made; `loss.key_momentum > 0` is our reconstruction (docs/method.md): the queue is filled by
this copy, while the batch terms still use the live model.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class KeyEncoder(nn.Module):
    """An EMA copy of `model` that takes no gradient.

    Call `update(model)` after each optimiser step; call it like the model to embed the keys.
    """

    def __init__(self, model: nn.Module, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q; buffers (e.g. BatchNorm stats) are copied."""
        for pk, pq in zip(self.model.parameters(), model.parameters(), strict=True):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)
        for bk, bq in zip(self.model.buffers(), model.buffers(), strict=True):
            bk.copy_(bq)

    @torch.no_grad()
    def forward(self, *inputs: Tensor) -> dict[str, Tensor]:
        """The copy's outputs for `inputs` (same signature as the model), without gradient."""
        out: dict[str, Tensor] = self.model(*inputs)
        return out
