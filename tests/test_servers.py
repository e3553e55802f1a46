"""The shared real servers start, accept writes over HTTP, and stop."""

from __future__ import annotations

import pytest

from tests.servers import MlflowServer, S3Server


@pytest.mark.integration
def test_s3_server_round_trip(s3_server: S3Server) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_server.bucket("fixture-check")
    fs = s3_server.filesystem()
    table = pa.table({"x": [1, 2, 3]})
    with fs.open(f"{bucket[5:]}/t.parquet", "wb") as f:
        pq.write_table(table, f)
    fs.invalidate_cache()
    with fs.open(f"{bucket[5:]}/t.parquet", "rb") as f:
        assert pq.read_table(f).column("x").to_pylist() == [1, 2, 3]


@pytest.mark.integration
def test_mlflow_server_logs_over_http(mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.create_experiment("fixture-check")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 0.5, step=3)
    hist = client.get_metric_history(run.info.run_id, "m")
    assert [(h.step, h.value) for h in hist] == [(3, 0.5)]
