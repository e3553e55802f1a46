"""Symmetric, multi-positive InfoNCE with feature-queue positives and negatives.

The contrastive objective of Jenni, Black and Collomosse, "Audio-Visual Contrastive Learning with
Temporal Self-Supervision" (AAAI 2023, arXiv 2302.07702): InfoNCE between two views, with
"sample-dependent positives and negatives sampled from the evolving feature space". The paper
gives no equations for that part, so the queue terms below are our reconstruction
(docs/method.md, "Multi-positive InfoNCE with the feature queue"):

- InfoNCE is van den Oord, Li and Vinyals, "Representation Learning with Contrastive Predictive
  Coding" (2018, eq. 4): `-log(e^{s(x, y+)} / sum_j e^{s(x, y_j)})`, here with cosine
  similarities over a temperature, `s(x, y) = cos(x, y) / tau`, and made symmetric (both
  directions, averaged).
- Extra positives from the queue follow NNCLR (Dwibedi et al., "With a Little Help from My
  Friends", ICCV 2021, eqs. 2-3), which uses the nearest neighbour of the positive in a support
  set. **Reconstruction:** we add the `knn_k` nearest queue rows of the positive to the
  numerator (one "log of a sum" over all positives, the MIL-NCE form of Miech et al., CVPR 2020,
  eq. 1) instead of replacing the positive.
- The rest of the queue as extra negatives is MoCo's queue (He et al., CVPR 2020, eq. 1).
- Leaving out a clip's own source video from its negatives (`sources`) is ours.

Everything is computed in float32 (inputs are cast), so the model may run under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from avtime.models.distributed import gather_with_grad, rank

MASKED_LOGIT = -1e9  # finite stand-in for -inf, so fully masked rows stay NaN-free


@dataclass(frozen=True, kw_only=True)
class NCEConfig:
    """How an InfoNCE term is scored (from `LossConfig`)."""

    temperature: float  # tau
    knn_k: int = 0  # nearest queue rows of the positive added as positives
    queue_negatives: bool = True  # the rest of the queue joins the denominator


@dataclass(frozen=True, kw_only=True)
class Bank:
    """The queue rows of one embedding space (no gradient)."""

    rows: Tensor  # [Q, D]
    sources: Tensor | None = None  # [Q] int64 source video keys, -1 unknown; None: not masked


@dataclass(frozen=True, kw_only=True)
class NCEDirection:
    """One direction x -> y: local anchors scored against keys gathered from every worker.

    Positives of anchor i: `keys[pos_index[i]]`, plus its `knn_k` nearest `bank` rows.
    """

    anchor: Tensor  # [B, D] local anchors
    keys: Tensor  # [M, D] keys of all workers (with gradient)
    pos_index: Tensor  # [B] long, column of each anchor's positive in `keys`
    key_valid: Tensor | None = None  # [M] bool; invalid keys leave the denominator; None: all
    bank: Bank | None = None  # queue rows of the keys' space
    sources: tuple[Tensor, Tensor] | None = None  # (anchor [B], keys [M]) int64 source keys


@dataclass(frozen=True, kw_only=True)
class ContrastivePair:
    """Paired local embeddings (row i of x pairs with row i of y) and their context."""

    x: Tensor  # [B, D]
    y: Tensor  # [B, D]
    valid_global: Tensor | None = None  # [W * B] bool; invalid pairs are dropped as keys
    x_bank: Bank | None = None  # queue rows in x's space (used by y -> x)
    y_bank: Bank | None = None  # queue rows in y's space (used by x -> y)
    sources: tuple[Tensor, Tensor] | None = None  # (local [B], gathered [W * B]) source keys


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

    With one positive per row this is CPC's InfoNCE (van den Oord et al. 2018, eq. 4); with
    several, the "log of a sum" of MIL-NCE (Miech et al. 2020, eq. 1).

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
    """The k nearest bank rows (cosine) of each positive: NNCLR's NN(z, Q) (Dwibedi et al. 2021,
    eq. 3) with k neighbours instead of one.

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


def same_source(rows: Tensor, cols: Tensor) -> Tensor:
    """[R, C] bool: row and column come from the same known (>= 0) source video."""
    rows, cols = rows.long(), cols.long().to(rows.device)
    return (rows[:, None] == cols[None, :]) & (rows[:, None] >= 0)


def queue_nce(d: NCEDirection, cfg: NCEConfig) -> Tensor:
    """One direction of InfoNCE, local anchors against global keys, with optional queue terms.

    Negatives: the other valid keys and, with `cfg.queue_negatives`, the rest of the bank; with
    `d.sources`, keys and bank rows from the anchor's own source video are not negatives.

    Returns:
        [B] float32 per-row losses.
    """
    logits = nce_logits(d.anchor, d.keys, cfg.temperature)  # [B, M]
    positives = F.one_hot(d.pos_index, d.keys.shape[0]).bool()
    allowed = torch.ones_like(positives)
    if d.key_valid is not None:
        allowed = allowed & d.key_valid.bool()[None, :]
    if d.sources is not None:
        allowed = allowed & (positives | ~same_source(d.sources[0], d.sources[1]))
    bank = d.bank
    if bank is not None and bank.rows.shape[0] > 0 and (cfg.knn_k > 0 or cfg.queue_negatives):
        rows = bank.rows.to(d.anchor.device)
        pos_q = knn_positive_mask(d.keys[d.pos_index].detach(), rows, cfg.knn_k)
        allowed_q = torch.ones_like(pos_q) if cfg.queue_negatives else pos_q
        if d.sources is not None and bank.sources is not None:
            allowed_q = allowed_q & (pos_q | ~same_source(d.sources[0], bank.sources))
        logits = torch.cat([logits, nce_logits(d.anchor, rows, cfg.temperature)], dim=1)
        positives = torch.cat([positives, pos_q], dim=1)
        allowed = torch.cat([allowed, allowed_q], dim=1)
    return multi_positive_nce(logits, positives, allowed)


def symmetric_nce(pair: ContrastivePair, cfg: NCEConfig) -> Tensor:
    """Symmetric InfoNCE between paired embeddings, gathered across workers with gradient.

    `0.5 * (l(x -> y) + l(y -> x))` per local row; row i's positive is global column
    `rank * B + i`. The x -> y direction takes extra positives / negatives from `pair.y_bank`
    (the space of y), and y -> x from `pair.x_bank`. With `pair.sources`, no clip is a negative
    of another clip of its own video (in every worker's batch, and in the queue where the bank
    has source keys).

    Returns:
        [B] float32 per-row losses (rows whose pair is invalid are meaningless: mask them).
    """
    x, y = pair.x, pair.y
    xg, yg = gather_with_grad(x), gather_with_grad(y)
    pos_index = rank() * x.shape[0] + torch.arange(x.shape[0], device=x.device)
    xy = NCEDirection(
        anchor=x, keys=yg, pos_index=pos_index, key_valid=pair.valid_global, bank=pair.y_bank,
        sources=pair.sources,
    )  # fmt: skip
    yx = replace(xy, anchor=y, keys=xg, bank=pair.x_bank)
    return 0.5 * (queue_nce(xy, cfg) + queue_nce(yx, cfg))


def info_nce(x: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Plain symmetric InfoNCE (mean over rows) of paired embeddings x, y: [N, D] -> scalar."""
    pair = ContrastivePair(x=x, y=y)
    return symmetric_nce(pair, NCEConfig(temperature=temperature)).mean()
