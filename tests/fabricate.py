"""Tiny evaluation datasets in each official layout, made of real synthetic mp4s and wavs.

For tests and benchmarks: `make_tree(kind, root)` writes a UCF101, HMDB51, ESC-50, VGG-Sound or
folder tree with a few classes and files. Each class has its own colour, motion direction and
tone pitch, and each file its own size, position and phase, so class and instance are both
recoverable from the content.
"""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import numpy as np

from avtime.pipelines.synth.avwrite import write_av

CLASSES = ("Archery", "Biking", "Diving")


def synth_video(
    path: Path, cls: int, inst: int, *, seconds: float = 2.0, size: int = 48, fps: int = 10
) -> Path:
    """A moving coloured square with a class tone: H.264 + AAC mp4 at `path`."""
    rng = np.random.default_rng(1000 * cls + inst)
    n = int(seconds * fps)
    colour = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]][cls % 3], dtype=np.float32)
    bg = rng.integers(0, 90, size=3).astype(np.float32)
    side = int(size * (0.2 + 0.1 * (inst % 3)))
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    x0, y0 = rng.integers(0, size - side, size=2)
    dx, dy = [(2, 0), (0, 2), (-2, -2)][cls % 3]
    for t in range(n):
        frame = np.broadcast_to(bg, (size, size, 3)).copy()
        x = int((x0 + dx * t) % (size - side))
        y = int((y0 + dy * t) % (size - side))
        frame[y : y + side, x : x + side] = colour
        frames[t] = frame.astype(np.uint8)
    sr = 16000
    tt = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * (300 * (cls + 1) + 15 * inst) * tt)
    write_av(path, frames, fps, tone[None].astype(np.float32), sr)
    return path


def synth_wav(path: Path, cls: int, inst: int, *, seconds: float = 1.0, sr: int = 22050) -> Path:
    """A mono 16-bit wav with a class pitch (and a little per-file noise)."""
    rng = np.random.default_rng(7 * cls + inst)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * 250 * (cls + 1) * t) + 0.02 * rng.standard_normal(len(t))
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def make_ucf101(root: Path, per_class: int = 3, classes: int = 3) -> Path:
    """Class folders + ucfTrainTestlist/ (classInd, trainlist0S, testlist0S for S = 1..3)."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    names = CLASSES[:classes]
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(names)))
    rels: list[tuple[int, int, str]] = []
    for ci, c in enumerate(names):
        for g in range(per_class):
            rel = f"{c}/v_{c}_g{g + 1:02d}_c01.avi"
            synth_video(root / rel, ci, g)
            rels.append((ci, g, rel))
    for s in (1, 2, 3):
        test = [r for r in rels if r[1] == (s - 1) % per_class]
        train = [r for r in rels if r not in test]
        (lists / f"trainlist0{s}.txt").write_text("".join(f"{r} {c + 1}\n" for c, _, r in train))
        (lists / f"testlist0{s}.txt").write_text("".join(f"{r}\n" for _, _, r in test))
    return root


def make_hmdb51(root: Path, per_class: int = 3, classes: int = 3) -> Path:
    """Class folders + testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    for ci, c in enumerate(n.lower() for n in CLASSES[:classes]):
        files = [f"{c}_clip_{i}.avi" for i in range(per_class + 1)]
        for i, f in enumerate(files):
            synth_video(root / c / f, ci, i)
        for s in (1, 2, 3):
            tags = ["1"] * len(files)
            tags[(s - 1) % len(files)] = "2"
            tags[s % len(files)] = "0"  # one file unused by this split
            text = "".join(f"{f} {t} \n" for f, t in zip(files, tags))
            (splits / f"{c}_test_split{s}.txt").write_text(text)
    return root


def make_esc50(root: Path, per_fold: int = 1, classes: int = 2) -> Path:
    """audio/*.wav + meta/esc50.csv with 5 folds."""
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in range(1, 6):
        for ci in range(classes):
            for k in range(per_fold):
                name = f"{fold}-{100 + ci * 10 + k}-A-{ci}.wav"
                synth_wav(root / "audio" / name, ci, fold * 10 + k)
                rows.append([name, fold, ci, f"class_{ci}", "False", f"{100 + ci}", "A"])
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def make_vggsound(root: Path, per_class: int = 3, classes: int = 2) -> Path:
    """vggsound.csv (no header) + video/<id>_<start:06d>.mp4; one listed clip is missing."""
    lines = []
    for ci in range(classes):
        for i in range(per_class):
            ytid, start = f"yt{ci}x{i:04d}", 10 * i
            synth_video(root / "video" / f"{ytid}_{start:06d}.mp4", ci, i)
            lines.append(f"{ytid},{start},sound of {CLASSES[ci]},{'test' if i == 0 else 'train'}")
    lines.append("missingclip,30,sound of Archery,test")
    root.mkdir(parents=True, exist_ok=True)
    (root / "vggsound.csv").write_text("\n".join(lines) + "\n")
    return root


def make_folder(root: Path, per_class: int = 3, classes: int = 3) -> Path:
    """videos/*.mp4 + labels.csv (path relative to the csv, label, split), like `avtime synth`."""
    rows = []
    for ci in range(classes):
        for i in range(per_class):
            rel = f"videos/c{ci}_{i}.mp4"
            synth_video(root / rel, ci, i)
            rows.append([rel, f"class_{ci}", "test" if i == 0 else "train"])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return root


def make_tree(kind: str, root: Path, **kw: int) -> Path:
    """Write a tiny tree of `kind` (ucf101, hmdb51, esc50, vggsound, folder) under `root`."""
    makers = {
        "ucf101": make_ucf101,
        "hmdb51": make_hmdb51,
        "esc50": make_esc50,
        "vggsound": make_vggsound,
        "folder": make_folder,
    }
    if kind not in makers:
        raise ValueError(f"unknown tree kind {kind!r}; choose one of {sorted(makers)}")
    return makers[kind](Path(root), **kw)
