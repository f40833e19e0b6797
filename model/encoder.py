"""E2TKFace encoder: a C8-equivariant residual CNN (e2cnn) giving rotation-invariant features, its plain-torch export,
and an ordinary CNN of the same shape for ablations.

Owns E2Encoder (training artefact), its exported twin (inference artefact) and CNNEncoder. Importing this module
applies the e2cnn/torch>=2 compatibility shim (model.e2compat).

Architecture (DESIGN.md §5), input (B, 3, H, W) float, H and W multiples of 8:
    stem   7x7 conv, 3 trivial fields -> 4 regular fields (32 ch), BN, ReLU            -> H/2
    stage1 2 residual basic blocks, 4 regular fields (32 ch)                            -> H/2
    stage2 2 blocks, 8 regular fields (64 ch), the first one downsamples                -> H/4
    stage3 2 blocks, 16 regular fields (128 ch), the first one downsamples              -> H/8
    head   1x1 conv regular -> regular (16 fields), BN, ReLU; 3x3 conv -> 128 trivial fields (with bias)
    output (B, 128, H/8, W/8): invariant (scalar) fields, i.e. rotating the input by 90 deg rotates the map.
A basic block is conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when the shape changes),
then ReLU. Two layouts differ only in how they downsample:
    "faithful": stride-2 convolutions (stem, first 3x3 of a downsampling block, 1x1 shortcut), as published.
                Its sampling grids are symmetric under 90 deg rotation only for sizes 2^k*8 + 1 (e.g. 257 -> 33).
    "aligned":  2x2 average pooling, then the same convolutions with stride 1 (pooling first costs the same as
                a stride-2 convolution). Grids are symmetric for any H, W multiple of 8, so the whole encoder is
                exactly 90 deg-equivariant at 256. Same parameters as "faithful".
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from e2cnn import gspaces
from e2cnn import nn as enn
from torch import nn

from model.e2compat import apply_e2cnn_compat
from model.fold import batchnorm_scale_shift, write_folded

apply_e2cnn_compat()

LAYOUTS = ("faithful", "aligned")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"encoder layout must be one of {LAYOUTS}, got {layout!r}")


# ----------------------------------------------------------------------------------------------------------------
# Equivariant (e2cnn) encoder
# ----------------------------------------------------------------------------------------------------------------


class E2BasicBlock(enn.EquivariantModule):
    """Residual basic block on regular fields: in_type -> out_type, spatial size halved when ``downsample``.

    Args:
        in_type, out_type: field types of the input and output (regular fields of the same gspace).
        downsample: None (keep size), "stride" (stride-2 convs) or "pool" (2x2 average pooling first).
    """

    def __init__(self, in_type: enn.FieldType, out_type: enn.FieldType, downsample: str | None = None):
        super().__init__()
        if downsample not in (None, "stride", "pool"):
            raise ValueError(f"downsample must be None, 'stride' or 'pool', got {downsample!r}")
        self.in_type = in_type
        self.out_type = out_type
        stride = 2 if downsample == "stride" else 1
        self.pool = enn.PointwiseAvgPool(in_type, kernel_size=2, stride=2) if downsample == "pool" else None
        self.conv1 = enn.R2Conv(in_type, out_type, 3, padding=1, stride=stride, bias=False)
        self.bn1 = enn.InnerBatchNorm(out_type)
        self.relu1 = enn.ReLU(out_type, inplace=True)
        self.conv2 = enn.R2Conv(out_type, out_type, 3, padding=1, bias=False)
        self.bn2 = enn.InnerBatchNorm(out_type)
        if downsample is not None or in_type != out_type:
            self.shortcut = enn.SequentialModule(
                enn.R2Conv(in_type, out_type, 1, stride=stride, bias=False),
                enn.InnerBatchNorm(out_type),
            )
        else:
            self.shortcut = None
        self.relu2 = enn.ReLU(out_type, inplace=True)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        """x: GeometricTensor (B, in_type.size, H, W) -> (B, out_type.size, H', W')."""
        if self.pool is not None:
            x = self.pool(x)
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(y + s)

    def evaluate_output_shape(self, input_shape):
        shape = input_shape
        if self.pool is not None:
            shape = self.pool.evaluate_output_shape(shape)
        return self.conv1.evaluate_output_shape(shape)


class SteerableModule(nn.Module):
    """Base of a module built from e2cnn layers: each R2Conv owns its basis, e2cnn's eval-mode filter cache stays out
    of the state dict (so it does not depend on the mode), and a load in eval mode rebuilds that cache.
    Subclasses build their layers, then call ``self.finish_steerable()``."""

    def finish_steerable(self) -> None:
        for m in self.modules():
            if isinstance(m, enn.R2Conv):
                _own_basis(m)
        self.register_load_state_dict_post_hook(_refresh_filter_cache)
        self.train(True)  # drops e2cnn's placeholder `filter` buffers so that state_dict is mode-independent

    def train(self, mode: bool = True):
        """Set the mode; eval mode caches each R2Conv's expanded filter (detached: eval mode is for inference)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, enn.R2Conv):
                _make_cache_non_persistent(m)
        return self


class E2Encoder(SteerableModule):
    """C8-equivariant encoder; plain tensors in and out.

    Args:
        layout: "aligned" (default; exactly 90 deg-equivariant at 256) or "faithful" (stride 2, as published).
        in_ch: input channels, each a trivial (scalar) field.
        widths: regular fields per stage (each N channels): (4, 8, 16) -> 32/64/128 channels for N=8.
        out_ch: output channels, each a trivial field (invariant under rotation of the input).
        N: order of the rotation group C_N.

    Field types (escnn style, fixed at construction): ``in_type`` (in_ch trivial), ``stage_types`` (one per stage,
    widths[i] regular fields), ``out_type`` (out_ch trivial).

    forward: (B, in_ch, H, W) float tensor -> (B, out_ch, H/8, W/8) float tensor. In eval mode e2cnn caches
    the expanded filters; the cache is rebuilt after ``load_state_dict`` and never enters the state dict, so a
    checkpoint holds only the learnable weights, BN statistics and e2cnn's fixed bases whatever the mode.
    For inference use ``export()``.
    """

    def __init__(self, layout: str = "aligned", in_ch: int = 3, widths: Sequence[int] = (4, 8, 16),
                 out_ch: int = 128, N: int = 8):
        super().__init__()
        _check_layout(layout)
        if len(widths) != 3:
            raise ValueError(f"widths must name 3 stages, got {tuple(widths)}")
        self.layout = layout
        self.N = N
        self.gspace = gspaces.Rot2dOnR2(N=N)
        gs = self.gspace
        self.in_type = enn.FieldType(gs, in_ch * [gs.trivial_repr])
        self.stage_types = tuple(enn.FieldType(gs, w * [gs.regular_repr]) for w in widths)
        self.out_type = enn.FieldType(gs, out_ch * [gs.trivial_repr])
        down = "stride" if layout == "faithful" else "pool"

        stem = []
        if down == "pool":
            stem.append(enn.PointwiseAvgPool(self.in_type, kernel_size=2, stride=2))
        stem += [
            enn.R2Conv(self.in_type, self.stage_types[0], 7, padding=3, stride=2 if down == "stride" else 1,
                       bias=False),
            enn.InnerBatchNorm(self.stage_types[0]),
            enn.ReLU(self.stage_types[0], inplace=True),
        ]
        self.stem = enn.SequentialModule(*stem)

        stages = []
        prev = self.stage_types[0]
        for i, t in enumerate(self.stage_types):
            first = E2BasicBlock(prev, t, downsample=None if i == 0 else down)
            stages.append(enn.SequentialModule(first, E2BasicBlock(t, t)))
            prev = t
        self.stages = nn.ModuleList(stages)

        last = self.stage_types[-1]
        self.head = enn.SequentialModule(
            enn.R2Conv(last, last, 1, bias=False),
            enn.InnerBatchNorm(last),
            enn.ReLU(last, inplace=True),
            enn.R2Conv(last, self.out_type, 3, padding=1, bias=True),
        )
        self.finish_steerable()

    # -- forward ------------------------------------------------------------------------------------------------
    def forward_geometric(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        """GeometricTensor of in_type -> GeometricTensor of out_type."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) float tensor -> (B, out_ch, H/8, W/8) (faithful at 8k+1 sizes: (H-1)/8 + 1)."""
        return self.forward_geometric(enn.GeometricTensor(x, self.in_type)).tensor

    # -- deployment ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, channels_last: bool = False) -> "CNNEncoder":
        """A plain-torch twin (Conv2d with BN folded in, ReLU, AvgPool2d) in eval mode, same dtype and device.

        Its outputs equal this encoder's eval-mode outputs up to float rounding (BN uses the running statistics).
        This module is left in its current mode. ``channels_last=True`` stores the weights in channels-last
        layout, which makes CPU convolution ~30 % faster here; its outputs are then channels-last tensors.
        """
        widths = tuple(t.size for t in self.stage_types)
        plain = CNNEncoder(self.layout, self.in_type.size, widths, self.out_type.size, batchnorm=False)
        stem_mods = [m for m in self.stem.children() if isinstance(m, (enn.R2Conv, enn.InnerBatchNorm))]
        _copy_folded(plain.stem_conv, stem_mods[0], stem_mods[1])
        for e_stage, p_stage in zip(self.stages, plain.stages):
            for e_blk, p_blk in zip(e_stage.children(), p_stage):
                _copy_folded(p_blk.conv1, e_blk.conv1, e_blk.bn1)
                _copy_folded(p_blk.conv2, e_blk.conv2, e_blk.bn2)
                if e_blk.shortcut is not None:
                    sc_conv, sc_bn = e_blk.shortcut.children()
                    _copy_folded(p_blk.shortcut[0], sc_conv, sc_bn)
        head = list(self.head.children())
        _copy_folded(plain.head_conv1, head[0], head[1])
        _copy_folded(plain.head_conv2, head[3], None)
        return _finish_export(plain, next(self.parameters()), channels_last)

    @torch.no_grad()
    def check_equivariance(self, size: int | None = None, generator: torch.Generator | None = None,
                           dtype: torch.dtype = torch.float64,
                           angles: Sequence[int] = (90, 180, 270)) -> dict[int, float]:
        """Relative equivariance errors of the eval-mode encoder under quarter turns, on one random input.

        Args:
            size: input side; default 256 for "aligned", 257 for "faithful" (where stride-2 grids are symmetric).
            generator: torch generator for the uniform [0, 1) input (default: seeded with 0).
            dtype: precision used for the check (a float64 copy of the encoder by default).
            angles: multiples of 90 degrees (counter-clockwise as displayed).
        Returns:
            {angle_degrees: ||f(rot x) - rot f(x)|| / ||f(x)||}. This module is left in its mode and dtype.
        """
        if any(a % 90 for a in angles):
            raise ValueError(f"check_equivariance handles multiples of 90 degrees only, got {tuple(angles)}")
        if size is None:
            size = 256 if self.layout == "aligned" else 257
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        net = copy.deepcopy(self).to(dtype).eval()
        x = torch.rand(1, self.in_type.size, size, size, generator=generator, dtype=dtype)
        return {a: rot90_equivariance_error(net, x, (a // 90) % 4) for a in angles}


def _own_basis(conv: enn.R2Conv) -> None:
    """Give ``conv`` private copies of e2cnn's cached basis modules.

    e2cnn shares one sampled basis module between all layers (of all models in the process) with the same
    representations and grid; ``.to(dtype/device)`` on one model would then convert the basis under every other
    model. Shallow copies with cloned buffers keep e2cnn's fast construction and make each model independent.
    """
    expansion = conv.basisexpansion
    for name, block in list(expansion._modules.items()):
        if name.startswith("block_expansion_"):
            mine = copy.copy(block)
            mine._buffers = {k: (None if v is None else v.clone()) for k, v in block._buffers.items()}
            mine._modules = dict(block._modules)
            mine._parameters = dict(block._parameters)
            expansion._modules[name] = mine


def _make_cache_non_persistent(conv: enn.R2Conv) -> None:
    """Keep e2cnn's eval-mode filter cache (buffers `filter`, `expanded_bias`) out of the state dict."""
    for name in ("filter", "expanded_bias"):
        if name in conv._buffers:
            buf = conv._buffers.pop(name)
            conv.register_buffer(name, None if buf is None else buf.detach(), persistent=False)


def _refresh_filter_cache(module: nn.Module, incompatible_keys) -> None:
    """After load_state_dict in eval mode, rebuild every R2Conv's cached filter from the loaded weights."""
    if module.training:
        return
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, enn.R2Conv):
                _filter, _bias = m.expand_parameters()
                m.register_buffer("filter", _filter, persistent=False)
                if _bias is not None:
                    m.register_buffer("expanded_bias", _bias, persistent=False)


def _fold_scale_shift(bn: enn.InnerBatchNorm, n_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) in float64 with bn(x) = x * scale + shift (eval mode, running statistics)."""
    (size,) = {r.size for r in bn.in_type.representations}
    inner = getattr(bn, f"batch_norm_[{size}]")
    scale, shift = batchnorm_scale_shift(inner)
    scale = scale.repeat_interleave(size)
    shift = shift.repeat_interleave(size)
    assert scale.numel() == n_channels
    return scale, shift


def _copy_folded(dst: nn.Conv2d, conv: enn.R2Conv, bn: enn.InnerBatchNorm | None) -> None:
    """Write conv (then bn, if given) into the plain Conv2d ``dst`` (which must have a bias)."""
    weight, bias = conv.expand_parameters()
    assert dst.weight.shape == weight.shape, (dst.weight.shape, weight.shape)
    assert dst.stride == (conv.stride, conv.stride) and dst.padding == (conv.padding, conv.padding)
    scale, shift = _fold_scale_shift(bn, weight.shape[0]) if bn is not None else (None, None)
    write_folded(dst, weight, bias, scale, shift)


# ----------------------------------------------------------------------------------------------------------------
# Plain torch: the export target and the non-equivariant ablation
# ----------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Plain residual basic block: (B, cin, H, W) -> (B, cout, H', W'), H' = H/2 when ``downsample``.

    Args:
        downsample: None, "stride" (stride-2 convs) or "pool" (2x2 average pooling first).
        batchnorm: True: conv (no bias) + BatchNorm2d; False: conv with bias (BN folded in, export target).
    """

    def __init__(self, cin: int, cout: int, downsample: str | None = None, batchnorm: bool = True):
        super().__init__()
        stride = 2 if downsample == "stride" else 1
        self.pool = nn.AvgPool2d(2) if downsample == "pool" else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        if downsample is not None or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=not batchnorm),
                nn.BatchNorm2d(cout) if batchnorm else nn.Identity(),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class CNNEncoder(nn.Module):
    """Ordinary (non-equivariant) CNN with E2Encoder's shape; also the class of ``E2Encoder.export()``.

    Args:
        layout: "faithful" (stride-2 convs, default) or "aligned" (2x2 average pooling then stride-1 convs).
        in_ch: input channels. widths: channels per stage (32, 64, 128). out_ch: output channels.
        batchnorm: True for a trainable CNN (conv + BatchNorm2d); False gives biased convs with BN folded in.

    forward: (B, in_ch, H, W) float tensor -> (B, out_ch, H/8, W/8).
    """

    def __init__(self, layout: str = "faithful", in_ch: int = 3, widths: Sequence[int] = (32, 64, 128),
                 out_ch: int = 128, batchnorm: bool = True):
        super().__init__()
        _check_layout(layout)
        if len(widths) != 3:
            raise ValueError(f"widths must name 3 stages, got {tuple(widths)}")
        self.layout = layout
        self.batchnorm = batchnorm
        down = "stride" if layout == "faithful" else "pool"
        bn = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.stem_pool = nn.AvgPool2d(2) if down == "pool" else nn.Identity()
        self.stem_conv = nn.Conv2d(in_ch, widths[0], 7, stride=2 if down == "stride" else 1, padding=3,
                                   bias=not batchnorm)
        self.stem_bn = bn(widths[0])
        self.stem_relu = nn.ReLU(inplace=True)
        stages = []
        prev = widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(prev, w, None if i == 0 else down, batchnorm),
                                        BasicBlock(w, w, None, batchnorm)))
            prev = w
        self.stages = nn.ModuleList(stages)
        self.head_conv1 = nn.Conv2d(widths[-1], widths[-1], 1, bias=not batchnorm)
        self.head_bn = bn(widths[-1])
        self.head_relu = nn.ReLU(inplace=True)
        self.head_conv2 = nn.Conv2d(widths[-1], out_ch, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, H/8, W/8)."""
        x = self.stem_relu(self.stem_bn(self.stem_conv(self.stem_pool(x))))
        for stage in self.stages:
            x = stage(x)
        return self.head_conv2(self.head_relu(self.head_bn(self.head_conv1(x))))

    @torch.no_grad()
    def export(self, channels_last: bool = False) -> "CNNEncoder":
        """A BN-folded copy in eval mode (same outputs as this module in eval mode); see E2Encoder.export."""
        if not self.batchnorm:
            return _finish_export(copy.deepcopy(self), next(self.parameters()), channels_last)
        widths = (self.stem_conv.out_channels,) + tuple(s[0].conv1.out_channels for s in self.stages[1:])
        plain = CNNEncoder(self.layout, self.stem_conv.in_channels, widths, self.head_conv2.out_channels,
                           batchnorm=False)
        _fold_plain(plain.stem_conv, self.stem_conv, self.stem_bn)
        for src_stage, dst_stage in zip(self.stages, plain.stages):
            for src, dst in zip(src_stage, dst_stage):
                _fold_plain(dst.conv1, src.conv1, src.bn1)
                _fold_plain(dst.conv2, src.conv2, src.bn2)
                if isinstance(src.shortcut, nn.Sequential):
                    _fold_plain(dst.shortcut[0], src.shortcut[0], src.shortcut[1])
        _fold_plain(plain.head_conv1, self.head_conv1, self.head_bn)
        _fold_plain(plain.head_conv2, self.head_conv2, None)
        return _finish_export(plain, next(self.parameters()), channels_last)


def _finish_export(plain: "CNNEncoder", like: torch.Tensor, channels_last: bool) -> "CNNEncoder":
    plain = plain.to(device=like.device, dtype=like.dtype)
    if channels_last:
        plain = plain.to(memory_format=torch.channels_last)
    return plain.eval()


def _fold_plain(dst: nn.Conv2d, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> None:
    """dst <- conv followed by bn (eval mode), computed in float64."""
    scale, shift = batchnorm_scale_shift(bn) if bn is not None else (None, None)
    write_folded(dst, conv.weight, conv.bias, scale, shift)


# ----------------------------------------------------------------------------------------------------------------
# Equivariance measurement
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def rot90_equivariance_error(module: nn.Module, x: torch.Tensor, k: int = 1) -> float:
    """||module(rot90(x, k)) - rot90(module(x), k)|| / ||module(x)|| for an invariant-output encoder.

    Args:
        module: maps (B, C, H, W) -> (B, C', H', W') with scalar (trivial) output channels.
        x: (B, C, H, W) input. k: number of quarter turns (counter-clockwise as displayed).
    """
    y = module(x)
    y_rot = module(torch.rot90(x, k, dims=(-2, -1)))
    ref = torch.rot90(y, k, dims=(-2, -1))
    return float(torch.linalg.vector_norm(y_rot - ref) / torch.linalg.vector_norm(y))
