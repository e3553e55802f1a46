"""One experiment, step by step: synth -> preprocess -> train -> probe against random init.

`avtime demo`, `python -m bench.learning` and `python -m bench.ablation_bench` are drivers of
these functions; each step takes a frozen config (or a path) and returns a typed result, prints
what it did as `avtime <command>` would, and raises `StepError` (one line for the user) when it
fails:

    make_corpus(Corpus)            a synthetic corpus of mp4s (reused when its synth.json holds
                                   the same config, else rebuilt)
    make_shards(Shards)            `avtime preprocess`: Arrow segment shards -> IngestResult
                                   (rebuilt when older than their corpus)
    check_shards(path, fraction)   `avtime verify` -> VerifyReport
    contact_sheet(SheetRequest)    `avtime sample --png`: what the model sees
    pretrain(TrainRequest)         `avtime train` -> TrainOutcome
    heldout_pretext(ckpt, shards)  `avtime eval pretext` -> head accuracies and a->v R@1
    probe(Probe, ckpt)             `avtime eval action --mode linear` (and retrieval, audio,
                                   fingerprint) from one feature extraction -> {protocol: result}
    probe_against_random(Probe, ckpt)   the same for the checkpoint and for random init, and
                                   the controls of `Probe.controls` on the same split -> Contrast

`LEARNING_BAR` is the one definition of the learning bar the demo and the bench apply to the
held-out pretext evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from avtime.pipelines.config import DataConfig, IngestConfig
    from avtime.pipelines.ingest.job import IngestResult
    from avtime.pipelines.synth.corpus import SynthConfig
    from avtime.pipelines.verify.report import VerifyReport
    from avtime.training.engine.trainer import TrainOutcome, TrainRequest
    from avtime.training.eval.controls import ControlScore

T = TypeVar("T")


class StepError(RuntimeError):
    """A step of the experiment failed; the message is one line for the user."""


def _exact(value: float, count: int | None = None) -> Fraction:
    """A measured fraction as an exact rational: `round(value * count) / count` when the
    number of trials is known, else the nearest fraction with a denominator up to 10^6 (so
    float noise such as 4.9999997 for 5 does not decide a bar)."""
    if count:
        return Fraction(round(float(value) * count), int(count))
    return Fraction(float(value)).limit_denominator(10**6)


@dataclass(frozen=True, kw_only=True)
class LearningBar:
    """What "the model learned" means on held-out pretext shards: every temporal head's
    accuracy at least `head_points` above its chance, and audio->video R@1 at least
    `retrieval_x` times chance. Decided on exact counts, not floats."""

    head_points: float = 0.30
    retrieval_x: float = 5.0

    def head_passes(self, head: Mapping[str, Any]) -> bool:
        """`head`: {"accuracy", "chance"} as fractions, and "n" (predictions) when known."""
        margin = _exact(head["accuracy"], head.get("n")) - _exact(head["chance"])
        return margin >= Fraction(str(self.head_points))

    def retrieval_passes(self, retrieval: Mapping[str, Any]) -> bool:
        """`retrieval`: {"r1", "chance", "n"} (or only "x_chance"), R@1 against chance."""
        if "r1" in retrieval and float(retrieval.get("chance", 0)) > 0:
            ratio = _exact(retrieval["r1"], retrieval.get("n")) / _exact(retrieval["chance"])
        else:
            ratio = _exact(retrieval["x_chance"])
        return ratio >= Fraction(str(self.retrieval_x))

    def judge(self, heldout: Mapping[str, Any]) -> dict[str, Any]:
        """{"passed", "heads": {name: bool}, "retrieval_a2v": bool} of `heldout_pretext`'s
        result."""
        heads = {name: self.head_passes(h) for name, h in heldout["heads"].items()}
        retrieval = self.retrieval_passes(heldout["retrieval_a2v"])
        passed = all(heads.values()) and retrieval
        return {"passed": passed, "heads": heads, "retrieval_a2v": retrieval}

    def report(self, heldout: Mapping[str, Any]) -> list[str]:
        """One line per check with its figures and verdict, then a closing count."""
        lines = []
        for name, h in heldout["heads"].items():
            n = int(h.get("n", 0))
            count = f" ({round(float(h['accuracy']) * n)}/{n})" if n else ""
            lines.append(
                f"  {name:16s} accuracy {float(h['accuracy']):.3f}{count}, chance "
                f"{float(h['chance']):.3f}: {100 * (float(h['accuracy']) - float(h['chance'])):+.1f} "
                f"points (bar +{100 * self.head_points:.0f}) "
                f"{'pass' if self.head_passes(h) else 'FAIL'}"
            )
        r = heldout["retrieval_a2v"]
        x = float(r["x_chance"])
        lines.append(
            f"  audio->video R@1 {float(r.get('r1', 0)):.3f} = {x:.1f}x chance (bar "
            f"{self.retrieval_x:.0f}x) {'pass' if self.retrieval_passes(r) else 'FAIL'}"
        )
        judged = self.judge(heldout)
        failed = [k for k, ok in judged["heads"].items() if not ok]
        failed += [] if judged["retrieval_a2v"] else ["audio->video R@1"]
        total = len(judged["heads"]) + 1
        verdict = "passed" if not failed else f"NOT passed ({', '.join(failed)})"
        return [*lines, f"learning bar {verdict}: {total - len(failed)} of {total} checks"]


LEARNING_BAR = LearningBar()


def timed(name: str, fn: Callable[[], T], *, prefix: str = "") -> T:
    """Run one step; print `<prefix><name> done in N s` after it."""
    t0 = time.monotonic()
    out = fn()
    print(f"{prefix}{name} done in {time.monotonic() - t0:.0f} s", flush=True)
    return out


# --- synth -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """A synthetic corpus at `out`, written by `synth` (docs/synth.md)."""

    out: Path
    synth: SynthConfig
    workers: int | None = None  # processes; None: every usable CPU


@dataclass(frozen=True)
class CorpusResult:
    out: Path
    videos: int  # 0 when reused
    reused: bool


def synth_config(flags: Sequence[str]) -> SynthConfig:
    """The SynthConfig of `avtime synth` flags (e.g. `--videos 8 --world sand --no-lamps`)."""
    from avtime.pipelines.synth.corpus import SynthConfig
    from avtime.training.cli.commands import synth

    parser = argparse.ArgumentParser(prog="avtime synth")
    synth.add_arguments(parser)
    args = parser.parse_args(["-", *flags])
    names = {f.name for f in fields(SynthConfig)} & set(vars(args))
    try:
        return SynthConfig(**{n: getattr(args, n) for n in names})
    except ValueError as exc:
        raise StepError(f"synth: {exc}") from exc


SYNTH_OUTPUTS = ("labels.csv", "synth.json", "videos", "meta")  # what `avtime synth` writes


def corpus_mismatch(out: Path, cfg: SynthConfig) -> str | None:
    """None when the finished corpus at `out` was written with `cfg` (its synth.json holds the
    config); else why it cannot be reused, in a few words."""
    from dataclasses import asdict

    if not (out / "labels.csv").is_file():
        return "it is not finished (no labels.csv)"
    try:
        have = json.loads((out / "synth.json").read_text())["config"]
    except FileNotFoundError:
        return "it has no synth.json"
    except (ValueError, KeyError, TypeError):
        return "its synth.json cannot be read"
    want = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as synth.json holds them
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if not diff:
        return None
    shown = ", ".join(f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in diff[:4])
    return f"it was written with {shown}{', ...' if len(diff) > 4 else ''}"


def make_corpus(c: Corpus) -> CorpusResult:
    """Write the corpus, or reuse the one at `c.out` when it was written with `c.synth`.

    A finished corpus written with another config is removed (what `avtime synth` writes, and
    nothing else) and written again, with one line saying why."""
    from avtime.pipelines.progress import ProgressBar
    from avtime.pipelines.synth.corpus import generate_corpus

    why = corpus_mismatch(c.out, c.synth)
    if why is None:
        print(f"reusing the corpus in {c.out}", flush=True)
        return CorpusResult(out=c.out, videos=0, reused=True)
    if any((c.out / name).exists() for name in ("labels.csv", "synth.json")):
        print(f"rebuilding the corpus in {c.out}: {why}", flush=True)
        _remove_corpus(c.out)
    t0 = time.monotonic()
    bar = ProgressBar(c.synth.videos, label=f"synth {c.out.name}", unit="videos")
    metas = generate_corpus(c.out, c.synth, workers=c.workers, on_progress=lambda _m: bar.update())
    bar.close()
    elapsed = max(time.monotonic() - t0, 1e-9)
    seconds = sum(m["duration_s"] for m in metas)
    print(
        f"wrote {len(metas)} videos ({seconds:.0f} s of video) to {c.out} in {elapsed:.1f} s "
        f"({len(metas) / elapsed:.2f} videos/s); labels: {c.out}/labels.csv",
        flush=True,
    )
    return CorpusResult(out=c.out, videos=len(metas), reused=False)


def _remove_corpus(out: Path) -> None:
    """Remove what `avtime synth` wrote in `out` (SYNTH_OUTPUTS), leaving anything else."""
    import shutil

    for name in SYNTH_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --- preprocess and verify ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Shards:
    """`avtime preprocess src dst`: decode the corpus at `src` into shards at `dst`."""

    src: Path
    dst: Path
    ingest: IngestConfig
    labels: bool = False  # carry src/labels.csv (label, split) into the rows
    reuse: bool = False  # skip when dst already has a manifest (else resume the job)


def make_shards(s: Shards) -> IngestResult | None:
    """Run the ingest job (None when reused); StepError when no row or too many rejects."""
    from avtime.pipelines.ingest.job import IngestError, LockError, run_ingest
    from avtime.pipelines.ingest.listing import ListingError
    from avtime.pipelines.storage import StorageError

    stale = _shards_older_than_corpus(s)
    if stale:
        import shutil

        print(f"rebuilding the shards in {s.dst}: {stale}", flush=True)
        shutil.rmtree(s.dst)
    elif s.reuse and (s.dst / "manifest.json").is_file():
        print(f"reusing the shards in {s.dst}", flush=True)
        return None
    labels = str(s.src / "labels.csv") if s.labels else None
    try:
        res = run_ingest(str(s.src), str(s.dst), s.ingest, labels=labels)
    except (IngestError, ListingError, LockError, StorageError) as exc:
        raise StepError(f"preprocess {s.src}: {exc}") from exc
    print(res.summary_line(), flush=True)
    if res.rows == 0:
        raise StepError(f"preprocess {s.src}: no usable rows came out (see rejects.parquet)")
    if res.reject_fraction > s.ingest.max_reject_fraction:
        raise StepError(
            f"preprocess {s.src}: reject fraction {res.reject_fraction:.3f} exceeds "
            f"{s.ingest.max_reject_fraction}"
        )
    return res


def _shards_older_than_corpus(s: Shards) -> str | None:
    """Why the shards at `s.dst` are stale (started before `s.src`'s labels.csv was written,
    so decoded from an older corpus), or None."""
    from avtime.pipelines.ingest.job import CONFIG_NAME

    labels = s.src / "labels.csv"
    marks = [p for p in (s.dst / "manifest.json", s.dst / CONFIG_NAME) if p.is_file()]
    if not labels.is_file() or not marks:
        return None
    if min(p.stat().st_mtime_ns for p in marks) < labels.stat().st_mtime_ns:
        return f"they were decoded from an older corpus in {s.src}"
    return None


def check_shards(shards: Path, sample_fraction: float = 0.25) -> VerifyReport:
    """`avtime verify`: decode `sample_fraction` of the rows, check every row; StepError when
    a problem is found."""
    from avtime.pipelines.verify.job import verify_dataset
    from avtime.pipelines.verify.report import summary_text

    report = verify_dataset(str(shards), sample_fraction=sample_fraction)
    print(summary_text(report, max_lines=10), flush=True)
    if not report.ok:
        raise StepError(f"verify {shards}: the shards have problems (listed above)")
    return report


@dataclass(frozen=True, kw_only=True)
class SheetRequest:
    """`avtime sample SHARDS --n N --out NPZ --png PNG` with the data config `data`."""

    shards: Path
    data: DataConfig
    npz: Path
    png: Path
    n: int = 8


def contact_sheet(req: SheetRequest) -> Path:
    """Draw the first `req.n` training examples; save their arrays and the contact sheet."""
    import numpy as np

    from avtime.pipelines.pretext.contact_sheet import save_sheet
    from avtime.pipelines.pretext.stream import iter_pretext_examples, shards_sample_rate
    from avtime.training.cli.commands.sample import collect

    shards = str(req.shards)
    sr = shards_sample_rate(shards)
    examples = list(islice(iter_pretext_examples(shards, req.data, epoch=0, sample_rate=sr), req.n))
    arrays = collect(examples, req.data, sr)
    req.npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(req.npz, **arrays)  # type: ignore[arg-type]
    path = save_sheet(arrays, req.data.pretext.speeds, req.png, max_examples=min(req.n, 8))
    print(f"wrote {len(examples)} examples to {req.npz}; contact sheet: {path}", flush=True)
    return path


# --- train and the pretext evaluation ----------------------------------------------------------


def pretrain(req: TrainRequest) -> TrainOutcome:
    """`avtime train` in this process (starts a local Ray sized for it when none runs)."""
    from avtime.training.engine.trainer import ensure_ray, train

    ensure_ray(req.cfg.train)
    try:
        return train(req)
    except (FileNotFoundError, ValueError) as exc:
        raise StepError(f"train: {exc}") from exc


def heldout_pretext(checkpoint: str, shards: Path, *, epochs: int = 2) -> dict[str, Any]:
    """`avtime eval pretext`: each head's accuracy and chance and audio->video R@1 on held-out
    shards (see training.eval.pretext.evaluate_pretext)."""
    from avtime.training.eval.pretext import evaluate_pretext, summary_lines

    result = evaluate_pretext(checkpoint, str(shards), epochs=epochs)
    for line in summary_lines(result):
        print(line, flush=True)
    return result


def log_heldout(uri: str, run_id: str, heldout: Mapping[str, Any], step: int) -> None:
    """Held-out figures as metrics of the training run (`heldout_acc_<head>`, R@1)."""
    from mlflow import MlflowClient

    metrics = {f"heldout_acc_{k}": h["accuracy"] for k, h in heldout["heads"].items()}
    metrics["heldout_a2v_r1"] = heldout["retrieval_a2v"]["r1"]
    metrics["heldout_a2v_r1_x_chance"] = heldout["retrieval_a2v"]["x_chance"]
    client = MlflowClient(tracking_uri=uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step)


# --- probe against random init -----------------------------------------------------------------

PROTOCOLS = ("action", "retrieval", "audio", "fingerprint")
ACTION_VIDEOS = "action_videos"  # probe's key of {test video source: right} of the action probe


@dataclass(frozen=True, kw_only=True)
class Probe:
    """The transfer evaluation of a checkpoint on a labelled `folder` corpus (labels.csv with
    train and test videos), as `avtime eval <protocol> --dataset folder` would run it.

    `protocols` (of PROTOCOLS) share one feature extraction; action and audio are linear
    probes. Random init is built from preset `config` with `overrides` at `seed`. `controls`
    (of `training.eval.controls.CONTROLS`, e.g. "still frame") are scored by
    `probe_against_random` on the same train/test split, decoding in `control_workers`
    processes."""

    root: Path
    cache: Path
    config: str = "demo"
    overrides: tuple[str, ...] = ()
    seed: int = 0
    protocols: tuple[str, ...] = ("action",)
    clips: int = 4
    short_side: int = 128
    fingerprint_videos: int = 16  # gallery cap of the mild-distortion fingerprint protocol
    log: bool = False  # log each protocol as an MLflow eval run
    tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI or ./mlflow.db
    params: Mapping[str, str] = field(default_factory=dict)  # extra eval-run params
    controls: tuple[str, ...] = ()
    control_workers: int = 2

    def __post_init__(self) -> None:
        from avtime.training.eval.controls import CONTROLS

        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be some of {PROTOCOLS}, got {self.protocols}")
        if set(self.controls) - set(CONTROLS):
            raise ValueError(f"controls must be some of {CONTROLS}, got {self.controls}")


@dataclass(frozen=True)
class Contrast:
    """Results of the checkpoint and of random init, {protocol: result}, the probe's chance
    (one over the classes) and the scores of the Probe's controls ({} without)."""

    trained: dict[str, dict[str, Any]]
    random: dict[str, dict[str, Any]]
    chance: float
    controls: dict[str, ControlScore] = field(default_factory=dict)

    def margin(self, protocol: str = "action", key: str = "top1") -> float:
        """Trained minus random init (fractions)."""
        return float(self.trained[protocol][key]) - float(self.random[protocol][key])


def _context(p: Probe, checkpoint: str) -> Any:
    from avtime.pipelines.config import IngestConfig
    from avtime.pipelines.datasets.adapters import list_dataset
    from avtime.training.eval.clips import ClipConfig
    from avtime.training.eval.features import ExtractConfig
    from avtime.training.eval.linear import LinearProbeConfig
    from avtime.training.eval.model_io import load_model
    from avtime.training.eval.protocols import EvalContext

    overrides = p.overrides if checkpoint == "random" else ()
    loaded = load_model(
        checkpoint, config=p.config, overrides=overrides, seed=p.seed,
        tracking_uri=p.tracking_uri or None,
    )  # fmt: skip
    return EvalContext(
        loaded=loaded,
        listing=list_dataset("folder", str(p.root)),
        cache=str(p.cache),
        clip=ClipConfig.from_run(loaded.cfg, p.clips),
        extract=ExtractConfig(batch_size=16),
        ingest=IngestConfig(short_side=p.short_side),
        probe=LinearProbeConfig(seed=p.seed),
    )


def probe(
    p: Probe, checkpoint: str, *, extra_metrics: Mapping[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """{protocol: result} of `checkpoint` (a folder/URI, models:/..., or "random"); with the
    action protocol also {ACTION_VIDEOS: {test video source: right}} for paired comparisons.
    `extra_metrics` go, as they are named, into the action protocol's eval run (when logged)."""
    from avtime.training.engine.trainer import ensure_local_ray
    from avtime.training.eval import protocols
    from avtime.training.eval.fingerprint import FingerprintConfig, run_fingerprint

    ctx = _context(p, checkpoint)
    ensure_local_ray(4.0)  # the decode tasks of the evaluation set
    modalities = ("video", "audio") if "audio" in p.protocols else ("video",)
    feats = protocols.train_test_video_features(ctx, modalities)
    out: dict[str, dict[str, Any]] = {}
    right: dict[str, bool] = {}
    if "action" in p.protocols:
        action, right = protocols.action_linear_videos(ctx, feats)
        out["action"] = dict(action)
    if "retrieval" in p.protocols:
        out["retrieval"] = dict(protocols.run_retrieval(ctx, feats))
    if "audio" in p.protocols:
        out["audio"] = dict(protocols.run_audio(ctx, feats))
    if "fingerprint" in p.protocols:
        fp = FingerprintConfig(distortions="mild", max_videos=p.fingerprint_videos, seed=p.seed)
        out["fingerprint"] = dict(run_fingerprint(ctx, fp))
    from avtime.training.tracking.eval_log import summary_line

    for proto, result in out.items():
        print(f"eval {proto} on folder ({checkpoint}): {summary_line(result)}", flush=True)
        if p.log:
            _log_probe(p, ctx, proto, result, extra_metrics if proto == "action" else None)
    if right:  # not printed or logged: one entry per test video
        out[ACTION_VIDEOS] = dict(right)
    return out


def _log_probe(
    p: Probe,
    ctx: Any,
    protocol: str,
    result: Mapping[str, Any],
    extra_metrics: Mapping[str, float] | None = None,
) -> str:
    """One MLflow eval run, as `avtime eval` logs it (training.tracking.eval_log), with
    `extra_metrics` as they are named."""
    import torch

    from avtime.training.tracking import lineage
    from avtime.training.tracking.eval_log import eval_params, log_eval, metric_prefix
    from avtime.training.tracking.runs import tracking_uri

    uri = p.tracking_uri or tracking_uri()
    loaded = ctx.loaded
    model_id = loaded.model_id or lineage.model_for_checkpoint(
        uri, loaded.parent_run_id, loaded.step
    )
    mode = "linear" if protocol in ("action", "audio") else ""
    params = eval_params(
        protocol=protocol, dataset="folder", root=str(p.root), mode=mode,
        checkpoint=loaded.checkpoint, checkpoint_uri=loaded.resolved,
        checkpoint_step=loaded.step, preset=loaded.cfg.preset, clips_per_segment=p.clips,
        short_side=p.short_side, seed=p.seed,
        distortions="mild" if protocol == "fingerprint" else "", model_id=model_id or "",
    )  # fmt: skip
    return log_eval(
        protocol=protocol, dataset="folder", params={**params, **p.params}, result=result,
        parent_run_id=loaded.parent_run_id, prefix=metric_prefix(protocol, "folder", None, mode),
        uri=uri, model_id=model_id, data=lineage.eval_dataset(ctx.listing, None),
        device="cuda" if torch.cuda.is_available() else "cpu", extra_metrics=extra_metrics,
    )  # fmt: skip


def probe_controls(p: Probe) -> dict[str, ControlScore]:
    """The controls `p.controls` on the probe corpus's train/test split ({} without any);
    prints their top-1 and how long they took."""
    from avtime.training.eval.controls import run_controls

    if not p.controls:
        return {}
    t0 = time.monotonic()
    try:
        scores = run_controls(str(p.root), p.controls, workers=p.control_workers, seed=p.seed)
    except (ValueError, OSError) as exc:
        raise StepError(f"controls on {p.root}: {exc}") from exc
    shown = ", ".join(f"{s.name} top1={s.top1:.4f}" for s in scores.values())
    n = next(iter(scores.values())).n
    print(f"controls on folder ({n} test videos): {shown}, in "
          f"{time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip
    return scores


def control_metrics(scores: Mapping[str, ControlScore]) -> dict[str, float]:
    """`control_<name>_top1` of each control score (spaces as underscores)."""
    return {f"control_{s.key}_top1": s.top1 for s in scores.values()}


def probe_against_random(p: Probe, checkpoint: str, *, log_random: bool = False) -> Contrast:
    """`probe` of the checkpoint and of random init of the same configuration at the same seed
    (random init logs an eval run only with `log_random`), and `probe_controls` (their top-1
    also in the checkpoint's action eval run, as `control_metrics`)."""
    controls = probe_controls(p)
    trained = probe(p, checkpoint, extra_metrics=control_metrics(controls))
    random = probe(replace(p, log=p.log and log_random), "random")
    classes = json.loads((p.root / "synth.json").read_text())["classes"]
    return Contrast(
        trained=trained, random=random, chance=1.0 / max(1, len(classes)), controls=controls
    )


# --- embeddings and one search -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HeldoutSearch:
    """`avtime embed --checkpoint CKPT --data SHARDS --out OUT`, then `avtime search --index OUT
    --query QUERY --from audio --to video --k K`: which clips of the corpus look like the
    query video sounds."""

    checkpoint: str
    shards: Path
    out: Path
    query: Path  # a video file of the embedded corpus
    k: int = 5
    clips: int = 4


def embed_corpus(s: HeldoutSearch) -> Any:
    """`avtime embed` of `s.shards` into `s.out` with `s.checkpoint` -> EmbedResult."""
    from avtime.training.eval.embed import EmbedError, EmbedRequest, embed

    req = EmbedRequest(
        checkpoint=s.checkpoint, data=str(s.shards), out=str(s.out), clips_per_segment=s.clips
    )
    try:
        result = embed(req)
    except EmbedError as exc:
        raise StepError(f"embed {s.shards}: {exc}") from exc
    print(result.summary_line(), flush=True)
    return result


def search_audio_to_video(s: HeldoutSearch) -> dict[str, Any]:
    """`avtime search` with the query's audio among the index's video clips; prints the hits
    and whether the query's own video came first. {"query", "index", "own_rank", "self_first",
    "hits": [{rank, score, source, segment, clip, t_start, t_end}]}."""
    from dataclasses import asdict

    from avtime.training.eval.embed import EmbedError
    from avtime.training.eval.search import SearchRequest, own_rank, result_lines, search

    req = SearchRequest(
        index=str(s.out), query=str(s.query), from_modality="audio", to_modality="video", k=s.k
    )
    try:
        result = search(req)
    except EmbedError as exc:
        raise StepError(f"search {s.out}: {exc}") from exc
    for line in result_lines(result, req):
        print(line, flush=True)
    rank = own_rank(result)
    verdict = (
        "came first" if rank == 1
        else f"ranks #{rank}" if rank else f"is not among the top {len(result.hits)}"
    )  # fmt: skip
    print(f"search: the query's own video {verdict} ({s.query.name})", flush=True)
    hits = [{k: v for k, v in asdict(h).items() if k != "video_id"} for h in result.hits]
    return {"query": str(s.query), "index": str(s.out), "own_rank": rank,
            "self_first": rank == 1, "hits": hits}  # fmt: skip
