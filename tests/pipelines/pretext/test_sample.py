"""`avtime sample`: the .npz contract and contact sheet, and the labels against the ground truth
of a real synthetic corpus (synth --ground-truth -> preprocess -> sample --no-augment -> decode
the frame-index code from the pixels and the audio time code from the waveforms)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import run_ingest
from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus
from avtime.pipelines.synth.groundtruth import decode_audio_clip, decode_frame_index
from avtime.training.cli.main import main as cli
from tests.pipelines.pretext.rows import make_row, write_shards

SPEEDS = (1, 2, 4, 8)
T = 16


@pytest.fixture(scope="module")
def mem_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("sample_shards")
    rows = [make_row(video_id=f"{v:016x}", num_frames=250, audio=v != 2) for v in range(4)]
    write_shards(rows, str(out), rows_per_shard=2)
    return str(out)


@pytest.mark.integration
def test_sample_writes_npz_contract_and_sheet(mem_shards: str, tmp_path: Path) -> None:
    out, png = tmp_path / "s.npz", tmp_path / "sheet.png"
    rc = cli(
        ["sample", mem_shards, "--n", "3", "--seed", "4", "--out", str(out), "--png", str(png)]
    )
    assert rc == 0
    d = np.load(out)
    n, s = 3, 112
    assert d["video"].shape == (n, 2, T, s, s, 3) and d["video"].dtype == np.uint8
    assert d["video_t"].shape == (n, 2, T) and d["video_t"].dtype == np.float64
    assert d["audio"].shape == (n, 2, 10240) and d["audio"].dtype == np.float32
    assert int(d["sample_rate"]) == 16000 and d["sample_rate"].shape == ()
    assert d["audio_span"].shape == (n, 2, 2) and d["audio_span"].dtype == np.float64
    for k in ("audio_speed", "audio_reverse", "label_video_speed", "label_audio_speed",
              "label_video_reverse", "label_audio_reverse", "label_av_order"):  # fmt: skip
        assert d[k].shape == (n, 2) and np.issubdtype(d[k].dtype, np.integer), k
    assert d["label_video_order"].shape == d["label_audio_order"].shape == (n,)
    names = json.loads(str(d["label_names"]))
    assert names["label_video_speed"] == ["x1", "x2", "x4", "x8"]
    assert names["label_av_order"] == ["first_before_second", "second_before_first", "overlap"]
    assert set(names) == {k for k in d.files if k.startswith("label_") and k != "label_names"}
    speeds = np.array(SPEEDS)[d["label_audio_speed"]]
    np.testing.assert_array_equal(speeds, d["audio_speed"])
    np.testing.assert_array_equal(d["label_audio_reverse"], d["audio_reverse"])
    sheet = Image.open(png)
    assert sheet.width >= 560 and sheet.height > 3 * 200
    # the same seed draws the same examples; another seed does not
    again = tmp_path / "again.npz"
    cli(["sample", mem_shards, "--n", "3", "--seed", "4", "--out", str(again)])
    np.testing.assert_array_equal(np.load(again)["video"], d["video"])
    cli(["sample", mem_shards, "--n", "3", "--seed", "5", "--out", str(again)])
    assert not np.array_equal(np.load(again)["video"], d["video"])


@pytest.fixture(scope="module")
def gt_shards(
    ray_local: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, float]]:
    """Two ground-truth synth videos of about 12 s (so a 10 s and a short last segment each)."""
    src = tmp_path_factory.mktemp("gt_src")
    dst = tmp_path_factory.mktemp("gt_shards") / "shards"
    cfg = SynthConfig(videos=2, seconds=12.0, duration_jitter=0.1, ground_truth=True, seed=3)
    sidecars = generate_corpus(src, cfg, workers=1)
    run_ingest(str(src), str(dst), IngestConfig(), workers=2, cpus_per_task=1.0)
    fps = {Path(m["path"]).name: float(m["fps"]) for m in sidecars}
    return str(dst), fps


def _order_ok(label: int, x: tuple[float, float], y: tuple[float, float], tol: float) -> bool:
    """Is `label` right for spans x, y measured with error up to `tol` seconds?"""
    if label == 0:
        return x[1] <= y[0] + tol
    if label == 1:
        return y[1] <= x[0] + tol
    return min(x[1], y[1]) - max(x[0], y[0]) > -tol


def _source_fps(shards: str, fps_by_name: dict[str, float]) -> dict[str, float]:
    """video_id -> the source video's frame rate (from the synth sidecars)."""
    out = {}
    for p in sorted(Path(shards).glob("part-*.parquet")):
        for r in pq.read_table(p, columns=["source", "video_id"]).to_pylist():
            out[r["video_id"]] = fps_by_name[Path(r["source"]).name]
    return out


@pytest.mark.integration
def test_labels_match_ground_truth_codes(
    gt_shards: tuple[str, dict[str, float]], tmp_path: Path
) -> None:
    shards, fps_by_name = gt_shards
    out = tmp_path / "gt.npz"
    assert cli(["sample", shards, "--n", "12", "--no-augment", "--out", str(out)]) == 0
    d = np.load(out)
    sr = int(d["sample_rate"])
    src_fps = _source_fps(shards, fps_by_name)
    assert len(d["video"]) >= 4
    for i in range(len(d["video"])):
        spans = []
        for c in range(2):
            codes = np.array([decode_frame_index(f) for f in d["video"][i, c]], dtype=float)
            fps = src_fps[str(d["video_id"][i])]
            shown = codes / fps
            assert np.abs(shown - d["video_t"][i, c]).max() <= 1.0 / fps + 1e-6
            speed = SPEEDS[int(d["label_video_speed"][i, c])]
            step = np.median(np.diff(shown))
            assert abs(abs(step) - speed / 25.0) <= 1.0 / fps, (step, speed)
            assert (step < 0) == bool(d["label_video_reverse"][i, c])
            v = (float(shown.min()), float(shown.min()) + T * speed / 25.0)
            truth = decode_audio_clip(d["audio"][i, c], sr, near=float(d["audio_span"][i, c, 0]))
            assert truth.speed == SPEEDS[int(d["label_audio_speed"][i, c])]
            assert truth.reverse == bool(d["label_audio_reverse"][i, c])
            assert abs(truth.start_s - d["audio_span"][i, c, 0]) < 0.03
            assert abs(truth.end_s - d["audio_span"][i, c, 1]) < 0.03
            spans.append((v, (truth.start_s, truth.end_s)))
        (v1, a1), (v2, a2) = spans
        tol = 0.05
        assert _order_ok(int(d["label_video_order"][i]), v1, v2, tol)
        assert _order_ok(int(d["label_audio_order"][i]), a1, a2, tol)
        assert _order_ok(int(d["label_av_order"][i, 0]), v1, a2, tol)
        assert _order_ok(int(d["label_av_order"][i, 1]), v2, a1, tol)
