"""PRNet baseline (Feng et al. 2018, as ported to PyTorch): a 16-channel 4x4 conv, 10 residual blocks down to
(B, 512, 8, 8), and the shared 17-layer transposed-conv decoder; registered as "prnet".
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .decoder import PRNetDecoder
from .fold import fuse_batchnorm
from .head import CROP_SIZE, PosmapIO, check_head
from .registry import register_model


def _conv4(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """4x4 conv with TensorFlow 'same' geometry: stride 1 pads 1 before / 2 after, stride 2 pads 1 each side."""
    if stride == 1:
        return nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_ch, out_ch, 4, bias=False))
    return nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=False)


class PRNetResBlock(nn.Module):
    """1x1 (out/2) + BN + ReLU -> 4x4 (out/2, stride) + BN + ReLU -> 1x1 (out); + shortcut; BN + ReLU.

    The shortcut is a 1x1 conv (with the block's stride) when the shape changes, else identity.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        mid = out_ch // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3), nn.ReLU(inplace=True),
            _conv4(mid, mid, stride), nn.BatchNorm2d(mid, eps=1e-3), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False))
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
                         if stride != 1 or in_ch != out_ch else nn.Identity())
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)."""
        return self.act(self.bn(self.body(x) + self.shortcut(x)))


class PRNetEncoder(nn.Module):
    """(B, 3, 256, 256) -> (B, 512, 8, 8): conv 3->16 (4x4) + BN + ReLU, then 10 residual blocks (stride 2 in every
    other one): 128^2x32, 64^2x64, 32^2x128, 16^2x256, 8^2x512."""

    def __init__(self, in_ch: int = 3, width: int = 16):
        super().__init__()
        layers = [_conv4(in_ch, width, 1), nn.BatchNorm2d(width, eps=1e-3), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(5):
            layers += [PRNetResBlock(ch, 2 * ch, stride=2), PRNetResBlock(2 * ch, 2 * ch, stride=1)]
            ch *= 2
        self.layers = nn.Sequential(*layers)
        self.out_ch = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, 512, H/32, W/32)."""
        return self.layers(x)


class PRNet(nn.Module):
    """PRNet: image (B, 3, 256, 256) in [0, 1] -> position map / 280, (B, 3, 256, 256). No loss in forward.

    The decoder runs in channels_last layout (as E2TKFace's); channels_last=True runs the encoder so too.
    input_size, head: model.head.PosmapIO (the network runs at input_size inside the 256 contract).
    """

    def __init__(self, channels_last: bool = False, input_size: int = CROP_SIZE, head: str = "published"):
        super().__init__()
        self.io = PosmapIO(input_size, head)
        self.encoder = PRNetEncoder()
        self.decoder = PRNetDecoder(self.encoder.out_ch, linear_output=head == "mean-residual")
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 256, 256) float in [0, 1] -> (B, 3, 256, 256) float32, position map / 280."""
        x = self.io.shrink(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.io.expand(self.decoder(self.encoder(x)))

    def export(self) -> "PRNet":
        """Inference twin in eval mode: a copy with every conv -> BatchNorm pair folded into one biased conv (the
        BatchNorm after each residual sum stays); same outputs up to float rounding."""
        was_training = self.training
        twin = copy.deepcopy(self.eval())
        self.train(was_training)
        return fuse_batchnorm(twin).eval()


@register_model("prnet")
def build_prnet(channels_last: bool = False, input_size: int = CROP_SIZE, head: str = "published") -> PRNet:
    """The PRNet baseline (13.35 M trainable parameters); input_size, head: model.head.PosmapIO."""
    check_head(head, input_size)
    return PRNet(channels_last, input_size, head)
