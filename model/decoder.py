"""PRNet's position-map decoder: 17 transposed convolutions (kernel 4) from (B, 512, 8, 8) to (B, 3, 256, 256).

Each layer = ConvTranspose2d (no bias) + BatchNorm + ReLU; the last BatchNorm is followed by tanh instead.
"""
from __future__ import annotations

import torch
from torch import nn

from .fold import fused_conv

# (out_channels, stride) of the 17 layers after the 512-channel 8x8 input, as in PRNet (channel x spatial size):
# 8^2x512, 16^2x256 (x3), 32^2x128 (x3), 64^2x64 (x3), 128^2x32 (x2), 256^2x16 (x2), 256^2x3 (x3).
PRNET_DECODER_LAYERS = (
    (512, 1),
    (256, 2), (256, 1), (256, 1),
    (128, 2), (128, 1), (128, 1),
    (64, 2), (64, 1), (64, 1),
    (32, 2), (32, 1),
    (16, 2), (16, 1),
    (3, 1), (3, 1), (3, 1),
)


class TransposedConvBNAct(nn.Module):
    """ConvTranspose2d(kernel 4, stride 1|2, TensorFlow 'same' geometry) + BatchNorm + activation.

    stride 2 doubles H and W exactly (padding 1); stride 1 keeps them (padding 1 gives H+1, the last row/column is
    dropped, i.e. TF's 'same' padding of 1 before / 2 after). BatchNorm eps 1e-3 as in PRNet.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: nn.Module):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"transposed conv stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.deconv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, stride*H, stride*W)."""
        h, w = x.shape[-2:]
        y = self.deconv(x)
        if self.stride == 1:
            y = y[:, :, :h, :w]
        return self.act(self.bn(y))

    def fuse_bn(self) -> None:
        """Inference twin: fold the (eval-mode) BatchNorm into the transposed convolution, in place."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.deconv, self.bn = fused_conv(self.deconv, self.bn), nn.Identity()


class PRNetDecoder(nn.Module):
    """(B, in_ch, 8, 8) -> (B, 3, 256, 256) in [-1, 1] (tanh); the network's position map / 280.

    channels_last=True (default) runs the layers in NHWC layout with NHWC weights: same results, faster on CPU
    (the 3- and 16-channel layers at 256^2 most of all); the output is returned as a contiguous NCHW tensor.
    """

    def __init__(self, in_ch: int = 512, layers=PRNET_DECODER_LAYERS, channels_last: bool = True):
        super().__init__()
        blocks = []
        for i, (out_ch, stride) in enumerate(layers):
            last = i == len(layers) - 1
            blocks.append(TransposedConvBNAct(in_ch, out_ch, stride, nn.Tanh() if last else nn.ReLU(inplace=True)))
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 512, 8, 8) -> (B, 3, 256, 256)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.layers(x).contiguous()
