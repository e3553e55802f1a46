"""Shared checks for the ingest tests: read a DST back and verify the contract."""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from avtime.pipelines import schema, storage


def read_dst(dst: str) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    """(manifest, all rows of the manifest's shards, rejects) of a finished DST."""
    manifest = schema.parse_manifest(storage.read_bytes(storage.join(dst, schema.MANIFEST_NAME)))
    fs, root = storage.arrow_filesystem(dst)
    tables = [
        pq.read_table(f"{root}/{s['path']}", filesystem=fs) for s in manifest["shards"]
    ]  # fmt: skip
    rows = pa.concat_tables(tables) if tables else schema.SEGMENT_SCHEMA.empty_table()
    rejects = pq.read_table(f"{root}/{schema.REJECTS_NAME}", filesystem=fs)
    return manifest, rows, rejects


def shard_files(dst: str) -> list[str]:
    """Names of the part-*.parquet files that exist in DST."""
    return sorted(
        u.rsplit("/", 1)[-1] for u in storage.list_files(dst, recursive=False)
        if schema.is_shard_name(u)
    )  # fmt: skip


def row_digests(rows: pa.Table) -> list[tuple[str, int, str]]:
    """Sorted (video_id, segment, digest of frames+audio) of every row."""
    out = []
    for r in rows.to_pylist():
        h = hashlib.sha1()
        for f in r["frames"]:
            h.update(f)
        h.update(r["audio"] or b"-")
        out.append((r["video_id"], r["segment"], h.hexdigest()))
    return sorted(out)


def check_contract(
    manifest: dict[str, Any], rows: pa.Table, rejects: pa.Table, *, ranged: bool = False
) -> None:
    """Assert the invariants of docs/CONTRACTS.md section 1 on a finished DST.

    `ranged`: the listing gave start/end times, so video_id hashes the URI plus its range.
    """
    assert rows.schema.remove_metadata() == schema.SEGMENT_SCHEMA.remove_metadata()
    assert rejects.schema == schema.REJECT_SCHEMA
    counts = manifest["counts"]
    assert counts["rows"] == rows.num_rows == sum(s["rows"] for s in manifest["shards"])
    assert counts["rejects"] == rejects.num_rows
    assert counts["sources_with_rows"] + counts["rejects"] == counts["inputs"]
    assert counts["inputs"] == len(manifest["inputs"])
    cfg = manifest["config"]
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.to_pylist():
        by_source[r["video_id"]].append(r)
        if not ranged:
            assert r["video_id"] == schema.video_id(r["source"])
        assert len(r["video_id"]) == 16 and int(r["video_id"], 16) >= 0
        assert r["num_frames"] == len(r["frames"]) > 0
        assert r["duration_s"] == r["num_frames"] / cfg["fps"]
        assert r["fps"] == cfg["fps"] and r["sample_rate"] == cfg["sample_rate"]
        assert min(r["width"], r["height"]) == cfg["short_side"]
        if r["audio"] is None:
            assert r["num_samples"] == 0
        else:
            assert len(r["audio"]) == 2 * r["num_samples"]
            assert r["num_samples"] == round(r["num_frames"] * cfg["sample_rate"] / cfg["fps"])
        for f in r["frames"][:: max(1, len(r["frames"]) // 4)]:
            img = Image.open(io.BytesIO(f))
            assert img.size == (r["width"], r["height"])
    sources = set(rows.column("source").to_pylist())
    assert not sources & set(rejects.column("source").to_pylist())
    for segs in by_source.values():
        segs.sort(key=lambda r: r["segment"])
        assert [r["segment"] for r in segs] == list(range(len(segs)))
        for a, b in zip(segs, segs[1:]):
            assert abs(b["start_s"] - (a["start_s"] + a["duration_s"])) < 1e-9


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
