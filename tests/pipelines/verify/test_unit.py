"""Unit tests of the verify checks on segment tables built in memory (no Ray, no mp4)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from avtime.pipelines.schema import SEGMENT_SCHEMA, rows_to_table
from avtime.pipelines.verify.job import (
    VerifyError,
    check_shard,
    load_manifest,
    shard_presence_problems,
)
from avtime.pipelines.verify.report import KINDS, Problem, build_report, summary_text, write_png
from avtime.pipelines.verify.rows import (
    check_batch,
    check_parquet,
    duplicate_problems,
    is_sampled,
    record_problems,
    schema_problems,
    tiling_problems,
)

FPS, N, W, H, SR = 10.0, 5, 16, 12, 8000


def _jpeg(w: int = W, h: int = H) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (40, 90, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def make_row(source: str = "a.mp4", segment: int = 0, **over: Any) -> dict[str, Any]:
    """A valid segment row: N frames at FPS, audio of exactly the same length."""
    samples = int(N / FPS * SR)
    row = {
        "video_id": "0" * 16,
        "source": source,
        "segment": segment,
        "start_s": segment * N / FPS,
        "duration_s": N / FPS,
        "fps": FPS,
        "num_frames": N,
        "height": H,
        "width": W,
        "frames": [_jpeg()] * N,
        "sample_rate": SR,
        "num_samples": samples,
        "audio": b"\x00\x01" * samples,
        "label": "dog",
        "split": "train",
    }
    row.update(over)
    return row


def kinds_of(rows: list[dict[str, Any]], fraction: float = 1.0) -> list[str]:
    records = check_batch(rows_to_table(rows), shard="s", first_row=0, sample_fraction=fraction)
    return sorted(p.kind for p in record_problems(records))


@pytest.mark.unit
def test_clean_rows_have_no_problems() -> None:
    rows = [make_row(segment=k) for k in range(3)] + [make_row("b.mp4", audio=None, num_samples=0)]
    records = check_batch(rows_to_table(rows), shard="s", first_row=0, sample_fraction=1.0)
    assert record_problems(records) == []
    assert records.column("has_audio").to_pylist() == [True, True, True, False]
    assert records.column("decoded").to_pylist() == [True] * 4
    assert tiling_problems(records) == [] and duplicate_problems(records) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("over", "kinds"),
    [
        ({"frames": [_jpeg()] * (N - 1)}, ["frame_count"]),
        ({"audio": b"\x00\x01" * 100}, ["audio_length"]),  # truncated bytes
        ({"audio": b"\x00" * 400, "num_samples": 200}, ["audio_length"]),  # 25 ms vs 500 ms
        ({"audio": None}, ["audio_length"]),  # num_samples > 0 but no audio
        ({"duration_s": 0.7}, ["duration_mismatch"]),
        ({"frames": [_jpeg()] * (N - 1) + [b"not a jpeg"]}, ["frame_decode"]),
        ({"frames": [_jpeg()] * (N - 1) + [_jpeg()[:200]]}, ["frame_decode"]),  # truncated JPEG
        ({"frames": [_jpeg()] * (N - 1) + [_jpeg(20, 12)]}, ["frame_size"]),
    ],
)
def test_each_row_defect_lands_under_one_kind(over: dict[str, Any], kinds: list[str]) -> None:
    assert kinds_of([make_row(**over)]) == kinds


@pytest.mark.unit
def test_audio_within_one_frame_passes_and_beyond_fails() -> None:
    one_frame = int(SR / FPS)
    ns_ok = int(N / FPS * SR) - one_frame
    assert kinds_of([make_row(num_samples=ns_ok, audio=b"\x00\x00" * ns_ok)]) == []
    ns_bad = ns_ok - 1
    assert kinds_of([make_row(num_samples=ns_bad, audio=b"\x00\x00" * ns_bad)]) == ["audio_length"]


@pytest.mark.unit
def test_sample_fraction_zero_skips_frame_decode_only() -> None:
    row = make_row(frames=[b"junk"] * N, duration_s=9.0)
    assert kinds_of([row], fraction=0.0) == ["duration_mismatch"]
    assert kinds_of([row], fraction=1.0) == ["duration_mismatch", "frame_decode"]


@pytest.mark.unit
def test_sampling_is_stable_and_near_the_fraction() -> None:
    picks = [is_sampled("s3://b/v.mp4", k, 0.25, seed=3) for k in range(4000)]
    assert picks == [is_sampled("s3://b/v.mp4", k, 0.25, seed=3) for k in range(4000)]
    assert 0.2 < sum(picks) / len(picks) < 0.3
    assert picks != [is_sampled("s3://b/v.mp4", k, 0.25, seed=4) for k in range(4000)]


@pytest.mark.unit
def test_tiling_gap_overlap_and_missing_index() -> None:
    rows = [make_row(segment=k) for k in range(4)]
    rows[1]["start_s"] += 0.2  # 1 starts late (gap after 0) and 2 starts inside 1 (overlap)
    records = check_batch(rows_to_table(rows), shard="s", first_row=0, sample_fraction=0.0)
    found = sorted((p.kind, p.segment) for p in tiling_problems(records))
    assert found == [("tiling_gap", 1), ("tiling_overlap", 2)]
    rows[1]["start_s"] -= 0.2
    holes = check_batch(
        rows_to_table([r for r in rows if r["segment"] != 2]),
        shard="s",
        first_row=0,
        sample_fraction=0.0,
    )
    assert [(p.kind, p.segment) for p in tiling_problems(holes)] == [("tiling_gap", 2)]
    assert tiling_problems(holes, check_indices=False) == []


@pytest.mark.unit
def test_duplicates_are_counted_once_per_extra_copy() -> None:
    rows = [make_row(segment=0), make_row(segment=1), make_row(segment=1), make_row(segment=1)]
    records = check_batch(rows_to_table(rows), shard="s", first_row=0, sample_fraction=0.0)
    dups = duplicate_problems(records)
    assert [(p.kind, p.segment) for p in dups] == [("duplicate_row", 1)] * 2
    assert tiling_problems(records) == []  # identical copies do not break the tiling


@pytest.mark.unit
def test_schema_problems_name_version_and_columns() -> None:
    assert schema_problems(SEGMENT_SCHEMA, 1) == []
    assert "manifest says 2" in schema_problems(SEGMENT_SCHEMA, 2)[0]
    no_fps = SEGMENT_SCHEMA.remove(SEGMENT_SCHEMA.get_field_index("fps"))
    assert any("'fps' is missing" in d for d in schema_problems(no_fps, 1))
    bare = SEGMENT_SCHEMA.remove_metadata()
    assert any("version None" in d for d in schema_problems(bare, 1))


@pytest.mark.unit
def test_check_parquet_reads_in_batches_and_reports_shard_rows(tmp_path: Path) -> None:
    rows = [make_row(segment=k) for k in range(11)]
    pq.write_table(rows_to_table(rows), tmp_path / "part-00000-000.parquet", row_group_size=4)
    pf = pq.ParquetFile(tmp_path / "part-00000-000.parquet")
    out = check_parquet(pf, shard="p", expected_version=1, sample_fraction=1.0, batch_rows=3)
    assert out.column("row").to_pylist() == list(range(11)) + [-1]
    assert out.column("shard_rows").to_pylist()[-1] == 11
    assert record_problems(out) == []
    wrong = check_parquet(pf, shard="p", expected_version=2, sample_fraction=0.0)
    assert [p.kind for p in record_problems(wrong)] == ["schema_version"]


@pytest.mark.unit
def test_unreadable_shard_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "part-00000-000.parquet").write_bytes(b"PAR1 but not really")
    out = check_shard(str(tmp_path), "part-00000-000.parquet", 1, 1.0, 0)
    assert [p.kind for p in record_problems(out)] == ["shard_read"]


@pytest.mark.unit
def test_presence_finds_missing_and_stray_shards(tmp_path: Path) -> None:
    for name in ("part-00000-000.parquet", "part-00009-000.parquet", ".part-x.parquet.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "rejects.parquet").write_bytes(b"x")
    (tmp_path / "_tmp" / "abc").mkdir(parents=True)
    (tmp_path / "_tmp" / "abc" / "part-00003-000.parquet").write_bytes(b"x")
    notes: list[str] = []
    found = shard_presence_problems(
        str(tmp_path), ["part-00000-000.parquet", "part-00001-000.parquet"], notes
    )
    assert sorted((p.kind, p.shard) for p in found) == [
        ("missing_shard", "part-00001-000.parquet"),
        ("stray_shard", "part-00009-000.parquet"),
    ]
    assert notes == ["1 unfinished shard files in scratch folders (e.g. _tmp/)"]


@pytest.mark.unit
def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="no manifest.json"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(VerifyError, match="not valid JSON"):
        load_manifest(str(tmp_path))
    doc = {"schema_version": 7, "shards": [], "counts": {}, "config": {}, "frame_format": "jpeg"}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    _, problems = load_manifest(str(tmp_path))
    assert [p.kind for p in problems] == ["schema_version"]


@pytest.mark.unit
def test_report_summary_json_and_png(tmp_path: Path) -> None:
    rows = [make_row(segment=k) for k in range(3)] + [make_row("b.mp4", label=None)]
    records = check_batch(rows_to_table(rows), shard="s", first_row=0, sample_fraction=1.0)
    problems = [
        Problem(kind="audio_length", source="a.mp4", segment=1, detail="short"),
        Problem(kind="frame_count", source="a.mp4", segment=1, detail="4 frames"),
        Problem(kind="frame_count", source="b.mp4", segment=0, detail="4 frames"),
        Problem(kind="stray_shard", shard="part-9.parquet", detail="unlisted"),
    ]
    report = build_report(
        uri="x", problems=problems, rows=records, rows_decoded=4, sample_fraction=1.0,
        shards_listed=1, shards_checked=1, notes=[],
    )  # fmt: skip
    assert not report.ok and report.total_problems == 4
    assert report.problem_counts == {"frame_count": 2, "audio_length": 1, "stray_shard": 1}
    assert report.worst[0] == {
        "source": "a.mp4", "segment": 1, "problems": 2, "kinds": {"audio_length": 1, "frame_count": 1}
    }  # fmt: skip
    doc = json.loads(report.to_json())
    assert doc["rows_checked"] == 4 and doc["problems"]["frame_count"] == 2
    assert doc["distributions"]["label"] == {"dog": 3, "(none)": 1}
    assert doc["distributions"]["audio"] == {"present": 4, "absent": 0}
    text = summary_text(report)
    assert "PROBLEMS: 4" in text and KINDS["stray_shard"] in text and "a.mp4 #1" in text
    write_png(report, tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as im:
        assert im.size[0] > 600 and im.size[1] > 400


@pytest.mark.unit
def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown problem kind"):
        Problem(kind="bogus", detail="")


@pytest.mark.unit
def test_cli_cannot_verify_exits_2_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avtime.training.cli.main import main

    assert main(["verify", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--sample-fraction", "1.5"]) == 2
    assert "--sample-fraction must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.unit
def test_dead_s3_endpoint_fails_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from avtime.pipelines.storage import StorageError
    from avtime.pipelines.verify.job import verify_dataset
    from tests.servers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    with pytest.raises(StorageError, match="cannot connect") as info:
        verify_dataset("s3://bucket/shards")
    assert endpoint in str(info.value) and "very-secret-value" not in str(info.value)
