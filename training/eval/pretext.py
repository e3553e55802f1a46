"""`avtime eval pretext`: each pretext head's accuracy on held-out shards, against chance.

The checkpoint's model sees pretext examples drawn from the held-out shards by the same sampler
as training (`pipelines.pretext.stream.build_pretext_dataset`), with augmentation off. For every temporal
head it reports the accuracy, chance and the majority-class rate of the labels drawn; audio heads
count only rows with audio. Chance is 1 / (classes that occur among the labels drawn), so a speed
that no segment can fit does not lower it. It also reports audio->video retrieval in the
video-audio embedding space: each clip-1 audio embedding ranks every clip-1 video embedding by
cosine similarity; R@1 is the fraction whose own video (same source segment) ranks first, ties
counting against the query (`training.eval.metrics.recall_at_k`); chance is 1 / N with one clip
per segment.

torch and the model are imported inside the functions, so `avtime eval --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from avtime.training.config import RunConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint folder, run folder or s3://"
    )
    parser.add_argument("--data", required=True, help="held-out shards: folder or s3://")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on the last line"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="passes over the shards, fresh clips each (default 2)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print one line per head (and the JSON object with --json)."""
    result = evaluate_pretext(
        args.checkpoint, args.data, epochs=args.epochs, batch_size=args.batch_size
    )
    for line in summary_lines(result):
        print(line)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines: one per head, then retrieval."""
    lines = [f"pretext heads on {result['examples']} held-out examples ({result['data']}):"]
    for name, h in result["heads"].items():
        lines.append(
            f"  {name:16s} accuracy {h['accuracy']:.3f}  chance {h['chance']:.3f}  "
            f"({100 * (h['accuracy'] - h['chance']):+.1f} points)"
        )
    r = result["retrieval_a2v"]
    lines.append(
        f"  audio->video R@1 {r['r1']:.3f}  chance {r['chance']:.4f}  ({r['x_chance']:.1f}x)"
    )
    return lines


def eval_data_config(cfg: RunConfig) -> Any:
    """The training data config with augmentation off and one example per row and epoch."""
    data = cfg.data
    return replace(
        data,
        augment=replace(data.augment, enabled=False),
        stream=replace(data.stream, examples_per_row=1, decode_on="cpu"),
    )


def evaluate_pretext(
    checkpoint: str, data: str, *, epochs: int = 2, batch_size: int = 32
) -> dict[str, Any]:
    """Head accuracies and audio->video R@1 of `checkpoint` on the shards at `data`.

    Returns `{"heads": {name: {"accuracy", "chance", "majority", "n"}}, "retrieval_a2v":
    {"r1", "chance", "x_chance", "n"}, "examples", "checkpoint", "data", "step"}`; fractions
    are in [0, 1].
    """
    import torch

    from avtime.pipelines.pretext.stream import build_pretext_dataset, shard_paths
    from avtime.training.engine.trainer import ensure_local_ray
    from avtime.training.eval.model_io import load_model

    shard_paths(data)  # a missing or damaged manifest is one line before Ray starts
    loaded = load_model(checkpoint)
    model, cfg = loaded.model.eval(), loaded.cfg
    ensure_local_ray()
    ds = build_pretext_dataset(data, eval_data_config(cfg), epoch=0, epochs=max(1, epochs))
    acc = HeadTally()
    audio_emb, video_emb, keys = [], [], []
    with torch.no_grad():
        for batch in ds.iter_torch_batches(batch_size=batch_size, device="cpu"):
            out = model(batch["video1"], batch["video2"], batch["audio1"], batch["audio2"])
            acc.add(out, batch)
            if "emb_va_audio" in out:
                keep = batch["has_audio"] > 0.5
                audio_emb.append(out["emb_va_audio"][:, 0][keep])
                video_emb.append(out["emb_va_video"][:, 0][keep])
                keys.append(batch["example_key"][keep])
    if acc.examples == 0:
        raise ValueError(f"{data} gave no pretext examples (are the segments long enough?)")
    return {
        "heads": acc.result(),
        "retrieval_a2v": retrieval_r1(audio_emb, video_emb, keys),
        "examples": acc.examples,
        "checkpoint": checkpoint,
        "data": data,
        "step": loaded.step,
    }


class HeadTally:
    """Running correct counts, label histograms and row counts per temporal head."""

    def __init__(self) -> None:
        self.correct: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self.labels: dict[str, torch.Tensor] = {}
        self.classes: dict[str, int] = {}
        self.examples = 0

    def add(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """Count one batch: model outputs and the pretext batch's labels."""
        import torch

        from avtime.models.losses import TEMPORAL_TASKS

        self.examples += int(batch["video1"].shape[0])
        has_audio = batch["has_audio"] > 0.5
        for name, logits_key, label_key, _, needs_audio in TEMPORAL_TASKS:
            if logits_key not in out:
                continue
            logits, labels = out[logits_key], batch[label_key]
            if needs_audio:
                logits, labels = logits[has_audio], labels[has_audio]
            k = int(logits.shape[-1])
            self.classes[name] = k
            hits = (logits.argmax(dim=-1) == labels).sum()
            self.correct[name] = self.correct.get(name, 0.0) + float(hits)
            self.rows[name] = self.rows.get(name, 0) + int(labels.numel())
            hist = torch.bincount(labels.reshape(-1), minlength=k).float()
            self.labels[name] = self.labels.get(name, torch.zeros(k)) + hist

    def result(self) -> dict[str, dict[str, float]]:
        """Per head: accuracy, chance, majority-class rate and number of predictions.

        Chance is 1 / (classes that occur among the labels): segments too short for the
        largest speed never draw it, so 1 / (head outputs) would flatter the head.
        """
        from avtime.models.losses import TEMPORAL_TASKS

        out = {}
        for name in (task[0] for task in TEMPORAL_TASKS):
            n = self.rows.get(name, 0)
            if n == 0:
                continue
            present = int((self.labels[name] > 0).sum())
            out[name] = {
                "accuracy": self.correct[name] / n,
                "chance": 1.0 / max(1, present),
                "majority": float(self.labels[name].max()) / n,
                "n": n,
            }
        return out


def retrieval_r1(
    audio: list[torch.Tensor], video: list[torch.Tensor], keys: list[torch.Tensor]
) -> dict[str, float]:
    """Audio->video R@1 by cosine similarity over N paired clip embeddings (audio [n, F] and
    video [n, F] per batch, keys [n]).

    A query hits when its nearest video comes from the same source example (`example_key`;
    with several epochs one segment gives several clips); a video of another example that
    scores the same as the nearest true one ranks first (ties count against the query, as in
    `metrics.recall_at_k`, which computes it). Chance is the mean fraction of videos that would
    count as a hit, 1 / N with one clip per segment.
    """
    import torch

    from avtime.training.eval.metrics import recall_at_k

    if not audio or sum(len(a) for a in audio) == 0:
        return {"r1": 0.0, "chance": 0.0, "x_chance": 0.0, "n": 0}
    a, v, k = torch.cat(audio), torch.cat(video), torch.cat(keys)
    r1 = recall_at_k(a, k, v, k, ks=(1,))["R@1"]
    chance = float((k[:, None] == k[None, :]).float().mean(dim=1).mean())
    return {"r1": r1, "chance": chance, "x_chance": r1 / chance, "n": int(a.shape[0])}
