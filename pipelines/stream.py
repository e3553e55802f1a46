"""The pretext training stream: segment shards -> pretext example batches (CONTRACTS.md section 2).

`build_pretext_dataset` is the Ray Data pipeline: `read_parquet` of the needed columns (local or
s3://), a block order shuffled by (seed, epoch), and the sampler in task-based `map_batches` on CPU
workers. `iter_pretext_examples` is the same sampler over the same shards in plain Python, for a
torch DataLoader baseline and for `avtime sample`.

Determinism: the random generator of every example is derived from (seed, epoch, video_id,
segment, repeat), so the examples of an epoch do not depend on scheduling or block order; within
a map task the examples are permuted by a generator derived from their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import storage
from pipelines.config import DataConfig
from pipelines.pretext import audio_length
from pipelines.render import DEFAULT_SAMPLE_RATE, Example, make_example, row_geometry
from pipelines.schema import MANIFEST_NAME, is_shard_name, parse_manifest

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

COLUMNS = [
    "video_id", "segment", "start_s", "fps", "num_frames", "height", "width",
    "frames", "sample_rate", "num_samples", "audio",
]  # fmt: skip
META_COLUMNS = [c for c in COLUMNS if c not in ("frames", "audio")]
LABEL_KEYS = (
    "label_video_speed", "label_audio_speed", "label_video_reverse", "label_audio_reverse",
    "label_video_order", "label_audio_order", "label_av_order",
)  # fmt: skip


def shard_paths(shards_uri: str) -> list[str]:
    """The shard files (`part-*.parquet`) under a local folder or s3:// prefix, sorted."""
    paths = [p for p in storage.list_files(shards_uri) if is_shard_name(p)]
    if not paths:
        raise FileNotFoundError(
            f"no shards (part-*.parquet) under {shards_uri}; run `avtime preprocess SRC DST` first"
        )
    return paths


def shards_sample_rate(shards_uri: str) -> int:
    """The stored audio rate from the shards' manifest.json (IngestConfig.sample_rate), or
    DEFAULT_SAMPLE_RATE when there is no manifest. Used for segments without audio."""
    uri = storage.join(shards_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        return DEFAULT_SAMPLE_RATE
    doc = parse_manifest(storage.read_bytes(uri))
    return int(doc["config"].get("sample_rate", DEFAULT_SAMPLE_RATE))


def segment_stats(
    shards_uri: str, cfg: DataConfig, sample_rate: int | None = None
) -> dict[str, int]:
    """How the short-segment rule treats the shards' segments: counts of "ok", "restricted"
    (some large speeds dropped for that segment), "skipped" (no example drawn) and "no_audio".
    Reads only metadata columns."""
    import pyarrow.parquet as pq

    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    fs, _ = storage.arrow_filesystem(shards_uri)
    counts = {"ok": 0, "restricted": 0, "skipped": 0, "no_audio": 0}
    for p in shard_paths(shards_uri):
        path = storage.s3_path(p) if storage.is_s3(p) else p
        cols = ["num_frames", "fps", "sample_rate", "num_samples"]
        for row in pq.read_table(path, columns=cols, filesystem=fs).to_pylist():
            row["audio"] = b"" if row["num_samples"] > 0 else None
            _, table = row_geometry(row, cfg, sr)
            counts[table.status] += 1
            counts["no_audio"] += row["audio"] is None
    return counts


def _words(text: str) -> list[int]:
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def example_rng(
    seed: int, epoch: int, video_id: str, segment: int, repeat: int
) -> np.random.Generator:
    """The generator of one example, from (seed, epoch, video_id, segment, repeat) only."""
    return np.random.default_rng([seed, epoch, *_words(video_id), segment, repeat])


def example_key(video_id: str, segment: int, repeat: int) -> int:
    """A stable non-negative int64 id of (video_id, segment, repeat)."""
    digest = hashlib.sha1(f"{video_id}/{segment}/{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_row(
    row: Mapping[str, Any], cfg: DataConfig, epoch: int, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> list[Example]:
    """The `examples_per_row` examples of one segment row for one epoch (none if skipped)."""
    out = []
    vid, seg = str(row["video_id"]), int(row["segment"])
    for repeat in range(cfg.stream.examples_per_row):
        rng = example_rng(cfg.stream.seed, epoch, vid, seg, repeat)
        ex = make_example(row, cfg, rng, sample_rate=sample_rate)
        if ex is not None:
            ex["example_key"] = np.array(example_key(vid, seg, repeat), dtype=np.int64)
            ex["video_id"], ex["segment"] = np.array(vid), np.array(seg, dtype=np.int64)
            out.append(ex)
    return out


def to_batch(
    examples: Sequence[Example],
    cfg: DataConfig,
    *,
    meta: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> dict[str, np.ndarray]:
    """Stack examples into the contract batch: video1/2 uint8 [B, 3, T, S, S], audio1/2 float32
    [B, L], has_audio float32 [B], label_* int64, example_key int64 [B]. `meta` adds video_t,
    audio_span, audio_speed, audio_reverse, video_speed (for inspection)."""
    t, s = cfg.pretext.clip_frames, cfg.augment.crop_size
    if not examples:
        return _empty_batch(cfg, sample_rate)
    video = np.empty((2, len(examples), 3, t, s, s), dtype=np.uint8)
    for b, e in enumerate(examples):  # one copy each: [2, T, S, S, 3] -> [2, 3, T, S, S]
        video[:, b] = e["video"].transpose(0, 4, 1, 2, 3)
    out = {
        "video1": video[0],
        "video2": video[1],
        "audio1": np.stack([e["audio"][0] for e in examples]),
        "audio2": np.stack([e["audio"][1] for e in examples]),
        "has_audio": np.stack([e["has_audio"] for e in examples]).astype(np.float32),
        "example_key": np.stack([e["example_key"] for e in examples]).astype(np.int64),
    }
    keys = LABEL_KEYS + (
        ("video_t", "audio_span", "audio_speed", "audio_reverse", "video_speed") if meta else ()
    )
    out.update({k: np.stack([e[k] for e in examples]) for k in keys})
    assert out["video1"].shape[1:] == (3, t, s, s)
    return out


def _empty_batch(cfg: DataConfig, sample_rate: int) -> dict[str, np.ndarray]:
    t, s = cfg.pretext.clip_frames, cfg.augment.crop_size
    n = audio_length(cfg.pretext.audio_seconds, sample_rate)
    out: dict[str, np.ndarray] = {
        "video1": np.zeros((0, 3, t, s, s), np.uint8),
        "video2": np.zeros((0, 3, t, s, s), np.uint8),
        "audio1": np.zeros((0, n), np.float32),
        "audio2": np.zeros((0, n), np.float32),
        "has_audio": np.zeros(0, np.float32),
        "example_key": np.zeros(0, np.int64),
    }
    for k in LABEL_KEYS:
        out[k] = np.zeros(
            (0,) if k in ("label_video_order", "label_audio_order") else (0, 2), np.int64
        )
    return out


class _RowView(Mapping[str, Any]):
    """Row `i` of a pyarrow table batch, reading only the frames that are asked for."""

    def __init__(self, table: pa.Table, i: int) -> None:
        self._table, self._i = table, i
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._cache:
            col = self._table.column(key)
            if key == "frames":
                self._cache[key] = _LazyFrames(col, self._i)
            else:
                self._cache[key] = col[self._i].as_py()
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.column_names)

    def __len__(self) -> int:
        return self._table.num_columns


class _LazyFrames(Sequence[bytes]):
    """The encoded frames of one row of a list<binary> column, decoded to bytes on access."""

    def __init__(self, col: pa.ChunkedArray, i: int) -> None:
        scalar = col[i]
        self._values = scalar.values

    def __getitem__(self, j: int) -> bytes:  # type: ignore[override]
        return self._values[j].as_py()

    def __len__(self) -> int:
        return len(self._values)


def sample_table(
    table: pa.Table, *, cfg: DataConfig, epoch: int, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> dict[str, np.ndarray]:
    """The map_batches function: segment rows (pyarrow) -> a shuffled batch of examples."""
    examples: list[Example] = []
    for i in range(table.num_rows):
        examples.extend(sample_row(_RowView(table, i), cfg, epoch, sample_rate))
    keys = sorted(int(e["example_key"]) for e in examples)
    rng = np.random.default_rng([cfg.stream.seed, epoch, *(k & 0xFFFFFFFF for k in keys[:8])])
    order = rng.permutation(len(examples))
    return to_batch([examples[i] for i in order], cfg, sample_rate=sample_rate)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1)[0])


def build_pretext_dataset(
    shards_uri: str,
    data_cfg: DataConfig,
    *,
    epoch: int = 0,
    epochs: int = 1,
    sample_rate: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of pretext examples for epochs [epoch, epoch + epochs) (CONTRACTS.md 2).

    Reads only the needed columns with the v1 Parquet datasource (streams block by block) in a
    shard order shuffled by (seed, epoch) (no all-to-all step, so the first batch comes as soon as
    the first shard is read), and samples in CPU tasks of `cpus_per_task` CPUs,
    `rows_per_task` segment rows per task. Feed it to `TorchTrainer(datasets={"train": ds})` and
    iterate `ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)`.
    """
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = False
    paths = shard_paths(shards_uri)
    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    fs, _ = storage.arrow_filesystem(shards_uri)
    if storage.is_s3(shards_uri):
        paths = [storage.s3_path(p) for p in paths]
    datasets = []
    for e in range(epoch, epoch + epochs):
        order = np.random.default_rng(_epoch_seed(data_cfg.stream.seed, e)).permutation(len(paths))
        ds = ray.data.read_parquet([paths[i] for i in order], filesystem=fs, columns=COLUMNS)
        ds = ds.map_batches(
            sample_table,  # type: ignore[arg-type]
            batch_size=data_cfg.stream.rows_per_task,
            batch_format="pyarrow",
            num_cpus=data_cfg.stream.cpus_per_task,
            fn_kwargs={"cfg": data_cfg, "epoch": e, "sample_rate": sr},
        )
        datasets.append(ds)
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])


def iter_pretext_examples(
    shards_uri: str,
    data_cfg: DataConfig,
    *,
    epoch: int = 0,
    worker: int = 0,
    num_workers: int = 1,
    sample_rate: int | None = None,
) -> Iterator[Example]:
    """The same examples in plain Python: shards in an order shuffled by (seed, epoch), this
    worker's share of the row groups (round robin), rows of a row group in shuffled order."""
    import pyarrow.parquet as pq

    paths = shard_paths(shards_uri)
    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    fs, _ = storage.arrow_filesystem(shards_uri)
    rng = np.random.default_rng([data_cfg.stream.seed, epoch, 0xF11E])
    unit = 0
    for p in [paths[i] for i in rng.permutation(len(paths))]:
        path = storage.s3_path(p) if storage.is_s3(p) else p
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                unit += 1
                if (unit - 1) % num_workers != worker:
                    continue
                table = pf.read_row_group(g, columns=COLUMNS)
                for i in rng.permutation(table.num_rows):
                    yield from sample_row(_RowView(table, int(i)), data_cfg, epoch, sr)


def iter_pretext_batches(
    shards_uri: str,
    data_cfg: DataConfig,
    *,
    epoch: int = 0,
    worker: int = 0,
    num_workers: int = 1,
    sample_rate: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Contract batches (CONTRACTS.md section 2) of `stream.batch_size` examples, in plain Python;
    the last batch may be smaller."""
    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    it = iter_pretext_examples(
        shards_uri, data_cfg, epoch=epoch, worker=worker, num_workers=num_workers, sample_rate=sr
    )
    buf: list[Example] = []
    for ex in it:
        buf.append(ex)
        if len(buf) == data_cfg.stream.batch_size:
            yield to_batch(buf, data_cfg, sample_rate=sr)
            buf = []
    if buf:
        yield to_batch(buf, data_cfg, sample_rate=sr)


def torch_iterable(shards_uri: str, data_cfg: DataConfig, *, epoch: int = 0) -> Any:
    """A `torch.utils.data.IterableDataset` of contract batches for a plain DataLoader baseline:
    `DataLoader(torch_iterable(...), batch_size=None, num_workers=k)`; each DataLoader worker
    samples its own share of the row groups."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    sr = shards_sample_rate(shards_uri)

    class _Batches(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
            info = get_worker_info()
            worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
            for batch in iter_pretext_batches(
                shards_uri, data_cfg, epoch=epoch, worker=worker, num_workers=n, sample_rate=sr
            ):
                yield {k: torch.from_numpy(v) for k, v in batch.items()}

    return _Batches()
