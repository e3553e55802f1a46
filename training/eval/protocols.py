"""The transfer protocols on one dataset listing: action recognition, retrieval and audio.

Every protocol decodes the listing once into cached shards (`training.eval.cache`), extracts
clip features with Ray Data (`training.eval.features`) and scores them with pure torch code
(`linear`, `metrics`). Results are plain dicts whose keys match `avtime eval --json`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from avtime.pipelines.config import IngestConfig
from avtime.pipelines.datasets.adapters import Listing
from avtime.training.eval.cache import CachedShards, ensure_shards
from avtime.training.eval.clips import ClipConfig
from avtime.training.eval.features import (
    ClipFeatures,
    ExtractConfig,
    extract_audio_file_features,
    extract_shard_features,
)
from avtime.training.eval.linear import (
    LinearProbeConfig,
    average_by_group,
    fit_probe,
    video_correct,
)
from avtime.training.eval.metrics import recall_at_k
from avtime.training.eval.model_io import LoadedModel

RETRIEVAL_KS = (1, 5, 10, 20)


@dataclass(kw_only=True)
class EvalContext:
    """What every protocol needs: the model, the dataset listing, and the extraction settings."""

    loaded: LoadedModel
    listing: Listing
    cache: str
    clip: ClipConfig
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    workers: int | None = None

    @property
    def class_index(self) -> dict[str, int]:
        """Label name -> class index (sorted label order)."""
        return {c: i for i, c in enumerate(self.listing.classes)}

    def shards(self) -> CachedShards:
        """The decoded shards of the whole listing (cached)."""
        return ensure_shards(
            self.listing.items,
            name=self.listing.dataset,
            cache=self.cache,
            cfg=self.ingest,
            workers=self.workers,
        )

    def features(self, modalities: tuple[str, ...], keep: set[str] | None) -> ClipFeatures:
        """Clip features of the listing's videos whose source is in `keep` (all if None)."""
        shards = self.shards()
        return extract_shard_features(
            shards.uri,
            self.loaded.model,
            self.loaded.cfg.model,
            self.clip,
            modalities,
            self.extract,
            keep=None if keep is None else frozenset(keep),
        )


def split_sources(listing: Listing, split: str) -> dict[str, str]:
    """source -> label of one split."""
    return {it.source: it.label for it in listing.split_items(split)}


def select(
    feats: ClipFeatures, x: torch.Tensor, sources: dict[str, str], classes: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Clip rows whose source is in `sources`: (features [N, F], labels [N], source per clip)."""
    rows = [i for i, s in enumerate(feats.source) if s in sources]
    groups = [feats.source[i] for i in rows]
    y = torch.tensor([classes[sources[s]] for s in groups], dtype=torch.long)
    return x[rows], y, groups


def _need_split(listing: Listing, split: str) -> None:
    if not listing.split_items(split):
        raise ValueError(
            f"{listing.dataset} at {listing.root} has no '{split}' items; "
            "the protocol needs a train and a test split (see docs/eval.md)"
        )


def _report_missing(listing: Listing, feats: ClipFeatures, wanted: set[str]) -> int:
    got = set(feats.source)
    missing = len(wanted - got)
    if missing:
        print(
            f"eval: {missing} of {len(wanted)} {listing.dataset} files have no decoded clips "
            "and are left out",
            file=sys.stderr,
        )
    return missing


def train_test(ctx: EvalContext) -> tuple[dict[str, str], dict[str, str]]:
    """source -> label of the train and the test split (both must be non-empty)."""
    for s in ("train", "test"):
        _need_split(ctx.listing, s)
    return split_sources(ctx.listing, "train"), split_sources(ctx.listing, "test")


def train_test_video_features(
    ctx: EvalContext, modalities: tuple[str, ...] = ("video",)
) -> ClipFeatures:
    """Clip features of the train and test videos (one extraction for several protocols)."""
    train, test = train_test(ctx)
    feats = ctx.features(modalities, set(train) | set(test))
    _report_missing(ctx.listing, feats, set(train) | set(test))
    return feats


def run_action_linear(
    ctx: EvalContext, feats: ClipFeatures | None = None
) -> dict[str, float | int]:
    """Linear probe on frozen video clip features; top-1 of clip probabilities averaged per video."""
    return action_linear_videos(ctx, feats)[0]


def action_linear_videos(
    ctx: EvalContext, feats: ClipFeatures | None = None
) -> tuple[dict[str, float | int], dict[str, bool]]:
    """`run_action_linear`'s result, and whether each test video is right (source -> bool), for
    paired comparisons on the same test videos."""
    train, test = train_test(ctx)
    feats = feats if feats is not None else train_test_video_features(ctx)
    assert feats.video is not None
    classes = ctx.class_index
    x_tr, y_tr, g_tr = select(feats, feats.video, train, classes)
    x_te, _, g_te = select(feats, feats.video, test, classes)
    if len(y_tr) == 0 or len(g_te) == 0:
        raise ValueError("no decoded train or test clips; check the rejects of the decode")
    probe, l2 = fit_probe(x_tr, y_tr, g_tr, len(classes), ctx.probe)
    labels = {s: classes[test[s]] for s in g_te}
    right = video_correct(probe.log_probs(x_te), g_te, labels)
    result: dict[str, float | int] = {
        "top1": sum(right.values()) / len(right),
        "l2": l2,
        "train_videos": len(set(g_tr)),
        "test_videos": len(set(g_te)),
        "num_classes": len(classes),
    }
    return result, right


def video_level(
    feats: ClipFeatures, x: torch.Tensor, sources: dict[str, str], classes: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Clip features averaged per video: ([V, F], labels [V], sources)."""
    xs, _, groups = select(feats, x, sources, classes)
    keys, mean = average_by_group(xs, groups)
    y = torch.tensor([classes[sources[k]] for k in keys], dtype=torch.long)
    return mean, y, keys


def run_retrieval(ctx: EvalContext, feats: ClipFeatures | None = None) -> dict[str, float | int]:
    """Test videos query train videos by cosine of clip-averaged video features; R@1/5/10/20."""
    train, test = train_test(ctx)
    feats = feats if feats is not None else train_test_video_features(ctx)
    assert feats.video is not None
    classes = ctx.class_index
    g, gy, gk = video_level(feats, feats.video, train, classes)
    q, qy, qk = video_level(feats, feats.video, test, classes)
    if not gk or not qk:
        raise ValueError("retrieval: no decoded train (gallery) or test (query) videos")
    out: dict[str, float | int] = dict(recall_at_k(q, qy, g, gy, RETRIEVAL_KS))
    out.update({"queries": len(qk), "gallery": len(gk)})
    return out


def _audio_file_features(ctx: EvalContext) -> tuple[torch.Tensor, list[str]]:
    """Per-file audio features [N, Fa] of every listed audio file (ESC-50 layout)."""
    sources = [it.source for it in ctx.listing.items]
    feats = extract_audio_file_features(
        sources, ctx.loaded.model, ctx.loaded.cfg.model, ctx.clip, ctx.extract
    )
    assert feats.audio is not None
    keys, mean = average_by_group(feats.audio, feats.source)
    return mean, keys


def run_audio(ctx: EvalContext, feats: ClipFeatures | None = None) -> dict[str, object]:
    """Linear classifier on frozen, file-averaged audio features.

    ESC-50: 5-fold cross-validation (train on 4 folds, test on the 5th); other datasets: their
    train/test split with audio taken from the video files (`feats`: already extracted clip
    features with audio, if any). Returns mean and per-fold accuracy.
    """
    if ctx.loaded.model.audio is None:
        raise ValueError("this checkpoint's model has no audio encoder (no loss term used audio)")
    classes = ctx.class_index
    label = {it.source: it.label for it in ctx.listing.items}
    split = {it.source: it.split for it in ctx.listing.items}
    if ctx.listing.dataset == "esc50":
        x, keys = _audio_file_features(ctx)
        folds = sorted({split[k] for k in keys}, key=int)
    else:
        for s in ("train", "test"):
            _need_split(ctx.listing, s)
        if feats is None or feats.audio is None:
            feats = ctx.features(("audio",), None)
        assert feats.audio is not None
        keep = [i for i, h in enumerate(feats.has_audio.tolist()) if h > 0]
        keys, x = average_by_group(feats.audio[keep], [feats.source[i] for i in keep])
        folds = ["test"]
    y = torch.tensor([classes[label[k]] for k in keys], dtype=torch.long)
    accs = []
    for fold in folds:
        te = torch.tensor([split[k] == fold for k in keys])
        tr = (
            ~te
            if ctx.listing.dataset == "esc50"
            else torch.tensor([split[k] == "train" for k in keys])
        )
        if not bool(tr.any()) or not bool(te.any()):
            raise ValueError(f"audio: fold/split {fold!r} leaves no train or no test files")
        keys_tr = [k for k, t in zip(keys, tr.tolist()) if t]
        probe, _ = fit_probe(x[tr], y[tr], keys_tr, len(classes), ctx.probe)
        pred = probe.log_probs(x[te]).argmax(dim=1)
        accs.append(float((pred == y[te]).float().mean()))
    return {
        "mean_accuracy": sum(accs) / len(accs),
        "fold_accuracy": accs,
        "folds": [str(f) for f in folds],
        "files": len(keys),
    }
