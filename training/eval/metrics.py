"""Retrieval metrics on feature matrices (pure torch).

`recall_at_k`: class-level retrieval (a query hits when its class is among the top-k gallery
items). `instance_retrieval`: each query has exactly one true gallery item (fingerprinting), so
R@1 is whether it ranks first and AP is 1 / rank of the true item (mAP = mean over queries).

Ties are broken against the query (pessimistically): a gallery item whose score equals a
relevant item's ranks before it. So an encoder that maps everything to one embedding scores
R@1 = 0, never 1.0. With this rule AP equals scikit-learn's `average_precision_score`, which
the tests check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_similarity(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of queries [Q, F] against gallery [G, F] -> [Q, G]."""
    q = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    return q @ g.T


def _ranking(sim: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Gallery indices [Q, G] by decreasing similarity; among equal scores the items that are
    not `relevant` [Q, G] bool come first (ties count against the query)."""
    by_relevance = torch.sort(relevant.to(torch.int8), dim=1, stable=True).indices
    scores = sim.double().gather(1, by_relevance)
    order = torch.sort(-scores, dim=1, stable=True).indices
    return by_relevance.gather(1, order)


def recall_at_k(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10, 20),
) -> dict[str, float]:
    """R@k: fraction of queries whose class appears among the top-k gallery items by cosine.

    queries [Q, F], query_labels [Q] int, gallery [G, F], gallery_labels [G] int.
    k larger than G is clipped to G. Returns {"R@1": ..., "R@5": ..., ...} in [0, 1].
    """
    if queries.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    relevant = gallery_labels[None, :] == query_labels[:, None]  # [Q, G]
    ranked = _ranking(cosine_similarity(queries, gallery), relevant)
    hits = relevant.gather(1, ranked)  # [Q, G] in ranked order
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, gallery.shape[0])
        out[f"R@{k}"] = float(hits[:, :kk].any(dim=1).float().mean())
    return out


def instance_retrieval(
    queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """R@1 and mAP when query i's only true gallery item is `targets[i]`.

    queries [Q, F], gallery [G, F], targets [Q] int in [0, G). AP of a query with one relevant
    item is 1 / (its rank), so mAP is the mean reciprocal rank.
    """
    rank = target_rank(cosine_similarity(queries, gallery), targets)
    return {
        "R@1": float((rank == 1).float().mean()),
        "mAP": float((1.0 / rank.double()).mean()),
    }


def target_rank(sim: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank [Q] of each query's one true item `targets` [Q] among similarities [Q, G]:
    1 + the number of other gallery items scoring at least as high (ties count against it)."""
    target_sim = sim.gather(1, targets[:, None])  # [Q, 1]
    return (sim >= target_sim).sum(dim=1)
