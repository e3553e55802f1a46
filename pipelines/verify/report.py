"""What `avtime verify` found: problem kinds, the report object, its text, JSON and PNG forms.

The checks themselves live in `pipelines/verify/rows.py` (per row, per shard, across rows) and
`pipelines/verify/job.py` (the dataset and the Ray Data job). See docs/verify.md.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# Every problem kind, with the one-line meaning printed in the summary and docs/verify.md.
KINDS: dict[str, str] = {
    "frame_decode": "a stored frame does not decode as an image (sampled rows)",
    "frame_count": "the row stores a different number of frames than num_frames",
    "frame_size": "a decoded frame is not width x height (sampled rows)",
    "audio_length": "audio bytes disagree with num_samples, or the audio length disagrees "
    "with the video duration by more than one frame",
    "duration_mismatch": "duration_s is not num_frames / fps",
    "tiling_gap": "a source's timeline has a hole: a segment starts after the previous ends, "
    "or a segment index is missing",
    "tiling_overlap": "a segment starts before the previous segment of its source ends",
    "schema_version": "a shard's schema or schema version does not match the manifest",
    "duplicate_row": "the same (source, segment) is stored more than once",
    "missing_shard": "a shard listed in manifest.json does not exist",
    "stray_shard": "a shard file exists that manifest.json does not list",
    "shard_read": "a listed shard exists but cannot be read as Parquet",
    "row_count": "a count in manifest.json disagrees with the data",
    "missing_source": "an input in manifest.json has neither rows nor a reject",
    "unknown_source": "rows come from a source that manifest.json does not list as an input",
}

MAX_KEPT_PROBLEMS = 1000  # problems kept with details; the counts are always exact


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong: its kind, where (shard, source, segment) and a human-readable detail."""

    kind: str
    detail: str
    shard: str | None = None
    source: str | None = None
    segment: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; expected one of {list(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shard": self.shard,
            "source": self.source,
            "segment": self.segment,
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """The outcome of verifying one preprocessed dataset (see `pipelines.verify.job.verify_dataset`).

    `problem_counts` is exact; `problems` keeps at most MAX_KEPT_PROBLEMS of them with details;
    `worst` lists the (source, segment) pairs with the most problems.
    """

    uri: str
    rows_checked: int
    rows_decoded: int
    sample_fraction: float
    shards_listed: int
    shards_checked: int
    problem_counts: dict[str, int]
    problems: list[Problem]
    worst: list[dict[str, Any]]
    distributions: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem of any kind was found."""
        return not any(self.problem_counts.values())

    @property
    def total_problems(self) -> int:
        return sum(self.problem_counts.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `rows_checked` and `problems` (kind -> count) come first."""
        return {
            "rows_checked": self.rows_checked,
            "problems": dict(self.problem_counts),
            "ok": self.ok,
            "uri": self.uri,
            "rows_decoded": self.rows_decoded,
            "sample_fraction": self.sample_fraction,
            "shards_listed": self.shards_listed,
            "shards_checked": self.shards_checked,
            "worst": self.worst,
            "examples": [p.to_dict() for p in self.problems[:50]],
            "distributions": self.distributions,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        """One line of JSON (for the last line of `avtime verify --json`)."""
        return json.dumps(self.to_dict(), sort_keys=False, default=str)


def build_report(
    *,
    uri: str,
    problems: list[Problem],
    rows: pa.Table,
    rows_decoded: int,
    sample_fraction: float,
    shards_listed: int,
    shards_checked: int,
    notes: list[str],
    max_worst: int = 10,
) -> VerifyReport:
    """Assemble the report from every problem found and the light row columns (`rows`)."""
    counts = Counter(p.kind for p in problems)
    return VerifyReport(
        uri=uri,
        rows_checked=rows.num_rows,
        rows_decoded=rows_decoded,
        sample_fraction=sample_fraction,
        shards_listed=shards_listed,
        shards_checked=shards_checked,
        problem_counts={k: counts[k] for k in KINDS if counts[k]},
        problems=problems[:MAX_KEPT_PROBLEMS],
        worst=worst_offenders(problems, max_worst),
        distributions=distributions(rows),
        notes=notes,
    )


def worst_offenders(problems: list[Problem], n: int) -> list[dict[str, Any]]:
    """The n (source, segment) pairs with the most problems, each with its kinds, worst first."""
    by_row: dict[tuple[str, int | None], Counter[str]] = {}
    for p in problems:
        if p.source is None:
            continue
        by_row.setdefault((p.source, p.segment), Counter())[p.kind] += 1
    ranked = sorted(by_row.items(), key=lambda kv: (-sum(kv[1].values()), kv[0][0], kv[0][1] or 0))
    return [
        {"source": src, "segment": seg, "problems": sum(c.values()), "kinds": dict(c)}
        for (src, seg), c in ranked[:n]
    ]


def _value_counts(values: list[Any], top: int = 20) -> dict[str, int]:
    counts = Counter("(none)" if v is None else str(v) for v in values)
    ranked = counts.most_common()
    out = dict(ranked[:top])
    rest = sum(c for _, c in ranked[top:])
    if rest:
        out["(other)"] = rest
    return out


def distributions(rows: pa.Table, bins: int = 12) -> dict[str, Any]:
    """Duration histogram and counts of fps, frame size, audio presence, labels and splits."""
    if rows.num_rows == 0:
        return {"duration_s": {"count": 0}, "fps": {}, "size": {}, "audio": {}, "label": {}}
    dur = np.asarray(rows.column("duration_s").to_numpy(zero_copy_only=False), dtype=np.float64)
    hist, edges = np.histogram(dur, bins=bins)
    fps = [round(float(f), 3) if f is not None else None for f in rows.column("fps").to_pylist()]
    sizes = [
        f"{w}x{h}"
        for w, h in zip(rows.column("width").to_pylist(), rows.column("height").to_pylist())
    ]
    has_audio = rows.column("has_audio").to_pylist()
    return {
        "duration_s": {
            "count": int(dur.size),
            "min": float(dur.min()),
            "mean": float(dur.mean()),
            "max": float(dur.max()),
            "total": float(dur.sum()),
            "hist_counts": [int(c) for c in hist],
            "hist_edges": [float(e) for e in edges],
        },
        "fps": _value_counts(fps),
        "size": _value_counts(sizes),
        "audio": {
            "present": int(sum(bool(a) for a in has_audio)),
            "absent": int(sum(not a for a in has_audio)),
        },  # fmt: skip
        "label": _value_counts(rows.column("label").to_pylist()),
        "split": _value_counts(rows.column("split").to_pylist()),
    }


def summary_text(report: VerifyReport, max_lines: int = 10) -> str:
    """The human-readable summary printed by `avtime verify`."""
    d = report.distributions
    lines = [
        f"verify {report.uri}",
        f"  rows checked: {report.rows_checked} in {report.shards_checked}/"
        f"{report.shards_listed} listed shards; frames decoded in {report.rows_decoded} rows "
        f"(sample fraction {report.sample_fraction:g})",
    ]
    dur = d.get("duration_s", {})
    if dur.get("count"):
        lines.append(
            f"  duration_s: min {dur['min']:.3f}  mean {dur['mean']:.3f}  max {dur['max']:.3f}"
            f"  total {dur['total'] / 3600:.3f} h"
        )
    for key in ("fps", "size", "audio", "label", "split"):
        if d.get(key):
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in d[key].items()))
    lines.extend(f"  note: {n}" for n in report.notes)
    if report.ok:
        lines.append("  OK: no problems found")
        return "\n".join(lines)
    lines.append(f"  PROBLEMS: {report.total_problems}")
    lines.extend(f"    {k:<18}{c:>8}  {KINDS[k]}" for k, c in report.problem_counts.items())
    if report.worst:
        lines.append("  worst offenders (source, segment: problems):")
        lines.extend(
            f"    {w['source']} #{w['segment']}: {w['problems']} ({', '.join(w['kinds'])})"
            for w in report.worst[:max_lines]
        )
    lines.append("  examples:")
    for p in report.problems[:max_lines]:
        where = p.source if p.source is not None else p.shard
        seg = f" #{p.segment}" if p.segment is not None else ""
        lines.append(f"    [{p.kind}] {where}{seg}: {p.detail}")
    return "\n".join(lines)


def write_png(report: VerifyReport, path: str | Path) -> None:
    """A one-page report: duration histogram, fps/size/audio/label bars, and problems by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = report.distributions
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    dur = d.get("duration_s", {})
    ax = axes[0][0]
    if dur.get("count"):
        edges = dur["hist_edges"]
        ax.stairs(dur["hist_counts"], edges, fill=True)
    ax.set_title("segment duration (s)")
    ax.set_ylabel("rows")
    for ax, key, title in (
        (axes[0][1], "fps", "stored fps"),
        (axes[0][2], "size", "frame size (WxH)"),
        (axes[1][0], "audio", "audio"),
        (axes[1][1], "label", "labels"),
    ):
        _bars(ax, d.get(key, {}), title)
    ax = axes[1][2]
    if report.ok:
        ax.text(0.5, 0.5, "no problems", ha="center", va="center", fontsize=16, color="green")
        ax.set_axis_off()
    else:
        _bars(ax, report.problem_counts, "problems by kind", color="tab:red")
    status = "OK" if report.ok else f"{report.total_problems} PROBLEMS"
    fig.suptitle(f"avtime verify: {report.uri}  ({report.rows_checked} rows, {status})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _bars(ax: Any, counts: dict[str, int], title: str, color: str = "tab:blue") -> None:
    names = list(counts)
    bars = ax.barh(names[::-1], [counts[n] for n in names][::-1], color=color)
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.margins(x=0.12)
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=8)
