"""The checks of `avtime verify` on rows: per row and per shard (run in Ray Data tasks), and across
rows (tiling, duplicates; run on the driver over light columns, never the frames).

Each shard becomes a table of *light records* (LIGHT_SCHEMA): one per segment row with its
position, size and problems, plus one shard record (`row == -1`) with the shard's own problems
and its actual row count. See docs/verify.md for every problem kind and the tolerances.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avtime.pipelines.schema import SEGMENT_SCHEMA
from avtime.pipelines.verify.report import Problem

TILING_TOL_S = 1e-3  # segments of a source must meet within 1 ms
DURATION_TOL_S = 1e-4  # duration_s must equal num_frames / fps within 0.1 ms
VERSION_KEY = b"avtime.schema_version"

LIGHT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("row", pa.int64()),  # row index within the shard; -1 for the shard record
        ("source", pa.string()),
        ("segment", pa.int32()),
        ("start_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("fps", pa.float32()),
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("has_audio", pa.bool_()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("decoded", pa.bool_()),  # frames were decoded (the row was sampled)
        ("shard_rows", pa.int64()),  # shard record only: rows actually in the shard
        ("kinds", pa.list_(pa.string())),
        ("details", pa.list_(pa.string())),
    ]
)
_META_COLUMNS = [n for n in LIGHT_SCHEMA.names if n in SEGMENT_SCHEMA.names]
_ROW_COLUMNS = [*_META_COLUMNS, "sample_rate", "num_samples"]  # read per row, besides frames/audio


def is_sampled(source: str, segment: int, fraction: float, seed: int = 0) -> bool:
    """Whether (source, segment) is in the frame-decode sample: a stable hash below `fraction`.

    Independent of shard layout and worker, so the same rows are sampled on every run.
    """
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.sha1(f"{seed}:{source}:{segment}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def schema_problems(schema: pa.Schema, expected_version: int) -> list[str]:
    """Why a shard's Arrow schema does not match schema version `expected_version` (or [])."""
    out = []
    raw = (schema.metadata or {}).get(VERSION_KEY)
    found = raw.decode() if raw is not None else None
    if found != str(expected_version):
        out.append(f"shard schema version {found!r}, manifest says {expected_version}")
    for want in SEGMENT_SCHEMA:
        idx = schema.get_field_index(want.name)
        if idx < 0:
            out.append(f"column {want.name!r} is missing")
        elif not schema.field(idx).type.equals(want.type):
            out.append(f"column {want.name!r} is {schema.field(idx).type}, expected {want.type}")
    return out


def metadata_problems(row: dict[str, Any], n_frames: int, audio_bytes: int | None) -> list[tuple]:
    """(kind, detail) pairs from a row's metadata, stored frame count and audio byte length."""
    out: list[tuple[str, str]] = []
    nf, fps, ns, sr = row["num_frames"], row["fps"], row["num_samples"], row["sample_rate"]
    if n_frames != nf:
        out.append(("frame_count", f"{n_frames} frames stored, num_frames says {nf}"))
    if not fps or fps <= 0:
        out.append(("duration_mismatch", f"fps is {fps}; it must be > 0"))
        return out
    video_s = nf / fps
    if abs(row["duration_s"] - video_s) > DURATION_TOL_S:
        out.append(
            (
                "duration_mismatch",
                f"duration_s {row['duration_s']:.6f} != num_frames/fps {video_s:.6f}",
            )
        )
    if audio_bytes is None:
        if ns != 0:
            out.append(("audio_length", f"audio is null but num_samples is {ns}"))
        return out
    if audio_bytes != 2 * ns:
        out.append(("audio_length", f"{audio_bytes} audio bytes, num_samples {ns} needs {2 * ns}"))
    if sr <= 0:
        out.append(("audio_length", f"sample_rate is {sr}; it must be > 0"))
        return out
    audio_s = ns / sr
    if abs(audio_s - video_s) > 1.0 / fps + 1e-9:
        out.append(
            ("audio_length", f"audio {audio_s:.4f} s vs video {video_s:.4f} s (> one frame)")
        )
    return out


def frame_problems(frames: list[bytes], width: int, height: int) -> list[tuple[str, str]]:
    """Decode every frame with Pillow; (kind, detail) for undecodable or wrongly sized frames."""
    from PIL import Image

    bad, first_bad, first_err, wrong, first_wrong = 0, -1, "", 0, ""
    for i, data in enumerate(frames):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                size = im.size
        except Exception as exc:  # noqa: BLE001 - any decoder error is the finding
            bad += 1
            if first_bad < 0:
                first_bad, first_err = i, f"{type(exc).__name__}: {exc}"
            continue
        if size != (width, height):
            wrong += 1
            first_wrong = first_wrong or f"frame {i} is {size[0]}x{size[1]}"
    out = []
    if bad:
        out.append(
            ("frame_decode", f"{bad} of {len(frames)} frames fail; frame {first_bad}: {first_err}")
        )
    if wrong:
        out.append(("frame_size", f"{wrong} frames not {width}x{height}; {first_wrong}"))
    return out


def check_batch(
    batch: pa.Table, *, shard: str, first_row: int, sample_fraction: float, seed: int = 0
) -> pa.Table:
    """Light records (LIGHT_SCHEMA) for the segment rows in `batch` (a slice of one shard)."""
    n_frames = pc.fill_null(pc.list_value_length(batch.column("frames")), 0).to_pylist()
    audio_len = pc.binary_length(batch.column("audio")).to_pylist()
    meta = batch.select(_ROW_COLUMNS).to_pylist()
    frames_col = batch.column("frames")
    records: dict[str, list[Any]] = {name: [] for name in LIGHT_SCHEMA.names}
    for i, row in enumerate(meta):
        found = metadata_problems(row, n_frames[i], audio_len[i])
        decoded = is_sampled(row["source"], row["segment"], sample_fraction, seed)
        if decoded:
            frames = frames_col[i].as_py() or []
            found += frame_problems(frames, row["width"], row["height"])
        for name in _META_COLUMNS:
            records[name].append(row[name])
        records["shard"].append(shard)
        records["row"].append(first_row + i)
        records["has_audio"].append(audio_len[i] is not None and row["num_samples"] > 0)
        records["decoded"].append(decoded)
        records["shard_rows"].append(None)
        records["kinds"].append([k for k, _ in found])
        records["details"].append([d for _, d in found])
    return pa.Table.from_pydict(records, schema=LIGHT_SCHEMA)


def shard_record(shard: str, rows: int | None, problems: list[tuple[str, str]]) -> pa.Table:
    """The one shard-level record: actual row count and shard problems (schema, read errors)."""
    rec: dict[str, list[Any]] = {name: [None] for name in LIGHT_SCHEMA.names}
    rec.update(shard=[shard], row=[-1], shard_rows=[rows])
    rec.update(kinds=[[k for k, _ in problems]], details=[[d for _, d in problems]])
    return pa.Table.from_pydict(rec, schema=LIGHT_SCHEMA)


def check_parquet(
    pf: pq.ParquetFile,
    *,
    shard: str,
    expected_version: int,
    sample_fraction: float,
    seed: int = 0,
    batch_rows: int = 8,
) -> pa.Table:
    """Check one shard, reading `batch_rows` rows at a time: light records + the shard record."""
    shard_issues = [
        ("schema_version", d) for d in schema_problems(pf.schema_arrow, expected_version)
    ]
    rows = pf.metadata.num_rows
    missing = [n for n in SEGMENT_SCHEMA.names if pf.schema_arrow.get_field_index(n) < 0]
    if missing:
        return shard_record(shard, rows, shard_issues)
    parts, done = [], 0
    try:
        for rb in pf.iter_batches(batch_size=batch_rows, columns=SEGMENT_SCHEMA.names):
            table = pa.Table.from_batches([rb])
            parts.append(
                check_batch(
                    table, shard=shard, first_row=done, sample_fraction=sample_fraction, seed=seed
                )
            )
            done += table.num_rows
    except Exception as exc:  # noqa: BLE001 - a damaged shard is a finding, not a crash
        shard_issues.append(("shard_read", f"read failed after {done} rows: {exc}"))
    parts.append(shard_record(shard, rows, shard_issues))
    return pa.concat_tables(parts)


def record_problems(records: pa.Table) -> list[Problem]:
    """Every problem carried by light records (row and shard records alike)."""
    has = pc.greater(pc.fill_null(pc.list_value_length(records.column("kinds")), 0), 0)
    out = []
    for rec in (
        records.filter(has)
        .select(["shard", "row", "source", "segment", "kinds", "details"])
        .to_pylist()
    ):
        for kind, detail in zip(rec["kinds"], rec["details"]):
            seg = rec["segment"] if rec["row"] >= 0 else None
            out.append(
                Problem(
                    kind=kind, detail=detail, shard=rec["shard"], source=rec["source"], segment=seg
                )
            )
    return out


def duplicate_problems(rows: pa.Table) -> list[Problem]:
    """One duplicate_row problem for each extra copy of a (source, segment)."""
    seen: dict[tuple[str, int], str] = {}
    out = []
    cols = rows.select(["shard", "row", "source", "segment"]).to_pylist()
    for r in cols:
        key = (r["source"], r["segment"])
        if key in seen:
            out.append(
                Problem(
                    kind="duplicate_row",
                    shard=r["shard"],
                    source=r["source"],
                    segment=r["segment"],
                    detail=f"row {r['row']} repeats (source, segment) first seen in {seen[key]}",
                )
            )
        else:
            seen[key] = f"{r['shard']} row {r['row']}"
    return out


def tiling_problems(rows: pa.Table, *, check_indices: bool = True) -> list[Problem]:
    """Gaps and overlaps between consecutive segments of each source.

    Segment k+1 must start where segment k ends (`start_s + duration_s`) within TILING_TOL_S.
    With `check_indices`, missing segment indices (0..max) are gaps too; turn it off when shards
    are missing, since their rows would explain the holes.
    """
    by_source: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for src, seg, start, dur in zip(
        rows.column("source").to_pylist(),
        rows.column("segment").to_pylist(),
        rows.column("start_s").to_pylist(),
        rows.column("duration_s").to_pylist(),
    ):
        by_source[src].setdefault(seg, (start, dur))
    out = []
    for src, segs in by_source.items():
        order = sorted(segs)
        if check_indices:
            absent = sorted(set(range(order[-1] + 1)) - set(order))
            if absent:
                out.append(_tiling(src, absent[0], "gap", f"segment indices {absent} are missing"))
        for prev, seg in zip(order, order[1:]):
            if seg != prev + 1:
                continue
            end = segs[prev][0] + segs[prev][1]
            delta = segs[seg][0] - end
            if delta > TILING_TOL_S:
                out.append(
                    _tiling(src, seg, "gap", f"starts {delta:.4f} s after segment {prev} ends")
                )
            elif delta < -TILING_TOL_S:
                out.append(
                    _tiling(
                        src, seg, "overlap", f"starts {-delta:.4f} s before segment {prev} ends"
                    )
                )
    return out


def _tiling(source: str, segment: int, what: str, detail: str) -> Problem:
    return Problem(kind=f"tiling_{what}", source=source, segment=segment, detail=detail)
