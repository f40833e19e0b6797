"""Tests for model.encoder (C8-equivariant encoder, its plain-torch export, the CNN ablation) and model.e2compat.

Equivariance is checked exactly: rotating the input by 90/180/270 deg must rotate the invariant output map.
"""
from __future__ import annotations

import copy

import pytest
import torch
from e2cnn import gspaces
from e2cnn import nn as enn
from torch import nn

from model.e2compat import apply_e2cnn_compat
from model.encoder import BasicBlock, CNNEncoder, E2Encoder, rot90_equivariance_error


def _randomize_bn(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode then is not identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built() -> dict[str, E2Encoder]:
    """One randomly initialised encoder per layout, with random BN statistics, built once (construction ~0.5 s)."""
    out = {}
    for seed, layout in enumerate(("aligned", "faithful")):
        torch.manual_seed(seed)
        enc = E2Encoder(layout)
        _randomize_bn(enc, seed + 10)
        out[layout] = enc
    return out


def _encoder(built, layout: str, dtype=torch.float32) -> E2Encoder:
    """An eval-mode copy of the shared encoder (tests may change its dtype or state)."""
    return copy.deepcopy(built[layout]).to(dtype).eval()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------
# e2cnn compatibility shim
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_r2conv_builds_and_runs_after_shim(kernel_size):
    assert apply_e2cnn_compat() == apply_e2cnn_compat()  # idempotent
    gs = gspaces.Rot2dOnR2(N=8)
    triv = enn.FieldType(gs, 3 * [gs.trivial_repr])
    reg = enn.FieldType(gs, 4 * [gs.regular_repr])
    # trivial -> regular at 1x1 keeps a single basis element: the case that raised "masked_fill_ only supports
    # boolean masks" on torch >= 2 without the shim
    for cin, cout in [(triv, reg), (reg, triv), (reg, reg)]:
        conv = enn.R2Conv(cin, cout, kernel_size, padding=kernel_size // 2, recompute=True)
        for m in conv.modules():
            if hasattr(m, "_mask"):
                assert m._mask.dtype == torch.bool
        x = enn.GeometricTensor(torch.randn(2, cin.size, 9, 9, requires_grad=True), cin)
        y = conv(x)
        assert y.tensor.shape == (2, cout.size, 9, 9)
        y.tensor.square().sum().backward()
        assert torch.isfinite(conv.weights.grad).all() and conv.weights.grad.abs().sum() > 0
        assert torch.isfinite(x.tensor.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# shapes and sizes
# ---------------------------------------------------------------------------------------------------------------


def test_parameter_counts_match_published_size_and_cnn_shape(built):
    faithful, aligned = built["faithful"], built["aligned"]
    n = _n_params(faithful)
    assert n == _n_params(aligned)
    assert 72_000 <= n <= 74_000  # published encoder: about 73 k
    assert [t.size for t in faithful.stage_types] == [32, 64, 128]
    assert faithful.out_type.size == 128 and faithful.in_type.size == 3

    # the plain CNN of the same shape, counted by hand: conv weights (no bias before BN) + 2 per BN channel
    def conv(cin, cout, k):
        return cin * cout * k * k

    widths = (32, 64, 128)
    expected = conv(3, 32, 7) + 2 * 32
    prev = 32
    for i, w in enumerate(widths):
        expected += conv(prev, w, 3) + conv(w, w, 3) + 4 * w          # first block
        if prev != w:
            expected += conv(prev, w, 1) + 2 * w                      # projection shortcut
        expected += 2 * conv(w, w, 3) + 4 * w                          # second block
        prev = w
    expected += conv(128, 128, 1) + 2 * 128 + conv(128, 128, 3) + 128  # head (last conv has a bias)
    assert _n_params(CNNEncoder()) == expected
    assert _n_params(CNNEncoder("aligned")) == expected


@pytest.mark.parametrize("kind, size, out", [
    ("faithful", 64, 8),
    ("faithful", 65, 9),   # stride-2 grids: (H - 1) / 8 + 1 at sizes 8k + 1 (257 -> 33)
    ("aligned", 64, 8),
    ("cnn-faithful", 64, 8),
    ("cnn-aligned", 64, 8),
])
def test_output_shape(built, kind, size, out):
    enc = CNNEncoder(kind[4:]).eval() if kind.startswith("cnn") else _encoder(built, kind)
    with torch.no_grad():
        y = enc(torch.rand(1, 3, size, size))
    assert y.shape == (1, 128, out, out) and y.dtype == torch.float32


def test_bad_layout_is_rejected():
    with pytest.raises(ValueError, match="layout"):
        E2Encoder("stride2")
    with pytest.raises(ValueError, match="layout"):
        CNNEncoder("equivariant")


# ---------------------------------------------------------------------------------------------------------------
# equivariance
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, size", [("aligned", 64), ("faithful", 65)])
def test_rot90_equivariance_small(built, layout, size):
    enc = _encoder(built, layout, torch.float64)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for k in (1, 2, 3):
        assert rot90_equivariance_error(enc, x, k) <= 1e-4


def test_rot90_equivariance_fails_where_grids_do_not_align(built):
    # the check above can fail: stride-2 grids at an even size and a plain CNN both break equivariance
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert rot90_equivariance_error(_encoder(built, "faithful", torch.float64), x, 1) > 1e-3
    torch.manual_seed(6)
    cnn = CNNEncoder("aligned").double().eval()
    assert rot90_equivariance_error(cnn, x, 1) > 1e-2


def test_aligned_rot90_equivariance_at_full_size(built):
    # the one full-size check: the whole aligned chain (pooled stem included) at 256, via the escnn-style helper
    enc = built["aligned"]
    errors = enc.check_equivariance(angles=(90,), dtype=torch.float32)
    assert set(errors) == {90}
    assert errors[90] <= 1e-4
    assert next(enc.parameters()).dtype == torch.float32 and enc.training  # helper leaves the module as it was


# ---------------------------------------------------------------------------------------------------------------
# export and state
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, size", [("aligned", 64), ("faithful", 65)])
def test_export_matches_equivariant_encoder(built, layout, size):
    enc = _encoder(built, layout)
    plain = enc.export()
    allowed = {CNNEncoder, BasicBlock, nn.Conv2d, nn.ReLU, nn.AvgPool2d, nn.Identity, nn.Sequential, nn.ModuleList}
    assert {type(m) for m in plain.modules()} <= allowed  # plain torch only, BN folded into the convolutions
    assert not plain.training
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        ref, out = enc(x), plain(x)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4
    with torch.no_grad():
        out_cl = enc.export(channels_last=True)(x)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert (out_cl - ref).abs().max() <= 1e-4


def test_cnn_export_folds_batchnorm_exactly():
    torch.manual_seed(13)
    cnn = CNNEncoder("faithful")
    _randomize_bn(cnn, 14)
    cnn.eval()
    plain = cnn.export()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        assert (plain(x) - cnn(x)).abs().max() <= 1e-4


def test_state_dict_is_mode_independent_and_reload_refreshes_eval_cache(built):
    src = copy.deepcopy(built["aligned"]).train()
    keys_train = set(src.state_dict())
    src.eval()
    assert set(src.state_dict()) == keys_train  # e2cnn's cached filters stay out of checkpoints

    dst = copy.deepcopy(built["aligned"]).train()
    with torch.no_grad():
        for p in dst.parameters():
            p.add_(torch.randn_like(p))
    dst.eval()                                  # caches filters of its own (different) weights
    dst.load_state_dict(src.state_dict())       # strict: same keys whatever the modes
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(24))
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))      # the cache was rebuilt from the loaded weights


def test_training_step_and_dtype_isolation():
    torch.manual_seed(31)
    a = E2Encoder("faithful")
    b = E2Encoder("faithful").double()         # must not convert the bases that `a` uses (e2cnn shares them)
    assert all(buf.dtype == torch.float32 for buf in a.buffers() if buf.is_floating_point())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(32))
    # E2TKFace may feed NHWC (channels_last) tensors: e2cnn's layers must accept them
    for enc, inp in ((a, x.contiguous(memory_format=torch.channels_last)), (b, x.double())):
        enc.train()
        y = enc(inp)
        assert y.shape == (2, 128, 4, 4)
        y.square().mean().backward()
        grads = [p.grad for p in enc.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
