"""Unit tests of the trainer's pure parts: schedule, checkpoints, one step, resume, metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from avtime.pipelines.configlib import dump_yaml
from avtime.training.config import RunConfig, smoke
from avtime.training.engine import checkpoint
from avtime.training.engine.loop import (
    JobSpec,
    Window,
    build_state,
    loop_config,
    parse_loop_config,
    progress_line,
    restore,
)
from avtime.training.engine.loop import train_step as one_step
from avtime.training.engine.step import lr_factor

pytestmark = pytest.mark.unit


def tiny_cfg(**optim: object) -> RunConfig:
    cfg = smoke()
    return replace(cfg, optim=replace(cfg.optim, **optim), train=replace(cfg.train, steps=8))


def fake_batch(cfg: RunConfig, seed: int) -> dict[str, torch.Tensor]:
    """A random batch with the contract's keys, dtypes and shapes (CONTRACTS.md section 2)."""
    g = torch.Generator().manual_seed(seed)
    b, t, s = cfg.data.stream.batch_size, cfg.data.pretext.clip_frames, cfg.data.augment.crop_size
    n_audio = round(cfg.data.pretext.audio_seconds * cfg.model.sample_rate)
    k = len(cfg.data.pretext.speeds)

    def video() -> torch.Tensor:
        return torch.randint(0, 256, (b, 3, t, s, s), generator=g, dtype=torch.uint8)

    def labels(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, (b, *shape), generator=g)

    return {
        "video1": video(), "video2": video(),
        "audio1": torch.rand(b, n_audio, generator=g) * 2 - 1,
        "audio2": torch.rand(b, n_audio, generator=g) * 2 - 1,
        "has_audio": torch.ones(b),
        "label_video_speed": labels(k, 2), "label_audio_speed": labels(k, 2),
        "label_video_reverse": labels(2, 2), "label_audio_reverse": labels(2, 2),
        "label_video_order": labels(3), "label_audio_order": labels(3),
        "label_av_order": labels(3, 2),
    }  # fmt: skip


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero() -> None:
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(20, 4, 20) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)
    assert all(lr_factor(s, 4, 20) >= lr_factor(s + 1, 4, 20) for s in range(4, 20))


def test_loop_config_round_trips_through_plain_dicts() -> None:
    cfg = tiny_cfg(optimizer="sgd", accum_steps=2)
    job = JobSpec(tracking_uri="sqlite:////tmp/x.db", run_id="abc", examples_per_epoch=7)
    assert parse_loop_config(loop_config(cfg, job)) == (cfg, job)


def test_train_step_reports_every_term_and_head_accuracy() -> None:
    cfg = tiny_cfg()
    st = build_state(cfg, torch.device("cpu"))
    before = [p.detach().clone() for p in st.model.parameters()]
    terms = one_step(st, [fake_batch(cfg, 0)])
    for name in ("vv", "va", "speed_video", "speed_audio", "direction_video", "order_av"):
        assert math.isfinite(terms[f"loss_{name}"])
    for name in ("speed_video", "direction_audio", "order_video", "order_audio", "order_av"):
        assert 0.0 <= terms[f"acc_{name}"] <= 1.0
    assert terms["lr"] == pytest.approx(cfg.optim.lr * lr_factor(0, cfg.optim.warmup_steps, 8))
    assert st.step == 1 and st.examples_seen == cfg.data.stream.batch_size
    assert any(not torch.equal(a, b) for a, b in zip(before, st.model.parameters()))
    assert st.queue is not None and st.queue.count("vv") == cfg.data.stream.batch_size


def test_accumulation_counts_every_micro_batch() -> None:
    cfg = tiny_cfg(accum_steps=2)
    st = build_state(cfg, torch.device("cpu"))
    one_step(st, [fake_batch(cfg, 0), fake_batch(cfg, 1)])
    assert st.step == 1 and st.examples_seen == 2 * cfg.data.stream.batch_size
    assert st.queue is not None and st.queue.count("vv") == 2 * cfg.data.stream.batch_size


def test_resume_falls_back_from_a_truncated_checkpoint_and_refuses_another_config(
    tmp_path: Path,
) -> None:
    cfg = tiny_cfg()
    st = build_state(cfg, torch.device("cpu"))
    for step in (1, 2):
        one_step(st, [fake_batch(cfg, step)])
        meta = checkpoint.CheckpointMeta(
            step=st.step, data_epoch=0, examples_seen=st.examples_seen, mlflow_run_id="run-1"
        )
        checkpoint.save(tmp_path / checkpoint.dir_name(step), meta, st.state_dicts(), "x")
    newest = tmp_path / checkpoint.dir_name(2) / checkpoint.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = build_state(cfg, torch.device("cpu"))
    with pytest.raises(checkpoint.CheckpointError):  # without the run folder: no fallback
        restore(resumed, newest.parent)
    assert restore(resumed, newest.parent, str(tmp_path)) and resumed.step == 1
    wider = build_state(replace(cfg, model=replace(cfg.model, embed_dim=cfg.model.embed_dim * 2)),
                        torch.device("cpu"))  # fmt: skip
    with pytest.raises(checkpoint.CheckpointError, match=r"step_00000001/state.pt does not match"):
        restore(wider, tmp_path / checkpoint.dir_name(1))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resume_from_checkpoint_continues_exactly(tmp_path: Path, optimizer: str) -> None:
    cfg = tiny_cfg(optimizer=optimizer)
    batches = [fake_batch(cfg, i) for i in range(4)]
    straight = build_state(cfg, torch.device("cpu"))
    for b in batches:
        one_step(straight, [b])

    first = build_state(cfg, torch.device("cpu"))
    first.run_id = "run-1"
    for b in batches[:2]:
        one_step(first, [b])
    meta = checkpoint.CheckpointMeta(
        step=first.step, data_epoch=3, examples_seen=first.examples_seen, mlflow_run_id="run-1"
    )
    checkpoint.save(tmp_path / "ck", meta, first.state_dicts(), dump_yaml(cfg))

    resumed = build_state(replace(cfg, train=replace(cfg.train, seed=99)), torch.device("cpu"))
    assert restore(resumed, tmp_path / "ck")
    assert (resumed.step, resumed.run_id, resumed.data_epoch) == (2, "run-1", 3)
    for b in batches[2:]:
        one_step(resumed, [b])
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)
    assert straight.queue is not None and resumed.queue is not None
    torch.testing.assert_close(straight.queue.get("vv"), resumed.queue.get("vv"))
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch == 4


def test_checkpoint_loads_with_weights_only_and_finds_latest(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    st = build_state(cfg, torch.device("cpu"))
    for step in (3, 6):
        meta = checkpoint.CheckpointMeta(
            step=step, data_epoch=1, examples_seen=4, mlflow_run_id="r"
        )
        checkpoint.save(tmp_path / checkpoint.dir_name(step), meta, st.state_dicts(), "x: 1\n")
    (tmp_path / checkpoint.dir_name(9)).mkdir()  # an upload that never completed
    (tmp_path / checkpoint.dir_name(9) / checkpoint.META_FILE).write_text("{}")
    found = checkpoint.find_latest(pafs.LocalFileSystem(), str(tmp_path))
    assert found is not None and found[0].endswith("step_00000006") and found[1].step == 6
    meta, state = checkpoint.load(found[0])
    assert meta.mlflow_run_id == "r" and set(state) == {"model", "optimizer", "scheduler", "queue"}
    assert checkpoint.read_config_yaml(found[0]) == "x: 1\n"
    assert checkpoint.find_latest(pafs.LocalFileSystem(), str(tmp_path / "none")) is None
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "step_00000003"}]}
    (tmp_path / checkpoint.RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    committed = checkpoint.find_latest(pafs.LocalFileSystem(), str(tmp_path))
    assert committed is not None and committed[1].step == 3  # step 6 is not committed yet


def test_window_averages_terms_and_measures_data_wait() -> None:
    w = Window()
    w.add(wait_s=1.0, total_s=4.0, examples=8, terms={"loss": 2.0})
    w.add(wait_s=0.0, total_s=4.0, examples=8, terms={"loss": 4.0})
    m = w.metrics()
    assert m["loss"] == pytest.approx(3.0)
    assert m["examples_per_s"] == pytest.approx(2.0)
    assert m["data_wait_fraction"] == pytest.approx(0.125)


def test_progress_line_shows_step_loss_every_head_and_data_wait() -> None:
    metrics = {"step": 50.0, "loss": 2.5, "acc_speed_video": 0.625, "acc_order_av": 0.4}
    metrics |= {"examples_per_s": 41.7, "data_wait_fraction": 0.031, "lr": 0.001}
    line = progress_line(metrics, 1500)
    assert line.startswith("train: step 50/1500 loss 2.500 ")
    assert "order_av 0.40 speed_video 0.62" in line and "lr" not in line
    assert line.endswith("42 ex/s, data wait 3%")


def test_checkpoint_with_a_pickled_payload_is_refused_and_not_run(tmp_path: Path) -> None:
    """A state.pt that holds code (here: a call to os.system) fails to load as tensors; the
    error names the file and says nothing of weights_only=False; the payload never runs."""
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / checkpoint.dir_name(1)
    folder.mkdir()
    meta = checkpoint.CheckpointMeta(step=1, data_epoch=0, examples_seen=0, mlflow_run_id="r")
    (folder / checkpoint.META_FILE).write_text(json.dumps(dataclasses.asdict(meta)))
    (folder / checkpoint.STATE_FILE).write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(checkpoint.CheckpointError, match="state.pt is not an avtime") as err:
        checkpoint.load(folder)
    assert "weights_only=False" not in str(err.value) and not marker.exists()
    (folder / checkpoint.STATE_FILE).write_bytes(os.urandom(512))
    with pytest.raises(checkpoint.CheckpointError, match="refused it"):
        checkpoint.load(folder)


def test_momentum_key_encoder_fills_the_queue_and_resumes_exactly(tmp_path: Path) -> None:
    """With `loss.key_momentum`, the queue holds the EMA copy's embeddings, the copy follows
    theta_k = m theta_k + (1 - m) theta_q (a hand computation), and a resume restores it."""
    base = tiny_cfg()
    cfg = replace(base, loss=replace(base.loss, key_momentum=0.9))
    batches = [fake_batch(cfg, i) for i in range(3)]
    st = build_state(cfg, torch.device("cpu"))
    assert st.key_encoder is not None
    before = [p.detach().clone() for p in st.key_encoder.model.parameters()]
    one_step(st, [batches[0]])
    for pk, p0, pq in zip(st.key_encoder.model.parameters(), before, st.model.parameters()):
        torch.testing.assert_close(pk, 0.9 * p0 + 0.1 * pq.detach())
        assert not pk.requires_grad
    live = build_state(base, torch.device("cpu"))  # the same seed without the key encoder
    one_step(live, [batches[0]])
    one_step(st, [batches[1]])
    one_step(live, [batches[1]])
    assert st.queue is not None and live.queue is not None
    rows = slice(cfg.data.stream.batch_size, 2 * cfg.data.stream.batch_size)  # step 2's rows
    assert not torch.allclose(st.queue.get("vv")[rows], live.queue.get("vv")[rows])
    meta = checkpoint.CheckpointMeta(step=2, data_epoch=0, examples_seen=0, mlflow_run_id="r")
    checkpoint.save(tmp_path / "ck", meta, st.state_dicts(), dump_yaml(cfg))
    resumed = build_state(replace(cfg, train=replace(cfg.train, seed=7)), torch.device("cpu"))
    assert restore(resumed, tmp_path / "ck") and resumed.key_encoder is not None
    for a, b in zip(st.key_encoder.model.parameters(), resumed.key_encoder.model.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="key_momentum"):
        replace(cfg.loss, key_momentum=1.0)
