"""Small configs and random pretext batches for the model tests."""

from __future__ import annotations

import torch
from torch import Tensor

from avtime.models.config import LossConfig, ModelConfig

NUM_SPEEDS = 4
SAMPLE_RATE = 16000


def tiny_model_cfg(**overrides: object) -> ModelConfig:
    """A very small model for fast CPU tests (width 8, 16 mel bins)."""
    kw: dict[str, object] = dict(
        video_arch="tiny", audio_arch="tiny", tiny_width=8, frame_diff=True, embed_dim=16,
        proj_hidden=32, head_hidden=32, n_mels=16, sample_rate=SAMPLE_RATE,
    )  # fmt: skip
    kw.update(overrides)
    return ModelConfig(**kw)  # type: ignore[arg-type]


def loss_cfg(**overrides: object) -> LossConfig:
    """All terms on, a small queue."""
    kw: dict[str, object] = dict(temperature=0.2, queue_size=16, knn_k=2, queue_negatives=True)
    kw.update(overrides)
    return LossConfig(**kw)  # type: ignore[arg-type]


def make_batch(
    b: int,
    seed: int,
    *,
    frames: int = 4,
    size: int = 32,
    audio_len: int = 2560,
    has_audio: Tensor | None = None,
) -> dict[str, Tensor]:
    """A random pretext batch with the keys and dtypes of docs/CONTRACTS.md section 2."""
    g = torch.Generator().manual_seed(seed)

    def ints(high: int, *shape: int) -> Tensor:
        return torch.randint(0, high, shape, generator=g)

    def clip() -> Tensor:
        return torch.randint(0, 256, (b, 3, frames, size, size), generator=g).to(torch.uint8)

    def wave() -> Tensor:
        return (0.3 * torch.randn(b, audio_len, generator=g)).clamp(-1, 1)

    ha = has_audio if has_audio is not None else torch.ones(b)
    audio1, audio2 = wave() * ha[:, None], wave() * ha[:, None]
    return {
        "video1": clip(), "video2": clip(), "audio1": audio1, "audio2": audio2,
        "has_audio": ha.float(),
        "label_video_speed": ints(NUM_SPEEDS, b, 2), "label_audio_speed": ints(NUM_SPEEDS, b, 2),
        "label_video_reverse": ints(2, b, 2), "label_audio_reverse": ints(2, b, 2),
        "label_video_order": ints(3, b), "label_audio_order": ints(3, b),
        "label_av_order": ints(3, b, 2),
    }  # fmt: skip


def slice_batch(batch: dict[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Rows start:stop of every key."""
    return {k: v[start:stop] for k, v in batch.items()}


def forward(model: torch.nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's outputs on a batch."""
    out: dict[str, Tensor] = model(
        batch["video1"], batch["video2"], batch["audio1"], batch["audio2"]
    )
    return out
