"""bench/feed_bench.py: the baseline decodes the same clips, and the stage timers leave the
sampler as they found it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.pretext import clips, stream
from avtime.pipelines.pretext.augment import VideoAug
from bench import feed_bench

pytestmark = pytest.mark.unit
W, H = 170, 128


def jpeg_frames(n: int) -> list[bytes]:
    """n smooth RGB frames W x H (gradients that move with the frame index), as JPEG bytes."""
    y, x = np.mgrid[0:H, 0:W]
    out = []
    for t in range(n):
        rgb = np.stack([x + 3 * t, y + 2 * t, (x + y) // 2], axis=-1) % 256
        buf = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("jitter", [False, True])
def test_the_naive_baseline_decodes_the_same_clip(jitter: bool) -> None:
    frames = jpeg_frames(6)
    factors = {"brightness": 1.2, "contrast": 1.0, "saturation": 0.8} if jitter else {}
    aug = VideoAug(box=(12, 6, 150, 120), flip=True, **factors)
    idx = np.array([0, 2, 4, 5])
    ours = clips.decode_clip(frames, idx, aug, 32, (W, H))
    naive = feed_bench.naive_decode_clip(frames, idx, aug, 32, (W, H))
    assert ours.shape == naive.shape == (4, 32, 32, 3) and naive.dtype == np.uint8
    assert np.abs(ours.astype(int) - naive.astype(int)).mean() < 4.0


def test_stage_timers_count_calls_and_are_removed_afterwards() -> None:
    originals = (clips.decode_frame, clips.decode_clip, stream.sample_row, stream.to_batch)
    clock = feed_bench.StageClock()
    frames = jpeg_frames(3)
    with feed_bench.instrumented(clock):
        assert clips.decode_frame is not originals[0]
        clips.decode_clip(frames, np.arange(3), VideoAug(box=(0, 0, W, H), flip=False), 16, (W, H))
    assert (clips.decode_frame, clips.decode_clip, stream.sample_row, stream.to_batch) == originals
    assert clock.calls == {"clip": 1, "jpeg": 3, "jitter": 1}
    split = feed_bench.stage_split(clock, examples=1)
    assert split["JPEG decode"] == pytest.approx(1000 * clock.cpu["jpeg"])
    rest = clock.cpu["clip"] - clock.cpu["jpeg"] - clock.cpu["jitter"]
    assert split["crop + resize"] == pytest.approx(1000 * rest)
