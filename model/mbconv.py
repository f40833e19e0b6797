"""MBConv block (MobileNetV2/EfficientNet inverted residual as published in E2TKFace's neck): 1x1 conv + BN + SiLU,
depthwise 3x3 (optionally stride 2), squeeze-excitation, 1x1 conv + BN, residual when shapes match.

Works on NCHW tensors in either memory format (contiguous or channels_last); the output keeps the input's format.
"""
from __future__ import annotations

import torch
from torch import nn

from .fold import fused_conv


class SqueezeExcitation(nn.Module):
    """Channel gate: global mean -> Linear(C, C*ratio) -> SiLU -> Linear(C*ratio, C) -> sigmoid, multiplied in.

    Linear layers have no bias (as published).
    """

    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.reduce = nn.Linear(channels, hidden, bias=False)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        gate = x.mean(dim=(2, 3))                                   # (B, C)
        gate = torch.sigmoid(self.expand(self.act(self.reduce(gate))))
        return x * gate[:, :, None, None]


class MBConv(nn.Module):
    """MBConv(in_ch -> out_ch): the published variant works at out_ch width throughout (no expansion).

    stride 2 in the depthwise conv halves H and W. The residual is added only when in_ch == out_ch and stride == 1.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, se_ratio: float = 0.25):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.pointwise_in = nn.Conv2d(in_ch, out_ch, 1)
        self.bn_in = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True)
        self.depthwise = nn.Conv2d(out_ch, out_ch, 3, stride=stride, padding=1, groups=out_ch)
        self.se = SqueezeExcitation(out_ch, se_ratio)
        self.pointwise_out = nn.Conv2d(out_ch, out_ch, 1)
        self.bn_out = nn.BatchNorm2d(out_ch)
        self.use_residual = in_ch == out_ch and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)."""
        y = self.act(self.bn_in(self.pointwise_in(x)))
        y = self.se(self.depthwise(y))
        y = self.bn_out(self.pointwise_out(y))
        return x + y if self.use_residual else y

    def fuse_bn(self) -> None:
        """Inference twin: fold both (eval-mode) BatchNorms into the 1x1 convolutions before them, in place."""
        if isinstance(self.bn_in, nn.BatchNorm2d):
            self.pointwise_in, self.bn_in = fused_conv(self.pointwise_in, self.bn_in), nn.Identity()
            self.pointwise_out, self.bn_out = fused_conv(self.pointwise_out, self.bn_out), nn.Identity()
