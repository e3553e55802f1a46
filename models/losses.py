"""Objectives: symmetric / multi-positive InfoNCE and the temporal cross-entropies.

The building blocks are pure tensor functions; `total_loss` combines them as described in
docs/method.md. Everything is computed in float32 (inputs are cast), so the model may run under
bf16 autocast. Rows are reduced to each worker's *share* of the global mean (see
`models.distributed`), which makes DDP's gradient averaging exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avtime.models.config import LossConfig
from avtime.models.distributed import gather_no_grad, gather_with_grad, global_sum, rank, world_size
from avtime.models.queue import FeatureQueue

MASKED_LOGIT = -1e9  # finite stand-in for -inf, so fully masked rows stay NaN-free


def nce_logits(anchor: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """Cosine similarities over a temperature.

    Args:
        anchor: [N, D]; keys: [M, D] (any scale; both are L2-normalised here, in float32).
    Returns:
        [N, M] float32, `cos(anchor_i, keys_j) / temperature`.
    """
    a = F.normalize(anchor.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    return a @ k.t() / temperature


def multi_positive_nce(logits: Tensor, positives: Tensor, allowed: Tensor) -> Tensor:
    """Multi-positive InfoNCE per row: `-log(sum_{j in P_i} e^{s_ij} / sum_{j in A_i} e^{s_ij})`.

    Args:
        logits: [N, M] float similarities s_ij (already divided by the temperature).
        positives: [N, M] bool, P_i; every row needs at least one positive to be meaningful.
        allowed: [N, M] bool, A_i, the columns in the denominator (positives are always added).
    Returns:
        [N] float32 per-row losses; rows without positives get a large finite value (mask them).
    """
    allowed = allowed | positives
    logits = logits.float()
    pos = torch.logsumexp(logits.masked_fill(~positives, MASKED_LOGIT), dim=1)
    den = torch.logsumexp(logits.masked_fill(~allowed, MASKED_LOGIT), dim=1)
    return den - pos


def knn_positive_mask(positive: Tensor, bank: Tensor, k: int) -> Tensor:
    """The k nearest bank rows (cosine) of each positive.

    Args:
        positive: [N, D]; bank: [Q, D]; k: neighbours per row (clipped to Q).
    Returns:
        [N, Q] bool, True at the k most similar bank rows of each positive (no gradient).
    """
    mask = torch.zeros(positive.shape[0], bank.shape[0], dtype=torch.bool, device=positive.device)
    k = min(k, bank.shape[0])
    if k <= 0:
        return mask
    with torch.no_grad():
        sim = F.normalize(positive.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).t()
        idx = sim.topk(k, dim=1).indices
    return mask.scatter_(1, idx, True)


def queue_nce(
    anchor: Tensor,
    keys: Tensor,
    pos_index: Tensor,
    temperature: float,
    *,
    key_valid: Tensor | None = None,
    bank: Tensor | None = None,
    knn_k: int = 0,
    queue_negatives: bool = True,
    sources: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    """One direction of InfoNCE, local anchors against global keys, with optional queue terms.

    Positives of anchor i: `keys[pos_index[i]]` and, if `knn_k > 0`, the `knn_k` bank rows nearest
    to that key. Negatives: the other valid keys and, with `queue_negatives`, the rest of the bank;
    with `sources`, keys and bank rows from the anchor's own source video are not negatives.

    Args:
        anchor: [B, D] local anchors. keys: [M, D] keys from all workers (with gradient).
        pos_index: [B] long, the column of each anchor's positive in `keys`.
        key_valid: [M] bool or None (all valid); invalid keys are left out of the denominator.
        bank: [Q, D] past embeddings (no gradient) or None.
        sources: (anchor sources [B], key sources [M], bank sources [Q] or None), int64 source
            video keys; -1 never matches. None: every non-positive key is a negative.
    Returns:
        [B] float32 per-row losses.
    """
    logits = nce_logits(anchor, keys, temperature)  # [B, M]
    positives = F.one_hot(pos_index, keys.shape[0]).bool()
    allowed = torch.ones_like(positives)
    if key_valid is not None:
        allowed = allowed & key_valid.bool()[None, :]
    if sources is not None:
        allowed = allowed & (positives | ~_same_source(sources[0], sources[1]))
    if bank is not None and bank.shape[0] > 0 and (knn_k > 0 or queue_negatives):
        bank = bank.to(anchor.device)
        pos_q = knn_positive_mask(keys[pos_index].detach(), bank, knn_k)
        allowed_q = torch.ones_like(pos_q) if queue_negatives else pos_q
        if sources is not None and sources[2] is not None:
            allowed_q = allowed_q & (pos_q | ~_same_source(sources[0], sources[2]))
        logits = torch.cat([logits, nce_logits(anchor, bank, temperature)], dim=1)
        positives = torch.cat([positives, pos_q], dim=1)
        allowed = torch.cat([allowed, allowed_q], dim=1)
    return multi_positive_nce(logits, positives, allowed)


def _same_source(rows: Tensor, cols: Tensor) -> Tensor:
    """[R, C] bool: row and column come from the same known (>= 0) source video."""
    rows, cols = rows.long(), cols.long().to(rows.device)
    return (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)


def symmetric_nce(
    x: Tensor,
    y: Tensor,
    temperature: float,
    *,
    valid_global: Tensor | None = None,
    x_bank: Tensor | None = None,
    y_bank: Tensor | None = None,
    knn_k: int = 0,
    queue_negatives: bool = True,
    sources: tuple[Tensor, Tensor] | None = None,
    x_bank_src: Tensor | None = None,
    y_bank_src: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE between paired embeddings, gathered across workers with gradient.

    `0.5 * (l(x -> y) + l(y -> x))` per local row; row i's positive is global column
    `rank * B + i`. The x -> y direction takes extra positives / negatives from `y_bank` (the
    space of y), and y -> x from `x_bank`.

    Args:
        x, y: [B, D] local embeddings (row i of x pairs with row i of y).
        valid_global: [W * B] bool or None; invalid pairs are dropped as keys (mask them as rows).
        x_bank, y_bank: [Q, D] queue contents or None.
        sources: (local [B], gathered [W * B]) int64 source video keys, or None. Given, no clip
            is a negative of another clip of its own video (in the batch of every worker, and in
            the queue where `x_bank_src` / `y_bank_src` [Q] give the bank rows' sources).
    Returns:
        [B] float32 per-row losses.
    """
    xg, yg = gather_with_grad(x), gather_with_grad(y)
    pos_index = rank() * x.shape[0] + torch.arange(x.shape[0], device=x.device)
    kw = {"key_valid": valid_global, "knn_k": knn_k, "queue_negatives": queue_negatives}
    src_xy = src_yx = None
    if sources is not None:
        src_xy, src_yx = (*sources, y_bank_src), (*sources, x_bank_src)
    l_xy = queue_nce(x, yg, pos_index, temperature, bank=y_bank, sources=src_xy, **kw)  # type: ignore[arg-type]
    l_yx = queue_nce(y, xg, pos_index, temperature, bank=x_bank, sources=src_yx, **kw)  # type: ignore[arg-type]
    return 0.5 * (l_xy + l_yx)


def info_nce(x: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Plain symmetric InfoNCE (mean over rows) of paired embeddings x, y: [N, D] -> scalar."""
    return symmetric_nce(x, y, temperature).mean()


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


# (term, logits key, label key, weight field, needs audio)
TEMPORAL_TASKS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("speed_video", "logits_video_speed", "label_video_speed", "w_speed", False),
    ("speed_audio", "logits_audio_speed", "label_audio_speed", "w_speed", True),
    ("direction_video", "logits_video_reverse", "label_video_reverse", "w_direction", False),
    ("direction_audio", "logits_audio_reverse", "label_audio_reverse", "w_direction", True),
    ("order_video", "logits_video_order", "label_video_order", "w_order_intra", False),
    ("order_audio", "logits_audio_order", "label_audio_order", "w_order_intra", True),
    ("order_av", "logits_av_order", "label_av_order", "w_order_inter", True),
)


def total_loss(
    outputs: dict[str, Tensor],
    batch: dict[str, Tensor],
    loss_cfg: LossConfig,
    queue: FeatureQueue | None = None,
    *,
    update_queue: bool = True,
    queue_outputs: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of every enabled term, and a dict of named terms and head accuracies.

    Args:
        outputs: `AVModel.forward` outputs for the local batch of B rows.
        batch: the pretext batch (docs/CONTRACTS.md section 2); reads `has_audio`, the labels and
            `source_key` (when present and `loss_cfg.mask_same_source`, a clip's own video is
            never one of its contrastive negatives).
        loss_cfg: weights and contrastive switches; a weight of 0 skips its term entirely.
        queue: the feature queue or None. Its contents are read first; then, if `update_queue`,
            the clip-1 embeddings gathered from all workers are pushed (detached), so call this
            once per micro-batch and do not push again.
        queue_outputs: outputs whose embeddings are pushed instead of `outputs`' (the momentum
            key encoder's, same shapes); None pushes `outputs`' own.
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
    banks = _read_banks(queue, loss_cfg, device)
    src = None  # (local, gathered) source keys
    if "source_key" in batch:
        local = batch["source_key"].long().to(device)
        src = (local, gather_no_grad(local))
    mask_src = src if loss_cfg.mask_same_source else None
    shares: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    accs: dict[str, Tensor] = {}
    if loss_cfg.w_vv > 0:
        rows = _vv_rows(outputs, loss_cfg, banks, mask_src)
        shares["vv"], weights["vv"] = share_of_mean(rows, None, n_rows), loss_cfg.w_vv
    if loss_cfg.w_va > 0:
        rows = _va_rows(outputs, loss_cfg, banks, audio_global, mask_src)
        shares["va"], weights["va"] = share_of_mean(rows, has_audio, n_audio), loss_cfg.w_va
    for name, logits_key, label_key, weight_field, needs_audio in TEMPORAL_TASKS:
        weight = float(getattr(loss_cfg, weight_field))
        if weight == 0:
            continue
        logits, labels = _get(outputs, logits_key), batch[label_key].to(device)
        mask, n = (has_audio, n_audio) if needs_audio else (None, n_rows)
        shares[name], weights[name] = (
            share_of_mean(cross_entropy_rows(logits, labels), mask, n),
            weight,
        )
        accs[name] = share_of_mean(correct_rows(logits, labels), mask, n).detach()
    if not shares:
        raise ValueError("every loss weight is 0; enable at least one term")
    loss = torch.stack([weights[k] * shares[k] for k in shares]).sum()
    terms = _global_terms(loss, shares, accs, n_audio / n_rows)
    if queue is not None and update_queue:
        pushed = outputs if queue_outputs is None else queue_outputs
        _push_queue(queue, pushed, audio_global, None if src is None else src[1])
    return loss, terms


def _any_output(outputs: dict[str, Tensor]) -> Tensor:
    return outputs["feat_video"] if "feat_video" in outputs else next(iter(outputs.values()))


def _get(outputs: dict[str, Tensor], key: str) -> Tensor:
    if key not in outputs:
        raise KeyError(
            f"model outputs lack {key!r} (is that head disabled in the model's loss_cfg, or is "
            f"there no audio encoder?); outputs: {sorted(outputs)}"
        )
    return outputs[key]


def _read_banks(
    queue: FeatureQueue | None, cfg: LossConfig, device: torch.device
) -> dict[str, Tensor | None]:
    """Copies of the queue banks the enabled terms use, and their source keys under
    `<bank>_src` (None when the queue is off or empty)."""
    names = ("vv", "va_video", "va_audio")
    out: dict[str, Tensor | None] = dict.fromkeys(names + tuple(f"{n}_src" for n in names))
    use = queue is not None and queue.size > 0 and (cfg.knn_k > 0 or cfg.queue_negatives)
    if not use or queue is None:
        return out
    for n in names:
        if queue.count(n) > 0:
            out[n], out[f"{n}_src"] = queue.get(n).to(device), queue.sources(n).to(device)
    return out


def _vv_rows(
    outputs: dict[str, Tensor],
    cfg: LossConfig,
    banks: dict[str, Tensor | None],
    sources: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """Per-row symmetric InfoNCE v1 <-> v2 in the video-video space: [B]."""
    emb = _get(outputs, "emb_vv")  # [B, 2, D]
    return symmetric_nce(
        emb[:, 0],
        emb[:, 1],
        cfg.temperature,
        x_bank=banks["vv"],
        y_bank=banks["vv"],
        knn_k=cfg.knn_k,
        queue_negatives=cfg.queue_negatives,
        sources=sources,
        x_bank_src=banks["vv_src"],
        y_bank_src=banks["vv_src"],
    )


def _va_rows(
    outputs: dict[str, Tensor],
    cfg: LossConfig,
    banks: dict[str, Tensor | None],
    audio_global: Tensor,
    sources: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """Per-row symmetric InfoNCE v_i <-> a_i, mean over i = 1, 2: [B] (mask rows without audio)."""
    vid, aud = _get(outputs, "emb_va_video"), _get(outputs, "emb_va_audio")  # [B, 2, D]
    rows = [
        symmetric_nce(
            vid[:, i],
            aud[:, i],
            cfg.temperature,
            valid_global=audio_global,
            x_bank=banks["va_video"],
            y_bank=banks["va_audio"],
            knn_k=cfg.knn_k,
            queue_negatives=cfg.queue_negatives,
            sources=sources,
            x_bank_src=banks["va_video_src"],
            y_bank_src=banks["va_audio_src"],
        )
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


@torch.no_grad()
def _push_queue(
    queue: FeatureQueue,
    outputs: dict[str, Tensor],
    audio_global: Tensor,
    src: Tensor | None = None,
) -> None:
    """Push the gathered clip-1 embeddings of each enabled space, with their gathered source
    keys `src` [W * B] when the batch has them. Both video-audio banks take only the rows that
    have audio (`audio_global` [W * B] bool), so the va space never holds a video whose sound
    the term never saw, and its two banks stay row-aligned."""
    if queue.size == 0:
        return
    if "emb_vv" in outputs:
        queue.push("vv", gather_no_grad(outputs["emb_vv"][:, 0].float()), src)
    if "emb_va_video" in outputs and "emb_va_audio" in outputs:
        video = gather_no_grad(outputs["emb_va_video"][:, 0].float())
        audio = gather_no_grad(outputs["emb_va_audio"][:, 0].float())
        keep = audio_global.to(audio.device)
        kept_src = None if src is None else src[keep.to(src.device)]
        queue.push("va_video", video[keep], kept_src)
        queue.push("va_audio", audio[keep], kept_src)
