"""Log evaluation results to MLflow, linked to the pretraining run.

An eval is its own MLflow run, in the pretraining run's experiment, tagged
`avtime.parent_run_id=<pretraining run>` and nested under it (`mlflow.parentRunId`), so the UI
shows it under the training run and `avtime compare` shows its metrics as `eval:` columns of the
training run's row. Without a parent (the random baseline, or a checkpoint whose run is not in
this store) the eval run is top-level in the `avtime` experiment, tagged with what it evaluated.

Metric names carry the dataset and protocol, so evaluations on several datasets do not collide
in that row: `<dataset>[-split<S>].<protocol>[-<mode>].<metric>`, for example
`ucf101-split1.action-linear.top1`, `folder.retrieval.R1`, `esc50.audio.fold_accuracy_3`,
`vggsound.fingerprint.per_distortion.blur.mAP`. MLflow metric names may not contain '@', so
`R@1` is logged as `R1`.

MLflow 3: the evaluation set is a dataset input of the eval run (context `evaluation`), the
evaluated checkpoint's logged model a model input, and every metric is logged against both
(`model_id`, dataset name and digest), so the model's page lists each evaluation of it. The run
carries the provenance tags of `training.tracking.lineage.provenance_tags`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from avtime.training.tracking import lineage, runs

PARENT_TAG = "avtime.parent_run_id"
KIND_TAG = "avtime.kind"


def metric_items(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten numeric results into MLflow-safe metric names (lists get _1.._n suffixes)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = prefix + re.sub(r"[^0-9A-Za-z_./ -]", "", str(key).replace("@", ""))
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(metric_items(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            out.update({f"{name}_{i + 1}": float(v) for i, v in enumerate(value)})
    return out


def metric_prefix(protocol: str, dataset: str, split: int | None, mode: str | None) -> str:
    """`<dataset>[-split<S>].<protocol>[-<mode>].` (see module docstring)."""
    ds = f"{dataset}-split{split}" if split is not None else dataset
    proto = f"{protocol}-{mode}" if mode else protocol
    return f"{ds}.{proto}."


def eval_params(
    *,
    protocol: str,
    dataset: str,
    root: str,
    checkpoint: str,
    checkpoint_uri: str | None,
    checkpoint_step: int | None,
    preset: str,
    split: int | None = None,
    mode: str = "",
    clips_per_segment: int = 4,
    short_side: int = 128,
    seed: int = 0,
    distortions: str = "",
    model_id: str = "",
) -> dict[str, Any]:
    """The params of an eval run: what was evaluated (`checkpoint` as given, the folder/URI it
    resolved to, its step and preset), on which data (`dataset`, `root`, `split` of UCF101 and
    HMDB51, "" elsewhere) and how (protocol, `mode`, clips, decode size, seed, distortions)."""
    return {
        "protocol": protocol,
        "dataset": dataset,
        "root": root,
        "split": split if split is not None else "",
        "mode": mode,
        "checkpoint": checkpoint,
        "checkpoint_uri": checkpoint_uri,
        "checkpoint_step": checkpoint_step,
        "preset": preset,
        "clips_per_segment": clips_per_segment,
        "short_side": short_side,
        "seed": seed,
        "distortions": distortions,
        "code_version": runs.code_version(),
        "model_id": model_id,
    }


def _parent_experiment(client: Any, parent: str | None) -> str | None:
    if not parent:
        return None
    try:
        return str(client.get_run(parent).info.experiment_id)
    except Exception as exc:  # noqa: BLE001 - a moved checkpoint must not fail the eval
        print(
            f"eval: pretraining run {parent} is not in this MLflow store ({type(exc).__name__}); "
            "logging an unlinked eval run",
            file=sys.stderr,
        )
        return None


def log_eval(
    *,
    protocol: str,
    dataset: str,
    params: Mapping[str, Any],
    result: Mapping[str, Any],
    parent_run_id: str | None,
    prefix: str = "",
    uri: str | None = None,
    model_id: str | None = None,
    data: lineage.DatasetRef | None = None,
    device: str = "cpu",
    experiment: str | None = None,
    extra_metrics: Mapping[str, float] | None = None,
) -> str:
    """Create the eval run and log its params, `prefix`-ed metrics and linking tags; the
    metrics are linked to logged model `model_id` and evaluation set `data` when given, while
    `extra_metrics` (figures of the same split that are not the model's, such as the probe's
    controls) go in as they are named, unlinked. The run goes to the training run's experiment
    when that run is in the store, else to `experiment` (default `avtime`)."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput, Metric, Param

    uri = uri or runs.tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp_id = _parent_experiment(client, parent_run_id)
    linked = exp_id is not None
    if exp_id is None:
        exp_id = runs.experiment_id(client, uri, experiment or runs.DEFAULT_EXPERIMENT)
    tags = {KIND_TAG: "eval", "avtime.protocol": protocol, "avtime.dataset": dataset}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    if linked and parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags |= lineage.provenance_tags(device)
    if model_id:
        tags[lineage.MODEL_ID_TAG] = model_id
    run = client.create_run(exp_id, run_name=f"eval-{protocol}-{dataset}", tags=tags)
    run_id = str(run.info.run_id)
    if data is not None:
        lineage.log_dataset(
            client, run_id, data, lineage.EVALUATION, [model_id] if model_id else ()
        )
    elif model_id:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    now = int(time.time() * 1000)
    link = {"model_id": model_id}
    if data is not None:
        link |= {"dataset_name": data.name, "dataset_digest": data.digest}
    metrics = [Metric(k, v, now, 0, **link) for k, v in metric_items(result, prefix).items()]
    metrics += [Metric(k, float(v), now, 0) for k, v in (extra_metrics or {}).items()]
    items = sorted(runs.safe_params(params).items())
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in items])
    client.set_terminated(run_id)
    return run_id


def summary_line(result: Mapping[str, Any]) -> str:
    """`key=value, ...` of an eval result: floats to 4 places, nested results (per distortion,
    random init's beside them) in braces. What `avtime eval` and the orchestrator print."""
    parts = []
    for key, value in result.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        elif isinstance(value, Mapping):
            parts.append(f"{key}={{{summary_line(value)}}}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)
