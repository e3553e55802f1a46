"""The statistics of the benches: an accuracy's 95 % interval and paired differences.

    wilson(k, n)                       Wilson score interval of k successes in n trials
    accuracy(k, n) -> Accuracy         a top-1 with its interval; `.cell()` formats it
    accuracy_of(fraction, n)           the same from a fraction measured on n videos
    paired_seeds(a, b) -> SeedDiff     mean of a_i - b_i over seeds, with its t-interval
    paired_videos(a, b) -> VideoDiff   one seed: a - b on the same test videos, an exact McNemar
                                       test and a paired bootstrap interval of the difference
    mcnemar_exact(b, c)                two-sided exact McNemar p-value of the discordant counts

Accuracies are fractions in [0, 1] throughout; the cells print percent (points for
differences). The t quantile comes from scipy (installed with mlflow); the rest is plain Python
and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (fractions) of `k` successes in `n` trials; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """`k` of `n` right, and the Wilson 95 % interval [low, high] (fractions)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def cell(self) -> str:
        """`67.5 [62.8, 71.9]`: percent, with the interval."""
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def accuracy(k: int, n: int) -> Accuracy:
    """An accuracy of `k` right out of `n`, with its Wilson 95 % interval."""
    low, high = wilson(k, n)
    return Accuracy(k=k, n=n, low=low, high=high)


def accuracy_of(fraction: float, n: int) -> Accuracy:
    """`accuracy` of a measured fraction on `n` items (k = round(fraction * n))."""
    return accuracy(int(round(float(fraction) * n)), n)


def t_quantile(level: float, df: int) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class SeedDiff:
    """a - b over paired seeds: the mean difference, its t-interval (nan with one seed) and
    the per-seed differences (fractions)."""

    mean: float
    low: float
    high: float
    diffs: tuple[float, ...]

    def cell(self) -> str:
        """`+23.3 [+16.4, +30.2] (3 seeds)`, in points."""
        n = len(self.diffs)
        seeds = f"{n} seed{'s' if n != 1 else ''}"
        if math.isnan(self.low):
            return f"{100 * self.mean:+.1f} ({seeds})"
        return f"{100 * self.mean:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}] ({seeds})"


def paired_seeds(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> SeedDiff:
    """Mean of a_i - b_i (the i-th seed of each) and its t-interval with n - 1 degrees of
    freedom; with one seed the interval is (nan, nan)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists of seeds, got {len(a)}, {len(b)}")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b, strict=True))
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return SeedDiff(mean=mean, low=float("nan"), high=float("nan"), diffs=diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return SeedDiff(mean=mean, low=mean - half, high=mean + half, diffs=diffs)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: `b` pairs where only the first was right, `c` where
    only the second was; under the null each discordant pair is a fair coin."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class VideoDiff:
    """a - b on the same `n` test videos of one seed: the difference of accuracies, its paired
    bootstrap 95 % interval, the discordant counts (`only_a` right, `only_b` right) and the
    exact McNemar p-value."""

    diff: float
    low: float
    high: float
    n: int
    only_a: int
    only_b: int
    p: float

    def cell(self) -> str:
        """`+12.5 [+5.0, +20.0], McNemar p=0.004 (30/10 of 400)`, in points."""
        return (
            f"{100 * self.diff:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}], McNemar "
            f"p={self.p:.2g} ({self.only_a}/{self.only_b} of {self.n})"
        )


def paired_videos(
    a: Mapping[str, bool], b: Mapping[str, bool], *, resamples: int = 10_000, seed: int = 0
) -> VideoDiff:
    """Compare two classifiers on the videos both scored (keys: video sources; values: right or
    wrong). The interval resamples videos with replacement (percentile bootstrap, seeded)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("the two results share no test video")
    x = np.array([bool(a[k]) for k in keys], dtype=np.float64)  # [n]
    y = np.array([bool(b[k]) for k in keys], dtype=np.float64)  # [n]
    d = x - y  # [n] in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(resamples, len(keys)))  # [R, n]
    boot = d[idx].mean(axis=1)  # [R]
    low, high = np.quantile(boot, [0.025, 0.975])
    only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
    return VideoDiff(
        diff=float(d.mean()), low=float(low), high=float(high), n=len(keys),
        only_a=only_a, only_b=only_b, p=mcnemar_exact(only_a, only_b),
    )  # fmt: skip
