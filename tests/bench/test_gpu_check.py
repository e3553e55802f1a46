"""bench/gpu_check.py: its paper setup is the paper preset's, its step is the engine's own
(training/engine/step.py, the step `avtime train` runs), and the whole check runs on CPU
(--cpu-smoke) without Ray, PyAV, MLflow, pyarrow, yaml or an install."""

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
from avtime.training.engine import loop
from avtime.training.engine import step as engine
from avtime.training.engine.loop import build_state, step_config
from avtime.training.engine.loop import train_step as loop_train_step
from bench import gpu_check
from tests.training.engine.test_step import blocker

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
# What the GPU machine lacks (ray, av, mlflow) or the check must not need (the rest).
BLOCKED = (
    "ray", "av", "mlflow", "pyarrow", "yaml", "avtime.pipelines", "avtime.training.config",
    "avtime.training.engine.loop", "avtime.training.engine.trainer", "avtime.training.tracking",
    "avtime.training.cli",
)  # fmt: skip


def setup_of(cfg: RunConfig) -> gpu_check.Setup:
    """The gpu_check Setup of a run config."""
    return gpu_check.Setup(
        step=step_config(cfg), clip_frames=cfg.data.pretext.clip_frames,
        crop_size=cfg.data.augment.crop_size, audio_seconds=cfg.data.pretext.audio_seconds,
        batch_size=cfg.data.stream.batch_size,
    )  # fmt: skip


def test_paper_setup_is_the_paper_preset() -> None:
    cfg, setup = paper(), gpu_check.paper_setup()
    assert setup == setup_of(cfg)
    assert setup.step.optim == cfg.optim and setup.step.total_steps == cfg.train.steps
    assert setup.audio_len == audio_length(cfg.data.pretext.audio_seconds, cfg.model.sample_rate)


def test_the_checks_step_is_the_engines_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_check.train_step calls training/engine/step.py `train_step` once per step, over
    `accum_steps` micro-batches, and two steps of it (lr schedule, queue, momentum key encoder
    and accumulation on) leave exactly what two steps of the Ray loop's `train_step` leave."""
    base = smoke()
    cfg = replace(
        base, optim=replace(base.optim, accum_steps=2),
        loss=replace(base.loss, key_momentum=0.9),
    )  # fmt: skip
    assert gpu_check.engine_step_name() == "avtime.training.engine.step.train_step"
    calls: list[int] = []
    real = engine.train_step

    def counted(st: engine.StepState, micro: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        calls.append(len(micro))
        return real(st, micro)

    monkeypatch.setattr(engine, "train_step", counted)  # what gpu_check calls
    monkeypatch.setattr(loop, "engine_step", counted)  # what the Ray loop calls
    setup, cpu = setup_of(cfg), torch.device("cpu")
    batches = [gpu_check.synthetic_batch(setup, 4, cpu, seed=s) for s in (1, 2)]
    st = build_state(cfg, cpu)
    tr = gpu_check.build_trainer(setup, cpu, fill_queue=False)
    assert tr.key_encoder is not None and st.key_encoder is not None
    for batch in batches:
        ours = gpu_check.train_step(tr, batch)
        theirs = loop_train_step(st, [batch, batch])
        assert ours == pytest.approx(theirs, rel=1e-6) and "lr" in ours
    assert calls == [2, 2, 2, 2]  # the check's two steps and the loop's two
    torch.testing.assert_close(tr.model.state_dict(), st.model.state_dict())
    torch.testing.assert_close(tr.key_encoder.state_dict(), st.key_encoder.state_dict())
    assert tr.queue is not None and st.queue is not None and tr.queue.count("vv") == 16
    torch.testing.assert_close(tr.queue.state_dict(), st.queue.state_dict())
    assert tr.scheduler.last_epoch == st.scheduler.last_epoch == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_stops_at_once_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err


def test_cpu_smoke_runs_like_the_gpu_machine(tmp_path: Path) -> None:
    """No avtime install; ray, av, mlflow, pyarrow, yaml, avtime.pipelines and every part of
    avtime.training but the step unimportable; the engine's step is the one that ran."""
    code = f"""
import json, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
{blocker(BLOCKED)}
sys.argv = ["gpu_check", "--cpu-smoke", "--out", sys.argv[1]]
try:
    runpy.run_module("bench.gpu_check", run_name="__main__", alter_sys=True)
    code = None
except SystemExit as exc:
    code = exc.code
import avtime.models
step = sys.modules["avtime.training.engine.step"]
print(json.dumps({{"code": code, "models": avtime.models.__file__, "step": step.__file__}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert result["models"].startswith(str(ROOT / "models"))
    assert result["step"] == str(ROOT / "training" / "engine" / "step.py")
    (path,) = tmp_path.glob("*-gpu-check-cpu-smoke.json")
    doc = json.loads(path.read_text())
    assert doc["engine_step"] == "avtime.training.engine.step.train_step"
    assert doc["setup"]["step"]["optim"]["warmup_steps"] == 2000  # the paper's schedule
    names = [v["name"] for v in doc["variants"]]
    assert "torch.compile(video) + channels_last_3d" in names and "audio 2 s" in names
    assert all(v["finite"] and v["examples_per_s"] > 0 for v in doc["variants"]), doc["variants"]
    assert doc["precision"]["finite"] and doc["cores_per_gpu"]["eager_cores"] > 0
    decode = doc["device_decode"]  # training/engine/device_decode.py, loaded from its file
    assert decode.get("examples_per_s", 0) > 0 and decode["vs_cpu_max_abs_diff"] == 0, decode
    assert (tmp_path / path.name.replace(".json", ".md")).read_text().startswith("# GPU check")
