"""The temporal pretext tasks: speed, direction and order cross-entropies.

Jenni, Black and Collomosse (AAAI 2023, arXiv 2302.07702) train classifiers on top of the
encoders to recognise each clip's playback speed and direction (from Jenni, Meishvili and Favaro,
"Video Representation Learning by Recognizing Temporal Transformations", ECCV 2020) and the
temporal order of two clips, within a modality (v1, v2 / a1, a2) and across modalities
(v1, a2 / v2, a1), with the classes "first before second", "second before first" and "overlap".
Each task is a plain softmax cross-entropy, `-log softmax(z)_y`, as `torch.nn.functional
.cross_entropy` computes it; this module averages it over each row's clips. The heads are in
`models/heads.py`, the labels in docs/CONTRACTS.md section 2.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

# (term, logits key, label key, weight field of LossConfig, needs audio)
TEMPORAL_TASKS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("speed_video", "logits_video_speed", "label_video_speed", "w_speed", False),
    ("speed_audio", "logits_audio_speed", "label_audio_speed", "w_speed", True),
    ("direction_video", "logits_video_reverse", "label_video_reverse", "w_direction", False),
    ("direction_audio", "logits_audio_reverse", "label_audio_reverse", "w_direction", True),
    ("order_video", "logits_video_order", "label_video_order", "w_order_intra", False),
    ("order_audio", "logits_audio_order", "label_audio_order", "w_order_intra", True),
    ("order_av", "logits_av_order", "label_av_order", "w_order_inter", True),
)


def cross_entropy_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row cross-entropy averaged over any clip axis.

    Args:
        logits: [B, C] or [B, K, C]; labels: [B] or [B, K] int64.
    Returns:
        [B] float32.
    """
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), reduction="none"
    )
    return ce.view(labels.shape[0], -1).mean(dim=1)


def correct_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct predictions per row: [B, C] / [B, K, C] with labels [B] / [B, K] -> [B]."""
    hit = (logits.detach().argmax(dim=-1) == labels).float()
    return hit.view(labels.shape[0], -1).mean(dim=1)
