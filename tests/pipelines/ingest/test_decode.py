"""PyAV decoding of single files: sample-and-hold fps resampling, sizes, rotation, audio
alignment, segment tiling, and the odd inputs (damaged, empty, audio-only, 5.1, 8 kHz, 4K)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.ingest.decode import DecodeError, Segment, SegmentDecoder, output_size
from tests.media import Spec, corner_colours, odd_corpus, read_index, write_media

CFG = IngestConfig(segment_seconds=1.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return odd_corpus(tmp_path_factory.mktemp("odd"))


def decode(path: Path, cfg: IngestConfig = CFG, **kw: float) -> list[Segment]:
    return list(SegmentDecoder(str(path), cfg, **kw).segments())  # type: ignore[arg-type]


def rgb(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def source_times(path: Path) -> tuple[list[Fraction], Fraction]:
    """Presentation times of the source's video frames, and the end of the last one
    (its pts + its duration), read independently with PyAV."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin = Fraction(c.start_time or 0, 1_000_000)
        frames = [(f.pts * f.time_base - origin, f.duration * f.time_base) for f in c.decode(s)]
    frames.sort()
    return [t for t, _ in frames], frames[-1][0] + frames[-1][1]


def expected_index(times: list[Fraction], t: Fraction) -> int:
    """Index of the latest source frame with pts <= t (the documented rule)."""
    return max(j for j, tj in enumerate(times) if tj <= t)


def burst_onsets_s(seg: Segment, sample_rate: int) -> list[float]:
    """Source times at which the test signal's 1 kHz bursts start in a segment's audio."""
    assert seg.audio is not None
    a = np.frombuffer(seg.audio, "<i2").astype(np.float32) / 32768
    loud = np.abs(a) > 0.3
    idx = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    if loud[:1].any():
        idx = np.concatenate([[0], idx])
    gap = sample_rate // 100
    idx = [i for i in idx if not loud[max(0, i - gap) : i].any()]
    return [seg.start_s + i / sample_rate for i in idx]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("w", "h", "sar", "rot", "want"),
    [
        (1280, 720, None, 0, (228, 128)),
        (720, 1280, None, 0, (128, 228)),
        (1280, 720, None, 90, (128, 228)),
        (1280, 720, None, 270, (128, 228)),
        (1920, 1080, None, 180, (228, 128)),
        (161, 97, None, 0, (212, 128)),
        (720, 576, Fraction(64, 45), 0, (228, 128)),  # anamorphic PAL 16:9
        (100, 100, None, 0, (128, 128)),
    ],
)
def test_output_size(w: int, h: int, sar: Fraction | None, rot: int, want: tuple[int, int]) -> None:
    assert output_size(w, h, sar, rot, 128) == want


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mp4", "mkv", "webm", "avi", "mov", "vfr", "odd_dims"])
def test_frames_are_the_latest_source_frame(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    times, end = source_times(path)
    segs = decode(path)
    t0 = Fraction(segs[0].start_s)
    stored = [f for s in segs for f in s.frames]
    for i, jpeg in enumerate(stored):
        t = t0 + Fraction(i, 25)
        assert read_index(rgb(jpeg)) == expected_index(times, t), f"{name} stored frame {i}"
    assert len(stored) == len([i for i in range(10_000) if t0 + Fraction(i, 25) < end])


@pytest.mark.integration
def test_resampling_up_from_a_low_frame_rate(tmp_path: Path) -> None:
    path = write_media(tmp_path / "ten.mp4", Spec(seconds=1.0, fps=10))
    stored = [read_index(rgb(f)) for s in decode(path) for f in s.frames]
    assert stored == [i * 10 // 25 for i in range(25)]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mp4", "mkv", "webm", "avi", "mov", "vfr", "long", "audio_8k"])
def test_segments_tile_and_audio_matches_video(corpus: dict[str, Path], name: str) -> None:
    cfg = IngestConfig(segment_seconds=10.0) if name == "long" else CFG
    segs = decode(corpus[name], cfg)
    assert [s.index for s in segs] == list(range(len(segs)))
    for a, b in zip(segs, segs[1:]):
        assert a.num_frames == round(cfg.segment_seconds * cfg.fps)
        assert b.start_s == pytest.approx(a.start_s + a.num_frames / cfg.fps, abs=1e-9)
    for s in segs:
        assert len(s.frames) == s.num_frames > 0
        assert s.num_samples == round(s.num_frames * cfg.sample_rate / cfg.fps)
        assert s.audio is not None and len(s.audio) == 2 * s.num_samples
    if name == "long":
        assert [s.num_frames for s in segs] == [250, 250, 125]


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", ["mp4", "mkv", "webm", "avi", "mov", "surround", "audio_8k", "late_audio"]
)
def test_audio_is_aligned_to_source_time(corpus: dict[str, Path], name: str) -> None:
    onsets = [t for s in decode(corpus[name]) for t in burst_onsets_s(s, CFG.sample_rate)]
    want = [1.0] if name == "late_audio" else [0.0, 1.0]
    assert len(onsets) == len(want), onsets
    for got, w in zip(onsets, want):
        assert abs(got - w) < 0.002  # within 2 ms (a frame period is 40 ms)


@pytest.mark.integration
def test_late_audio_is_padded_with_silence(corpus: dict[str, Path]) -> None:
    seg = decode(corpus["late_audio"])[0]
    assert seg.audio is not None
    a = np.frombuffer(seg.audio, "<i2")
    assert np.abs(a[: int(0.49 * CFG.sample_rate)]).max() < 100  # silence (codec priming aside)
    assert np.abs(a[int(0.51 * CFG.sample_rate) :]).max() > 1000


@pytest.mark.integration
def test_rotation_metadata_gives_upright_frames(corpus: dict[str, Path]) -> None:
    seg = decode(corpus["rotated"])[0]
    assert (seg.width, seg.height) == (128, 214)  # portrait, as the phone showed it
    img = rgb(seg.frames[3])
    assert img.shape[:2] == (214, 128)
    assert corner_colours(img) == {"tl": "r", "tr": "g", "bl": "b", "br": "-"}
    assert read_index(img) == 3


@pytest.mark.integration
@pytest.mark.parametrize("rotation", [180, 270])
def test_other_rotations(tmp_path: Path, rotation: int) -> None:
    path = write_media(tmp_path / f"r{rotation}.mov", Spec(seconds=0.4, rotation=rotation))
    img = rgb(decode(path)[0].frames[0])
    assert img.shape[:2] == (128, 170)
    assert corner_colours(img) == {"tl": "r", "tr": "g", "bl": "b", "br": "-"}


@pytest.mark.integration
def test_uhd_is_scaled_to_the_short_side(corpus: dict[str, Path]) -> None:
    seg = decode(corpus["uhd"])[0]
    assert (seg.width, seg.height) == (228, 128)
    assert rgb(seg.frames[0]).shape == (128, 228, 3)
    assert seg.num_frames == 10


@pytest.mark.integration
def test_no_audio_keeps_rows_with_null_audio(corpus: dict[str, Path]) -> None:
    segs = decode(corpus["no_audio"])
    assert len(segs) == 2 and all(s.audio is None and s.num_samples == 0 for s in segs)
    with pytest.raises(DecodeError) as err:
        decode(corpus["no_audio"], IngestConfig(segment_seconds=1.0, require_audio=True))
    assert (err.value.stage, err.value.error_type) == ("audio", "NoAudio")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "stage", "error_type"),
    [
        ("audio_only", "probe", "NoVideoStream"),
        ("not_video", "probe", "NotMedia"),
        ("zero_byte", "probe", "NotMedia"),
        ("truncated_mp4", "probe", "NotMedia"),  # moov atom at the end was cut off
    ],
)
def test_unusable_inputs_raise(
    corpus: dict[str, Path], name: str, stage: str, error_type: str
) -> None:
    with pytest.raises(DecodeError) as err:
        decode(corpus[name])
    assert (err.value.stage, err.value.error_type) == (stage, error_type)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["truncated", "truncated_faststart"])
def test_truncated_files_keep_what_decodes(corpus: dict[str, Path], name: str) -> None:
    segs = decode(corpus[name])
    frames = sum(s.num_frames for s in segs)
    assert 25 <= frames < 75  # some of the 3 s survived, not all
    assert [read_index(rgb(f)) for f in segs[0].frames[:5]] == [0, 1, 2, 3, 4]


@pytest.mark.integration
def test_timeout_rejects(corpus: dict[str, Path]) -> None:
    with pytest.raises(DecodeError) as err:
        decode(corpus["long"], IngestConfig(file_timeout_s=1e-9))
    assert err.value.error_type == "Timeout"


@pytest.mark.integration
def test_range_from_a_listing(corpus: dict[str, Path]) -> None:
    segs = decode(corpus["mp4"], start_s=0.5, end_s=1.3)
    assert segs[0].start_s == pytest.approx(0.5)
    assert sum(s.num_frames for s in segs) == 20
    assert [read_index(rgb(f)) for f in segs[0].frames[:3]] == [12, 13, 14]
    onsets = [t for s in segs for t in burst_onsets_s(s, CFG.sample_rate)]
    assert len(onsets) == 1 and abs(onsets[0] - 1.0) < 0.002


@pytest.mark.integration
def test_png_frames(corpus: dict[str, Path]) -> None:
    seg = decode(corpus["mp4"], IngestConfig(frame_format="png"))[0]
    assert seg.frames[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert read_index(rgb(seg.frames[7])) == 7


@pytest.mark.integration
@pytest.mark.parametrize("ext", ["mp4", "mkv", "avi"])
def test_corrupt_bytes_mid_file_keep_what_decodes(tmp_path: Path, ext: str) -> None:
    path = write_media(tmp_path / f"c.{ext}", Spec(seconds=3.0))
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(int(len(data) * 0.3), int(len(data) * 0.7), size=200):
        data[i] = int(rng.integers(256))
    path.write_bytes(bytes(data))
    dec = SegmentDecoder(str(path), CFG)
    segs = list(dec.segments())  # never raises for a file whose start decodes
    frames = [f for s in segs for f in s.frames]
    assert [read_index(rgb(f)) for f in frames[:8]] == list(range(8))  # before the damage
    if ext == "mp4":  # the index is intact: bad packets are skipped and decoding goes on
        assert len(frames) == 75 and dec.error is not None
        assert dec.error.error_type == "CorruptPackets"


@pytest.mark.integration
def test_a_range_past_the_end_is_a_reject(corpus: dict[str, Path]) -> None:
    with pytest.raises(DecodeError) as err:
        decode(corpus["mp4"], start_s=30.0, end_s=40.0)
    assert err.value.error_type == "EmptyRange"
