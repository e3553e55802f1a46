"""`avtime preprocess` on local disk with a real local Ray: accounting over the odd corpus,
listings with labels and ranges, resume, orphan clean-up, exit codes."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avtime.pipelines import schema
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.job import IngestError, run_ingest
from avtime.pipelines.ingest.listing import InputItem, list_inputs
from avtime.training.cli.main import main
from tests.media import odd_corpus
from tests.pipelines.ingest.helpers import check_contract, read_dst, row_digests, shard_files

CFG = IngestConfig(segment_seconds=1.0, rows_per_shard=8, rows_per_row_group=4)
EXPECTED_REJECTS = {
    "audio_only.mp4": "NoVideoStream",
    "not_video.mp4": "NotMedia",
    "zero.mov": "EmptyFile",
    "truncated_mp4.mp4": "NotMedia",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    odd_corpus(folder)
    (folder / "notes.txt").write_text("not listed: not a media extension\n")
    return folder


@pytest.fixture(scope="module")
def ingested(corpus: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    dst = tmp_path_factory.mktemp("out") / "shards"
    run_ingest(str(corpus), str(dst), CFG, workers=2)
    return dst


@pytest.mark.integration
def test_every_input_is_rows_or_a_reject(corpus: Path, ingested: Path) -> None:
    manifest, rows, rejects = read_dst(str(ingested))
    check_contract(manifest, rows, rejects)
    media = sorted(p.name for p in corpus.iterdir() if p.suffix != ".txt")
    assert sorted(Path(s).name for s in manifest["inputs"]) == media
    got = {Path(r["source"]).name: r["error_type"] for r in rejects.to_pylist()}
    assert got == EXPECTED_REJECTS
    assert {r["stage"] for r in rejects.to_pylist()} == {"probe"}
    with_rows = {Path(s).name for s in rows.column("source").to_pylist()}
    assert with_rows == set(media) - set(EXPECTED_REJECTS)
    assert manifest["counts"]["partial"] == len(manifest["partial"])
    assert shard_files(str(ingested)) == sorted(s["path"] for s in manifest["shards"])
    assert not (ingested / "_tmp").exists()


@pytest.mark.integration
def test_rows_of_odd_inputs(ingested: Path) -> None:
    _, rows, _ = read_dst(str(ingested))
    by_name: dict[str, list[dict]] = {}
    for r in rows.to_pylist():
        by_name.setdefault(Path(r["source"]).name, []).append(r)
    assert all(r["audio"] is None for r in by_name["no_audio.mp4"])
    assert all(r["audio"] is not None for r in by_name["surround.mp4"])
    assert {(r["width"], r["height"]) for r in by_name["rotated.mp4"]} == {(128, 214)}
    assert {(r["width"], r["height"]) for r in by_name["uhd.mp4"]} == {(228, 128)}
    assert len(by_name["long.mkv"]) == 25  # 25 s in 1 s segments
    assert sum(r["num_frames"] for r in by_name["truncated.mkv"]) < 75


@pytest.mark.integration
def test_manifest_has_config_and_no_credentials(ingested: Path) -> None:
    text = (ingested / schema.MANIFEST_NAME).read_text()
    doc = schema.parse_manifest(text)
    assert doc["frame_format"] == "jpeg" and doc["config"]["segment_seconds"] == 1.0
    assert "SECRET" not in text.upper() and "AWS_" not in text


@pytest.mark.integration
def test_rerun_skips_finished_inputs_and_adds_new_ones(
    corpus: Path, tmp_path: Path, ray_local: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("plain.mp4", "no_audio.mp4", "zero.mov"):
        shutil.copy(corpus / name, src / name)
    dst = tmp_path / "dst"
    first = run_ingest(str(src), str(dst), CFG, workers=2)
    _, rows1, _ = read_dst(str(dst))
    again = run_ingest(str(src), str(dst), CFG, workers=2)
    assert again.skipped_inputs == 3 and again.run_video_seconds == 0
    _, rows2, _ = read_dst(str(dst))
    assert row_digests(rows1) == row_digests(rows2)
    shutil.copy(corpus / "plain.webm", src / "plain.webm")
    more = run_ingest(str(src), str(dst), CFG, workers=2)
    assert more.skipped_inputs == 3 and more.inputs == 4
    assert more.rows == first.rows + 2 and more.rejects == 1
    manifest, rows3, rejects = read_dst(str(dst))
    check_contract(manifest, rows3, rejects)


@pytest.mark.integration
def test_orphan_shards_and_temp_files_are_removed(
    corpus: Path, tmp_path: Path, ray_local: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus / "plain.mkv", src / "a.mkv")
    dst = tmp_path / "dst"
    run_ingest(str(src), str(dst), CFG, workers=1)
    orphan = dst / schema.shard_name(99, 0)
    shutil.copy(dst / shard_files(str(dst))[0], orphan)  # as a killed run would leave it
    (dst / "_tmp" / "x").mkdir(parents=True)
    (dst / "_tmp" / "x" / "half.parquet").write_bytes(b"PAR1")
    shutil.copy(corpus / "plain.mov", src / "b.mov")
    run_ingest(str(src), str(dst), CFG, workers=1)
    assert not orphan.exists() and not (dst / "_tmp").exists()
    manifest, rows, rejects = read_dst(str(dst))
    check_contract(manifest, rows, rejects)
    assert len(set(rows.column("source").to_pylist())) == 2


@pytest.mark.integration
def test_other_settings_on_the_same_dst_are_refused(
    corpus: Path, tmp_path: Path, ray_local: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus / "plain.mp4", src / "a.mp4")
    run_ingest(str(src), str(tmp_path / "dst"), CFG, workers=1)
    with pytest.raises(IngestError, match="fps=25.0"):
        run_ingest(str(src), str(tmp_path / "dst"), replace(CFG, fps=10.0), workers=1)


@pytest.mark.integration
def test_csv_listing_with_labels_splits_and_ranges(
    corpus: Path, tmp_path: Path, ray_local: None
) -> None:
    listing = tmp_path / "list.csv"
    rel = Path("..") / corpus.name
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "time_start", "time_end"])
        w.writerow([str(corpus / "long.mkv"), "dog", "train", "2", "4.5"])
        w.writerow([str(corpus / "long.mkv"), "cat", "val", "10", "12"])
        w.writerow([str(rel / "plain.mp4"), "dog", "test", "", ""])
    dst = tmp_path / "dst"
    res = run_ingest(str(listing), str(dst), CFG, workers=2)
    assert res.inputs == 3 and res.rejects == 0
    manifest, rows, rejects = read_dst(str(dst))
    check_contract(manifest, rows, rejects, ranged=True)
    got = sorted(
        (Path(r["source"]).name, r["label"], r["split"], r["segment"], r["start_s"])
        for r in rows.to_pylist()
    )  # fmt: skip
    assert got == [
        ("long.mkv", "cat", "val", 0, 10.0), ("long.mkv", "cat", "val", 1, 11.0),
        ("long.mkv", "dog", "train", 0, 2.0), ("long.mkv", "dog", "train", 1, 3.0),
        ("long.mkv", "dog", "train", 2, 4.0),
        ("plain.mp4", "dog", "test", 0, 0.0), ("plain.mp4", "dog", "test", 1, 1.0),
    ]  # fmt: skip
    assert len(set(rows.column("video_id").to_pylist())) == 3


@pytest.mark.unit
def test_jsonl_listing_and_labels_csv(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    for n in ("a.mp4", "b.MKV", "c.txt", ".hidden.mp4"):
        (tmp_path / "v" / n).write_bytes(b"x")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,split\na.mp4,walk,train\nb,run,\n")
    listing = list_inputs(str(tmp_path / "v"), str(labels))
    items, skipped = listing.items, listing.not_media
    assert [(Path(i.source).name, i.label, i.split) for i in items] == [
        ("a.mp4", "walk", "train"), ("b.MKV", "run", None),
    ]  # fmt: skip
    assert skipped == 2
    single = list_inputs(str(tmp_path / "v" / "a.mp4")).items  # one file is a SRC too
    assert single == (InputItem(source=str(tmp_path / "v" / "a.mp4")),)
    jsonl = tmp_path / "l.jsonl"
    lines = [{"uri": "s3://b/x.mp4", "label": "a", "start_s": 1.5, "end_s": 3}, {"path": "y.mp4"}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines + lines[:1]))
    listing = list_inputs(str(jsonl))
    assert listing.items == (
        InputItem(source="s3://b/x.mp4", label="a", start_s=1.5, end_s=3.0),
        InputItem(source=str(tmp_path / "y.mp4")),
    )
    assert listing.duplicates == 1  # the repeated first line is folded and counted
    items = listing.items
    assert items[0].key == "s3://b/x.mp4#t=1.5,3"


@pytest.mark.unit
def test_bad_listings_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label\ncat\n")
    with pytest.raises(ValueError, match="no URI column"):
        list_inputs(str(bad))
    bad.write_text("path,start_s,end_s\na.mp4,5,2\n")
    with pytest.raises(ValueError, match="not after start"):
        list_inputs(str(bad))
    with pytest.raises(ValueError, match="neither a folder"):
        list_inputs(str(tmp_path / "missing"))
    bad.write_bytes(b"path\n\xff\xfeclip.mp4\n")  # Latin-1 / UTF-16 bytes, not UTF-8
    with pytest.raises(ValueError, match="not UTF-8 text .*0xff"):
        list_inputs(str(bad))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"uri": "a.mp4"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        list_inputs(str(jsonl))


@pytest.mark.unit
def test_labels_that_match_nothing_or_lack_columns_fail(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    for n in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / n).write_bytes(b"x")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\na.mp4,walk\n")  # no label column
    with pytest.raises(ValueError, match="expected path,label"):
        list_inputs(str(tmp_path / "v"), str(labels))
    labels.write_text("path,label\nzzz.mp4,walk\n")  # matches no input
    with pytest.raises(ValueError, match="no row matches any of the 2 inputs"):
        list_inputs(str(tmp_path / "v"), str(labels))
    labels.write_text("path,label\nb.mp4,run\n")
    items = list_inputs(str(tmp_path / "v"), str(labels)).items
    assert [(Path(i.source).name, i.label) for i in items] == [("a.mp4", None), ("b.mp4", "run")]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        ("csv", "a.mp4,walk,train", "a.mp4,run,train"),  # another label
        ("csv", "a.mp4,walk,train", "a.mp4,walk,test"),  # another split: train -> test
        ("jsonl", '{"path": "a.mp4", "label": "walk"}', '{"path": "a.mp4", "label": "run"}'),
        ("labels", "a.mp4,walk,train", "a.mp4,walk,test"),
        ("labels", "a.mp4,walk,train", "a.mp4,run,train"),
    ],
)
def test_a_path_listed_twice_with_other_labels_or_splits_is_refused(
    tmp_path: Path, kind: str, first: str, second: str
) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    header = "path,label,split\n" if kind != "jsonl" else ""
    name = {"csv": "l.csv", "jsonl": "l.jsonl", "labels": "labels.csv"}[kind]
    (tmp_path / name).write_text(f"{header}{first}\n{second}\n")
    src, labels = (
        (str(tmp_path), str(tmp_path / name)) if kind == "labels" else (str(tmp_path / name), None)
    )
    with pytest.raises(
        ValueError, match="a.mp4 is listed twice with different labels or splits"
    ) as err:
        list_inputs(src, labels)
    values = [v for v in ("walk", "run", "train", "test") if v in first + second]
    assert all(repr(v) in str(err.value) for v in values), str(err.value)


@pytest.mark.unit
def test_exact_duplicates_are_folded_and_counted(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    listing = tmp_path / "l.csv"
    listing.write_text(
        "path,label,split\nv/a.mp4,walk,train\nv/a.mp4,walk,train\nv/b.mp4,run,test\n"
    )
    got = list_inputs(str(listing))
    assert [(Path(i.source).name, i.label, i.split) for i in got.items] == [
        ("a.mp4", "walk", "train"), ("b.mp4", "run", "test"),
    ]  # fmt: skip
    assert got.duplicates == 1
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.mp4,walk\na.mp4,walk\na.mp4,walk\n")
    got = list_inputs(str(tmp_path / "v"), str(labels))
    assert [i.label for i in got.items] == ["walk"] and got.duplicates == 2


@pytest.mark.unit
def test_a_listing_label_that_labels_contradicts_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "l.csv"
    listing.write_text("path,label,split\na.mp4,walk,train\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,split\na.mp4,walk,test\n")
    with pytest.raises(ValueError, match=r"listed twice .*split='train'.*split='test'"):
        list_inputs(str(listing), str(labels))
    labels.write_text("path,label\na.mp4,walk\n")  # agrees: kept, split from the listing
    assert [(i.label, i.split) for i in list_inputs(str(listing), str(labels)).items] == [
        ("walk", "train")
    ]


@pytest.mark.unit
def test_audio_only_files_are_listed_so_they_become_rejects(tmp_path: Path) -> None:
    for n in ("song.m4a", "talk.MP3", "clip.mp4", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    listing = list_inputs(str(tmp_path))
    items, skipped = listing.items, listing.not_media
    assert sorted(Path(i.source).name for i in items) == ["clip.mp4", "song.m4a", "talk.MP3"]
    assert skipped == 1


@pytest.mark.integration
def test_cli_exit_status_and_summary(
    corpus: Path, tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("audio_only.mp4", "zero.mov"):
        shutil.copy(corpus / name, bad / name)
    shutil.copy(corpus / "audio_only.mp4", bad / "song.m4a")  # an audio file is an input too
    assert main(["preprocess", str(bad), str(tmp_path / "o1"), "--workers", "1"]) == 1
    out, err = capsys.readouterr()
    assert "no usable rows" in err
    assert out.strip().splitlines()[-1].startswith("preprocess: 3 inputs -> 0 rows")
    rejects = pq.read_table(tmp_path / "o1" / "rejects.parquet").to_pylist()
    song = [r for r in rejects if r["source"].endswith("song.m4a")]
    assert len(rejects) == 3 and song[0]["error_type"] == "NoVideoStream"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("plain.mp4", "zero.mov"):
        shutil.copy(corpus / name, mixed / name)
    argv = ["preprocess", str(mixed), str(tmp_path / "o2"), "--workers", "1"]
    assert main([*argv, "--max-reject-fraction", "0.25"]) == 1
    assert "exceeds" in capsys.readouterr().err
    assert main([*argv, "--max-reject-fraction", "0.5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 inputs -> 1 rows" in last and "1 rejects" in last and "s of video" in last
