"""Audio encoders: a log-mel front end (torchaudio) feeding a 2-D ResNet.

The front end runs on the training device, in float32 even under autocast: waveform [B, L] ->
log-mel [B, 1, n_mels, frames], standardised per example over (mel, time) so that silent rows
(all zeros, no audio) give zeros rather than NaN. The full encoder is torchvision's resnet18 with a
1-channel first convolution; the tiny one is a small ResNet of torchvision BasicBlocks.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from avtime.models.config import ModelConfig


class LogMel(nn.Module):
    """Waveform -> standardised log-mel spectrogram.

    Args:
        sample_rate: Hz of the input waveform.
        n_mels: number of mel bins.
        win_ms, hop_ms: STFT window and hop in milliseconds (n_fft = next power of 2 >= window).
    """

    def __init__(self, sample_rate: int, n_mels: int, win_ms: float, hop_ms: float) -> None:
        super().__init__()
        win = round(sample_rate * win_ms / 1000.0)
        hop = round(sample_rate * hop_ms / 1000.0)
        n_fft = 1 << max(0, math.ceil(math.log2(win)))
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win,
            hop_length=hop,
            n_mels=n_mels,
            power=2.0,
        )

    def forward(self, audio: Tensor) -> Tensor:
        """[B, L] float waveform in [-1, 1] -> [B, 1, n_mels, 1 + L // hop] float32."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = self.mel(audio.float())
            logmel = torch.log(spec + 1e-6)
            mean = logmel.mean(dim=(1, 2), keepdim=True)
            std = logmel.std(dim=(1, 2), keepdim=True)
            # A constant spectrogram (silence) has std ~ 0: map it to exact zeros, not noise.
            flat = std < 1e-4
            out = torch.where(flat, torch.zeros_like(logmel), (logmel - mean) / std.clamp(min=1e-4))
        return out.unsqueeze(1)


class ResNet18Audio(nn.Module):
    """torchvision resnet18 (random init) with 1 input channel; 512-d pooled features."""

    def __init__(self) -> None:
        super().__init__()
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.out_dim = 512

    def forward(self, spec: Tensor) -> Tensor:
        """[B, 1, n_mels, frames] -> [B, 512]."""
        out: Tensor = self.net(spec)
        return out


def _block(inplanes: int, planes: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    return BasicBlock(inplanes, planes, stride, downsample)


class TinyResNetAudio(nn.Module):
    """A small 2-D ResNet: 3x3 stem (stride 2) to w/2, BasicBlocks of w, 2w, 4w (stride 2 each)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        half = max(width // 2, 4)
        self.stem = nn.Sequential(
            nn.Conv2d(1, half, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )
        self.layers = nn.Sequential(
            _block(half, width, 2), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, spec: Tensor) -> Tensor:
        """[B, 1, n_mels, frames] -> [B, 4 * width]."""
        return self.pool(self.layers(self.stem(spec))).flatten(1)


class AudioEncoder(nn.Module):
    """Log-mel front end + 2-D ResNet. `out_dim` is the pooled feature size."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.frontend = LogMel(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms)
        backbone: nn.Module
        if cfg.audio_arch == "resnet18":
            backbone = ResNet18Audio()
        else:
            backbone = TinyResNetAudio(cfg.tiny_width)
        self.backbone = backbone
        self.out_dim: int = backbone.out_dim  # type: ignore[assignment]

    def forward(self, audio: Tensor) -> Tensor:
        """[B, L] float32 waveform -> [B, out_dim] pooled features."""
        out: Tensor = self.backbone(self.frontend(audio))
        return out
