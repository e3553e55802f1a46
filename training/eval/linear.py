"""Linear classifiers on frozen features: multinomial logistic regression in torch.

Features are standardised with the training set's mean and std, then a linear layer is fit by
full-batch L-BFGS on cross-entropy plus a small L2 penalty. Clip-level predictions are averaged
per video (`average_by_group`) before taking the arg-max, as in the paper's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig:
    """Settings of the logistic regression."""

    l2: float = 1e-3  # weight of 0.5 * ||W||^2 / n in the objective
    max_iter: int = 200  # L-BFGS iterations
    seed: int = 0

    def __post_init__(self) -> None:
        if self.l2 < 0 or self.max_iter < 1:
            raise ValueError("l2 must be >= 0 and max_iter >= 1")


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
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: LinearProbeConfig | None = None
) -> LinearModel:
    """Fit multinomial logistic regression on features x [N, F] with labels y [N] in [0, C)."""
    cfg = cfg or LinearProbeConfig()
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
        loss = loss + 0.5 * cfg.l2 * weight.pow(2).sum()
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


def video_accuracy(log_probs: torch.Tensor, groups: list[str], labels: dict[str, int]) -> float:
    """Top-1 accuracy after averaging clip probabilities per video.

    log_probs [N, C] per clip; groups: the video key of each clip; labels: video key -> class.
    """
    keys, probs = average_by_group(log_probs.exp(), groups)
    pred = probs.argmax(dim=1)
    truth = torch.tensor([labels[k] for k in keys])
    return float((pred == truth).float().mean())
