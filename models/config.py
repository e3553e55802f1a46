"""Configs of the model side: encoders, heads and losses (frozen, keyword-only, validated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Encoders and heads."""

    video_arch: Literal["r2plus1d_18", "tiny"] = "r2plus1d_18"
    audio_arch: Literal["resnet18", "tiny"] = "resnet18"
    tiny_width: int = 32  # channel width of the tiny variants
    frame_diff: bool = False  # feed x[t+1]-x[t] as extra channels (helps direction on tiny nets)
    video_rgb: bool = True  # False (with frame_diff): the video encoder sees only the differences
    motion_stream: bool = False  # add a second video encoder on frame differences only (for vv)
    motion_grad: float = 0.0  # share of the other heads' gradients that reaches the motion stream
    embed_dim: int = 128  # contrastive embedding size
    proj_hidden: int = 512  # projection MLP hidden size
    head_hidden: int = 256  # temporal head MLP hidden size
    sample_rate: int = 16000  # audio sample rate the front end expects
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.embed_dim < 2 or self.proj_hidden < 1 or self.head_hidden < 1:
            raise ValueError("embed_dim, proj_hidden and head_hidden must be positive")
        if self.n_mels < 8 or self.hop_ms <= 0 or self.win_ms < self.hop_ms:
            raise ValueError("need n_mels >= 8 and win_ms >= hop_ms > 0")
        if not 0.0 <= self.motion_grad <= 1.0:
            raise ValueError(f"motion_grad must be in [0, 1], got {self.motion_grad}")
        if not (self.video_rgb or self.frame_diff):
            raise ValueError(
                "video_rgb=false needs frame_diff=true: the encoder must see something"
            )


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Loss weights and contrastive switches. A weight of 0 skips that term entirely."""

    temperature: float = 0.1
    w_vv: float = 1.0  # InfoNCE v1 <-> v2
    w_va: float = 1.0  # InfoNCE v_i <-> a_i
    w_speed: float = 1.0  # speed heads (video and audio)
    w_direction: float = 1.0  # direction heads (video and audio)
    w_order_intra: float = 1.0  # (v1,v2) and (a1,a2) order heads
    w_order_inter: float = 1.0  # (v1,a2) and (v2,a1) order heads
    queue_size: int = 4096  # FIFO of past embeddings; 0 = no queue
    knn_k: int = 5  # queue neighbours of the positive used as extra positives; 0 = none
    queue_negatives: bool = True  # use the rest of the queue as extra negatives
    mask_same_source: bool = True  # a clip's own video is never its negative (batch and queue)
    key_momentum: float = 0.0  # > 0: queue rows come from a momentum (EMA) copy of the model

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        weights = [self.w_vv, self.w_va, self.w_speed, self.w_direction]
        if min(weights + [self.w_order_intra, self.w_order_inter]) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.queue_size < 0 or self.knn_k < 0:
            raise ValueError("queue_size and knn_k must be >= 0")
        if not 0.0 <= self.key_momentum < 1.0:
            raise ValueError(f"key_momentum must be in [0, 1), got {self.key_momentum}")
        if self.knn_k > self.queue_size:
            raise ValueError(f"knn_k ({self.knn_k}) must be <= queue_size ({self.queue_size})")
