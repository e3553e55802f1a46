"""What to ingest: a local folder, an s3:// prefix, or a CSV/JSONL listing of URIs.

A listing names one item per line/row. Recognised columns (other columns are ignored):
- the URI: `uri`, `path`, `source`, `file`, `filename` or `video` (relative paths resolve
  against the listing's folder);
- optional `label`, `split`;
- optional range: `start_s` / `start` / `time_start` / `start_seconds`, and `end_s` / `end` /
  `time_end` / `end_seconds` (seconds of source time).

A `--labels` CSV (`path,label[,split]`) attaches labels to sources matched by full URI, by path
relative to SRC, by file name, or by file stem, in that order.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from avtime.pipelines import storage
from avtime.pipelines.errors import UsageError

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv .vob .mxf "
    ".dv .asf".split()
)
# Audio-only files are listed too, so that each becomes a reject (NoVideoStream) in the ledger
# instead of vanishing: every input a user hands over is accounted for.
AUDIO_EXTENSIONS = frozenset(".m4a .mp3 .wav .flac .aac .ogg .oga .opus .wma .aif .aiff".split())
INPUT_EXTENSIONS = MEDIA_EXTENSIONS | AUDIO_EXTENSIONS
LISTING_EXTENSIONS = (".csv", ".jsonl", ".ndjson")
URI_KEYS = ("uri", "path", "source", "file", "filename", "video")
START_KEYS = ("start_s", "start", "time_start", "start_seconds")
END_KEYS = ("end_s", "end", "time_end", "end_seconds")


class ListingError(UsageError):
    """SRC or a listing file cannot be used; the message names the problem."""


@dataclass(frozen=True, kw_only=True)
class InputItem:
    """One input: a source URI and what the listing says about it."""

    source: str
    label: str | None = None
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None

    @property
    def key(self) -> str:
        """Identity for resume and `video_id`: the URI, plus a media fragment for a range."""
        if self.start_s is None and self.end_s is None:
            return self.source
        start = "" if self.start_s is None else f"{self.start_s:g}"
        end = "" if self.end_s is None else f"{self.end_s:g}"
        return f"{self.source}#t={start},{end}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "label": self.label, "split": self.split,
            "start_s": self.start_s, "end_s": self.end_s,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputItem:
        return cls(
            source=str(d["source"]), label=d.get("label"), split=d.get("split"),
            start_s=d.get("start_s"), end_s=d.get("end_s"),
        )  # fmt: skip


def is_listing(src: str) -> bool:
    """True if SRC names a CSV/JSONL listing file rather than a folder/prefix."""
    return src.lower().endswith(LISTING_EXTENSIONS)


@dataclass(frozen=True, kw_only=True)
class Listing:
    """What SRC lists: the inputs in a stable order, and what was left out of them."""

    items: tuple[InputItem, ...]
    not_media: int = 0  # files in a folder or prefix skipped for their extension
    duplicates: int = 0  # exact repeats of a listed input (or a --labels row), folded into one


def list_inputs(src: str, labels_csv: str | None = None) -> Listing:
    """Read SRC (a folder, prefix, single file or CSV/JSONL listing) and apply `labels_csv`.

    A path listed twice with different labels or splits is refused (`ListingError` naming the
    path and both values), in the listing, in the labels file, and between the two; exact
    repeats are folded and counted.
    """
    if is_listing(src):
        items, not_media = _read_listing(src), 0
    else:
        items, not_media = _scan(src)
    items, duplicates = _fold(items, where=src)
    if labels_csv:
        labels, label_dups = _read_labels(labels_csv)
        duplicates += label_dups
        items = _apply_labels(items, src, labels, labels_csv)
        if items and not any(it.label is not None for it in items):
            raise ListingError(
                f"labels {labels_csv}: no row matches any of the {len(items)} inputs (rows are "
                "matched by full URI, path relative to SRC, file name or file stem)"
            )
    return Listing(items=tuple(items), not_media=not_media, duplicates=duplicates)


def _conflict(where: str, path: str, first: tuple[Any, Any], second: tuple[Any, Any]) -> str:
    """The one line for a path given two different (label, split) pairs."""

    def show(pair: tuple[Any, Any]) -> str:
        return f"label={pair[0]!r} split={pair[1]!r}"

    return (
        f"{where}: {path} is listed twice with different labels or splits ({show(first)} and "
        f"{show(second)}); keep one row for it"
    )


def _fold(items: list[InputItem], where: str) -> tuple[list[InputItem], int]:
    """Fold exact repeats of an input (same key, label and split); refuse conflicting ones."""
    first: dict[str, InputItem] = {}
    for it in items:
        seen = first.setdefault(it.key, it)
        if (seen.label, seen.split) != (it.label, it.split):
            pairs = (seen.label, seen.split), (it.label, it.split)
            raise ListingError(_conflict(where, it.key, *pairs))
    return list(first.values()), len(items) - len(first)


def _scan(src: str) -> tuple[list[InputItem], int]:
    if PurePosixPath(src).suffix.lower() in INPUT_EXTENSIONS and (
        os.path.isfile(src) or (storage.is_s3(src) and storage.exists(src))
    ):  # a single video
        return [InputItem(source=src if storage.is_s3(src) else os.path.abspath(src))], 0
    if not storage.is_s3(src) and not os.path.isdir(src):
        raise ListingError(
            f"SRC {src} is neither a folder, an s3:// prefix, nor a .csv/.jsonl listing"
        )
    files = storage.list_files(src if storage.is_s3(src) else os.path.abspath(src))
    media = [f for f in files if PurePosixPath(f).suffix.lower() in INPUT_EXTENSIONS]
    media = [f for f in media if not PurePosixPath(f).name.startswith(".")]
    return [InputItem(source=f) for f in media], len(files) - len(media)


def _rows(src: str) -> list[dict[str, Any]]:
    try:
        text = storage.read_bytes(src).decode("utf-8-sig")
    except FileNotFoundError:
        raise ListingError(f"listing {src} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ListingError(
            f"{src} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    if not src.lower().endswith((".jsonl", ".ndjson")):
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ListingError(f"{src} line {n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ListingError(
                    f'{src} line {n}: expected a JSON object like {{"uri": ...}}, got '
                    f"{type(row).__name__}"
                )
            rows.append(row)
    return rows


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for k in keys:
        v = lowered.get(k)
        if v is not None and str(v).strip() != "":
            return v
    return None


def _resolve(uri: str, listing: str) -> str:
    if storage.is_s3(uri) or os.path.isabs(uri):
        return uri
    if storage.is_s3(listing):
        return f"{listing.rsplit('/', 1)[0]}/{uri}"
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(listing)), uri))


def _read_listing(src: str) -> list[InputItem]:
    items = []
    for n, row in enumerate(_rows(src), 1):
        uri = _pick(row, URI_KEYS)
        if uri is None:
            raise ListingError(f"{src} item {n}: no URI column (one of {list(URI_KEYS)})")
        start, end = _pick(row, START_KEYS), _pick(row, END_KEYS)
        try:
            start_f = None if start is None else float(start)
            end_f = None if end is None else float(end)
        except ValueError:
            raise ListingError(f"{src} item {n}: start/end must be seconds") from None
        if start_f is not None and end_f is not None and end_f <= start_f:
            raise ListingError(f"{src} item {n}: end {end_f} is not after start {start_f}")
        label, split = _pick(row, ("label",)), _pick(row, ("split",))
        items.append(
            InputItem(
                source=_resolve(str(uri).strip(), src),
                label=None if label is None else str(label),
                split=None if split is None else str(split),
                start_s=start_f,
                end_s=end_f,
            )  # fmt: skip
        )
    return items


def _read_labels(path: str) -> tuple[dict[str, tuple[str | None, str | None]], int]:
    """{path key: (label, split)} from a labels CSV/JSONL, and the number of exact repeats."""
    rows = _rows(path)
    columns = {str(k).strip().lower() for row in rows[:1] for k in row}
    if rows and (not columns & set(URI_KEYS) or "label" not in columns):
        raise ListingError(
            f"labels {path}: columns are {sorted(columns)}; expected path,label[,split] "
            "(a header row naming a path column and a label column)"
        )
    out: dict[str, tuple[str | None, str | None]] = {}
    repeats = 0
    for n, row in enumerate(rows, 1):
        key = _pick(row, URI_KEYS)
        if key is None:
            raise ListingError(f"labels {path} row {n}: needs a path column and a label column")
        label, split = _pick(row, ("label",)), _pick(row, ("split",))
        pair = (None if label is None else str(label), None if split is None else str(split))
        key = str(key).strip()
        if key in out and out[key] != pair:
            raise ListingError(_conflict(f"labels {path}", key, out[key], pair))
        repeats += key in out
        out[key] = pair
    return out, repeats


def _apply_labels(
    items: list[InputItem],
    src: str,
    labels: dict[str, tuple[str | None, str | None]],
    labels_path: str,
) -> list[InputItem]:
    """Give each input the (label, split) of the first labels key it matches: its full URI,
    its path relative to SRC, its file name, then its stem. A listing that already gives the
    input another label or split is refused."""
    root = src if storage.is_s3(src) else os.path.abspath(src)
    base = root.rstrip("/") + "/"
    out = []
    for it in items:
        name = PurePosixPath(it.source.replace(os.sep, "/")).name
        rel = it.source[len(base) :] if it.source.startswith(base) else None
        for key in (it.source, rel, name, PurePosixPath(name).stem):
            if key is not None and key in labels:
                label, split = labels[key]
                clash = (it.label is not None and label is not None and it.label != label) or (
                    it.split is not None and split is not None and it.split != split
                )
                if clash:
                    where = f"{src} and labels {labels_path}"
                    raise ListingError(
                        _conflict(where, it.key, (it.label, it.split), (label, split))
                    )
                it = replace(it, label=label or it.label, split=split or it.split)
                break
        out.append(it)
    return out
