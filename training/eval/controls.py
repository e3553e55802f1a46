"""Controls for a linear probe: how much of the class a still frame or the sound level gives away.

On a labelled listing (`avtime eval --dataset folder`: a corpus written by `avtime synth`, or
class subfolders of videos), the train and test videos are the listing's, the same ones the
linear probe of `avtime eval action` uses. Per video (PyAV, a process pool of `workers`):

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

`run_controls(root)` returns, per control, a `ControlScore`: the right and the scored test
videos (k of n), the correctness of each test video (for paired comparisons) and the chosen C.
`python -m bench.controls` prints them as a table with Wilson intervals; `avtime demo` prints
the still frame and the sound level beside its probe.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from avtime.pipelines.datasets.adapters import Listing

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
class ControlScore:
    """One control on the test split: `k` right of `n` test videos, each test video's
    correctness (source -> right), and the C the cross-validation chose."""

    name: str
    k: int
    n: int
    correct: dict[str, bool]
    c: float

    @property
    def top1(self) -> float:
        """k / n (nan without test videos)."""
        return self.k / self.n if self.n else float("nan")

    @property
    def key(self) -> str:
        """The name as a JSON key or metric name part: `still_frame`."""
        return self.name.replace(" ", "_")

    def summary(self) -> dict[str, Any]:
        """Plain JSON: top1, k, n, C (not the per-video list)."""
        return {"top1": self.top1, "k": self.k, "n": self.n, "C": self.c}


def score_controls(
    listing: Listing,
    names: Sequence[str] = CONTROLS,
    *,
    size: int = 24,
    workers: int = 2,
    seed: int = 0,
) -> dict[str, ControlScore]:
    """{control: score} of the controls `names` (of CONTROLS) on `listing`'s train and test
    splits; ValueError when either split is empty or a name is unknown."""
    unknown = set(names) - set(CONTROLS)
    if unknown or not names:
        raise ValueError(f"controls must be some of {CONTROLS}, got {tuple(names)}")
    train, test = listing.split_items("train"), listing.split_items("test")
    if not train or not test:
        raise ValueError(f"{listing.root}: the controls need a train and a test split (labels.csv)")
    classes = {c: i for i, c in enumerate(listing.classes)}
    feats = corpus_features([it.source for it in (*train, *test)], size=size, workers=workers)
    f_tr, f_te = [feats[it.source] for it in train], [feats[it.source] for it in test]
    y_tr = np.array([classes[it.label] for it in train])
    y_te = np.array([classes[it.label] for it in test])
    out = {}
    for name in names:
        pred, c = fit_and_score(
            feature_matrix(f_tr, name), y_tr, feature_matrix(f_te, name), seed=seed
        )
        right = pred == y_te
        out[name] = ControlScore(
            name=name, k=int(right.sum()), n=len(test), c=c,
            correct={it.source: bool(r) for it, r in zip(test, right, strict=True)},
        )  # fmt: skip
    return out


def run_controls(
    root: str, names: Sequence[str] = CONTROLS, *, size: int = 24, workers: int = 2, seed: int = 0
) -> dict[str, ControlScore]:
    """`score_controls` of the labelled folder `root` (its train and test splits)."""
    from avtime.pipelines.datasets.adapters import list_dataset

    return score_controls(
        list_dataset("folder", root), names, size=size, workers=workers, seed=seed
    )
