"""Per-frame CPU cost of ingest's stages on one file, single-threaded (for bench.ingest_bench).

Decode only; + fast-bilinear scale to RGB; + JPEG with Pillow; + JPEG with PyAV's mjpeg
encoder (scaled straight to full-range yuv420p); and the whole `SegmentDecoder` (which also
resamples to the stored fps, decodes audio and encodes only the frames it keeps).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image


def _graph(stream: Any, w: int, h: int, fmt: str, extra: str = "") -> Any:
    g = av.filter.Graph()
    src = g.add_buffer(template=stream)
    sc = g.add("scale", f"{w}:{h}:flags=fast_bilinear{extra}")
    fm = g.add("format", fmt)
    sink = g.add("buffersink")
    src.link_to(sc)
    sc.link_to(fm)
    fm.link_to(sink)
    g.configure()
    return g


def _run(path: Path, per_frame: Callable[[Any, Any], None] | None, setup: Any) -> float:
    """CPU seconds per decoded frame, best of 3 (the machine is shared)."""
    return min(_run_once(path, per_frame, setup) for _ in range(3))


def _run_once(path: Path, per_frame: Callable[[Any, Any], None] | None, setup: Any) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        state = setup(s) if setup else None
        n = 0
        t0 = time.process_time()
        for frame in c.decode(s):
            if per_frame is not None:
                per_frame(frame, state)
            n += 1
        return (time.process_time() - t0) / max(n, 1)


def _whole(path: Path) -> float:
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.ingest.decode import SegmentDecoder

    t0 = time.process_time()
    dec = SegmentDecoder(str(path), IngestConfig(), threads=1)
    for _ in dec.segments():
        pass
    return (time.process_time() - t0) / dec.frames_decoded


def ffmpeg_cost(path: Path, fps: int, short: int) -> float | None:
    """CPU seconds per source frame of the baseline ffmpeg command on one file (best of 3)."""
    import resource
    import shutil
    import subprocess

    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    with av.open(str(path)) as c:
        frames = c.streams.video[0].frames or 1
    cmd = [
        exe, "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-filter_threads", "1",
        "-map", "0:v:0", "-vf", f"fps={fps},scale=-2:{short}:flags=fast_bilinear",
        "-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null",
        "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-f", "s16le", "-y", "/dev/null",
    ]  # fmt: skip
    best = float("inf")
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        best = min(best, cpu / frames)
    return best


def stage_costs(path: Path, fps: int, short: int) -> dict[str, float]:
    """Print and return frames per CPU second of each stage."""
    from avtime.pipelines.ingest.decode import output_size

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        w, h = output_size(s.width, s.height, s.sample_aspect_ratio, 0, short)

    def scale(frame: Any, g: Any) -> None:
        g.push(frame)
        g.pull()

    def pil(frame: Any, g: Any) -> None:
        g.push(frame)
        rgb = g.pull()
        plane = rgb.planes[0]
        img = Image.frombuffer("RGB", (w, h), plane, "raw", "RGB", plane.line_size, 1)
        img.save(io.BytesIO(), format="JPEG", quality=90)

    def mjpeg_setup(stream: Any) -> Any:
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
        enc.time_base, enc.color_range = Fraction(1, fps), 2
        enc.qmin = enc.qmax = 3
        enc.open()
        return (_graph(stream, w, h, "yuv420p", ":out_range=full"), enc, [0])

    def mjpeg(frame: Any, st: Any) -> None:
        g, enc, n = st
        g.push(frame)
        out = g.pull()
        n[0] += 1
        out.pts, out.time_base, out.color_range = n[0], enc.time_base, 2
        enc.encode(out)

    costs = {
        "decode": _run(path, None, None),
        "decode+scale": _run(path, scale, lambda st: _graph(st, w, h, "rgb24")),
        "decode+scale+jpeg(Pillow q90)": _run(path, pil, lambda st: _graph(st, w, h, "rgb24")),
        "decode+scale+jpeg(PyAV mjpeg q3)": _run(path, mjpeg, mjpeg_setup),
    }
    costs["SegmentDecoder (all stages, audio)"] = min(_whole(path) for _ in range(3))
    ff = ffmpeg_cost(path, fps, short)
    if ff is not None:
        costs["ffmpeg -threads 1 (the speed baseline)"] = ff
    print(f"stage costs on {path.name} ({w}x{h} out), single-threaded, source frames/CPU-s:")
    for name, sec in costs.items():
        print(f"  {name:40s} {1 / sec:8.0f} fps  ({sec * 1000:.2f} ms/frame)")
    return costs
