"""The Arrow segment-row schema (version 1), the rejects ledger and `manifest.json` helpers.

One row is one segment of one source video; see docs/CONTRACTS.md section 1 and docs/ingest.md.
Everything here is pure (no I/O beyond the filesystem handle passed in), so readers (verify,
stream, eval) can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from avtime.pipelines.errors import UsageError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.parquet"
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"

SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("frames", pa.list_(pa.binary()), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("num_samples", pa.int32(), nullable=False),
        pa.field("audio", pa.binary(), nullable=True),
        pa.field("label", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=True),
    ],
    metadata={b"avtime.schema_version": str(SCHEMA_VERSION).encode()},
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)


def video_id(uri: str) -> str:
    """Stable id of a source: the first 16 hex characters of sha1(uri)."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Reject:
    """One input that produced no rows, and why."""

    source: str
    stage: str  # "list", "probe", "decode", "audio", "write"
    error_type: str  # "NoVideoStream", "CorruptFile", "Timeout", "NoAudio", "EmptyFile", ...
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "source": self.source,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
        }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Segment rows (dicts with every schema column) as a table with the v1 schema."""
    return pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)


def rejects_to_table(rejects: list[Reject]) -> pa.Table:
    """The rejects ledger as a table (possibly empty)."""
    return pa.Table.from_pylist([r.to_dict() for r in rejects], schema=REJECT_SCHEMA)


def build_manifest(
    *,
    code_version: str,
    frame_format: str,
    config: dict[str, Any],
    inputs: list[str],
    counts: dict[str, int | float],
    shards: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `manifest.json` document (CONTRACTS.md section 1); `extra` adds keys beside these."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version,
        "frame_format": frame_format,
        "config": config,
        "inputs": inputs,
        "counts": counts,
        "shards": shards,
    }
    if extra:
        for key, value in extra.items():
            doc.setdefault(key, value)
    return doc


def manifest_to_bytes(doc: dict[str, Any]) -> bytes:
    """Stable JSON encoding of a manifest (sorted keys inside `config`)."""
    return (json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")


class ManifestError(UsageError):
    """A `manifest.json` that cannot be read as one; the message names the file and the fix."""


def parse_manifest(data: bytes | str, where: str = MANIFEST_NAME) -> dict[str, Any]:
    """Parse `manifest.json` (named `where` in errors); `ManifestError` naming the problem if it
    is not JSON, not schema v1, lacks a key, or lists a shard without a `path`."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{where} is not valid JSON ({exc}); preprocess again") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema_version {version!r} is not {SCHEMA_VERSION}; "
            "re-run `avtime preprocess` with this version of avtime"
        )
    for key in ("frame_format", "config", "counts", "shards"):
        if key not in doc:
            raise ManifestError(f"{where}: missing key {key!r}")
    listed_shards(doc, where)
    return doc


def listed_shards(doc: dict[str, Any], where: str = MANIFEST_NAME) -> list[str]:
    """The shard paths a parsed manifest lists, in order; `ManifestError` naming the first
    entry that is not an object with a non-empty string `path`."""
    shards = doc.get("shards")
    if not isinstance(shards, list):
        raise ManifestError(f"{where}: 'shards' is not a list; preprocess again")
    out = []
    for n, entry in enumerate(shards):
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ManifestError(
                f"{where}: shard entry {n} ({str(entry)[:80]}) has no 'path'; the manifest is "
                "damaged: run `avtime verify` on the folder, or preprocess again into a fresh one"
            )
        out.append(name)
    return out


def shard_name(group: int, part: int) -> str:
    """File name of shard `part` of input group `group`: `part-GGGGG-PPP.parquet`."""
    return f"{SHARD_PREFIX}{group:05d}-{part:03d}{SHARD_SUFFIX}"


def is_shard_name(name: str) -> bool:
    """True for a final shard file name (not a temp file)."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(SHARD_PREFIX) and base.endswith(SHARD_SUFFIX)
