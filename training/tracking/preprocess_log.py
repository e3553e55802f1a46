"""`avtime preprocess --experiment NAME`: the preprocessing as an MLflow run.

The run (tag `avtime.kind=preprocess`) holds the ingest settings as params, the shards as a
dataset input (context `preprocessing`: name, source URI, manifest digest and profile, as
`avtime train` logs them), the counts as metrics, and as artifacts `dataset/manifest.json`,
`dataset/rejects_summary.json` (rejects by stage and error type, with the first 100 rejects)
and, unless skipped, the `avtime verify` report (`verify/report.json`, `.txt`, `.png`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avtime.training.tracking import lineage, runs

KIND = "preprocess"
MAX_LISTED_REJECTS = 100


def rejects_summary(shards_uri: str) -> dict[str, Any]:
    """Rejects of the shards by stage and error type, with the first rejects listed."""
    import pyarrow.parquet as pq

    from avtime.pipelines import storage
    from avtime.pipelines.schema import REJECTS_NAME

    uri = storage.join(shards_uri, REJECTS_NAME)
    if not storage.exists(uri):
        return {"total": 0, "by_stage": {}, "by_error_type": {}, "first": []}
    with tempfile.TemporaryDirectory(prefix="avtime-rejects-") as tmp:
        path = Path(tmp) / REJECTS_NAME
        path.write_bytes(storage.read_bytes(uri))
        rows = pq.read_table(path).to_pylist()
    by_stage: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for row in rows:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + 1
        by_type[row["error_type"]] = by_type.get(row["error_type"], 0) + 1
    first = [{k: runs.redact_url(str(v)) for k, v in r.items()} for r in rows]
    return {
        "total": len(rows),
        "by_stage": by_stage,
        "by_error_type": by_type,
        "first": first[:MAX_LISTED_REJECTS],
    }


def _verify_files(shards_uri: str, folder: Path, sample_fraction: float) -> dict[str, float]:
    """Run `avtime verify` on the shards; write its report files into `folder`; its metrics."""
    from avtime.pipelines.verify.job import verify_dataset
    from avtime.pipelines.verify.report import summary_text, write_png

    report = verify_dataset(shards_uri, sample_fraction=sample_fraction)
    (folder / "report.json").write_text(report.to_json())
    (folder / "report.txt").write_text(summary_text(report) + "\n")
    write_png(report, folder / "report.png")
    return {"verify_ok": float(bool(report.ok))}


def log_preprocessing(
    *,
    uri: str,
    experiment: str,
    dst: str,
    params: Mapping[str, Any],
    verify_fraction: float | None = 0.1,
) -> str:
    """Log one preprocessing run of the shards at `dst` (see the module docstring); its id.

    `verify_fraction`: the share of rows whose frames `verify` decodes; None skips verify.
    """
    from mlflow import MlflowClient

    from avtime.pipelines import storage
    from avtime.pipelines.schema import MANIFEST_NAME

    client = MlflowClient(tracking_uri=uri)
    ref = lineage.shards_dataset(dst)
    tags = {"avtime.kind": KIND, **lineage.provenance_tags("cpu")}
    run_id = runs.open_run(
        uri=uri, experiment=experiment, run_name=f"preprocess-{ref.name}", params=params, tags=tags
    )
    try:
        lineage.log_dataset(client, run_id, ref, lineage.PREPROCESSING)
        metrics = {k: float(v) for k, v in ref.profile.items() if isinstance(v, (int, float))}
        with tempfile.TemporaryDirectory(prefix="avtime-preprocess-") as tmp:
            folder = Path(tmp)
            manifest = storage.read_bytes(storage.join(dst, MANIFEST_NAME))
            (folder / MANIFEST_NAME).write_bytes(manifest)
            summary = rejects_summary(dst)
            (folder / "rejects_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            for name in (MANIFEST_NAME, "rejects_summary.json"):
                client.log_artifact(run_id, str(folder / name), "dataset")
            if verify_fraction is not None:
                (folder / "verify").mkdir()
                metrics |= _verify_files(dst, folder / "verify", verify_fraction)
                client.log_artifacts(run_id, str(folder / "verify"), "verify")
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
