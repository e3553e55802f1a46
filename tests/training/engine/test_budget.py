"""A batch the data or a worker's memory cannot hold is refused before training starts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from avtime.pipelines.errors import UsageError
from avtime.training.config import load_run_config
from avtime.training.engine.budget import SAFETY, batch_size, check_batch

pytestmark = pytest.mark.unit


def _cfg(batch: int, workers: int = 1, accum: int = 1):  # type: ignore[no-untyped-def]
    cfg = load_run_config("demo")
    data = replace(cfg.data, stream=replace(cfg.data.stream, batch_size=batch))
    return replace(cfg, data=data, train=replace(cfg.train, num_workers=workers),
                   optim=replace(cfg.optim, accum_steps=accum))  # fmt: skip


def test_the_estimate_is_frames_times_pixels_plus_audio() -> None:
    cfg = _cfg(8)
    t, s = cfg.data.pretext.clip_frames, cfg.data.augment.crop_size
    samples = round(cfg.data.pretext.audio_seconds * 16000)
    size = batch_size(cfg, 16000)
    assert size.bytes_per_example == 2 * t * s * s * 3 * 5 + 2 * 4 * samples  # by hand
    assert size.bytes == 8 * size.bytes_per_example


def test_a_step_larger_than_the_data_is_refused_with_the_numbers() -> None:
    with pytest.raises(UsageError) as err:
        check_batch(_cfg(100_000), examples_per_epoch=6, worker_memory=None, sample_rate=16000)
    text = str(err.value)
    assert "one optimiser step takes 100000 examples" in text and "give 6 per epoch" in text
    assert "at most 6" in text
    with pytest.raises(
        UsageError, match=r"takes 12 examples .* x optim.accum_steps 2 x train.num_workers 3"
    ):
        check_batch(_cfg(2, workers=3, accum=2), 11, None, 16000)
    check_batch(_cfg(2, workers=3, accum=2), 12, None, 16000)  # exactly one step: fine


def test_a_batch_larger_than_a_workers_memory_is_refused() -> None:
    cfg = _cfg(64)
    need = SAFETY * batch_size(cfg, 16000).bytes
    check_batch(cfg, 10_000, worker_memory=need, sample_rate=16000)  # just fits
    with pytest.raises(UsageError) as err:
        check_batch(cfg, 10_000, worker_memory=need - 1, sample_rate=16000)
    assert "a batch of 64 examples takes about" in str(err.value)
    assert "lower data.stream.batch_size to at most 63" in str(err.value)
