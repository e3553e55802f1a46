"""The pretext training stream: segment shards -> pretext example batches (CONTRACTS.md section 2).

`build_pretext_dataset` is the Ray Data pipeline: the driver lists work units (row-group slices
of the shards, in an order shuffled per (seed, epoch)); task-based `map_batches` on CPU workers
read each unit's rows (only the needed columns, local or s3://) and run the sampler.
`iter_pretext_examples` is the same sampler over the same units in plain Python, for a torch
DataLoader baseline and for `avtime sample`.

Determinism: the random generator of every example is derived from (seed, epoch, video_id,
segment, repeat), so the examples of an epoch do not depend on scheduling; within a unit the
examples are permuted by a generator derived from (seed, epoch, unit).

Why not `read_parquet`: a union of one `read_parquet` pipeline per epoch cost the driver about
27 ms of CPU per example at 10 epochs (the streaming executor loops over every operator), more
than the sampling itself; one FromItems -> MapBatches pipeline for all epochs does not grow.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from avtime.pipelines import storage
from avtime.pipelines.config import DEFAULT_SAMPLE_RATE, DataConfig
from avtime.pipelines.pretext.clips import Example, encode_example, make_example, row_geometry
from avtime.pipelines.pretext.plan import audio_length
from avtime.pipelines.schema import MANIFEST_NAME, listed_shards, parse_manifest

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

COLUMNS = [
    "video_id", "segment", "start_s", "fps", "num_frames", "height", "width",
    "frames", "sample_rate", "num_samples", "audio",
]  # fmt: skip
META_COLUMNS = [c for c in COLUMNS if c not in ("frames", "audio")]
MAX_BLOCKS = 4096  # input blocks of work units
LABEL_KEYS = (
    "label_video_speed", "label_audio_speed", "label_video_reverse", "label_audio_reverse",
    "label_video_order", "label_audio_order", "label_av_order",
)  # fmt: skip


def shard_paths(shards_uri: str) -> list[str]:
    """The shards that `manifest.json` lists, as URIs in manifest order.

    The manifest is the only truth: a `part-*.parquet` it does not list (a stray left by another
    run) is never read, and a listed shard that is missing is an error naming it.
    """
    uri = storage.join(shards_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"{shards_uri} has no {MANIFEST_NAME}: not a preprocessed dataset (or its preprocess "
            f"did not finish); run `avtime preprocess SRC {shards_uri}` first"
        )
    names = listed_shards(parse_manifest(storage.read_bytes(uri), uri), uri)
    if not names:
        raise FileNotFoundError(
            f"{uri} lists no shards: every input was rejected (rejects.parquet)"
        )
    present = {f.replace(os.sep, "/").rsplit("/", 1)[-1] for f in storage.list_files(shards_uri)}
    missing = [n for n in names if n.rsplit("/", 1)[-1] not in present]
    if missing:
        raise FileNotFoundError(
            f"{shards_uri}: {len(missing)} of the {len(names)} shards that {MANIFEST_NAME} lists "
            f"are missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            f"`avtime verify {shards_uri}` checks the rest; preprocess again into a fresh folder"
        )
    return [storage.join(shards_uri, n) for n in names]


def read_shard(path: str, fs: Any, columns: list[str]) -> pa.Table:
    """`columns` of one shard; ValueError naming the shard when it is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(storage.s3_path(path) if storage.is_s3(path) else path,
                             columns=columns, filesystem=fs)  # fmt: skip
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"{path} is not a readable avtime shard ({' '.join(str(exc).split())[:200]}); "
            "run `avtime verify` on the dataset"
        ) from None


def shards_sample_rate(shards_uri: str) -> int:
    """The stored audio rate from the shards' manifest.json (IngestConfig.sample_rate), or
    DEFAULT_SAMPLE_RATE when there is no manifest. Used for segments without audio."""
    uri = storage.join(shards_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        return DEFAULT_SAMPLE_RATE
    doc = parse_manifest(storage.read_bytes(uri), uri)
    return int(doc["config"].get("sample_rate", DEFAULT_SAMPLE_RATE))


def segment_stats(
    shards_uri: str, cfg: DataConfig, sample_rate: int | None = None
) -> dict[str, int]:
    """How the short-segment rule treats the shards' segments: counts of "ok", "restricted"
    (some large speeds dropped for that segment), "skipped" (no example drawn) and "no_audio".
    Reads only metadata columns."""

    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    fs, _ = storage.arrow_filesystem(shards_uri)
    counts = {"ok": 0, "restricted": 0, "skipped": 0, "no_audio": 0}
    cols = ["num_frames", "fps", "sample_rate", "num_samples"]
    for p in shard_paths(shards_uri):
        for row in read_shard(p, fs, cols).to_pylist():
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


def _stable_id(text: str) -> int:
    """A stable non-negative int64 hash of `text` (the first 8 bytes of its SHA-1)."""
    digest = hashlib.sha1(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def example_key(video_id: str, segment: int, repeat: int) -> int:
    """A stable non-negative int64 id of (video_id, segment, repeat)."""
    return _stable_id(f"{video_id}/{segment}/{repeat}")


def source_key(video_id: str) -> int:
    """A stable non-negative int64 id of the source video (all its segments and clips share it)."""
    return _stable_id(f"source/{video_id}")


def sample_row(
    row: Mapping[str, Any], cfg: DataConfig, epoch: int, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> list[Example]:
    """The `examples_per_row` examples of one segment row for one epoch (none if skipped);
    encoded (`encode_example`) when `cfg.stream.decode_on` is "device"."""
    out = []
    vid, seg = str(row["video_id"]), int(row["segment"])
    sampler = encode_example if cfg.stream.decode_on == "device" else make_example
    for repeat in range(cfg.stream.examples_per_row):
        rng = example_rng(cfg.stream.seed, epoch, vid, seg, repeat)
        ex = sampler(row, cfg, rng, sample_rate=sample_rate)
        if ex is not None:
            ex["example_key"] = np.array(example_key(vid, seg, repeat), dtype=np.int64)
            ex["source_key"] = np.array(source_key(vid), dtype=np.int64)
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
    [B, L], has_audio float32 [B], label_* int64, example_key and source_key int64 [B]. `meta`
    adds video_t, audio_span, audio_speed, audio_reverse, video_speed (for inspection).

    With `cfg.stream.decode_on` "device" the examples are encoded (`encode_example`) and the
    batch carries `encoded_video` instead of video1/2 (see `encoded_video`)."""
    t, s = cfg.pretext.clip_frames, cfg.augment.crop_size
    if not examples:
        return _empty_batch(cfg, sample_rate)
    if cfg.stream.decode_on == "device":
        out = encoded_video(examples)
    else:
        video = np.empty((2, len(examples), 3, t, s, s), dtype=np.uint8)
        for b, e in enumerate(examples):  # one copy each: [2, T, S, S, 3] -> [2, 3, T, S, S]
            video[:, b] = e["video"].transpose(0, 4, 1, 2, 3)
        out = {"video1": video[0], "video2": video[1]}
    out |= {
        "audio1": np.stack([e["audio"][0] for e in examples]),
        "audio2": np.stack([e["audio"][1] for e in examples]),
        "has_audio": np.stack([e["has_audio"] for e in examples]).astype(np.float32),
        "example_key": np.stack([e["example_key"] for e in examples]).astype(np.int64),
        "source_key": np.stack([e["source_key"] for e in examples]).astype(np.int64),
    }
    keys = LABEL_KEYS + (
        ("video_t", "audio_span", "audio_speed", "audio_reverse", "video_speed") if meta else ()
    )
    out.update({k: np.stack([e[k] for e in examples]) for k in keys})
    assert "jpeg1" in out or out["video1"].shape[1:] == (3, t, s, s)
    return out


def encoded_video(examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """The video columns of a batch of encoded examples (`encode_example`): `jpeg1`, `jpeg2`
    object [B] (bytes: a clip's T JPEGs concatenated; Arrow binary under Ray Data),
    `jpeg1_len`, `jpeg2_len` int64 [B, T], `box` int64 [B, 2, 4], `flip` int64 [B, 2] and
    `color` float64 [B, 2, 3]. training/engine/device_decode.py `decode_batch` renders them into
    video1/2 uint8 [B, 3, T, S, S]."""
    out: dict[str, np.ndarray] = {}
    for k in ("jpeg1", "jpeg2"):
        blobs = np.empty(len(examples), dtype=object)
        blobs[:] = [e[k].item() for e in examples]
        out[k] = blobs
    for k in ("jpeg1_len", "jpeg2_len", "box", "flip", "color"):
        out[k] = np.stack([e[k] for e in examples])
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
        "source_key": np.zeros(0, np.int64),
    }
    for k in LABEL_KEYS:
        out[k] = np.zeros(
            (0,) if k in ("label_video_order", "label_audio_order") else (0, 2), np.int64
        )
    if cfg.stream.decode_on == "device":  # the columns of `encoded_video`
        del out["video1"], out["video2"]
        out |= {
            "jpeg1": np.empty(0, dtype=object), "jpeg2": np.empty(0, dtype=object),
            "jpeg1_len": np.zeros((0, t), np.int64), "jpeg2_len": np.zeros((0, t), np.int64),
            "box": np.zeros((0, 2, 4), np.int64), "flip": np.zeros((0, 2), np.int64),
            "color": np.zeros((0, 2, 3), np.float64),
        }  # fmt: skip
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


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1)[0])


def _fs_path(uri: str) -> str:
    return storage.s3_path(uri) if storage.is_s3(uri) else uri


def _row_group_sizes(shards_uri: str, paths: Sequence[str]) -> list[list[int]]:
    """Rows of every row group of every shard, from the Parquet footers (read in parallel)."""
    import pyarrow.parquet as pq

    fs, _ = storage.arrow_filesystem(shards_uri)

    def sizes(uri: str) -> list[int]:
        with fs.open_input_file(_fs_path(uri)) as f:
            md = pq.read_metadata(f)
        return [md.row_group(g).num_rows for g in range(md.num_row_groups)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(sizes, paths))


def work_units(
    shards_uri: str, data_cfg: DataConfig, *, epoch: int = 0, epochs: int = 1
) -> list[dict[str, Any]]:
    """The stream's work, in order: for each epoch, every slice of at most `rows_per_task` rows
    of every row group, in an order permuted by (seed, epoch). A unit is a dict with `path`,
    `row_group`, `start`, `stop` (rows of the row group) and `epoch`."""
    paths = shard_paths(shards_uri)
    k = data_cfg.stream.rows_per_task
    slices = [
        (path, g, a, min(a + k, n))
        for path, sizes in zip(paths, _row_group_sizes(shards_uri, paths))
        for g, n in enumerate(sizes)
        for a in range(0, n, k)
    ]
    units = []
    for e in range(epoch, epoch + epochs):
        for i in np.random.default_rng(_epoch_seed(data_cfg.stream.seed, e)).permutation(
            len(slices)
        ):
            path, g, a, b = slices[i]
            units.append({"path": path, "row_group": g, "start": a, "stop": b, "epoch": e})
    return units


def unit_examples(
    unit: Mapping[str, Any], fs: Any, cfg: DataConfig, sample_rate: int
) -> list[Example]:
    """The examples of one work unit, in an order permuted by (seed, epoch, unit). `fs` is the
    shards' pyarrow filesystem (`storage.arrow_filesystem`)."""
    import pyarrow.parquet as pq

    path, g, a, b, e = (unit[k] for k in ("path", "row_group", "start", "stop", "epoch"))
    with fs.open_input_file(_fs_path(str(path))) as f:
        table = (
            pq.ParquetFile(f).read_row_group(int(g), columns=COLUMNS).slice(int(a), int(b) - int(a))
        )
    examples: list[Example] = []
    for i in range(table.num_rows):
        examples.extend(sample_row(_RowView(table, i), cfg, int(e), sample_rate))
    rng = np.random.default_rng([cfg.stream.seed, int(e), *_words(f"{path}#{g}#{a}")])
    return [examples[i] for i in rng.permutation(len(examples))]


def sample_units(
    batch: dict[str, np.ndarray], *, fs: Any, cfg: DataConfig, sample_rate: int
) -> dict[str, np.ndarray]:
    """The map_batches function: work units (numpy columns) -> a batch of examples. `fs` comes
    from the driver (as `read_parquet` passes its filesystem), so workers need no S3 settings."""
    lower_priority(cfg.stream.nice)
    examples: list[Example] = []
    for i in range(len(batch["path"])):
        unit = {k: batch[k][i] for k in ("path", "row_group", "start", "stop", "epoch")}
        examples.extend(unit_examples(unit, fs, cfg, sample_rate))
    return to_batch(examples, cfg, sample_rate=sample_rate)


def lower_priority(nice: int) -> None:
    """Raise this process's niceness to `nice` (never lower it: that needs privileges); -1 or an
    OS that refuses leaves it as it is."""
    if nice < 0:
        return
    try:
        current = os.nice(0)
        if current < nice:
            os.nice(nice - current)
    except OSError:
        pass


def build_pretext_dataset(
    shards_uri: str,
    data_cfg: DataConfig,
    *,
    epoch: int = 0,
    epochs: int = 1,
    sample_rate: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of pretext examples for epochs [epoch, epoch + epochs) (CONTRACTS.md 2).

    The driver lists the work (`work_units`: row-group slices of `rows_per_task` rows, shuffled
    per epoch, epochs in order) from the Parquet footers; CPU tasks of `cpus_per_task` CPUs each
    read about `rows_per_task` rows (one unit, or several when row groups are small; only the
    needed columns, local or s3://) and sample them. One
    two-operator pipeline for any number of epochs, so the driver's cost per example stays small.
    Feed it to `TorchTrainer(datasets={"train": ds})` and iterate
    `ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)`.
    """
    import ray.data

    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    units = work_units(shards_uri, data_cfg, epoch=epoch, epochs=epochs)
    # small row groups: give each task several units, about rows_per_task rows in all
    mean_rows = sum(u["stop"] - u["start"] for u in units) / max(1, len(units))
    per_task = max(1, round(data_cfg.stream.rows_per_task / max(mean_rows, 1.0)))
    blocks = max(1, min(math.ceil(len(units) / per_task), MAX_BLOCKS))
    ds = ray.data.from_items(units, override_num_blocks=blocks)
    return ds.map_batches(
        sample_units,  # type: ignore[arg-type]
        batch_size=per_task,
        batch_format="numpy",
        num_cpus=data_cfg.stream.cpus_per_task,
        fn_kwargs={
            "fs": storage.arrow_filesystem(shards_uri)[0],
            "cfg": data_cfg,
            "sample_rate": sr,
        },
    )


def iter_pretext_examples(
    shards_uri: str,
    data_cfg: DataConfig,
    *,
    epoch: int = 0,
    worker: int = 0,
    num_workers: int = 1,
    sample_rate: int | None = None,
) -> Iterator[Example]:
    """The same examples in plain Python, in the stream's unit order (this worker's share of
    the units, round robin)."""
    sr = shards_sample_rate(shards_uri) if sample_rate is None else sample_rate
    units = work_units(shards_uri, data_cfg, epoch=epoch, epochs=1)
    fs = storage.arrow_filesystem(shards_uri)[0]
    for unit in units[worker::num_workers]:
        yield from unit_examples(unit, fs, data_cfg, sr)


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
