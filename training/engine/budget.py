"""Sizes checked before training starts: a batch that the data or a worker's memory cannot hold
is refused in one line with the numbers, instead of a stream that never yields or a worker that
grows until the machine swaps.

The estimate is of one batch as the stream hands it to a worker (host memory): per example,
two video clips of T frames of S x S x 3 bytes, also held as float32 once on the device side of
the loop, and two float32 audio clips; times `SAFETY` for the copies Ray Data and collation make
(prefetch, the batch being built while one is consumed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from avtime.pipelines.errors import UsageError
from avtime.training.config import RunConfig

SAFETY = 3.0  # batches held at once per worker: the one training, the next, and one in flight


@dataclass(frozen=True, kw_only=True)
class BatchSize:
    """One worker's batch: examples, and bytes of host memory it takes (estimated)."""

    examples: int
    bytes_per_example: int

    @property
    def bytes(self) -> int:
        return self.examples * self.bytes_per_example


def batch_size(cfg: RunConfig, sample_rate: int) -> BatchSize:
    """The estimate for `cfg` (see the module docstring); `sample_rate` of the stored audio."""
    t, s = cfg.data.pretext.clip_frames, cfg.data.augment.crop_size
    video = 2 * t * s * s * 3 * (1 + 4)  # uint8 clips, and their float32 copy
    audio = 2 * 4 * math.ceil(cfg.data.pretext.audio_seconds * sample_rate)
    return BatchSize(examples=cfg.data.stream.batch_size, bytes_per_example=video + audio)


def check_batch(cfg: RunConfig, examples_per_epoch: int, worker_memory: float | None,
                sample_rate: int) -> None:  # fmt: skip
    """Raise `UsageError` when one optimiser step needs more examples than the data has, or one
    worker's batches (`SAFETY` of them) more memory than `worker_memory` bytes (None: unknown,
    not checked)."""
    size = batch_size(cfg, sample_rate)
    per_step = size.examples * cfg.optim.accum_steps * cfg.train.num_workers
    if per_step > examples_per_epoch:
        raise UsageError(
            f"one optimiser step takes {per_step} examples (data.stream.batch_size "
            f"{size.examples} x optim.accum_steps {cfg.optim.accum_steps} x train.num_workers "
            f"{cfg.train.num_workers}) but the shards give {examples_per_epoch} per epoch; "
            f"lower data.stream.batch_size to at most {max(1, examples_per_epoch // (per_step // size.examples))}"
        )
    need = SAFETY * size.bytes
    if worker_memory is not None and need > worker_memory:
        fits = max(1, int(worker_memory // (SAFETY * size.bytes_per_example)))
        raise UsageError(
            f"a batch of {size.examples} examples takes about {size.bytes / 2**30:.1f} GiB "
            f"({size.bytes_per_example / 2**20:.1f} MiB each; {SAFETY:g} held at once: "
            f"{need / 2**30:.1f} GiB) but a training worker has {worker_memory / 2**30:.1f} GiB; "
            f"lower data.stream.batch_size to at most {fits} (and raise optim.accum_steps to keep "
            "the effective batch)"
        )
