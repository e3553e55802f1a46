"""The training objective: the weighted sum of the contrastive and temporal terms.

Jenni, Black and Collomosse (AAAI 2023, arXiv 2302.07702) train with the sum of a video-video
and a video-audio InfoNCE (`infonce.py`) and the temporal cross-entropies (`temporal.py`):

    L = w_vv * vv + w_va * va + w_speed * (speed_video + speed_audio)
      + w_direction * (direction_video + direction_audio)
      + w_order_intra * (order_video + order_audio) + w_order_inter * order_av

The paper does not give the weights; they are config switches (`LossConfig`, all 1 by default)
and this grouping of terms under shared weights is our reconstruction (docs/method.md). Rows
reduce to each worker's *share* of the global mean (`share_of_mean`, `models.distributed`), which
makes DDP's gradient averaging exact. The loss only reads the feature queue; the training step
pushes into it afterwards (`bank.enqueue`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from avtime.models.config import LossConfig
from avtime.models.distributed import gather_no_grad, global_sum, world_size
from avtime.models.losses.bank import read_banks
from avtime.models.losses.infonce import Bank, ContrastivePair, NCEConfig, symmetric_nce
from avtime.models.losses.temporal import TEMPORAL_TASKS, correct_rows, cross_entropy_rows
from avtime.models.queue import FeatureQueue


def share_of_mean(values: Tensor, mask: Tensor | None, n_global: Tensor) -> Tensor:
    """This worker's share of the global masked mean: `W * sum_local(values * mask) / N_global`.

    Args:
        values: [B] per-row values; mask: [B] bool or None (all rows); n_global: scalar count of
        valid rows on all workers (0 gives 0, never NaN).
    Returns:
        scalar; averaging it over the W workers gives the global mean.
    """
    if mask is not None:
        values = torch.where(mask, values, torch.zeros_like(values))
    return values.sum() * world_size() / n_global.clamp(min=1).to(values.dtype)


def total_loss(
    outputs: dict[str, Tensor],
    batch: dict[str, Tensor],
    loss_cfg: LossConfig,
    queue: FeatureQueue | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of every enabled term, and a dict of named terms and head accuracies.

    Args:
        outputs: `AVModel.forward` outputs for the local batch of B rows.
        batch: the pretext batch (docs/CONTRACTS.md section 2); reads `has_audio`, the labels and
            `source_key` (when present and `loss_cfg.mask_same_source`, a clip's own video is
            never one of its contrastive negatives).
        loss_cfg: weights and contrastive switches; a weight of 0 skips its term entirely.
        queue: the feature queue or None; only read (the step pushes with `bank.enqueue`).
    Returns:
        loss: scalar, this worker's share (backpropagate it; DDP averaging makes it exact).
        terms: detached float scalars, averaged over workers, so they are the global values:
            `loss`, `loss_<term>` for every enabled term, `acc_<task>` for every temporal head,
            and `audio_fraction`. Terms: vv, va, speed_video, speed_audio, direction_video,
            direction_audio, order_video, order_audio, order_av.
    """
    device = _any_output(outputs).device
    b = _any_output(outputs).shape[0]
    has_audio = batch.get("has_audio", torch.ones(b)).to(device) > 0.5  # [B]
    audio_global = gather_no_grad(has_audio.float()) > 0.5  # [W * B]
    n_rows = torch.tensor(float(audio_global.numel()), device=device)
    n_audio = audio_global.sum().float()
    shares: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    if loss_cfg.w_vv > 0 or loss_cfg.w_va > 0:
        banks = read_banks(queue, loss_cfg, device)
        src = None  # (local [B], gathered [W * B]) source keys
        if "source_key" in batch and loss_cfg.mask_same_source:
            local = batch["source_key"].long().to(device)
            src = (local, gather_no_grad(local))
        nce = NCEConfig(
            temperature=loss_cfg.temperature, knn_k=loss_cfg.knn_k,
            queue_negatives=loss_cfg.queue_negatives,
        )  # fmt: skip
        if loss_cfg.w_vv > 0:
            rows = _vv_rows(outputs, nce, banks["vv"], src)
            shares["vv"], weights["vv"] = share_of_mean(rows, None, n_rows), loss_cfg.w_vv
        if loss_cfg.w_va > 0:
            rows = _va_rows(outputs, nce, (banks["va_video"], banks["va_audio"]), audio_global, src)
            shares["va"], weights["va"] = share_of_mean(rows, has_audio, n_audio), loss_cfg.w_va
    accs = _temporal_terms(outputs, batch, loss_cfg, (has_audio, n_audio, n_rows), shares, weights)
    if not shares:
        raise ValueError("every loss weight is 0; enable at least one term")
    loss = torch.stack([weights[k] * shares[k] for k in shares]).sum()
    return loss, _global_terms(loss, shares, accs, n_audio / n_rows)


def _temporal_terms(
    outputs: dict[str, Tensor],
    batch: dict[str, Tensor],
    cfg: LossConfig,
    counts: tuple[Tensor, Tensor, Tensor],
    shares: dict[str, Tensor],
    weights: dict[str, float],
) -> dict[str, Tensor]:
    """Add each enabled temporal term's share and weight to `shares` / `weights`; return the
    heads' accuracy shares (detached). `counts`: (has_audio [B] bool, n_audio, n_rows)."""
    has_audio, n_audio, n_rows = counts
    accs: dict[str, Tensor] = {}
    for name, logits_key, label_key, weight_field, needs_audio in TEMPORAL_TASKS:
        weight = float(getattr(cfg, weight_field))
        if weight == 0:
            continue
        logits, labels = _get(outputs, logits_key), batch[label_key].to(has_audio.device)
        mask, n = (has_audio, n_audio) if needs_audio else (None, n_rows)
        shares[name] = share_of_mean(cross_entropy_rows(logits, labels), mask, n)
        weights[name] = weight
        accs[name] = share_of_mean(correct_rows(logits, labels), mask, n).detach()
    return accs


def _any_output(outputs: dict[str, Tensor]) -> Tensor:
    return outputs["feat_video"] if "feat_video" in outputs else next(iter(outputs.values()))


def _get(outputs: dict[str, Tensor], key: str) -> Tensor:
    if key not in outputs:
        raise KeyError(
            f"model outputs lack {key!r} (is that head disabled in the model's loss_cfg, or is "
            f"there no audio encoder?); outputs: {sorted(outputs)}"
        )
    return outputs[key]


def _vv_rows(
    outputs: dict[str, Tensor],
    nce: NCEConfig,
    bank: Bank | None,
    sources: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """Per-row symmetric InfoNCE v1 <-> v2 in the video-video space: [B]."""
    emb = _get(outputs, "emb_vv")  # [B, 2, D]
    pair = ContrastivePair(x=emb[:, 0], y=emb[:, 1], x_bank=bank, y_bank=bank, sources=sources)
    return symmetric_nce(pair, nce)


def _va_rows(
    outputs: dict[str, Tensor],
    nce: NCEConfig,
    banks: tuple[Bank | None, Bank | None],
    audio_global: Tensor,
    sources: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """Per-row symmetric InfoNCE v_i <-> a_i, mean over i = 1, 2: [B] (mask rows without audio).
    `banks`: (video, audio) banks of the va space."""
    vid, aud = _get(outputs, "emb_va_video"), _get(outputs, "emb_va_audio")  # [B, 2, D]
    rows = [
        symmetric_nce(
            ContrastivePair(
                x=vid[:, i],
                y=aud[:, i],
                valid_global=audio_global,
                x_bank=banks[0],
                y_bank=banks[1],
                sources=sources,
            ),
            nce,
        )  # fmt: skip
        for i in (0, 1)
    ]
    return 0.5 * (rows[0] + rows[1])


def _global_terms(
    loss: Tensor, shares: dict[str, Tensor], accs: dict[str, Tensor], audio_fraction: Tensor
) -> dict[str, Tensor]:
    """Detached terms averaged over workers (one all_reduce): the global values."""
    names = ["loss"] + [f"loss_{k}" for k in shares] + [f"acc_{k}" for k in accs]
    values = [loss] + list(shares.values()) + list(accs.values())
    stacked = torch.stack([v.detach().float() for v in values])
    averaged = global_sum(stacked) / world_size()
    terms = {name: averaged[i] for i, name in enumerate(names)}
    terms["audio_fraction"] = audio_fraction.detach().float()
    return terms
