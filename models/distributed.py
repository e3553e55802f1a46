"""Cross-worker helpers for the losses: gather with gradient, global counts, rank and world size.

All helpers fall back to single-process behaviour (identity, local values) when
`torch.distributed` is not initialised or the world has one process, so losses and tests run
unchanged on a laptop.

Gradient convention (see docs/method.md, "Distributed correctness"): every worker's loss is its
*share* of the global loss, `share_w = W * sum_{local rows} l_i / N_global`, so that the mean of
the shares over the W workers is the global mean `sum_{all rows} l_i / N_global`. DDP averages
gradients over workers, and the backward of `all_gather` sums the gradients that every worker sends
to each gathered slice, so the averaged gradient equals the gradient of the global mean loss on
the concatenated batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every worker along dim 0, keeping the gradient path to every worker.

    Args:
        x: [B, ...], the same B on every worker.
    Returns:
        [W * B, ...], rows of rank r at `r * B : (r + 1) * B`; `x` itself when not distributed.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.14 marks it deprecated; it is the autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Like `gather_with_grad` but detached (for filling the feature queue).

    Args:
        x: [B, ...], the same B on every worker.
    Returns:
        [W * B, ...], detached.
    """
    x = x.detach().contiguous()
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def global_sum(x: Tensor) -> Tensor:
    """Sum of a (detached) tensor over all workers; `x` itself when not distributed."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
