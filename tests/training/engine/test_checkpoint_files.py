"""Checkpoint files that do not fit: one message naming the file, never torch's wall of text."""

from __future__ import annotations

import pytest
import torch

from avtime.training.engine.checkpoint import CheckpointError, load_weights

pytestmark = pytest.mark.unit


def _net(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)
    )


def test_matching_weights_load_and_a_ddp_prefix_is_ignored() -> None:
    src, dst = _net(8), _net(8)
    load_weights(dst, {f"module.{k}": v for k, v in src.state_dict().items()}, "ck/state.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_other_shapes_are_named_with_the_file() -> None:
    with pytest.raises(CheckpointError) as err:
        load_weights(_net(8), _net(16).state_dict(), "s3://b/ck/step_00000006/state.pt")
    text = str(err.value)
    assert text.startswith("s3://b/ck/step_00000006/state.pt does not match the model")
    assert "3 shapes differ (0.weight is [16, 4] there and [8, 4] in the model)" in text
    assert len(text) < 400 and "\n" not in text


def test_missing_and_unexpected_tensors_are_counted() -> None:
    weights = _net(8).state_dict()
    weights.pop("2.bias")
    weights["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 tensors missing \(e.g. 2.bias\); 1 unexpected"):
        load_weights(_net(8), weights, "ck/state.pt")
