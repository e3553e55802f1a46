"""The orchestrator's pure parts: the learning bar, corpus flags, probe configs, eval params.

The steps themselves run end to end, at smoke size, in tests/training/cli/test_demo.py."""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import pytest

import bench.learning
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.synth.corpus import SynthConfig
from avtime.training import experiment as exp
from avtime.training.cli.commands import demo
from avtime.training.tracking.eval_log import eval_params

pytestmark = pytest.mark.unit


def test_the_learning_bar_is_defined_once_and_shared() -> None:
    assert demo.LEARNING_BAR is exp.LEARNING_BAR
    assert bench.learning.LEARNING_BAR is exp.LEARNING_BAR
    assert (exp.LEARNING_BAR.head_points, exp.LEARNING_BAR.retrieval_x) == (0.30, 5.0)
    # No copy of the thresholds as literals beside it.
    literal = re.compile(r"[<>]=?\s*(0\.30?|5(\.0)?)\b|\+\s*0\.30?\b")
    for module in (demo, bench.learning):
        assert not literal.search(inspect.getsource(module)), module.__name__


def test_the_bar_judges_every_head_and_retrieval() -> None:
    heads = {
        "speed_video": {"accuracy": 0.64, "chance": 1 / 3},  # +30.7 points: passes
        "order_av": {"accuracy": 0.62, "chance": 1 / 3},  # +28.7: misses
    }
    judged = exp.LEARNING_BAR.judge({"heads": heads, "retrieval_a2v": {"x_chance": 5.0}})
    assert judged == {
        "passed": False,
        "heads": {"speed_video": True, "order_av": False},
        "retrieval_a2v": True,
    }
    heads["order_av"]["accuracy"] = 0.9
    low = exp.LEARNING_BAR.judge({"heads": heads, "retrieval_a2v": {"x_chance": 4.9}})
    assert low["passed"] is False and low["retrieval_a2v"] is False
    strict = exp.LearningBar(head_points=0.5)
    assert not strict.head_passes(heads["speed_video"])


def test_synth_flags_become_the_synth_config() -> None:
    cfg = exp.synth_config(["--videos", "12", "--seed", "7", "--world", "sand", "--no-lamps",
                            "--split", "train", "--test-fraction", "0.3"])  # fmt: skip
    assert (cfg.videos, cfg.seed, cfg.world, cfg.lamps, cfg.split) == (
        12,
        7,
        "sand",
        False,
        "train",
    )
    assert cfg.test_fraction == 0.3 and cfg.classes == 4
    with pytest.raises(exp.StepError, match="synth"):
        exp.synth_config(["--videos", "0"])


def _fake_corpus(out: Path, cfg: SynthConfig) -> None:
    """labels.csv and synth.json as `avtime synth` writes them (no videos)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.csv").write_text("path,label,split\n")
    (out / "synth.json").write_text(json.dumps({"config": asdict(cfg), "videos": cfg.videos}))


def test_a_reused_corpus_is_not_written_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = exp.synth_config(["--videos", "1", "--world", "sand"])
    _fake_corpus(tmp_path, cfg)
    out = exp.make_corpus(exp.Corpus(out=tmp_path, synth=cfg))
    assert out == exp.CorpusResult(out=tmp_path, videos=0, reused=True)
    assert "reusing the corpus" in capsys.readouterr().out


def test_a_corpus_written_with_other_flags_does_not_match(tmp_path: Path) -> None:
    cfg = exp.synth_config(["--videos", "8", "--seed", "3", "--world", "sand"])
    assert exp.corpus_mismatch(tmp_path, cfg) == "it is not finished (no labels.csv)"
    _fake_corpus(tmp_path, cfg)
    assert exp.corpus_mismatch(tmp_path, cfg) is None
    dusk = exp.synth_config(["--videos", "8", "--seed", "3"])
    why = exp.corpus_mismatch(tmp_path, dusk)
    assert why is not None and "world='sand' (now 'dusk')" in why and "ambience" in why
    more = exp.corpus_mismatch(tmp_path, exp.synth_config(["--videos", "9", "--seed", "3",
                                                           "--world", "sand"]))  # fmt: skip
    assert more == "it was written with videos=8 (now 9)"
    (tmp_path / "synth.json").unlink()
    assert exp.corpus_mismatch(tmp_path, cfg) == "it has no synth.json"
    (tmp_path / "synth.json").write_text("{not json")
    assert exp.corpus_mismatch(tmp_path, cfg) == "its synth.json cannot be read"


def test_a_mismatched_corpus_is_rebuilt_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what `avtime synth` writes is removed; then the corpus is written again."""
    from avtime.pipelines.synth import corpus

    old = exp.synth_config(["--videos", "2", "--world", "dusk"])
    _fake_corpus(tmp_path, old)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "old.mp4").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    calls = []

    def fake_generate(out: Path, cfg: SynthConfig, **_: object) -> list[dict[str, float]]:
        calls.append((sorted(p.name for p in Path(out).rglob("*")), cfg))
        _fake_corpus(Path(out), cfg)
        return [{"duration_s": 1.0}] * cfg.videos

    monkeypatch.setattr(corpus, "generate_corpus", fake_generate)
    new = exp.synth_config(["--videos", "2", "--world", "sand"])
    res = exp.make_corpus(exp.Corpus(out=tmp_path, synth=new))
    assert res == exp.CorpusResult(out=tmp_path, videos=2, reused=False)
    assert calls == [(["notes.txt"], new)]  # the old videos, labels and synth.json went first
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"rebuilding the corpus in {tmp_path}: it was written with ")
    assert exp.corpus_mismatch(tmp_path, new) is None


def test_shards_older_than_their_corpus_are_stale(tmp_path: Path) -> None:
    src, dst = tmp_path / "corpus", tmp_path / "shards"
    src.mkdir()
    dst.mkdir()
    (src / "labels.csv").write_text("path,label,split\n")
    job = exp.Shards(src=src, dst=dst, ingest=IngestConfig(), reuse=True)
    assert exp._shards_older_than_corpus(job) is None  # nothing decoded yet
    (dst / "manifest.json").write_text("{}")
    os.utime(src / "labels.csv", ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    os.utime(dst / "manifest.json", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    why = exp._shards_older_than_corpus(job)
    assert why == f"they were decoded from an older corpus in {src}"
    os.utime(dst / "manifest.json", ns=(3_000_000_000_000_000_000, 3_000_000_000_000_000_000))
    assert exp._shards_older_than_corpus(job) is None


def test_probe_refuses_unknown_protocols_and_contrast_margins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="protocols"):
        exp.Probe(root=tmp_path, cache=tmp_path, protocols=("pretext",))
    with pytest.raises(ValueError, match="protocols"):
        exp.Probe(root=tmp_path, cache=tmp_path, protocols=())
    c = exp.Contrast(
        trained={"action": {"top1": 0.65}, "retrieval": {"R@1": 0.5}},
        random={"action": {"top1": 0.45}, "retrieval": {"R@1": 0.3}},
        chance=0.25,
    )
    assert c.margin() == pytest.approx(0.2) and c.margin("retrieval", "R@1") == pytest.approx(0.2)


def test_eval_params_name_what_was_evaluated_on_what_and_how() -> None:
    params = eval_params(
        protocol="action", dataset="folder", root="/data/probe", checkpoint="random",
        checkpoint_uri=None, checkpoint_step=None, preset="demo", mode="linear", seed=3,
    )  # fmt: skip
    assert params["split"] == "" and params["mode"] == "linear" and params["seed"] == 3
    assert params["clips_per_segment"] == 4 and params["short_side"] == 128
    assert params["code_version"] and params["model_id"] == ""
    ucf = eval_params(
        protocol="retrieval", dataset="ucf101", root="r", checkpoint="c", checkpoint_uri="c",
        checkpoint_step=10, preset="paper", split=2,
    )  # fmt: skip
    assert ucf["split"] == 2 and ucf["checkpoint_step"] == 10


def test_probe_summary_lines_format_floats_and_nested_results() -> None:
    from avtime.training.tracking.eval_log import summary_line

    line = summary_line({"top1": 0.25, "n": 4, "per": {"blur": {"R@1": 0.5}}})
    assert line == "top1=0.2500, n=4, per={blur={R@1=0.5000}}"


def test_the_bar_decides_on_exact_counts_not_floats() -> None:
    bar = exp.LEARNING_BAR
    # One hit in 5 queries against 25 candidates is exactly 5x chance; float32 said 4.9999997.
    edge = {"r1": 0.2, "chance": 0.04, "x_chance": 4.9999997, "n": 5}
    assert bar.retrieval_passes(edge)
    assert not bar.retrieval_passes({**edge, "r1": 0.19999, "n": 0, "x_chance": 4.99975})
    # 253 of 400 right against chance 1/3 is +29.9 points; 254 of 400 is +30.17.
    assert not bar.head_passes({"accuracy": 253 / 400, "chance": 1 / 3, "n": 400})
    assert bar.head_passes({"accuracy": 254 / 400, "chance": 1 / 3, "n": 400})
    # Exactly +30 points (11 of 20 against 1/4) passes; one fewer hit does not.
    assert bar.head_passes({"accuracy": 0.55, "chance": 0.25, "n": 20})
    assert not bar.head_passes({"accuracy": 0.5, "chance": 0.25, "n": 20})


def test_the_report_names_each_check_with_figures() -> None:
    heldout = {
        "heads": {
            "speed_video": {"accuracy": 0.9, "chance": 0.25, "n": 400},
            "order_audio": {"accuracy": 0.55, "chance": 1 / 3, "n": 400},
        },
        "retrieval_a2v": {"r1": 0.2, "chance": 0.04, "x_chance": 4.9999997, "n": 5},
    }
    lines = exp.LEARNING_BAR.report(heldout)
    assert lines[0].split() == ["speed_video", "accuracy", "0.900", "(360/400),", "chance",
                                "0.250:", "+65.0", "points", "(bar", "+30)", "pass"]  # fmt: skip
    assert lines[1].endswith("+21.7 points (bar +30) FAIL")
    assert lines[2] == "  audio->video R@1 0.200 = 5.0x chance (bar 5x) pass"
    assert lines[3] == "learning bar NOT passed (order_audio): 2 of 3 checks"
