"""The eval cache key of files on a real S3 server (SeaweedFS): an object rewritten in place
under the same key gets another cache key."""

from __future__ import annotations

import pytest

from avtime.pipelines import storage
from avtime.pipelines.config import IngestConfig
from avtime.pipelines.datasets.adapters import EvalItem
from avtime.training.eval.cache import cache_key, file_stamps

pytestmark = pytest.mark.integration


def test_an_s3_object_rewritten_in_place_gets_another_key(s3_env) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_env.bucket("avtime-eval-cache-key")
    a, b = f"{bucket}/videos/a.mp4", f"{bucket}/videos/b.mp4"
    storage.write_bytes(a, b"first")
    storage.write_bytes(b, b"other")
    items = [
        EvalItem(source=a, label="x", split="train"),
        EvalItem(source=b, label="y", split="test"),
    ]
    cfg = IngestConfig()
    key = cache_key(items, cfg)
    assert cache_key(items, cfg) == key
    storage.write_bytes(a, b"FIRST")  # same size, other bytes: the ETag tells
    assert cache_key(items, cfg) != key
    stamps = file_stamps([a, b, f"{bucket}/videos/gone.mp4", f"{bucket}/nowhere/c.mp4"])
    assert stamps[a].startswith("5:") and stamps[a] != stamps[b]
    assert stamps[f"{bucket}/videos/gone.mp4"] == stamps[f"{bucket}/nowhere/c.mp4"] == "missing"
