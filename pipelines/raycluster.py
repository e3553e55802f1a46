"""One way to reach Ray, and a cluster that grows to what a job needs.

`connect(...)` joins the cluster at `RAY_ADDRESS`, or starts a local Ray with a CPU budget (token
auth off, no dashboard unless asked; an asked-for dashboard gets a free port, which the Ray's own
processes are told, so their state-API calls never mistake another Ray of the machine for
theirs). Every command and benchmark starts Ray through it.

`grown(bundles, what=...)` is for a cluster that may start empty (a KubeRay RayJob whose worker
groups have 0 replicas, a cluster launcher with `min_workers: 0`). On a cluster (`RAY_ADDRESS`)
with an autoscaler it asks the autoscaler for the job's resource bundles
(`ray.autoscaler.sdk.request_resources`), waits until the cluster holds them, printing a progress
line, and withdraws the request when the job ends so the cluster can shrink. The wait ends after
`AVTIME_CLUSTER_TIMEOUT_S` seconds (default 900) with one line naming what never came. A cluster
without an autoscaler that cannot fit the job fails at once. On a local Ray it does nothing.

The autoscaler is detected from what it publishes in the GCS:
- the cluster config (node groups with their min/max counts; autoscaler v2 and KubeRay), or
- the v1 monitor's status, whose node types are those of a real config, not the read-only
  `node_<id>` types the monitor gives the nodes of a hand-made cluster.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from avtime.pipelines.errors import EXIT_FAILED, ClusterError, UsageError

TIMEOUT_ENV = "AVTIME_CLUSTER_TIMEOUT_S"
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # where Ray's state and job clients find the dashboard
DEFAULT_TIMEOUT_S = 900.0
POLL_S = 2.0
REPORT_EVERY_S = 30.0
SHOWN = ("GPU", "CPU")  # resources the progress line names first, in this order
READONLY_TYPE = re.compile(r"node_[0-9a-f]+")  # node types of the v1 read-only config
V1_STATUS_KEY = "__autoscaling_status"

Bundle = Mapping[str, float]


class ClusterTooSmall(ClusterError):
    """The cluster cannot give a job what it needs (it never grew to it, or has no autoscaler
    and too little); the message is one line for the user. The job could not run: exit 1."""

    exit_code = EXIT_FAILED


def connect(
    *,
    num_cpus: float | None = None,
    log_to_driver: bool = False,
    include_dashboard: bool = False,
    system_config: dict[str, Any] | None = None,
) -> None:
    """Join `RAY_ADDRESS`, else start a local Ray; nothing if Ray is up already.

    A local Ray gets `ceil(num_cpus)` logical CPUs (default: Ray's, one per core), token auth
    off (a single-user cluster) and no uv runtime env. `system_config` goes to the local Ray only.
    """
    import ray
    import ray.data  # noqa: F401 - configures its loggers on import; routed next

    from avtime.pipelines.logs import route_library_logs

    if ray.is_initialized():
        return
    route_library_logs()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        route_library_logs()
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    dashboard = _own_dashboard() if include_dashboard else {}
    with _ray_processes_see(dashboard):
        ray.init(
            num_cpus=None if num_cpus is None else max(1, math.ceil(num_cpus)),
            include_dashboard=include_dashboard,
            log_to_driver=log_to_driver,
            _system_config=system_config,
            **dashboard,
        )
    route_library_logs()  # ray.init may add its own console handlers


def _own_dashboard() -> dict[str, Any]:
    """`ray.init` arguments that put a local Ray's dashboard on a free port of 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return {"dashboard_host": "127.0.0.1", "dashboard_port": port}


@contextmanager
def _ray_processes_see(dashboard: Mapping[str, Any]) -> Iterator[None]:
    """While a local Ray starts (its processes inherit this environment), `RAY_API_SERVER_ADDRESS`
    names its dashboard. Ray Train's placement-group cleaner asks the state API whether its
    controller lives; without an address the state client looks for the one Ray of the machine,
    and when another Ray runs beside this one it dies with a traceback on the console."""
    if not dashboard:
        yield
        return
    before = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = (
        f"http://{dashboard['dashboard_host']}:{dashboard['dashboard_port']}"
    )
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = before


def on_cluster() -> bool:
    """Whether this process reaches Ray through `RAY_ADDRESS` (a cluster, not a local Ray)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def cluster_resources() -> dict[str, float]:
    """Total logical resources of the connected cluster's live nodes."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """`AVTIME_CLUSTER_TIMEOUT_S` (seconds >= 0), or the default; UsageError if malformed."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or math.isinf(value):
        raise UsageError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds >= 0")
    return value


def totals(bundles: Sequence[Bundle]) -> dict[str, float]:
    """The sum of each resource over `bundles`."""
    out: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            out[key] = out.get(key, 0.0) + float(value)
    return out


def shortfall(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, float]:
    """The resources of `need` that `have` holds less of (name -> what `have` holds)."""
    return {k: float(have.get(k, 0.0)) for k, v in need.items() if v > 0 and have.get(k, 0.0) < v}


def _amounts(need: Mapping[str, float], have: Mapping[str, float]) -> str:
    keys = [k for k in SHOWN if need.get(k, 0) > 0] + sorted(
        k for k in need if k not in SHOWN and need[k] > 0
    )
    return ", ".join(f"{have.get(k, 0.0):g}/{need[k]:g} {k}s" for k in keys)


def progress_line(
    need: Mapping[str, float], have: Mapping[str, float], elapsed: float, limit: float
) -> str:
    """E.g. `waiting for the cluster: 2/8 GPUs, 12/40 CPUs (3 min of 15)`."""
    return (
        f"waiting for the cluster: {_amounts(need, have)} "
        f"({elapsed / 60:.0f} min of {limit / 60:.0f})"
    )


def never_came(
    what: str, need: Mapping[str, float], have: Mapping[str, float], limit: float
) -> str:
    """The one-line timeout message, naming only what is still missing."""
    missing = shortfall(need, have)
    return (
        f"{what}: the cluster did not grow to what the job needs within {limit:g} s "
        f"(has {_amounts({k: need[k] for k in missing}, have)}); check the autoscaler's node "
        f"types and max workers, or raise {TIMEOUT_ENV}"
    )


def cannot_fit(what: str, need: Mapping[str, float], have: Mapping[str, float]) -> str:
    """The one-line message for a cluster without an autoscaler that is too small."""
    missing = shortfall(need, have)
    return (
        f"{what} needs {_amounts({k: need[k] for k in missing}, have)} of the cluster, and it "
        "has no autoscaler to add nodes; ask for less or use a bigger cluster"
    )


def config_autoscales(node_groups: Sequence[tuple[int, int, Mapping[str, float]]]) -> bool:
    """From a cluster config's node groups `(min_count, max_count, resources)`: can any group
    grow (max -1 = unbounded, or max > min) and offer resources?"""
    return any(bool(res) and (hi == -1 or hi > lo) and hi != 0 for lo, hi, res in node_groups)


def types_autoscale(node_types: set[str]) -> bool:
    """Whether the node types an autoscaler reports come from a real autoscaling config. The
    autoscaler of a hand-made cluster runs on a read-only config that names each node's type
    `node_<node id>`; a real config names its own types (the head's among them)."""
    return any(not READONLY_TYPE.fullmatch(t) for t in node_types if t)


def v1_node_types(status: bytes | str | None) -> set[str]:
    """The node types in the v1 monitor's status JSON (the `__autoscaling_status` key)."""
    if not status:
        return set()
    try:
        report = json.loads(status).get("autoscaler_report") or {}
    except (ValueError, AttributeError):
        return set()
    types = set((report.get("node_type_mapping") or {}).values())
    types |= set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
    types |= set(report.get("pending_launches") or {})
    types |= {str(p[1]) for p in report.get("pending_nodes") or [] if len(p) > 1}
    types |= {str(f[1]) for f in report.get("failed_nodes") or [] if len(f) > 1}
    return types


def v2_node_types(status: Any) -> set[str]:
    """The node types in autoscaler v2's `ClusterStatus` (`ray.autoscaler.v2.sdk`)."""
    nodes = [*status.active_nodes, *status.idle_nodes, *status.pending_nodes]
    launches = [*status.pending_launches, *status.failed_launches]
    return {str(n.ray_node_type_name) for n in nodes + launches}


def has_autoscaler() -> bool:
    """Whether the connected cluster's GCS shows an autoscaler that can add nodes: a cluster
    config with a node group that can grow, or node types of a real autoscaling config in the
    v1 monitor's status or in autoscaler v2's cluster status."""
    import ray
    import ray._private.state
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config_autoscales(
        [(int(g.min_count), int(g.max_count), dict(g.resources)) for g in config.node_group_configs]
    ):
        return True
    if types_autoscale(v1_node_types(_internal_kv_get(V1_STATUS_KEY))):
        return True
    if is_autoscaler_v2(fetch_from_server=True):
        from ray.autoscaler.v2.sdk import get_cluster_status

        gcs = ray.get_runtime_context().gcs_address
        return types_autoscale(v2_node_types(get_cluster_status(gcs)))
    return False


def request(bundles: Sequence[Bundle]) -> None:
    """Ask the autoscaler to fit `bundles` (an empty list withdraws the request)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{k: float(v) for k, v in b.items()} for b in bundles])


def wait_for(
    need: Mapping[str, float], *, what: str, limit: float, out: TextIO = sys.stderr
) -> dict[str, float]:
    """Poll the cluster until it holds `need`; ClusterTooSmall after `limit` seconds."""
    start = last_report = time.monotonic()
    have = cluster_resources()
    shown = ""
    while shortfall(need, have):
        elapsed = time.monotonic() - start
        if elapsed >= limit:
            raise ClusterTooSmall(never_came(what, need, have, limit))
        line = progress_line(need, have, elapsed, limit)
        if line != shown or time.monotonic() - last_report >= REPORT_EVERY_S:
            print(f"{what}: {line}", file=out, flush=True)
            shown, last_report = line, time.monotonic()
        time.sleep(min(POLL_S, max(0.0, limit - elapsed)))
        have = cluster_resources()
    return have


@contextmanager
def grown(
    bundles: Sequence[Bundle],
    *,
    what: str,
    minimum: Sequence[Bundle] | None = None,
    out: TextIO = sys.stderr,
) -> Iterator[dict[str, float]]:
    """Inside: a cluster that holds `bundles`; yields its resources (measured after growth).

    Needs `connect()` first. On a local Ray this yields the resources at once. On a cluster with
    an autoscaler: request `bundles`, wait (see `wait_for`), and withdraw the request on exit.
    Without one: ClusterTooSmall at once if the cluster lacks `minimum` (default: `bundles`).
    """
    if not on_cluster() or not bundles:
        yield cluster_resources()
        return
    if not has_autoscaler():
        floor, have = totals(bundles if minimum is None else minimum), cluster_resources()
        if shortfall(floor, have):
            raise ClusterTooSmall(cannot_fit(what, floor, have))
        yield have
        return
    request(bundles)
    try:
        yield wait_for(totals(bundles), what=what, limit=timeout_s(), out=out)
    finally:
        request([])


__all__ = [
    "ClusterTooSmall",
    "cluster_resources",
    "connect",
    "grown",
    "has_autoscaler",
    "on_cluster",
    "timeout_s",
]
