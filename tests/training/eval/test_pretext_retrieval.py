"""`avtime eval pretext`'s audio->video R@1 is the project's R@k (training/eval/metrics.py):
a video of another example that scores the same as the query's own counts against it."""

from __future__ import annotations

import pytest
import torch

from avtime.training.eval.pretext import retrieval_r1

pytestmark = pytest.mark.unit


def test_a_tie_counts_against_the_query() -> None:
    """Query 0's own video (index 0) ties with example 1's video: argmax picked index 0 and
    counted a hit (R@1 0.5); ranked pessimistically it is a miss."""
    audio = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    video = [torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    keys = [torch.tensor([0, 1])]
    result = retrieval_r1(audio, video, keys)
    assert result == {"r1": 0.0, "chance": 0.5, "x_chance": 0.0, "n": 2}


def test_distinct_embeddings_and_clips_of_one_example() -> None:
    """Without ties, a query hits when its nearest video is of its own example; two clips of
    one example both count as its videos."""
    audio = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.9, 0.1]])]
    video = [torch.tensor([[0.0, 1.0], [1.0, 0.2]]), torch.tensor([[1.0, 0.0]])]
    keys = [torch.tensor([0, 1]), torch.tensor([0])]
    result = retrieval_r1(audio, video, keys)
    assert result["r1"] == pytest.approx(1 / 3) and result["n"] == 3
    assert result["chance"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    assert retrieval_r1([], [], []) == {"r1": 0.0, "chance": 0.0, "x_chance": 0.0, "n": 0}
