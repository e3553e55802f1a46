"""Pure parts of evaluation: clip sampling, cache keys, MLflow names, the pretext dispatch."""

from __future__ import annotations

import argparse
import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.datasets.adapters import EvalItem
from avtime.training.eval.cache import cache_key, file_stamps, listing_csv
from avtime.training.eval.clips import ClipConfig, audio_window, clip_starts, segment_clips
from avtime.training.eval.features import audio_centres
from avtime.training.tracking.eval_log import metric_items, metric_prefix

pytestmark = pytest.mark.unit


def test_clip_starts_even_and_inside() -> None:
    assert clip_starts(100, 16, 4) == [0, 28, 56, 84]
    assert clip_starts(100, 16, 1) == [42]
    assert clip_starts(10, 16, 3) == [0, 0, 0]  # shorter than a clip: all start at 0
    assert audio_centres(1000, 100, 3) == [50.0, 500.0, 950.0]


def test_audio_window_centres_clamps_and_pads() -> None:
    wav = np.arange(10, dtype=np.float32)
    assert audio_window(wav, 5, 4).tolist() == [3, 4, 5, 6]
    assert audio_window(wav, 0, 4).tolist() == [0, 1, 2, 3]
    assert audio_window(wav, 10, 4).tolist() == [6, 7, 8, 9]
    assert audio_window(wav, 5, 12).tolist() == list(range(10)) + [0, 0]
    assert audio_window(None, 5, 3).tolist() == [0, 0, 0]


def _jpeg(value: int, w: int = 40, h: int = 20) -> bytes:
    img = Image.new("RGB", (w, h), (value, value, value))
    img.paste((255, 0, 0), (0, 0, 10, h))  # a red bar on the left, cut by the centre crop
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_segment_clips_frames_crop_and_audio() -> None:
    row = {
        "frames": [_jpeg(10 * i) for i in range(10)],
        "width": 40,
        "height": 20,
        "fps": 10.0,
        "sample_rate": 1000,
        "num_samples": 1000,
        "audio": (np.arange(1000, dtype="<i2") * 10).tobytes(),
    }
    cfg = ClipConfig(clip_frames=4, crop_size=8, audio_seconds=0.02, sample_rate=1000,
                     clips_per_segment=2)  # fmt: skip
    out = segment_clips(row, cfg)
    assert out["video"].shape == (2, 3, 4, 8, 8) and out["video"].dtype == np.uint8
    # clip starts 0 and 6: frame values 0,10,20,30 and 60..90, on every pixel of the centre crop
    assert out["video"][0, 1, :, 4, 4].tolist() == [0, 10, 20, 30]
    assert out["video"][1, 0, :, 4, 4].tolist() == [60, 70, 80, 90]
    # Without the centre crop the left column would be the pure red bar.
    assert int(out["video"][0, 0, 0, 4, 0]) - int(out["video"][0, 1, 0, 4, 0]) < 128
    # audio: 20 samples centred on each clip span (frames 0-3 -> t = 0.2 s -> sample 200)
    expected = (np.arange(190, 210) * 10 / 32768.0).astype(np.float32)
    assert np.allclose(out["audio"][0], expected)
    assert out["has_audio"].tolist() == [1.0, 1.0]
    silent = segment_clips({**row, "audio": None, "num_samples": 0}, cfg)
    assert silent["has_audio"].tolist() == [0.0, 0.0] and not silent["audio"].any()


def test_cache_key_ignores_splits_but_not_files_or_settings() -> None:
    a = [EvalItem(source="/d/a.mp4", label="x", split="train")]
    b = [EvalItem(source="/d/a.mp4", label="x", split="test")]
    c = [EvalItem(source="/d/b.mp4", label="x", split="train")]
    cfg = IngestConfig()
    assert cache_key(a, cfg) == cache_key(b, cfg)
    assert cache_key(a, cfg) != cache_key(c, cfg)
    assert cache_key(a, cfg) != cache_key(a, IngestConfig(short_side=64))
    assert listing_csv(a).decode() == "uri,label\n/d/a.mp4,x\n"


def test_cache_key_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    """Same path, other bytes (a corpus rebuilt in place): another key, so no stale decode."""
    video = tmp_path / "a.mp4"
    video.write_bytes(b"first")
    items = [EvalItem(source=str(video), label="x", split="train")]
    cfg = IngestConfig()
    key = cache_key(items, cfg)
    assert cache_key(items, cfg) == key  # stable while the file is untouched
    video.write_bytes(b"second, longer")
    rewritten = cache_key(items, cfg)
    assert rewritten != key
    video.write_bytes(b"second, LONGER")  # same size: the modification time tells
    os.utime(video, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert cache_key(items, cfg) not in (key, rewritten)
    assert file_stamps([str(video), str(tmp_path / "gone.mp4")]) == {
        str(video): f"14:{1_700_000_000_000_000_000}",
        str(tmp_path / "gone.mp4"): "missing",
    }


def test_mlflow_metric_names() -> None:
    result = {"R@1": 0.5, "queries": 3, "fold_accuracy": [0.5, 1.0], "ok": True,
              "per_distortion": {"blur": {"R@1": 1.0, "mAP": 0.75}}, "modalities": ["video"]}  # fmt: skip
    prefix = metric_prefix("retrieval", "ucf101", 2, None)
    assert prefix == "ucf101-split2.retrieval."
    assert metric_items(result, prefix) == {
        "ucf101-split2.retrieval.R1": 0.5,
        "ucf101-split2.retrieval.queries": 3.0,
        "ucf101-split2.retrieval.fold_accuracy_1": 0.5,
        "ucf101-split2.retrieval.fold_accuracy_2": 1.0,
        "ucf101-split2.retrieval.per_distortion.blur.R1": 1.0,
        "ucf101-split2.retrieval.per_distortion.blur.mAP": 0.75,
    }
    assert metric_prefix("action", "folder", None, "finetune") == "folder.action-finetune."


def test_pretext_is_dispatched_to_the_trainer_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from avtime.training.cli.commands import eval as eval_cmd

    calls: list[argparse.Namespace] = []
    fake = types.ModuleType("avtime.training.eval.pretext")
    fake.add_arguments = lambda p: p.add_argument("--shards")  # type: ignore[attr-defined]
    fake.run = lambda args: calls.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "avtime.training.eval.pretext", fake)
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    args = parser.parse_args(["pretext", "--shards", "s3://b/x"])
    assert eval_cmd.run(args) == 0 and calls[0].shards == "s3://b/x"
    args = parser.parse_args(["action", "--checkpoint", "random", "--dataset", "ucf101",
                              "--root", "/nowhere", "--mode", "finetune"])  # fmt: skip
    assert args.protocol == "action" and args.mode == "finetune" and args.split == 1
