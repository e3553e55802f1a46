"""Action recognition by full fine-tuning: the video encoder plus a linear head, end to end.

Training clips stream from the cached shards through the same Ray Data clip pipeline as feature
extraction (every epoch re-reads them; with a random horizontal flip per clip). The encoder
learns at `lr * encoder_lr_scale` and the head at `lr` (AdamW, cosine decay). Test clips then go
through the fine-tuned encoder on the Ray Data actors, the head runs on the driver, and clip
probabilities are averaged per video. Training runs on the driver's GPU when it has one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avtime.training.eval.features import encode_dataset, shard_clip_dataset
from avtime.training.eval.linear import video_accuracy
from avtime.training.eval.protocols import EvalContext, select, train_test


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Fine-tuning settings."""

    epochs: int = 5
    lr: float = 1e-3  # head learning rate
    encoder_lr_scale: float = 0.1  # encoder lr = lr * this
    weight_decay: float = 1e-4
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.encoder_lr_scale < 0:
            raise ValueError("epochs, batch_size >= 1; lr > 0; encoder_lr_scale >= 0")


class VideoClassifier(nn.Module):
    """Video encoder + linear head: uint8 [B, 3, T, H, W] -> logits [B, C]."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(video))
        return out


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _train_epoch(
    net: VideoClassifier,
    ds: Any,
    labels: dict[str, int],
    opt: torch.optim.Optimizer,
    sched: Any,
    cfg: FinetuneConfig,
    gen: torch.Generator,
) -> float:
    """One pass over the training clips; returns the mean loss."""
    device = next(net.parameters()).device
    net.train()
    losses = []
    for batch in ds.iter_batches(
        batch_size=cfg.batch_size, batch_format="numpy", local_shuffle_buffer_size=64
    ):
        video = torch.from_numpy(np.ascontiguousarray(batch["video"]))
        flip = torch.rand(len(video), generator=gen) < 0.5
        video[flip] = video[flip].flip(-1)
        y = torch.tensor([labels[str(s)] for s in batch["source"]], dtype=torch.long)
        loss = F.cross_entropy(net(video.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return sum(losses) / max(1, len(losses))


def _steps_per_epoch(ctx: EvalContext, n_train: int, cfg: FinetuneConfig) -> int:
    """An upper estimate of optimiser steps per epoch (for the cosine schedule)."""
    clips = n_train * ctx.clip.clips_per_segment * 2  # videos may hold more than one segment
    return max(1, math.ceil(clips / cfg.batch_size))


def run_action_finetune(ctx: EvalContext, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune on the train split, report top-1 on the test split (per-video averaging)."""
    train, test = train_test(ctx)
    classes = ctx.class_index
    shards = ctx.shards()
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(ctx.loaded.model)
    net = VideoClassifier(model.video, model.video_dim, len(classes)).to(_device())
    opt = torch.optim.AdamW(
        [
            {"params": net.encoder.parameters(), "lr": cfg.lr * cfg.encoder_lr_scale},
            {"params": net.head.parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    total = cfg.epochs * _steps_per_epoch(ctx, len(train), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    labels = {s: classes[lab] for s, lab in train.items()}
    ds = shard_clip_dataset(shards.uri, ctx.clip, ctx.extract, frozenset(train))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = [_train_epoch(net, ds, labels, opt, sched, cfg, gen) for _ in range(cfg.epochs)]
    net.eval().cpu()
    model.video = net.encoder  # type: ignore[assignment]
    test_ds = shard_clip_dataset(shards.uri, ctx.clip, ctx.extract, frozenset(test))
    feats = encode_dataset(test_ds, model, ctx.loaded.cfg.model, ("video",), ctx.extract)
    assert feats.video is not None
    x_te, _, g_te = select(feats, feats.video, test, classes)
    with torch.no_grad():
        log_probs = F.log_softmax(net.head(x_te), dim=1)
    top1 = video_accuracy(log_probs, g_te, {s: classes[test[s]] for s in g_te})
    return {
        "top1": top1,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "epochs": cfg.epochs,
        "test_videos": len(set(g_te)),
        "num_classes": len(classes),
    }
