"""bench.protocol: which corpus a run reports on, the rows of a table, the paired differences."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from avtime.pipelines.synth.corpus import SynthConfig, plan_corpus
from bench import protocol as proto

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_validation_and_test_corpora() -> None:
    val = proto.eval_corpus("val", val_videos=200, test_videos=400)
    assert (val.seed, val.videos, val.test_fraction, val.min_test) == (300, 200, 0.3, 0)
    test = proto.eval_corpus("test", val_videos=200, test_videos=400)
    assert test.seed == proto.TEST_SEED != val.seed and test.min_test == 400
    assert test.flags() == ["--videos", "800", "--seed", str(proto.TEST_SEED),
                            "--test-fraction", "0.5"]  # fmt: skip
    assert test.folder(Path("w")) == Path("w/testset") and val.folder(Path("w")) == Path(
        "w/evalset"
    )
    with pytest.raises(ValueError, match="--on"):
        proto.eval_corpus("train", val_videos=1, test_videos=1)


@pytest.mark.parametrize(("classes", "want"), [(4, 400), (3, 400), (5, 401)])
def test_the_test_split_gets_at_least_the_videos_asked_for(classes: int, want: int) -> None:
    cfg = SynthConfig(videos=10, classes=classes, test_fraction=0.5, seed=proto.TEST_SEED)
    grown = proto.sized(cfg, want)
    tests = sum(j.split == "test" for j in plan_corpus(grown))
    fewer = sum(j.split == "test" for j in plan_corpus(SynthConfig(
        videos=grown.videos - 1, classes=classes, test_fraction=0.5, seed=proto.TEST_SEED)))  # fmt: skip
    assert tests >= want > fewer  # the smallest such corpus


def _code(path: Path) -> str:
    """A module's source without its docstring (which may name the protocol's seeds)."""
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text), clean=False)
    return text.replace(doc, "", 1) if doc else text


def test_the_test_seed_is_used_nowhere_else() -> None:
    """No other code or test names the test corpus's seed: nothing can be chosen on it."""
    seed = re.compile(rf"\b{proto.TEST_SEED}\b")
    users = [p.relative_to(REPO).as_posix()
             for folder in ("pipelines", "models", "training", "bench", "tests")
             for p in (REPO / folder).rglob("*.py")
             if seed.search(_code(p))]  # fmt: skip
    assert users == ["bench/protocol.py"]


def _entries() -> tuple[list[proto.Entry], proto.Entry, list[proto.Entry]]:
    vids = [f"v{i}" for i in range(10)]
    full = proto.Entry(name="full", top1=(0.8, 0.7), n=10,
                       videos=({v: i < 8 for i, v in enumerate(vids)},
                               {v: i < 7 for i, v in enumerate(vids)}))  # fmt: skip
    other = proto.Entry(name="temporal-only", top1=(0.6, 0.6), n=10)
    random = proto.Entry(name=proto.RANDOM, top1=(0.4, 0.5), n=10,
                         videos=({v: i >= 6 for i, v in enumerate(vids)},) * 2)  # fmt: skip
    still = proto.Entry(name="still frame", top1=(0.6,), n=10, seeded=False,
                        videos=({v: i % 2 == 0 for i, v in enumerate(vids)},))  # fmt: skip
    sound = proto.Entry(name="sound level", top1=(0.3,), n=10, seeded=False)
    return [full, other], random, [still, sound]


def test_comparisons_pair_full_random_and_the_best_control() -> None:
    variants, random, controls = _entries()
    pairs = [(a.name, b.name) for a, b in proto.comparisons(variants, random, controls)]
    assert pairs == [
        ("full", "temporal-only"),
        ("full", proto.RANDOM), ("full", "still frame"),
        ("temporal-only", proto.RANDOM), ("temporal-only", "still frame"),
        (proto.RANDOM, "still frame"),
    ]  # fmt: skip


def test_differences_pair_seeds_and_videos() -> None:
    variants, random, controls = _entries()
    full, still = variants[0], controls[0]
    d = proto.seed_diff(full, still)  # the control's one value stands for both seeds
    assert d.diffs == pytest.approx((0.2, 0.1))
    v = proto.video_diff(full, random)
    assert v is not None and (v.only_a, v.only_b, v.n) == (6, 2, 10)  # v0-5 vs v8-9
    assert proto.video_diff(variants[1], random) is None  # no per-video results
    text = proto.difference_table(proto.comparisons(variants, random, controls), 0)
    lines = text.splitlines()
    assert len(lines) == 2 + 6 and "seed 0, paired per video" in lines[0]
    assert lines[2].startswith("| full − temporal-only | +15.0 [") and lines[2].endswith(" | - |")
    assert "McNemar p=0.29 (6/2 of 10)" in lines[3]


def test_cells_show_the_spread_over_seeds_and_the_wilson_interval() -> None:
    assert proto.cell([0.65, 0.70, 0.60], 100) == "65.0 ± 5.0 [55.3, 73.6]"
    assert proto.cell([0.65], 100) == "65.0 [55.3, 73.6]"
    assert proto.cell([], 100) == "-"


def test_controls_entries_from_cached_json(tmp_path: Path) -> None:
    doc = {"still frame": {"k": 26, "n": 40, "C": 0.01, "correct": {"a": True}}}
    (e,) = proto.controls_entries(doc)
    assert (e.name, e.top1, e.n, e.seeded, e.videos) == ("still frame", (0.65,), 40, False,
                                                           ({"a": True},))  # fmt: skip
    assert e.per_seed(3) == (0.65, 0.65, 0.65)
    root = tmp_path / "c"
    root.mkdir()
    (root / "synth.json").write_text("{}")
    (root / "labels.csv").write_text("path,label,split\n")
    key = proto.corpus_key(root)
    (root / "labels.csv").write_text("path,label,split\nv.mp4,a,test\n")
    assert proto.corpus_key(root) != key and len(key) == 10
