"""GPU check: the paper preset's training step on one GPU: examples/s, memory, bf16, layouts.

    python -m bench.gpu_check --out DIR [--batch-sizes 32,64,128] [--warmup 5] [--steps 20]
        [--budget-s 420] [--cpu-examples-per-core X] [--skip-decode] [--cpu-smoke]

One command, at most about 8 minutes on one H100, that needs only torch, torchvision, torchaudio
and this checkout's `avtime.models` and `avtime.training.engine.step` (no Ray, PyAV, MLflow,
pyarrow or yaml; avtime need not be installed: without an install `avtime` is mapped onto the
checkout). On the paper preset's model (R(2+1)D-18 + ResNet-18 audio, embed 128), losses (every
term, temperature 0.1, a full 8192-row queue, 5 neighbours) and optimiser (AdamW, lr 1e-3,
warmup 2000 of 200k steps), as a `StepConfig` with the values of training/config.py `paper()`
(tests/bench/test_gpu_check.py checks they are equal), on synthetic batches of the contract's
shapes (video uint8 [B, 3, 16, 112, 112] x 2, audio float32 [B, 10240] x 2, labels), already on
the GPU, it runs the training step that `avtime train` runs: training/engine/step.py
`train_step` itself (bf16 autocast, fp32 losses that read the queue, the queue push, the momentum
key encoder when the preset has one, gradient accumulation over `optim.accum_steps`, backward,
clip to 1.0, AdamW, the lr schedule) and reports, per variant:
- steady-state examples/s and ms/step after warm-up (the first step, compilation included, is
  timed apart), at batch sizes 32, 64 and 128 per GPU;
- peak GPU memory (allocated and reserved), or OOM;
- whether every loss term and the gradient norm stayed finite under bf16;
- the effect of channels_last_3d and torch.compile on the video encoder, and of
  cudnn.benchmark, at batch 32 (the paper preset's batch per GPU); and a 2 s audio clip.
It also compares one bf16 step with fp32 (loss, gradient cosine), times the host-to-device
copy of a pinned batch, and (unless `--skip-decode`) measures `data.stream.decode_on = "device"`:
training/engine/device_decode.py `decode_batch` (loaded from its file, which imports only torch)
on synthetic encoded batches (JPEGs of 128 x 171 textured frames, the paper preset's 16 x 112²
clips, random crops, flips and jitter): examples/s of the whole decode + augment and of the
batched `decode_jpeg` alone, and the largest and mean difference of the device's clips from
the same function's on CPU (the CPU function matches the CPU sampler: a unit test). Cores per GPU = examples/s / the CPU feed's examples/s per core
(`--cpu-examples-per-core`, from bench/feed_bench.py). Results: DIR/<date>-gpu-check.json and
.md (DIR defaults to $OUT, else bench/results). Without CUDA it stops at once with one line,
unless `--cpu-smoke`, which runs the same code path on CPU at tiny sizes for 2 steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from avtime.training.engine.step import StepState
    from avtime.training.engine.step_config import StepConfig

Batch = dict[str, torch.Tensor]
# examples/s per core of the CPU feed at the paper preset (bench/results/2026-12-05-feed-bench.md)
FEED_EXAMPLES_PER_CORE = 75.2
PAPER_AUDIO_SECONDS = 0.64  # training/config.py paper(): data.pretext.audio_seconds


def ensure_avtime() -> None:
    """Make `avtime.models` importable when avtime is not installed (the GPU machine gets this
    working tree, not an install): `avtime` becomes a namespace package over the repository
    root, so `avtime.models` is models/."""
    try:
        import avtime.models  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("avtime")
        pkg.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules["avtime"] = pkg


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What the check trains (model, losses, optimiser, schedule: `step`) and on which clips."""

    step: StepConfig
    clip_frames: int  # T
    crop_size: int  # S
    audio_seconds: float
    batch_size: int  # per GPU

    @property
    def audio_len(self) -> int:
        """L, samples per audio clip (round half up, as pipelines.pretext.plan.audio_length)."""
        return math.floor(self.audio_seconds * self.step.model.sample_rate + 0.5)


def paper_setup() -> Setup:
    """The values training/config.py paper() sets, from avtime.models.config and the step's
    configs alone (tests/bench/test_gpu_check.py checks they are the preset's)."""
    from avtime.models.config import LossConfig, ModelConfig
    from avtime.training.engine.step_config import OptimConfig, StepConfig

    step = StepConfig(
        model=ModelConfig(video_arch="r2plus1d_18", audio_arch="resnet18", embed_dim=128),
        loss=LossConfig(temperature=0.1, queue_size=8192, knn_k=5),
        optim=OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=2000),
        num_speeds=4, total_steps=200_000, seed=0,
    )  # fmt: skip
    return Setup(
        step=step, clip_frames=16, crop_size=112, audio_seconds=PAPER_AUDIO_SECONDS, batch_size=32
    )


def smoke_setup() -> Setup:
    """The paper's encoders and losses at tiny sizes, for --cpu-smoke."""
    base = paper_setup()
    step = replace(base.step, loss=replace(base.step.loss, queue_size=64, knn_k=2))
    return replace(base, step=step, clip_frames=4, crop_size=32, audio_seconds=0.1, batch_size=2)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One measured configuration."""

    name: str
    batch: int
    channels_last: bool = False  # channels_last_3d weights and input for the video encoder
    compile: bool = False  # torch.compile the video encoder
    cudnn_benchmark: bool = False
    audio_seconds: float | None = None  # None: the setup's


def build_trainer(setup: Setup, device: torch.device, fill_queue: bool = True) -> StepState:
    """The training step's state, built by the engine (`step.build_step_state`: model, AdamW,
    warmup + cosine schedule, queue, key encoder); the queue optionally filled with random
    rows (a steady-state queue: every bank full)."""
    from avtime.training.engine.step import build_step_state

    st = build_step_state(setup.step, device)
    if st.queue is not None and fill_queue:
        n, d = st.queue.size, st.queue.dim
        for name in st.queue.banks:
            src = torch.randint(1 << 20, 1 << 40, (n,), device=device)
            st.queue.push(name, torch.randn(n, d, device=device), src)
    return st


def synthetic_batch(setup: Setup, batch: int, device: torch.device, seed: int = 1) -> Batch:
    """A random pretext batch (docs/CONTRACTS.md section 2) on `device`: video1/2 uint8
    [B, 3, T, S, S], audio1/2 float32 [B, L] in [-1, 1], has_audio [B], labels, source_key."""
    g = torch.Generator().manual_seed(seed)
    t, s, k = setup.clip_frames, setup.crop_size, setup.step.num_speeds

    def labels(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, (batch, *shape), generator=g)

    out = {
        "video1": torch.randint(0, 256, (batch, 3, t, s, s), generator=g, dtype=torch.uint8),
        "video2": torch.randint(0, 256, (batch, 3, t, s, s), generator=g, dtype=torch.uint8),
        "audio1": torch.rand(batch, setup.audio_len, generator=g) * 2 - 1,
        "audio2": torch.rand(batch, setup.audio_len, generator=g) * 2 - 1,
        "has_audio": torch.ones(batch),
        "source_key": torch.arange(batch, dtype=torch.int64),
        "label_video_speed": labels(k, 2), "label_audio_speed": labels(k, 2),
        "label_video_reverse": labels(2, 2), "label_audio_reverse": labels(2, 2),
        "label_video_order": labels(3), "label_audio_order": labels(3),
        "label_av_order": labels(3, 2),
    }  # fmt: skip
    return {key: v.to(device) for key, v in out.items()}


def engine_step_name() -> str:
    """The qualified name of the function `train_step` runs (recorded in the results)."""
    from avtime.training.engine.step import train_step as engine_step

    return f"{engine_step.__module__}.{engine_step.__qualname__}"


def train_step(st: StepState, batch: Batch) -> dict[str, float]:
    """One optimiser step of `avtime train`: the engine's `train_step` (training/engine/step.py)
    over `optim.accum_steps` micro-batches (this batch each time). Returns its terms, `lr` and
    `grad_norm` (before clipping)."""
    from avtime.training.engine.step import train_step as engine_step

    return engine_step(st, [batch] * st.spec.optim.accum_steps)


def apply_variant(st: StepState, batch: Batch, v: Variant, backend: str) -> Batch:
    """channels_last_3d and torch.compile on the video encoder, as `v` asks; returns the batch
    with its videos in the matching memory format."""
    model = cast(Any, st.model)
    if v.channels_last:
        model.video.to(memory_format=torch.channels_last_3d)
        fmt = torch.channels_last_3d
        batch = batch | {k: batch[k].contiguous(memory_format=fmt) for k in ("video1", "video2")}
    if v.compile:
        model.video = torch.compile(model.video, backend=backend)
    return batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(
    setup: Setup, v: Variant, device: torch.device, steps: tuple[int, int], backend: str
) -> dict[str, Any]:
    """Build, warm up (`steps[0]` steps, the first timed apart) and time `steps[1]` steps of
    variant `v`; examples/s, ms/step, peak memory and finiteness. Raises on OOM."""
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    if v.audio_seconds is not None:
        setup = replace(setup, audio_seconds=v.audio_seconds)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    st = build_trainer(setup, device)
    batch = apply_variant(st, synthetic_batch(setup, v.batch, device), v, backend)
    log: list[dict[str, float]] = []
    first_s = timed_steps(st, batch, 1, log)
    timed_steps(st, batch, max(0, steps[0] - 1), log)
    elapsed = timed_steps(st, batch, steps[1], log)
    finite = all(math.isfinite(x) for row in log for x in row.values())
    gib, examples = 1024**3, v.batch * setup.step.optim.accum_steps * steps[1]
    return {
        "examples_per_s": examples / elapsed,
        "ms_per_step": 1000 * elapsed / steps[1],
        "first_step_s": first_s,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / gib
        if device.type == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / gib
        if device.type == "cuda" else None,
        "finite": finite,
        "last": log[-1],
    }  # fmt: skip


def timed_steps(st: StepState, batch: Batch, n: int, log: list[dict[str, float]]) -> float:
    """Seconds for `n` training steps (device synchronised at both ends); their terms go to
    `log`."""
    sync(st.device)
    t0 = time.perf_counter()
    for _ in range(n):
        log.append(train_step(st, batch))
    sync(st.device)
    return time.perf_counter() - t0


def release(device: torch.device) -> None:
    """Free what a finished (or failed) variant left: compiled graphs, cached GPU memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def precision_check(setup: Setup, device: torch.device, batch: int) -> dict[str, Any]:
    """One forward + backward of the same model and batch under bf16 autocast and in fp32
    (empty queue): the loss terms of both, their largest relative difference, the cosine of
    the two flattened gradients, and whether everything is finite."""
    from avtime.models.losses import total_loss
    from avtime.training.engine.step import autocast

    tr = build_trainer(setup, device, fill_queue=False)
    data = synthetic_batch(setup, batch, device)
    runs: dict[str, tuple[dict[str, float], torch.Tensor]] = {}
    for name, ctx in (("bf16", autocast(device)), ("fp32", nullcontext())):
        tr.model.zero_grad(set_to_none=True)
        with ctx:
            out = tr.model(data["video1"], data["video2"], data["audio1"], data["audio2"])
        loss, terms = total_loss(out, data, setup.step.loss, tr.queue)
        loss.backward()
        grads = [p.grad.flatten().float() for p in tr.model.parameters() if p.grad is not None]
        runs[name] = ({k: float(v) for k, v in terms.items()}, torch.cat(grads))
    (t16, g16), (t32, g32) = runs["bf16"], runs["fp32"]
    rel = max(abs(t16[k] - t32[k]) / max(abs(t32[k]), 1e-6) for k in t32 if k.startswith("loss"))
    a, b = g16.double(), g32.double()  # float64: 40M-element sums
    cosine = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-30))
    return {
        "batch": batch,
        "loss_bf16": t16["loss"],
        "loss_fp32": t32["loss"],
        "max_rel_diff_loss_terms": rel,
        "grad_cosine": cosine,
        "finite": bool(torch.isfinite(g16).all() and torch.isfinite(g32).all())
        and all(math.isfinite(x) for x in [*t16.values(), *t32.values()]),
    }  # fmt: skip


def h2d_check(setup: Setup, device: torch.device, batch: int, reps: int = 10) -> dict[str, Any]:
    """ms to copy one pinned batch (all its tensors) to the GPU, and the rate in GB/s."""
    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    host = {
        k: v.pin_memory() for k, v in synthetic_batch(setup, batch, torch.device("cpu")).items()
    }
    nbytes = sum(v.numel() * v.element_size() for v in host.values())
    moved = [v.to(device, non_blocking=True) for _ in range(2) for v in host.values()]
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        moved = [v.to(device, non_blocking=True) for v in host.values()]
    sync(device)
    del moved
    ms = 1000 * (time.perf_counter() - t0) / reps
    return {"batch": batch, "mb": nbytes / 1e6, "ms": ms, "gb_per_s": nbytes / 1e6 / ms}


def load_device_decode() -> types.ModuleType:
    """training/engine/device_decode.py as a module of its own (it imports only numpy, torch and
    torchvision), without importing avtime.training (Ray, MLflow)."""
    path = Path(__file__).resolve().parents[1] / "training" / "engine" / "device_decode.py"
    spec = importlib.util.spec_from_file_location("gpu_check_device_decode", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def encoded_batch(setup: Setup, batch: int, seed: int = 2) -> dict[str, Any]:
    """A synthetic encoded batch (pipelines/pretext/stream.py `encoded_video` columns): per
    clip T JPEGs (quality 90) of 128 x 171 smooth textured frames, random crop boxes of side
    64..128 (the CPU path's reduce-1 range), flips and colour factors in [0.7, 1.3]."""
    import numpy as np
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (48, 3, 16, 22), generator=g, dtype=torch.uint8).float()
    pics = nn.functional.interpolate(low, size=(128, 171), mode="bicubic").clamp(0, 255)
    jpegs = [bytes(encode_jpeg(p.to(torch.uint8), quality=90).numpy()) for p in pics]
    t, n = setup.clip_frames, len(jpegs)
    out: dict[str, Any] = {}
    for k in (1, 2):
        idx = torch.randint(0, n, (batch, t), generator=g).tolist()
        blobs = np.empty(batch, dtype=object)
        blobs[:] = [b"".join(jpegs[i] for i in row) for row in idx]
        out[f"jpeg{k}"] = blobs
        out[f"jpeg{k}_len"] = np.array([[len(jpegs[i]) for i in row] for row in idx])
    side = torch.randint(64, 129, (batch, 2, 2), generator=g)  # (w, h)
    left = (torch.rand(batch, 2, generator=g) * (171 - side[..., 0] + 1)).long()
    top = (torch.rand(batch, 2, generator=g) * (128 - side[..., 1] + 1)).long()
    out["box"] = torch.stack([left, top, left + side[..., 0], top + side[..., 1]], -1).numpy()
    out["flip"] = torch.randint(0, 2, (batch, 2), generator=g).numpy()
    out["color"] = (0.7 + 0.6 * torch.rand(batch, 2, 3, generator=g, dtype=torch.float64)).numpy()
    out["label_video_order"] = np.zeros(batch, dtype=np.int64)
    return out


def decode_check(setup: Setup, device: torch.device, batch: int, reps: int = 5) -> dict[str, Any]:
    """`decode_batch` on `device`: examples/s (whole, and `decode_jpegs` alone) and the
    difference of its clips from the CPU's."""
    dd = load_device_decode()
    enc = encoded_batch(setup, batch)
    lens = [*enc["jpeg1_len"], *enc["jpeg2_len"]]

    def timed(fn: Callable[[], object]) -> float:
        fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return batch * reps / (time.perf_counter() - t0)

    size = setup.crop_size
    whole = timed(lambda: dd.decode_batch(enc, size, device))
    jpeg = timed(lambda: dd.decode_jpegs([*enc["jpeg1"], *enc["jpeg2"]], lens, device))
    got, want = dd.decode_batch(enc, size, device), dd.decode_batch(enc, size, "cpu")
    diff = torch.cat(
        [(got[k].cpu().int() - want[k].int()).abs().flatten() for k in ("video1", "video2")]
    )
    return {
        "batch": batch, "frames_per_batch": 2 * batch * setup.clip_frames,
        "examples_per_s": whole, "decode_jpeg_examples_per_s": jpeg,
        "vs_cpu_mean_abs_diff": float(diff.float().mean()), "vs_cpu_max_abs_diff": int(diff.max()),
    }  # fmt: skip


def variants(batch_sizes: Sequence[int], base: int) -> list[Variant]:
    """The batch-size sweep (eager), then the layout and compile variants at batch `base`."""
    out = [Variant(name=f"eager b{b}", batch=b) for b in batch_sizes]
    out += [
        Variant(name="channels_last_3d", batch=base, channels_last=True),
        Variant(name="cudnn.benchmark", batch=base, cudnn_benchmark=True),
        Variant(name="channels_last_3d + cudnn.benchmark", batch=base, channels_last=True,
                cudnn_benchmark=True),
        Variant(name="audio 2 s", batch=base, audio_seconds=2.0),
        Variant(name="torch.compile(video)", batch=base, compile=True),
        Variant(name="torch.compile(video) + channels_last_3d", batch=base, compile=True,
                channels_last=True),
    ]  # fmt: skip
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device, for the record."""
    import torchaudio
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "torchaudio": torchaudio.__version__,
        "cuda": torch.version.cuda, "cpus": os.cpu_count(), "device": str(device),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            name=props.name, capability=f"{props.major}.{props.minor}",
            memory_gib=props.total_memory / 1024**3, cudnn=torch.backends.cudnn.version(),
        )  # fmt: skip
    return env


def guarded(
    fn: Callable[[Setup, torch.device, int], dict[str, Any]],
    setup: Setup,
    device: torch.device,
    batch: int,
) -> dict[str, Any]:
    """`fn(setup, device, batch)`, or {"error": ...} when it fails (the check goes on); then
    `release`."""
    try:
        return fn(setup, device, batch)
    except Exception as exc:  # noqa: BLE001 - one failing part must not end the check
        return {"error": first_line(exc)}
    finally:
        release(device)


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def measure(
    setup: Setup, v: Variant, device: torch.device, steps: tuple[int, int], backend: str
) -> dict[str, Any]:
    """`run_variant`, with an OOM or any other failure recorded instead of raised."""
    row: dict[str, Any] = asdict(v)
    try:
        row |= run_variant(setup, v, device, steps, backend)
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
    except Exception as exc:  # noqa: BLE001 - one failing variant must not end the check
        row["error"] = first_line(exc)
    release(device)
    return row


def variant_line(row: dict[str, Any]) -> str:
    """One printed line of a variant's result."""
    head = f"  {row['name']:42s} b{row['batch']:<4d}"
    if row.get("oom"):
        return f"{head} OOM"
    if "error" in row or "skipped" in row:
        return f"{head} {row.get('error') or row.get('skipped')}"
    mem = row["peak_allocated_gib"]
    mem_s = f"peak {mem:5.1f} GiB" if mem is not None else "peak n/a"
    return (
        f"{head} {row['examples_per_s']:8.1f} ex/s {row['ms_per_step']:8.1f} ms/step  {mem_s}  "
        f"first step {row['first_step_s']:6.1f} s  finite {row['finite']}"
    )


def cores_per_gpu(rows: list[dict[str, Any]], base: int, cpu_rate: float) -> dict[str, Any]:
    """GPU examples/s / CPU examples/s per core, for eager at batch `base` and the fastest
    finite variant of the paper's workload at that batch."""
    ok = [
        r for r in rows
        if r["batch"] == base and r.get("finite") and r["audio_seconds"] is None
    ]  # fmt: skip
    out: dict[str, Any] = {"cpu_examples_per_s_per_core": cpu_rate, "batch": base}
    eager = [r for r in ok if not (r["channels_last"] or r["compile"] or r["cudnn_benchmark"])]
    if eager:
        out["eager_examples_per_s"] = eager[0]["examples_per_s"]
        out["eager_cores"] = eager[0]["examples_per_s"] / cpu_rate
    if ok:
        best = max(ok, key=lambda r: float(r["examples_per_s"]))
        out["best_variant"], out["best_examples_per_s"] = best["name"], best["examples_per_s"]
        out["best_cores"] = best["examples_per_s"] / cpu_rate
    return out


def effects(rows: list[dict[str, Any]], base: int) -> dict[str, float]:
    """examples/s of every measured variant at batch `base` over eager's at that batch."""
    at_base = [r for r in rows if r["batch"] == base and "examples_per_s" in r]
    eager = [r for r in at_base if r["name"] == f"eager b{base}"]
    if not eager:
        return {}
    return {r["name"]: r["examples_per_s"] / eager[0]["examples_per_s"] for r in at_base}


def markdown(doc: dict[str, Any]) -> str:
    """The results as a short markdown page."""
    env, lines = doc["env"], []
    lines.append(f"# GPU check ({doc['started']})\n")
    lines.append(f"- **Command:** `{doc['command']}`")
    lines.append(f"- **Device:** {env.get('name', env['device'])}; torch {env['torch']}, "
                 f"CUDA {env['cuda']}, cuDNN {env.get('cudnn')}; {env['cpus']} CPUs")  # fmt: skip
    lines.append(f"- **Step:** `{doc.get('engine_step')}` (what `avtime train` runs)")
    lines.append(f"- **Setup:** {json.dumps(doc['setup'])}\n")
    lines.append(
        "| variant | batch | examples/s | ms/step | peak alloc GiB | first step s | finite |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for r in doc["variants"]:
        if "examples_per_s" not in r:
            why = "OOM" if r.get("oom") else r.get("error") or r.get("skipped")
            lines.append(f"| {r['name']} | {r['batch']} | {why} | | | | |")
            continue
        mem = r["peak_allocated_gib"]
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['examples_per_s']:.1f} | {r['ms_per_step']:.1f} "
            f"| {'n/a' if mem is None else f'{mem:.1f}'} | {r['first_step_s']:.1f} | {r['finite']} |"
        )
    for key in ("effects_vs_eager", "precision", "h2d", "device_decode", "cores_per_gpu"):
        lines.append(f"\n- **{key}:** {json.dumps(doc.get(key))}")
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: Path, stem: str) -> None:
    """DIR/<stem>.json and .md (rewritten after every variant, so a cut-off run leaves them)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(doc))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else bench/results)")
    p.add_argument("--batch-sizes", default="32,64,128", help="eager sweep, comma-separated")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (the first timed apart)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip variants past this")
    p.add_argument("--compile-backend", default=None, help="default inductor (smoke: eager)")
    p.add_argument("--cpu-examples-per-core", type=float, default=FEED_EXAMPLES_PER_CORE)
    p.add_argument("--skip-decode", action="store_true", help="skip the decode_on=device check")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, 2 steps")
    return p.parse_args(list(argv) if argv is not None else None)


def plan(args: argparse.Namespace) -> tuple[Setup, list[Variant], tuple[int, int], str]:
    """Setup, variants, (warm-up, timed) steps and compile backend of this run."""
    if args.cpu_smoke:
        setup = smoke_setup()
        return setup, variants([2], setup.batch_size), (1, 2), args.compile_backend or "eager"
    setup = paper_setup()
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    steps = (max(1, args.warmup), max(1, args.steps))
    return setup, variants(sizes, setup.batch_size), steps, args.compile_backend or "inductor"


RUN_BY_DEFAULT = False  # needs a CUDA device: `python -m bench.gpu_check --out DIR`

ESTIMATE_S = {"compile": 150.0, "eager": 20.0}  # budget check: a variant's likely wall time


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when every measured variant stayed finite, 1 otherwise, 2 without CUDA."""
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or pass --cpu-smoke", file=sys.stderr)  # fmt: skip
        return 2
    ensure_avtime()
    start = time.monotonic()
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        torch.set_num_threads(1)
    setup, todo, steps, backend = plan(args)
    out = Path(args.out or os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    stem = f"{dt.date.today().isoformat()}-gpu-check" + ("-cpu-smoke" if args.cpu_smoke else "")
    doc: dict[str, Any] = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.gpu_check", *sys.argv[1:]]),
        "env": environment(device), "setup": asdict(setup) | {"audio_len": setup.audio_len},
        "steps": {"warmup": steps[0], "timed": steps[1]}, "compile_backend": backend,
        "engine_step": engine_step_name(), "variants": [],
    }  # fmt: skip
    print(f"gpu check on {doc['env'].get('name', device)}: torch {torch.__version__}, "
          f"warm-up {steps[0]}, timed {steps[1]} steps, budget {args.budget_s:.0f} s", flush=True)  # fmt: skip
    doc["h2d"] = guarded(h2d_check, setup, device, setup.batch_size)
    doc["precision"] = guarded(precision_check, setup, device, min(8, setup.batch_size))
    print(f"  h2d {json.dumps(doc['h2d'])}\n  bf16 vs fp32 {json.dumps(doc['precision'])}")
    if not args.skip_decode:
        doc["device_decode"] = guarded(decode_check, setup, device, setup.batch_size)
        print(f"  device decode {json.dumps(doc['device_decode'])}", flush=True)
    for v in todo:
        need = ESTIMATE_S["compile" if v.compile else "eager"]
        if not args.cpu_smoke and time.monotonic() - start + need > args.budget_s:
            row: dict[str, Any] = asdict(v) | {"skipped": f"budget ({args.budget_s:.0f} s)"}
        else:
            row = measure(setup, v, device, steps, backend)
        doc["variants"].append(row)
        print(variant_line(row), flush=True)
        write(doc, out, stem)
    doc["cores_per_gpu"] = cores_per_gpu(
        doc["variants"], setup.batch_size, args.cpu_examples_per_core
    )
    doc["effects_vs_eager"] = effects(doc["variants"], setup.batch_size)
    doc["wall_s"] = time.monotonic() - start
    write(doc, out, stem)
    print(
        f"  vs eager b{setup.batch_size}: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in doc["effects_vs_eager"].items())
    )
    print(f"  cores per GPU {json.dumps(doc['cores_per_gpu'])}\n  wrote {out / stem}.json/.md "
          f"after {doc['wall_s']:.0f} s")  # fmt: skip
    finite = all(r.get("finite", True) for r in doc["variants"])
    finite = finite and doc["precision"].get("finite", True)
    return 0 if finite else 1


if __name__ == "__main__":
    raise SystemExit(main())
