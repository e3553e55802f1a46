"""`avtime compare`: a table of MLflow runs (differing params, final and best metrics, linked eval
results) and a PNG of their metric curves. Works on any MLflow tracking URI (sqlite or HTTP).

Rules:
- Training runs are the runs of the experiment (after `--filter`) that are not eval runs.
  Eval runs with no pretraining run (tag `avtime.kind=eval`, e.g. a random-init baseline) are
  rows too, with only `eval:` values.
- An eval run is linked to its pretraining run by the tag `avtime.parent_run_id` (or by MLflow's
  own nesting tag `mlflow.parentRunId`), in any experiment. Its metrics appear as `eval:<metric>`
  columns of the parent's row; when several linked runs log the same metric, the newest wins.
- `final` is the value at the last step; `best` is the minimum for loss-like metrics (the name
  contains loss, error, err, nll, perplexity or wer) and the maximum for all others.
- Rows are sorted by `--sort` (a metric, meaning its best value, or a column such as
  `loss:final` or `eval:top1`), best first; runs without that value go last. `--by dataset`
  groups them by training dataset first (groups in the order of their best row).
- A training run's dataset is its MLflow dataset input of context `training`, shown as
  `name@<first 8 digest chars>`. Runs that trained on different data (digests) are compared
  with a warning.
- Each run's checkpoints are its MLflow logged models; a model's evaluations are the metrics
  other runs (`avtime eval`) logged against it. They are listed per model under the table,
  and plotted against the checkpoint step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from avtime.pipelines.errors import UsageError
from avtime.pipelines.storage import redact_url
from avtime.training.tracking import lineage

PARENT_TAG = "avtime.parent_run_id"
KIND_TAG = "avtime.kind"
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
SYSTEM_PREFIX = "system/"
_LOWER_IS_BETTER = re.compile(r"loss|error|(^|[^a-z])err([^a-z]|$)|nll|perplexity|wer", re.I)
MAX_DEFAULT_METRICS = 4


class CompareError(UsageError):
    """A problem the user can fix; the message says what and how."""


@dataclass(frozen=True, kw_only=True)
class ModelRow:
    """One checkpoint of a training run (an MLflow logged model) and its evaluations."""

    model_id: str
    name: str
    step: int
    checkpoint: str
    evals: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One training run, summarised."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    evals: dict[str, float] = field(default_factory=dict)
    eval_run_ids: tuple[str, ...] = ()
    dataset: str = ""  # training data: `name@digest[:8]`, "" when not logged
    models: tuple[ModelRow, ...] = ()

    def value(self, column: str) -> float | None:
        """The value of a metric column: `m:final`, `m:best` or `eval:m`."""
        if column.startswith("eval:"):
            return self.evals.get(column[len("eval:") :])
        name, _, kind = column.rpartition(":")
        return (self.final if kind == "final" else self.best).get(name)


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Everything the table and the plot show."""

    experiment: str
    rows: list[RunRow]
    params: list[str]
    metrics: list[str]
    eval_metrics: list[str]
    sort_column: str
    by: str = ""  # "dataset": rows grouped by training dataset
    warnings: tuple[str, ...] = ()
    plot_metrics: tuple[str, ...] = ()  # the plot's step panels; the table's metrics when empty

    @property
    def show_dataset(self) -> bool:
        """Whether any row has a training dataset (the column is left out otherwise)."""
        return any(r.dataset for r in self.rows)

    def metric_columns(self) -> list[str]:
        cols = [f"{m}:{kind}" for m in self.metrics for kind in ("final", "best")]
        return cols + [f"eval:{m}" for m in self.eval_metrics]


def lower_is_better(metric: str) -> bool:
    """The rule for `best`: loss-like names are minimised, everything else maximised."""
    return bool(_LOWER_IS_BETTER.search(metric))


def best_of(metric: str, values: Iterable[float]) -> float | None:
    """The best of `values` under the rule of `lower_is_better`."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return None
    return min(vals) if lower_is_better(metric) else max(vals)


def differing_params(params: Sequence[Mapping[str, str]]) -> list[str]:
    """Keys whose value is not the same in every run (a missing key counts as a value)."""
    keys = sorted(set().union(*params)) if params else []
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


def default_metrics(keys: Iterable[str]) -> list[str]:
    """All non-system metrics if few; else the loss-like ones; at most MAX_DEFAULT_METRICS."""
    names = sorted(k for k in set(keys) if not k.startswith(SYSTEM_PREFIX))
    if len(names) > MAX_DEFAULT_METRICS:
        losses = [k for k in names if "loss" in k.lower()]
        losses.sort(key=lambda k: (k.count("/") + k.count("."), k))  # the total loss first
        names = losses or names
    return names[:MAX_DEFAULT_METRICS]


def default_plot_metrics(keys: Iterable[str]) -> list[str]:
    """The plot's panels when none are named: the total loss, then every head accuracy."""
    names = set(keys)
    heads = sorted(k for k in names if k.startswith(("acc_", "acc/")))
    return (["loss"] if "loss" in names else []) + heads


def y_label(metric: str) -> str:
    """The y-axis label of a metric's panel: what the number is."""
    if metric.startswith(("acc_", "acc/")) or metric.endswith(("top1", "top5", "accuracy")):
        return "accuracy (fraction correct)"
    if "loss" in metric.lower():
        return "loss"
    if metric.startswith("R@") or "recall" in metric.lower() or ".R@" in metric:
        return "recall (fraction of queries)"
    return metric


def column_metric(column: str) -> str:
    """The metric name of a table column (`loss:best` -> loss, `eval:top1` -> top1)."""
    if column.startswith("eval:"):
        return column[len("eval:") :]
    return column.rpartition(":")[0] or column


def sort_rows(rows: list[RunRow], column: str) -> list[RunRow]:
    """Best first by `column`; rows without a value keep their order at the end."""
    lower = lower_is_better(column_metric(column))
    have = [r for r in rows if r.value(column) is not None]
    missing = [r for r in rows if r.value(column) is None]
    have.sort(key=lambda r: r.value(column) or 0.0, reverse=not lower)
    return have + missing


def resolve_sort(sort: str | None, metrics: Sequence[str], eval_metrics: Sequence[str]) -> str:
    """The column `--sort` names: a bare metric means its best value."""
    if not sort:
        if metrics:
            return f"{metrics[0]}:best"
        return f"eval:{eval_metrics[0]}" if eval_metrics else ""
    if sort.startswith("eval:") or sort.endswith((":final", ":best")):
        return sort
    if sort in eval_metrics and sort not in metrics:
        return f"eval:{sort}"
    return f"{sort}:best"


def linked_eval_metrics(
    evals: Sequence[Any], parents: Iterable[str]
) -> dict[str, tuple[dict[str, float], tuple[str, ...]]]:
    """parent run id -> (eval metrics, eval run ids) from the linked eval runs (newest wins)."""
    wanted = set(parents)
    out: dict[str, tuple[dict[str, float], tuple[str, ...]]] = {}
    for run in sorted(evals, key=lambda r: r.info.start_time or 0):
        parent = run.data.tags.get(PARENT_TAG) or run.data.tags.get(MLFLOW_PARENT_TAG)
        if parent not in wanted:
            continue
        metrics, ids = out.get(parent, ({}, ()))
        metrics.update({k: float(v) for k, v in run.data.metrics.items()})
        out[parent] = (metrics, (*ids, run.info.run_id))
    return out


def is_eval_run(run: Any) -> bool:
    """True for eval runs: linked to a pretraining run, or tagged `avtime.kind=eval`."""
    tags = run.data.tags
    return bool(tags.get(PARENT_TAG) or tags.get(MLFLOW_PARENT_TAG)) or tags.get(KIND_TAG) == "eval"


def is_baseline(run: Any) -> bool:
    """An eval run with no pretraining run (e.g. a random-init baseline): a row of its own."""
    tags = run.data.tags
    return tags.get(KIND_TAG) == "eval" and not (
        tags.get(PARENT_TAG) or tags.get(MLFLOW_PARENT_TAG)
    )


def baseline_row(run: Any) -> RunRow:
    """A baseline eval run as a row: no training params or curves, its metrics as `eval:`."""
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        start_time=int(run.info.start_time or 0),
        params={},
        evals={k: float(v) for k, v in run.data.metrics.items()},
        eval_run_ids=(run.info.run_id,),
    )


def get_experiment(client: Any, name: str) -> Any:
    """The experiment `name`, or CompareError listing the ones that exist."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(
            f"no experiment {name!r} in the MLflow store {redact_url(str(client.tracking_uri))} "
            f"(experiments "
            f"there: {names}); name another store with --tracking-uri or MLFLOW_TRACKING_URI"
        )
    return exp


def search(client: Any, experiment_ids: list[str], filter_string: str, max_runs: int) -> list[Any]:
    """search_runs with a clear error for a bad filter."""
    from mlflow.exceptions import MlflowException

    try:
        return list(
            client.search_runs(experiment_ids, filter_string=filter_string, max_results=max_runs)
        )
    except MlflowException as exc:
        raise CompareError(
            f"bad --filter {filter_string!r}: {exc.message.splitlines()[0]} "
            "(example: --filter \"params.`loss.temperature` = '0.1'\")"
        ) from None


def fetch_evals(client: Any, max_runs: int) -> list[Any]:
    """Every linked eval run in the store (any experiment)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs: dict[str, Any] = {}
    for tag in (PARENT_TAG, MLFLOW_PARENT_TAG):
        for run in search(client, ids, f"tags.`{tag}` LIKE '%'", max_runs):
            runs[run.info.run_id] = run
    return list(runs.values())


def metric_summary(client: Any, run_id: str, metric: str) -> tuple[float | None, float | None]:
    """(final, best) of one metric of one run, from its full history."""
    history = client.get_metric_history(run_id, metric)
    if not history:
        return None, None
    last = max(history, key=lambda m: (m.step, m.timestamp))
    return float(last.value), best_of(metric, (float(m.value) for m in history))


def training_dataset(run: Any) -> str:
    """`name@<digest[:8]>` of the run's dataset input of context `training`, or ""."""
    inputs = getattr(run, "inputs", None)
    for item in getattr(inputs, "dataset_inputs", None) or []:
        tags = {t.key: t.value for t in item.tags or []}
        if tags.get(lineage.CONTEXT_TAG) == lineage.TRAINING:
            return f"{item.dataset.name}@{item.dataset.digest[:8]}"
    return ""


def model_rows(client: Any, run: Any) -> tuple[ModelRow, ...]:
    """The run's checkpoints (logged models, by step), each with the metrics other runs logged
    against it (its evaluations; the newest value of each wins)."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    try:
        models = lineage.run_models(client, run.info.experiment_id, run_id)
    except MlflowException:  # a store without logged models
        return ()
    rows = []
    for m in models:
        evals: dict[str, float] = {}
        for metric in sorted(m.metrics or [], key=lambda x: (x.timestamp, x.step)):
            if metric.run_id and metric.run_id != run_id:
                evals[metric.key] = float(metric.value)
        rows.append(
            ModelRow(
                model_id=m.model_id,
                name=m.name,
                step=int(m.tags.get(lineage.STEP_TAG) or 0),
                checkpoint=m.tags.get(lineage.CHECKPOINT_TAG, ""),
                evals=evals,
            )  # fmt: skip
        )
    return tuple(rows)


def data_warnings(rows: Sequence[RunRow]) -> tuple[str, ...]:
    """A warning when the rows trained on datasets with different digests."""
    digests = {r.dataset.rpartition("@")[2] for r in rows if r.dataset}
    if len(digests) < 2:
        return ()
    names = ", ".join(sorted({r.dataset for r in rows if r.dataset}))
    return (
        f"warning: these runs trained on different data ({names}); their training metrics "
        "are not directly comparable (group them with --by dataset)",
    )


def group_rows(rows: list[RunRow], by: str) -> list[RunRow]:
    """With `by` "dataset": rows grouped by training dataset, groups in order of their first
    (best) row, the order kept within a group; else `rows` unchanged."""
    if by != "dataset":
        return rows
    keys = list(dict.fromkeys(r.dataset for r in rows))
    return [r for key in keys for r in rows if r.dataset == key]


def summarise(client: Any, run: Any, metrics: Sequence[str], linked: Mapping[str, Any]) -> RunRow:
    """One RunRow: params, final and best of `metrics`, and the linked eval metrics."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for metric in metrics:
        if metric not in run.data.metrics:
            continue
        f, b = metric_summary(client, run.info.run_id, metric)
        if f is not None and b is not None:
            final[metric], best[metric] = f, b
    evals, eval_ids = linked.get(run.info.run_id, ({}, ()))
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        start_time=int(run.info.start_time or 0),
        params=dict(run.data.params),
        final=final,
        best=best,
        evals=dict(evals),
        eval_run_ids=tuple(eval_ids),
        dataset=training_dataset(run),
        models=model_rows(client, run),
    )


def build_comparison(
    client: Any,
    experiment: str,
    *,
    metrics: Sequence[str] = (),
    filter_string: str = "",
    sort: str | None = None,
    params: Sequence[str] = (),
    max_runs: int = 200,
    by: str = "",
) -> Comparison:
    """Fetch the runs of `experiment` and summarise them for the table and the plot."""
    if by not in ("", "dataset"):
        raise CompareError(f"--by {by!r}: only 'dataset' is supported")
    exp = get_experiment(client, experiment)
    found = search(client, [exp.experiment_id], filter_string, max_runs)
    runs = [r for r in found if not is_eval_run(r) and r.data.tags.get(KIND_TAG) != "preprocess"]
    baselines = [baseline_row(r) for r in found if is_baseline(r)]
    if not runs and not baselines:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise CompareError(f"experiment {experiment!r} has no training runs{where}")
    linked = linked_eval_metrics(fetch_evals(client, max_runs), (r.info.run_id for r in runs))
    keys = {k for r in runs for k in r.data.metrics}
    chosen = list(metrics) or default_metrics(keys)
    trained = [summarise(client, r, chosen, linked) for r in runs]
    rows = trained + baselines
    eval_metrics = sorted({k for r in rows for k in r.evals})
    column = resolve_sort(sort, chosen, eval_metrics)
    if sort and all(r.value(column) is None for r in rows):
        raise CompareError(f"--sort {sort}: no run has a value for {column}")
    return Comparison(
        experiment=experiment,
        rows=group_rows(sort_rows(rows, column) if column else rows, by),
        params=list(params) or differing_params([r.params for r in trained]),
        metrics=chosen,
        eval_metrics=eval_metrics,
        sort_column=column,
        by=by,
        warnings=data_warnings(trained),
        plot_metrics=tuple(metrics) or tuple(default_plot_metrics(keys)),
    )


def fmt(value: Any, width: int = 32) -> str:
    """A table cell: floats with 4 significant digits, long strings shortened, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


def records(cmp: Comparison, models: bool = False) -> list[dict[str, Any]]:
    """The table as a list of dicts (for --format json/csv); `models` adds each run's
    checkpoints (logged models) with their evaluations."""
    out = []
    for i, row in enumerate(cmp.rows, 1):
        rec: dict[str, Any] = {"rank": i, "run": row.name, "run_id": row.run_id}
        rec["status"] = row.status
        rec.update({f"params.{p}": row.params.get(p) for p in cmp.params})
        if cmp.show_dataset:
            rec["dataset"] = row.dataset or None
        rec.update({c: row.value(c) for c in cmp.metric_columns()})
        if models:
            rec["models"] = [
                {"model_id": m.model_id, "name": m.name, "step": m.step,
                 "checkpoint": m.checkpoint, "evals": m.evals}
                for m in row.models
            ]  # fmt: skip
        out.append(rec)
    return out


def _title(cmp: Comparison) -> str:
    order = "lower" if lower_is_better(column_metric(cmp.sort_column)) else "higher"
    title = f"experiment {cmp.experiment!r}: {len(cmp.rows)} run(s)"
    if cmp.sort_column:
        title += f", sorted by {cmp.sort_column} ({order} is better)"
    if cmp.by:
        title += f", grouped by {cmp.by}"
    if not cmp.params:
        title += "; all params equal"
    return title


def render_table(cmp: Comparison) -> str:
    """A plain-text table, one row per run, best first (grouped under `--by dataset`), then
    the warnings and each run's checkpoints with their evaluations."""
    data_col = ["dataset"] if cmp.show_dataset else []
    header = ["#", "run", "id", "status", *cmp.params, *data_col, *cmp.metric_columns()]
    lines = [header]
    for i, row in enumerate(cmp.rows, 1):
        cells = [str(i), fmt(row.name, 24), row.run_id[:8], row.status]
        cells += [fmt(row.params.get(p), 24) for p in cmp.params]
        cells += [fmt(row.dataset or None, 40)] if data_col else []
        cells += [fmt(row.value(c)) for c in cmp.metric_columns()]
        lines.append(cells)
    widths = [max(len(line[j]) for line in lines) for j in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    if cmp.by == "dataset":
        text = [text[0], *_grouped(text[1:], cmp.rows)]
    return "\n".join([_title(cmp), *text, *cmp.warnings, *render_models(cmp)])


def _grouped(lines: list[str], rows: Sequence[RunRow]) -> list[str]:
    """Table lines with a `dataset ...` heading before each group of rows."""
    out: list[str] = []
    for i, (line, row) in enumerate(zip(lines, rows)):
        if i == 0 or row.dataset != rows[i - 1].dataset:
            n = sum(1 for r in rows if r.dataset == row.dataset)
            out.append(f"-- dataset {row.dataset or '(not logged)'}: {n} run(s)")
        out.append(line)
    return out


def render_models(cmp: Comparison) -> list[str]:
    """Lines listing each run's checkpoints (logged models) and their evaluations."""
    if not any(r.models for r in cmp.rows):
        return []
    out = ["checkpoints (MLflow logged models) and their evaluations:"]
    for row in cmp.rows:
        for m in row.models:
            evals = "  ".join(f"{k}={fmt(v)}" for k, v in sorted(m.evals.items()))
            line = f"  {fmt(row.name, 24)}  step {m.step:<6d} {m.model_id}  {evals or '(no evals)'}"
            out.append(line.rstrip())
    return out


_SCORE = re.compile(r"(^|[._-])(top\d+|accuracy|acc|map|mAP|R@\d+|recall\S*|x_chance)$")


def is_score(metric: str) -> bool:
    """Whether an evaluation metric is a score to plot (top-1, accuracy, R@k, mAP), not a count
    or a setting logged beside it (`test_videos`, `num_classes`, `l2`)."""
    return bool(_SCORE.search(metric))


def model_eval_metrics(cmp: Comparison) -> list[str]:
    """The evaluation scores logged against the rows' checkpoints (at most MAX_DEFAULT_METRICS)."""
    names = sorted({k for r in cmp.rows for m in r.models for k in m.evals if is_score(k)})
    return names[:MAX_DEFAULT_METRICS]


def write_plot(client: Any, cmp: Comparison, path: str) -> int:
    """Write `plot_figure` as a PNG at `path`; returns the number of curves."""
    fig, curves = plot_figure(client, cmp)
    fig.savefig(path, dpi=100)
    return curves


def plot_figure(client: Any, cmp: Comparison) -> tuple[Any, int]:
    """(figure, curves): one panel per step metric (`cmp.plot_metrics`: by default the total loss and
    every head accuracy) and one curve per run (x = step), then one panel per checkpoint
    evaluation metric (x = checkpoint step)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, evals = list(cmp.plot_metrics or cmp.metrics), model_eval_metrics(cmp)
    panels = len(steps) + len(evals)
    if not panels:
        raise CompareError("--plot: no metrics to plot; name some with --metrics")
    cols = min(3 if panels > 4 else 2, panels)
    nrows = (panels + cols - 1) // cols
    fig = Figure(figsize=(5.5 * cols, 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    curves = 0
    for i, metric in enumerate([*steps, *evals]):
        ax = fig.add_subplot(nrows, cols, i + 1)
        curves += _plot_panel(client, ax, cmp, metric, of_checkpoints=i >= len(steps))
    fig.suptitle(f"experiment {cmp.experiment}")
    return fig, curves


def _plot_panel(client: Any, ax: Any, cmp: Comparison, metric: str, of_checkpoints: bool) -> int:
    """One panel: `metric` against the step (or each checkpoint's evaluation against its step)."""
    curves = 0
    for row in cmp.rows:
        if of_checkpoints:
            points = sorted((m.step, m.evals[metric]) for m in row.models if metric in m.evals)
        else:
            points = sorted(
                (m.step, m.value) for m in client.get_metric_history(row.run_id, metric)
            )
        if points:
            style = "o-" if of_checkpoints or len(points) < 20 else "-"
            ax.plot(*zip(*points), style, markersize=3, label=f"{row.name} ({row.run_id[:8]})")
            curves += 1
    better = "lower" if lower_is_better(metric) else "higher"
    what = "checkpoints' evaluation" if of_checkpoints else "training"
    ax.set_title(f"{metric}\n({what}; {better} is better)", fontsize="medium")
    ax.set_xlabel("checkpoint step" if of_checkpoints else "step")
    ax.set_ylabel(y_label(metric))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return curves
