"""What the contrastive terms read from the feature queue, and what a training step pushes.

The queue (`models/queue.py`) has one bank per embedding space: `vv` (video-video) and
`va_video` / `va_audio` (video-audio). The loss only reads it (`read_banks`); the training step
pushes the step's embeddings once the loss has read the queue (`enqueue`). MoCo (He et al.,
CVPR 2020) keeps such a queue of keys from a momentum encoder (eq. 2; `models/momentum.py`), and
NNCLR (Dwibedi et al., ICCV 2021) a support set of past embeddings for its nearest neighbours;
which rows are queued here (clip 1 of every space, only rows with audio in the video-audio
banks) is our reconstruction of Jenni et al. (AAAI 2023), who do not say.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avtime.models.config import LossConfig
from avtime.models.distributed import gather_no_grad
from avtime.models.losses.infonce import Bank
from avtime.models.queue import FeatureQueue

BANKS: tuple[str, ...] = ("vv", "va_video", "va_audio")


def read_banks(
    queue: FeatureQueue | None, cfg: LossConfig, device: torch.device
) -> dict[str, Bank | None]:
    """Copies of the queue banks the enabled terms use, with their source keys.

    Returns:
        {"vv", "va_video", "va_audio"} -> `Bank` (rows [Q, D] and sources [Q] on `device`), or
        None when the queue is off, unused (`knn_k == 0` and no queue negatives) or that bank is
        empty.
    """
    out: dict[str, Bank | None] = dict.fromkeys(BANKS)
    use = queue is not None and queue.size > 0 and (cfg.knn_k > 0 or cfg.queue_negatives)
    if not use or queue is None:
        return out
    for n in BANKS:
        if queue.count(n) > 0:
            out[n] = Bank(rows=queue.get(n).to(device), sources=queue.sources(n).to(device))
    return out


@torch.no_grad()
def enqueue(queue: FeatureQueue, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> None:
    """Push the clip-1 embeddings of each space, gathered from all workers in rank order.

    Call it once per micro-batch, after `total_loss` has read the queue. Both video-audio banks
    take only the rows that have audio, so the va space never holds a video whose sound the term
    never saw, and its two banks stay row-aligned. Each row keeps its `source_key` when the
    batch has one.

    Args:
        outputs: model outputs for B rows (`emb_vv`, `emb_va_video`, `emb_va_audio`: [B, 2, D];
            those of the momentum key encoder when there is one).
        batch: the pretext batch; reads `has_audio` [B] (all 1 when absent) and `source_key` [B].
    """
    if queue.size == 0:
        return
    some = next(iter(outputs.values()))
    device, b = some.device, some.shape[0]
    has_audio = batch.get("has_audio", torch.ones(b)).to(device) > 0.5  # [B]
    audio_global = gather_no_grad(has_audio.float()) > 0.5  # [W * B]
    src = None
    if "source_key" in batch:
        src = gather_no_grad(batch["source_key"].long().to(device))  # [W * B]
    if "emb_vv" in outputs:
        queue.push("vv", gather_no_grad(outputs["emb_vv"][:, 0].float()), src)
    if "emb_va_video" in outputs and "emb_va_audio" in outputs:
        video = gather_no_grad(outputs["emb_va_video"][:, 0].float())
        audio = gather_no_grad(outputs["emb_va_audio"][:, 0].float())
        keep = audio_global.to(audio.device)
        kept_src = None if src is None else src[keep.to(src.device)]
        queue.push("va_video", video[keep], kept_src)
        queue.push("va_audio", audio[keep], kept_src)
