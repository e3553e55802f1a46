"""The momentum key encoder against MoCo's update rule, computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avtime.models.momentum import KeyEncoder

pytestmark = pytest.mark.unit


def test_update_follows_the_ema_rule_and_copies_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    key = KeyEncoder(model, momentum=0.75)
    start = [p.detach().clone() for p in key.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(8, 4))  # moves the BatchNorm running stats
    key.update(model)
    for pk, p0, pq in zip(key.model.parameters(), start, model.parameters()):
        torch.testing.assert_close(pk, 0.75 * p0 + 0.25 * pq.detach())
    torch.testing.assert_close(key.model[1].running_mean, model[1].running_mean)
    out = key.model(torch.randn(8, 4))
    assert not out.requires_grad and all(not p.requires_grad for p in key.model.parameters())


def test_momentum_zero_is_the_live_model_and_one_is_refused() -> None:
    model = nn.Linear(2, 2)
    key = KeyEncoder(model, momentum=0.0)
    with torch.no_grad():
        model.weight.mul_(3.0)
    key.update(model)
    torch.testing.assert_close(key.model.weight, model.weight.detach())
    with pytest.raises(ValueError, match="momentum"):
        KeyEncoder(model, momentum=1.0)
