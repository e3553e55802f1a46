"""Two gloo processes must give the loss and the gradients of one process on the whole batch.

Convention (docs/method.md, "Distributed correctness"): each worker backpropagates its share of
the global loss (`total_loss`'s first return value); DDP averages the gradients over workers; the
global loss is `terms["loss"]` (already averaged over workers). The single-process reference runs
the same model on the concatenated batch. The model runs in eval mode so that BatchNorm uses its
running statistics: per-worker batch statistics are a separate matter (SyncBatchNorm), and the
losses, gathering and the queue are what this test is about. Two steps are checked: the first with
an empty queue, the second with the queue filled from the first (kNN positives and queue
negatives in play). Rows without audio differ between the workers, so the global-count
normalisation of the audio terms is exercised too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avtime.models.av import AVModel
from avtime.models.losses import enqueue, total_loss
from avtime.models.queue import FeatureQueue
from tests.models.helpers import (
    NUM_SPEEDS,
    forward,
    loss_cfg,
    make_batch,
    slice_batch,
    tiny_model_cfg,
)

WORLD = 2
LOCAL_B = 4


def _batches() -> list[dict[str, torch.Tensor]]:
    first = torch.ones(WORLD * LOCAL_B)
    first[1] = 0.0  # rank 0 has one row without audio, rank 1 none
    second = torch.ones(WORLD * LOCAL_B)
    second[[1, 2, 6]] = 0.0  # 2 silent rows on rank 0, 1 on rank 1
    return [
        make_batch(WORLD * LOCAL_B, seed=1, has_audio=first),
        make_batch(WORLD * LOCAL_B, seed=2, has_audio=second),
    ]


def _model() -> AVModel:
    torch.manual_seed(0)
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS, loss_cfg=loss_cfg())
    # Non-trivial BatchNorm running statistics, then eval mode (see the module docstring).
    with torch.no_grad():
        model.train()
        forward(model, make_batch(8, seed=99))
    return model.eval()


def _run_steps(
    model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """Loss and gradients of each batch in turn (the queue carries over); no optimiser step."""
    cfg = loss_cfg()
    queue = FeatureQueue(cfg.queue_size, 16)
    results = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        out = forward(model, batch)
        loss, terms = total_loss(out, batch, cfg, queue)
        enqueue(queue, out, batch)  # as the training step does, once the loss has read it
        loss.backward()
        inner = (
            model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        )
        grads = {
            n: p.grad.detach().clone() for n, p in inner.named_parameters() if p.grad is not None
        }
        results.append({"loss": terms["loss"], "queue_len": torch.tensor(len(queue)), **grads})
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        local = [slice_batch(b, rank * LOCAL_B, (rank + 1) * LOCAL_B) for b in _batches()]
        torch.save(_run_steps(model, local), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.unit
def test_two_gloo_workers_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    reference = _run_steps(_model(), _batches())
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for step, ref in enumerate(reference):
        assert int(ref["queue_len"]) == WORLD * LOCAL_B * (step + 1)
        grad_names = [k for k in ref if k not in ("loss", "queue_len")]
        assert len(grad_names) == len(list(_model().parameters()))  # every parameter has a grad
        for got in per_rank:
            assert set(got[step]) == set(ref)
            for key in ref:
                torch.testing.assert_close(got[step][key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
