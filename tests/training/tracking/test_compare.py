"""`avtime compare`: the table logic on constructed runs in a real MLflow store (sqlite in a tmp
dir, and the HTTP `mlflow_server` fixture), the PNG, and clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avtime.training.cli.main import main
from avtime.training.tracking import compare

EXPERIMENT = "cmp-test"


@dataclass(frozen=True)
class Store:
    uri: str
    runs: dict[str, str]  # run name -> run id


def make_runs(uri: str, experiment: str = EXPERIMENT) -> dict[str, str]:
    """Three training runs (one differing param), linked eval runs in this and another
    experiment, and an unlinked baseline eval run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(experiment)
    curves = {  # loss per step, top1 accuracy per step
        "warm": ([3.0, 2.0, 1.5, 1.7], [0.1, 0.4, 0.5, 0.45]),
        "cold": ([3.0, 2.5, 2.2, 2.1], [0.1, 0.2, 0.3, 0.35]),
        "hot": ([3.0, 1.2, 1.4, 1.3], [0.2, 0.6, 0.55, 0.5]),
    }
    temps = {"warm": "0.1", "cold": "0.05", "hot": "0.2"}
    ids: dict[str, str] = {}
    for name, (loss, acc) in curves.items():
        run = client.create_run(exp, run_name=name)
        rid = run.info.run_id
        metrics = [Metric("loss", v, 1000 + s, s) for s, v in enumerate(loss)]
        metrics += [Metric("acc/video_speed", v, 1000 + s, s) for s, v in enumerate(acc)]
        metrics.append(Metric("system/cpu_utilization_percentage", 50.0, 1000, 0))
        params = [Param("loss.temperature", temps[name]), Param("train.steps", "4")]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_terminated(rid)
        ids[name] = rid
    evals = client.create_experiment(f"{experiment}-eval")
    for exp_id, parent, top1 in ((exp, "warm", 0.30), (evals, "warm", 0.42), (evals, "hot", 0.25)):
        run = client.create_run(
            exp_id, run_name=f"eval-{parent}", tags={compare.PARENT_TAG: ids[parent]}
        )
        client.log_metric(run.info.run_id, "ucf101.linear.top1", top1)
        client.set_terminated(run.info.run_id)
    baseline = client.create_run(exp, run_name="random", tags={compare.KIND_TAG: "eval"})
    client.log_metric(baseline.info.run_id, "ucf101.linear.top1", 0.05)
    client.log_param(baseline.info.run_id, "checkpoint", "random")
    client.set_terminated(baseline.info.run_id)
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('cmp') / 'mlflow.db'}"
    yield Store(uri=uri, runs=make_runs(uri))


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "lower"),
    [("loss", True), ("loss/nce_vv", True), ("val_error", True), ("err", True), ("nll", True),
     ("acc/video_speed", False), ("ucf101.linear.top1", False), ("recall@5", False),
     ("terrain", False), ("map", False)],
)  # fmt: skip
def test_best_rule(name: str, lower: bool) -> None:
    assert compare.lower_is_better(name) is lower
    assert compare.best_of(name, [2.0, 1.0, 3.0]) == (1.0 if lower else 3.0)


@pytest.mark.unit
def test_differing_params_and_default_metrics() -> None:
    runs = [{"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "1", "c": "z"}]
    assert compare.differing_params(runs) == ["b", "c"]
    keys = ["system/cpu", "loss", "loss/nce_vv", "acc/a", "acc/b", "loss/speed", "lr"]
    assert compare.default_metrics(keys) == ["loss", "loss/nce_vv", "loss/speed"]
    assert compare.default_metrics(["system/gpu", "lr", "loss"]) == ["loss", "lr"]


@pytest.mark.unit
def test_sort_columns() -> None:
    assert compare.resolve_sort(None, ["loss"], []) == "loss:best"
    assert compare.resolve_sort("top1", ["loss"], ["top1"]) == "eval:top1"
    assert compare.resolve_sort("loss:final", ["loss"], []) == "loss:final"
    rows = [
        compare.RunRow(run_id=str(i), name=str(i), status="FINISHED", start_time=0, params={},
                       best={"acc": v} if v is not None else {})
        for i, v in enumerate([0.2, None, 0.9, 0.5])
    ]  # fmt: skip
    assert [r.name for r in compare.sort_rows(rows, "acc:best")] == ["2", "3", "0", "1"]


@pytest.mark.unit
def test_comparison_on_sqlite(store: Store) -> None:
    cmp = compare.build_comparison(_client(store.uri), EXPERIMENT)
    assert cmp.metrics == ["acc/video_speed", "loss"]  # system metrics left out
    assert cmp.params == ["loss.temperature"]  # train.steps is the same everywhere
    assert cmp.sort_column == "acc/video_speed:best"
    by_name = {r.name: r for r in cmp.rows}
    assert [r.name for r in cmp.rows] == ["hot", "warm", "cold", "random"]
    assert by_name["random"].evals == {"ucf101.linear.top1": 0.05}  # baseline: a row, no params
    assert by_name["warm"].final["loss"] == 1.7 and by_name["warm"].best["loss"] == 1.5
    assert by_name["hot"].best["acc/video_speed"] == 0.6
    # eval runs are columns, not rows; the newest linked run wins, across experiments
    assert by_name["warm"].evals == {"ucf101.linear.top1": 0.42}
    assert by_name["hot"].evals == {"ucf101.linear.top1": 0.25}
    assert by_name["cold"].evals == {}
    assert cmp.eval_metrics == ["ucf101.linear.top1"]


@pytest.mark.unit
def test_sort_filter_and_metrics(store: Store) -> None:
    client = _client(store.uri)
    cmp = compare.build_comparison(client, EXPERIMENT, metrics=["loss"], sort="loss:final")
    assert [r.name for r in cmp.rows] == ["hot", "warm", "cold", "random"]  # 1.3 < 1.7 < 2.1
    assert cmp.metric_columns() == ["loss:final", "loss:best", "eval:ucf101.linear.top1"]
    cmp = compare.build_comparison(client, EXPERIMENT, sort="ucf101.linear.top1")
    assert [r.name for r in cmp.rows] == ["warm", "hot", "random", "cold"]  # no value: last
    cmp = compare.build_comparison(
        client, EXPERIMENT, filter_string="params.`loss.temperature` != '0.05'"
    )
    assert sorted(r.name for r in cmp.rows) == ["hot", "warm"]


@pytest.mark.unit
def test_table_json_and_plot_from_cli(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curves.png"
    argv = ["compare", "--tracking-uri", store.uri, "--experiment", EXPERIMENT]
    assert main([*argv, "--metrics", "loss,acc/video_speed", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "sorted by loss:best (lower is better)" in lines[1]
    header = lines[2].split()
    assert header[:5] == ["#", "run", "id", "status", "loss.temperature"]
    assert "eval:ucf101.linear.top1" in header
    assert [line.split()[1] for line in lines[3:7]] == ["hot", "warm", "cold", "random"]
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200
    assert main([*argv, "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert {r["run"]: r["eval:ucf101.linear.top1"] for r in recs}["warm"] == 0.42
    assert all("params.loss.temperature" in r for r in recs)
    assert {r["run"]: r["params.loss.temperature"] for r in recs}["random"] is None


@pytest.mark.unit
def test_plot_defaults_to_the_total_loss_and_every_head_with_y_labels(
    store: Store, tmp_path: Path
) -> None:
    keys = ["loss", "loss/nce_va", "acc_video_speed", "acc_audio_order", "lr", "system/cpu"]
    assert compare.default_plot_metrics(keys) == ["loss", "acc_audio_order", "acc_video_speed"]
    assert compare.y_label("acc_video_speed") == "accuracy (fraction correct)"
    assert compare.y_label("ucf101-split1.action-linear.top1") == "accuracy (fraction correct)"
    assert compare.y_label("loss/nce_va") == "loss"
    # checkpoint evaluations: scores are plotted, the counts and settings logged beside them not
    assert compare.is_score("ucf101-split1.action-linear.top1")
    assert compare.is_score("vggsound.fingerprint.blur.mAP")
    assert not compare.is_score("folder.action-linear.test_videos")
    assert not compare.is_score("folder.action-linear.l2")
    client = _client(store.uri)
    cmp = compare.build_comparison(client, EXPERIMENT)
    assert cmp.metrics == ["acc/video_speed", "loss"] and cmp.plot_metrics == (
        "loss",
        "acc/video_speed",
    )
    fig, curves = compare.plot_figure(client, cmp)
    assert curves == 6  # 3 runs x 2 panels
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy (fraction correct)"]
    assert [ax.get_xlabel() for ax in axes] == ["step", "step"]
    named = compare.build_comparison(client, EXPERIMENT, metrics=["acc/video_speed"])
    assert named.plot_metrics == ("acc/video_speed",)


@pytest.mark.unit
def test_clear_errors(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--tracking-uri", store.uri]
    assert main([*argv, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope' in the MLflow store sqlite:///" in err and "--tracking-uri" in err
    assert main([*argv, "--experiment", EXPERIMENT, "--filter", "params.x = "]) == 2
    assert "bad --filter" in capsys.readouterr().err
    assert main([*argv, "--experiment", EXPERIMENT, "--sort", "nosuch"]) == 2
    assert "no run has a value for nosuch:best" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert main(["compare", "--tracking-uri", missing]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    assert main(["compare", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the MLflow server" in capsys.readouterr().err


@pytest.mark.integration
def test_compare_over_http(mlflow_server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ids = make_runs(mlflow_server.uri, experiment="cmp-http")
    png = tmp_path / "http.png"
    argv = ["compare", "--tracking-uri", mlflow_server.uri, "--experiment", "cmp-http"]
    assert main([*argv, "--metrics", "loss", "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#  run"))
    assert ids["hot"][:8] in lines[header + 1]  # best loss first
    assert png.stat().st_size > 10_000
