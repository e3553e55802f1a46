"""FeatureQueue: FIFO order across wraparound, normalisation, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avtime.models.queue import QUEUE_BANKS, FeatureQueue


def _rows(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """Rows whose direction encodes their index: [i, 1, 0] (distinct after normalisation)."""
    idx = torch.arange(start, start + n, dtype=torch.float32)
    return torch.stack([idx, torch.ones(n), torch.zeros(n)], dim=1)[:, :dim]


@pytest.mark.unit
def test_fifo_order_across_wraparound() -> None:
    q = FeatureQueue(5, 3)
    assert q.count("vv") == 0 and q.get("vv").shape == (0, 3)
    q.push("vv", _rows(0, 3))
    torch.testing.assert_close(q.get("vv"), F.normalize(_rows(0, 3), dim=1))
    q.push("vv", _rows(3, 4))  # 7 rows into 5 slots: rows 0 and 1 are overwritten
    assert q.count("vv") == 5
    torch.testing.assert_close(q.get("vv"), F.normalize(_rows(2, 5), dim=1))
    q.push("vv", _rows(7, 1))
    torch.testing.assert_close(q.get("vv"), F.normalize(_rows(3, 5), dim=1))
    q.push("vv", _rows(8, 12))  # more than the capacity: only the newest 5 survive
    torch.testing.assert_close(q.get("vv"), F.normalize(_rows(15, 5), dim=1))
    assert q.count("va_audio") == 0  # banks are independent


@pytest.mark.unit
def test_rows_are_normalised_and_get_returns_a_copy() -> None:
    q = FeatureQueue(4, 3)
    q.push("va_video", 10 * torch.randn(3, 3))
    got = q.get("va_video")
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3))
    got.zero_()
    assert q.get("va_video").abs().sum() > 0


@pytest.mark.unit
def test_state_dict_round_trip_restores_the_queue() -> None:
    q = FeatureQueue(4, 3)
    q.push("vv", _rows(0, 6))
    q.push("va_audio", _rows(10, 2))
    restored = FeatureQueue(4, 3)
    restored.load_state_dict(q.state_dict())
    for name in QUEUE_BANKS:
        assert restored.count(name) == q.count(name)
        torch.testing.assert_close(restored.get(name), q.get(name))
    q.push("vv", _rows(20, 1))
    restored.push("vv", _rows(20, 1))
    torch.testing.assert_close(restored.get("vv"), q.get("vv"))


@pytest.mark.unit
def test_bad_inputs_raise() -> None:
    q = FeatureQueue(4, 3)
    with pytest.raises(KeyError, match="unknown queue bank"):
        q.get("nope")
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        q.push("vv", torch.zeros(2, 4))
    with pytest.raises(ValueError):
        FeatureQueue(-1, 3)
    empty = FeatureQueue(0, 3)
    empty.push("vv", _rows(0, 2))
    assert empty.count("vv") == 0


@pytest.mark.unit
def test_source_keys_follow_their_rows() -> None:
    q = FeatureQueue(4, 2, banks=("vv",))
    q.push("vv", torch.randn(3, 2), torch.tensor([10, 11, 12]))
    q.push("vv", torch.randn(2, 2))  # unknown sources: -1
    q.push("vv", torch.randn(1, 2), torch.tensor([13]))
    assert q.sources("vv").tolist() == [12, -1, -1, 13]  # oldest first, after wrapping
    state = q.state_dict()
    r = FeatureQueue(4, 2, banks=("vv",))
    r.load_state_dict(state)
    assert r.sources("vv").tolist() == [12, -1, -1, 13]
    with pytest.raises(ValueError, match="source keys"):
        q.push("vv", torch.randn(2, 2), torch.tensor([1]))
    q.reset()
    assert q.sources("vv").tolist() == []
