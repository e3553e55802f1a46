"""Nearest-clip search over an `avtime embed` index, within or across modalities.

The query is a video file, decoded by the ingest decoder with the index's own ingest settings
into a temporary shard and embedded with the index's own checkpoint (read from its manifest), clip
by clip exactly as `embed` cut the index (its clips per segment or its stride, unless the
request gives another stride for the query); or a video id, `VIDEO_ID/SEGMENT` or source URI of the
index, whose stored embeddings are the query. Each index clip scores the best cosine similarity
to any query clip. Across modalities (`--from audio --to video`), both sides go through the
model's video-audio contrastive projections (`proj_va_video`, `proj_va_audio`), the space the
two encoders were trained to share; within one modality the encoder features are compared.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from avtime.pipelines import storage
from avtime.training.eval.embed import EmbedError, read_embeddings, read_manifest

MODALITIES = ("video", "audio")


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """Where to search, with what, and how many neighbours."""

    index: str  # an `avtime embed` destination
    query: str  # a video file, or a video id / VIDEO_ID/SEGMENT / source of the index
    from_modality: str = "video"
    to_modality: str = "video"
    k: int = 5
    stride_s: float = 0.0  # > 0: a query file's clips start every stride_s seconds; 0: as indexed

    def __post_init__(self) -> None:
        if self.from_modality not in MODALITIES or self.to_modality not in MODALITIES:
            raise ValueError("--from and --to must be video or audio")
        if self.k < 1:
            raise ValueError("--k must be >= 1")
        if not self.stride_s >= 0:
            raise ValueError("--stride must be > 0 seconds")


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One neighbour: an index clip and its cosine score."""

    rank: int
    score: float
    video_id: str
    source: str
    segment: int
    clip: int
    t_start: float
    t_end: float


@dataclass
class QueryClips:
    """The query's clip embeddings [Q, D] (and video clips uint8 [Q, 3, T, S, S] when decoded
    from a file, for the picture)."""

    what: str
    feats: torch.Tensor
    video: np.ndarray | None = None
    keys: list[tuple[str, int, float]] | None = None  # (video_id, segment, t_mid) per clip


@dataclass
class SearchResult:
    """The neighbours, best first, and what was searched."""

    hits: list[Hit]
    query: QueryClips
    searched: int  # index clips with a `to` embedding
    index_data: str  # the index's input shards (for pictures of the neighbours)


def _index(req: SearchRequest) -> tuple[dict[str, Any], pa.Table]:
    doc = read_manifest(req.index)
    if doc is None:
        raise EmbedError(
            f"{req.index} is not an embeddings index (no manifest.json); run `avtime embed`"
        )
    for mod in (req.from_modality, req.to_modality):
        if mod not in doc.get("modalities", []):
            raise EmbedError(
                f"{req.index} holds no {mod} embeddings (it has {doc.get('modalities')})"
            )
    cols = ["video_id", "source", "segment", "clip", "t_start", "t_end"]
    cols += sorted({req.from_modality, req.to_modality})
    table = read_embeddings(req.index, cols)
    if table.num_rows == 0:
        raise EmbedError(f"{req.index} is empty: it holds no embedded clips")
    return doc, table


def load_index_model(doc: dict[str, Any]) -> Any:
    """The index's model (its checkpoint, or its random init), checked against its digest."""
    from avtime.training.eval.embed import config_digest
    from avtime.training.eval.model_io import load_model

    rand = doc.get("random_init") or {}
    loaded = load_model(
        str(doc.get("checkpoint_uri") or doc["checkpoint"]),
        config=str(rand.get("config", "demo")),
        overrides=tuple(rand.get("overrides", ())),
        seed=int(rand.get("seed", 0)),
    )
    if config_digest(loaded.cfg.model) != doc.get("config_digest"):
        raise EmbedError(
            f"the index's checkpoint {doc.get('checkpoint')} now loads another model config; "
            "embed again"
        )
    return loaded


def _column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a value, float32 [N, D]) of a fixed-size list column."""
    col = table[name].combine_chunks()
    valid = np.asarray(col.is_valid())
    dim = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    full = np.zeros((len(col), dim), np.float32)
    full[valid] = flat.reshape(-1, dim)
    return valid, full[valid]


def _decode_query(path: str, doc: dict[str, Any]) -> pa.Table:
    """The query file's segment rows, decoded by the ingest job with the index's settings."""
    import pyarrow.parquet as pq

    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.configlib import from_dict
    from avtime.pipelines.ingest.job import run_ingest
    from avtime.training.eval.embed import ensure_ray
    from avtime.training.eval.features import SHARD_COLUMNS

    cfg = from_dict(IngestConfig, dict(doc.get("ingest") or {}))
    tmp = storage.local_scratch("avtime-query-")
    try:
        ensure_ray()
        res = run_ingest(path, storage.join(tmp, "shards"), cfg, workers=1)
        if res.rows == 0:
            raise EmbedError(f"query {path} could not be decoded (not a readable video)")
        files = [f for f in storage.list_files(storage.join(tmp, "shards")) if "part-" in f]
        return pa.concat_tables([pq.read_table(f, columns=SHARD_COLUMNS) for f in files])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_query(
    path: str, doc: dict[str, Any], loaded: Any, mod: str, stride_s: float = 0.0
) -> QueryClips:
    """Embed a video file's clips as `embed` does (same clips, same Encoder code; with
    `stride_s` > 0, clips every `stride_s` seconds instead of the index's spacing)."""
    from dataclasses import replace

    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.features import Encoder, encoder_state, sample_clips

    clip = ClipConfig(**doc["clips"])
    if stride_s > 0:
        clip = replace(clip, stride_s=stride_s)
    batch = sample_clips(_decode_query(path, doc), cfg=clip)
    if len(batch["clip"]) == 0:
        raise EmbedError(f"query {path} is shorter than one stride: no clip of it to search with")
    if mod == "audio" and not batch["has_audio"].any():
        raise EmbedError(f"query {path} has no audio; use --from video")
    enc = Encoder(loaded.cfg.model, encoder_state(loaded.model, (mod,)), (mod,), "cpu")
    keep = batch["has_audio"] > 0 if mod == "audio" else np.ones(len(batch["clip"]), bool)
    feats = torch.from_numpy(enc(batch)[f"feat_{mod}"][keep])
    mids = (batch["t_start"] + batch["t_end"]) / 2
    keys = [
        (str(v), int(s), float(t)) for v, s, t in zip(batch["video_id"], batch["segment"], mids)
    ]
    return QueryClips(
        what=path,
        feats=feats,
        video=batch["video"][keep],
        keys=[k for k, ok in zip(keys, keep) if ok],
    )


def _index_query(query: str, table: pa.Table, mod: str) -> QueryClips:
    """The stored embeddings of an index video (id or source) or `VIDEO_ID/SEGMENT`."""
    vid, _, seg = query.rpartition("/") if query.rpartition("/")[2].isdigit() else (query, "", "")
    ids = np.asarray(table["video_id"].to_pylist(), dtype=object)
    sources = np.asarray(table["source"].to_pylist(), dtype=object)
    rows = (ids == vid) | (sources == vid)
    if seg:
        rows &= np.asarray(table["segment"].to_pylist()) == int(seg)
    if not rows.any():
        raise EmbedError(
            f"query {query} is neither a video file nor a video id or source of the index"
        )
    valid, feats = _column(table.filter(pa.array(rows)), mod)
    if len(feats) == 0:
        raise EmbedError(f"query {query} has no {mod} embeddings (no audio?); use --from video")
    sub = table.filter(pa.array(rows)).filter(pa.array(valid))
    mids = [(a + b) / 2 for a, b in zip(sub["t_start"].to_pylist(), sub["t_end"].to_pylist())]
    keys = list(zip(sub["video_id"].to_pylist(), sub["segment"].to_pylist(), mids))
    return QueryClips(what=query, feats=torch.from_numpy(feats), keys=keys)


def _is_file(uri: str) -> bool:
    try:
        fs, path = storage.filesystem(uri)
        return bool(fs.isfile(path))
    except (OSError, ValueError):
        return False


def project(model: Any, feats: torch.Tensor, mod: str) -> torch.Tensor:
    """Features [N, F] of `mod` -> the shared video-audio space [N, D] (the contrastive heads)."""
    head = f"proj_va_{mod}"
    if head not in model.heads:
        raise EmbedError(
            "this model has no video-audio projections (its va loss was off), so audio and video "
            "cannot be compared; search within one modality"
        )
    with torch.inference_mode():
        out: torch.Tensor = model.heads[head](feats.float())
    return out


def search(req: SearchRequest) -> SearchResult:
    """The k index clips nearest to the query (cosine; best over the query's clips)."""
    doc, table = _index(req)
    valid, index_feats = _column(table, req.to_modality)
    if len(index_feats) == 0:
        raise EmbedError(f"{req.index} holds no {req.to_modality} embeddings (no clip had audio)")
    loaded = load_index_model(doc)
    if _is_file(req.query):
        query = _file_query(req.query, doc, loaded, req.from_modality, req.stride_s)
    else:
        query = _index_query(req.query, table, req.from_modality)
    q, g = query.feats, torch.from_numpy(index_feats)
    if req.from_modality != req.to_modality:
        q = project(loaded.model, q, req.from_modality)
        g = project(loaded.model, g, req.to_modality)
    scores = (F.normalize(q.float(), dim=1) @ F.normalize(g.float(), dim=1).T).max(dim=0).values
    top = torch.topk(scores, min(req.k, len(scores)))
    rows = table.filter(pa.array(valid))
    hits = []
    for rank, (score, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
        r = {name: rows[name][i].as_py() for name in rows.column_names if name not in MODALITIES}
        hits.append(Hit(rank=rank, score=float(score), **r))
    return SearchResult(
        hits=hits, query=query, searched=len(index_feats), index_data=str(doc["data"])
    )


def result_lines(result: SearchResult, req: SearchRequest) -> list[str]:
    """What `avtime search` prints: a header, then one line per neighbour with its rank,
    cosine, source, segment and clip, and time span in the source."""
    lines = [
        f"search: {len(result.query.feats)} {req.from_modality} clips of {result.query.what} -> "
        f"{req.to_modality}, top {len(result.hits)} of {result.searched} clips in {req.index}"
    ]
    for h in result.hits:
        lines.append(
            f"{h.rank:3d}  {h.score:+.4f}  {h.source}  segment {h.segment} clip {h.clip}  "
            f"{h.t_start:.2f}-{h.t_end:.2f} s"
        )
    return lines


def own_rank(result: SearchResult) -> int | None:
    """The rank of the first hit from the query's own video (None when none is among the
    hits, or the query has no index keys)."""
    own = {key[0] for key in result.query.keys or []}
    return next((h.rank for h in result.hits if h.video_id in own), None)


def _frames_at(shards: str, wanted: list[tuple[str, int, float]]) -> list[np.ndarray | None]:
    """The stored frame nearest time t of each (video_id, segment, t), RGB uint8 [H, W, 3]."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from avtime.pipelines.pretext.stream import shard_paths

    ids = sorted({w[0] for w in wanted})
    found: dict[tuple[str, int], dict[str, Any]] = {}
    cols = ["video_id", "segment", "start_s", "fps", "frames"]
    for uri in shard_paths(shards):
        fs, path = storage.arrow_filesystem(uri)
        t = pq.read_table(path, filesystem=fs, columns=cols, filters=[("video_id", "in", ids)])
        for row in t.to_pylist():
            found[(row["video_id"], int(row["segment"]))] = row
    out: list[np.ndarray | None] = []
    for vid, seg, when in wanted:
        row = found.get((vid, seg))
        if row is None or not row["frames"]:
            out.append(None)
            continue
        i = int(round((when - float(row["start_s"])) * float(row["fps"])))
        img = Image.open(io.BytesIO(row["frames"][min(max(i, 0), len(row["frames"]) - 1)]))
        out.append(np.asarray(img.convert("RGB")))
    return out


def plot_search(result: SearchResult, req: SearchRequest, png: str) -> None:
    """The query (a frame of its first clip) beside each neighbour's middle frame, with source,
    time span and score; written to `png` (local or s3://)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result.query
    if q.video is not None and len(q.video):
        v = q.video[0]  # [3, T, S, S]
        query_img: np.ndarray | None = v[:, v.shape[1] // 2].transpose(1, 2, 0)
    else:
        query_img = _frames_at(result.index_data, (q.keys or [])[:1])[0] if q.keys else None
    wanted = [(h.video_id, h.segment, (h.t_start + h.t_end) / 2) for h in result.hits]
    imgs = [query_img, *_frames_at(result.index_data, wanted)]
    n = len(imgs)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.9), squeeze=False)
    titles = [f"query ({req.from_modality})\n{_short(q.what)}"] + [
        f"#{h.rank} cos {h.score:.3f}\n{_short(h.source)}\n{h.t_start:.2f}-{h.t_end:.2f} s"
        for h in result.hits
    ]
    for ax, img, title in zip(axes[0], imgs, titles):
        if img is not None:
            ax.imshow(img)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle(
        f"nearest {req.to_modality} clips of the index to the {req.from_modality} query", fontsize=9
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(png, buf.getvalue())


def _short(text: str, width: int = 26) -> str:
    name = text.rsplit("/", 1)[-1]
    return name if len(name) <= width else "..." + name[-(width - 3) :]
