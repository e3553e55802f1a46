"""Controls for a linear probe: how much of the class a still frame or the sound level gives away.

    python -m bench.controls CORPUS_DIR [--size 24] [--workers 2] [--seed 0] [--json]

CORPUS_DIR is a labeled folder as `avtime eval --dataset folder` reads it: a corpus written by
`avtime synth` (videos/*.mp4 and labels.csv with path,label,split; docs/synth.md), of any world,
or class subfolders of videos. The train and test videos are the listing's, the same ones the
linear probe of `avtime eval action` uses. Per video (PyAV, a process pool of `--workers`):

- the still frame: the decoded frame whose timestamp is nearest the middle of the video stream
  (one seek to the keyframe before it, then decoding forward to it), resized to size x size RGB
  with area averaging: `size * size * 3` features, 0..255;
- the sound level: the whole soundtrack, mixed to mono (mean of the channels), as
  `level_db` = 20 log10(RMS) (dBFS; -160 for silence or no audio) and `centroid_hz`, the
  spectral centroid of its mean magnitude spectrum (Hann frames of 2048 samples, hop 1024).

Each control is a logistic regression (multinomial, L2) on standardized features, with C chosen
by 5-fold stratified cross-validation on the train split only, fitted on the train split and
scored on the test split:

    still frame   the middle frame's pixels
    sound level   level_db and centroid_hz
    both          the two together

`run_controls(root)` returns, per control, top-1 with its Wilson 95 % interval and the
correctness of each test video (for paired comparisons, `bench.stats.paired_videos`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from bench.stats import Accuracy, accuracy

CONTROLS = ("still frame", "sound level", "both")
SILENCE_DB = -160.0
N_FFT, HOP = 2048, 1024
CS = tuple(float(c) for c in np.logspace(-4, 4, 9))  # the C grid of the cross-validation


@dataclass(frozen=True, kw_only=True)
class VideoFeatures:
    """What the controls read of one video."""

    source: str
    frame: np.ndarray  # [size, size, 3] uint8, the frame nearest the middle
    frame_time_s: float  # its timestamp
    level_db: float  # 20 log10(RMS) of the mono soundtrack
    centroid_hz: float  # spectral centroid of the soundtrack (0 without audio)


def _open(source: str) -> Any:
    """A PyAV container of a local path or an s3:// URI (read into memory)."""
    import av

    from avtime.pipelines import storage

    if storage.is_s3(source):
        return av.open(io.BytesIO(storage.read_bytes(source)))
    return av.open(source)


def middle_frame(source: str, size: int = 24) -> tuple[np.ndarray, float]:
    """(frame [size, size, 3] uint8 RGB, its time in s): the frame nearest the middle of the
    video stream's duration, found by seeking to the keyframe before the middle."""
    with _open(source) as c:
        vs = c.streams.video[0]
        tb = vs.time_base
        if vs.duration is not None and tb is not None:
            start = float((vs.start_time or 0) * tb)
            mid = start + float(vs.duration * tb) / 2
        else:
            mid = float(c.duration or 0) / 1e6 / 2
        if tb is not None:
            c.seek(int(mid / tb), stream=vs, backward=True, any_frame=False)
        best: tuple[float, Any] | None = None
        for frame in c.decode(vs):
            t = float(frame.time or 0.0)
            if best is None or abs(t - mid) < abs(best[0] - mid):
                best = (t, frame)
            if t >= mid:
                break
        if best is None:
            raise ValueError(f"{source}: no video frame could be decoded")
        rgb = best[1].reformat(width=size, height=size, format="rgb24", interpolation="AREA")
        return rgb.to_ndarray(), best[0]


def soundtrack(source: str) -> tuple[np.ndarray, int]:
    """(samples float32 [N], sample rate): the first audio stream, each decoded frame's
    channels averaged to mono; ([0], 0) when there is no audio stream."""
    import av

    with _open(source) as c:
        if not c.streams.audio:
            return np.zeros(0, np.float32), 0
        st = c.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # AAC decodes to fltp: then a no-op
        chunks = []
        for frame in c.decode(st):
            for f in [frame] if frame.format.name == "fltp" else to_float.resample(frame):
                chunks.append(f.to_ndarray().mean(axis=0, dtype=np.float64))  # [C, n] -> [n]
        rate = int(st.rate or 0)
    return (np.concatenate(chunks) if chunks else np.zeros(0)).astype(np.float32), rate


def sound_level(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """(level in dBFS, spectral centroid in Hz) of mono `samples` [N] float at `rate`.

    The level is 20 log10 of the RMS (SILENCE_DB when silent); the centroid is sum(f |X(f)|) /
    sum(|X(f)|) over the magnitude spectrum averaged over Hann frames of N_FFT samples, hop HOP
    (the whole soundtrack zero-padded to one frame when shorter)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0 or rate <= 0:
        return SILENCE_DB, 0.0
    rms = math.sqrt(float(np.mean(x * x)))
    level = 20 * math.log10(rms) if rms > 0 else SILENCE_DB
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    starts = np.arange(0, x.size - N_FFT + 1, HOP)
    frames = x[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT)  # [F, N_FFT]
    mag = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)  # [N_FFT // 2 + 1]
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / rate)
    total = float(mag.sum())
    return level, (float((freqs * mag).sum()) / total if total > 0 else 0.0)


def video_features(source: str, size: int = 24) -> VideoFeatures:
    """The middle frame and the sound level of one video."""
    frame, t = middle_frame(source, size)
    level, centroid = sound_level(*soundtrack(source))
    return VideoFeatures(
        source=source, frame=frame, frame_time_s=t, level_db=level, centroid_hz=centroid
    )


def _features_star(args: tuple[str, int]) -> VideoFeatures:
    return video_features(*args)


def corpus_features(
    sources: Sequence[str], *, size: int = 24, workers: int = 2
) -> dict[str, VideoFeatures]:
    """`video_features` of every source, in a pool of `workers` processes (1: in this one)."""
    jobs = [(s, size) for s in sources]
    if workers <= 1 or len(jobs) <= 1:
        return {s: video_features(s, size) for s in sources}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_features_star, jobs, chunksize=8))
    return {f.source: f for f in done}


def feature_matrix(feats: Sequence[VideoFeatures], control: str) -> np.ndarray:
    """[V, D] float64 features of one control (CONTROLS) for the videos `feats`."""
    pixels = np.stack([f.frame.reshape(-1) for f in feats]).astype(np.float64)
    sound = np.array([[f.level_db, f.centroid_hz] for f in feats], dtype=np.float64)
    if control == "still frame":
        return pixels
    if control == "sound level":
        return sound
    if control == "both":
        return np.concatenate([pixels, sound], axis=1)
    raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")


def fit_and_score(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, *, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(predicted classes [V_te], chosen C): standardized logistic regression, C by 5-fold
    stratified cross-validation on the train rows `x_tr` [V_tr, D] only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, int(np.bincount(y_tr).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    if folds < 2:  # too few videos of some class to cross-validate: the default C
        model.fit(x_tr, y_tr)
        return model.predict(x_te), 1.0
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(model, {"logisticregression__C": list(CS)}, cv=cv, n_jobs=1)
    search.fit(x_tr, y_tr)
    return search.predict(x_te), float(search.best_params_["logisticregression__C"])


@dataclass(frozen=True, kw_only=True)
class ControlResult:
    """One control on the test split: top-1 with its interval, each test video's correctness
    (source -> right), and the C the cross-validation chose."""

    name: str
    top1: Accuracy
    correct: dict[str, bool]
    c: float

    def summary(self) -> dict[str, Any]:
        """Plain JSON: name, top1, k, n, low, high, C (not the per-video list)."""
        t = self.top1
        return {"name": self.name, "top1": t.value, "k": t.k, "n": t.n, "low": t.low,
                "high": t.high, "C": self.c}  # fmt: skip


def run_controls(
    root: str, *, size: int = 24, workers: int = 2, seed: int = 0
) -> dict[str, ControlResult]:
    """{control: result} on the labeled folder `root` (its train and test splits)."""
    from avtime.pipelines.datasets.adapters import list_dataset

    listing = list_dataset("folder", root)
    train, test = listing.split_items("train"), listing.split_items("test")
    if not train or not test:
        raise ValueError(f"{root}: the controls need a train and a test split (labels.csv)")
    classes = {c: i for i, c in enumerate(listing.classes)}
    feats = corpus_features([it.source for it in (*train, *test)], size=size, workers=workers)
    f_tr, f_te = [feats[it.source] for it in train], [feats[it.source] for it in test]
    y_tr = np.array([classes[it.label] for it in train])
    y_te = np.array([classes[it.label] for it in test])
    out = {}
    for name in CONTROLS:
        pred, c = fit_and_score(
            feature_matrix(f_tr, name), y_tr, feature_matrix(f_te, name), seed=seed
        )
        right = pred == y_te
        out[name] = ControlResult(
            name=name, top1=accuracy(int(right.sum()), len(test)), c=c,
            correct={it.source: bool(r) for it, r in zip(test, right, strict=True)},
        )  # fmt: skip
    return out


def table(results: dict[str, ControlResult], chance: float) -> str:
    """Markdown table: each control's top-1 (percent) with its Wilson 95 % interval."""
    lines = ["| control | test top-1 % [95 % interval] | right / test videos | C |",
             "|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        lines.append(f"| {r.name} | {r.top1.cell()} | {r.top1.k} / {r.top1.n} | {r.c:g} |")
    lines.append(f"| chance | {100 * chance:.1f} | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.controls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("corpus", help="a labeled folder (labels.csv with path,label,split)")
    p.add_argument("--size", type=int, default=24, help="side of the still frame (default 24)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args(argv)
    from avtime.pipelines.errors import AvtimeError

    try:
        results = run_controls(args.corpus, size=args.size, workers=args.workers, seed=args.seed)
    except (AvtimeError, ValueError, OSError) as exc:
        print(f"bench.controls: {exc}", file=sys.stderr)
        return 2
    print(table(results, 1.0 / max(1, len(_labels(args.corpus)))))
    if args.json:
        print(json.dumps([r.summary() for r in results.values()]))
    return 0


def _labels(root: str) -> list[str]:
    from avtime.pipelines.datasets.adapters import list_dataset

    return list(list_dataset("folder", root).classes)


if __name__ == "__main__":
    sys.exit(main())
