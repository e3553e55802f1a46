"""A PNG contact sheet of pretext examples: every frame, every label and both sounds, explained.

Input is the dict that `avtime sample` saves (`video` uint8 [N, 2, T, H, W, 3], `video_t` [N, 2, T]
source seconds, `audio` float32 [N, 2, L], `audio_span` [N, 2, 2] source seconds, `sample_rate`,
`label_*`), or a training batch turned into one by `batch_as_sample` (which may also carry
`video_t` and `audio_span`). The sheet has a title and a legend that spell out the clip names
and labels. Each example is a block: a line with its order labels, then for each video clip a
strip of its T frames with the source time of each frame on the axis, then for each audio clip
its waveform (amplitude against seconds of clip) and its spectrogram (Hz against seconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avtime.pipelines.config import DEFAULT_SAMPLE_RATE
from avtime.pipelines.pretext.plan import ORDER_NAMES

FONT = 10  # points; the sheet is drawn at DPI dots per inch
DPI = 100
WIDTH_INCHES = 13.0
ROW_INCHES = {"legend": 0.9, "header": 0.3, "audio": 1.5}
ORDER_WORDS = {
    "first_before_second": "first before second",
    "second_before_first": "second before first",
    "overlap": "overlap",
}
LEGEND = (
    "Each example cuts two video clips (v1, v2) and two audio clips (a1, a2) from one source "
    "segment; a1 is centred on v1's span and a2 on v2's.\n"
    "x1/x2/x4/x8 = playback speed (the clip steps over 1/2/4/8 stored frames; audio is read that "
    "many times faster and resampled back).   forward/reverse = direction of play.\n"
    "Order of a pair (A, B): 'first before second' = A starts earlier, 'second before first' = "
    "B starts earlier, 'overlap' = the spans overlap. The model predicts every one of these labels."
)


def _order(d: Mapping[str, np.ndarray], key: str, i: int, k: int | None = None) -> str:
    value = d[key][i] if k is None else d[key][i][k]
    return ORDER_WORDS[ORDER_NAMES[int(value)]]


def _header(d: Mapping[str, np.ndarray], i: int) -> str:
    return (
        f"example {i + 1}.  order (v1, v2): {_order(d, 'label_video_order', i)};  "
        f"(a1, a2): {_order(d, 'label_audio_order', i)};  "
        f"(v1, a2): {_order(d, 'label_av_order', i, 0)};  (v2, a1): {_order(d, 'label_av_order', i, 1)}"
    )


def _play(d: Mapping[str, np.ndarray], kind: str, i: int, c: int, speeds: Sequence[int]) -> str:
    """'x4 reverse' for clip c of `kind` ('video' or 'audio') of example i."""
    s = speeds[int(d[f"label_{kind}_speed"][i, c])]
    return f"x{s} {'reverse' if int(d[f'label_{kind}_reverse'][i, c]) else 'forward'}"


def _video_title(d: Mapping[str, np.ndarray], i: int, c: int, speeds: Sequence[int]) -> str:
    title = f"v{c + 1}: {_play(d, 'video', i, c, speeds)}"
    if "video_t" in d:
        t = d["video_t"][i, c]
        title += f", frames from source t = {t[0]:.2f} .. {t[-1]:.2f} s"
    return title


def _audio_title(d: Mapping[str, np.ndarray], i: int, c: int, speeds: Sequence[int]) -> str:
    title = f"a{c + 1}: {_play(d, 'audio', i, c, speeds)}"
    if "audio_span" in d:
        a0, a1 = d["audio_span"][i, c]
        title += f", covers source t = {a0:.2f} .. {a1:.2f} s"
    if "has_audio" in d and not float(d["has_audio"][i]):
        title += " (the source has no audio: silence)"
    return title


def _draw_frames(ax: Axes, frames: np.ndarray, times: np.ndarray | None, title: str) -> None:
    """Frames uint8 [T, H, W, 3] side by side; each tick names its source time (s) or index."""
    t, _, w, _ = frames.shape
    ax.imshow(np.concatenate(list(frames), axis=1), interpolation="nearest", aspect="equal")
    ax.set_xticks([(k + 0.5) * w for k in range(t)])
    labels = [f"{x:.2f}" for x in times] if times is not None else [str(k) for k in range(t)]
    ax.set_xticklabels(labels, fontsize=FONT - 2, rotation=0 if t <= 8 else 90)
    ax.set_xlabel(
        "source time of each frame (s)" if times is not None else "frame", fontsize=FONT - 1
    )
    ax.set_yticks([])
    ax.set_title(title, fontsize=FONT, loc="left")


def spectrogram(wave: np.ndarray, n: int = 256, hop: int = 128) -> np.ndarray:
    """Log10 magnitude STFT of a mono float wave [L] with Hann windows: [n // 2 + 1, frames]."""
    x = np.asarray(wave, dtype=np.float32)
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    starts = np.arange(0, x.size - n + 1, hop)
    frames = np.stack([x[s : s + n] for s in starts]) * np.hanning(n).astype(np.float32)
    return np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-4).T


def _draw_audio(axes: Sequence[Axes], wave: np.ndarray, sr: int, title: str) -> None:
    """Waveform (amplitude against clip seconds) and spectrogram (Hz against clip seconds)."""
    seconds = max(wave.size, 1) / sr
    wave_ax, spec_ax = axes
    wave_ax.plot(np.arange(wave.size) / sr, wave, linewidth=0.6, color="tab:blue")
    wave_ax.set_xlim(0, seconds)
    wave_ax.set_xlabel("clip time (s)", fontsize=FONT - 1)
    wave_ax.set_ylabel("amplitude", fontsize=FONT - 1)
    wave_ax.set_title(title, fontsize=FONT, loc="left")
    spec = spectrogram(wave)
    spec_ax.imshow(
        spec, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, sr / 2 / 1000)
    )
    spec_ax.set_xlabel("clip time (s)", fontsize=FONT - 1)
    spec_ax.set_ylabel("frequency (kHz)", fontsize=FONT - 1)
    spec_ax.set_title("spectrogram (log magnitude)", fontsize=FONT - 1, loc="left")
    for ax in axes:
        ax.tick_params(labelsize=FONT - 2)


def _row_heights(t: int, h: int, w: int) -> list[float]:
    """Inches of the 5 rows of one example block: header, v1, v2, a1, a2. A frame strip of T
    frames spans the sheet's width, so its height follows from the frames' aspect."""
    strip = WIDTH_INCHES * 0.9 * h / (t * w) + 0.7  # + title and time axis
    return [ROW_INCHES["header"], strip, strip, ROW_INCHES["audio"], ROW_INCHES["audio"]]


def _example(
    fig: Figure, grid: Any, row: int, d: Mapping[str, np.ndarray], i: int, speeds: Sequence[int]
) -> None:
    """Draw example i into the 5 grid rows from `row`: header, two frame strips, 2x2 audio."""
    header = fig.add_subplot(grid[row, :])
    header.axis("off")
    header.text(0, 0.2, _header(d, i), fontsize=FONT + 1, color="darkred", weight="bold")
    sr = int(d.get("sample_rate", DEFAULT_SAMPLE_RATE))
    for c in range(2):
        times = d["video_t"][i, c] if "video_t" in d else None
        strip = fig.add_subplot(grid[row + 1 + c, :])
        _draw_frames(strip, d["video"][i, c], times, _video_title(d, i, c, speeds))
        audio = [fig.add_subplot(grid[row + 3 + c, k]) for k in range(2)]
        _draw_audio(audio, np.asarray(d["audio"][i, c]), sr, _audio_title(d, i, c, speeds))


def render_sheet(
    d: Mapping[str, np.ndarray], speeds: Sequence[int], max_examples: int = 8
) -> Figure:
    """The contact sheet figure of the first `max_examples` examples of a sample dict."""
    n = min(max_examples, d["video"].shape[0])
    _, _, t, h, w, _ = d["video"].shape
    heights = [ROW_INCHES["legend"]] + _row_heights(t, h, w) * n
    fig = Figure(figsize=(WIDTH_INCHES, sum(heights) + 0.5), dpi=DPI, layout="constrained")
    fig.suptitle(f"What the model sees: {n} pretext examples", fontsize=FONT + 4, x=0.01, ha="left")
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
    legend = fig.add_subplot(grid[0, :])
    legend.axis("off")
    legend.text(0, 1, LEGEND, fontsize=FONT - 1, va="top", linespacing=1.5)
    for i in range(n):
        _example(fig, grid, 1 + 5 * i, d, i, speeds)
    return fig


def save_sheet(
    d: Mapping[str, np.ndarray], speeds: Sequence[int], path: str | Path, max_examples: int = 8
) -> Path:
    """Write the contact sheet PNG to `path` and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = render_sheet(d, speeds, max_examples)
    FigureCanvasAgg(fig).print_png(str(out))
    return out


def batch_as_sample(
    batch: Mapping[str, Any], sample_rate: int | None = None
) -> dict[str, np.ndarray]:
    """A training batch (the stream's contract: video1/2 uint8 [B, 3, T, S, S], audio1/2 float32
    [B, L], label_*; numpy arrays or CPU tensors) as the sample dict `render_sheet` draws:
    video uint8 [B, 2, T, S, S, 3], audio float32 [B, 2, L], the same labels, and the source
    times (`video_t`, `audio_span`) when the batch carries them."""

    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    keep = ("has_audio", "video_t", "audio_span")
    out = {k: arr(v) for k, v in batch.items() if k.startswith("label_") or k in keep}
    video = np.stack([arr(batch["video1"]), arr(batch["video2"])], axis=1)
    out["video"] = video.transpose(0, 1, 3, 4, 5, 2)
    out["audio"] = np.stack([arr(batch["audio1"]), arr(batch["audio2"])], axis=1)
    if sample_rate is not None:
        out["sample_rate"] = np.array(sample_rate, dtype=np.int64)
    return out


def save_batch(
    batch: Mapping[str, Any],
    speeds: Sequence[int],
    path: str | Path,
    max_examples: int = 4,
    sample_rate: int | None = None,
) -> Path:
    """The contact sheet of a training batch (what the model sees, with its labels) as a PNG."""
    return save_sheet(batch_as_sample(batch, sample_rate), speeds, path, max_examples)
