"""Feature extraction with Ray Data: segment shards -> evaluation clips -> encoder features.

The pipeline is `read_parquet` (v1 datasource, so it streams and does not hang actor pools on
small machines) -> `map_batches(sample_clips)` in CPU tasks -> `map_batches(Encoder)` on a pool
of model actors (one GPU each when CUDA is present, else a fraction of a CPU). ESC-50 style audio
files skip the shards: `audio_file_dataset` decodes them in tasks. Ray Data prints its progress
bars while the driver collects the features into a `ClipFeatures` table (eval); `avtime embed`
(training/eval/embed.py) shares the pipeline up to the encoder and writes Parquet instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from avtime.training.eval.clips import ClipConfig, audio_window, segment_clips, segment_starts

SHARD_COLUMNS = [
    "video_id", "source", "segment", "start_s", "fps", "num_frames", "width", "height", "frames", "sample_rate",
    "num_samples", "audio",
]  # fmt: skip
PASS_KEYS = ("video_id", "source", "segment", "clip")


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """Resources and batch sizes of feature extraction."""

    rows_per_task: int = 4  # segment rows per clip-sampling task
    cpus_per_task: float = 0.5
    batch_size: int = 16  # clips per encoder call
    actors: int = 1
    cpus_per_actor: float = 1.0  # CPU-only; differs from cpus_per_task so Ray does not fuse the ops
    # (with CUDA each actor takes one GPU instead)
    use_gpu: bool | None = None  # None: use a GPU when the driver sees CUDA


@dataclass
class ClipFeatures:
    """Features of every clip: keys per clip, feature matrices [N, F]."""

    video_id: list[str]
    source: list[str]
    video: torch.Tensor | None  # [N, Fv]
    audio: torch.Tensor | None  # [N, Fa]
    has_audio: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.video_id)


def sample_clips(
    table: pa.Table, *, cfg: ClipConfig, keep: frozenset[str] | None = None
) -> dict[str, np.ndarray]:
    """map_batches task: segment rows (pyarrow) -> one row per evaluation clip.

    Rows whose source is not in `keep` (when given) are dropped before any frame is decoded.
    """
    if keep is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table["source"], value_set=pa.array(sorted(keep))))
    keys = (*PASS_KEYS, "t_start", "t_end", "video", "audio", "has_audio")
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for row in table.to_pylist():
        clips = segment_clips(row, cfg)
        k = len(clips["video"])
        out["video_id"] += [row["video_id"]] * k
        out["source"] += [row["source"]] * k
        out["segment"] += [int(row["segment"])] * k
        out["clip"] += list(range(k))
        spans = clip_spans(row, cfg)
        out["t_start"] += [a for a, _ in spans]
        out["t_end"] += [b for _, b in spans]
        out["video"] += list(clips["video"])
        out["audio"] += list(clips["audio"])
        out["has_audio"] += list(clips["has_audio"])
    return _to_numpy(out, cfg)


def clip_spans(row: dict[str, Any], cfg: ClipConfig) -> list[tuple[float, float]]:
    """(start, end) in source seconds of each evaluation clip of a segment row: the stored
    frames `segment_clips` reads (a clip longer than the segment ends with the segment)."""
    n = len(row["frames"])
    fps = float(row["fps"])
    base = float(row.get("start_s") or 0.0)
    starts = segment_starts(row, cfg)
    return [(base + s / fps, base + min(s + cfg.clip_frames, n) / fps) for s in starts]


def _to_numpy(out: dict[str, list[Any]], cfg: ClipConfig) -> dict[str, np.ndarray]:
    s, t = cfg.crop_size, cfg.clip_frames
    res = {k: np.asarray(out[k]) for k in PASS_KEYS}
    res["t_start"] = np.asarray(out["t_start"], dtype=np.float64)
    res["t_end"] = np.asarray(out["t_end"], dtype=np.float64)
    res["video"] = np.stack(out["video"]) if out["video"] else np.zeros((0, 3, t, s, s), np.uint8)
    res["audio"] = (
        np.stack(out["audio"]).astype(np.float32)
        if out["audio"]
        else np.zeros((0, cfg.audio_len), np.float32)
    )
    res["has_audio"] = np.asarray(out["has_audio"], dtype=np.float32)
    return res


class Encoder:
    """Ray Data actor: clips -> pooled features of the video and/or audio encoder.

    Args:
        model_cfg: a ModelConfig; state: `torch.save` bytes of {"video.*", "audio.*"} weights;
        modalities: which encoders to run; device: "cuda" or "cpu".
    """

    def __init__(self, model_cfg: Any, state: bytes, modalities: tuple[str, ...], device: str):
        from avtime.models.audio import AudioEncoder
        from avtime.models.video import build_video_encoder
        from avtime.pipelines.logs import quiet_worker

        quiet_worker()
        torch.set_num_threads(1)
        sd = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
        self.device = torch.device(device)
        self.nets: dict[str, torch.nn.Module] = {}
        for name in modalities:
            net = build_video_encoder(model_cfg) if name == "video" else AudioEncoder(model_cfg)
            part = {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(f"{name}.")}
            net.load_state_dict(part)
            self.nets[name] = net.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k not in ("video", "audio")}
        with torch.inference_mode(), _autocast(self.device):
            for name, net in self.nets.items():
                if len(batch[name]) == 0:  # a block whose rows were all filtered out
                    dim = int(net.out_dim)  # type: ignore[arg-type]
                    out[f"feat_{name}"] = np.zeros((0, dim), dtype=np.float32)
                    continue
                # Arrow hands over read-only arrays; torch wants writable ones
                x = torch.from_numpy(np.require(batch[name], requirements=("C", "W")))
                x = x.to(self.device)
                out[f"feat_{name}"] = net(x).float().cpu().numpy()
        return out


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def encoder_state(model: torch.nn.Module, modalities: tuple[str, ...]) -> bytes:
    """The weights of the requested encoders of an AVModel, as `torch.save` bytes."""
    sd = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in modalities}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _use_gpu(ex: ExtractConfig) -> bool:
    return torch.cuda.is_available() if ex.use_gpu is None else ex.use_gpu


def encode_stage(
    ds: Any,
    model: torch.nn.Module,
    model_cfg: Any,
    modalities: tuple[str, ...],
    ex: ExtractConfig,
    encoder: type[Encoder] | None = None,
) -> Any:
    """The clip dataset with the encoder actors appended (lazy): one GPU per actor when CUDA is
    there, else `cpus_per_actor` CPUs. `encoder` is the actor class (default `Encoder`; embed
    passes a subclass that emits Arrow rows). Eval collects the result, embed writes it."""
    import ray.data

    gpu = _use_gpu(ex)
    return ds.map_batches(
        encoder or Encoder,
        batch_size=ex.batch_size,
        compute=ray.data.ActorPoolStrategy(size=ex.actors),
        num_cpus=None if gpu else ex.cpus_per_actor,
        num_gpus=1 if gpu else None,
        fn_constructor_kwargs={
            "model_cfg": model_cfg,
            "state": encoder_state(model, modalities),
            "modalities": modalities,
            "device": "cuda" if gpu else "cpu",
        },
        # Its constructor's weights live in the object store: Ray would warn that a restart can
        # fail once they are gone, so a failed actor fails the job (it is rerun whole) instead.
        max_restarts=0,
    )


def encode_dataset(
    ds: Any,
    model: torch.nn.Module,
    model_cfg: Any,
    modalities: tuple[str, ...],
    ex: ExtractConfig,
    expected: int | None = None,
) -> ClipFeatures:
    """Run the Encoder actors over a clip dataset and collect the features on the driver."""
    return collect(encode_stage(ds, model, model_cfg, modalities, ex), modalities, expected)


def collect(ds: Any, modalities: tuple[str, ...], expected: int | None = None) -> ClipFeatures:
    """Gather a feature dataset on the driver, sorted by (video_id, segment, clip).

    With `expected` (a number of files), a progress bar counts the files whose clips arrived.
    """
    from avtime.pipelines.progress import ProgressBar

    bar = ProgressBar(expected, label="eval features", unit="files") if expected else None
    seen: set[str] = set()
    cols: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).append(v)
        if bar is not None:
            new = set(map(str, batch["source"])) - seen
            seen |= new
            bar.update(len(new))
    if bar is not None:
        bar.close()
    if not cols:
        raise ValueError("feature extraction produced no clips (are the shards empty?)")
    data = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.lexsort((data["clip"], data["segment"], data["video_id"]))
    return ClipFeatures(
        video_id=[str(x) for x in data["video_id"][order]],
        source=[str(x) for x in data["source"][order]],
        video=torch.from_numpy(data["feat_video"][order]) if "video" in modalities else None,
        audio=torch.from_numpy(data["feat_audio"][order]) if "audio" in modalities else None,
        has_audio=torch.from_numpy(data["has_audio"][order].astype(np.float32)),
    )


def shard_clip_dataset(
    shards_uri: str,
    cfg: ClipConfig,
    ex: ExtractConfig,
    keep: frozenset[str] | None = None,
    paths: list[str] | None = None,
) -> Any:
    """A Ray Dataset of evaluation clips from the segment shards (sources in `keep` only;
    `paths`, shard URIs under `shards_uri`, reads only those shards instead of all)."""
    import ray.data

    from avtime.pipelines import storage
    from avtime.pipelines.pretext.stream import shard_paths

    ray.data.DataContext.get_current().use_datasource_v2 = False
    paths = list(paths) if paths is not None else shard_paths(shards_uri)
    fs, _ = storage.arrow_filesystem(shards_uri)
    if storage.is_s3(shards_uri):
        paths = [storage.s3_path(p) for p in paths]
    ds: Any = ray.data.read_parquet(paths, filesystem=fs, columns=SHARD_COLUMNS)
    return ds.map_batches(
        sample_clips,
        batch_size=ex.rows_per_task,
        batch_format="pyarrow",
        num_cpus=ex.cpus_per_task,
        fn_kwargs={"cfg": cfg, "keep": keep},
    )


def extract_shard_features(
    shards_uri: str,
    model: torch.nn.Module,
    model_cfg: Any,
    cfg: ClipConfig,
    modalities: tuple[str, ...] = ("video",),
    ex: ExtractConfig | None = None,
    keep: frozenset[str] | None = None,
) -> ClipFeatures:
    """Clip features of every segment in the shards whose source is in `keep` (all if None)."""
    ex = ex or ExtractConfig()
    ds = shard_clip_dataset(shards_uri, cfg, ex, keep)
    return encode_dataset(ds, model, model_cfg, modalities, ex, len(keep) if keep else None)


def audio_file_clips(batch: dict[str, np.ndarray], *, cfg: ClipConfig) -> dict[str, np.ndarray]:
    """map_batches task: audio file URIs -> evenly spaced clips of L samples per file."""
    from avtime.training.eval.audio_io import read_audio

    out: dict[str, list[Any]] = {k: [] for k in (*PASS_KEYS, "audio", "has_audio")}
    for uri in batch["source"]:
        wav = read_audio(str(uri), cfg.sample_rate)
        starts = audio_centres(len(wav), cfg.audio_len, cfg.clips_per_segment)
        for i, c in enumerate(starts):
            out["audio"].append(audio_window(wav, c, cfg.audio_len))
            out["clip"].append(i)
        k = len(starts)
        out["video_id"] += [str(uri)] * k
        out["source"] += [str(uri)] * k
        out["segment"] += [0] * k
        out["has_audio"] += [1.0] * k
    res = {k: np.asarray(out[k]) for k in PASS_KEYS}
    res["audio"] = np.stack(out["audio"]).astype(np.float32)
    res["has_audio"] = np.asarray(out["has_audio"], dtype=np.float32)
    return res


def audio_centres(num_samples: int, length: int, k: int) -> list[float]:
    """Centres of k windows of `length` evenly spaced over `num_samples` (all inside it)."""
    if num_samples <= length or k == 1:
        return [num_samples / 2]
    lo, hi = length / 2, num_samples - length / 2
    return [lo + i * (hi - lo) / (k - 1) for i in range(k)]


def extract_audio_file_features(
    sources: list[str],
    model: torch.nn.Module,
    model_cfg: Any,
    cfg: ClipConfig,
    ex: ExtractConfig | None = None,
) -> ClipFeatures:
    """Audio-encoder features of `clips_per_segment` clips of every audio file."""
    import ray.data

    ex = ex or ExtractConfig()
    ds: Any = ray.data.from_items([{"source": s} for s in sources])
    ds = ds.map_batches(
        audio_file_clips,
        batch_size=ex.rows_per_task,
        num_cpus=ex.cpus_per_task,
        fn_kwargs={"cfg": cfg},
    )
    return encode_dataset(ds, model, model_cfg, ("audio",), ex, len(sources))
