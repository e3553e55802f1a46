"""manifest.json is the truth, and a damaged one is named in one message with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avtime.pipelines.pretext.stream import shard_paths
from avtime.pipelines.schema import SCHEMA_VERSION, ManifestError, listed_shards, parse_manifest

pytestmark = pytest.mark.unit


def _doc(shards: list[object]) -> dict[str, object]:
    return {
        "schema_version": SCHEMA_VERSION, "frame_format": "jpeg", "config": {}, "counts": {},
        "shards": shards,
    }  # fmt: skip


@pytest.mark.parametrize(
    "entry", [{"rows": 3}, {"path": ""}, {"path": 7}, "part-00000-000.parquet", None]
)
def test_a_shard_entry_without_a_path_is_named(entry: object) -> None:
    doc = _doc([{"path": "part-00000-000.parquet"}, entry])
    with pytest.raises(
        ManifestError, match=r"^s3://b/d/manifest.json: shard entry 1 .* has no 'path'"
    ):
        parse_manifest(json.dumps(doc), "s3://b/d/manifest.json")


def test_listed_shards_in_order() -> None:
    doc = _doc([{"path": "b.parquet", "rows": 1}, {"path": "a.parquet"}])
    assert listed_shards(parse_manifest(json.dumps(doc))) == ["b.parquet", "a.parquet"]


@pytest.mark.parametrize(
    ("text", "match"),
    [("{", "is not valid JSON"), ("[]", "expected a JSON object"),
     (json.dumps({**_doc([]), "schema_version": 0}), "schema_version 0"),
     (json.dumps({k: v for k, v in _doc([]).items() if k != "counts"}), "missing key 'counts'"),
     (json.dumps({**_doc([]), "shards": {}}), "'shards' is not a list")],
)  # fmt: skip
def test_other_damage_is_a_manifest_error(text: str, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest(text)


def test_readers_name_the_manifest_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_doc([{"rows": 2}])))
    with pytest.raises(ManifestError) as err:
        shard_paths(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path}/manifest.json: shard entry 0")
