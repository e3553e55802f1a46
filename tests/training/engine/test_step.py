"""training/engine/step.py: the one training step that `avtime train` and bench/gpu_check.py
both run. It imports only torch and avtime.models (checked in a process where Ray, PyAV, MLflow,
yaml, pyarrow and the rest of avtime.training cannot be imported), and it, not the loss, pushes
the step's embeddings into the feature queue after the loss has read it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avtime.models.config import LossConfig, ModelConfig
from avtime.training.engine.step import StepState, build_step_state, train_step
from avtime.training.engine.step_config import OptimConfig, StepConfig

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
BLOCKED = (
    "ray", "av", "mlflow", "yaml", "pyarrow", "avtime.pipelines", "avtime.training.config",
    "avtime.training.engine.loop", "avtime.training.tracking",
)  # fmt: skip

TINY = StepConfig(
    model=ModelConfig(
        video_arch="tiny", audio_arch="tiny", tiny_width=8, embed_dim=16, proj_hidden=32,
        head_hidden=32, n_mels=40,
    ),
    loss=LossConfig(temperature=0.1, queue_size=32, knn_k=2, key_momentum=0.9),
    optim=OptimConfig(lr=1e-3, warmup_steps=2),
    num_speeds=3, total_steps=10,
)  # fmt: skip


def tiny_batch(b: int = 4, seed: int = 0, t: int = 4, s: int = 32, n: int = 1600) -> dict:
    """A random pretext batch (docs/CONTRACTS.md section 2) at tiny sizes; rows 0 and 2 have
    audio, every row from its own video."""
    g = torch.Generator().manual_seed(seed)

    def labels(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, (b, *shape), generator=g)

    return {
        "video1": torch.randint(0, 256, (b, 3, t, s, s), generator=g, dtype=torch.uint8),
        "video2": torch.randint(0, 256, (b, 3, t, s, s), generator=g, dtype=torch.uint8),
        "audio1": torch.rand(b, n, generator=g) * 2 - 1,
        "audio2": torch.rand(b, n, generator=g) * 2 - 1,
        "has_audio": torch.tensor([1.0, 0.0, 1.0, 0.0])[:b],
        "source_key": torch.arange(b, dtype=torch.int64),
        "label_video_speed": labels(3, 2), "label_audio_speed": labels(3, 2),
        "label_video_reverse": labels(2, 2), "label_audio_reverse": labels(2, 2),
        "label_video_order": labels(3), "label_audio_order": labels(3),
        "label_av_order": labels(3, 2),
    }  # fmt: skip


def blocker(blocked: tuple[str, ...]) -> str:
    """Child-process source (after `import sys`) that makes every import of a `blocked` module,
    or of one below it, fail: the GPU machine has no Ray, PyAV or MLflow."""
    return f"""
BLOCKED = {blocked!r}

class Block:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Block)
"""


CHILD = (
    """
import json, sys
"""
    + blocker(BLOCKED)
    + """
import torch
from avtime.training.engine.step import build_step_state, train_step
from tests.training.engine.test_step import TINY, tiny_batch
st = build_step_state(TINY, torch.device("cpu"))
before = [p.detach().clone() for p in st.model.parameters()]
terms = train_step(st, [tiny_batch(seed=1), tiny_batch(seed=2)])
moved = any(not torch.equal(a, b) for a, b in zip(before, st.model.parameters()))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "av", "mlflow", "yaml"))
print(json.dumps({"terms": terms, "moved": moved, "step": st.step, "loaded": loaded,
                   "vv": st.queue.count("vv"), "va": st.queue.count("va_audio")}))
"""
)


def test_one_real_step_runs_without_ray_pyav_mlflow() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["moved"] and result["step"] == 1
    terms = result["terms"]
    assert all(isinstance(v, float) and v == v for v in terms.values()), terms
    for name in ("loss_vv", "loss_va", "loss_order_av", "acc_speed_video", "lr", "grad_norm"):
        assert name in terms
    assert terms["lr"] == pytest.approx(0.5e-3)  # warmup step 1 of 2
    assert (result["vv"], result["va"]) == (8, 4)  # 2 micro-batches of 4 rows, 2 with audio


def queue_free(spec: StepConfig) -> StepConfig:
    return replace(spec, loss=replace(spec.loss, queue_size=0, knn_k=0, key_momentum=0.0))


def test_the_step_pushes_the_keys_after_the_loss_read_the_queue() -> None:
    """Step 1 sees an empty queue (its loss equals a queue-free run's), then the step pushes the
    momentum key encoder's clip-1 embeddings (not the live model's): all rows into vv, only the
    rows with audio into both va banks, row-aligned. Step 2 reads them (its loss differs)."""
    cpu = torch.device("cpu")
    st, plain = build_step_state(TINY, cpu), build_step_state(queue_free(TINY), cpu)
    assert st.queue is not None and st.key_encoder is not None and plain.queue is None
    batch = tiny_batch(seed=3)
    clips = (batch["video1"], batch["video2"], batch["audio1"], batch["audio2"])
    with torch.no_grad():
        keys = st.key_encoder(*clips)  # the key encoder before the step: what gets pushed
    first, first_plain = train_step(st, [batch]), train_step(plain, [batch])
    assert first["loss_vv"] == pytest.approx(first_plain["loss_vv"], rel=1e-6)
    assert st.queue.count("vv") == 4 and st.queue.count("va_video") == 2
    torch.testing.assert_close(st.queue.get("vv"), F.normalize(keys["emb_vv"][:, 0], dim=1))
    audio = F.normalize(keys["emb_va_audio"][[0, 2], 0], dim=1)
    torch.testing.assert_close(st.queue.get("va_audio"), audio)
    assert st.queue.sources("va_video").tolist() == [0, 2]
    second, second_plain = train_step(st, [batch]), train_step(plain, [batch])
    assert second["loss_vv"] != pytest.approx(second_plain["loss_vv"], rel=1e-3)
    assert st.queue.count("vv") == 8


def test_state_dicts_hold_every_part_the_step_trains() -> None:
    st: StepState = build_step_state(TINY, torch.device("cpu"))
    assert set(st.state_dicts()) == {"model", "optimizer", "scheduler", "queue", "key_encoder"}
    off = build_step_state(queue_free(TINY), torch.device("cpu"))
    assert set(off.state_dicts()) == {"model", "optimizer", "scheduler"}
