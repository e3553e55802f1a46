"""Decode evaluation datasets once, through the ingest job, into cached segment shards.

The raw videos of a dataset go through the same decoder as training data (`avtime preprocess`,
`pipelines.ingest.job.run_ingest`), from a CSV listing (uri, label) of the adapter's items. The
shards land in `<cache>/<name>-<key>/shards`, where the key hashes the listed sources (with
each file's size and modification time, or S3 ETag, so a file rewritten in place gets a new key)
and the ingest settings, so every split and protocol of one dataset shares one decode, and a killed
decode resumes. The cache is `--cache-dir`, else `AVTIME_EVAL_CACHE`, else `./eval_cache`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from avtime.pipelines import storage
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.schema import MANIFEST_NAME, parse_manifest


class _Item(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def split(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class CachedShards:
    """Shards of one listing, and what the decode rejected."""

    uri: str
    rows: int
    rejects: int
    sources_with_rows: int


def cache_root(arg: str | None = None) -> str:
    """The cache folder: `arg`, else $AVTIME_EVAL_CACHE, else ./eval_cache (absolute)."""
    root = arg or os.environ.get("AVTIME_EVAL_CACHE") or "eval_cache"
    return root if storage.is_s3(root) else os.path.abspath(root)


def _local_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _s3_stamps(uris: Sequence[str]) -> dict[str, str]:
    """uri -> "size:ETag" (or size:LastModified) of S3 objects, one listing per folder."""
    fs, _ = storage.filesystem(uris[0])
    by_folder: dict[str, set[str]] = {}
    for uri in uris:
        path = storage.s3_path(uri)
        by_folder.setdefault(path.rsplit("/", 1)[0], set()).add(path)
    found: dict[str, str] = {}
    for folder in sorted(by_folder):
        try:
            entries = fs.ls(folder, detail=True)
        except FileNotFoundError:
            entries = []
        for e in entries:
            tag = e.get("ETag") or e.get("LastModified") or e.get("mtime") or ""
            found[str(e["name"]).rstrip("/")] = f"{e.get('size')}:{tag}"
    return {uri: found.get(storage.s3_path(uri), "missing") for uri in uris}


def file_stamps(sources: Sequence[str]) -> dict[str, str]:
    """source -> a stamp that changes when the file's content changes: "size:mtime_ns" of a
    local file, "size:ETag" of an S3 object, "missing" when there is none (no file is read)."""
    s3 = sorted({s for s in sources if storage.is_s3(s)})
    stamps = _s3_stamps(s3) if s3 else {}
    stamps.update({s: _local_stamp(s) for s in sources if not storage.is_s3(s)})
    return stamps


def cache_key(items: Sequence[_Item], cfg: IngestConfig) -> str:
    """12 hex chars of sha1 over the sorted (source, label, stamp) rows and the ingest config.

    The stamp (`file_stamps`: size and mtime, or S3 ETag) makes the key change when a file is
    rewritten at the same path, such as a corpus rebuilt in place. Splits are left out: they
    are joined back from the listing, so the official splits of one dataset share one decode.
    """
    from avtime.pipelines.configlib import to_dict

    stamps = file_stamps([it.source for it in items])
    rows = sorted((it.source, it.label, stamps[it.source]) for it in items)
    blob = json.dumps({"rows": rows, "ingest": to_dict(cfg)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def listing_csv(items: Sequence[_Item]) -> bytes:
    """A listing `avtime preprocess` reads: uri,label (splits come from the adapter)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["uri", "label"])
    for it in sorted(items, key=lambda it: it.source):
        writer.writerow([it.source, it.label])
    return buf.getvalue().encode()


def ensure_shards(
    items: Sequence[_Item],
    *,
    name: str,
    cache: str,
    cfg: IngestConfig | None = None,
    workers: int | None = None,
) -> CachedShards:
    """Shards for `items` under the cache, decoding only what is not cached yet."""
    cfg = cfg or IngestConfig()
    if not items:
        raise ValueError(f"{name}: nothing to decode (the listing is empty)")
    folder = storage.join(cache, f"{name}-{cache_key(items, cfg)}")
    shards = storage.join(folder, "shards")
    manifest = storage.join(shards, MANIFEST_NAME)
    if not storage.exists(manifest):
        from avtime.pipelines.ingest.job import run_ingest

        listing = storage.join(folder, "listing.csv")
        storage.makedirs(folder)
        storage.write_bytes(listing, listing_csv(items))
        print(f"eval: decoding {len(items)} files of {name} into {shards}", file=sys.stderr)
        res = run_ingest(listing, shards, cfg, workers=workers)
        print(res.summary_line(), file=sys.stderr)
    counts = parse_manifest(storage.read_bytes(manifest), manifest).get("counts", {})
    out = CachedShards(
        uri=shards,
        rows=int(counts.get("rows", 0)),
        rejects=int(counts.get("rejects", 0)),
        sources_with_rows=int(counts.get("sources_with_rows", 0)),
    )
    if out.rows == 0:
        raise ValueError(
            f"{name}: no file of {len(items)} could be decoded (see {shards}/rejects.parquet)"
        )
    if out.rejects:
        print(
            f"eval: warning: {out.rejects} of {len(items)} files of {name} could not be decoded "
            f"and are left out (see {shards}/rejects.parquet)",
            file=sys.stderr,
        )
    return out
