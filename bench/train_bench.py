"""Training throughput: Ray Train + Ray Data against a plain PyTorch loop with a DataLoader.

    python -m bench.train_bench [--workdir ~/.cache/avtime/bench-train] [--config demo]
        [--steps 150] [--warmup 20] [--videos 16] [--seconds 12] [--rounds 1]

Both sides train the same model (`--config`'s, 1 worker) with the same batch, optimiser step
(`training.engine.loop.train_step`) and sampler (`pipelines.pretext.stream`: the stream's `make_example` over
the same shards), on the same CPU budget of C = all usable cores:
- Ray: `avtime train` (`training.engine.trainer.train`): a local Ray with C logical CPUs, one Train
  worker holding `train.cpus_per_worker` CPUs (its torch threads), Ray Data the rest.
- plain: `torch.utils.data.DataLoader(epochs_iterable(...), batch_size=None,
  num_workers=C - cpus_per_worker)` and a loop in this process with the same torch threads.
Both sides' samplers run at niceness `data.stream.nice` (19 by default); both training loops
run at 0 (the plain loop at the shell's, usually 0; the Train worker at the local Ray's
`worker_niceness`, which `training.engine.trainer.ensure_local_ray` sets to 0 from Ray's default 15).
Reported: steady-state examples/s after `--warmup` steps (ratio Ray / plain; target >= 0.9x),
the fraction of step time spent waiting for data on each side, and for Ray the time from
`fit()` to the end of the first step (and for plain, from the loop's start). The load average is
printed: on a shared machine wall times move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.pretext_bench import cores, make_shards


def _config(name: str, steps: int, warmup: int, cpus: int) -> Any:
    from avtime.training.config import load_run_config

    cfg = load_run_config(name)
    cpw = min(cfg.train.cpus_per_worker, max(0.5, cpus - 1.0))
    train = replace(
        cfg.train, num_workers=1, cpus_per_worker=cpw, steps=steps, log_every=warmup,
        checkpoint_every=steps,
    )  # fmt: skip
    return replace(cfg, train=train)


def run_ray(cfg: Any, shards: str, work: Path, warmup: int) -> dict[str, float]:
    """Train with `avtime train`; steady-state figures from the run's MLflow metrics."""
    from mlflow import MlflowClient

    from avtime.training.engine.trainer import TrainRequest, train

    uri = f"sqlite:///{work / 'mlflow.db'}"
    name = f"bench-{int(time.time())}"
    out = train(TrainRequest(cfg=cfg, data=shards, workdir=str(work), tracking_uri=uri, name=name))
    client = MlflowClient(tracking_uri=uri)

    def history(key: str) -> list[float]:
        rows = client.get_metric_history(out.mlflow_run_id, key)
        return [m.value for m in sorted(rows, key=lambda m: m.step) if m.step > warmup]

    rates, waits = history("examples_per_s"), history("data_wait_fraction")
    startup = client.get_metric_history(out.mlflow_run_id, "startup_s")
    return {
        "examples_per_s": sum(rates) / len(rates),
        "data_wait_fraction": sum(waits) / len(waits),
        "first_step_s": startup[0].value if startup else float("nan"),
    }


def epochs_iterable(shards: str, data_cfg: Any) -> Any:
    """An IterableDataset of contract batches over epochs 0, 1, 2, ... (each DataLoader worker
    samples its share of every epoch's units), so the loader never restarts between epochs."""
    import itertools

    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    from avtime.pipelines.pretext.stream import iter_pretext_batches, shards_sample_rate

    sr = shards_sample_rate(shards)

    class _Epochs(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            info = get_worker_info()
            worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
            for epoch in itertools.count():
                for batch in iter_pretext_batches(
                    shards, data_cfg, epoch=epoch, worker=worker, num_workers=n, sample_rate=sr
                ):
                    yield {k: torch.from_numpy(v) for k, v in batch.items()}

    return _Epochs()


def run_plain(cfg: Any, shards: str, loaders: int, warmup: int) -> dict[str, float]:
    """The same steps with a DataLoader over the same sampler, in this process."""
    import torch
    from torch.utils.data import DataLoader

    from avtime.training.engine.loop import Window, build_state, train_step

    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    st = build_state(cfg, torch.device("cpu"))
    t_start = time.perf_counter()
    from avtime.pipelines.pretext.stream import lower_priority

    nice = cfg.data.stream.nice  # the same priority as the Ray side's sampling tasks
    loader = DataLoader(
        epochs_iterable(shards, cfg.data), batch_size=None, num_workers=loaders,
        worker_init_fn=lambda _worker: lower_priority(nice),
    )  # fmt: skip
    batches = (b for b in loader if b["video1"].shape[0] == cfg.data.stream.batch_size)
    window, first_step_s = Window(), float("nan")
    for step in range(1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        terms = train_step(st, [batch])
        if step == 1:
            first_step_s = time.perf_counter() - t_start
        if step > warmup:
            window.add(t1 - t0, time.perf_counter() - t0, st.global_batch, terms)
    m = window.metrics()
    return {
        "examples_per_s": m["examples_per_s"],
        "data_wait_fraction": m["data_wait_fraction"],
        "first_step_s": first_step_s,
    }


def one_round(cfg: Any, shards: str, work: Path, cpus: int, loaders: int, warmup: int) -> float:
    """Ray side (a local Ray of `cpus` CPUs) then plain side; print both, return the ratio."""
    import ray

    from avtime.training.engine.trainer import ensure_local_ray

    if ray.is_initialized():  # make_shards' preprocess left its own Ray up on a first run
        ray.shutdown()
    ensure_local_ray(cpus)  # the Ray `avtime train` starts: all cores, workers at niceness 0
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        ray_side = run_ray(cfg, shards, Path(tmp), warmup)
    ray.shutdown()
    plain = run_plain(cfg, shards, loaders, warmup)
    for name, r in (("ray train + data", ray_side), ("plain DataLoader", plain)):
        print(
            f"  {name:17s} {r['examples_per_s']:7.1f} examples/s   data wait "
            f"{100 * r['data_wait_fraction']:5.1f}%   first step after {r['first_step_s']:.1f} s"
        )
    ratio = ray_side["examples_per_s"] / plain["examples_per_s"]
    print(f"throughput ratio ray/plain: {ratio:.2f}x (target >= 0.9x); "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_bench", description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache/avtime/bench-train"))
    p.add_argument("--config", default="demo", help="preset of the model, batch and sampler")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=1, help="Ray-then-plain rounds; median ratio")
    args = p.parse_args(list(argv) if argv is not None else None)
    work = Path(args.workdir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    shards = str(make_shards(work, args.videos, args.seconds, (320, 240), 30))
    n = cores()
    cfg = _config(args.config, args.steps, args.warmup, n)
    loaders = max(1, round(n - cfg.train.cpus_per_worker))
    print(
        f"train bench: {args.config} model, batch {cfg.data.stream.batch_size}, {args.steps} "
        f"steps ({args.warmup} warm-up); {n} cores: train {cfg.train.cpus_per_worker:g} CPU, "
        f"data the rest (plain: {loaders} DataLoader workers); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    ratios = [one_round(cfg, shards, work, n, loaders, args.warmup) for _ in range(args.rounds)]
    if len(ratios) > 1:
        print(f"throughput ratio ray/plain over {len(ratios)} rounds: median "
              f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}; "
              "target >= 0.9x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
