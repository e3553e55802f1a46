"""Losses against hand-written references (plain Python loops over rows, or
torch.nn.functional.cross_entropy) on small tensors; the queue is read by the loss and filled
by `enqueue` (the training step's call), never by the loss itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from avtime.models.config import LossConfig
from avtime.models.losses import (
    Bank,
    ContrastivePair,
    NCEConfig,
    NCEDirection,
    cross_entropy_rows,
    enqueue,
    info_nce,
    knn_positive_mask,
    multi_positive_nce,
    queue_nce,
    symmetric_nce,
    total_loss,
)
from avtime.models.queue import FeatureQueue

TAU = 0.2


def _cos(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _ref_direction(
    x: Tensor, y: Tensor, tau: float, bank: Tensor | None = None, k: int = 0, negs: bool = True
) -> list[float]:
    """-log(sum_pos e^{s/tau} / sum_all e^{s/tau}) per row, written out with loops."""
    out = []
    for i in range(x.shape[0]):
        pos = [math.exp(_cos(x[i], y[i]) / tau)]
        den = [math.exp(_cos(x[i], y[j]) / tau) for j in range(y.shape[0])]
        if bank is not None:
            sims = [_cos(y[i], bank[q]) for q in range(bank.shape[0])]
            nearest = sorted(range(bank.shape[0]), key=lambda q: -sims[q])[:k]
            for q in range(bank.shape[0]):
                e = math.exp(_cos(x[i], bank[q]) / tau)
                if q in nearest:
                    pos.append(e)
                    den.append(e)
                elif negs:
                    den.append(e)
        out.append(-math.log(sum(pos) / sum(den)))
    return out


def _ref_symmetric(x: Tensor, y: Tensor, tau: float, **kw: object) -> Tensor:
    xy = _ref_direction(x, y, tau, **kw)  # type: ignore[arg-type]
    yx = _ref_direction(y, x, tau, **kw)  # type: ignore[arg-type]
    return torch.tensor([0.5 * (a + b) for a, b in zip(xy, yx)])


@pytest.mark.unit
def test_info_nce_matches_reference_and_is_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = _ref_symmetric(x, y, TAU).mean()
    torch.testing.assert_close(info_nce(x, y, TAU), expected.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info_nce(x, y, TAU), info_nce(y, x, TAU), rtol=1e-6, atol=1e-6)
    # Perfectly aligned, orthogonal pairs give a lower loss than random pairs.
    eye = torch.eye(6)
    assert info_nce(eye, eye, TAU) < info_nce(x, y, TAU)
    # The temperature is used: a different tau changes the value.
    assert not torch.isclose(info_nce(x, y, 0.5), info_nce(x, y, TAU))


@pytest.mark.unit
@pytest.mark.parametrize("negs", [True, False])
def test_multi_positive_queue_nce_matches_reference(negs: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    bank = torch.randn(7, 3, generator=g)
    b = Bank(rows=bank)
    got = symmetric_nce(
        ContrastivePair(x=x, y=y, x_bank=b, y_bank=b),
        NCEConfig(temperature=TAU, knn_k=2, queue_negatives=negs),
    )
    expected = _ref_symmetric(x, y, TAU, bank=bank, k=2, negs=negs)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_knn_positives_on_constructed_embeddings() -> None:
    bank = torch.eye(6)  # six orthogonal directions
    positive = torch.tensor([[0.0, 0.0, 0.9, 0.0, 0.5, 0.1], [1.0, 0.2, 0.0, 0.0, 0.0, 0.3]])
    mask = knn_positive_mask(positive, bank, 2)
    assert mask[0].nonzero().flatten().tolist() == [2, 4]
    assert mask[1].nonzero().flatten().tolist() == [0, 5]
    assert knn_positive_mask(positive, bank, 10).all()  # k is clipped to the bank size
    assert not knn_positive_mask(positive, bank, 0).any()


@pytest.mark.unit
def test_knn_neighbour_is_pulled_like_a_positive() -> None:
    """With k=1 the neighbour of the positive counts in the numerator: the loss drops."""
    x = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.tensor([[0.0, 1.0, 0.0]])
    bank = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])  # row 0 near x, row 1 far
    pos = torch.tensor([0])
    # Neighbour of y in the bank: row 0 (cos 0.11 vs 0); it is close to the anchor x.
    d = NCEDirection(anchor=x, keys=y, pos_index=pos, bank=Bank(rows=bank))
    with_knn = queue_nce(d, NCEConfig(temperature=TAU, knn_k=1))
    negatives_only = queue_nce(d, NCEConfig(temperature=TAU, knn_k=0))
    assert with_knn < negatives_only


@pytest.mark.unit
def test_multi_positive_nce_masked_rows_stay_finite() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    positives = torch.zeros(3, 4, dtype=torch.bool)
    positives[0, 1] = True
    allowed = torch.zeros(3, 4, dtype=torch.bool)  # nothing allowed beyond the positives
    rows = multi_positive_nce(logits, positives, allowed)
    assert torch.isfinite(rows).all()
    assert rows[0].item() == pytest.approx(0.0, abs=1e-6)  # only the positive in the denominator
    torch.where(positives.any(1), rows, torch.zeros_like(rows)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.unit
def test_cross_entropy_rows_matches_reference() -> None:
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(5, 2, 4, generator=g), torch.randint(0, 4, (5, 2), generator=g)
    expected = torch.tensor(
        [
            sum(-F.log_softmax(logits[i, c], 0)[labels[i, c]].item() for c in range(2)) / 2
            for i in range(5)
        ]
    )
    torch.testing.assert_close(cross_entropy_rows(logits, labels), expected, rtol=1e-5, atol=1e-6)


def _outputs(b: int, d: int = 4, s: int = 4, seed: int = 3) -> dict[str, Tensor]:
    """Random model outputs with every key total_loss reads."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return {
        "feat_video": r(b, 2, 8), "emb_vv": r(b, 2, d), "emb_va_video": r(b, 2, d),
        "emb_va_audio": r(b, 2, d), "logits_video_speed": r(b, 2, s),
        "logits_audio_speed": r(b, 2, s), "logits_video_reverse": r(b, 2, 2),
        "logits_audio_reverse": r(b, 2, 2), "logits_video_order": r(b, 3),
        "logits_audio_order": r(b, 3), "logits_av_order": r(b, 2, 3),
    }  # fmt: skip


def _labels(b: int, has_audio: Tensor, s: int = 4, seed: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "has_audio": has_audio,
        "label_video_speed": torch.randint(0, s, (b, 2), generator=g),
        "label_audio_speed": torch.randint(0, s, (b, 2), generator=g),
        "label_video_reverse": torch.randint(0, 2, (b, 2), generator=g),
        "label_audio_reverse": torch.randint(0, 2, (b, 2), generator=g),
        "label_video_order": torch.randint(0, 3, (b,), generator=g),
        "label_audio_order": torch.randint(0, 3, (b,), generator=g),
        "label_av_order": torch.randint(0, 3, (b, 2), generator=g),
    }


def _ce(logits: Tensor, labels: Tensor) -> float:
    return float(cross_entropy_rows(logits.detach(), labels).mean())


@pytest.mark.unit
def test_total_loss_is_the_weighted_sum_with_audio_rows_masked() -> None:
    b = 6
    has_audio = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    out, batch = _outputs(b), _labels(b, has_audio)
    cfg = LossConfig(
        temperature=TAU, w_vv=1.0, w_va=0.5, w_speed=2.0, w_direction=0.3, w_order_intra=1.5,
        w_order_inter=0.7, queue_size=0, knn_k=0,
    )  # fmt: skip
    loss, terms = total_loss(out, batch, cfg)
    a = has_audio.bool()
    det = {k: v.detach() for k, v in out.items()}
    vv = float(_ref_symmetric(det["emb_vv"][:, 0], det["emb_vv"][:, 1], TAU).mean())
    va = 0.5 * sum(
        float(_ref_symmetric(det["emb_va_video"][a, i], det["emb_va_audio"][a, i], TAU).mean())
        for i in (0, 1)
    )
    expected = {
        "vv": vv, "va": va,
        "speed_video": _ce(det["logits_video_speed"], batch["label_video_speed"]),
        "speed_audio": _ce(det["logits_audio_speed"][a], batch["label_audio_speed"][a]),
        "direction_video": _ce(det["logits_video_reverse"], batch["label_video_reverse"]),
        "direction_audio": _ce(det["logits_audio_reverse"][a], batch["label_audio_reverse"][a]),
        "order_video": _ce(det["logits_video_order"], batch["label_video_order"]),
        "order_audio": _ce(det["logits_audio_order"][a], batch["label_audio_order"][a]),
        "order_av": _ce(det["logits_av_order"][a], batch["label_av_order"][a]),
    }  # fmt: skip
    weights = {"vv": 1.0, "va": 0.5, "speed": 2.0, "direction": 0.3, "order": 1.5}
    total = 0.0
    for name, value in expected.items():
        assert terms[f"loss_{name}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
        w = 0.7 if name == "order_av" else weights[name.split("_")[0]]
        total += w * value
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)
    assert terms["audio_fraction"].item() == pytest.approx(4 / 6)
    hits = (det["logits_video_order"].argmax(-1) == batch["label_video_order"]).float().mean()
    assert terms["acc_order_video"].item() == pytest.approx(hits.item())


@pytest.mark.unit
def test_weight_zero_skips_the_term() -> None:
    out, batch = _outputs(4), _labels(4, torch.ones(4))
    cfg = LossConfig(w_va=0.0, w_direction=0.0, w_order_inter=0.0, queue_size=0, knn_k=0)
    _, terms = total_loss(out, batch, cfg)
    assert "loss_va" not in terms and "loss_direction_video" not in terms
    assert "loss_order_av" not in terms and "acc_direction_audio" not in terms
    assert "loss_vv" in terms and "loss_speed_audio" in terms
    # Outputs of disabled heads may be absent altogether.
    for key in ("emb_va_video", "emb_va_audio", "logits_video_reverse", "logits_av_order"):
        del out[key]
    total_loss(out, batch, cfg)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        zero = LossConfig(
            w_vv=0, w_va=0, w_speed=0, w_direction=0, w_order_intra=0, w_order_inter=0
        )
        total_loss(out, batch, zero)


@pytest.mark.unit
def test_batch_without_audio_gives_finite_loss_and_gradients() -> None:
    out, batch = _outputs(4), _labels(4, torch.zeros(4))
    queue = FeatureQueue(8, 4)
    cfg = LossConfig(temperature=TAU, queue_size=8, knn_k=2)
    for _ in range(2):  # the second call reads a queue with video rows but no audio rows
        loss, terms = total_loss(out, batch, cfg, queue)
        enqueue(queue, out, batch)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(v) for v in terms.values())
        for name in ("va", "speed_audio", "direction_audio", "order_audio", "order_av"):
            assert terms[f"loss_{name}"].item() == 0.0
        loss.backward()
    used = [v for k, v in out.items() if k != "feat_video"]
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in used)
    assert out["emb_va_audio"].grad is not None and out["emb_va_audio"].grad.abs().sum() == 0
    assert queue.count("vv") == 8 and queue.count("va_audio") == 0


@pytest.mark.unit
def test_total_loss_only_reads_the_queue_and_enqueue_fills_it() -> None:
    b = 5
    has_audio = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    out, batch = _outputs(b), _labels(b, has_audio)
    cfg = LossConfig(temperature=TAU, queue_size=32, knn_k=2)
    queue = FeatureQueue(32, 4)
    _, first = total_loss(out, batch, cfg, queue)
    assert len(queue) == 0  # no side effect: the training step pushes
    _, plain = total_loss(out, batch, LossConfig(temperature=TAU, queue_size=0, knn_k=0))
    # An empty queue gives the queue-free loss.
    assert first["loss_vv"].item() == pytest.approx(plain["loss_vv"].item(), rel=1e-6)
    enqueue(queue, out, batch)
    # Both video-audio banks take only the 3 rows with audio, row-aligned (docs/method.md).
    assert queue.count("vv") == b and queue.count("va_video") == queue.count("va_audio") == 3
    expected = F.normalize(out["emb_va_audio"][has_audio.bool(), 0].detach(), dim=1)
    torch.testing.assert_close(queue.get("va_audio"), expected)
    expected = F.normalize(out["emb_va_video"][has_audio.bool(), 0].detach(), dim=1)
    torch.testing.assert_close(queue.get("va_video"), expected)
    _, second = total_loss(out, batch, cfg, queue)
    assert second["loss_vv"].item() != pytest.approx(first["loss_vv"].item())
    assert queue.count("vv") == b


@pytest.mark.unit
def test_one_positive_nce_is_cross_entropy() -> None:
    """With one positive per row and every column allowed, the multi-positive form is CPC's
    InfoNCE, i.e. softmax cross-entropy with the positive's column as the label."""
    g = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(6, 9, generator=g), torch.randint(0, 9, (6,), generator=g)
    positives = F.one_hot(labels, 9).bool()
    got = multi_positive_nce(logits, positives, torch.ones_like(positives))
    expected = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    flat = cross_entropy_rows(logits[:, None], labels[:, None])  # one clip per row
    torch.testing.assert_close(flat, expected, rtol=1e-5, atol=1e-6)


def _ref_masked(
    x: Tensor, y: Tensor, src: list[int], bank: Tensor, bank_src: list[int], k: int
) -> list[float]:
    """One direction with same-source masking, written out: a key or bank row from the anchor's
    own (known) video is left out of the denominator unless it is a positive."""
    out = []
    for i in range(x.shape[0]):
        sims = [_cos(y[i], bank[q]) for q in range(bank.shape[0])]
        nearest = sorted(range(bank.shape[0]), key=lambda q: -sims[q])[:k]
        pos = [math.exp(_cos(x[i], y[i]) / TAU)]
        den = list(pos)
        for j in range(y.shape[0]):
            if j != i and not (src[i] >= 0 and src[j] == src[i]):
                den.append(math.exp(_cos(x[i], y[j]) / TAU))
        for q in range(bank.shape[0]):
            e = math.exp(_cos(x[i], bank[q]) / TAU)
            if q in nearest:
                pos.append(e)
                den.append(e)
            elif not (src[i] >= 0 and bank_src[q] == src[i]):
                den.append(e)
        out.append(-math.log(sum(pos) / sum(den)))
    return out


@pytest.mark.unit
def test_clips_of_the_same_video_are_not_negatives() -> None:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    bank = torch.randn(5, 4, generator=g)
    src, bank_src = [0, 0, 1, 1, 2, -1], [0, 1, 3, -1, 2]
    b = Bank(rows=bank, sources=torch.tensor(bank_src))
    nce = NCEConfig(temperature=TAU, knn_k=1)
    sources = (torch.tensor(src), torch.tensor(src))
    got = symmetric_nce(ContrastivePair(x=x, y=y, x_bank=b, y_bank=b, sources=sources), nce)
    xy, yx = _ref_masked(x, y, src, bank, bank_src, 1), _ref_masked(y, x, src, bank, bank_src, 1)
    expected = torch.tensor([0.5 * (a + b) for a, b in zip(xy, yx)])
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    plain = symmetric_nce(ContrastivePair(x=x, y=y, x_bank=b, y_bank=b), nce)
    assert (plain - got)[:5].min() > 0  # rows with a known video lose negatives
    assert plain[5] == pytest.approx(float(got[5]), rel=1e-6)  # source -1 matches nothing


@pytest.mark.unit
def test_total_loss_masks_same_video_rows_and_queues_their_sources() -> None:
    b = 4
    out, batch = _outputs(b), _labels(b, torch.ones(b))
    batch["source_key"] = torch.tensor([5, 5, 5, 5])  # every row from one video
    cfg = LossConfig(temperature=TAU, queue_size=8, knn_k=0)
    queue = FeatureQueue(8, 4)
    _, terms = total_loss(out, batch, cfg, queue)
    # Only the positive is left in each denominator, so both contrastive terms are exactly 0.
    assert terms["loss_vv"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["loss_va"].item() == pytest.approx(0.0, abs=1e-6)
    enqueue(queue, out, batch)
    assert queue.sources("vv").tolist() == [5, 5, 5, 5]
    # The queued rows are from the same video too: still no negatives.
    _, again = total_loss(out, batch, cfg, queue)
    assert again["loss_vv"].item() == pytest.approx(0.0, abs=1e-6)
    off = LossConfig(temperature=TAU, queue_size=8, knn_k=0, mask_same_source=False)
    _, unmasked = total_loss(out, batch, off, FeatureQueue(8, 4))
    assert unmasked["loss_vv"].item() > 0.1 and unmasked["loss_va"].item() > 0.1
