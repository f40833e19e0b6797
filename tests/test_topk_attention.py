"""Tests of model/topk_attention.py: Top-K window attention is truly per window and keeps token order, equals
plain attention when every window is selected, and matches a straightforward per-window reference otherwise."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.topk_attention import (GlobalAttentionLayer, TopKWindowAttention, TopKWindowAttentionLayer,
                                  TopKWindowNeck, elu_feature_map, sine_position_encoding, window_partition,
                                  window_reverse)

KINDS = ("linear", "softmax")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _attn(kind, topk=2, mean_tokens=False, dim=32, heads=4, window=2, seed=0):
    torch.manual_seed(seed)
    return TopKWindowAttention(dim, heads, window, topk, attention=kind, mean_tokens=mean_tokens).double()


def _tokens(b=2, h=8, w=8, c=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, w, c, generator=g, dtype=torch.float64)


def _window_of(y, x, window=2, n_cols=4):
    return (y // window) * n_cols + x // window


def _reference_attention(q, k, v, heads, kind, eps=1e-6):
    """Straightforward attention of queries (L, C) over keys/values (S, C), explicit (L, S) weights per head."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * d:(h + 1) * d] for t in (q, k, v))
        if kind == "linear":
            sim = (F.elu(qh) + 1) @ (F.elu(kh) + 1).T                    # (L, S) kernel values
            weights = sim / (sim.sum(dim=1, keepdim=True) + eps)
        else:
            weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=1)
        out.append(weights @ vh)
    return torch.cat(out, dim=1)


def _reference_topk(module, x, window_index):
    """Per-window reference: loops over batch and query windows, builds each key list explicitly."""
    b, h, w, c = x.shape
    ws = module.window
    q, k, v = module.qkv(x).chunk(3, dim=-1)
    qw, kw, vw = (window_partition(t, ws) for t in (q, k, v))                    # (B, nW, T, C)
    out = torch.empty_like(qw)
    for bi in range(b):
        for wi in range(qw.shape[1]):
            keys = [kw[bi, j] for j in window_index[bi, wi].tolist()]
            vals = [vw[bi, j] for j in window_index[bi, wi].tolist()]
            if module.mean_tokens:
                keys.append(kw[bi].mean(dim=1))
                vals.append(vw[bi].mean(dim=1))
            out[bi, wi] = _reference_attention(qw[bi, wi], torch.cat(keys), torch.cat(vals), module.heads,
                                               module.attention)
    return module.merge(window_reverse(out, ws, h, w))


def test_feature_map_is_elu_plus_one():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    y = elu_feature_map(x)
    torch.testing.assert_close(y, F.elu(x) + 1)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(x > 0, 1.0, torch.exp(x)).double())


def test_window_partition_roundtrip_and_layout():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    win = window_partition(x, 4)
    assert win.shape == (2, 4, 16, 3)
    # window 1 is the top-right 4x4 square, tokens in raster order inside it
    assert torch.equal(win[1, 1, 5], x[1, 1, 5])
    assert torch.equal(win[0, 2, 0], x[0, 4, 0])
    assert torch.equal(window_reverse(win, 4, 8, 8), x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mean_tokens", [False, True])
def test_matches_per_window_reference(kind, mean_tokens):
    m = _attn(kind, topk=3, mean_tokens=mean_tokens)
    x = _tokens()
    q, k, _ = window_partition(m.qkv(x), 2).chunk(3, dim=-1)
    index = m.select_windows(q.mean(dim=2), k.mean(dim=2), 3)
    with torch.no_grad():
        got = m(x)
        ref = _reference_topk(m, x, index)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_selection_is_topk_of_window_mean_affinity():
    m = _attn("linear", topk=3)
    x = _tokens(b=1)
    q, k, _ = window_partition(m.qkv(x), 2).chunk(3, dim=-1)
    qm, km = q.mean(dim=2)[0], k.mean(dim=2)[0]
    index = m.select_windows(q.mean(dim=2), k.mean(dim=2), 3)[0]
    affinity = qm @ km.T
    for i in range(16):
        expected = torch.argsort(affinity[i], descending=True)[:3]
        assert set(index[i].tolist()) == set(expected.tolist())


@pytest.mark.parametrize("kind", KINDS)
def test_attention_is_per_window(kind):
    """Mean tokens off, selection held fixed: a token in an unselected window does not reach the query window;
    one in a selected window does."""
    m = _attn(kind, topk=2)
    x = _tokens(b=1)
    index = torch.zeros(1, 16, 2, dtype=torch.long)
    index[0, :, 0] = torch.arange(16)                      # every window keeps itself ...
    index[0, :, 1] = (torch.arange(16) + 5) % 16           # ... and the window 5 further on
    query_window = 0                                       # tokens (0..1, 0..1); keys: windows 0 and 5
    with torch.no_grad():
        base = m(x, window_index=index)
        unselected = x.clone()
        unselected[0, 6, 7] += 3.0                         # window 15: not selected by window 0
        assert _window_of(6, 7) not in index[0, query_window].tolist()
        out_u = m(unselected, window_index=index)
        selected = x.clone()
        selected[0, 2, 3] += 3.0                           # window 5: selected by window 0
        assert _window_of(2, 3) in index[0, query_window].tolist()
        out_s = m(selected, window_index=index)
    torch.testing.assert_close(out_u[0, 0:2, 0:2], base[0, 0:2, 0:2], rtol=0, atol=0)
    assert (out_s[0, 0:2, 0:2] - base[0, 0:2, 0:2]).abs().max() > 1e-3
    # and the changed token did reach the windows that selected window 15 (windows 10 and 15)
    assert (out_u[0, 4:6, 4:6] - base[0, 4:6, 4:6]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mean_tokens", [False, True])
def test_permuting_tokens_in_a_window_permutes_output(kind, mean_tokens):
    m = _attn(kind, topk=2, mean_tokens=mean_tokens)
    x = _tokens()
    win = window_partition(x, 2)
    g = torch.Generator().manual_seed(3)
    perms = torch.stack([torch.randperm(4, generator=g) for _ in range(16)])      # one permutation per window
    permuted_win = torch.stack([win[:, i, perms[i]] for i in range(16)], dim=1)
    x_perm = window_reverse(permuted_win, 2, 8, 8)
    with torch.no_grad():
        out = window_partition(m(x), 2)
        out_perm = window_partition(m(x_perm), 2)
    expected = torch.stack([out[:, i, perms[i]] for i in range(16)], dim=1)
    torch.testing.assert_close(out_perm, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_all_windows_without_mean_tokens_is_plain_attention(kind):
    m = _attn(kind, topk=16)
    x = _tokens()
    with torch.no_grad():
        got = m(x)
        q, k, v = m.qkv(x.reshape(2, 64, 32)).chunk(3, dim=-1)
        ref = torch.stack([_reference_attention(q[b], k[b], v[b], 4, kind) for b in range(2)])
        ref = m.merge(ref).reshape(2, 8, 8, 32)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_batch_items_do_not_interact():
    m = _attn("linear", topk=2, mean_tokens=True)
    x = _tokens(b=3)
    with torch.no_grad():
        whole = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, single, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_shapes_gradients_and_channels_last(kind):
    torch.manual_seed(0)
    layer = TopKWindowAttentionLayer(64, 2, 4, 4, attention=kind)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with torch.no_grad():
        y_cl = layer(x.detach().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y.detach(), rtol=1e-5, atol=1e-5)


def test_neck_shapes_and_parameter_count():
    neck = TopKWindowNeck()
    assert sum(p.numel() for p in neck.parameters()) == 10_584_832      # published 10.6 M
    small = TopKWindowNeck(in_ch=16, dims=(32, 64), heads=(2, 2))
    with torch.no_grad():
        assert small(torch.randn(1, 16, 32, 32)).shape == (1, 64, 8, 8)


def test_sine_position_encoding_values():
    pe = sine_position_encoding(16, 3, 5)
    assert pe.shape == (1, 16, 3, 5)
    # channel 4*j + {0,1,2,3} = sin(x f_j), cos(x f_j), sin(y f_j), cos(y f_j); x, y 1-based; f_j = 1e4^(-2j/8)
    j, row, col = 1, 2, 4
    f = 10000.0 ** (-2 * j / 8)
    assert pe[0, 4 * j, row, col].item() == pytest.approx(math.sin((col + 1) * f), abs=1e-6)
    assert pe[0, 4 * j + 1, row, col].item() == pytest.approx(math.cos((col + 1) * f), abs=1e-6)
    assert pe[0, 4 * j + 2, row, col].item() == pytest.approx(math.sin((row + 1) * f), abs=1e-6)
    assert pe[0, 4 * j + 3, row, col].item() == pytest.approx(math.cos((row + 1) * f), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_global_layer_matches_reference(kind):
    torch.manual_seed(0)
    layer = GlobalAttentionLayer(dim=32, heads=4, attention=kind, max_shape=(4, 4)).double()
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    assert sum(p.numel() for p in GlobalAttentionLayer().parameters()) == 2_623_488   # published 2.6 M
    with torch.no_grad():
        got = layer(x)
        t = (x + sine_position_encoding(32, 4, 4).double()).flatten(2).transpose(1, 2)   # (B, 16, 32)
        q, k, v = layer.qkv(t).chunk(3, dim=-1)
        msg = torch.stack([_reference_attention(q[b], k[b], v[b], 4, kind) for b in range(2)])
        msg = layer.norm1(layer.merge(msg))
        ref = t + layer.norm2(layer.mlp(torch.cat([t, msg], dim=-1)))
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(2, 32, 4, 4), rtol=1e-9, atol=1e-9)
