"""Pure parts of `avtime embed`: the row format, the parts, the destination check, clip spans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avtime.training.eval.clips import ClipConfig
from avtime.training.eval.embed import (
    EmbedError,
    check_destination,
    part_groups,
    to_rows,
)
from avtime.training.eval.features import clip_spans

pytestmark = pytest.mark.unit


def test_rows_are_fixed_size_float32_lists_and_silent_clips_have_null_audio() -> None:
    feats = {
        "video_id": np.array(["a", "a", "b"]),
        "source": np.array(["s/a.mp4", "s/a.mp4", "s/b.mp4"]),
        "segment": np.array([0, 0, 3]),
        "clip": np.array([0, 1, 0]),
        "t_start": np.array([0.0, 0.5, 30.0]),
        "t_end": np.array([0.64, 1.14, 30.64]),
        "has_audio": np.array([1.0, 1.0, 0.0], dtype=np.float32),
        "feat_video": np.arange(12, dtype=np.float32).reshape(3, 4),
        "feat_audio": np.ones((3, 2), dtype=np.float32),
    }
    t = to_rows(feats, {"video": 4, "audio": 2})
    assert t.schema.field("video").type.list_size == 4
    assert str(t.schema.field("audio").type.value_type) == "float"
    assert t["video"].to_pylist()[2] == [8.0, 9.0, 10.0, 11.0]
    assert t["audio"].to_pylist() == [[1.0, 1.0], [1.0, 1.0], None]
    assert t["segment"].to_pylist() == [0, 0, 3] and t["t_start"].to_pylist()[2] == 30.0


def test_part_groups_cover_every_shard_once_in_order() -> None:
    paths = [f"s/part-{i}.parquet" for i in range(7)]
    groups = part_groups(paths, 3)
    assert [g for g, _ in groups] == ["part-00000", "part-00001", "part-00002"]
    assert [p for _, ps in groups for p in ps] == paths


def _manifest(folder: Path, **kw: object) -> None:
    base = {"kind": "avtime-embeddings", "checkpoint": "random", "checkpoint_uri": "random",
            "config_digest": "aaaa", "random_init": {"seed": 0}, "data": "d", "data_digest": "dd",
            "clips": {"clips_per_segment": 4}, "modalities": ["video"]}  # fmt: skip
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({**base, **kw}))


def test_destination_of_another_model_or_input_is_refused(tmp_path: Path) -> None:
    ident = {"kind": "avtime-embeddings", "checkpoint": "random", "checkpoint_uri": "random",
             "config_digest": "aaaa", "random_init": {"seed": 0}, "data_digest": "dd",
             "clips": {"clips_per_segment": 4}, "modalities": ["video"]}  # fmt: skip
    check_destination(str(tmp_path / "fresh"), ident)  # nothing there: fine
    _manifest(tmp_path / "same")
    check_destination(str(tmp_path / "same"), ident)
    _manifest(tmp_path / "model", config_digest="bbbb")
    with pytest.raises(EmbedError, match="another model"):
        check_destination(str(tmp_path / "model"), ident)
    _manifest(tmp_path / "clips", clips={"clips_per_segment": 8})
    with pytest.raises(EmbedError, match="clips differ"):
        check_destination(str(tmp_path / "clips"), ident)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps({"schema_version": 3}))
    with pytest.raises(EmbedError, match="did not write"):
        check_destination(str(tmp_path / "shards"), ident)


@pytest.mark.parametrize(
    ("frames", "k", "want"),
    [
        (50, 2, [(10.0, 10.64), (11.36, 12.0)]),  # starts 0 and 34 at 25 fps, T=16
        (10, 2, [(10.0, 10.4), (10.0, 10.4)]),  # shorter than a clip: the segment's span
        (50, 1, [(10.68, 11.32)]),  # one clip: the middle (start 17)
    ],
)
def test_clip_spans_follow_the_clip_starts(
    frames: int, k: int, want: list[tuple[float, float]]
) -> None:
    cfg = ClipConfig(clip_frames=16, crop_size=32, audio_seconds=1.0, sample_rate=16000,
                     clips_per_segment=k)  # fmt: skip
    row = {"frames": [b""] * frames, "fps": 25.0, "start_s": 10.0}
    got = clip_spans(row, cfg)
    assert np.allclose(got, want)


@pytest.mark.parametrize(
    ("frames", "start_s", "stride", "want"),
    [
        (75, 0.0, 0.5, [0, 13, 25, 38, 50, 63]),  # 12.5 -> 13, 37.5 -> 38 (half up)
        (75, 0.0, 0.7, [0, 18, 35, 53, 70]),  # 17.5 -> 18, 52.5 -> 53 (half up)
        (25, 1.0, 0.4, [5, 15]),  # grid 0.8 is before it, 1.2 -> 5, 1.6 -> 15, 2.0 the next's
        (25, 2.0, 0.4, [0, 10, 20]),  # ... 2.0 -> 0, 2.4 -> 10, 2.8 -> 20
        (10, 0.0, 1.0, [0]),  # a segment shorter than the stride
        (10, 0.45, 1.0, []),  # no grid time falls inside [0.45, 0.85)
    ],
)
def test_stride_starts_put_each_grid_time_in_one_segment(
    frames: int, start_s: float, stride: float, want: list[int]
) -> None:
    from fractions import Fraction

    from avtime.training.eval.clips import stride_starts

    got = stride_starts(frames, Fraction(25), Fraction(str(start_s)), Fraction(str(stride)))
    assert got == want


def test_stride_grid_tiles_consecutive_segments_exactly_once() -> None:
    """Three segments of 1 s at 25 fps, stride 0.4 s: the grid 0, 0.4, ..., 2.8 is cut once each,
    and the spans start at the grid times (which fall on whole frames here)."""
    cfg = ClipConfig(clip_frames=4, crop_size=32, audio_seconds=0.5, sample_rate=16000,
                     stride_s=0.4)  # fmt: skip
    starts = []
    for seg in range(3):
        row = {"frames": [b""] * 25, "fps": 25.0, "start_s": float(seg)}
        starts += [a for a, _ in clip_spans(row, cfg)]
    assert np.allclose(starts, [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8])


def test_stride_clip_ends_with_its_segment() -> None:
    cfg = ClipConfig(clip_frames=16, crop_size=32, audio_seconds=0.5, sample_rate=16000,
                     stride_s=0.8)  # fmt: skip
    row = {"frames": [b""] * 25, "fps": 25.0, "start_s": 0.0}
    assert np.allclose(clip_spans(row, cfg), [(0.0, 0.64), (0.8, 1.0)])  # 20 + 16 > 25 frames


def test_clip_config_refuses_a_negative_or_infinite_stride() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="stride_s"):
            ClipConfig(clip_frames=4, crop_size=32, audio_seconds=0.5, sample_rate=16000,
                       stride_s=bad)  # fmt: skip


def test_an_index_from_before_strides_is_still_the_same_clips(tmp_path: Path) -> None:
    """A manifest whose clip settings have no stride_s (written before --stride) matches a run
    with stride 0, and not one with a stride."""
    from dataclasses import asdict

    clip = ClipConfig(clip_frames=4, crop_size=32, audio_seconds=0.5, sample_rate=16000)
    ident = {"kind": "avtime-embeddings", "checkpoint_uri": "c", "config_digest": "d",
             "random_init": None, "data_digest": "x", "modalities": ["video"],
             "clips": asdict(clip)}  # fmt: skip
    old = {k: v for k, v in asdict(clip).items() if k != "stride_s"}
    (tmp_path / "manifest.json").write_text(json.dumps({**ident, "clips": old}))
    check_destination(str(tmp_path), ident)
    strided = {**ident, "clips": asdict(ClipConfig(**{**old, "stride_s": 1.0}))}
    with pytest.raises(EmbedError, match="clips"):
        check_destination(str(tmp_path), strided)
