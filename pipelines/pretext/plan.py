"""Pretext planning: which frames and samples each clip reads, and the temporal labels.

Pure and seeded: `plan_example(geometry, table, rng) -> ExamplePlan` decides the four clips
(two video, two audio) of one example and derives every label from their exact spans. It decodes
nothing; `pipelines.pretext.clips` turns a plan plus a segment row into arrays. docs/pretext.md explains
the method; in short:

- All positions are integers: video clip i starts at stored frame `f_i` and shows frames
  `f_i + k * s` (k = 0..T-1, reversed if its direction is reverse). Its span is the half-open
  frame interval `[f_i, f_i + T * s)`. Audio clip i reads `s_a * L` stored samples starting at
  sample `a_i`, the start that centres it on video clip i's span (rounded half up), and its span is
  `[a_i, a_i + s_a * L)`. Spans are compared on one integer tick clock, so labels are exact.
- Order of spans X, Y (half-open): 0 if X ends at or before Y starts, 1 if Y ends at or before X
  starts, 2 (overlap) if they share a non-empty interval.
- Speeds come from a per-segment table over the feasible 4-tuples (v1, a1, v2, a2) whose per-clip
  marginals are uniform; a tuple is feasible when all three order classes can be realised with it.
  The order class is then drawn uniformly and independently of the speeds, and the start pair is
  drawn uniformly among those that give every one of the four order pairs that class. So no
  speed, clip length or duration reveals the order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from avtime.pipelines.config import PretextConfig

ORDER_NAMES = ("first_before_second", "second_before_first", "overlap")
# The four cross pairs (clip-1 member, clip-2 member) whose order the class fixes:
# (v1, v2), (a1, a2), (v1, a2), (a1, v2). The label of (v2, a1) is the mirror of (a1, v2).
_PAIRS = (("v", "v"), ("a", "a"), ("v", "a"), ("a", "v"))


def exact_fps(fps: float) -> Fraction:
    """The stored frame rate as an exact Fraction (float32 25.0 -> 25, 29.97 -> 2997/100)."""
    return Fraction(float(fps)).limit_denominator(1001)


def audio_length(audio_seconds: float, sample_rate: int) -> int:
    """L, the output samples of every audio clip: round-half-up(audio_seconds * sample_rate)."""
    return math.floor(Fraction(repr(float(audio_seconds))) * sample_rate + Fraction(1, 2))


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """What the planner needs to know about one segment, in exact integers.

    `num_samples` is the stored audio length; for a segment without audio it is the virtual length
    `floor(num_frames * sample_rate / fps)` so that audio-less segments are planned the same way.
    """

    num_frames: int
    fps_num: int
    fps_den: int
    sample_rate: int
    num_samples: int
    clip_frames: int  # T
    audio_len: int  # L

    @property
    def tick_per_frame(self) -> int:
        """Ticks of one stored frame period on the common clock (lcm of frame and sample grids)."""
        return self.fps_den * (self._ticks_per_second // self.fps_num)

    @property
    def tick_per_sample(self) -> int:
        return self._ticks_per_second // self.sample_rate

    @property
    def _ticks_per_second(self) -> int:
        return math.lcm(self.fps_num, self.sample_rate)


def segment_geometry(
    *, num_frames: int, fps: float, sample_rate: int, num_samples: int, cfg: PretextConfig
) -> Geometry:
    """The `Geometry` of a segment row's metadata (num_samples 0 = no audio: virtual length)."""
    rate = exact_fps(fps)
    if num_samples <= 0:
        num_samples = math.floor(num_frames * sample_rate / rate)
    return Geometry(
        num_frames=int(num_frames),
        fps_num=rate.numerator,
        fps_den=rate.denominator,
        sample_rate=int(sample_rate),
        num_samples=int(num_samples),
        clip_frames=cfg.clip_frames,
        audio_len=audio_length(cfg.audio_seconds, sample_rate),
    )


@dataclass(frozen=True, kw_only=True)
class ClipPlan:
    """One clip pair member: video clip i and its audio clip i. Positions are stored indices."""

    video_start: int  # first stored frame of the span
    video_speed: int  # frame step
    video_reverse: bool
    audio_start: int  # first stored sample of the span
    audio_speed: int  # source samples per output sample
    audio_reverse: bool

    def audio_end(self, geom: Geometry) -> int:
        """One past the last stored sample of the audio span."""
        return self.audio_start + self.audio_speed * geom.audio_len

    def frame_indices(self, clip_frames: int) -> np.ndarray:
        """Stored frame indices in playback order, int64 [T]."""
        idx = self.video_start + self.video_speed * np.arange(clip_frames, dtype=np.int64)
        return idx[::-1].copy() if self.video_reverse else idx


@dataclass(frozen=True, kw_only=True)
class ExamplePlan:
    """Both clips of an example and every temporal label, derived from the spans."""

    clips: tuple[ClipPlan, ClipPlan]
    speed_class_video: tuple[int, int]  # index into the configured speeds
    speed_class_audio: tuple[int, int]
    video_order: int  # (v1, v2)
    audio_order: int  # (a1, a2)
    av_order: tuple[int, int]  # (v1, a2), (v2, a1)


def span_order(x0: int, x1: int, y0: int, y1: int) -> int:
    """Order class of half-open spans [x0, x1) and [y0, y1): 0 X first, 1 Y first, 2 overlap."""
    if x1 <= y0:
        return 0
    if y1 <= x0:
        return 1
    return 2


def audio_start(geom: Geometry, video_start: np.ndarray | int, vs: int, sa: int) -> np.ndarray:
    """First sample of the audio span centred on the video span [f, f + T*vs), rounded half up.

    Centre in samples = (2f + T*vs) * fps_den * sr / (2 * fps_num); start = floor(centre -
    sa*L/2 + 1/2), computed in integers.
    """
    f = np.asarray(video_start, dtype=np.int64)
    num = (2 * f + geom.clip_frames * vs) * geom.fps_den * geom.sample_rate
    num = num - sa * geom.audio_len * geom.fps_num + geom.fps_num
    return np.floor_divide(num, 2 * geom.fps_num)


def valid_starts(geom: Geometry, vs: int, sa: int) -> np.ndarray:
    """Video starts f (int64, increasing, contiguous) whose video and audio spans both fit."""
    f = np.arange(0, max(geom.num_frames - geom.clip_frames * vs + 1, 0), dtype=np.int64)
    a = audio_start(geom, f, vs, sa)
    ok = (a >= 0) & (a + sa * geom.audio_len <= geom.num_samples)
    return f[ok]


def _spans(geom: Geometry, f: np.ndarray, vs: int, sa: int) -> dict[str, np.ndarray]:
    """Tick spans of video ('v0','v1') and audio ('a0','a1') for starts f (arrays, same shape)."""
    tf, ts = geom.tick_per_frame, geom.tick_per_sample
    a = audio_start(geom, f, vs, sa)
    return {
        "v0": f * tf,
        "v1": (f + geom.clip_frames * vs) * tf,
        "a0": a * ts,
        "a1": (a + sa * geom.audio_len) * ts,
    }


@dataclass(frozen=True)
class _Cells:
    """For one (speed tuple, class): f1 values and, per f1, the index range into the f2 values."""

    f1: np.ndarray
    f2: np.ndarray
    lo: np.ndarray
    counts: np.ndarray
    cum: np.ndarray  # cumulative counts

    @property
    def total(self) -> int:
        return int(self.cum[-1]) if len(self.cum) else 0


@functools.lru_cache(maxsize=8192)
def _cells(geom: Geometry, speeds: tuple[int, int, int, int], cls: int) -> _Cells:
    """Every (f1, f2) giving all four cross pairs order class `cls`, as ranges per f1.

    For fixed clip 1, each clip-2 span endpoint is non-decreasing in f2, so "X before Y" holds
    for f2 at or above a threshold, "Y before X" at or below one, and overlap in between; the
    intersection over the four pairs is again a range.
    """
    sv1, sa1, sv2, sa2 = speeds
    f1, s1 = _clip_spans(geom, sv1, sa1)
    f2, s2 = _clip_spans(geom, sv2, sa2)
    n2 = len(f2)
    first_after = np.zeros(len(f1), dtype=np.int64)  # max over pairs: first f2 idx with X before Y
    last_before = np.full(len(f1), n2 - 1, dtype=np.int64)  # min: last f2 idx with Y before X
    last_before_max = np.full(len(f1), -1, dtype=np.int64)
    first_after_min = np.full(len(f1), n2, dtype=np.int64)
    for x, y in _PAIRS:
        g0 = np.searchsorted(s2[y + "0"], s1[x + "1"], side="left")
        g1 = np.searchsorted(s2[y + "1"], s1[x + "0"], side="right") - 1
        first_after = np.maximum(first_after, g0)
        first_after_min = np.minimum(first_after_min, g0)
        last_before = np.minimum(last_before, g1)
        last_before_max = np.maximum(last_before_max, g1)
    if cls == 0:
        lo, hi = first_after, np.full(len(f1), n2 - 1, dtype=np.int64)
    elif cls == 1:
        lo, hi = np.zeros(len(f1), dtype=np.int64), last_before
    else:
        lo, hi = last_before_max + 1, first_after_min - 1
    counts = np.maximum(hi - lo + 1, 0)
    return _Cells(f1=f1, f2=f2, lo=lo, counts=counts, cum=np.cumsum(counts))


@functools.lru_cache(maxsize=4096)
def _clip_spans(geom: Geometry, vs: int, sa: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    f = valid_starts(geom, vs, sa)
    return f, _spans(geom, f, vs, sa)


def tuple_feasible(geom: Geometry, speeds: tuple[int, int, int, int]) -> bool:
    """True when all three order classes can be realised with speeds (v1, a1, v2, a2).

    Classes 0 and 1 are checked at the extreme start pairs (clip 1 first and clip 2 last, and
    the reverse), which are the most separated; the overlap class through `_cells`.
    """
    sv1, sa1, sv2, sa2 = speeds
    f1, s1 = _clip_spans(geom, sv1, sa1)
    f2, s2 = _clip_spans(geom, sv2, sa2)
    if not len(f1) or not len(f2):
        return False
    for x, y in _PAIRS:
        if s1[x + "1"][0] > s2[y + "0"][-1] or s2[y + "1"][0] > s1[x + "0"][-1]:
            return False
    return _cells(geom, speeds, 2).total > 0


@dataclass(frozen=True)
class SpeedTable:
    """The speed distribution of one segment geometry.

    `tuples[k]` is (i_v1, i_a1, i_v2, i_a2), indices into `speeds`; `probs[k]` its probability.
    Each clip's speed marginal is uniform over `speeds` (to within 1e-3), and every listed tuple
    admits all three order classes. `status` is "ok", "restricted" (the largest configured speeds
    were dropped for this segment) or "skipped" (no speed fits; `tuples` is empty).
    """

    speeds: tuple[int, ...]
    tuples: np.ndarray  # int64 [K, 4]
    probs: np.ndarray  # float64 [K]
    status: str


def _marginal_error(tuples: np.ndarray, p: np.ndarray, n: int) -> float:
    return max(
        float(np.abs(np.bincount(tuples[:, j], weights=p, minlength=n) - 1 / n).max())
        for j in range(4)
    )


def _ipf_uniform(tuples: np.ndarray, n: int, iters: int = 2000, tol: float = 1e-3) -> np.ndarray:
    """Probabilities on `tuples` ([K, 4] indices < n) whose four marginals are uniform to within
    `tol`, by iterative proportional fitting from uniform (towards the max-entropy such table;
    run to 1e-9 where it converges fast); NaNs when none exists (a marginal is empty, or the fit
    stalls far from uniform)."""
    p = np.full(len(tuples), 1.0 / len(tuples))
    err = 1.0
    for it in range(iters):
        for j in range(4):
            marg = np.bincount(tuples[:, j], weights=p, minlength=n)
            if np.any(marg <= 0):
                return np.full(len(tuples), np.nan)
            p = p * (1.0 / n) / marg[tuples[:, j]]
        if it % 10 == 0 or it == iters - 1:
            err = _marginal_error(tuples, p, n)
            if err < 1e-9 or (it >= 200 and err < tol):
                break
            if it >= 200 and err > 0.02:  # stalled: no table with these marginals
                break
    return p / p.sum() if err < tol else np.full(len(tuples), np.nan)


@functools.lru_cache(maxsize=1024)
def speed_table(geom: Geometry, speeds: tuple[int, ...], rule: str) -> SpeedTable:
    """The speed table of a segment; `rule` is PretextConfig.short_segment_rule.

    With "restrict", the largest speeds are dropped until a balanced table exists; with "skip",
    a segment that cannot use every configured speed is skipped. See docs/pretext.md.
    """
    for k in range(len(speeds), 0, -1):
        grid = np.stack(np.meshgrid(*[np.arange(k)] * 4, indexing="ij"), -1).reshape(-1, 4)
        ok = [tuple_feasible(geom, tuple(speeds[i] for i in row)) for row in grid]
        tuples = grid[np.asarray(ok, dtype=bool)]
        if len(tuples):
            probs = _ipf_uniform(tuples, k)
            if not np.isnan(probs).any():
                status = "ok" if k == len(speeds) else "restricted"
                if status == "restricted" and rule == "skip":
                    break
                return SpeedTable(speeds[:k], tuples, probs, status)
        if rule == "skip":
            break
    return SpeedTable((), np.zeros((0, 4), dtype=np.int64), np.zeros(0), "skipped")


def plan_example(geom: Geometry, table: SpeedTable, rng: np.random.Generator) -> ExamplePlan:
    """Draw one example: speeds from `table`, the order class uniformly, directions uniformly,
    then a start pair uniformly among those realising the class. Labels come from the spans."""
    if not len(table.tuples):
        raise ValueError("segment is too short for any configured speed (status 'skipped')")
    row = table.tuples[rng.choice(len(table.tuples), p=table.probs)]
    iv1, ia1, iv2, ia2 = (int(i) for i in row)
    sv1, sa1, sv2, sa2 = (table.speeds[i] for i in (iv1, ia1, iv2, ia2))
    cls = int(rng.integers(3))
    reverse = rng.integers(2, size=4).astype(bool)
    cells = _cells(geom, (sv1, sa1, sv2, sa2), cls)
    u = int(rng.integers(cells.total))
    i = int(np.searchsorted(cells.cum, u, side="right"))
    j = int(cells.lo[i] + u - (cells.cum[i] - cells.counts[i]))
    f1, f2 = int(cells.f1[i]), int(cells.f2[j])
    c1 = _clip(geom, f1, sv1, sa1, bool(reverse[0]), bool(reverse[1]))
    c2 = _clip(geom, f2, sv2, sa2, bool(reverse[2]), bool(reverse[3]))
    labels = order_labels(geom, c1, c2)
    return ExamplePlan(
        clips=(c1, c2),
        speed_class_video=(iv1, iv2),
        speed_class_audio=(ia1, ia2),
        video_order=labels[0],
        audio_order=labels[1],
        av_order=(labels[2], labels[3]),
    )


def _clip(geom: Geometry, f: int, vs: int, sa: int, vrev: bool, arev: bool) -> ClipPlan:
    a = int(audio_start(geom, f, vs, sa))
    return ClipPlan(
        video_start=f, video_speed=vs, video_reverse=vrev,
        audio_start=a, audio_speed=sa, audio_reverse=arev,
    )  # fmt: skip


def clip_spans(geom: Geometry, clip: ClipPlan) -> tuple[tuple[int, int], tuple[int, int]]:
    """Tick spans ((v0, v1), (a0, a1)) of a clip's video and audio on the common clock."""
    tf, ts = geom.tick_per_frame, geom.tick_per_sample
    v = (clip.video_start * tf, (clip.video_start + geom.clip_frames * clip.video_speed) * tf)
    a0 = clip.audio_start
    return v, (a0 * ts, (a0 + clip.audio_speed * geom.audio_len) * ts)


def order_labels(geom: Geometry, c1: ClipPlan, c2: ClipPlan) -> tuple[int, int, int, int]:
    """Order classes of (v1, v2), (a1, a2), (v1, a2), (v2, a1), from the exact spans."""
    v1, a1 = clip_spans(geom, c1)
    v2, a2 = clip_spans(geom, c2)
    return (
        span_order(*v1, *v2),
        span_order(*a1, *a2),
        span_order(*v1, *a2),
        span_order(*v2, *a1),
    )
