"""`avtime verify`: prove a preprocessed dataset is sound, with audio and video on one clock.

`verify_dataset(uri)` reads `manifest.json`, checks the dataset (listed shards exist, no stray
shards, counts, every input present as rows or a reject) on the driver, and runs the per-row and
per-shard checks as a Ray Data job: one task per listed shard, each reading its shard in small
batches and returning light records (never the frames). Cross-row checks (tiling, duplicates) run
on the driver over those light records. See docs/verify.md.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avtime.pipelines import raycluster, storage
from avtime.pipelines.errors import EXIT_USAGE, AvtimeError
from avtime.pipelines.schema import (
    MANIFEST_NAME,
    REJECTS_NAME,
    SCHEMA_VERSION,
    is_shard_name,
    listed_shards,
    parse_manifest,
)
from avtime.pipelines.verify.report import Problem, VerifyReport, build_report
from avtime.pipelines.verify.rows import (
    LIGHT_SCHEMA,
    check_parquet,
    duplicate_problems,
    record_problems,
    shard_record,
    tiling_problems,
)


class VerifyError(AvtimeError, RuntimeError):
    """The dataset cannot be verified at all (no manifest, unreadable manifest, bad argument)."""

    exit_code = EXIT_USAGE


def verify_dataset(
    uri: str,
    *,
    sample_fraction: float = 1.0,
    seed: int = 0,
    cpus_per_task: float = 0.5,
    max_worst: int = 10,
) -> VerifyReport:
    """Verify the preprocessed dataset at `uri` (a local folder or s3:// prefix).

    `sample_fraction` in [0, 1] is the share of rows whose frames are decoded (a stable hash of
    (source, segment) picks them); every other check covers every row and shard. Starts a local
    Ray (or joins RAY_ADDRESS) if Ray is not initialized. Raises VerifyError or
    storage.StorageError when the dataset cannot be read at all.
    """
    if not 0.0 <= sample_fraction <= 1.0:
        raise VerifyError(f"--sample-fraction must be in [0, 1], got {sample_fraction}")
    storage.check_location(uri, must_exist=True)
    manifest, problems = load_manifest(uri)
    listed = _listed_shards(manifest)
    notes: list[str] = []
    problems += shard_presence_problems(uri, listed, notes)
    missing = {p.shard for p in problems if p.kind == "missing_shard"}
    present = [name for name in listed if name not in missing]
    records = run_shard_checks(
        uri,
        present,
        expected_version=int(manifest.get("schema_version", SCHEMA_VERSION)),
        sample_fraction=sample_fraction,
        seed=seed,
        cpus_per_task=cpus_per_task,
    )
    rows = records.filter(pc.greater_equal(records.column("row"), 0))
    shard_recs = records.filter(pc.less(records.column("row"), 0))
    problems += record_problems(records)
    complete = not missing and not any(p.kind == "shard_read" for p in problems)
    problems += duplicate_problems(rows)
    problems += tiling_problems(rows, check_indices=complete)
    problems += count_problems(manifest, listed, shard_recs, rows, uri, complete, notes)
    return build_report(
        uri=uri,
        problems=problems,
        rows=rows,
        rows_decoded=int(pc.sum(rows.column("decoded")).as_py() or 0),
        sample_fraction=sample_fraction,
        shards_listed=len(listed),
        shards_checked=len(present),
        notes=notes,
        max_worst=max_worst,
    )


def load_manifest(uri: str) -> tuple[dict[str, Any], list[Problem]]:
    """The manifest at `uri`, and a schema_version problem if it is not this avtime's version."""
    path = storage.join(uri, MANIFEST_NAME)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise VerifyError(
            f"no {MANIFEST_NAME} at {uri}: it is not the output of `avtime preprocess`, or "
            "preprocessing did not finish; point verify at the preprocess destination"
        ) from None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise VerifyError(f"{path} is not valid JSON ({exc}); re-run `avtime preprocess`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
        raise VerifyError(f"{path} has no 'shards' list; re-run `avtime preprocess`")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        detail = f"manifest schema_version {version!r}; this avtime reads {SCHEMA_VERSION}"
        return doc, [Problem(kind="schema_version", shard=MANIFEST_NAME, detail=detail)]
    try:
        return parse_manifest(data), []
    except ValueError as exc:
        raise VerifyError(f"{path}: {exc}") from None


def _listed_shards(manifest: dict[str, Any]) -> list[str]:
    try:
        return listed_shards(manifest)
    except ValueError as exc:
        raise VerifyError(str(exc)) from None


def _relative(found: str, base: str) -> str:
    """`found` (a URI/path listed under `base`) relative to `base`, with '/' separators."""
    if storage.is_s3(base):
        return storage.s3_path(found)[len(storage.s3_path(base)) + 1 :]
    return PurePosixPath(os.path.relpath(found, os.path.abspath(base))).as_posix()


def _is_scratch(rel: str) -> bool:
    """True under a folder named `_*` or `.*` (preprocess's `_tmp/` scratch and `_progress/`)."""
    return any(part.startswith(("_", ".")) for part in rel.split("/")[:-1])


def shard_presence_problems(
    uri: str, listed: list[str], notes: list[str] | None = None
) -> list[Problem]:
    """missing_shard for listed shards that do not exist; stray_shard for unlisted shard files.

    Shard-named files in scratch folders (`_tmp/`, left by an interrupted preprocess) are not
    strays: no reader lists them, and the next preprocess run removes them; a note counts them.
    """
    on_disk = {_relative(f, uri) for f in storage.list_files(uri, recursive=True)}
    scratch = {f for f in on_disk if _is_scratch(f) and is_shard_name(f)}
    shards_on_disk = {f for f in on_disk - scratch if is_shard_name(f)}
    if scratch and notes is not None:
        notes.append(f"{len(scratch)} unfinished shard files in scratch folders (e.g. _tmp/)")
    out = [
        Problem(kind="missing_shard", shard=name, detail="listed in manifest.json, not found")
        for name in listed
        if name not in on_disk
    ]
    out += [
        Problem(kind="stray_shard", shard=name, detail="shard file not listed in manifest.json")
        for name in sorted(shards_on_disk - set(listed))
    ]
    return out


def _check_shards_udf(
    batch: pa.Table, *, base: str, expected_version: int, sample_fraction: float, seed: int
) -> pa.Table:
    """Ray Data task: check each shard named in `batch` (column `shard`) under `base`."""
    parts = []
    for name in batch.column("shard").to_pylist():
        parts.append(check_shard(base, name, expected_version, sample_fraction, seed))
    return pa.concat_tables(parts) if parts else LIGHT_SCHEMA.empty_table()


def check_shard(
    base: str, name: str, expected_version: int, sample_fraction: float, seed: int
) -> pa.Table:
    """Open shard `name` under `base` and check it; an unreadable file is a shard_read problem."""
    fs, path = storage.arrow_filesystem(storage.join(base, name))
    try:
        handle = fs.open_input_file(path)
        pf = pq.ParquetFile(handle)
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        return shard_record(name, None, [("shard_read", f"cannot open as Parquet: {exc}")])
    with handle:
        return check_parquet(
            pf,
            shard=name,
            expected_version=expected_version,
            sample_fraction=sample_fraction,
            seed=seed,
        )


def ensure_ray() -> None:
    """Join RAY_ADDRESS, or start a local Ray (token auth off, no dashboard) if none is up."""
    raycluster.connect(log_to_driver=False)


def run_shard_checks(
    uri: str,
    shards: list[str],
    *,
    expected_version: int,
    sample_fraction: float,
    seed: int,
    cpus_per_task: float,
) -> pa.Table:
    """The Ray Data job: one task per shard (fractional CPUs), gathered as light records."""
    if not shards:
        return LIGHT_SCHEMA.empty_table()
    ensure_ray()
    # on a cluster that may start empty: wait for room for one check task (more come on demand)
    with raycluster.grown([{"CPU": cpus_per_task}], what="avtime verify"):
        return _check_on_ray(uri, shards, expected_version, sample_fraction, seed, cpus_per_task)


def _check_on_ray(
    uri: str,
    shards: list[str],
    expected_version: int,
    sample_fraction: float,
    seed: int,
    cpus_per_task: float,
) -> pa.Table:
    """`run_shard_checks` once Ray is up and holds a task's CPUs."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    ds: Any = items.map_batches(
        cast(Any, _check_shards_udf),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cpus_per_task,
        fn_kwargs={
            "base": uri,
            "expected_version": expected_version,
            "sample_fraction": sample_fraction,
            "seed": seed,
        },
    )
    parts = [t for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if not parts:
        return LIGHT_SCHEMA.empty_table()
    return pa.concat_tables([t.cast(LIGHT_SCHEMA) for t in parts])


def read_rejected_sources(uri: str) -> set[str] | None:
    """Sources in `rejects.parquet`, or None when the file does not exist."""
    path = storage.join(uri, REJECTS_NAME)
    if not storage.exists(path):
        return None
    fs, fs_path = storage.arrow_filesystem(path)
    try:
        table = pq.read_table(fs_path, filesystem=fs, columns=["source"])
    except Exception as exc:  # noqa: BLE001 - a damaged ledger cannot vouch for any input
        raise VerifyError(f"{path} cannot be read ({exc}); re-run `avtime preprocess`") from None
    return set(table.column("source").to_pylist())


def count_problems(
    manifest: dict[str, Any],
    listed: list[str],
    shard_recs: pa.Table,
    rows: pa.Table,
    uri: str,
    complete: bool,
    notes: list[str],
) -> list[Problem]:
    """row_count, missing_source and unknown_source: the manifest's counts and inputs vs the data.

    Per-shard counts are checked for every shard that could be read. Totals and missing_source
    need every row, so they are skipped (with a note) when a shard is missing or unreadable:
    missing_shard / shard_read already explain those differences.
    """
    out: list[Problem] = []
    expected = {e["path"]: e.get("rows") for e in manifest["shards"]}
    for rec in shard_recs.select(["shard", "shard_rows"]).to_pylist():
        want, got = expected.get(rec["shard"]), rec["shard_rows"]
        if got is not None and want is not None and got != want:
            detail = f"shard holds {got} rows, manifest says {want}"
            out.append(Problem(kind="row_count", shard=rec["shard"], detail=detail))
    counts = manifest.get("counts") or {}
    listed_rows = sum(int(expected.get(s) or 0) for s in listed)
    sources = set(rows.column("source").to_pylist())
    rejected = read_rejected_sources(uri)
    checks = [("rows", listed_rows, "the shards list")]
    inputs = manifest.get("inputs")
    if isinstance(inputs, list):
        checks.append(("inputs", len(inputs), "the inputs list"))
    if rejected is not None:
        checks.append(("rejects", _count_rejects(uri), REJECTS_NAME))
    if complete:
        checks.append(("rows", rows.num_rows, "the shards"))
        checks.append(("sources_with_rows", len(sources), "the shards"))
    for key, actual, where in checks:
        if key in counts and counts[key] != actual:
            detail = f"counts.{key} is {counts[key]}, {where} give {actual}"
            out.append(Problem(kind="row_count", shard=MANIFEST_NAME, detail=detail))
    out += _source_problems(inputs, sources, rejected or set(), complete, notes)
    return out


def _count_rejects(uri: str) -> int:
    fs, path = storage.arrow_filesystem(storage.join(uri, REJECTS_NAME))
    return int(pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows)


def _source_problems(
    inputs: Any, sources: set[str], rejected: set[str], complete: bool, notes: list[str]
) -> list[Problem]:
    if not isinstance(inputs, list):
        notes.append("manifest.json lists no inputs; missing_source and unknown_source not checked")
        return []
    listed = set(inputs)
    out = [
        Problem(kind="unknown_source", source=s, detail="has rows but is not a manifest input")
        for s in sorted(sources - listed)
    ]
    if not complete:
        notes.append("shards are missing or unreadable: totals and missing_source not checked")
        return out
    out += [
        Problem(kind="missing_source", source=s, detail="manifest input with no rows and no reject")
        for s in sorted(listed - sources - rejected)
    ]
    return out
