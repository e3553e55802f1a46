"""Linear classifiers on frozen features: multinomial logistic regression in torch.

Features are standardised with the training set's mean and std, then a linear layer is fit by
full-batch L-BFGS on cross-entropy plus an L2 penalty. The penalty is chosen from a grid by
cross-validation on the training set, with folds made of whole videos (`fit_probe`), since clips
of one video share their nuisances and a fold split by clip would reward memorising them. Clip-level
predictions are averaged per video (`average_by_group`) before taking the arg-max, as in the
paper's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    """Settings of the logistic regression."""

    l2: float = 1e-3  # weight of 0.5 * ||W||^2 in the objective when l2_grid is empty
    l2_grid: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0, 10.0)  # candidates for cross-validation
    cv_folds: int = 4  # folds of whole groups (videos); fewer groups than this: fixed l2
    max_iter: int = 200  # L-BFGS iterations
    seed: int = 0

    def __post_init__(self) -> None:
        if self.l2 < 0 or self.max_iter < 1 or any(v < 0 for v in self.l2_grid):
            raise ValueError("l2 and every l2_grid value must be >= 0, max_iter >= 1")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")


@dataclass
class LinearModel:
    """A fitted probe: standardisation statistics and the linear layer."""

    mean: torch.Tensor  # [F]
    std: torch.Tensor  # [F]
    weight: torch.Tensor  # [C, F]
    bias: torch.Tensor  # [C]

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities [N, C] of features x [N, F]."""
        z = (x.float() - self.mean) / self.std
        return F.log_softmax(z @ self.weight.T + self.bias, dim=1)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cfg: LinearProbeConfig | None = None,
    l2: float | None = None,
) -> LinearModel:
    """Fit multinomial logistic regression on features x [N, F] with labels y [N] in [0, C),
    with L2 weight `l2` (default `cfg.l2`)."""
    cfg = cfg or LinearProbeConfig()
    l2 = cfg.l2 if l2 is None else l2
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching, non-empty x {tuple(x.shape)} and y {tuple(y.shape)}")
    x = x.float()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(cfg.seed)
    weight = (0.01 * torch.randn(num_classes, x.shape[1], generator=gen)).requires_grad_(True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=cfg.max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y.long())
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearModel(mean=mean, std=std, weight=weight.detach(), bias=bias.detach())


def average_by_group(values: torch.Tensor, groups: list[str]) -> tuple[list[str], torch.Tensor]:
    """Mean of the rows of values [N, D] per group key; returns (keys in first-seen order, [K, D])."""
    keys: dict[str, int] = {}
    index = torch.tensor([keys.setdefault(g, len(keys)) for g in groups], dtype=torch.long)
    sums = torch.zeros(len(keys), values.shape[1], dtype=values.dtype)
    sums.index_add_(0, index, values)
    counts = torch.bincount(index, minlength=len(keys)).to(values.dtype)
    return list(keys), sums / counts[:, None]


def video_correct(
    log_probs: torch.Tensor, groups: list[str], labels: dict[str, int]
) -> dict[str, bool]:
    """Whether each video is right after averaging its clip probabilities: video key -> bool.

    log_probs [N, C] per clip; groups: the video key of each clip; labels: video key -> class.
    """
    keys, probs = average_by_group(log_probs.exp(), groups)
    pred = probs.argmax(dim=1).tolist()
    return {k: int(p) == labels[k] for k, p in zip(keys, pred, strict=True)}


def video_accuracy(log_probs: torch.Tensor, groups: list[str], labels: dict[str, int]) -> float:
    """Top-1 accuracy after averaging clip probabilities per video (see `video_correct`)."""
    right = video_correct(log_probs, groups, labels)
    return sum(right.values()) / len(right)


def group_folds(y: torch.Tensor, groups: list[str], k: int, seed: int) -> list[int]:
    """A fold index in [0, k) per row: whole groups go to one fold, dealt round robin within each
    class (in a seeded order) so that folds keep the class balance."""
    first: dict[str, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(first), generator=gen).tolist()
    keys = list(first)
    ranked = sorted(range(len(keys)), key=lambda j: (int(y[first[keys[j]]]), order[j]))
    fold_of = {keys[j]: r % k for r, j in enumerate(ranked)}
    return [fold_of[g] for g in groups]


def cv_accuracy(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: list[str],
    num_classes: int,
    cfg: LinearProbeConfig,
    l2: float,
) -> float:
    """Mean group-level accuracy of the probe with weight `l2` over `cfg.cv_folds` group folds."""
    folds = torch.tensor(group_folds(y, groups, cfg.cv_folds, cfg.seed))
    accs = []
    for f in range(cfg.cv_folds):
        te = folds == f
        if not bool(te.any()) or bool(te.all()):
            continue
        model = fit_logistic(x[~te], y[~te], num_classes, cfg, l2)
        g_te = [g for g, t in zip(groups, te.tolist()) if t]
        labels = {g: int(v) for g, v, t in zip(groups, y.tolist(), te.tolist()) if t}
        accs.append(video_accuracy(model.log_probs(x[te]), g_te, labels))
    return sum(accs) / max(len(accs), 1)


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: list[str],
    num_classes: int,
    cfg: LinearProbeConfig | None = None,
) -> tuple[LinearModel, float]:
    """The probe on x [N, F], y [N], with the L2 weight of `cfg.l2_grid` that has the best
    grouped cross-validation accuracy (ties go to the larger weight); `cfg.l2` when the grid is
    empty or there are fewer groups than folds. Returns (model fit on all rows, the weight)."""
    cfg = cfg or LinearProbeConfig()
    l2 = cfg.l2
    if cfg.l2_grid and len(set(groups)) >= cfg.cv_folds:
        scores = [(cv_accuracy(x, y, groups, num_classes, cfg, v), v) for v in cfg.l2_grid]
        l2 = max(scores)[1]
    return fit_logistic(x, y, num_classes, cfg, l2), l2
