"""bench.stats against independent computations: scipy.stats and hand-calculated values."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from bench.stats import (
    accuracy,
    accuracy_of,
    mcnemar_exact,
    paired_seeds,
    paired_videos,
    wilson,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (26, 40), (162, 400), (1, 3), (60, 60)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_by_hand_and_bad_counts() -> None:
    # 65 of 100: centre (0.65 + z^2/200) / (1 + z^2/100), half-width z sqrt(.2275/100 + z^2/4e4)/(...)
    low, high = wilson(65, 100)
    assert (round(low, 4), round(high, 4)) == (0.5525, 0.7364)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k <= n"):
        wilson(5, 4)


def test_accuracy_cells_round_the_fraction_to_a_count() -> None:
    a = accuracy_of(0.675, 40)
    assert (a.k, a.n, a.value) == (27, 40, 0.675)
    assert a.cell() == f"67.5 [{100 * a.low:.1f}, {100 * a.high:.1f}]"
    assert accuracy(0, 0).cell().startswith("nan")


def test_paired_seeds_t_interval() -> None:
    a, b = [0.65, 0.70, 0.60], [0.45, 0.45, 0.45]
    d = paired_seeds(a, b)
    assert d.diffs == pytest.approx((0.20, 0.25, 0.15)) and d.mean == pytest.approx(0.2)
    # by hand: sd 0.05, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.05 / sqrt(3)
    assert d.high - d.mean == pytest.approx(4.302653 * 0.05 / math.sqrt(3), rel=1e-6)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert d.cell() == "+20.0 [+7.6, +32.4] (3 seeds)"


def test_paired_seeds_one_seed_and_bad_input() -> None:
    one = paired_seeds([0.7], [0.5])
    assert one.mean == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.high)
    assert one.cell() == "+20.0 (1 seed)"
    with pytest.raises(ValueError, match="equally long"):
        paired_seeds([0.1, 0.2], [0.1])


@pytest.mark.parametrize(("b", "c"), [(10, 2), (0, 0), (3, 3), (0, 7), (25, 12), (40, 61)])
def test_mcnemar_exact_matches_a_binomial_test(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else sps.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_paired_videos_counts_discordant_videos_on_shared_keys() -> None:
    a = {f"v{i}": i < 30 for i in range(40)}  # 30 of 40 right
    b = {f"v{i}": 10 <= i < 35 for i in range(40)} | {"other": True}  # 25 of 40, one extra key
    d = paired_videos(a, b)
    # a only: v0..v9 (10); b only: v30..v34 (5); difference (30 - 25) / 40
    assert (d.n, d.only_a, d.only_b) == (40, 10, 5)
    assert d.diff == pytest.approx(5 / 40)
    assert d.p == pytest.approx(sps.binomtest(10, 15, 0.5).pvalue)
    assert d.low < d.diff < d.high and -1 <= d.low and d.high <= 1
    assert paired_videos(a, b) == d  # seeded
    same = paired_videos(a, a)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="share no test video"):
        paired_videos({"x": True}, {"y": True})
