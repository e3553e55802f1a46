"""`avtime embed` against eval's feature path, and the driver's memory as the corpus grows.

    python -m bench.embed_bench [--videos 8] [--seconds 3] [--config smoke] [--clips 4]

1. Synthesises a corpus and preprocesses it to shards (one local Ray for the whole run).
2. Throughput: eval's path (`features.extract_shard_features`, which collects every feature on
   the driver) and `embed` (the same pipeline, written as Parquet) over the same shards, after
   one untimed warm-up; clips/s and clips/s per core (`os.cpu_count()`).
3. Memory: `embed` runs in a fresh driver process joined to the same Ray, on the corpus (1x) and on
   a 4x corpus (the same shard files listed four times); each child reports its peak RSS (sampled
   every 20 ms, and `ru_maxrss`). The goal is a 4x/1x ratio of at most 1.25: nothing grows with
   the corpus on the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(shards: str, out: str, config: str, clips: int) -> int:
    """Embed in this process (joined to RAY_ADDRESS); print {peak_rss_mb, rows, wall_s}."""
    from avtime.training.eval.embed import EmbedRequest, embed

    peak = [_rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    req = EmbedRequest(checkpoint="random", config=config, data=shards, out=out,
                       clips_per_segment=clips)  # fmt: skip
    res = embed(req, notify=lambda m: None)
    stop.set()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": max(peak[0], maxrss), "rows": res.rows, "wall_s": res.wall_s}))
    return 0


def replicate(shards: str, dst: str, times: int) -> str:
    """A shards folder whose manifest lists every shard `times` times (copied files)."""
    from avtime.pipelines.schema import MANIFEST_NAME

    doc = json.loads(Path(shards, MANIFEST_NAME).read_text())
    Path(dst).mkdir(parents=True)
    entries = []
    for k in range(times):
        for entry in doc["shards"]:
            name = f"part-r{k}-{Path(entry['path']).name}"
            shutil.copyfile(Path(shards, entry["path"]), Path(dst, name))
            entries.append({**entry, "path": name})
    doc["shards"] = entries
    Path(dst, MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


def _run_child(shards: str, out: str, args: argparse.Namespace, address: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.embed_bench", "--child", shards, out,
           "--config", args.config, "--clips", str(args.clips)]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": address}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def _throughput(shards: str, tmp: str, args: argparse.Namespace) -> dict[str, float]:
    """clips/s of eval's feature path and of embed, same shards, same Ray, after a warm-up."""
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.embed import EmbedRequest, embed
    from avtime.training.eval.features import extract_shard_features
    from avtime.training.eval.model_io import load_model

    loaded = load_model("random", config=args.config)
    clip = ClipConfig.from_run(loaded.cfg, args.clips)
    mods = ("video", "audio")
    extract_shard_features(shards, loaded.model, loaded.cfg.model, clip, mods)  # warm-up
    t0 = time.perf_counter()
    feats = extract_shard_features(shards, loaded.model, loaded.cfg.model, clip, mods)
    t_eval = time.perf_counter() - t0
    req = EmbedRequest(checkpoint="random", config=args.config, data=shards,
                       out=str(Path(tmp, "emb-throughput")), clips_per_segment=args.clips)  # fmt: skip
    res = embed(req, notify=lambda m: None)
    cores = os.cpu_count() or 1
    return {"clips": float(len(feats)), "eval_s": t_eval, "embed_s": res.wall_s,
            "eval_cps": len(feats) / t_eval, "embed_cps": res.rows / res.wall_s,
            "cores": float(cores)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="embed_bench", description=__doc__)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--config", default="smoke")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--child", nargs=2, metavar=("SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.config, args.clips)
    import ray

    from avtime.training.cli.main import main as avtime

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    with tempfile.TemporaryDirectory(prefix="avtime-embed-bench-") as tmp:
        corpus, shards = str(Path(tmp, "corpus")), str(Path(tmp, "shards"))
        synth = ["synth", corpus, "--videos", str(args.videos), "--seconds", str(args.seconds)]
        assert avtime([*synth, "--quiet"]) == 0
        pre = ["preprocess", corpus, shards, "--short-side", "64", "--rows-per-shard", "2"]
        assert avtime(pre) == 0
        tp = _throughput(shards, tmp, args)
        big = replicate(shards, str(Path(tmp, "shards4x")), 4)
        one = _run_child(shards, str(Path(tmp, "emb1x")), args, address)
        four = _run_child(big, str(Path(tmp, "emb4x")), args, address)
    ray.shutdown()
    ratio = four["peak_rss_mb"] / one["peak_rss_mb"]
    print(f"embed_bench: {int(tp['clips'])} clips, config {args.config}, {int(tp['cores'])} cores")
    print(f"  eval features : {tp['eval_cps']:.1f} clips/s ({tp['eval_cps'] / tp['cores']:.2f} "
          f"clips/s/core, {tp['eval_s']:.1f} s)")  # fmt: skip
    print(f"  embed         : {tp['embed_cps']:.1f} clips/s ({tp['embed_cps'] / tp['cores']:.2f} "
          f"clips/s/core, {tp['embed_s']:.1f} s incl. writing and commits)")  # fmt: skip
    print(f"  embed / eval  : {tp['embed_cps'] / tp['eval_cps']:.2f}x")
    print(f"  driver peak RSS: 1x {one['peak_rss_mb']:.0f} MiB ({one['rows']} rows), "
          f"4x {four['peak_rss_mb']:.0f} MiB ({four['rows']} rows): ratio {ratio:.3f} "
          f"(goal <= 1.25)")  # fmt: skip
    return 0 if ratio <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
