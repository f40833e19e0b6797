"""Folding eval-mode BatchNorm into the convolution before it: one place for the arithmetic used by every export().

bn(conv(x)) = conv'(x) with conv'.weight = conv.weight * scale (per output channel) and conv'.bias =
conv.bias * scale + shift, where scale = gamma / sqrt(running_var + eps) and shift = beta - running_mean * scale.
Computed in float64, written in the destination's dtype.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float64 (scale, shift) with bn(x) = x * scale + shift (eval mode, running statistics)."""
    scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    return scale, (shift + bn.bias.double()) if bn.affine else shift


@torch.no_grad()
def write_folded(dst: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
                 shift: torch.Tensor | None, out_dim: int = 0) -> None:
    """dst.weight, dst.bias <- (weight, bias) followed by x * scale + shift; out_dim: output-channel axis of weight
    (0 for Conv2d, 1 for ConvTranspose2d). dst must have a bias."""
    weight = weight.double()
    n_out = weight.shape[out_dim]
    bias = torch.zeros(n_out, dtype=torch.float64, device=weight.device) if bias is None else bias.double()
    if scale is not None:
        view = [1] * weight.dim()
        view[out_dim] = n_out
        weight = weight * scale.view(view)
        bias = bias * scale + shift
    dst.weight.copy_(weight.to(dst.weight.dtype))
    dst.bias.copy_(bias.to(dst.bias.dtype))


def fused_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A biased copy of ``conv`` (Conv2d or ConvTranspose2d) computing bn(conv(x)) in eval mode."""
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.zeros(bn.num_features, dtype=conv.weight.dtype, device=conv.weight.device))
    scale, shift = batchnorm_scale_shift(bn)
    write_folded(fused, conv.weight, conv.bias, scale, shift, 1 if isinstance(conv, nn.ConvTranspose2d) else 0)
    return fused


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every foldable eval-mode BatchNorm2d into the convolution before it, in place (inference twins only).

    Folds (a) a Conv2d / ConvTranspose2d followed by a BatchNorm2d inside an nn.Sequential (also when the conv is
    the last layer of a nested Sequential, e.g. padding + conv), and (b) whatever a submodule's own ``fuse_bn()``
    folds. Returns ``module``.
    """
    for m in list(module.modules()):
        if hasattr(m, "fuse_bn"):
            m.fuse_bn()
        if not isinstance(m, nn.Sequential):
            continue
        for i in range(len(m) - 1):
            if not isinstance(m[i + 1], nn.BatchNorm2d):
                continue
            if isinstance(m[i], _CONVS):                                    # conv, BN
                m[i] = fused_conv(m[i], m[i + 1])
            elif isinstance(m[i], nn.Sequential) and len(m[i]) and isinstance(m[i][-1], _CONVS):
                m[i][-1] = fused_conv(m[i][-1], m[i + 1])                   # (pad, conv), BN
            else:
                continue
            m[i + 1] = nn.Identity()
    return module
