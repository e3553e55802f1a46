"""A hand-made motion feature with a linear classifier: the reference for the eval learning bar.

    python -m bench.motion_baseline ROOT [--size 64]

ROOT is a labeled `folder` corpus (`labels.csv`: path,label,split), e.g. the ablation bench's
evaluation corpus: `avtime synth ROOT --videos 80 --seed 200 --test-fraction 0.3 --classes 4
--seconds 6`. Per video, every frame is decoded (PyAV) to `--size` x `--size` gray, and the
absolute frame differences give a mirror-invariant motion-energy map (8 x 8 cells, left and
right averaged), its vertical profile, the spectrum of the energy over time and its mean and
std: 62 numbers. A softmax regression (L-BFGS, L2 weights 1e-3 to 1) on the standardised
train features predicts the test videos. Prints test top-1 per L2 weight and chance: how far a
linear probe can get on these videos with no learning at all in the features.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CELLS = 8  # the motion-energy map is CELLS x CELLS
SPECTRUM = 20  # lowest frequencies of the energy-over-time spectrum kept


def motion_features(path: Path, size: int) -> np.ndarray:
    """Decode a video to gray [T, size, size]; return its float32 motion feature [62]."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [
            f.to_ndarray(format="gray", width=size, height=size).astype(np.float32)
            for f in container.decode(stream)
        ]
    if len(frames) < 2:
        raise ValueError(f"{path}: fewer than 2 frames decoded")
    diff = np.abs(np.diff(np.stack(frames), axis=0))  # [T-1, size, size]
    cell = size // CELLS
    grid = diff.mean(0)[: cell * CELLS, : cell * CELLS].reshape(CELLS, cell, CELLS, cell)
    energy_map = grid.mean((1, 3))
    energy_map = (energy_map + energy_map[:, ::-1]) / 2  # launch sides are mirrored at random
    energy = diff.mean((1, 2))  # [T-1]
    spectrum = np.abs(np.fft.rfft(energy - energy.mean()))[:SPECTRUM]
    spectrum = np.pad(spectrum, (0, SPECTRUM - len(spectrum)))
    parts = [
        energy_map[:, : CELLS // 2].ravel(),
        energy_map.mean(1),
        spectrum / (spectrum.sum() + 1e-6),
        [energy.mean(), energy.std()],
    ]
    return np.concatenate(parts).astype(np.float32)


def softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, l2: float) -> np.ndarray:
    """Fit on x [N, D], y [N]; return the weights [D + 1, classes] (last row: bias)."""
    import torch

    xt = torch.from_numpy(np.hstack([x, np.ones((len(x), 1), np.float32)]))
    yt = torch.from_numpy(y)
    w = torch.zeros(xt.shape[1], classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w, yt) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.motion_baseline", description=__doc__)
    p.add_argument("root", help="folder corpus with labels.csv (path,label,split)")
    p.add_argument("--size", type=int, default=64, help="decoded frame side (the demo's crop)")
    args = p.parse_args(list(argv) if argv is not None else None)
    root = Path(args.root)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.stack([motion_features(root / r["path"], args.size) for r in rows])
    names = sorted({r["label"] for r in rows})
    y = np.array([names.index(r["label"]) for r in rows], dtype=np.int64)
    train = np.array([r["split"] == "train" for r in rows])
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    print(f"motion baseline on {root}: {int(train.sum())} train / {int((~train).sum())} test "
          f"videos, {len(names)} classes (chance {1 / len(names):.3f}), {x.shape[1]} features")  # fmt: skip
    for l2 in (1e-3, 1e-2, 1e-1, 1.0):
        w = softmax_regression(z[train], y[train], len(names), l2)
        logits = np.hstack([z[~train], np.ones((int((~train).sum()), 1), np.float32)]) @ w
        print(f"  L2 {l2:g}: test top-1 {np.mean(logits.argmax(1) == y[~train]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
