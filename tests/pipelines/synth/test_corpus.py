"""The synthetic corpus: real mp4 files decoded with PyAV, checked against independent readings.

Onsets are found in the decoded audio and bounces in the decoded pixels, each on its own; the
frame-index code is read back after a resize and a JPEG round trip; the audio time code after
AAC, downmix, resampling to 16 kHz, speed-up and reversal.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from avtime.pipelines.synth import groundtruth as gt
from avtime.pipelines.synth.avwrite import write_av
from avtime.pipelines.synth.corpus import (
    CLASSES,
    SynthConfig,
    generate_corpus,
    plan_corpus,
    plan_video,
)
from avtime.training.cli.main import main as cli_main

SR16 = 16000


# ------------------------------------------------------------------------------------------------
# helpers: independent decoding
# ------------------------------------------------------------------------------------------------


def decode_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def decode_audio(path: Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float64 audio (downmixed), resampled by ffmpeg to `rate` if given."""
    with av.open(str(path)) as c:
        src_rate = c.streams.audio[0].rate
        rs = av.AudioResampler(format="flt", layout="mono", rate=rate or src_rate)
        chunks = [g.to_ndarray().reshape(-1) for f in c.decode(audio=0) for g in rs.resample(f)]
        chunks += [g.to_ndarray().reshape(-1) for g in rs.resample(None)]
    return np.concatenate(chunks).astype(np.float64), rate or src_rate


def resize_jpeg(rgb: np.ndarray, short_side: int, quality: int = 75) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    img = Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def fft_resample(x: np.ndarray, n_out: int) -> np.ndarray:
    """Band-limited resampling (what a tape played fast sounds like, with anti-aliasing)."""
    spec = np.fft.rfft(x)
    out = np.zeros(n_out // 2 + 1, complex)
    m = min(len(spec), len(out))
    out[:m] = spec[:m]
    return np.fft.irfft(out, n_out) * n_out / len(x)


def audio_onsets(x: np.ndarray, rate: int) -> np.ndarray:
    """Onset times (s): 1 ms frames whose high-passed energy jumps 10x over the last ~20 ms."""
    hop = max(1, rate // 1000)
    d = np.diff(x)
    n = len(d) // hop * hop
    energy = (d[:n] ** 2).reshape(-1, hop).sum(axis=1)
    onsets = []
    k = 20
    while k < len(energy):
        ref = np.median(energy[k - 20 : k - 2]) + 1e-12
        if energy[k] > 10 * ref and energy[k] > 1e-6:
            onsets.append(k * hop / rate)
            k += 30
        else:
            k += 1
    return np.array(onsets)


def visual_bounces(frames: np.ndarray, colors: np.ndarray, floor_px: int) -> np.ndarray:
    """Frames where the object's centroid stops going down and goes up (a floor bounce).

    Needs two frames of descent before and two of ascent after, so apex jitter is not a bounce.

    The object is found as pixels near one of the object colours that differ from the median
    (background) frame; only the appearance is taken from the sidecar, never event times.
    """
    f32 = frames[:, :floor_px].astype(np.float32)
    bg = np.median(f32, axis=0)
    ys = np.full(len(frames), np.nan)
    for i, fr in enumerate(f32):
        moving = np.abs(fr - bg).sum(-1) > 60
        dist = np.min(np.linalg.norm(fr[None] - colors[:, None, None, :], axis=-1), axis=0)
        mask = moving & (dist < 70)
        if mask.sum() >= 6:
            ys[i] = np.nonzero(mask)[0].mean()
    out = []
    for i in range(2, len(frames) - 2):
        y = ys[i - 2 : i + 3]  # down, down, (lowest), up, up
        if np.isnan(y).any() or not (y[0] < y[1] <= y[2] > y[3] > y[4]):
            continue
        if 2 * y[2] - y[0] - y[4] >= 3:
            out.append(i)
    return np.array(out)


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gt_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Four short videos with both ground-truth codes, one per class."""
    out = tmp_path_factory.mktemp("synth_gt")
    cfg = SynthConfig(
        videos=4, seconds=3.0, duration_jitter=0.0, classes=4, seed=3, ground_truth=True
    )
    return out, generate_corpus(out, cfg, workers=1)


@pytest.fixture(scope="module")
def drop_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Bouncing balls, one at a time, no codes: for onset/bounce alignment. The ambience bed is
    off: its hiss would bury the last, faint bounces under the onset detector's threshold."""
    out = tmp_path_factory.mktemp("synth_drop")
    cfg = SynthConfig(videos=3, seconds=4.0, classes=1, max_objects=1, seed=5, ambience=False)
    return out, generate_corpus(out, cfg, workers=1)


# ------------------------------------------------------------------------------------------------
# files, streams, layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_files_decode_with_expected_streams(gt_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = gt_corpus
    assert {m["label"] for m in metas} == {c.name for c in CLASSES[:4]}
    for m in metas:
        path = out / m["path"]
        with av.open(str(path)) as c:
            assert [s.type for s in c.streams] == ["video", "audio"]
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
            assert v.codec_context.pix_fmt == "yuv420p"
            assert (v.codec_context.width, v.codec_context.height) == (m["width"], m["height"])
            assert v.average_rate == m["fps"] and m["fps"] in (24, 25, 30)
            assert a.rate == m["sample_rate"] and a.codec_context.channels == 2
            assert abs(c.duration / 1e6 - m["duration_s"]) <= 1.0 / m["fps"] + 0.025
        frames = decode_frames(path)
        assert frames.shape == (m["num_frames"], m["height"], m["width"], 3)
        assert m["num_frames"] == round(m["duration_s"] * m["fps"])
        audio, rate = decode_audio(path)
        # AAC pads the last packet to 1024 samples.
        assert 0 <= len(audio) - m["num_samples"] < 1024 + 16
        assert abs(m["num_samples"] / rate - m["duration_s"]) < 1.0 / m["fps"]
        meta = json.loads((out / "meta" / f"{m['name']}.json").read_text())
        assert meta == json.loads(json.dumps(m))


@pytest.mark.integration
def test_labels_csv_and_layout(gt_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = gt_corpus
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [m["path"] for m in metas]
    for r, m in zip(rows, metas):
        assert (out / r["path"]).is_file()
        assert r["label"] == m["label"] == CLASSES[m["class_index"]].name
        assert r["split"] in ("train", "test")
    summary = json.loads((out / "synth.json").read_text())
    assert summary["videos"] == 4 and summary["classes"] == [c.name for c in CLASSES[:4]]


@pytest.mark.integration
def test_realism_varies_fps_size_duration(tmp_path: Path) -> None:
    cfg = SynthConfig(videos=40, seconds=10, classes=8)
    plans = [plan_video(cfg, j.index, j.class_index, j.split, j.name) for j in plan_corpus(cfg)]
    assert {p.fps for p in plans} == {24, 25, 30}
    assert len({(p.width, p.height) for p in plans}) >= 4
    assert {p.sample_rate for p in plans} == {44100, 48000}
    durations = [p.duration_s for p in plans]
    assert min(durations) >= 8.0 - 0.05 and max(durations) <= 12.0 + 0.05
    assert np.std(durations) > 0.5
    for p in plans:
        assert p.width % 2 == 0 and p.height % 2 == 0


# ------------------------------------------------------------------------------------------------
# physics and audio-visual alignment
# ------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_physics_bounces_lose_energy_and_objects_slow_down() -> None:
    cfg = SynthConfig(videos=8, seconds=10, classes=4, seed=1)
    saw_slide = saw_bounces = False
    for job in plan_corpus(cfg):
        plan = plan_video(cfg, job.index, job.class_index, job.split, job.name)
        for ep in plan.episodes:
            impacts = [e for e in ep.events if e.kind == "impact"]
            strengths = [e.strength for e in impacts]
            # Every bounce is weaker than the one before, and the gaps shrink.
            assert all(b < a for a, b in zip(strengths, strengths[1:]))
            gaps = np.diff([e.t for e in impacts])
            assert all(b < a + 1e-9 for a, b in zip(gaps, gaps[1:]))
            saw_bounces |= len(impacts) >= 3
            for t0, t1, _speed, _x in ep.scrapes:
                saw_slide = True
                _vis, xs, _ = ep.positions(np.linspace(t0, t1 - 1e-6, 20))
                steps = np.abs(np.diff(xs))
                assert np.all(np.diff(steps) <= 1e-9)  # friction only ever slows it down
    assert saw_slide and saw_bounces


@pytest.mark.integration
def test_audio_onsets_align_with_visual_bounces(drop_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = drop_corpus
    matched_total = 0
    for m in metas:
        path = out / m["path"]
        frames = decode_frames(path)
        colors = np.array([o["color"] for o in m["objects"]], dtype=np.float32)
        bounces = visual_bounces(frames, colors, m["floor_y_px"]) / m["fps"]
        audio, rate = decode_audio(path)
        onsets = audio_onsets(audio, rate)
        period = 1.0 / m["fps"]
        assert len(bounces) >= 2 and len(onsets) >= 2
        # Every bounce seen in the pixels has a sound onset within one frame...
        for t in bounces:
            assert np.min(np.abs(onsets - t)) <= period, (m["name"], t, onsets)
        # ...and most onsets have a bounce within one frame (the last, tiny bounces before an
        # object comes to rest move it by less than a pixel).
        near = [np.min(np.abs(bounces - t)) <= period for t in onsets]
        assert np.mean(near) >= 0.6, (m["name"], onsets, bounces)
        matched_total += sum(near)
        # The sidecar's impact times agree with the audio to within a few milliseconds.
        impacts = np.array([e["t"] for e in m["events"] if e["kind"] == "impact"])
        for t in onsets:
            assert np.min(np.abs(impacts - t)) < 0.004
    assert matched_total >= 8


# ------------------------------------------------------------------------------------------------
# ground-truth codes
# ------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_frame_code_round_trips_every_index_and_rejects_blank_bands() -> None:
    frame = np.zeros((144, 192, 3), np.uint8)
    for index in list(range(0, 300)) + [4095, 12345, gt.MAX_FRAME_INDEX]:
        assert gt.decode_frame_index(gt.draw_frame_code(frame, index)) == index
    for value in (0, 255):
        with pytest.raises(gt.FrameCodeError):
            gt.decode_frame_index(np.full((128, 160, 3), value, np.uint8))
    with pytest.raises(ValueError):
        gt.frame_code_bits(gt.MAX_FRAME_INDEX + 1)


@pytest.mark.integration
def test_frame_code_survives_h264_resize_and_jpeg(gt_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = gt_corpus
    checked = 0
    for m in metas:
        frames = decode_frames(out / m["path"])
        for i, rgb in enumerate(frames):
            for short in (64, 128):
                assert gt.decode_frame_index(resize_jpeg(rgb, short)) == i, (m["name"], i, short)
                checked += 1
        # Stored segments are resized but not cropped; squashing the aspect ratio is fine too.
        squashed = np.asarray(Image.fromarray(frames[-1]).resize((64, 64), Image.BILINEAR))
        assert gt.decode_frame_index(squashed) == len(frames) - 1
    assert checked == 2 * sum(m["num_frames"] for m in metas)


@pytest.mark.integration
def test_audio_time_code_after_aac_downmix_resample(gt_corpus: tuple[Path, list[dict]]) -> None:
    out, metas = gt_corpus
    for m in metas:
        audio, _ = decode_audio(out / m["path"], SR16)
        for start in np.arange(0.0, m["duration_s"] - 0.1, 0.25):
            j = int(round(start * SR16))
            window = audio[j : j + int(0.064 * SR16)]
            centre = start + 0.032
            assert abs(gt.decode_audio_time(window, SR16, near=centre) - centre) < 0.025


@pytest.mark.integration
@pytest.mark.parametrize(
    "speed,reverse,method",
    [(1, False, "fft"), (1, True, "fft"), (2, False, "fft"), (2, True, "stride"),
     (4, True, "fft"), (4, False, "stride"), (8, False, "fft"), (8, True, "fft")],
)  # fmt: skip
def test_audio_time_code_reads_span_speed_and_direction(
    gt_corpus: tuple[Path, list[dict]], speed: int, reverse: bool, method: str
) -> None:
    """A 0.32 s clip read at `speed` (band-limited or naive decimation), maybe reversed."""
    out, metas = gt_corpus
    rng = np.random.default_rng(speed * 2 + reverse)
    length = int(0.32 * SR16)
    for m in metas:
        audio, _ = decode_audio(out / m["path"], SR16)
        span = speed * length
        start = int(rng.integers(0, len(audio) - span - SR16 // 10))
        src = audio[start : start + span]
        clip = fft_resample(src, length) if method == "fft" else src[::speed]
        if reverse:
            clip = clip[::-1]
        truth = gt.decode_audio_clip(clip, SR16, near=start / SR16)
        assert truth.speed == speed and truth.reverse == reverse
        assert abs(truth.start_s - start / SR16) < 0.02
        assert abs(truth.end_s - (start + span) / SR16) < 0.02 * speed
        first = (start + span) / SR16 if reverse else start / SR16
        assert abs(truth.first_s - first) < 0.02 * speed


@pytest.mark.unit
def test_audio_time_code_is_continuous_and_wraps() -> None:
    code = gt.AudioTimeCode()
    sr = 8000
    tone = code.render(int(code.period_s * 1.5 * sr), sr)
    assert np.max(np.abs(np.diff(tone))) < 2 * np.pi * code.f_hi / sr * code.amplitude * 1.01
    t = code.period_s + 1.0  # after one wrap
    j = int(t * sr)
    assert abs(gt.decode_audio_time(tone[j : j + 512], sr) - ((t + 0.032) % code.period_s)) < 0.01
    assert abs(gt.decode_audio_time(tone[j : j + 512], sr, near=t) - (t + 0.032)) < 0.01


# ------------------------------------------------------------------------------------------------
# determinism, splits, CLI
# ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_same_seed_same_bytes_regardless_of_workers(tmp_path: Path) -> None:
    cfg = SynthConfig(videos=3, seconds=1.0, seed=11, ground_truth=True)
    a = generate_corpus(tmp_path / "a", cfg, workers=1)
    b = generate_corpus(tmp_path / "b", cfg, workers=2)
    assert a == b
    for m in a:
        for rel in (m["path"], f"meta/{m['name']}.json"):
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
    other = generate_corpus(tmp_path / "c", SynthConfig(videos=1, seconds=1.0, seed=12), workers=1)
    assert (tmp_path / "c" / other[0]["path"]).read_bytes() != (
        tmp_path / "a" / a[0]["path"]
    ).read_bytes()


@pytest.mark.unit
def test_splits_are_balanced_per_class_and_overridable() -> None:
    jobs = plan_corpus(SynthConfig(videos=40, classes=4, test_fraction=0.2, seed=2))
    for c in range(4):
        members = [j for j in jobs if j.class_index == c]
        assert len(members) == 10
        assert sum(j.split == "test" for j in members) == 2
    assert plan_corpus(SynthConfig(videos=40, classes=4, seed=2)) == jobs
    held = plan_corpus(SynthConfig(videos=6, classes=3, split="heldout"))
    assert {j.split for j in held} == {"heldout"}
    names = {j.name for j in jobs} | {j.name for j in plan_corpus(SynthConfig(videos=40, seed=3))}
    assert len(names) == 80  # corpora of different seeds can share a folder


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs",
    [{"videos": 0}, {"classes": 0}, {"classes": len(CLASSES) + 1}, {"seconds": 0},
     {"seed": -1}, {"sizes": ((161, 120),)}, {"test_fraction": 1.5}, {"split": ""},
     {"duration_jitter": 1.0}, {"max_objects": 0}, {"ground_truth": True, "seconds": 600}],
)  # fmt: skip
def test_config_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)


@pytest.mark.integration
def test_cli_writes_corpus_and_reports_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "corpus"
    args = ["synth", str(out), "--videos", "2", "--seconds", "0.5", "--classes", "2"]
    assert cli_main([*args, "--seed", "4", "--split", "heldout", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 videos" in captured.out and "2/2" in captured.err  # the progress bar
    rows = list(csv.DictReader(open(out / "labels.csv", newline="")))
    assert {r["split"] for r in rows} == {"heldout"} and len(rows) == 2
    assert cli_main(["synth", str(out), "--videos", "2", "--classes", "99"]) == 2
    assert "classes must be in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["synth", str(out)])  # --videos is required


# ------------------------------------------------------------------------------------------------
# avwrite on its own
# ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_write_av_video_only_mono_and_other_containers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (1, 64, 96, 3), dtype=np.uint8), 12, axis=0)
    n = write_av(tmp_path / "v.mp4", frames, 30000 / 1001)
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert abs(float(c.streams.video[0].average_rate) - 29.97) < 0.01
    assert n == 12 and decode_frames(tmp_path / "v.mp4").shape == (12, 64, 96, 3)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    write_av(tmp_path / "m.mkv", iter(frames), 25, tone, 16000, video_codec="mpeg4",
             audio_codec="libopus" if "libopus" in av.codecs_available else "aac")  # fmt: skip
    with av.open(str(tmp_path / "m.mkv")) as c:
        assert c.streams.audio[0].codec_context.channels == 1
    assert len(decode_frames(tmp_path / "m.mkv")) == 12
    with pytest.raises(ValueError):
        write_av(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8), 25)


@pytest.mark.integration
def test_corpus_on_s3(s3_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """OUT may be an s3:// URI (SeaweedFS here): videos are uploaded whole, then the CSV.

    The local scratch folder is removed, and nothing else in the temp dir is touched.
    """
    import tempfile

    from avtime.pipelines import storage

    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    (temp_root / "someone-elses-file").write_text("keep me")
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    root = s3_env.bucket("synth-test") + "/corpus"
    metas = generate_corpus(root, SynthConfig(videos=2, seconds=0.5, seed=9), workers=1)
    assert sorted(p.name for p in temp_root.iterdir()) == ["someone-elses-file"]
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(root + "/labels.csv").decode())))
    assert [r["path"] for r in rows] == [m["path"] for m in metas]
    local = tmp_path / "v.mp4"
    storage.get_file(f"{root}/{rows[0]['path']}", local)
    assert len(decode_frames(local)) == metas[0]["num_frames"]
    meta = json.loads(storage.read_bytes(f"{root}/meta/{metas[0]['name']}.json"))
    assert meta["path"] == rows[0]["path"]
    assert not [p for p in storage.list_files(root) if "partial" in p]
