"""The measurement protocol the learning benches share (`bench.learning`, `bench.ablation_bench`).

Choose on validation, report on test:

- the validation corpus (`--on val`, the default; seed `VAL_SEED`, 200 videos, 30 % test) is
  the one to choose configurations on;
- the test corpus (`--on test`; seed `TEST_SEED`, used nowhere else in the repository, and
  never for choosing) has a test split of at least `TEST_VIDEOS` videos (half of the corpus).

On whichever corpus a run reports, the same train/test split also gets the controls of
`bench.controls` (still frame, sound level, both; cached in the workdir per corpus), and every
accuracy is printed with its Wilson 95 % interval on the test videos (`bench.stats`).
Differences are paired: across seeds (mean and t-interval) and, for one seed, per test video
(bootstrap interval and exact McNemar test).

    eval_corpus(on, ...) -> EvalCorpus        which corpus, how many videos, which flags
    sized(cfg, min_test)                      a synth config grown to a test split of min_test
    corpus_key(root)                          a short digest of a corpus's synth.json and labels
    cached_controls(root, cache) -> entries   the controls of a corpus as Entry rows
    Entry, entry_cell, comparisons, difference_table   the rows and paired differences
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stats import SeedDiff, VideoDiff, accuracy_of, paired_seeds, paired_videos

if TYPE_CHECKING:
    from avtime.pipelines.synth.corpus import SynthConfig

PRETRAIN_SEED, VAL_SEED, TEST_SEED = 100, 300, 4001  # corpus seeds no test uses
VAL_VIDEOS, VAL_FRACTION = 200, 0.3  # the validation corpus: 60 test videos at 4 classes
TEST_VIDEOS, TEST_FRACTION = 400, 0.5  # the test corpus: at least 400 test videos
RANDOM = "random init"


@dataclass(frozen=True, kw_only=True)
class EvalCorpus:
    """One labeled evaluation corpus: `name` (val or test), its seed, size and test fraction,
    and the least number of test videos it must have (0: no minimum)."""

    name: str
    seed: int
    videos: int
    test_fraction: float
    min_test: int = 0

    def flags(self) -> list[str]:
        """Its `avtime synth` flags (add the classes, seconds and world)."""
        return ["--videos", str(self.videos), "--seed", str(self.seed),
                "--test-fraction", f"{self.test_fraction:g}"]  # fmt: skip

    def folder(self, work: Path) -> Path:
        """Its folder in a workdir: evalset (validation, as before) or testset."""
        return work / ("evalset" if self.name == "val" else "testset")

    def describe(self, n_test: int) -> str:
        """`test corpus (seed 4001, 400 test videos)`."""
        kind = "validation" if self.name == "val" else "test"
        return f"{kind} corpus (seed {self.seed}, {n_test} test videos)"


def eval_corpus(on: str, *, val_videos: int, test_videos: int) -> EvalCorpus:
    """The validation corpus, or the test corpus with at least `test_videos` test videos."""
    if on == "val":
        return EvalCorpus(name="val", seed=VAL_SEED, videos=val_videos, test_fraction=VAL_FRACTION)
    if on != "test":
        raise ValueError(f"--on must be val or test, got {on!r}")
    return EvalCorpus(
        name="test", seed=TEST_SEED, videos=math.ceil(test_videos / TEST_FRACTION),
        test_fraction=TEST_FRACTION, min_test=test_videos,
    )  # fmt: skip


def count_test_split(cfg: SynthConfig) -> int:
    """How many videos `avtime synth` puts in the test split of `cfg` (per-class rounding)."""
    from avtime.pipelines.synth.corpus import plan_corpus

    return sum(job.split == "test" for job in plan_corpus(cfg))


def sized(cfg: SynthConfig, min_test: int) -> SynthConfig:
    """`cfg` with the fewest videos (at least its own) that give `min_test` test videos."""
    while count_test_split(cfg) < min_test:
        cfg = replace(cfg, videos=cfg.videos + 1)
    return cfg


def corpus_key(root: Path) -> str:
    """10 hex chars of sha1 over a corpus's synth.json and labels.csv (names cached results)."""
    h = hashlib.sha1()
    for name in ("synth.json", "labels.csv"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:10]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One row of a table: per seed its top-1 (fractions) and which test videos it got right;
    a control (`seeded` False) has one value that stands for every seed."""

    name: str
    top1: tuple[float, ...]
    n: int  # test videos
    videos: tuple[dict[str, bool], ...] = ()  # per seed; empty when not known
    seeded: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def per_seed(self, count: int) -> tuple[float, ...]:
        """Its top-1 for `count` seeds (a control's one value repeated)."""
        return self.top1 if self.seeded else self.top1 * count


def cell(values: Sequence[float], n: int) -> str:
    """`67.2 ± 0.9 [62.5, 71.6]`: percent, mean ± std over seeds (one value: no ±), and the
    Wilson 95 % interval of the mean on `n` test items (the test-set sampling error)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    acc = accuracy_of(mean, n)
    sd = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * mean:.1f}{sd} [{100 * acc.low:.1f}, {100 * acc.high:.1f}]"


def entry_cell(e: Entry) -> str:
    """`cell` of an entry's top-1."""
    return cell(e.top1, e.n)


def controls_entries(results: dict[str, Any]) -> list[Entry]:
    """Entries of `bench.controls` results (ControlResult or their cached JSON)."""
    out = []
    for name, r in results.items():
        doc = r if isinstance(r, dict) else {"k": r.top1.k, "n": r.top1.n, "C": r.c,
                                              "correct": r.correct}  # fmt: skip
        out.append(
            Entry(name=name, top1=(doc["k"] / doc["n"],), n=int(doc["n"]),
                  videos=(dict(doc["correct"]),), seeded=False, extra={"C": doc["C"]})
        )  # fmt: skip
    return out


def cached_controls(root: Path, cache: Path, *, workers: int = 2) -> list[Entry]:
    """The controls of the corpus at `root` (`bench.controls.run_controls`), cached as JSON in
    `cache` under the corpus's key, so a rebuilt corpus gets them computed again."""
    from bench.controls import run_controls

    path = cache / f"controls-{root.name}-{corpus_key(root)}.json"
    if not path.exists():
        results = run_controls(str(root), workers=workers)
        doc = {name: {"k": r.top1.k, "n": r.top1.n, "C": r.c, "correct": r.correct}
               for name, r in results.items()}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return controls_entries(json.loads(path.read_text()))


def best(entries: Sequence[Entry]) -> Entry:
    """The entry with the highest mean top-1 (the strongest control)."""
    return max(entries, key=lambda e: statistics.fmean(e.top1))


def comparisons(
    variants: Sequence[Entry], random: Entry | None, controls: Sequence[Entry]
) -> list[tuple[Entry, Entry]]:
    """The pairs (a, b) to report a - b of: the first variant (the full method) against each
    other variant, then each variant against random init and against the best control, and
    random init against the best control."""
    pairs = [(variants[0], v) for v in variants[1:]] if variants else []
    top = best(controls) if controls else None
    for v in variants:
        pairs += [(v, x) for x in (random, top) if x is not None]
    if random is not None and top is not None:
        pairs.append((random, top))
    return pairs


def seed_diff(a: Entry, b: Entry) -> SeedDiff:
    """a - b paired over seeds (a control's value stands for every seed)."""
    count = max(len(a.top1) if a.seeded else 1, len(b.top1) if b.seeded else 1)
    return paired_seeds(a.per_seed(count), b.per_seed(count))


def video_diff(a: Entry, b: Entry, index: int = 0) -> VideoDiff | None:
    """a - b on the test videos of seed number `index` (None when a side lacks them)."""
    va = a.videos[index if a.seeded else 0] if a.videos else None
    vb = b.videos[index if b.seeded else 0] if b.videos else None
    if not va or not vb:
        return None
    return paired_videos(va, vb)


def difference_table(pairs: Sequence[tuple[Entry, Entry]], first_seed: int) -> str:
    """Markdown: a - b in points, paired across seeds (t-interval) and, on seed `first_seed`,
    per test video (bootstrap interval, exact McNemar test)."""
    lines = [
        f"| difference (top-1, points) | paired across seeds [95 % t] | seed {first_seed}, "
        "paired per video [95 % bootstrap], McNemar |",
        "|---|---|---|",
    ]
    for a, b in pairs:
        per_video = video_diff(a, b)
        lines.append(
            f"| {a.name} − {b.name} | {seed_diff(a, b).cell()} | "
            f"{per_video.cell() if per_video else '-'} |"
        )
    return "\n".join(lines)
