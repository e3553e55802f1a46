"""bench/gpu_check.py: its paper setup is the paper preset's, its step is the loop's, and the
whole check runs on CPU (--cpu-smoke) without Ray, PyAV, MLflow, pyarrow, yaml or an install."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from avtime.pipelines.pretext.plan import audio_length
from avtime.training.config import RunConfig, paper, smoke
from avtime.training.engine.loop import build_state
from avtime.training.engine.loop import train_step as loop_train_step
from bench import gpu_check

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
# What the GPU machine lacks (ray, av, mlflow) or the check must not need (the rest).
BLOCKED = ("ray", "av", "mlflow", "pyarrow", "yaml", "avtime.pipelines", "avtime.training")


def setup_of(cfg: RunConfig) -> gpu_check.Setup:
    """The gpu_check Setup of a run config."""
    return gpu_check.Setup(
        model=cfg.model, loss=cfg.loss, clip_frames=cfg.data.pretext.clip_frames,
        crop_size=cfg.data.augment.crop_size, num_speeds=len(cfg.data.pretext.speeds),
        audio_seconds=cfg.data.pretext.audio_seconds, batch_size=cfg.data.stream.batch_size,
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip,
        seed=cfg.train.seed,
    )  # fmt: skip


def test_paper_setup_is_the_paper_preset() -> None:
    cfg, setup = paper(), gpu_check.paper_setup()
    assert setup == setup_of(cfg)
    assert cfg.optim.optimizer == "adamw" and cfg.optim.accum_steps == 1
    assert setup.audio_len == audio_length(cfg.data.pretext.audio_seconds, cfg.model.sample_rate)


def test_the_mirrored_step_is_the_loops_train_step() -> None:
    """Two steps (the second reads the queue the first filled): same terms, same weights."""
    cfg = smoke()
    # a constant lr (no warmup, a cosine over 10^9 steps): the mirror has no scheduler
    cfg = replace(
        cfg, optim=replace(cfg.optim, warmup_steps=0), train=replace(cfg.train, steps=10**9)
    )
    setup = setup_of(cfg)
    cpu = torch.device("cpu")
    batches = [gpu_check.synthetic_batch(setup, 4, cpu, seed=s) for s in (1, 2)]
    st = build_state(cfg, cpu)
    tr = gpu_check.build_trainer(setup, cpu, fill_queue=False)
    for batch in batches:
        ours = gpu_check.train_step(tr, batch)
        theirs = loop_train_step(st, [batch])
        assert ours == pytest.approx({k: v for k, v in theirs.items() if k != "lr"}, rel=1e-5)
    torch.testing.assert_close(tr.model.state_dict(), st.model.state_dict())
    assert tr.queue is not None and st.queue is not None
    torch.testing.assert_close(tr.queue.state_dict(), st.queue.state_dict())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_stops_at_once_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err


def test_cpu_smoke_runs_like_the_gpu_machine(tmp_path: Path) -> None:
    """No avtime install, and ray/av/mlflow/pyarrow/yaml/avtime.pipelines/training unimportable."""
    code = f"""
import json, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
BLOCKED = {BLOCKED!r}

class Block:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Block)
sys.argv = ["gpu_check", "--cpu-smoke", "--out", sys.argv[1]]
try:
    runpy.run_module("bench.gpu_check", run_name="__main__", alter_sys=True)
    code = None
except SystemExit as exc:
    code = exc.code
import avtime.models
print(json.dumps({{"code": code, "models": avtime.models.__file__}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert result["models"].startswith(str(ROOT / "models"))
    (path,) = tmp_path.glob("*-gpu-check-cpu-smoke.json")
    doc = json.loads(path.read_text())
    names = [v["name"] for v in doc["variants"]]
    assert "torch.compile(video) + channels_last_3d" in names and "audio 2 s" in names
    assert all(v["finite"] and v["examples_per_s"] > 0 for v in doc["variants"]), doc["variants"]
    assert doc["precision"]["finite"] and doc["cores_per_gpu"]["eager_cores"] > 0
    decode = doc["device_decode"]  # training/engine/device_decode.py, loaded from its file
    assert decode.get("examples_per_s", 0) > 0 and decode["vs_cpu_max_abs_diff"] == 0, decode
    assert (tmp_path / path.name.replace(".json", ".md")).read_text().startswith("# GPU check")
