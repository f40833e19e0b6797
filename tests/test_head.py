"""Output head and input size (model.head.PosmapIO) and the learning-rate schedule (engine.optim), checked against
independent truths: exact mean maps, affine position maps that bilinear resampling reproduces exactly, block means
computed by hand, and closed-form schedule values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.optim import lr_factor, parameter_groups
from faceutil.uv import POSMAP_SCALE
from model import build_model
from model.head import INPUT_SIZES, PosmapIO
from model.registry import ModelConfigError

SMALL = {"e2tkface": {"width_mult": 0.25, "encoder": "cnn"}, "prnet": {}}


def _mean_map(seed: int = 0) -> np.ndarray:
    """A (256, 256, 3) position map in crop pixels with structure (not a constant)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:256, 0:256].astype(np.float32)
    return np.stack([0.6 * u + 40, 0.7 * v + 30, 50 + 20 * np.sin(u / 40)], -1) + rng.normal(0, 1, (256, 256, 3))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", INPUT_SIZES)
def test_mean_residual_head_starts_exactly_at_the_mean_map(name, size):
    torch.manual_seed(0)
    net = build_model(name, head="mean-residual", input_size=size, **SMALL[name])
    mean = _mean_map()
    net.io.set_mean_posmap(mean)
    x = torch.rand(2, 3, 256, 256)
    for mode in (net.train(), net.eval(), net.export()):
        with torch.no_grad():
            out = mode(x)
        want = torch.from_numpy(mean).permute(2, 0, 1).float() / POSMAP_SCALE
        assert out.dtype == torch.float32 and out.shape == (2, 3, 256, 256)
        assert torch.equal(out, want.expand_as(out))          # exactly the mean, whatever the image
    # the mean map travels in the state dict (so in checkpoints and twins)
    assert "io.mean_posmap" in net.state_dict()
    assert "io.mean_posmap" not in build_model(name, **SMALL[name]).state_dict()   # published: keys as before


def test_casting_the_network_keeps_the_mean_map_in_float32():
    net = build_model("prnet", head="mean-residual", input_size=64)
    net.io.set_mean_posmap(_mean_map())
    want = net.io.mean_posmap.clone()
    low = net.to(torch.bfloat16)
    assert low.decoder.layers[0].deconv.weight.dtype == torch.bfloat16
    assert low.io.mean_posmap.dtype == torch.float32 and torch.equal(low.io.mean_posmap, want)
    with torch.no_grad():
        out = low.eval()(torch.rand(1, 3, 256, 256).to(torch.bfloat16))
    assert out.dtype == torch.float32 and torch.equal(out[0], want[0])     # zero residual: the exact float mean


@pytest.mark.parametrize("size", (64, 128))
def test_small_input_maps_coordinates_back_to_the_256_crop(size):
    """An affine position map of the 256 crop, written in the small crop's pixel coordinates at the small
    resolution, comes back exactly (bilinear resampling reproduces affine maps away from the border)."""
    f = 256 // size
    io = PosmapIO(size, "published")
    a, b, c = 0.55, 0.3, 17.0

    def truth(rows, cols):                                      # x, y, z in 256-crop pixels at 256-grid (row, col)
        return np.stack(np.broadcast_arrays(a * cols + b * rows + c, b * cols - a * rows + 200.0, 0.25 * cols + 9.0))

    k = np.arange(size, dtype=np.float64)
    centre = f * k + (f - 1) / 2.0                              # the 256-grid position of small pixel k
    t = truth(centre[:, None], centre[None, :])                 # (3, size, size), 256-crop px
    small = np.concatenate([(t[:2] + 0.5) / f - 0.5, t[2:] / f])   # the same points in the small crop's pixels
    out = io.expand(torch.from_numpy(small / POSMAP_SCALE).float()[None])[0].double().numpy() * POSMAP_SCALE
    grid = np.arange(256, dtype=np.float64)
    want = truth(grid[:, None], grid[None, :])
    inner = slice(f, 256 - f)
    assert np.abs(out[:, inner, inner] - want[:, inner, inner]).max() < 1e-3


@pytest.mark.parametrize("size", (64, 128))
def test_input_is_the_block_mean_and_the_network_runs_at_that_size(size):
    f = 256 // size
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    want = x.reshape(1, 3, size, f, size, f).mean(dim=(3, 5))
    assert torch.allclose(PosmapIO(size).shrink(x), want, atol=1e-6)
    net = build_model("e2tkface", input_size=size, **SMALL["e2tkface"])
    seen = []
    net.encoder.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    assert net(torch.rand(2, 3, 256, 256)).shape == (2, 3, 256, 256)
    assert seen == [(2, 3, size, size)]


def test_head_and_size_outside_the_sets_are_one_sentence():
    for kwargs in ({"head": "mean"}, {"input_size": 100}, {"input_size": 512}):
        for name in SMALL:
            with pytest.raises(ModelConfigError, match=r"^[^\n]+\.$"):
                build_model(name, **kwargs)
    with pytest.raises(ValueError, match="finite"):
        PosmapIO(128, "mean-residual").set_mean_posmap(np.full((256, 256, 3), np.nan))
    with pytest.raises(ValueError, match="only the mean-residual head"):
        PosmapIO(128, "published").set_mean_posmap(_mean_map())


def test_e2tkface_keeps_the_published_share_of_top_k_windows():
    assert [build_model("e2tkface", input_size=s, **SMALL["e2tkface"]).neck.stages[0][0][1].attn.topk
            for s in (256, 128, 64)] == [4, 1, 1]


# ------------------------------------------------------------------------------------------------ schedule
def test_warmup_then_per_epoch_decay():
    f = [lr_factor(s, warmup_steps=4, steps_per_epoch=10, total_steps=100, schedule="exp", decay=0.5)
         for s in range(25)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4:10] == pytest.approx([1.0] * 6)
    assert f[10:20] == pytest.approx([0.5] * 10) and f[20:] == pytest.approx([0.25] * 5)


def test_warmup_then_cosine_to_zero():
    kw = dict(warmup_steps=10, steps_per_epoch=7, total_steps=110, schedule="cosine")
    assert lr_factor(4, **kw) == pytest.approx(0.5)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.5)             # half-way through the cosine
    assert lr_factor(35, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, **kw) == pytest.approx(0.0) and lr_factor(500, **kw) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_factor(0, **{**kw, "schedule": "step"})


def test_parameter_groups_leave_norms_and_biases_undecayed_when_asked():
    net = build_model("prnet")
    (only,) = parameter_groups(net, 2e-4, decay_norm_bias=True)
    assert only["weight_decay"] == 2e-4 and len(only["params"]) == len(list(net.parameters()))
    decayed, free = parameter_groups(net, 2e-4, decay_norm_bias=False)
    assert decayed["weight_decay"] == 2e-4 and free["weight_decay"] == 0.0
    bn = net.decoder.layers[0].bn
    ids = {id(p) for p in free["params"]}
    assert id(bn.weight) in ids and id(bn.bias) in ids and id(net.decoder.layers[0].deconv.weight) not in ids
    assert len(decayed["params"]) + len(free["params"]) == len(list(net.parameters()))
