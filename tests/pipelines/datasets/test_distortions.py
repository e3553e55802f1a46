"""Fingerprint distortions write real new files: the bytes and the decoded content differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avtime.pipelines.datasets.distortions import (
    Clip,
    Distortion,
    _brightness_contrast,
    _change_fps,
    apply_distortion,
    distortion_set,
    read_clip,
)
from tests.fabricate import synth_video


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_video(tmp_path_factory.mktemp("dist") / "src.mp4", 1, 2, seconds=1.6, size=48)


@pytest.mark.unit
def test_distortion_sets() -> None:
    mild, strong = distortion_set("mild"), distortion_set("strong")
    assert len(mild) == len(strong) == 8
    assert {d.kind for d in mild} == {
        "reencode", "resize", "crop", "blur", "brightness_contrast", "fps", "audio_noise",
        "temporal_crop",
    }  # fmt: skip
    assert [d.name for d in distortion_set("all")] == [d.name for d in mild + strong]
    assert strong[0].name == "reencode_strong"
    with pytest.raises(ValueError, match="mild, strong or all"):
        distortion_set("medium")  # type: ignore[arg-type]


@pytest.mark.unit
def test_frame_rate_change_and_brightness_are_exact() -> None:
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2)
    frames = frames.repeat(3, 3)
    from fractions import Fraction

    out, fps = _change_fps(Clip(frames=frames, fps=Fraction(25), audio=None, sample_rate=0), 0.6)
    assert fps == 15 and len(out) == 6
    assert [int(f[0, 0, 0]) for f in out] == [0, 1, 3, 5, 6, 8]  # floor(i * 25 / 15)
    img = np.full((1, 2, 2, 3), 128, np.uint8)
    assert int(_brightness_contrast(img, 1.0)[0, 0, 0, 0]) == 128 + round(0.1 * 255)


@pytest.mark.integration
@pytest.mark.parametrize("spec", distortion_set("all"), ids=lambda d: d.name)
def test_distortion_changes_bytes_and_content(
    spec: Distortion, source: Path, tmp_path: Path
) -> None:
    out = apply_distortion(str(source), tmp_path / f"{spec.name}.mp4", spec, seed=3)
    assert out.is_file() and out.read_bytes() != source.read_bytes()
    a, b = read_clip(str(source)), read_clip(str(out))
    assert b.frames.dtype == np.uint8 and len(b.frames) > 0
    if spec.kind == "audio_noise":
        assert a.audio is not None and b.audio is not None
        n = min(a.audio.shape[1], b.audio.shape[1])
        assert float(np.abs(a.audio[:, :n] - b.audio[:, :n]).mean()) > 1e-3
    if a.frames.shape == b.frames.shape:
        diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean()
        assert diff > 0.1  # every kind re-encodes, and all but audio_noise change the pixels
        if spec.kind not in ("audio_noise", "reencode"):
            assert diff > 1.0
    else:
        assert spec.kind in ("resize", "crop", "fps", "temporal_crop")
    if spec.kind == "resize":
        factor = 0.5 if spec.strength == "mild" else 0.25
        assert b.frames.shape[1] == max(16, round(48 * factor / 2) * 2)
    if spec.kind in ("fps", "temporal_crop"):
        assert len(b.frames) < len(a.frames)


@pytest.mark.integration
def test_distortions_are_seeded(source: Path, tmp_path: Path) -> None:
    spec = Distortion(kind="crop", amount=0.5, strength="strong")
    a = apply_distortion(str(source), tmp_path / "a.mp4", spec, seed=1).read_bytes()
    b = apply_distortion(str(source), tmp_path / "b.mp4", spec, seed=1).read_bytes()
    assert a == b
