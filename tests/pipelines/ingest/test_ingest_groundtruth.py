"""The synthetic corpus's ground-truth codes prove that ingest stores the right source frames and
audio: stored frame i of a segment shows source frame floor((start_s + i/fps) * source_fps) (the
latest source frame at or before that time), and the audio time code reads back start_s."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import run_ingest
from avtime.pipelines.synth import groundtruth as gt
from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus
from tests.pipelines.ingest.helpers import check_contract, read_dst

CFG = IngestConfig(segment_seconds=2.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(
        videos=3, seconds=4.0, duration_jitter=0.1, fps_choices=(24, 30, 50),
        sizes=((256, 144), (144, 256)), ground_truth=True,
    )  # fmt: skip
    metas = generate_corpus(out, cfg, workers=1)
    return out, {m["name"]: m for m in metas}


@pytest.mark.integration
def test_stored_frames_and_audio_match_the_ground_truth(
    synth: tuple[Path, dict[str, dict]], tmp_path: Path, ray_local: None
) -> None:
    src, metas = synth
    dst = tmp_path / "shards"
    res = run_ingest(str(src), str(dst), CFG, workers=2)
    assert res.rejects == 0 and res.sources_with_rows == len(metas)
    manifest, rows, rejects = read_dst(str(dst))
    check_contract(manifest, rows, rejects)
    stored: dict[str, int] = {}
    for row in rows.to_pylist():
        meta = metas[Path(row["source"]).stem]
        src_fps = meta["fps"]
        for i, jpeg in enumerate(row["frames"]):
            t = row["start_s"] + i / row["fps"]
            want = math.floor(t * src_fps + 1e-6)
            img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            assert gt.decode_frame_index(img) == want, (row["source"], row["segment"], i)
        stored[meta["name"]] = stored.get(meta["name"], 0) + row["num_frames"]
        wave = np.frombuffer(row["audio"], "<i2").astype(np.float32) / 32768
        clip = gt.decode_audio_clip(wave, row["sample_rate"], speeds=(1,), near=row["start_s"])
        assert abs(clip.first_s - row["start_s"]) < 0.02
        assert not clip.reverse
    for name, meta in metas.items():  # stored times i/25 < source duration num_frames/fps
        assert stored[name] == math.ceil(meta["num_frames"] * 25 / meta["fps"])


@pytest.mark.integration
def test_frame_rate_and_size_follow_the_config(
    synth: tuple[Path, dict[str, dict]], tmp_path: Path, ray_local: None
) -> None:
    src, metas = synth
    cfg = replace(CFG, fps=10.0, short_side=64, sample_rate=8000)
    dst = tmp_path / "small"
    run_ingest(str(src), str(dst), cfg, workers=2)
    _, rows, _ = read_dst(str(dst))
    for row in rows.to_pylist():
        meta = metas[Path(row["source"]).stem]
        assert min(row["width"], row["height"]) == 64
        assert (row["width"] > row["height"]) == (meta["width"] > meta["height"])
        assert row["num_samples"] == row["num_frames"] * 800
        for i in (0, row["num_frames"] - 1):
            img = np.asarray(Image.open(io.BytesIO(row["frames"][i])).convert("RGB"))
            want = math.floor((row["start_s"] + i / 10) * meta["fps"] + 1e-6)
            assert gt.decode_frame_index(img) == want
