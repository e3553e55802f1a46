"""The audio-visual model: two encoders, contrastive projections and temporal heads.

`AVModel.forward(video1, video2, audio1, audio2)` returns a dict of embeddings and logits, never
losses (see `models.losses.total_loss`). Shapes, with B examples, S = num_speeds, D = embed_dim,
Fv / Fa the pooled video / audio feature sizes; index 1 of a `[B, 2, ...]` output is clip 1 / 2:

| key | shape | what |
|---|---|---|
| feat_video, feat_audio | [B, 2, Fv], [B, 2, Fa] | pooled encoder features of (v1, v2), (a1, a2) |
| emb_vv | [B, 2, D] | video projections for the video-video InfoNCE (not normalised) |
| emb_va_video, emb_va_audio | [B, 2, D] | video / audio projections for the video-audio InfoNCE |
| logits_video_speed, logits_audio_speed | [B, 2, S] | speed class per clip |
| logits_video_reverse, logits_audio_reverse | [B, 2, 2] | direction per clip (1 = reversed) |
| logits_video_order, logits_audio_order | [B, 3] | order of (v1, v2), of (a1, a2) |
| logits_av_order | [B, 2, 3] | order of (v1, a2) and of (v2, a1), through one shared head |

Which modules exist depends on `loss_cfg` (optional): a head whose loss weight is 0 is not built
and its outputs are absent, and the audio encoder is not built when no enabled term needs audio,
so ablations cost nothing and DDP sees no unused parameters. Without `loss_cfg`, everything is
built. Inputs: video uint8 [B, 3, T, H, W] (normalised here, on the model's device); audio float32
[B, L] at `model_cfg.sample_rate`. Works under `torch.autocast` (the log-mel front end and the
losses stay in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avtime.models.audio import AudioEncoder
from avtime.models.config import LossConfig, ModelConfig
from avtime.models.heads import MLP, ClipHead, PairHead
from avtime.models.video import build_video_encoder


@dataclass(frozen=True, kw_only=True)
class EnabledParts:
    """Which projections and heads a loss config needs (all of them by default)."""

    vv: bool = True
    va: bool = True
    speed: bool = True
    direction: bool = True
    order_intra: bool = True
    order_inter: bool = True

    @classmethod
    def from_loss(cls, loss_cfg: LossConfig | None) -> EnabledParts:
        """Parts with a non-zero weight in `loss_cfg`; all parts when it is None."""
        if loss_cfg is None:
            return cls()
        return cls(
            vv=loss_cfg.w_vv > 0,
            va=loss_cfg.w_va > 0,
            speed=loss_cfg.w_speed > 0,
            direction=loss_cfg.w_direction > 0,
            order_intra=loss_cfg.w_order_intra > 0,
            order_inter=loss_cfg.w_order_inter > 0,
        )

    @property
    def audio(self) -> bool:
        """Whether any enabled part reads audio."""
        return self.va or self.speed or self.direction or self.order_intra or self.order_inter


class AVModel(nn.Module):
    """Video and audio encoders with contrastive projections and temporal heads.

    Args:
        model_cfg: encoder and head sizes.
        num_speeds: number of speed classes (len(data_cfg.pretext.speeds)).
        loss_cfg: optional; heads whose weight is 0 are not built (see module docstring).
    """

    def __init__(
        self, model_cfg: ModelConfig, num_speeds: int, *, loss_cfg: LossConfig | None = None
    ) -> None:
        super().__init__()
        if num_speeds < 1:
            raise ValueError(f"num_speeds must be >= 1, got {num_speeds}")
        self.cfg = model_cfg
        self.num_speeds = num_speeds
        self.parts = parts = EnabledParts.from_loss(loss_cfg)
        self.video = build_video_encoder(model_cfg)
        self.audio = AudioEncoder(model_cfg) if parts.audio else None
        fv = self.video.out_dim
        fa = self.audio.out_dim if self.audio is not None else 0
        d, ph, hh = model_cfg.embed_dim, model_cfg.proj_hidden, model_cfg.head_hidden
        self.heads = nn.ModuleDict()
        if parts.vv:
            self.heads["proj_vv"] = MLP(len(range(fv)[self.vv_columns]), ph, d)
        if parts.va:
            self.heads["proj_va_video"] = MLP(fv, ph, d)
            self.heads["proj_va_audio"] = MLP(fa, ph, d)
        if parts.speed:
            self.heads["video_speed"] = ClipHead(fv, hh, num_speeds)
            self.heads["audio_speed"] = ClipHead(fa, hh, num_speeds)
        if parts.direction:
            self.heads["video_reverse"] = ClipHead(fv, hh, 2)
            self.heads["audio_reverse"] = ClipHead(fa, hh, 2)
        if parts.order_intra:
            self.heads["video_order"] = PairHead(2 * fv, hh)
            self.heads["audio_order"] = PairHead(2 * fa, hh)
        if parts.order_inter:
            self.heads["av_order"] = PairHead(fv + fa, hh)

    @property
    def vv_columns(self) -> slice:
        """The video feature columns the video-video term reads: the motion stream's, if any."""
        motion = getattr(self.video, "motion_slice", None)
        return motion if isinstance(motion, slice) else slice(None)

    @property
    def video_dim(self) -> int:
        """Fv, the pooled video feature size."""
        return int(self.video.out_dim)

    @property
    def audio_dim(self) -> int:
        """Fa, the pooled audio feature size (0 when no audio encoder is built)."""
        return int(self.audio.out_dim) if self.audio is not None else 0

    def encode_video(self, video: Tensor) -> Tensor:
        """uint8 [B, 3, T, H, W] -> pooled video features [B, Fv]."""
        out: Tensor = self.video(video)
        return out

    def encode_audio(self, audio: Tensor) -> Tensor:
        """float32 waveform [B, L] -> pooled audio features [B, Fa]."""
        if self.audio is None:
            raise RuntimeError("this AVModel has no audio encoder (no enabled loss reads audio)")
        out: Tensor = self.audio(audio)
        return out

    def forward(
        self, video1: Tensor, video2: Tensor, audio1: Tensor | None, audio2: Tensor | None
    ) -> dict[str, Tensor]:
        """Embeddings and logits for a batch of clip pairs (see the module docstring)."""
        b = video1.shape[0]
        fv = self.encode_video(torch.cat([video1, video2], dim=0))  # [2B, Fv]
        out: dict[str, Tensor] = {"feat_video": _pair(fv, b)}
        fa: Tensor | None = None
        if self.audio is not None:
            if audio1 is None or audio2 is None:
                raise ValueError("this AVModel needs audio1 and audio2")
            fa = self.encode_audio(torch.cat([audio1, audio2], dim=0))  # [2B, Fa]
            out["feat_audio"] = _pair(fa, b)
        heads = self.heads
        if "proj_vv" in heads:
            out["emb_vv"] = _pair(heads["proj_vv"](fv[:, self.vv_columns]), b)
        fv = self._scale_motion_grad(fv)  # the other heads train the motion stream less, or not
        if "proj_va_video" in heads and fa is not None:
            out["emb_va_video"] = _pair(heads["proj_va_video"](fv), b)
            out["emb_va_audio"] = _pair(heads["proj_va_audio"](fa), b)
        out.update(self._temporal(fv, fa, b))
        return out

    def _scale_motion_grad(self, fv: Tensor) -> Tensor:
        """fv [2B, Fv] with the motion stream's columns (if any) passing only `cfg.motion_grad` of
        their gradient back (0: detached, so vv alone trains them). Without a vv term nothing is
        scaled, so the stream still learns (and DDP sees no unused parameters)."""
        cols = self.vv_columns
        if cols == slice(None) or "proj_vv" not in self.heads or self.cfg.motion_grad >= 1.0:
            return fv
        keep = torch.ones(fv.shape[1], dtype=torch.bool, device=fv.device)
        keep[cols] = False
        held = fv.detach()
        scaled = held + self.cfg.motion_grad * (fv - held) if self.cfg.motion_grad > 0 else held
        return torch.where(keep, fv, scaled)

    def _temporal(self, fv: Tensor, fa: Tensor | None, b: int) -> dict[str, Tensor]:
        """Logits of the temporal heads from the pooled features fv [2B, Fv], fa [2B, Fa]."""
        heads, out = self.heads, {}
        v1, v2 = fv[:b], fv[b:]
        for task in ("speed", "reverse"):
            if f"video_{task}" in heads:
                out[f"logits_video_{task}"] = heads[f"video_{task}"](v1, v2)
                if fa is not None:
                    out[f"logits_audio_{task}"] = heads[f"audio_{task}"](fa[:b], fa[b:])
        if "video_order" in heads:
            out["logits_video_order"] = heads["video_order"](v1, v2)
            if fa is not None:
                out["logits_audio_order"] = heads["audio_order"](fa[:b], fa[b:])
        if "av_order" in heads and fa is not None:
            # (v1, a2) and (v2, a1) as one batch of 2B rows through the shared head.
            logits = heads["av_order"](fv, torch.cat([fa[b:], fa[:b]], dim=0))
            out["logits_av_order"] = _pair(logits, b)
        return out


def _pair(x: Tensor, b: int) -> Tensor:
    """[2B, ...] with clip 1 rows first -> [B, 2, ...]."""
    return x.view(2, b, *x.shape[1:]).transpose(0, 1)
