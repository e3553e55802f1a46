"""FIFO feature queue of past, L2-normalised embeddings (one bank per embedding space).

The queue holds one bank per named embedding space (see `QUEUE_BANKS`): the video embeddings of
the video-video space, and the video and audio embeddings of the video-audio space. Each bank is a
ring buffer with its own write pointer, because audio embeddings are only enqueued for rows that
have audio. Banks are filled from the batch gathered over all workers, in rank order, so every
worker holds the same queue. Each row also keeps the source key of its example (the video it came
from, -1 when unknown), so the loss can leave a clip's own video out of its negatives.
`state_dict()` / `load_state_dict()` carry the banks, source keys, pointers and fill counts, so a
checkpoint restores the queue exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

QUEUE_BANKS: tuple[str, ...] = ("vv", "va_video", "va_audio")


class FeatureQueue(nn.Module):
    """Ring buffers of `size` past embeddings of dimension `dim`, one per bank name.

    Args:
        size: capacity of each bank (rows). 0 makes a queue that stays empty.
        dim: embedding dimension D.
        banks: bank names; by default `QUEUE_BANKS`.
    """

    def __init__(self, size: int, dim: int, banks: Sequence[str] = QUEUE_BANKS) -> None:
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"need size >= 0 and dim >= 1, got size={size}, dim={dim}")
        self.size = size
        self.dim = dim
        self.banks = tuple(banks)
        for name in self.banks:
            self.register_buffer(f"{name}_data", torch.zeros(size, dim))
            self.register_buffer(f"{name}_src", torch.full((size,), -1, dtype=torch.long))
            self.register_buffer(f"{name}_ptr", torch.zeros((), dtype=torch.long))
            self.register_buffer(f"{name}_count", torch.zeros((), dtype=torch.long))

    def _check(self, name: str) -> None:
        if name not in self.banks:
            raise KeyError(f"unknown queue bank {name!r}; banks: {list(self.banks)}")

    def __len__(self) -> int:
        """Number of filled rows of the first bank."""
        return self.count(self.banks[0]) if self.banks else 0

    def count(self, name: str) -> int:
        """Number of filled rows of bank `name` (at most `size`)."""
        self._check(name)
        return int(getattr(self, f"{name}_count").item())

    def get(self, name: str) -> Tensor:
        """The filled rows of bank `name`, oldest first, as a detached copy.

        Returns:
            [n, D] with n = count(name); a copy, so later pushes never touch a tensor that an
            autograd graph has saved.
        """
        return self._ordered(name, "data")

    def sources(self, name: str) -> Tensor:
        """The source keys of the filled rows of bank `name`, in `get` order: int64 [n]."""
        return self._ordered(name, "src")

    def _ordered(self, name: str, part: str) -> Tensor:
        self._check(name)
        buf: Tensor = getattr(self, f"{name}_{part}")
        n = self.count(name)
        if n < self.size:
            return buf[:n].clone()
        ptr = int(getattr(self, f"{name}_ptr").item())
        return torch.cat([buf[ptr:], buf[:ptr]], dim=0)

    @torch.no_grad()
    def push(self, name: str, x: Tensor, src: Tensor | None = None) -> None:
        """Append rows to bank `name`, overwriting the oldest when full.

        Args:
            x: [N, D] embeddings (stored detached, as float32, L2-normalised).
            src: [N] int64 source keys of the rows, or None (stored as -1, unknown).
        """
        self._check(name)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] embeddings, got {tuple(x.shape)}")
        if self.size == 0 or x.shape[0] == 0:
            return
        if src is not None and src.shape != (x.shape[0],):
            raise ValueError(f"expected [{x.shape[0]}] source keys, got {tuple(src.shape)}")
        data: Tensor = getattr(self, f"{name}_data")
        src_buf: Tensor = getattr(self, f"{name}_src")
        ptr_t: Tensor = getattr(self, f"{name}_ptr")
        count_t: Tensor = getattr(self, f"{name}_count")
        x = nn.functional.normalize(x.detach().float(), dim=1).to(data.device)
        keys = torch.full((x.shape[0],), -1, dtype=torch.long) if src is None else src.long()
        keys = keys.detach().to(data.device)
        if x.shape[0] > self.size:  # only the newest `size` rows survive
            skipped = x.shape[0] - self.size
            ptr_t.fill_((int(ptr_t.item()) + skipped) % self.size)
            x, keys = x[skipped:], keys[skipped:]
        ptr = int(ptr_t.item())
        idx = (torch.arange(x.shape[0], device=data.device) + ptr) % self.size
        data.index_copy_(0, idx, x)
        src_buf.index_copy_(0, idx, keys)
        ptr_t.fill_((ptr + x.shape[0]) % self.size)
        count_t.fill_(min(self.size, int(count_t.item()) + x.shape[0]))

    def reset(self) -> None:
        """Empty every bank."""
        for name in self.banks:
            getattr(self, f"{name}_data").zero_()
            getattr(self, f"{name}_src").fill_(-1)
            getattr(self, f"{name}_ptr").zero_()
            getattr(self, f"{name}_count").zero_()
