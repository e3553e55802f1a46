"""The encoders of a checkpoint as one torch module, for MLflow's `pytorch` flavor.

`training.eval.pyfunc.save_model` exports `EmbedderModule` with `torch.export` (MLflow's
`serialization_format="pt2"`): the archive holds the graph as JSON and the weights as plain
tensor records, so `mlflow.pytorch.load_model` gives it back without unpickling code (MLflow
checks every record before loading), and without avtime installed. What it returns is a
`torch.fx.GraphModule` that computes exactly what `avtime embed` writes:

    module(video, audio) -> {"video": float32 [N, Dv], "audio": float32 [M, Da]}

with video uint8 [N, 3, T, S, S] and audio float32 [M, L] (N and M are free). A model logged
with one modality takes only that one: `module(video)` or `module(audio)`.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor, nn

from avtime.training.eval.clips import ClipConfig


class EmbedderModule(nn.Module):
    """The video and/or audio encoder of an AVModel (`encoders`, by modality name); the
    subclasses below take one clip tensor per modality and return its pooled features."""

    def __init__(self, model_cfg: Any, state: bytes, modalities: tuple[str, ...]) -> None:
        """`state`: `torch.save` bytes of the encoders' weights ("video.*", "audio.*"), as
        `features.encoder_state` writes them; read back with weights_only=True."""
        from avtime.models.audio import AudioEncoder
        from avtime.models.video import build_video_encoder

        super().__init__()
        sd = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
        self.encoders = nn.ModuleDict()
        for name in modalities:
            net = build_video_encoder(model_cfg) if name == "video" else AudioEncoder(model_cfg)
            net.load_state_dict({k[len(name) + 1 :]: v for k, v in sd.items()
                                 if k.startswith(f"{name}.")})  # fmt: skip
            self.encoders[name] = net
        self.eval()

    def embed(self, name: str, x: Tensor) -> Tensor:
        """Clips of modality `name` [N, ...] -> pooled float32 features [N, D]."""
        out: Tensor = self.encoders[name](x).float()
        return out


class VideoAudioEmbedder(EmbedderModule):
    def forward(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """video uint8 [N, 3, T, S, S], audio float32 [M, L] -> {"video": [N, Dv],
        "audio": [M, Da]} float32."""
        return {"video": self.embed("video", video), "audio": self.embed("audio", audio)}


class VideoEmbedder(EmbedderModule):
    def forward(self, video: Tensor) -> dict[str, Tensor]:
        """video uint8 [N, 3, T, S, S] -> {"video": float32 [N, Dv]}."""
        return {"video": self.embed("video", video)}


class AudioEmbedder(EmbedderModule):
    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        """audio float32 [M, L] -> {"audio": float32 [M, Da]}."""
        return {"audio": self.embed("audio", audio)}


KINDS: dict[tuple[str, ...], type[EmbedderModule]] = {
    ("video", "audio"): VideoAudioEmbedder,
    ("video",): VideoEmbedder,
    ("audio",): AudioEmbedder,
}


def build_embedder(model_cfg: Any, state: bytes, modalities: tuple[str, ...]) -> EmbedderModule:
    """The module whose forward takes exactly `modalities` (("video", "audio"), ("video",) or
    ("audio",)), weights from `state`, in eval mode."""
    return KINDS[tuple(modalities)](model_cfg, state, modalities)


def example_inputs(clip: ClipConfig, modalities: tuple[str, ...]) -> tuple[Tensor, ...]:
    """Two clips per modality to trace with (a batch of 2, so the batch dimension stays free):
    video uint8 [2, 3, T, S, S] zeros, audio float32 [2, L] zeros."""
    s, t = clip.crop_size, clip.clip_frames
    shapes = {"video": (2, 3, t, s, s), "audio": (2, clip.audio_len)}
    dtypes = {"video": torch.uint8, "audio": torch.float32}
    return tuple(torch.zeros(shapes[m], dtype=dtypes[m]) for m in modalities)
