"""In-memory segment rows for pretext tests whose content encodes time.

Frame i is a uniform colour: R = 16 * (i % 16) + 8, G = 16 * (i // 16) + 8, B = 128, so the
frame index survives JPEG, any crop, resize and flip. Audio sample j is a ramp,
round(j * 30000 / num_samples) - 15000 (int16), so a clip's values give back the stored sample
positions it read, its speed and its direction.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from avtime.pipelines.schema import MANIFEST_NAME, build_manifest, manifest_to_bytes, rows_to_table


def frame_jpeg(index: int, width: int, height: int) -> bytes:
    """The JPEG of frame `index` (uniform colour coding the index)."""
    rgb = (16 * (index % 16) + 8, 16 * (index // 16) + 8, 128)
    buf = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decode_index(frame: np.ndarray) -> int:
    """The frame index coded by a (decoded, cropped, resized) frame, uint8 [H, W, 3]."""
    r, g = (float(np.median(frame[..., c])) for c in (0, 1))
    return int(round((g - 8) / 16)) * 16 + int(round((r - 8) / 16))


def ramp(num_samples: int) -> np.ndarray:
    """The audio ramp, int16 [num_samples]."""
    j = np.arange(num_samples, dtype=np.float64)
    return (np.round(j * 30000 / max(num_samples, 1)) - 15000).astype("<i2")


def ramp_position(values: np.ndarray, num_samples: int) -> np.ndarray:
    """Stored sample positions (float) that ramp values (float in [-1, 1]) correspond to."""
    return (values * 32768 + 15000) * num_samples / 30000


_FRAME_CACHE: dict[tuple[int, int, int], bytes] = {}


def make_row(
    *,
    num_frames: int = 250,
    fps: float = 25.0,
    sample_rate: int = 16000,
    audio: bool = True,
    width: int = 40,
    height: int = 32,
    video_id: str = "0123456789abcdef",
    segment: int = 0,
    start_s: float = 0.0,
) -> dict[str, Any]:
    """One segment row (CONTRACTS.md section 1) with coded frames and a ramp audio track."""
    frames = []
    for i in range(num_frames):
        key = (i, width, height)
        if key not in _FRAME_CACHE:
            _FRAME_CACHE[key] = frame_jpeg(i, width, height)
        frames.append(_FRAME_CACHE[key])
    n = int(num_frames * sample_rate / fps) if audio else 0
    return {
        "video_id": video_id,
        "source": f"mem://{video_id}",
        "segment": segment,
        "start_s": start_s,
        "duration_s": num_frames / fps,
        "fps": fps,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "frames": frames,
        "sample_rate": sample_rate,
        "num_samples": n,
        "audio": ramp(n).tobytes() if audio else None,
        "label": None,
        "split": None,
    }


def write_shards(rows: list[dict[str, Any]], out_dir: str, rows_per_shard: int = 4) -> list[str]:
    """Write rows as `part-00000-000.parquet`... shards (row groups of 2 rows) and the
    `manifest.json` that lists them, as `avtime preprocess` does."""
    paths, entries = [], []
    for k in range(0, len(rows), rows_per_shard):
        table: pa.Table = rows_to_table(rows[k : k + rows_per_shard])
        name = f"part-00000-{k // rows_per_shard:03d}.parquet"
        pq.write_table(table, f"{out_dir}/{name}", row_group_size=2)
        paths.append(f"{out_dir}/{name}")
        entries.append({"path": name, "rows": table.num_rows})
    rates = [int(r["sample_rate"]) for r in rows if int(r["sample_rate"] or 0) > 0]
    doc = build_manifest(
        code_version="test", frame_format="jpeg", config={"sample_rate": (rates or [16000])[0]},
        inputs=sorted({str(r["source"]) for r in rows}), counts={"rows": len(rows)}, shards=entries,
    )  # fmt: skip
    with open(f"{out_dir}/{MANIFEST_NAME}", "wb") as f:
        f.write(manifest_to_bytes(doc))
    return paths
