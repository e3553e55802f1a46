"""Retrieval metrics and the linear probe against hand computations on constructed features."""

from __future__ import annotations

import math

import pytest
import torch

from avtime.training.eval.linear import (
    LinearProbeConfig,
    average_by_group,
    cv_accuracy,
    fit_logistic,
    fit_probe,
    group_folds,
    video_accuracy,
)
from avtime.training.eval.metrics import instance_retrieval, recall_at_k

pytestmark = pytest.mark.unit


def _gallery() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    return g, torch.tensor([0, 1, 1, 2])


def test_recall_at_k_matches_hand_computation() -> None:
    g, gy = _gallery()
    # q0 (class 1): cosines g0 .995, g2 .777, g1 .0995, g3 -.995 -> classes 0,1,1,2: first hit @2.
    # q1 (class 2): g3 is nearest -> hit @1.
    # q2 (class 0): (0,-1): cosines g0 0, g1 -1, g2 -.707, g3 0 -> g0 and g3 tie; ties count
    #   against the query, so g3 (class 2) ranks first -> class 0 at rank 2.
    # q3 (class 2): (0,1): g1 1, g2 .707, g0 0, g3 0 -> classes 1,1,0,2: first hit @4.
    q = torch.tensor([[1.0, 0.1], [-1.0, 0.05], [0.0, -1.0], [0.0, 1.0]])
    qy = torch.tensor([1, 2, 0, 2])
    r = recall_at_k(q, qy, g, gy, ks=(1, 2, 3, 4, 20))
    assert r == {"R@1": 0.25, "R@2": 0.75, "R@3": 0.75, "R@4": 1.0, "R@20": 1.0}


def test_recall_is_scale_invariant_and_monotone() -> None:
    gen = torch.Generator().manual_seed(0)
    g, q = torch.randn(30, 8, generator=gen), torch.randn(10, 8, generator=gen)
    gy, qy = torch.randint(0, 5, (30,), generator=gen), torch.randint(0, 5, (10,), generator=gen)
    r = recall_at_k(q, qy, g, gy)
    assert r == recall_at_k(3 * q, qy, 0.5 * g, gy)
    assert r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@20"]


def test_instance_retrieval_ranks_and_map() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = torch.tensor([[0.9, 0.1], [0.9, 0.2], [-0.1, -1.0]])
    # q0 -> target 0 at rank 1; q1 -> target 1 at rank 2; q2 -> target 2: cos g2 .0995 vs g0
    #   -.0995, g1 -.995 -> rank 1.
    r = instance_retrieval(q, g, torch.tensor([0, 1, 2]))
    assert r["R@1"] == pytest.approx(2 / 3)
    assert r["mAP"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_average_by_group_and_video_accuracy() -> None:
    values = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    keys, mean = average_by_group(values, ["b", "a", "b"])
    assert keys == ["b", "a"]
    assert torch.allclose(mean, torch.tensor([[3.0, 2.5], [3.0, 2.0]]))
    # Video "v" has clips voting class 0 weakly and class 1 strongly: the average picks 1.
    logp = torch.log(torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]]))
    acc = video_accuracy(logp, ["v", "v", "w"], {"v": 1, "w": 1})
    assert acc == 0.5


def test_logistic_probe_separates_and_generalises() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    y = torch.arange(3).repeat_interleave(20)
    x = centres[y] + torch.randn(60, 3, generator=gen)
    model = fit_logistic(x, y, 3, LinearProbeConfig(l2=1e-3))
    yt = torch.arange(3).repeat_interleave(10)
    xt = centres[yt] + torch.randn(30, 3, generator=gen)
    pred = model.log_probs(xt).argmax(dim=1)
    assert float((pred == yt).float().mean()) > 0.9
    assert math.isclose(float(model.log_probs(xt).exp().sum(dim=1).mean()), 1.0, rel_tol=1e-5)


def test_logistic_rejects_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        fit_logistic(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)


def _nuisance_videos(n_videos: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """8 clips per video: one weak class feature, and 10 nuisance features that are constant
    within a video (like its background) and carry no class."""
    gen = torch.Generator().manual_seed(seed)
    vy = torch.arange(n_videos) % 2
    signal = (2.0 * vy - 1.0)[:, None] * 1.0 + torch.randn(n_videos, 1, generator=gen) * 0.5
    nuisance = 3.0 * torch.randn(n_videos, 10, generator=gen)
    per_video = torch.cat([signal, nuisance], dim=1)
    x = per_video.repeat_interleave(8, dim=0) + 0.3 * torch.randn(8 * n_videos, 11, generator=gen)
    groups = [f"v{i}" for i in range(n_videos) for _ in range(8)]
    return x, vy.repeat_interleave(8), groups


def test_group_folds_keep_videos_whole_and_classes_balanced() -> None:
    y = torch.tensor([0] * 12 + [1] * 12 + [2] * 6)
    groups = [f"g{i // 3}" for i in range(30)]  # 10 groups of 3 rows; classes 4, 4 and 2 groups
    folds = group_folds(y, groups, 2, seed=0)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups) if gg == g}) == 1
    for c in range(3):
        per_fold = [
            sum(1 for f, yy in zip(folds, y.tolist()) if yy == c and f == k) for k in (0, 1)
        ]
        assert abs(per_fold[0] - per_fold[1]) <= 3, (c, per_fold)
    assert group_folds(y, groups, 2, seed=0) == folds


def test_probe_picks_a_strong_penalty_when_videos_share_nuisances() -> None:
    x, y, groups = _nuisance_videos(24, seed=0)
    cfg = LinearProbeConfig()
    scores = {v: cv_accuracy(x, y, groups, 2, cfg, v) for v in cfg.l2_grid}
    # Held-out videos show new nuisance values: a weak penalty memorises the training videos'.
    assert scores[10.0] >= scores[1e-3] + 0.1, scores
    tuned, l2 = fit_probe(x, y, groups, 2, cfg)
    assert l2 == max((acc, v) for v, acc in scores.items())[1]
    xt, yt, gt = _nuisance_videos(40, seed=1)
    labels = {g: int(v) for g, v in zip(gt, yt.tolist())}
    assert video_accuracy(tuned.log_probs(xt), gt, labels) >= 0.6
    # With an empty grid (or too few videos for the folds) the fixed weight is used.
    assert fit_probe(x, y, groups, 2, LinearProbeConfig(l2=0.5, l2_grid=()))[1] == 0.5
    assert fit_probe(x[:16], y[:16], groups[:16], 2, LinearProbeConfig(l2=0.5))[1] == 0.5


def test_a_collapsed_encoder_scores_no_better_than_chance() -> None:
    """Identical embeddings tie everywhere; ties count against the query, so nothing is
    retrieved at rank 1 (breaking ties in the query's favour gave R@1 = 1.0)."""
    same = torch.ones(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert recall_at_k(same, labels, same, labels, ks=(1, 4, 5))["R@1"] == 0.0
    assert recall_at_k(same, labels, same, labels, ks=(1, 4, 5))["R@5"] == 1.0
    inst = instance_retrieval(same, same, torch.arange(6))
    assert inst["R@1"] == 0.0 and inst["mAP"] == pytest.approx(1 / 6)


def test_map_matches_scikit_learn_with_ties() -> None:
    """Per query AP (one true item) equals sklearn's average_precision_score, ties included."""
    from sklearn.metrics import average_precision_score

    gen = torch.Generator().manual_seed(3)
    g = torch.randint(0, 3, (25, 3), generator=gen).float() + 0.1  # coarse: many exact ties
    q = torch.randint(0, 3, (12, 3), generator=gen).float() + 0.1
    targets = torch.randint(0, 25, (12,), generator=gen)
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    expected = [
        average_precision_score((torch.arange(25) == t).int().numpy(), s.numpy())
        for s, t in zip(sim, targets)
    ]
    got = instance_retrieval(q, g, targets)
    assert got["mAP"] == pytest.approx(sum(expected) / len(expected))
    hits_at_1 = [a == 1.0 for a in expected]  # AP 1 <=> ranked first with nothing tied
    assert got["R@1"] == pytest.approx(sum(hits_at_1) / len(hits_at_1))


def test_recall_at_k_matches_a_brute_force_pessimistic_count() -> None:
    """R@k against an independent count: a query hits at k when its best relevant item's rank,
    counting every irrelevant item that scores at least as high, is at most k."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randint(0, 3, (20, 2), generator=gen).float() + 0.1
    q = torch.randint(0, 3, (15, 2), generator=gen).float() + 0.1
    gy, qy = torch.randint(0, 4, (20,), generator=gen), torch.randint(0, 4, (15,), generator=gen)
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    for k in (1, 3, 7):
        hits = 0
        for i in range(15):
            rel = gy == qy[i]
            if not rel.any():
                continue
            best = sim[i][rel].max()
            # the best relevant item's pessimistic rank: everything irrelevant scoring >= it
            rank = int((sim[i][~rel] >= best).sum()) + 1
            hits += rank <= k
        assert recall_at_k(q, qy, g, gy, ks=(k,))[f"R@{k}"] == pytest.approx(hits / 15)
