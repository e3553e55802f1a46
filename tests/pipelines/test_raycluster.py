"""`avtime.pipelines.raycluster`: the pure parts (sums, messages, the autoscaler's signals in the
GCS, the timeout variable) and `grown`'s request/wait/withdraw order with the cluster faked."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest

from avtime.pipelines import raycluster as rc

pytestmark = pytest.mark.unit


def test_totals_and_shortfall() -> None:
    bundles = [{"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}, {"CPU": 2.0}]
    need = rc.totals(bundles)
    assert need == {"CPU": 3.0, "GPU": 2.0}
    assert rc.shortfall(need, {"CPU": 3.0, "GPU": 1.0}) == {"GPU": 1.0}
    assert rc.shortfall(need, {"CPU": 4.0, "GPU": 2.0, "memory": 1e9}) == {}
    assert rc.shortfall({"CPU": 1.0, "GPU": 0.0}, {}) == {"CPU": 0.0}


def test_progress_line_names_gpus_then_cpus() -> None:
    line = rc.progress_line({"CPU": 40.0, "GPU": 8.0}, {"CPU": 12.0, "GPU": 2.0}, 180.0, 900.0)
    assert line == "waiting for the cluster: 2/8 GPUs, 12/40 CPUs (3 min of 15)"


def test_timeout_message_is_one_line_naming_only_what_is_missing() -> None:
    msg = rc.never_came("avtime train", {"CPU": 4.0, "GPU": 8.0}, {"CPU": 6.0, "GPU": 2.0}, 60)
    assert "\n" not in msg
    assert msg.startswith("avtime train: the cluster did not grow")
    assert "2/8 GPUs" in msg and "CPUs" not in msg and rc.TIMEOUT_ENV in msg
    fit = rc.cannot_fit("avtime train", {"GPU": 8.0}, {"CPU": 4.0})
    assert "0/8 GPUs" in fit and "no autoscaler" in fit and "\n" not in fit


@pytest.mark.parametrize(
    ("raw", "expected"), [("", rc.DEFAULT_TIMEOUT_S), ("30", 30.0), (" 2.5 ", 2.5), ("0", 0.0)]
)
def test_timeout_from_environment(raw: str, expected: float) -> None:
    assert rc.timeout_s({rc.TIMEOUT_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_bad_timeout_is_a_cluster_error(raw: str) -> None:
    with pytest.raises(ValueError, match=rc.TIMEOUT_ENV):
        rc.timeout_s({rc.TIMEOUT_ENV: raw})


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([], False),
        ([(1, 1, {"CPU": 4.0})], False),  # fixed size
        ([(0, 0, {"CPU": 4.0})], False),  # a group that may never start
        ([(0, 3, {"CPU": 1.0})], True),  # KubeRay worker group with replicas 0, max 3
        ([(1, 1, {"CPU": 4.0}), (0, -1, {"GPU": 1.0})], True),  # unbounded
        ([(0, 5, {})], False),  # nodes that offer nothing
    ],
)
def test_config_autoscales(groups: list[Any], expected: bool) -> None:
    assert rc.config_autoscales(groups) is expected


def _v1_status(report: dict[str, Any] | None) -> str:
    status: dict[str, Any] = {"time": 1.0, "monitor_pid": 7, "load_metrics_report": {}}
    if report is not None:
        status["autoscaler_report"] = report
    return json.dumps(status)


def test_v1_status_of_a_real_autoscaling_config() -> None:
    report = {
        "active_nodes": {"ray.head.default": 1, "cpu_worker": 2},
        "pending_nodes": [["10.0.0.9", "gpu_worker", "setting-up"]],
        "pending_launches": {"gpu_worker": 1},
        "failed_nodes": [["10.0.0.8", "spot_worker"]],
        "node_type_mapping": {"127.0.0.1": "ray.head.default"},
    }
    types = rc.v1_node_types(_v1_status(report))
    assert types == {"ray.head.default", "cpu_worker", "gpu_worker", "spot_worker"}
    assert rc.types_autoscale(types) is True
    empty = {"active_nodes": {"ray.head.default": 1}}  # no worker yet
    assert rc.types_autoscale(rc.v1_node_types(_v1_status(empty).encode())) is True


def test_v1_status_of_a_hand_made_cluster() -> None:
    node = "node_" + "ab12" * 14
    readonly = {"active_nodes": {node: 1}, "node_type_mapping": {"10.0.0.2": node}}
    assert rc.v1_node_types(_v1_status(readonly)) == {node}
    assert rc.types_autoscale({node}) is False
    assert rc.v1_node_types(_v1_status(None)) == set()
    assert rc.v1_node_types(None) == set()
    assert rc.v1_node_types(b"not json") == set()
    assert rc.types_autoscale(set()) is False


def test_v2_cluster_status_node_types() -> None:
    from ray.autoscaler.v2.schema import ClusterStatus, LaunchRequest, NodeInfo

    def node(kind: str) -> NodeInfo:
        return NodeInfo(instance_type_name=kind, ray_node_type_name=kind, instance_id="i",
                        ip_address="10.0.0.1")  # fmt: skip

    launch = LaunchRequest(
        instance_type_name="gpu", ray_node_type_name="gpu", count=2,
        state=LaunchRequest.Status.PENDING, request_ts_s=0,
    )  # fmt: skip
    kuberay = ClusterStatus(active_nodes=[node("headgroup")], pending_launches=[launch])
    assert rc.v2_node_types(kuberay) == {"headgroup", "gpu"}
    assert rc.types_autoscale(rc.v2_node_types(kuberay)) is True
    readonly = ClusterStatus(idle_nodes=[node("node_" + "0f" * 28)])
    assert rc.types_autoscale(rc.v2_node_types(readonly)) is False


class FakeCluster:
    """What `grown` reads and calls on Ray, scripted: resources after each poll."""

    def __init__(self, sizes: list[dict[str, float]], autoscaler: bool) -> None:
        self.sizes, self.autoscaler, self.requests = list(sizes), autoscaler, []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        mp.setattr(rc, "has_autoscaler", lambda: self.autoscaler)
        mp.setattr(rc, "request", lambda bundles: self.requests.append(list(bundles)))
        mp.setattr(rc, "cluster_resources", self.poll)
        mp.setattr(rc.time, "sleep", lambda s: None)
        mp.setattr(rc, "POLL_S", 0.0)

    def poll(self) -> dict[str, float]:
        return self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]


def test_grown_requests_waits_reports_and_withdraws(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = [{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 3.0, "GPU": 2.0}]
    cluster = FakeCluster(sizes, autoscaler=True)
    cluster.install(monkeypatch)
    out = io.StringIO()
    bundles = [{"CPU": 1.0, "GPU": 1.0}] * 2
    with rc.grown(bundles, what="avtime train", out=out) as have:
        assert have == {"CPU": 3.0, "GPU": 2.0}  # measured after the growth
        assert cluster.requests == [bundles]
    assert cluster.requests == [bundles, []]  # withdrawn on exit
    lines = out.getvalue().splitlines()
    assert lines[0] == "avtime train: waiting for the cluster: 0/2 GPUs, 0/2 CPUs (0 min of 15)"
    assert "1/2 GPUs, 1/2 CPUs" in lines[-1]


def test_grown_withdraws_after_a_failure_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster([{"CPU": 4.0}], autoscaler=True)
    cluster.install(monkeypatch)
    with pytest.raises(RuntimeError), rc.grown([{"CPU": 1.0}], what="x", out=io.StringIO()):
        raise RuntimeError("boom")
    assert cluster.requests == [[{"CPU": 1.0}], []]


def test_grown_times_out_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster([{"CPU": 1.0}], autoscaler=True)
    cluster.install(monkeypatch)
    monkeypatch.setenv(rc.TIMEOUT_ENV, "0")
    with pytest.raises(rc.ClusterTooSmall) as err:
        with rc.grown([{"CPU": 1.0}] * 5, what="avtime preprocess", out=io.StringIO()):
            pass
    assert str(err.value).startswith("avtime preprocess: the cluster did not grow")
    assert "1/5 CPUs" in str(err.value)
    assert cluster.requests[-1] == []


def test_without_autoscaler_a_small_cluster_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster([{"CPU": 2.0}], autoscaler=False)
    cluster.install(monkeypatch)
    with pytest.raises(rc.ClusterTooSmall, match="0/8 GPUs.*no autoscaler"):
        with rc.grown([{"GPU": 1.0}] * 8, what="avtime train"):
            pass
    assert cluster.requests == []  # nobody to ask
    with rc.grown([{"CPU": 1.0}] * 8, what="avtime preprocess", minimum=[{"CPU": 1.0}]) as have:
        assert have == {"CPU": 2.0}  # runs with what there is, as before


def test_local_ray_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster([{"CPU": 2.0}], autoscaler=True)
    cluster.install(monkeypatch)
    monkeypatch.delenv("RAY_ADDRESS")
    with rc.grown([{"CPU": 64.0}], what="avtime train") as have:
        assert have == {"CPU": 2.0}
    assert cluster.requests == []


def test_a_local_ray_s_processes_are_told_its_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a local Ray with a dashboard starts, RAY_API_SERVER_ADDRESS names that dashboard
    (its processes inherit it: Ray Train's placement-group cleaner then asks its own Ray's state
    API, not "the" Ray of a machine that runs several); this process's value comes back after."""
    monkeypatch.delenv(rc.API_SERVER_ENV, raising=False)
    dashboard = rc._own_dashboard()
    assert dashboard["dashboard_host"] == "127.0.0.1" and dashboard["dashboard_port"] > 0
    with rc._ray_processes_see(dashboard):
        assert os.environ[rc.API_SERVER_ENV] == f"http://127.0.0.1:{dashboard['dashboard_port']}"
    assert rc.API_SERVER_ENV not in os.environ
    monkeypatch.setenv(rc.API_SERVER_ENV, "http://mine:8265")
    with pytest.raises(RuntimeError), rc._ray_processes_see(dashboard):
        raise RuntimeError("ray.init failed")
    assert os.environ[rc.API_SERVER_ENV] == "http://mine:8265"
    with rc._ray_processes_see({}):  # no dashboard: nothing to name
        assert os.environ[rc.API_SERVER_ENV] == "http://mine:8265"
