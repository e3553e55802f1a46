"""Feature extraction throughput: the Ray Data pipeline (clip tasks + model actor) against a
serial loop in one process (decode clips, then encode), on the same shards, in the same run.

    python -m bench.eval_bench [--videos 24] [--seconds 4] [--config demo] [--clips 4]

Writes a tiny fabricated `folder` dataset, decodes it once through the eval cache, then times
both paths over identical clips and checks they give the same features. Prints clips/s of each
and the ratio; on a shared 2-core machine the ratio mostly shows the fixed Ray start-up cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _serial(shards: str, loaded, clip) -> tuple[int, float, object]:  # type: ignore[no-untyped-def]
    """Decode and encode every clip in this process; returns (clips, seconds, features)."""
    import pyarrow.parquet as pq
    import torch

    from avtime.pipelines.pretext.stream import shard_paths
    from avtime.training.eval.features import SHARD_COLUMNS, sample_clips

    t0 = time.perf_counter()
    feats = []
    for path in shard_paths(shards):
        batch = sample_clips(pq.read_table(path, columns=SHARD_COLUMNS), cfg=clip)
        with torch.inference_mode():
            feats.append(loaded.model.encode_video(torch.from_numpy(batch["video"])))
    x = torch.cat(feats)
    return len(x), time.perf_counter() - t0, x


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eval_bench", description=__doc__)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--config", default="demo")
    p.add_argument("--clips", type=int, default=4)
    args = p.parse_args(argv)
    import ray
    import torch

    from avtime.pipelines.datasets.adapters import list_dataset
    from avtime.pipelines.raycluster import connect
    from avtime.training.eval.cache import ensure_shards
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.features import extract_shard_features
    from avtime.training.eval.model_io import load_model
    from tests.fabricate import make_folder

    connect(num_cpus=4)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="avtime-eval-bench-") as tmp:
        per_class = max(1, args.videos // 3)
        make_folder(Path(tmp) / "data", per_class=per_class, classes=3)
        listing = list_dataset("folder", str(Path(tmp) / "data"))
        shards = ensure_shards(listing.items, name="bench", cache=str(Path(tmp) / "cache")).uri
        loaded = load_model("random", config=args.config)
        clip = ClipConfig.from_run(loaded.cfg, args.clips)
        n_s, t_s, x_s = _serial(shards, loaded, clip)
        t0 = time.perf_counter()
        feats = extract_shard_features(shards, loaded.model, loaded.cfg.model, clip)
        t_r = time.perf_counter() - t0
    assert feats.video is not None
    same = len(feats) == n_s and torch.allclose(
        feats.video.sort(dim=0).values, x_s.sort(dim=0).values, atol=1e-4
    )
    print(f"eval features, {args.config} model, {len(listing.items)} videos, {n_s} clips")
    print(f"serial (one process): {t_s:.1f} s, {n_s / t_s:.2f} clips/s")
    print(f"ray data (tasks + 1 actor): {t_r:.1f} s, {len(feats) / t_r:.2f} clips/s")
    print(f"ratio ray/serial (clips/s): {t_s / t_r:.2f}x; same features: {same}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
