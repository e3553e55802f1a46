"""Video encoders: torchvision R(2+1)D-18 and a tiny (2+1)D ResNet of the same family.

Both take uint8 clips [B, 3, T, H, W] and normalise them on the device they run on, so the data
pipeline ships uint8 (4x smaller than float32). With `frame_diff=True` the encoder also sees the
frame differences x[t+1] - x[t] (zero for the last frame) as 3 extra input channels; with
`rgb=False` as well, it sees only those (residual frames): no still appearance, only what moves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.video import r2plus1d_18
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

from avtime.models.config import ModelConfig

# Kinetics-400 statistics used by torchvision's video models.
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


class VideoInput(nn.Module):
    """uint8 clips -> normalised float clips, optionally with frame differences appended (or, with
    `rgb=False`, the frame differences alone).

    Input [B, 3, T, H, W] uint8; output [B, C, T, H, W] float32 with C = 3 per part shown: the
    normalised frames (if `rgb`), then their differences (if `frame_diff`).
    """

    def __init__(self, frame_diff: bool, rgb: bool = True) -> None:
        super().__init__()
        if not (frame_diff or rgb):
            raise ValueError("the video input needs the frames (rgb) or their differences")
        self.frame_diff = frame_diff
        self.rgb = rgb
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(VIDEO_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(VIDEO_STD).view(1, 3, 1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        """Number of output channels."""
        return 3 * (int(self.rgb) + int(self.frame_diff))

    def forward(self, video: Tensor) -> Tensor:
        """[B, 3, T, H, W] uint8 (or float in [0, 255]) -> [B, C, T, H, W] float32."""
        x = video.float() / 255.0
        x = (x - self.mean) / self.std
        if not self.frame_diff:
            return x
        diff = torch.zeros_like(x)
        diff[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
        return torch.cat([x, diff], dim=1) if self.rgb else diff


class R2Plus1DEncoder(nn.Module):
    """torchvision `r2plus1d_18` (random init) up to global average pooling; 512-d features."""

    def __init__(self, frame_diff: bool = False, rgb: bool = True) -> None:
        super().__init__()
        self.input = VideoInput(frame_diff, rgb)
        net = r2plus1d_18(weights=None)
        if self.input.channels != 3:
            # torchvision's R2Plus1dStem first conv, with 6 input channels instead of 3.
            net.stem[0] = nn.Conv3d(
                self.input.channels, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
            )
            nn.init.kaiming_normal_(net.stem[0].weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.out_dim = 512

    def forward(self, video: Tensor) -> Tensor:
        """[B, 3, T, H, W] uint8 -> [B, 512] pooled features."""
        out: Tensor = self.net(self.input(video))
        return out


def _layer(inplanes: int, planes: int, stride: int) -> nn.Module:
    """One torchvision (2+1)D BasicBlock, with a strided 1x1x1 projection shortcut if needed."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv3d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm3d(planes),
        )
    return BasicBlock(inplanes, planes, Conv2Plus1D, stride, downsample)


class TinyVideoEncoder(nn.Module):
    """A small R(2+1)D: a (2+1)D stem and four (2+1)D BasicBlocks, like `r2plus1d_18` with one
    block per stage and narrow channels; 4 * width pooled features.

    Width w, on a T x H x W clip: stem (1x7x7 spatial conv, stride 1x4x4, then a 3x1x1 temporal
    conv) to w/2 channels at T x H/4 x W/4; block 1 (w/2, stride 1x2x2, so every frame is kept),
    blocks 2-4 (w, 2w, 4w, stride 2 in time and space); global average pooling. Sized for CPU
    training on 8 x 64 x 64 clips.
    """

    def __init__(self, width: int = 32, frame_diff: bool = False, rgb: bool = True) -> None:
        super().__init__()
        self.input = VideoInput(frame_diff, rgb)
        half = max(width // 2, 4)
        self.stem = nn.Sequential(
            nn.Conv3d(self.input.channels, half, (1, 7, 7), (1, 4, 4), (0, 3, 3), bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, half, (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
        )
        self.layer1 = _spatial_block(half, half)
        self.layer2 = _layer(half, width, 2)
        self.layer3 = _layer(width, 2 * width, 2)
        self.layer4 = _layer(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = 4 * width
        _init_video(self)

    def forward(self, video: Tensor) -> Tensor:
        """[B, 3, T, H, W] uint8 -> [B, 4 * width] pooled features."""
        x = self.layer1(self.stem(self.input(video)))
        x = self.layer4(self.layer3(self.layer2(x)))
        return self.pool(x).flatten(1)


def _spatial_block(inplanes: int, planes: int) -> nn.Module:
    """A (2+1)D BasicBlock that halves H and W but keeps every frame (for temporal tasks)."""
    block = _layer(inplanes, planes, 1)
    assert isinstance(block, BasicBlock)
    first = block.conv1[0]
    assert isinstance(first, Conv2Plus1D)
    spatial = first[0]
    assert isinstance(spatial, nn.Conv3d)
    spatial.stride = (1, 2, 2)
    block.downsample = nn.Sequential(
        nn.Conv3d(inplanes, planes, kernel_size=1, stride=(1, 2, 2), bias=False),
        nn.BatchNorm3d(planes),
    )
    return block


def _init_video(module: nn.Module) -> None:
    """torchvision's VideoResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class TwoStreamVideoEncoder(nn.Module):
    """An appearance stream (as configured) and a motion stream that sees only frame differences,
    each an encoder of `cfg.video_arch`; their pooled features are concatenated, appearance first.

    `motion_slice` picks the motion stream's columns: the video-video contrastive term reads only
    those, and alone trains them (models/av.py), so matching two clips of one video cannot rest on
    its still background.
    """

    def __init__(self, appearance: nn.Module, motion: nn.Module) -> None:
        super().__init__()
        self.appearance = appearance
        self.motion = motion
        a, m = int(appearance.out_dim), int(motion.out_dim)  # type: ignore[arg-type]
        self.out_dim = a + m
        self.motion_slice = slice(a, a + m)

    def forward(self, video: Tensor) -> Tensor:
        """[B, 3, T, H, W] uint8 -> [B, Fa + Fm] pooled features (appearance, then motion)."""
        return torch.cat([self.appearance(video), self.motion(video)], dim=1)


VideoEncoder = R2Plus1DEncoder | TinyVideoEncoder | TwoStreamVideoEncoder


def _single(cfg: ModelConfig, frame_diff: bool, rgb: bool) -> R2Plus1DEncoder | TinyVideoEncoder:
    if cfg.video_arch == "r2plus1d_18":
        return R2Plus1DEncoder(frame_diff=frame_diff, rgb=rgb)
    return TinyVideoEncoder(width=cfg.tiny_width, frame_diff=frame_diff, rgb=rgb)


def build_video_encoder(cfg: ModelConfig) -> VideoEncoder:
    """The video encoder named by `cfg.video_arch` (two of them with `cfg.motion_stream`);
    `.out_dim` is its feature size."""
    first = _single(cfg, cfg.frame_diff, cfg.video_rgb)
    if not cfg.motion_stream:
        return first
    return TwoStreamVideoEncoder(first, _single(cfg, frame_diff=True, rgb=False))
