"""decode_on = "device": the encoded stream decoded by torch gives the CPU sampler's clips.

Geometry: 48 x 40 stored frames and 32² crops, so every crop box is < 2 x 32 and the CPU path
decodes at full scale (reduce = 1), as at the paper preset (112² crops of 128-px frames); the
device path never reduces, so a larger box would compare a DCT-reduced decode with a resize.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from avtime.pipelines.config import AugmentConfig, DataConfig, StreamConfig
from avtime.pipelines.pretext.clips import encode_example, make_example
from avtime.pipelines.pretext.stream import iter_pretext_batches, sample_row, to_batch
from avtime.training.config import smoke
from avtime.training.engine.device_decode import decode_batch
from avtime.training.engine.loop import _batches_forever, build_state, train_step
from tests.pipelines.pretext.rows import make_row, write_shards

pytestmark = pytest.mark.unit
W, H, S = 48, 40, 32
# Tolerance. Measured on CPU (Pillow's and torchvision's libjpeg-turbo): mean |diff| <= 0.011,
# max 2 without jitter and 3 with it; about 1 % of values differ, by Pillow's 22-bit fixed-point
# weights against float32 ones where a resize pass lands near a rounding half. The jitter's
# contrast x brightness (up to 1.4 x 1.4 here) scales a 2 to about 4. nvJPEG on CUDA may add a
# level or two; bench/gpu_check.py compares the device's result with this CPU one.
MEAN_TOL, MAX_TOL = 0.1, 4


def textured_jpeg(seed: int) -> bytes:
    """A frame of smooth random colour texture (so crops, resizes and flips are visible)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def textured_row(num_frames: int = 60, **kw: Any) -> dict[str, Any]:
    row = make_row(num_frames=num_frames, width=W, height=H, **kw)
    row["frames"] = [textured_jpeg(i) for i in range(num_frames)]
    return row


def data_cfg(*, jitter: float, flip: bool, decode_on: str = "cpu") -> DataConfig:
    return DataConfig(
        augment=AugmentConfig(crop_size=S, color_jitter=jitter, flip=flip, crop_scale=(0.3, 1.0)),
        stream=StreamConfig(batch_size=4, decode_on=decode_on),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("jitter", "flip"), [(0.0, False), (0.0, True), (0.4, False), (0.4, True)])
def test_device_path_renders_the_cpu_paths_clips(jitter: float, flip: bool) -> None:
    cfg = data_cfg(jitter=jitter, flip=flip)
    rows = [textured_row(video_id=f"{i:016x}") for i in range(3)]
    cpu, enc = [], []
    for i, row in enumerate(rows * 2):
        a = make_example(row, cfg, np.random.default_rng(i))
        b = encode_example(row, cfg, np.random.default_rng(i))
        assert a is not None and b is not None
        assert a.keys() - {"video"} == b.keys() - {"jpeg1", "jpeg2", "jpeg1_len", "jpeg2_len",
                                                    "box", "flip", "color"}  # fmt: skip
        for k in a.keys() - {"video"}:  # same plan, labels, audio draws
            np.testing.assert_array_equal(a[k], b[k])
        cpu.append(a | {"example_key": np.array(i), "source_key": np.array(i)})
        enc.append(b | {"example_key": np.array(i), "source_key": np.array(i)})
    want = to_batch(cpu, cfg)
    got = decode_batch(to_batch(enc, replace_decode(cfg, "device")), S, "cpu")
    assert got.keys() == want.keys()
    for k in ("video1", "video2"):
        assert got[k].dtype == torch.uint8 and tuple(got[k].shape) == want[k].shape
        diff = np.abs(got[k].numpy().astype(np.int16) - want[k].astype(np.int16))
        assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (k, diff.mean(), diff.max())
    for k in want.keys() - {"video1", "video2"}:
        np.testing.assert_array_equal(got[k].numpy(), want[k])
    flips = np.concatenate([e["flip"] for e in enc])
    assert flips.any() == flip  # both branches exercised when asked
    colors = np.concatenate([e["color"] for e in enc])
    assert (colors != 1.0).any() == (jitter > 0)


def replace_decode(cfg: DataConfig, decode_on: str) -> DataConfig:
    return replace(cfg, stream=replace(cfg.stream, decode_on=decode_on))  # type: ignore[arg-type]


def test_decode_on_is_validated_and_cpu_by_default() -> None:
    assert StreamConfig().decode_on == "cpu"
    with pytest.raises(ValueError, match="decode_on"):
        StreamConfig(decode_on="gpu")  # type: ignore[arg-type]


def test_device_rows_are_sampled_encoded_with_the_same_keys() -> None:
    cfg = data_cfg(jitter=0.3, flip=True, decode_on="device")
    (ex,) = sample_row(textured_row(), cfg, epoch=0)
    assert "video" not in ex and isinstance(ex["jpeg1"].item(), bytes)
    assert ex["jpeg1_len"].shape == (16,) and ex["box"].shape == (2, 4)
    empty = to_batch([], cfg)
    assert "video1" not in empty and empty["jpeg1_len"].shape == (0, 16)


class FakeShard:
    """The part of a Ray Data shard the loop reads, over the plain-Python stream."""

    def __init__(self, shards: str, cfg: DataConfig) -> None:
        self.shards, self.cfg = shards, cfg

    def iter_batches(self, *, batch_size: int, batch_format: str, **_: Any) -> Any:
        assert batch_format == "numpy" and batch_size == self.cfg.stream.batch_size
        for b in iter_pretext_batches(self.shards, self.cfg):
            if len(b["jpeg1"]) == batch_size:
                yield b


def test_loop_trains_on_device_decoded_batches(tmp_path: Path) -> None:
    """The loop's batch source with decode_on = "device" feeds train_step (two steps, CPU)."""
    cfg = smoke()
    data = replace(
        cfg.data,
        augment=replace(cfg.data.augment, crop_size=S),
        stream=replace(cfg.data.stream, batch_size=2, decode_on="device"),
    )
    cfg = replace(cfg, data=data, train=replace(cfg.train, steps=2))
    rows = [textured_row(video_id=f"{i:016x}", sample_rate=cfg.model.sample_rate) for i in range(4)]
    write_shards(rows, str(tmp_path))
    torch.manual_seed(0)
    st = build_state(cfg, torch.device("cpu"))
    batches = _batches_forever(FakeShard(str(tmp_path), cfg.data), cfg, st.device)
    for _ in range(2):
        batch = next(batches)
        t = cfg.data.pretext.clip_frames
        assert batch["video1"].shape == (2, 3, t, S, S) and batch["video1"].dtype == torch.uint8
        terms = train_step(st, [batch])
        assert all(np.isfinite(v) for v in terms.values())
    assert st.step == 2
