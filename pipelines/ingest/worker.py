"""The worker side of `avtime preprocess`: decode one group of inputs into committed shards.

`process_group` runs inside a Ray Data `map_batches` task. It decodes its inputs one after the
other, streams their rows into Parquet shards of at most `rows_per_shard` rows (row groups of
`rows_per_row_group` rows), publishes each finished shard atomically, and last writes the
group's done-marker `_progress/group-GGGGG.json`. A group whose marker exists is finished; its
shards and rejects are listed in the marker, so a rerun skips its inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from avtime.pipelines import schema, storage
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.decode import DecodeError, Segment, SegmentDecoder
from avtime.pipelines.ingest.listing import InputItem

PROGRESS_DIR = "_progress"
TMP_DIR = "_tmp"
STAT_COLUMNS = ["video_id", "segment", "start_s", "duration_s", "num_frames", "height", "width"]
DICT_COLUMNS = ["video_id", "source", "label", "split"]


def marker_name(group: int) -> str:
    """Relative path of a group's done-marker."""
    return f"{PROGRESS_DIR}/group-{group:05d}.json"


class ShardWriteError(Exception):
    """Writing or publishing a shard failed (a full disk, S3 gone): a fault of the destination,
    never of the input being decoded, so it fails the task instead of becoming a reject."""


class ShardWriter:
    """Rows -> Parquet shards `part-GGGGG-PPP.parquet`, each published only when complete.

    Any failure to write is raised as `ShardWriteError` (with the original as its cause and
    in its message, e.g. "[Errno 28] No space left on device")."""

    def __init__(self, dst: str, group: int, cfg: IngestConfig) -> None:
        self.dst, self.group, self.cfg = dst, group, cfg
        if storage.is_s3(dst):
            self.scratch = Path(tempfile.mkdtemp(prefix="avtime-shard-"))
        else:
            self.scratch = Path(dst, TMP_DIR, uuid.uuid4().hex)
            self.scratch.mkdir(parents=True, exist_ok=True)
        self.part = 0
        self.buffer: list[dict[str, Any]] = []
        self.rows_in_shard = 0
        self.writer: pq.ParquetWriter | None = None
        self.local: Path | None = None
        self.committed: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        room = self.cfg.rows_per_shard - self.rows_in_shard
        if len(self.buffer) >= min(self.cfg.rows_per_row_group, room):
            self._guarded(self._flush)

    def _guarded(self, write: Any) -> None:
        try:
            write()
        except ShardWriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - any write failure is the destination's
            raise ShardWriteError(
                f"writing a shard to {self.dst} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.local = self.scratch / schema.shard_name(self.group, self.part)
            self.writer = pq.ParquetWriter(
                str(self.local), schema.SEGMENT_SCHEMA, compression="zstd",
                compression_level=1, use_dictionary=DICT_COLUMNS, write_statistics=STAT_COLUMNS,
            )  # fmt: skip
        self.writer.write_table(schema.rows_to_table(self.buffer))
        self.rows_in_shard += len(self.buffer)
        self.buffer = []
        if self.rows_in_shard >= self.cfg.rows_per_shard:
            self._commit()

    def _commit(self) -> None:
        if self.writer is None or self.local is None:
            return
        self.writer.close()
        name = schema.shard_name(self.group, self.part)
        storage.put_file(self.local, storage.join(self.dst, name))
        self.committed.append({"path": name, "rows": self.rows_in_shard})
        self.writer, self.local, self.rows_in_shard = None, None, 0
        self.part += 1

    def close(self) -> list[dict[str, Any]]:
        """Flush and publish what is left; return the committed shards."""
        self._guarded(self._flush)
        self._guarded(self._commit)
        self.cleanup()
        return self.committed

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class Outcome:
    """What became of one input."""

    key: str
    source: str
    rows: int = 0
    seconds: float = 0.0
    reject: schema.Reject | None = None
    warning: str | None = None  # decoding stopped early; the rows so far were kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "source": self.source, "rows": self.rows, "seconds": self.seconds,
            "reject": None if self.reject is None else self.reject.to_dict(),
            "warning": self.warning,
        }  # fmt: skip


def segment_row(item: InputItem, seg: Segment, cfg: IngestConfig) -> dict[str, Any]:
    """One Arrow row (schema v1) of a decoded segment."""
    return {
        "video_id": schema.video_id(item.key), "source": item.source, "segment": seg.index,
        "start_s": seg.start_s, "duration_s": seg.num_frames / cfg.fps, "fps": cfg.fps,
        "num_frames": seg.num_frames, "height": seg.height, "width": seg.width,
        "frames": seg.frames, "sample_rate": cfg.sample_rate, "num_samples": seg.num_samples,
        "audio": seg.audio, "label": item.label, "split": item.split,
    }  # fmt: skip


def _local_copy(item: InputItem, scratch: Path) -> str:
    if not storage.is_s3(item.source):
        if not os.path.exists(item.source):
            raise DecodeError("read", "Missing", f"{item.source} does not exist")
        if os.path.getsize(item.source) == 0:
            raise DecodeError("probe", "EmptyFile", "the file is empty (0 bytes)")
        return item.source
    local = scratch / f"src-{uuid.uuid4().hex}{Path(item.source).suffix}"
    try:
        storage.get_file(item.source, local)
    except FileNotFoundError:
        raise DecodeError("read", "Missing", f"{item.source} does not exist") from None
    if local.stat().st_size == 0:
        raise DecodeError("probe", "EmptyFile", "the file is empty (0 bytes)")
    return str(local)


def ingest_one(
    item: InputItem, cfg: IngestConfig, writer: ShardWriter, threads: int, scratch: Path
) -> Outcome:
    """Decode one input into `writer`; every failure becomes a reject or a warning."""
    out = Outcome(key=item.key, source=item.source)
    local = None
    try:
        local = _local_copy(item, scratch)
        dec = SegmentDecoder(local, cfg, start_s=item.start_s, end_s=item.end_s, threads=threads)
        for seg in dec.segments():
            writer.add(segment_row(item, seg, cfg))
            out.rows += 1
            out.seconds += seg.num_frames / cfg.fps
        if dec.error is not None:
            out.warning = f"{dec.error.error_type}: {dec.error.message}"
    except ShardWriteError:
        raise  # the destination failed, not this input: fail the task, reject nothing
    except DecodeError as exc:
        out.reject = schema.Reject(
            source=item.source, stage=exc.stage, error_type=exc.error_type, message=exc.message
        )
    except Exception as exc:  # noqa: BLE001 (any decoder failure must not crash the job)
        if out.rows:
            out.warning = f"{type(exc).__name__}: {exc}"
        else:
            out.reject = schema.Reject(
                source=item.source, stage="decode", error_type=type(exc).__name__,
                message=str(exc)[:500],
            )  # fmt: skip
    finally:
        if local is not None and local != item.source:
            Path(local).unlink(missing_ok=True)
    return out


def process_group(
    group: int, items: list[InputItem], dst: str, cfg: IngestConfig, threads: int = 1
) -> dict[str, Any]:
    """Decode `items` into shards under `dst`, then write the group's marker; return it."""
    t_start = time.monotonic()
    writer = ShardWriter(dst, group, cfg)
    scratch = Path(tempfile.mkdtemp(prefix="avtime-src-"))
    try:
        outcomes = [ingest_one(item, cfg, writer, threads, scratch) for item in items]
        shards = writer.close()
    finally:
        writer.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    marker = {
        "group": group,
        "inputs": [it.to_dict() for it in items],
        "outcomes": [o.to_dict() for o in outcomes],
        "shards": shards,
        "seconds": time.monotonic() - t_start,
    }
    storage.write_bytes(storage.join(dst, marker_name(group)), json.dumps(marker).encode())
    return marker


def map_groups(
    batch: dict[str, Any], *, dst: str, cfg: dict[str, Any], threads: int
) -> dict[str, list[str]]:
    """Ray Data `map_batches` entry: rows {group, items (JSON)} -> rows {marker (JSON)}."""
    config = IngestConfig(**cfg)
    out = []
    for group, items_json in zip(batch["group"], batch["items"]):
        items = [InputItem.from_dict(d) for d in json.loads(str(items_json))]
        out.append(json.dumps(process_group(int(group), items, dst, config, threads)))
    return {"marker": out}
