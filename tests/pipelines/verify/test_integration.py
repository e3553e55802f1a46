"""`avtime verify` on real `avtime preprocess` output of real mp4 files, clean and corrupted.

The clean dataset is built once per module (synth 3 short videos -> preprocess at 10 fps, 1 s
segments); each test corrupts its own copy on purpose and checks that exactly the expected
problem kinds are reported.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.verify.job import verify_dataset
from tests.servers import S3Server, scoped_environ

Rows = list[dict[str, Any]]


@pytest.fixture(scope="module")
def ray_with_aws_env(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[None]:
    """Local Ray started *after* the AWS variables are set, so its workers can reach S3."""
    with scoped_environ(s3_server.env):
        request.getfixturevalue("ray_local")
        yield


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, ray_with_aws_env: None) -> Path:
    """A clean dataset: 3 synthetic videos of ~2.4 s, preprocessed into 1 s segments."""
    from avtime.pipelines.ingest.job import run_ingest
    from avtime.pipelines.synth.corpus import SynthConfig, generate_corpus

    root = tmp_path_factory.mktemp("verify")
    corpus = root / "corpus"
    generate_corpus(corpus, SynthConfig(videos=3, seconds=2.4, duration_jitter=0.1), workers=1)
    cfg = IngestConfig(fps=10.0, short_side=32, sample_rate=8000, segment_seconds=1.0)
    dst = root / "shards"
    res = run_ingest(str(corpus), str(dst), cfg, labels=str(corpus / "labels.csv"), workers=1)
    assert res.rows >= 6 and res.rejects == 0
    return dst


@pytest.fixture
def copy(clean: Path, tmp_path: Path) -> Path:
    """A fresh copy of the clean dataset for one test to corrupt."""
    return Path(shutil.copytree(clean, tmp_path / "shards"))


def manifest(ds: Path) -> dict[str, Any]:
    return dict(json.loads((ds / "manifest.json").read_text()))


def shard_paths(ds: Path) -> list[Path]:
    return [ds / s["path"] for s in manifest(ds)["shards"]]


def rewrite(path: Path, edit: Callable[[Rows], Rows], metadata: dict | None = None) -> None:
    """Read a shard, edit its rows, write it back with the same schema (manifest untouched)."""
    table = pq.read_table(path)
    schema = table.schema.with_metadata(metadata) if metadata else table.schema
    pq.write_table(pa.Table.from_pylist(edit(table.to_pylist()), schema=schema), path)


def longest_shard(ds: Path) -> Path:
    """The shard with the most segments (one source per shard here; >= 3 segments)."""
    path = max(shard_paths(ds), key=lambda p: pq.ParquetFile(p).metadata.num_rows)
    assert pq.ParquetFile(path).metadata.num_rows >= 3
    return path


def first_row(path: Path) -> tuple[str, int]:
    row = pq.read_table(path, columns=["source", "segment"]).to_pylist()[0]
    return row["source"], row["segment"]


def _edit_row(index: int, **changes: Callable[[Any], Any]) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        rows = sorted(rows, key=lambda r: r["segment"])
        for key, fn in changes.items():
            rows[index][key] = fn(rows[index][key])
        return rows

    return edit


def truncate_audio(ds: Path) -> None:
    rewrite(longest_shard(ds), _edit_row(0, audio=lambda a: a[: len(a) // 2]))


def shift_start(ds: Path) -> None:
    rewrite(longest_shard(ds), _edit_row(1, start_s=lambda s: s + 0.3))


def drop_frame(ds: Path) -> None:
    rewrite(longest_shard(ds), _edit_row(0, frames=lambda f: f[:-1]))


def duplicate_row(ds: Path) -> None:
    rewrite(longest_shard(ds), lambda rows: [*rows, dict(rows[0])])


def delete_shard(ds: Path) -> None:
    os.remove(shard_paths(ds)[0])


def add_stray_shard(ds: Path) -> None:
    shutil.copyfile(shard_paths(ds)[0], ds / "part-00099-000.parquet")


def bump_schema_version(ds: Path) -> None:
    rewrite(shard_paths(ds)[0], lambda rows: rows, metadata={"avtime.schema_version": "2"})


def garble_frame(ds: Path) -> None:
    rewrite(longest_shard(ds), _edit_row(0, frames=lambda f: [*f[:-1], f[-1][: len(f[-1]) // 3]]))


def add_phantom_input(ds: Path) -> None:
    doc = manifest(ds)
    doc["inputs"].append("/nowhere/phantom.mp4")
    doc["counts"]["inputs"] += 1
    (ds / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.integration
def test_clean_dataset_passes_with_zero_problems(copy: Path) -> None:
    report = verify_dataset(str(copy))
    counts = manifest(copy)["counts"]
    assert report.ok and report.problem_counts == {}
    assert report.rows_checked == counts["rows"] == report.rows_decoded
    assert report.shards_checked == report.shards_listed == len(shard_paths(copy))
    assert report.distributions["fps"] == {"10.0": counts["rows"]}
    assert sum(report.distributions["label"].values()) == counts["rows"]
    assert "(none)" not in report.distributions["label"]


CORRUPTIONS = [
    (truncate_audio, {"audio_length"}, 0),
    (shift_start, {"tiling_gap", "tiling_overlap"}, 1),
    (drop_frame, {"frame_count"}, 0),
    (duplicate_row, {"duplicate_row", "row_count"}, 0),
    (delete_shard, {"missing_shard"}, None),
    (add_stray_shard, {"stray_shard"}, None),
    (bump_schema_version, {"schema_version"}, None),
    (garble_frame, {"frame_decode"}, 0),
    (add_phantom_input, {"missing_source"}, None),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("corrupt", "kinds", "segment"), CORRUPTIONS, ids=[c[0].__name__ for c in CORRUPTIONS]
)
def test_each_corruption_is_reported_under_its_own_kind(
    copy: Path, corrupt: Callable[[Path], None], kinds: set[str], segment: int | None
) -> None:
    corrupt(copy)
    report = verify_dataset(str(copy))
    assert set(report.problem_counts) == kinds, report.problems
    assert not report.ok
    if segment is not None:  # a row-level corruption: the worst offender is the corrupted row
        source, _ = first_row(longest_shard(copy))
        assert report.worst[0]["source"] == source
        assert report.worst[0]["segment"] in (segment, segment + 1)


@pytest.mark.integration
def test_sample_fraction_zero_skips_only_the_frame_decode(copy: Path) -> None:
    garble_frame(copy)
    truncate_audio(copy)
    report = verify_dataset(str(copy), sample_fraction=0.0)
    assert report.rows_decoded == 0 and report.rows_checked > 0
    assert set(report.problem_counts) == {"audio_length"}


@pytest.mark.integration
def test_cli_json_last_line_png_and_exit_status(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avtime.training.cli.main import main

    png = tmp_path / "report.png"
    assert main(["verify", str(copy), "--json", "--png", str(png)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["rows_checked"] == manifest(copy)["counts"]["rows"] and doc["problems"] == {}
    assert png.stat().st_size > 10_000
    add_stray_shard(copy)
    assert main(["verify", str(copy), "--json"]) == 1
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["problems"] == {"stray_shard": 1}
    assert "part-00099-000.parquet" in out


@pytest.mark.integration
def test_s3_clean_passes_and_stray_is_found(clean: Path, s3_server: S3Server) -> None:
    bucket = s3_server.bucket("avtime-verify")
    fs = s3_server.filesystem()
    prefix = "avtime-verify/clean"
    fs.put(str(clean), prefix, recursive=True)
    uri = f"{bucket}/clean"
    report = verify_dataset(uri, sample_fraction=0.5)
    assert report.ok, report.problems
    assert report.rows_checked == manifest(clean)["counts"]["rows"]
    fs.copy(f"{prefix}/{shard_paths(clean)[0].name}", f"{prefix}/part-00099-000.parquet")
    assert set(verify_dataset(uri, sample_fraction=0.0).problem_counts) == {"stray_shard"}
