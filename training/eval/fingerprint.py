"""Robust fingerprinting (VGG-Sound style): distorted copies query a gallery of originals.

1. The gallery is the listing's test split (all items when it has none), in source order, capped
   at `max_videos`.
2. Every gallery file gets one distorted copy per distortion (`pipelines.datasets.distortions`), written
   by Ray Data tasks into the eval cache (kept, so reruns skip them).
3. Gallery and queries are decoded through the ingest job into cached shards, and embedded as
   the concatenation of the L2-normalised clip-averaged video feature and audio feature.
4. Each query retrieves its original by cosine nearest neighbour: R@1 and mAP per distortion. A
   query whose file could not be decoded counts as a miss (R@1 0, AP 0).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avtime.pipelines import storage
from avtime.pipelines.datasets.adapters import EvalItem, Listing
from avtime.pipelines.datasets.distortions import Distortion, distortion_set
from avtime.training.eval.cache import ensure_shards, file_stamps
from avtime.training.eval.features import ClipFeatures, extract_shard_features
from avtime.training.eval.linear import average_by_group
from avtime.training.eval.metrics import target_rank
from avtime.training.eval.model_io import RANDOM, build_model
from avtime.training.eval.protocols import EvalContext


@dataclass(frozen=True, kw_only=True)
class FingerprintConfig:
    """Which distortions, how many gallery videos, and the distortion seed."""

    distortions: str = "all"  # mild, strong or all
    max_videos: int = 0  # 0 = the whole gallery
    seed: int = 0


def gallery_items(listing: Listing, max_videos: int) -> list[EvalItem]:
    """The test split (or everything), sorted by source, at most `max_videos` (0 = all)."""
    items = listing.split_items("test") or list(listing.items)
    items = sorted(items, key=lambda it: it.source)
    return items[:max_videos] if max_videos > 0 else items


def _distort_batch(batch: dict[str, np.ndarray], *, seed: int) -> dict[str, np.ndarray]:
    """map_batches task: write each distorted copy that is not there yet."""
    import tempfile
    from pathlib import Path

    from avtime.pipelines.datasets.distortions import apply_distortion

    ok = []
    for src, dst, kind, amount, strength in zip(
        batch["src"], batch["dst"], batch["kind"], batch["amount"], batch["strength"]
    ):
        spec = Distortion(kind=str(kind), amount=float(amount), strength=str(strength))  # type: ignore[arg-type]
        if storage.exists(str(dst)):
            ok.append(True)
            continue
        with tempfile.TemporaryDirectory(prefix="avtime-fp-") as tmp:
            local = Path(tmp) / "out.mp4"
            try:
                apply_distortion(str(src), local, spec, seed=seed)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the job
                print(f"fingerprint: {spec.name} of {src} failed: {exc}", file=sys.stderr)
                ok.append(False)
                continue
            storage.put_file(local, str(dst))
        ok.append(True)
    return {"dst": batch["dst"], "ok": np.asarray(ok)}


def make_queries(
    gallery: list[EvalItem], specs: tuple[Distortion, ...], folder: str, seed: int
) -> list[EvalItem]:
    """Write the distorted copies (Ray tasks); return them as items (label = gallery source)."""
    import ray.data

    jobs: list[dict[str, Any]] = [
        {
            "src": it.source,
            "dst": storage.join(folder, spec.name, f"{i:06d}.mp4"),
            "kind": spec.kind,
            "amount": spec.amount,
            "strength": spec.strength,
            "gallery": it.source,
            "name": spec.name,
        }
        for spec in specs
        for i, it in enumerate(gallery)
    ]
    ds: Any = ray.data.from_items(jobs)
    ds = ds.map_batches(_distort_batch, batch_size=4, num_cpus=0.5, fn_kwargs={"seed": seed})
    done = {str(r["dst"]) for r in ds.iter_rows() if bool(r["ok"])}
    return [
        EvalItem(source=j["dst"], label=j["gallery"], split=j["name"])
        for j in jobs
        if j["dst"] in done
    ]


def av_embeddings(feats: ClipFeatures) -> tuple[list[str], torch.Tensor]:
    """Per source: [normalised mean video feature, normalised mean audio feature] -> [V, D]."""
    assert feats.video is not None
    keys, video = average_by_group(feats.video, feats.source)
    parts = [F.normalize(video, dim=1)]
    if feats.audio is not None:
        w = feats.has_audio[:, None]
        _, audio_sum = average_by_group(feats.audio * w, feats.source)
        _, count = average_by_group(w, feats.source)
        audio = audio_sum / count.clamp_min(1e-6)
        parts.append(F.normalize(audio, dim=1))
    return keys, torch.cat(parts, dim=1)


def per_distortion_scores(
    gallery: list[str],
    g_emb: torch.Tensor,
    queries: list[EvalItem],
    q_keys: list[str],
    q_emb: torch.Tensor,
    names: list[str],
) -> dict[str, dict[str, float]]:
    """R@1 and mAP per distortion name; listed queries without an embedding are misses."""
    gi = {s: i for i, s in enumerate(gallery)}
    qi = {s: i for i, s in enumerate(q_keys)}
    g = F.normalize(g_emb, dim=1)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        # Every gallery video should have one query per distortion; absent ones are misses.
        mine = [q for q in queries if q.split == name and q.source in qi and q.label in gi]
        total = len(gallery)
        if not mine:
            out[name] = {"R@1": 0.0, "mAP": 0.0}
            continue
        q = F.normalize(q_emb[[qi[x.source] for x in mine]], dim=1)
        target = torch.tensor([gi[x.label] for x in mine])
        sim = q @ g.T
        rank = target_rank(sim, target)  # ties count against the query
        out[name] = {
            "R@1": float((rank == 1).sum()) / total,
            "mAP": float((1.0 / rank.double()).sum()) / total,
        }
    return out


def run_fingerprint(ctx: EvalContext, fp: FingerprintConfig) -> dict[str, Any]:
    """The whole protocol (see module docstring); returns {"per_distortion": {...}, ...}."""
    specs = distortion_set(fp.distortions)  # type: ignore[arg-type]
    gallery = gallery_items(ctx.listing, fp.max_videos)
    modalities = ("video", "audio") if ctx.loaded.model.audio is not None else ("video",)
    name = ctx.listing.dataset
    g_shards = ensure_shards(
        gallery, name=f"{name}-fpgallery", cache=ctx.cache, cfg=ctx.ingest, workers=ctx.workers
    )
    stamps = file_stamps([it.source for it in gallery])  # a rebuilt gallery gets new copies
    rows = "\n".join(f"{it.source} {stamps[it.source]}" for it in gallery)
    key = hashlib.sha1(rows.encode()).hexdigest()[:12]
    folder = storage.join(ctx.cache, f"{name}-fpfiles-{key}-seed{fp.seed}")
    queries = make_queries(gallery, specs, folder, fp.seed)
    q_shards = ensure_shards(
        queries, name=f"{name}-fpqueries", cache=ctx.cache, cfg=ctx.ingest, workers=ctx.workers
    )
    lm = ctx.loaded
    names = [s.name for s in specs]

    def scores_of(model: Any) -> tuple[dict[str, dict[str, float]], int, int]:
        g_feats = extract_shard_features(
            g_shards.uri, model, lm.cfg.model, ctx.clip, modalities, ctx.extract
        )
        q_feats = extract_shard_features(
            q_shards.uri, model, lm.cfg.model, ctx.clip, modalities, ctx.extract
        )
        g_keys, g_emb = av_embeddings(g_feats)
        q_keys, q_emb = av_embeddings(q_feats)
        scores = per_distortion_scores(g_keys, g_emb, queries, q_keys, q_emb, names)
        return scores, len(g_keys), len(q_keys)

    scores, n_gallery, n_queries = scores_of(lm.model)
    mild = [scores[s.name]["R@1"] for s in specs if s.strength == "mild"]
    out: dict[str, Any] = {
        "per_distortion": scores,
        "gallery": n_gallery,
        "queries": n_queries,
        "mild_mean_R@1": sum(mild) / len(mild) if mild else float("nan"),
        "modalities": list(modalities),
    }
    if lm.checkpoint != RANDOM:  # the same protocol on a random init of the same model
        out["random_init"] = {"per_distortion": scores_of(build_model(lm.cfg, fp.seed))[0]}
    return out
