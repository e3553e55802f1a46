"""The Ray Data pretext stream: contract batches, determinism per (seed, epoch), reshuffling
across epochs, the plain-Python iterator, and shards on S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avtime.pipelines import storage
from avtime.pipelines.config import AugmentConfig, DataConfig, PretextConfig, StreamConfig
from avtime.pipelines.pretext.stream import (
    build_pretext_dataset,
    iter_pretext_batches,
    iter_pretext_examples,
    segment_stats,
    shard_paths,
    source_key,
)
from tests.pipelines.pretext.rows import make_row, write_shards

CFG = DataConfig(
    pretext=PretextConfig(clip_frames=8),
    augment=AugmentConfig(crop_size=16),
    stream=StreamConfig(batch_size=4, rows_per_task=2, examples_per_row=2, seed=7),
)
ROWS = 9  # 8 usable rows (one with no audio, one short) + 1 too short to use


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("pretext_shards")
    rows = [
        make_row(video_id=f"{v:016x}", segment=s, num_frames=n, audio=audio, start_s=10.0 * s)
        for v, s, n, audio in [
            (1, 0, 120, True), (1, 1, 120, True), (1, 2, 60, True), (2, 0, 120, False),
            (3, 0, 120, True), (3, 1, 100, True), (4, 0, 120, True), (4, 1, 8, True),
            (5, 0, 120, True),
        ]
    ]  # fmt: skip
    write_shards(rows, str(out), rows_per_shard=4)
    return str(out)


def fingerprint(batch: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Per example: key, every label and a hash of its pixels and audio."""
    out = set()
    for i in range(len(batch["example_key"])):
        labels = tuple(
            np.asarray(batch[k][i]).tobytes() for k in sorted(batch) if k.startswith("label_")
        )
        media = hashlib.sha1()
        for k in ("video1", "video2", "audio1", "audio2"):
            media.update(np.ascontiguousarray(np.asarray(batch[k][i])).tobytes())
        out.add((int(batch["example_key"][i]), labels, media.hexdigest()))
    return out


def collect_ray(shards: str, epoch: int) -> set[tuple[Any, ...]]:
    ds = build_pretext_dataset(shards, CFG, epoch=epoch)
    found: set[tuple[Any, ...]] = set()
    for batch in ds.iter_batches(batch_size=5, batch_format="numpy"):
        found |= fingerprint(batch)
    return found


@pytest.mark.integration
def test_batches_follow_the_contract(ray_local: None, shards: str) -> None:
    ds = build_pretext_dataset(shards, CFG, epoch=0)
    n = 0
    for batch in ds.iter_torch_batches(batch_size=4):
        b = len(batch["video1"])
        assert batch["video1"].dtype == batch["video2"].dtype == __import__("torch").uint8
        assert tuple(batch["video1"].shape) == (b, 3, 8, 16, 16)
        assert tuple(batch["audio1"].shape) == (b, 10240)
        assert str(batch["audio2"].dtype) == "torch.float32"
        assert tuple(batch["label_av_order"].shape) == (b, 2)
        assert tuple(batch["label_video_order"].shape) == (b,)
        assert str(batch["label_video_speed"].dtype) == "torch.int64"
        assert float(batch["audio1"].abs().max()) <= 1.0
        n += b
    assert n == 8 * CFG.stream.examples_per_row  # the 8-frame row is skipped


@pytest.mark.integration
def test_deterministic_per_epoch_and_reshuffled_across_epochs(ray_local: None, shards: str) -> None:
    e0a, e0b, e1 = collect_ray(shards, 0), collect_ray(shards, 0), collect_ray(shards, 1)
    assert len(e0a) == 16 and e0a == e0b
    assert len(e1) == 16 and not (e0a & e1)  # new clips, labels or augmentations every epoch
    assert {k for k, _, _ in e0a} == {k for k, _, _ in e1}  # the same segments
    plain: set[tuple[Any, ...]] = set()
    for batch in iter_pretext_batches(shards, CFG, epoch=0):
        plain |= fingerprint(batch)
    assert plain == e0a  # the plain-Python iterator draws exactly the stream's examples


@pytest.mark.integration
def test_epochs_union_and_s3(ray_local: None, shards: str, s3_env: Any) -> None:
    bucket = s3_env.bucket("pretext-stream")
    for p in sorted(Path(shards).glob("part-*.parquet")) + [Path(shards) / "manifest.json"]:
        storage.put_file(p, f"{bucket}/shards/{p.name}")
    remote = f"{bucket}/shards"
    assert collect_ray(remote, 0) == collect_ray(shards, 0)
    both = build_pretext_dataset(remote, CFG, epoch=0, epochs=2)
    assert both.count() == 32
    assert segment_stats(remote, CFG)["skipped"] == 1


@pytest.mark.integration
def test_plain_iterator_workers_split_and_torch_loader(shards: str) -> None:

    examples = list(iter_pretext_examples(shards, CFG, epoch=0))
    keys = [int(e["example_key"]) for e in examples]
    # Every clip carries its video's source key: one per video, shared by its segments and repeats.
    by_video: dict[str, set[int]] = {}
    for e in examples:
        by_video.setdefault(str(e["video_id"]), set()).add(int(e["source_key"]))
    assert all(v == {source_key(vid)} for vid, v in by_video.items())
    assert len({source_key(vid) for vid in by_video}) == len(by_video) >= 2
    parts = [
        [int(e["example_key"]) for e in iter_pretext_examples(shards, CFG, worker=w, num_workers=2)]
        for w in range(2)
    ]
    assert sorted(keys) == sorted(parts[0] + parts[1]) and not set(parts[0]) & set(parts[1])
    total = sum(len(b["video1"]) for b in iter_pretext_batches(shards, CFG))
    assert total == len(keys) == 16
    stats = segment_stats(shards, CFG)
    # 4.8 s segments cannot hold a 5.12 s x8 audio clip: x8 is dropped (restricted)
    assert stats == {"ok": 0, "restricted": 8, "skipped": 1, "no_audio": 1}, stats


@pytest.mark.integration
def test_examples_per_epoch_counts_only_rows_the_sampler_uses(shards: str, tmp_path: Path) -> None:
    """The trainer sizes its stream by `examples_per_epoch`: it must equal what one epoch
    yields (the short row is skipped), or the stream runs out before the last steps."""
    import shutil

    from avtime.pipelines.schema import MANIFEST_NAME
    from avtime.training.engine.trainer import examples_per_epoch

    for p in Path(shards).glob("part-*.parquet"):
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(FileNotFoundError, match="avtime preprocess"):
        examples_per_epoch(str(tmp_path), CFG)
    shutil.copy(Path(shards) / MANIFEST_NAME, tmp_path / MANIFEST_NAME)
    yielded = sum(1 for _ in iter_pretext_examples(str(tmp_path), CFG, epoch=0))
    assert (
        examples_per_epoch(str(tmp_path), CFG)
        == yielded
        == (ROWS - 1) * CFG.stream.examples_per_row
    )
    too_long = replace(CFG, pretext=replace(CFG.pretext, clip_frames=400))
    with pytest.raises(ValueError, match="too short for the speeds"):
        examples_per_epoch(str(tmp_path), too_long)


@pytest.mark.unit
def test_sampling_priority_is_only_ever_lowered() -> None:
    """`lower_priority` raises niceness to the target and never back down (in a child process:
    niceness cannot be undone)."""
    code = (
        "import os\n"
        "from avtime.pipelines.pretext.stream import lower_priority\n"
        "lower_priority(5); a = os.nice(0)\n"
        "lower_priority(3); b = os.nice(0)\n"
        "lower_priority(-1); c = os.nice(0)\n"
        "print(a, b, c)\n"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    start = os.nice(0)
    assert out.stdout.split() == [str(max(start, 5))] * 3
    with pytest.raises(ValueError, match="nice must be"):
        StreamConfig(nice=20)
    assert StreamConfig().nice == 19


@pytest.mark.unit
def test_readers_take_the_shards_the_manifest_lists_and_no_others(
    shards: str, tmp_path: Path
) -> None:
    """A stray `part-*.parquet` (another run's leftover) is never read; a listed shard that is
    missing is an error naming it, not a short epoch."""
    import shutil

    for p in Path(shards).iterdir():
        shutil.copy(p, tmp_path / p.name)
    first = sorted(tmp_path.glob("part-*.parquet"))[0]
    shutil.copy(first, tmp_path / "part-99999-000.parquet")  # stray: same rows again
    listed = sorted(str(tmp_path / p.name) for p in Path(shards).glob("part-*"))
    assert shard_paths(str(tmp_path)) == listed
    keys = [int(e["example_key"]) for e in iter_pretext_examples(str(tmp_path), CFG, epoch=0)]
    assert len(keys) == len(set(keys)) == (ROWS - 1) * CFG.stream.examples_per_row
    first.unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of the 3 shards .* missing .*{first.name}"):
        next(iter(iter_pretext_examples(str(tmp_path), CFG, epoch=0)))
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        shard_paths(str(tmp_path / "nowhere"))
