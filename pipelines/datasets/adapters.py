"""Dataset adapters: read each evaluation dataset's official layout and split files.

Every adapter turns a dataset root (a local path or an s3:// URI) into a `Listing`: one
`EvalItem` (source URI, class label, split) per file. The layouts are documented in docs/eval.md:

- UCF101: class folders (optionally under `UCF-101/`) plus `ucfTrainTestlist/` with
  `classInd.txt`, `trainlist0{1,2,3}.txt` and `testlist0{1,2,3}.txt`.
- HMDB51: class folders plus `testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`
  (1 = train, 2 = test, 0 = not used by that split: listed with split "unused").
- ESC-50: `audio/*.wav` plus `meta/esc50.csv`; the split of an item is its fold, "1".."5".
- VGG-Sound: `vggsound.csv` (youtube_id, start_seconds, label, split) plus clip files named
  `<id>_<start:06d>.<ext>` (or `<id>_<start>`, `<id>_<start*1000>_<end*1000>`) in the root or in
  `video/`, `videos/` or `clips/`. Missing clips are skipped and counted.
- folder: the synth corpus's `labels.csv` (path, label, split), or class subfolders of videos
  (then the last 30% of each class, in sorted order, is the test split).
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass, field
from typing import Literal

from avtime.pipelines import storage
from avtime.pipelines.errors import UsageError

DatasetName = Literal["ucf101", "hmdb51", "esc50", "vggsound", "folder"]
DATASETS: tuple[str, ...] = ("ucf101", "hmdb51", "esc50", "vggsound", "folder")
UNUSED = "unused"
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class _Fs:
    """Listing and reading for local paths and s3:// URIs, through `pipelines.storage`."""

    @staticmethod
    def join(base: str, *parts: str) -> str:
        return storage.join(base, *parts) if parts else base

    @staticmethod
    def exists(uri: str) -> bool:
        return storage.exists(uri)

    @staticmethod
    def isdir(uri: str) -> bool:
        fs, path = storage.filesystem(uri)
        return bool(fs.isdir(path))

    def listdir(self, uri: str) -> list[str]:
        fs, path = storage.filesystem(uri)
        if not fs.isdir(path):
            raise LayoutError(f"{uri} is not a directory")
        return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(path, detail=False))

    @staticmethod
    def read_text(uri: str) -> str:
        return storage.read_bytes(uri).decode("utf-8-sig")


fsx = _Fs()


class LayoutError(UsageError):
    """A dataset root does not have the expected layout. The message says what to fix."""


@dataclass(frozen=True, kw_only=True)
class EvalItem:
    """One file of an evaluation dataset."""

    source: str  # full URI (local path or s3://...)
    label: str
    split: str  # "train" / "test"; ESC-50: fold "1".."5"


@dataclass(frozen=True, kw_only=True)
class Listing:
    """The files of one dataset (one official split), in a stable order."""

    dataset: str
    root: str
    items: tuple[EvalItem, ...]
    classes: tuple[str, ...]  # sorted label names; class index i <-> classes[i]
    missing: int = 0  # files named by the split files but absent (VGG-Sound)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def split_items(self, split: str) -> list[EvalItem]:
        """The items of one split, in listing order."""
        return [it for it in self.items if it.split == split]


def _need(root: str, rel: str, what: str) -> str:
    path = fsx.join(root, rel)
    if not fsx.exists(path):
        raise LayoutError(f"{what}: {path} not found. See docs/eval.md for the expected layout.")
    return path


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise LayoutError(f"--split must be 1, 2 or 3 (official splits), got {split}")


def _finish(dataset: str, root: str, items: list[EvalItem], **kw: object) -> Listing:
    if not items:
        raise LayoutError(f"{dataset}: no files found under {root}; see docs/eval.md")
    classes = tuple(sorted({it.label for it in items}))
    return Listing(dataset=dataset, root=root, items=tuple(items), classes=classes, **kw)  # type: ignore[arg-type]


def list_ucf101(root: str, split: int = 1) -> Listing:
    """UCF101: `ucfTrainTestlist/{classInd,trainlist0S,testlist0S}.txt` + class folders."""
    _check_split(split)
    lists = _need(root, "ucfTrainTestlist", "UCF101 split folder ucfTrainTestlist/")
    class_ind = fsx.read_text(_need(lists, "classInd.txt", "UCF101 classInd.txt"))
    known = {ln.split()[1].lower(): ln.split()[1] for ln in class_ind.splitlines() if ln.strip()}
    videos = fsx.join(root, "UCF-101") if fsx.exists(fsx.join(root, "UCF-101")) else root
    items: list[EvalItem] = []
    for name, part in ((f"trainlist0{split}.txt", "train"), (f"testlist0{split}.txt", "test")):
        text = fsx.read_text(_need(lists, name, f"UCF101 split file {name}"))
        for line in text.splitlines():
            if not line.strip():
                continue
            rel = line.split()[0].replace("\\", "/")
            folder = rel.split("/")[0]
            if folder.lower() not in known:
                raise LayoutError(f"UCF101 {name}: class {folder!r} is not in classInd.txt")
            items.append(
                EvalItem(source=fsx.join(videos, rel), label=known[folder.lower()], split=part)
            )
    return _finish("ucf101", root, items)


def list_hmdb51(root: str, split: int = 1) -> Listing:
    """HMDB51: `testTrainMulti_7030_splits/<class>_test_split<S>.txt` + class folders."""
    _check_split(split)
    splits_dir = _need(root, "testTrainMulti_7030_splits", "HMDB51 split folder")
    suffix = f"_test_split{split}.txt"
    names = sorted(n for n in fsx.listdir(splits_dir) if n.endswith(suffix))
    if not names:
        raise LayoutError(f"HMDB51: no *{suffix} files in {splits_dir}")
    items: list[EvalItem] = []
    for name in names:
        label = name[: -len(suffix)]
        for line in fsx.read_text(fsx.join(splits_dir, name)).splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[1] not in ("0", "1", "2"):
                continue
            # 0 = not used by this split; listed anyway so all splits share one decode cache.
            part = {"0": UNUSED, "1": "train", "2": "test"}[parts[1]]
            items.append(EvalItem(source=fsx.join(root, label, parts[0]), label=label, split=part))
    return _finish("hmdb51", root, items)


def list_esc50(root: str) -> Listing:
    """ESC-50: `meta/esc50.csv` (filename, fold, target, category, ...) + `audio/`."""
    meta = _need(root, "meta/esc50.csv", "ESC-50 metadata meta/esc50.csv")
    audio = _need(root, "audio", "ESC-50 audio folder audio/")
    reader = csv.DictReader(io.StringIO(fsx.read_text(meta)))
    need = {"filename", "fold", "category"}
    if not need <= set(reader.fieldnames or ()):
        raise LayoutError(f"{meta}: needs columns {sorted(need)}, has {reader.fieldnames}")
    items = [
        EvalItem(
            source=fsx.join(audio, r["filename"]), label=r["category"], split=str(int(r["fold"]))
        )
        for r in reader
    ]
    return _finish("esc50", root, items)


def _vggsound_index(root: str) -> dict[str, str]:
    """Map file stem -> URI for the clip files in the root and its usual clip folders."""
    index: dict[str, str] = {}
    for sub in ("", "video", "videos", "clips"):
        folder = fsx.join(root, sub) if sub else root
        if sub and not fsx.exists(folder):
            continue
        for name in fsx.listdir(folder):
            stem, ext = posixpath.splitext(name)
            if ext.lower() in VIDEO_EXTS:
                index.setdefault(stem, fsx.join(folder, name))
    return index


def list_vggsound(root: str) -> Listing:
    """VGG-Sound: `vggsound.csv` rows (youtube_id, start_seconds, label, split) + clip files."""
    names = [n for n in fsx.listdir(root) if n.lower().endswith(".csv")]
    csv_name = "vggsound.csv" if "vggsound.csv" in names else (names[0] if len(names) == 1 else "")
    if not csv_name:
        raise LayoutError(f"VGG-Sound: expected vggsound.csv in {root}, found {sorted(names)}")
    index = _vggsound_index(root)
    items: list[EvalItem] = []
    missing = 0
    for row in csv.reader(io.StringIO(fsx.read_text(fsx.join(root, csv_name)))):
        if len(row) < 4 or row[0] == "youtube_id" or not row[1].strip().isdigit():
            continue
        ytid, start, label, part = row[0], int(row[1]), row[2].strip(), row[3].strip()
        stems = (
            f"{ytid}_{start:06d}",
            f"{ytid}_{start}",
            f"{ytid}_{start * 1000}_{(start + 10) * 1000}",
        )
        uri = next((index[s] for s in stems if s in index), None)
        if uri is None:
            missing += 1
            continue
        items.append(EvalItem(source=uri, label=label, split=part))
    notes = (f"{missing} clips listed in {csv_name} were not found",) if missing else ()
    return _finish("vggsound", root, items, missing=missing, notes=notes)


def list_folder(root: str, test_fraction: float = 0.3) -> Listing:
    """`labels.csv` (path,label,split) from `avtime synth`, or class subfolders of videos."""
    labels = fsx.join(root, "labels.csv")
    if fsx.exists(labels):
        reader = csv.DictReader(io.StringIO(fsx.read_text(labels)))
        if not {"path", "label"} <= set(reader.fieldnames or ()):
            raise LayoutError(
                f"{labels}: needs columns path,label[,split], has {reader.fieldnames}"
            )
        items = []
        for r in reader:
            path = r["path"]
            src = path if "://" in path or path.startswith("/") else fsx.join(root, path)
            items.append(EvalItem(source=src, label=r["label"], split=r.get("split") or "train"))
        return _finish("folder", root, items)
    items = []
    for cls in sorted(fsx.listdir(root)):
        folder = fsx.join(root, cls)
        if not fsx.isdir(folder):
            continue
        files = sorted(n for n in fsx.listdir(folder) if n.lower().endswith(VIDEO_EXTS))
        n_test = int(round(len(files) * test_fraction)) if len(files) > 1 else 0
        n_test = max(n_test, 1) if len(files) > 1 else 0
        for i, name in enumerate(files):
            part = "test" if i >= len(files) - n_test else "train"
            items.append(EvalItem(source=fsx.join(folder, name), label=cls, split=part))
    if not items:
        raise LayoutError(f"folder: {root} has neither labels.csv nor class subfolders of videos")
    return _finish("folder", root, items)


def list_dataset(dataset: str, root: str, split: int = 1) -> Listing:
    """The listing of `dataset` at `root`; `split` picks the official split (UCF101, HMDB51).

    A local root is made absolute, so every item's source is an absolute path or an s3:// URI.
    """
    if not storage.is_s3(root):
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise LayoutError(f"dataset root {root} does not exist or is not a folder")
    if dataset == "ucf101":
        return list_ucf101(root, split)
    if dataset == "hmdb51":
        return list_hmdb51(root, split)
    if dataset == "esc50":
        return list_esc50(root)
    if dataset == "vggsound":
        return list_vggsound(root)
    if dataset == "folder":
        return list_folder(root)
    raise LayoutError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
