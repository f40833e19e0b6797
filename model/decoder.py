"""PRNet's position-map decoder: 17 transposed convolutions (kernel 4) from (B, 512, 8, 8) to (B, 3, 256, 256).

Each layer = ConvTranspose2d (no bias) + BatchNorm + ReLU; the last BatchNorm is followed by tanh instead.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

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

    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: nn.Module, linear: bool = False):
        """linear=True: no BatchNorm or activation, a bias instead, and weights and bias start at zero (the output
        layer of the mean-residual head, model.head.PosmapIO); ``activation`` is then ignored."""
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"transposed conv stride must be 1 or 2, got {stride}")
        self.stride, self.crop = stride, stride == 1
        self.deconv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=linear)
        self.bn = nn.Identity() if linear else nn.BatchNorm2d(out_ch, eps=1e-3)
        self.act = nn.Identity() if linear else activation
        if linear:
            nn.init.zeros_(self.deconv.weight)
            nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, stride*H, stride*W)."""
        h, w = x.shape[-2:]
        y = self.deconv(x)
        if self.crop:
            y = y[:, :, :h, :w]
        return self.act(self.bn(y))

    def fuse_bn(self) -> None:
        """Inference twin: fold the (eval-mode) BatchNorm into the transposed convolution, in place."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.deconv, self.bn = fused_conv(self.deconv, self.bn), nn.Identity()

    def as_convolution(self) -> None:
        """Inference twin: fold the BatchNorm, then compute the transposed convolution and the activation with an
        ordinary convolution (TransposedAsConv), in place. Same results (float rounding aside); the form int8 runtimes
        fuse (onnxruntime has no int8 ConvTranspose kernel) and, for stride 1, a faster one in fp32 too."""
        self.fuse_bn()
        if isinstance(self.deconv, nn.ConvTranspose2d):
            self.deconv = TransposedAsConv(self.deconv, crop=self.crop, activation=self.act)
            self.act, self.crop = nn.Identity(), False   # the activation now runs before the pixel shuffle


class TransposedAsConv(nn.Module):
    """A ConvTranspose2d computed exactly as one Conv2d followed by pixel shuffle (ONNX: Conv + DepthToSpace).

    Supports square kernels K divisible by the stride s with (K - 2 * padding) divisible by s, no groups, dilation or
    output padding. In one dimension, output o = s*m + a of the transposed conv is sum_t x[m + start_a + t] *
    w[s*(J-1-t) + (a + p) % s] for t < J = K/s, with start_a = (a + p) // s - J + 1: every phase a is a J-tap
    correlation. One Conv2d whose kernel spans the union of the phases' taps (J + max start - min start; 4 for
    stride 1, 3 for PRNet's stride-2 layers, whose unused taps are zero) gives all s*s phases as channel groups in
    (C_out, a, b) order, and pixel shuffle interleaves them. The zero taps cost (3/2)^2 the arithmetic of a stride-2
    layer, which int8 runtimes repay many times over (onnxruntime has no int8 ConvTranspose kernel).
    crop=True (stride 1 only) keeps the first H x W outputs, as TransposedConvBNAct does (TF 'same').
    In ONNX: [Pad] + Conv (+ activation) [+ DepthToSpace].

    x: (B, C_in, H, W) -> (B, C_out, s*H, s*W) when s == 2 or crop, else the transposed conv's own output size.
    """

    def __init__(self, deconv: nn.ConvTranspose2d, crop: bool = False, activation: nn.Module | None = None):
        """deconv: the (BatchNorm-folded) transposed convolution; activation: an elementwise module applied to the
        convolution's output before the pixel shuffle (the same thing, since the shuffle only moves values)."""
        super().__init__()
        (k, k2), (s, s2), (p, p2) = deconv.kernel_size, deconv.stride, deconv.padding
        if (k, s, p) != (k2, s2, p2) or k % s or (k - 2 * p) % s or deconv.groups != 1 \
                or tuple(deconv.dilation) != (1, 1) or tuple(deconv.output_padding) != (0, 0) or (crop and s != 1):
            raise ValueError(f"TransposedAsConv needs a square kernel K divisible by the stride s, (K - 2 * padding) "
                             f"divisible by s, no groups, dilation or output padding (got {deconv})")
        taps = k // s
        starts = [(a + p) // s - taps + 1 for a in range(s)]
        span = taps + max(starts) - min(starts)
        grow = 0 if crop else (k - 2 * p) // s - 1                  # per-phase output size minus input size
        before = -min(starts)
        after = grow + span - 1 - before                            # conv output size = H + grow
        symmetric = before == after and before >= 0                 # then the conv pads by itself
        self.stride, self.pad = s, None if symmetric else (before, after, before, after)
        w = deconv.weight.detach()                                  # (C_in, C_out, K, K)
        c_in, c_out = w.shape[:2]
        weight = w.new_zeros(c_out, s, s, c_in, span, span)
        for a in range(s):
            for b in range(s):
                for t in range(taps):
                    for u in range(taps):
                        weight[:, a, b, :, starts[a] - min(starts) + t, starts[b] - min(starts) + u] = \
                            w[:, :, s * (taps - 1 - t) + (a + p) % s, s * (taps - 1 - u) + (b + p) % s].t()
        self.conv = nn.Conv2d(c_in, c_out * s * s, span, padding=before if symmetric else 0,
                              bias=deconv.bias is not None).to(device=w.device, dtype=w.dtype)
        self.act = activation if activation is not None else nn.Identity()
        with torch.no_grad():
            self.conv.weight.copy_(weight.reshape(c_out * s * s, c_in, span, span))
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(s * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H_out, W_out) (see the class docstring)."""
        y = self.act(self.conv(x if self.pad is None else F.pad(x, self.pad)))
        return y if self.stride == 1 else F.pixel_shuffle(y, self.stride)


class PRNetDecoder(nn.Module):
    """(B, in_ch, 8, 8) -> (B, 3, 256, 256) in [-1, 1] (tanh); the network's position map / 280.

    linear_output=True: the last layer is linear and starts at zero (TransposedConvBNAct(linear=True)), for the
    mean-residual head; its output is then a residual, not bounded by tanh.

    channels_last=True (default) runs the layers in NHWC layout with NHWC weights: same results, faster on CPU
    (the 3- and 16-channel layers at 256^2 most of all); the output is returned as a contiguous NCHW tensor.
    """

    def __init__(self, in_ch: int = 512, layers=PRNET_DECODER_LAYERS, channels_last: bool = True,
                 linear_output: bool = False):
        super().__init__()
        blocks = []
        for i, (out_ch, stride) in enumerate(layers):
            last = i == len(layers) - 1
            blocks.append(TransposedConvBNAct(in_ch, out_ch, stride, nn.Tanh() if last else nn.ReLU(inplace=True),
                                              linear=last and linear_output))
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


def as_convolutions(module: nn.Module, strides=(1, 2), min_out_channels: int = 4) -> nn.Module:
    """Inference twins: TransposedConvBNAct.as_convolution() on every decoder layer of ``module`` (in place, eval
    mode) whose stride is in ``strides`` and that has at least ``min_out_channels`` output channels (layers already
    converted are left alone). Returns module.

    onnxruntime (2 Zen 4 cores, 2026-11-25): stride-1 layers run faster as convolutions in fp32 as well; stride-2
    layers only pay off in int8 (their convolution spans 3x3 taps, (3/2)^2 the arithmetic); the 3-channel output
    layers run faster as transposed convolutions and are the layers an int8 export keeps in float.
    """
    for m in module.modules():
        if isinstance(m, TransposedConvBNAct) and isinstance(m.deconv, nn.ConvTranspose2d) and m.stride in strides \
                and m.deconv.out_channels >= min_out_channels:
            m.as_convolution()
    return module
