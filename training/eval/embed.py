"""Embed preprocessed shards with a checkpoint's encoders and write the embeddings as Parquet.

The pipeline is eval's (`features.shard_clip_dataset` -> `features.encode_stage`): the same
clips, cut by `training.eval.clips`, through the same encoder actors (one GPU each when the
cluster has CUDA, else CPU). The actors emit Arrow rows and Ray Data's `write_parquet` writes
them to DST; nothing is collected on the driver.

Layout of DST (local or s3://):

    manifest.json              what made the embeddings (checkpoint, model id, config digest,
                               input digest, clips, dimensions) and, once complete, the row counts
    part-00000/*.parquet       the rows of input shards 0..n-1 (`shards_per_part` at a time)
    _progress/part-00000.json  the commit marker of part 0: its files, rows and segments
    _progress/lock.json        one writer per destination (pipelines.ingest.lock)
    _shards/                   only when --data is raw videos: their decoded shards

A part is committed by its marker, written after `write_parquet` returns. A rerun skips
committed parts and deletes what an uncommitted part left behind before writing it again, so a
killed run's rerun ends with each clip exactly once. Readers take the files the markers list
(`part_files`). A DST holding embeddings of another model, input or clip setting is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from avtime.pipelines import storage
from avtime.pipelines.errors import UsageError
from avtime.training.eval.clips import ClipConfig
from avtime.training.eval.features import Encoder, ExtractConfig

MANIFEST = "manifest.json"
PROGRESS = "_progress"
SHARDS_DIR = "_shards"  # raw videos given as --data are decoded here first
KIND = "avtime-embeddings"
SCHEMA_VERSION = 1
KEY_COLUMNS = ("video_id", "source", "segment", "clip", "t_start", "t_end")


class EmbedError(UsageError):
    """A problem the user can act on (one line, exit 2)."""


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    """What to embed, with which model, and where to write it."""

    checkpoint: str  # folder/URI, models:/..., or "random"
    data: str  # preprocessed shards (local or s3://)
    out: str  # destination (local or s3://)
    modalities: tuple[str, ...] = ("video", "audio")
    clips_per_segment: int = 4
    stride_s: float = 0.0  # > 0: clips start every stride_s seconds of each video instead
    config: str = "demo"  # preset/YAML for checkpoint "random"
    overrides: tuple[str, ...] = ()  # config overrides for "random"
    seed: int = 0
    shards_per_part: int = 32  # input shards per committed output part

    def __post_init__(self) -> None:
        if not self.modalities or set(self.modalities) - {"video", "audio"}:
            raise ValueError("modalities must be video, audio or both")
        if self.shards_per_part < 1:
            raise ValueError("shards_per_part must be >= 1")
        if not self.stride_s >= 0:  # also refuses NaN
            raise ValueError("stride_s must be >= 0 (0: clips_per_segment clips per segment)")


@dataclass
class EmbedResult:
    """What a run wrote (totals over every committed part, this run's and earlier ones)."""

    out: str
    rows: int
    segments: int
    dims: dict[str, int]
    parts: int
    skipped: int  # parts already committed by an earlier run
    wall_s: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        dims = ", ".join(f"{m} {d}-d" for m, d in self.dims.items())
        again = (
            f"; {self.skipped} of {self.parts} parts were already written" if self.skipped else ""
        )
        return (
            f"embed: {self.rows} clips from {self.segments} segments -> {self.out} ({dims}) "
            f"in {self.wall_s:.1f} s{again}"
        )


def config_digest(model_cfg: Any) -> str:
    """16 hex chars of sha256 over the model config (the architecture the weights fit)."""
    from avtime.pipelines.configlib import to_dict

    blob = json.dumps(to_dict(model_cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def embedding_schema(dims: dict[str, int]) -> pa.Schema:
    """The row schema: keys, clip span in source seconds, one fixed-size float32 list per
    modality (audio is null for a clip whose segment has no audio)."""
    fields = [
        pa.field("video_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("segment", pa.int32()),
        pa.field("clip", pa.int32()),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
    ]
    for name, dim in dims.items():
        fields.append(pa.field(name, pa.list_(pa.float32(), dim), nullable=True))
    return pa.schema(fields)


def to_rows(feats: dict[str, np.ndarray], dims: dict[str, int]) -> pa.Table:
    """Encoder output (keys, feat_<modality> [N, D], has_audio [N]) -> an Arrow table of rows."""
    cols: dict[str, Any] = {
        "video_id": pa.array([str(x) for x in feats["video_id"]], pa.string()),
        "source": pa.array([str(x) for x in feats["source"]], pa.string()),
        "segment": pa.array(np.asarray(feats["segment"], dtype=np.int32)),
        "clip": pa.array(np.asarray(feats["clip"], dtype=np.int32)),
        "t_start": pa.array(np.asarray(feats["t_start"], dtype=np.float64)),
        "t_end": pa.array(np.asarray(feats["t_end"], dtype=np.float64)),
    }
    for name, dim in dims.items():
        x = np.ascontiguousarray(feats[f"feat_{name}"], dtype=np.float32).reshape(-1)
        mask = None
        if name == "audio":
            mask = pa.array(np.asarray(feats["has_audio"]) == 0)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(x), dim, mask=mask)
    return pa.table(cols, schema=embedding_schema(dims))


class RowEncoder(Encoder):
    """Ray Data actor: clips -> Arrow rows of `embedding_schema` (eval's Encoder underneath)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:  # type: ignore[override]
        feats = super().__call__(batch)
        dims = {name: int(net.out_dim) for name, net in self.nets.items()}  # type: ignore[arg-type]
        return to_rows(feats, dims)


def encoder_dims(model: Any, modalities: Sequence[str]) -> dict[str, int]:
    """{modality: D} of the AVModel's encoders, in `modalities` order; EmbedError when the
    model has no audio encoder and audio is asked for."""
    dims: dict[str, int] = {}
    for name in modalities:
        dim = model.video_dim if name == "video" else model.audio_dim
        if dim == 0:
            raise EmbedError(f"this checkpoint's model has no {name} encoder; use --modality video")
        dims[name] = int(dim)
    return dims


def part_groups(paths: Sequence[str], per_part: int) -> list[tuple[str, list[str]]]:
    """(part name, input shard URIs) in manifest order, `per_part` shards each."""
    return [
        (f"part-{i // per_part:05d}", list(paths[i : i + per_part]))
        for i in range(0, len(paths), per_part)
    ]


def identity(
    req: EmbedRequest, loaded: Any, clip: ClipConfig, dims: dict[str, int]
) -> dict[str, Any]:
    """The manifest's fixed part: what made these embeddings, and from what input."""
    from avtime.pipelines.schema import MANIFEST_NAME, parse_manifest
    from avtime.training.eval.model_io import RANDOM

    shards_manifest = storage.read_bytes(storage.join(req.data, MANIFEST_NAME))
    ingest = parse_manifest(shards_manifest).get("config", {})
    rand = req.checkpoint == RANDOM
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "checkpoint": req.checkpoint,
        "checkpoint_uri": loaded.resolved or req.checkpoint,
        "model_id": loaded.model_id or "",
        "config_digest": config_digest(loaded.cfg.model),
        "random_init": (
            {"config": req.config, "overrides": list(req.overrides), "seed": req.seed}
            if rand
            else None
        ),
        "data": req.data,
        "data_digest": hashlib.sha256(shards_manifest).hexdigest()[:16],
        "ingest": ingest,
        "clips": asdict(clip),
        "modalities": list(dims),
        "dims": dims,
    }


MODEL_KEYS = ("checkpoint_uri", "config_digest", "random_init")
INPUT_KEYS = ("data_digest", "clips", "modalities")


def read_manifest(out: str) -> dict[str, Any] | None:
    """DST's embeddings manifest, None when there is none; EmbedError when DST holds another
    kind of manifest (e.g. preprocessed shards)."""
    uri = storage.join(out, MANIFEST)
    if not storage.exists(uri):
        return None
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise EmbedError(f"{uri} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise EmbedError(
            f"{out} holds a manifest.json that avtime embed did not write; use another --out"
        )
    return doc


def check_destination(out: str, ident: dict[str, Any]) -> None:
    """EmbedError when DST already holds embeddings of another model or other inputs."""
    held = read_manifest(out)
    if held is None:
        return
    if any(held.get(k) != ident[k] for k in MODEL_KEYS):
        raise EmbedError(
            f"{out} holds embeddings of another model (checkpoint {held.get('checkpoint')}, "
            f"config {held.get('config_digest')}); this run's is {ident['checkpoint']} (config "
            f"{ident['config_digest']}): use another --out"
        )
    differ = [k for k in INPUT_KEYS if _held(held, k) != _held(ident, k)]
    if differ:
        raise EmbedError(
            f"{out} holds embeddings of other inputs or settings ({', '.join(differ)} differ: "
            f"data {held.get('data')}); use another --out"
        )


def _held(doc: dict[str, Any], key: str) -> Any:
    """A manifest's value of `key`; clip settings written before strides existed read as
    stride 0 (clips per segment), which they are."""
    value = doc.get(key)
    if key == "clips" and isinstance(value, dict):
        return {"stride_s": 0.0, **value}
    return value


def _marker_uri(out: str, part: str) -> str:
    return storage.join(out, PROGRESS, f"{part}.json")


def read_marker(out: str, part: str) -> dict[str, Any] | None:
    """A part's commit marker, None when the part is not committed (or its files are gone)."""
    uri = _marker_uri(out, part)
    if not storage.exists(uri):
        return None
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ValueError:
        return None
    files = doc.get("files", []) if isinstance(doc, dict) else None
    if files is None or not all(storage.exists(storage.join(out, f)) for f in files):
        return None
    return dict(doc)


def _clear_part(out: str, part: str) -> None:
    """Delete what an uncommitted part left behind (a killed run's files)."""
    for f in storage.list_files(storage.join(out, part)):
        storage.remove(f)


def _count(files: list[str]) -> tuple[int, int]:
    """(rows, distinct (video_id, segment)) over Parquet files, reading two key columns."""
    import pyarrow.parquet as pq

    rows, segments = 0, set()
    for f in files:
        fs, path = storage.arrow_filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=["video_id", "segment"])
        rows += t.num_rows
        segments |= set(zip(t["video_id"].to_pylist(), t["segment"].to_pylist()))
    return rows, len(segments)


def write_part(ds: Any, out: str, part: str, inputs: list[str]) -> dict[str, Any]:
    """Write one part's rows with Ray Data, then commit it with its marker."""
    _clear_part(out, part)
    folder = storage.join(out, part)
    storage.makedirs(folder)
    fs, path = storage.arrow_filesystem(folder)
    ds.write_parquet(path, filesystem=fs)
    files = [f for f in storage.list_files(folder) if f.endswith(".parquet")]
    rows, segments = _count(files)
    rel = [f"{part}/{f.replace(chr(92), '/').rsplit('/', 1)[-1]}" for f in files]
    marker = {"part": part, "inputs": [i.rsplit("/", 1)[-1] for i in inputs], "files": rel,
              "rows": rows, "segments": segments}  # fmt: skip
    storage.write_bytes(_marker_uri(out, part), json.dumps(marker, indent=1).encode())
    return marker


def part_files(out: str) -> list[str]:
    """URIs of every committed Parquet file of an embeddings destination (manifest order)."""
    doc = read_manifest(out)
    if doc is None:
        raise EmbedError(f"{out} holds no embeddings (no {MANIFEST}); run `avtime embed` first")
    files = []
    for part in doc.get("parts", []):
        marker = read_marker(out, part)
        if marker is not None:
            files += [storage.join(out, f) for f in marker["files"]]
    return files


def read_embeddings(out: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Every committed row of an embeddings destination as one Arrow table (for search and
    tests; at scale, read the files with Ray Data instead)."""
    import pyarrow.parquet as pq

    doc = read_manifest(out) or {}
    tables = []
    for f in part_files(out):
        fs, path = storage.arrow_filesystem(f)
        tables.append(
            pq.read_table(path, filesystem=fs, columns=list(columns) if columns else None)
        )
    if not tables:
        dims = {k: int(v) for k, v in doc.get("dims", {}).items()}
        schema = embedding_schema(dims)
        return schema.empty_table() if not columns else schema.empty_table().select(list(columns))
    return pa.concat_tables(tables)


def decode_videos(req: EmbedRequest, notify: Callable[[str], None] = print) -> EmbedRequest:
    """`req` itself when `req.data` holds preprocessed shards (a manifest.json); else `req.data`
    is raw videos (a folder, prefix, file or CSV/JSONL listing), decoded first by the ingest job
    (`avtime preprocess`, default settings) into DST/_shards, which a rerun resumes."""
    from dataclasses import replace

    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.ingest.job import IngestError, run_ingest
    from avtime.pipelines.ingest.listing import ListingError
    from avtime.pipelines.schema import MANIFEST_NAME

    if storage.exists(storage.join(req.data, MANIFEST_NAME)):
        return req
    shards = storage.join(req.out, SHARDS_DIR)
    notify(f"embed: {req.data} holds no shards manifest; decoding its videos into {shards}")
    ensure_ray()
    try:
        res = run_ingest(req.data, shards, IngestConfig())
    except (IngestError, ListingError) as exc:
        raise EmbedError(
            f"{req.data} holds neither preprocessed shards (manifest.json) nor decodable videos: "
            f"{exc}"
        ) from None
    notify(res.summary_line())
    if res.rows == 0:
        raise EmbedError(f"no video of {req.data} could be decoded (see {shards}/rejects.parquet)")
    return replace(req, data=shards)


def ensure_ray() -> None:
    """Join RAY_ADDRESS, or start a local Ray with at least 4 logical CPUs (the encoder actors
    and the clip tasks must fit at once on a small machine), through `raycluster.connect`, which
    also keeps Ray's and Ray Data's INFO lines off the console."""
    import os

    from avtime.pipelines import raycluster

    raycluster.connect(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=raycluster.on_cluster())


def embed(
    req: EmbedRequest, ex: ExtractConfig | None = None, notify: Callable[[str], None] = print
) -> EmbedResult:
    """Embed every clip of `req.data` into `req.out` (resuming a killed run)."""
    from avtime.pipelines.ingest.lock import DestinationLock, LockError
    from avtime.pipelines.pretext.stream import shard_paths
    from avtime.training.eval.model_io import load_model

    t0 = time.monotonic()
    ex = ex or ExtractConfig()
    req = decode_videos(req, notify)
    loaded = load_model(req.checkpoint, config=req.config, overrides=req.overrides, seed=req.seed)
    clip = ClipConfig.from_run(loaded.cfg, req.clips_per_segment, req.stride_s)
    dims = encoder_dims(loaded.model, req.modalities)
    paths = shard_paths(req.data)
    ident = identity(req, loaded, clip, dims)
    check_destination(req.out, ident)
    storage.makedirs(req.out)
    lock = DestinationLock(req.out, notify=lambda m: notify(m.replace("preprocess", "embed")))
    try:
        lock.acquire()
    except LockError as exc:
        raise EmbedError(str(exc).replace("another preprocess run", "another run")) from None
    try:
        return _run_locked(req, ex, loaded, clip, ident, paths, t0)
    finally:
        lock.release()


def _run_locked(
    req: EmbedRequest,
    ex: ExtractConfig,
    loaded: Any,
    clip: ClipConfig,
    ident: dict[str, Any],
    paths: list[str],
    t0: float,
) -> EmbedResult:
    from avtime.training.eval.features import encode_stage, shard_clip_dataset

    check_destination(req.out, ident)  # again, now that no other writer can change it
    groups = part_groups(paths, req.shards_per_part)
    doc = {**ident, "complete": False, "parts": [g for g, _ in groups]}
    storage.write_bytes(storage.join(req.out, MANIFEST), json.dumps(doc, indent=1).encode())
    markers, skipped = [], 0
    for part, inputs in groups:
        marker = read_marker(req.out, part)
        if marker is not None:
            markers.append(marker)
            skipped += 1
            continue
        ensure_ray()
        ds = shard_clip_dataset(req.data, clip, ex, paths=inputs)
        ds = encode_stage(ds, loaded.model, loaded.cfg.model, tuple(ident["dims"]), ex, RowEncoder)
        markers.append(write_part(ds, req.out, part, inputs))
    rows = sum(int(m["rows"]) for m in markers)
    segments = sum(int(m["segments"]) for m in markers)
    doc.update(complete=True, rows=rows, segments=segments)
    storage.write_bytes(storage.join(req.out, MANIFEST), json.dumps(doc, indent=1).encode())
    return EmbedResult(
        out=req.out, rows=rows, segments=segments, dims=dict(ident["dims"]), parts=len(groups),
        skipped=skipped, wall_s=time.monotonic() - t0, manifest=doc,
    )  # fmt: skip
