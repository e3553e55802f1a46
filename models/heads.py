"""Projection MLPs for the contrastive terms and MLP heads for the temporal tasks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear -> BatchNorm1d -> ReLU -> Linear: [N, in_dim] -> [N, out_dim].

    The projection heads (SimCLR-style) and the temporal classification heads share this shape.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )


class ClipHead(nn.Module):
    """Applies one MLP to each of the two clips of a modality.

    forward(f1 [B, F], f2 [B, F]) -> [B, 2, out_dim] (clip 1 at index 0). Both clips go through the
    MLP as one batch of 2B rows, so BatchNorm sees both.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, out_dim)

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        """[B, F], [B, F] -> [B, 2, out_dim]."""
        b = f1.shape[0]
        out: Tensor = self.mlp(torch.cat([f1, f2], dim=0))
        return out.view(2, b, -1).transpose(0, 1)


class PairHead(nn.Module):
    """Classifies the temporal order of a pair from its concatenated features.

    forward(first [B, F1], second [B, F2]) -> [B, 3] logits over (first-before-second,
    second-before-first, overlapping).
    """

    def __init__(self, in_dim: int, hidden: int, num_classes: int = 3) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, num_classes)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """[B, F1], [B, F2] -> [B, num_classes]."""
        out: Tensor = self.mlp(torch.cat([first, second], dim=1))
        return out
