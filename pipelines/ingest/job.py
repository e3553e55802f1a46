"""`avtime preprocess`: a Ray Data job that turns videos into Arrow segment shards, resumably.

Driver steps:
1. Check SRC and DST (a dead S3 endpoint fails here, fast), list the inputs.
2. Read the done-markers of earlier runs in `DST/_progress/`; refuse a DST written with another
   config; delete shards no marker vouches for (left by a killed run) and temp files.
3. Group the pending inputs; Ray Data runs `map_batches(map_groups)` over the groups (one group
   per task, `--workers` tasks at once). Each task writes its shards and then its marker.
4. From all markers, write `rejects.parquet` and, last, `manifest.json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from avtime.pipelines import raycluster, schema, storage
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.errors import JobError
from avtime.pipelines.ingest.listing import InputItem, list_inputs
from avtime.pipelines.ingest.lock import DestinationLock, LockError
from avtime.pipelines.ingest.worker import PROGRESS_DIR, TMP_DIR, map_groups, marker_name

RESUME_KEYS_IGNORED = ("max_reject_fraction", "file_timeout_s")
CONFIG_NAME = f"{PROGRESS_DIR}/config.json"


class IngestError(JobError, RuntimeError):
    """The job cannot run or finish; the message says why and what to do."""


@dataclass
class IngestResult:
    """Totals of a finished job (over this run and earlier runs on the same DST)."""

    inputs: int = 0
    rows: int = 0
    rejects: int = 0
    partial: int = 0
    sources_with_rows: int = 0
    video_seconds: float = 0.0
    wall_s: float = 0.0
    skipped_inputs: int = 0  # done by an earlier run
    run_video_seconds: float = 0.0  # decoded by this run
    not_media: int = 0  # files in SRC that were not listed for their extension
    labelled: int | None = None  # inputs a --labels row matched (None without --labels)
    duplicates: int = 0  # exact repeats in the listing or --labels, folded into one
    shards: list[dict[str, Any]] = field(default_factory=list)
    reject_types: dict[str, int] = field(default_factory=dict)

    @property
    def reject_fraction(self) -> float:
        return self.rejects / self.inputs if self.inputs else 0.0

    def summary_line(self) -> str:
        """One line: inputs, rows, rejects, seconds of video, throughput."""
        wall = max(self.wall_s, 1e-9)
        rate = self.run_video_seconds / wall
        run_inputs = self.inputs - self.skipped_inputs
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.reject_types.items()))
        matched = "" if self.labelled is None else f"; --labels matched {self.labelled} inputs"
        folded = f"; {self.duplicates} exact duplicate rows folded" if self.duplicates else ""
        return (
            f"preprocess: {self.inputs} inputs -> {self.rows} rows from "
            f"{self.sources_with_rows} sources, {self.rejects} rejects"
            f"{f' ({kinds})' if kinds else ''}, {self.partial} partial, "
            f"{self.skipped_inputs} already done; {self.video_seconds:.1f} s of video; "
            f"this run: {run_inputs} inputs, {self.run_video_seconds:.1f} s of video in "
            f"{self.wall_s:.1f} s ({rate:.1f} s of video/s, {run_inputs / wall:.2f} inputs/s)"
            f"{matched}{folded}"
        )


def config_dict(cfg: IngestConfig) -> dict[str, Any]:
    """The config as plain JSON-able values."""
    from avtime.pipelines.configlib import to_dict

    return to_dict(cfg)


def code_version() -> str:
    """The installed avtime version (recorded in the manifest)."""
    try:
        from importlib.metadata import version

        return version("avtime")
    except Exception:  # noqa: BLE001
        return "unknown"


def _read_markers(dst: str) -> list[dict[str, Any]]:
    markers = []
    for uri in storage.list_files(storage.join(dst, PROGRESS_DIR), recursive=False):
        name = uri.rsplit("/", 1)[-1]
        if name.startswith("group-") and name.endswith(".json"):
            markers.append(json.loads(storage.read_bytes(uri)))
    return sorted(markers, key=lambda m: int(m["group"]))


def _check_config(dst: str, cfg: IngestConfig) -> None:
    wanted = {k: v for k, v in config_dict(cfg).items() if k not in RESUME_KEYS_IGNORED}
    uri = storage.join(dst, CONFIG_NAME)
    if storage.exists(uri):
        have = json.loads(storage.read_bytes(uri))
        diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        if diff:
            detail = ", ".join(f"{k}={have.get(k)!r} (now {wanted.get(k)!r})" for k in diff)
            raise IngestError(
                f"{dst} holds shards made with other settings: {detail}. "
                "Use the same settings to resume, or a fresh DST."
            )
    else:
        storage.write_bytes(uri, json.dumps(wanted, indent=1, allow_nan=False).encode())


def _clean_orphans(dst: str, markers: list[dict[str, Any]]) -> int:
    """Delete shards no marker lists (a killed run's) and temp files; return how many."""
    vouched = {s["path"] for m in markers for s in m["shards"]}
    removed = 0
    for uri in storage.list_files(dst):
        rel = uri[len(dst.rstrip("/")) + 1 :].replace(os.sep, "/")
        stale_tmp = rel.startswith(f"{TMP_DIR}/") or (
            "/" not in rel and rel.startswith(".") and rel.endswith(".tmp")
        )
        orphan = "/" not in rel and schema.is_shard_name(rel) and rel not in vouched
        if stale_tmp or orphan:
            storage.remove(uri)
            removed += 1
    return removed


def _groups(
    items: list[InputItem], first_id: int, workers: int, cfg: IngestConfig
) -> list[dict[str, Any]]:
    size = max(1, min(cfg.rows_per_shard, math.ceil(len(items) / (4 * workers))))
    return [
        {"group": first_id + n, "items": json.dumps([it.to_dict() for it in items[i : i + size]])}
        for n, i in enumerate(range(0, len(items), size))
    ]


def _init_ray(workers: int) -> None:
    """Join `RAY_ADDRESS`, or start a local Ray with one logical CPU per worker."""
    raycluster.connect(num_cpus=workers, log_to_driver=True)


@contextmanager
def _sized(workers: int | None, cpus: float) -> Iterator[int]:
    """Inside: a Ray that holds the tasks' CPUs; yields how many tasks run at once.

    That is `workers`; by default one per local core, or on a cluster (which may start empty)
    as many as its CPUs allow once it has grown to hold at least one task. On a cluster with an
    autoscaler the tasks' CPUs are requested and waited for (`raycluster.grown`).
    """
    cluster = raycluster.on_cluster()
    n = workers or (1 if cluster else os.cpu_count() or 1)
    bundles = [{"CPU": cpus}] * n
    with raycluster.grown(bundles, what="avtime preprocess", minimum=bundles[:1]) as have:
        if workers is None and cluster:
            n = max(1, int(have.get("CPU", 0.0) // cpus))
        yield n


def _run_groups(
    groups: list[dict[str, Any]], dst: str, cfg: IngestConfig, workers: int, cpus: float
) -> list[dict[str, Any]]:
    import ray

    ds: Any = ray.data.from_items(groups, override_num_blocks=len(groups))
    ds = ds.map_batches(
        map_groups, batch_size=1, num_cpus=cpus,
        compute=ray.data.TaskPoolStrategy(size=min(workers, len(groups))),
        fn_kwargs={"dst": dst, "cfg": config_dict(cfg), "threads": 1},
    )  # fmt: skip
    try:
        return [json.loads(row["marker"]) for row in ds.iter_rows()]
    except Exception as exc:  # noqa: BLE001
        unreachable = storage.s3_unreachable(exc) if storage.is_s3(dst) else None
        if unreachable is not None:
            raise IngestError(
                f"S3 at {storage.redacted_endpoint()} stopped answering while the ingest tasks "
                f"read inputs and wrote shards to {dst} ({unreachable}); once it is back, rerun "
                "the same command to resume"
            ) from None
        if storage.disk_full(exc):
            raise IngestError(
                f"no space left on the device of {dst} while the ingest tasks wrote shards "
                "there; free some space (or pick another DST) and rerun the same command: it "
                "resumes where it stopped"
            ) from None
        cause = list(storage.error_chain(exc))[-1]  # what Ray's wrappers wrap
        raise IngestError(f"ingest task failed: {type(cause).__name__}: {cause}") from None


def _tally(
    items: list[InputItem], markers: list[dict[str, Any]]
) -> tuple[IngestResult, list[schema.Reject], list[str]]:
    """Totals, rejects and all input sources (this listing first) over every marker."""
    res = IngestResult()
    rejects: list[schema.Reject] = []
    known: list[str] = [it.source for it in items]
    listed = {it.key for it in items}
    for m in markers:
        for o in m["outcomes"]:
            if o["key"] not in listed:
                known.append(o["source"])
            res.inputs += 1
            res.rows += o["rows"]
            res.video_seconds += o["seconds"]
            res.sources_with_rows += int(o["rows"] > 0)
            res.partial += int(o["warning"] is not None and o["rows"] > 0)
            if o["reject"] is not None:
                rejects.append(schema.Reject(**o["reject"]))
                et = o["reject"]["error_type"]
                res.reject_types[et] = res.reject_types.get(et, 0) + 1
        res.shards.extend(m["shards"])
    res.rejects = len(rejects)
    res.shards.sort(key=lambda s: s["path"])
    return res, rejects, known


def _finish(
    dst: str, cfg: IngestConfig, items: list[InputItem], markers: list[dict[str, Any]]
) -> IngestResult:
    """Write rejects.parquet, then manifest.json (last); return the totals."""
    res, rejects, known = _tally(items, markers)
    _write_rejects(dst, rejects)
    partial = [
        {"source": o["source"], "warning": o["warning"]}
        for m in markers for o in m["outcomes"] if o["warning"] and o["rows"]
    ]  # fmt: skip
    doc = schema.build_manifest(
        code_version=code_version(), frame_format=cfg.frame_format, config=config_dict(cfg),
        inputs=known,
        counts={
            "inputs": res.inputs, "rows": res.rows, "rejects": res.rejects,
            "sources_with_rows": res.sources_with_rows, "partial": res.partial,
            "video_seconds": round(res.video_seconds, 3),
        },
        shards=res.shards, extra={"partial": partial},
    )  # fmt: skip
    storage.write_bytes(storage.join(dst, schema.MANIFEST_NAME), schema.manifest_to_bytes(doc))
    return res


def _write_rejects(dst: str, rejects: list[schema.Reject]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(schema.rejects_to_table(rejects), sink)
    storage.write_bytes(storage.join(dst, schema.REJECTS_NAME), sink.getvalue().to_pybytes())


def run_ingest(
    src: str,
    dst: str,
    cfg: IngestConfig,
    *,
    labels: str | None = None,
    workers: int | None = None,
    cpus_per_task: float = 1.0,
) -> IngestResult:
    """Run the whole job; raise IngestError/StorageError on a job-level failure.

    `workers` tasks run at once, each reserving `cpus_per_task` logical CPUs (fractions let the
    job share a cluster with Ray Train workers). Uses the running Ray if there is one.
    """  # fmt: skip
    t_start = time.monotonic()
    storage.check_location(src, must_exist=True)
    storage.check_location(dst, must_exist=False)
    listing = list_inputs(src, labels)
    items = list(listing.items)
    storage.makedirs(dst)
    with DestinationLock(dst):
        res = _run_locked(dst, cfg, items, workers, cpus_per_task)
    res.not_media, res.duplicates = listing.not_media, listing.duplicates
    if labels:
        res.labelled = sum(it.label is not None for it in items)
    res.wall_s = time.monotonic() - t_start
    return res


def _run_locked(
    dst: str, cfg: IngestConfig, items: list[InputItem], workers: int | None, cpus_per_task: float
) -> IngestResult:
    """The job's writes, done while this run holds DST's lock."""
    _check_config(dst, cfg)
    markers = _read_markers(dst)
    _clean_orphans(dst, markers)
    done = {o["key"] for m in markers for o in m["outcomes"]}
    pending = [it for it in items if it.key not in done]
    fresh: list[dict[str, Any]] = []
    if pending:
        first = max((int(m["group"]) for m in markers), default=-1) + 1
        _init_ray(workers or os.cpu_count() or 1)
        with _sized(workers, cpus_per_task) as tasks:
            groups = _groups(pending, first, tasks, cfg)
            fresh = _run_groups(groups, dst, cfg, tasks, cpus_per_task)
    res = _finish(dst, cfg, items, markers + fresh)
    res.run_video_seconds = sum(o["seconds"] for m in fresh for o in m["outcomes"])
    if not storage.is_s3(dst):
        shutil.rmtree(os.path.join(dst, TMP_DIR), ignore_errors=True)
    res.skipped_inputs = len(items) - len(pending)
    return res


__all__ = ["IngestError", "IngestResult", "LockError", "marker_name", "run_ingest"]
