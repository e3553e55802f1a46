"""Shared fixtures: one real S3 (SeaweedFS) and one MLflow server per test session, and a local
Ray cluster per test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MlflowServer, S3Server, start_mlflow, start_s3


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored() -> Iterator[None]:
    """MLflow's process-wide tracking URI as it was before each test: a test that sets it (to a
    store it then deletes or stops) must not send a later test's `models:/` lookups there."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    before = getattr(utils, "_tracking_uri", None)
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and getattr(utils, "_tracking_uri", None) != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 endpoint on 127.0.0.1 (started once per session)."""
    server = start_s3(Path(tmp_path_factory.mktemp("seaweedfs")))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point the standard AWS environment variables at the test S3 server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` over HTTP on 127.0.0.1 (started once per session)."""
    server = start_mlflow(Path(tmp_path_factory.mktemp("mlflow")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray cluster for one test module: 4 logical CPUs, token auth off."""
    import ray

    from avtime.pipelines.raycluster import connect

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray, whatever the shell points at
        connect(num_cpus=4)
    yield
    ray.shutdown()


TIERS = ("unit", "integration", "slow")  # the markers of pyproject's [tool.pytest.ini_options]


def untiered(items: list[pytest.Item]) -> list[str]:
    """Node ids of the collected tests that carry none of the tier markers."""
    return [it.nodeid for it in items if not any(it.get_closest_marker(t) for t in TIERS)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without a tier marker: `make test-fast` (`-m unit`) would skip it silently."""
    missing = untiered(items)
    if missing:
        raise pytest.UsageError(
            f"{len(missing)} test(s) carry no tier marker ({', '.join(TIERS)}): "
            + ", ".join(missing[:10])
        )
