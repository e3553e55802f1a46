"""Objectives of Jenni, Black and Collomosse (AAAI 2023, arXiv 2302.07702), one idea a module.

- `infonce`: symmetric, multi-positive InfoNCE with feature-queue positives and negatives
  (CPC / NNCLR / MoCo; the queue terms are a reconstruction).
- `temporal`: the speed, direction and order cross-entropies.
- `bank`: what the loss reads from the feature queue and what the training step pushes.
- `total`: the weighted sum the training step backpropagates (`total_loss`).

Everything is pure torch, computed in float32 so the model may run under bf16 autocast.
docs/method.md describes the objective with every switch.
"""

from avtime.models.losses.bank import enqueue, read_banks
from avtime.models.losses.infonce import (
    Bank,
    ContrastivePair,
    NCEConfig,
    NCEDirection,
    info_nce,
    knn_positive_mask,
    multi_positive_nce,
    nce_logits,
    queue_nce,
    symmetric_nce,
)
from avtime.models.losses.temporal import TEMPORAL_TASKS, correct_rows, cross_entropy_rows
from avtime.models.losses.total import share_of_mean, total_loss

__all__ = [
    "TEMPORAL_TASKS",
    "Bank",
    "ContrastivePair",
    "NCEConfig",
    "NCEDirection",
    "correct_rows",
    "cross_entropy_rows",
    "enqueue",
    "info_nce",
    "knn_positive_mask",
    "multi_positive_nce",
    "nce_logits",
    "queue_nce",
    "read_banks",
    "share_of_mean",
    "symmetric_nce",
    "total_loss",
]
