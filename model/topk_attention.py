"""Top-K window attention (E2TKFace's neck) and the global LoFTR-style attention layer with sine positional encoding.

Tokens are laid out (B, H, W, C); windows are w x w token squares in raster order, tokens raster order inside.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mbconv import MBConv

ATTENTION_KINDS = ("linear", "softmax")


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Positive feature map of linear attention ("Transformers are RNNs"): elu(x) + 1 = max(x, 0) + exp(min(x, 0)).

    Written with relu and exp because torch's CPU elu kernel is about 10x slower than exp.
    """
    return torch.relu(x) + torch.exp(torch.clamp_max(x, 0.0))


def _with_ones(v: torch.Tensor, n_keys: int) -> torch.Tensor:
    """(..., d) values -> (..., d + 1): a column of ones appended (it sums the normaliser), all divided by n_keys
    (against fp16 overflow; the ratio is unchanged)."""
    return F.pad(v, (0, 1), value=1.0) / n_keys


def _ratio(out: torch.Tensor, eps: float) -> torch.Tensor:
    """(..., d + 1) contraction with _with_ones values -> (..., d): numerator / (normaliser + eps)."""
    return out[..., :-1] / (out[..., -1:] + eps)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) tokens -> (B, nW, window*window, C); nW = (H/window)*(W/window), windows in raster order."""
    _, h, w, c = x.shape
    m, n = h // window, w // window
    x = x.reshape(-1, m, window, n, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, m * n, window * window, c)


def window_reverse(x: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of window_partition: (B, nW, window*window, C) -> (B, height, width, C), every token back in place."""
    c = x.shape[-1]
    m, n = height // window, width // window
    x = x.reshape(-1, m, n, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Multi-head linear attention over one key set per batch item.

    q: (N, L, heads, d); k, v: (N, S, heads, d) -> (N, L, heads, d).
    out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps), phi = elu + 1.
    """
    s = k.shape[1]
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    kv = fk.permute(0, 2, 3, 1) @ _with_ones(v, s).transpose(1, 2)  # (N, heads, d, d+1)
    out = (fq.transpose(1, 2) @ kv).transpose(1, 2)                  # (N, L, heads, d+1)
    return _ratio(out, eps / s)


class TopKWindowAttention(nn.Module):
    """Per-window Top-K routed multi-head attention; returns the merged message (no norm, no MLP).

    q/k/v projections; the window means of q and k give a (nW x nW) affinity; each query window keeps its top-k key
    windows; its queries attend to the tokens of those k windows plus (mean_tokens=True) the mean key/value token
    of every window. attention="linear" (elu+1 feature map, LoFTR) or "softmax" (scaled dot product).
    Everything is batched: window selection is a (B, nW, nW) 0/1 matrix (linear) or an index gather (softmax).
    """

    def __init__(self, dim: int, heads: int, window: int, topk: int, attention: str = "linear",
                 mean_tokens: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.dim, self.heads, self.window, self.topk = dim, heads, window, topk
        self.attention, self.mean_tokens, self.eps = attention, mean_tokens, eps
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)

    @staticmethod
    def select_windows(q_mean: torch.Tensor, k_mean: torch.Tensor, topk: int) -> torch.Tensor:
        """q_mean, k_mean: (B, nW, C) window means -> (B, nW, topk) int64 ids of each query window's best key
        windows (largest dot product of the means)."""
        affinity = q_mean @ k_mean.transpose(1, 2)                                 # (B, nW, nW)
        return torch.topk(affinity.float(), k=topk, dim=-1).indices

    def forward(self, x: torch.Tensor, window_index: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, C) tokens -> (B, H, W, C) merged message.

        window_index: optional (B, nW, topk) int64 to hold the window selection fixed (tests, analysis).
        """
        b, h, w, c = x.shape
        ws = self.window
        if h % ws or w % ws:
            raise ValueError(f"feature map {h}x{w} is not divisible into {ws}x{ws} windows")
        n_win = (h // ws) * (w // ws)
        topk = min(self.topk, n_win)
        q, k, v = window_partition(self.qkv(x), ws).chunk(3, dim=-1)          # each (B, nW, T, C)
        if window_index is None:
            window_index = self.select_windows(q.mean(dim=2), k.mean(dim=2), topk)
        k_mean, v_mean = k.mean(dim=2), v.mean(dim=2)                            # (B, nW, C)
        if self.attention == "linear":
            out = self._linear(q, k, v, k_mean, v_mean, window_index)
        else:
            out = self._softmax(q, k, v, k_mean, v_mean, window_index)
        return self.merge(window_reverse(out, ws, h, w))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., heads, d)."""
        return t.unflatten(-1, (self.heads, self.dim // self.heads))

    def _linear(self, q, k, v, k_mean, v_mean, window_index):
        """Linear attention per query window; sum over the selected windows via a 0/1 selection matrix.

        Values get a column of ones per head, so one contraction yields numerator (first d columns) and
        normaliser (last column) together.
        """
        _, n_win, n_tok, _ = q.shape
        n_keys = window_index.shape[-1] * n_tok + (n_win if self.mean_tokens else 0)
        fq, fk = elu_feature_map(self._split(q)), elu_feature_map(self._split(k))   # (B, nW, T, h, d)
        # batched matrix products rather than einsum: the same arithmetic, and onnxruntime runs MatMul far faster
        kv_win = fk.permute(0, 1, 3, 4, 2) @ _with_ones(self._split(v), n_keys).transpose(2, 3)  # (B, nW, h, d, d+1)
        # (B, nW_query, nW_key) 0/1; one_hot rather than zeros(b, ...) keeps the batch axis dynamic under ONNX export
        select = F.one_hot(window_index, n_win).sum(dim=2).to(kv_win.dtype)
        kv = (select @ kv_win.flatten(2)).view(kv_win.shape)                        # (B, nW_query, h, d, d+1)
        if self.mean_tokens:
            fkm = elu_feature_map(self._split(k_mean))                            # (B, nW, h, d)
            kv = kv + (fkm.permute(0, 2, 3, 1) @ _with_ones(self._split(v_mean), n_keys).transpose(1, 2)).unsqueeze(1)
        out = (fq.transpose(2, 3) @ kv).transpose(2, 3)                            # (B, nW, T, h, d+1)
        return _ratio(out, self.eps / n_keys).flatten(-2)                         # (B, nW, T, C)

    def _softmax(self, q, k, v, k_mean, v_mean, window_index):
        """Scaled dot-product attention per query window over gathered key tokens."""
        b, n_win, n_tok, c = q.shape
        topk = window_index.shape[-1]
        batch = torch.arange(b, device=q.device).view(b, 1, 1)
        keys = k[batch, window_index].reshape(b, n_win, topk * n_tok, c)          # (B, nW, k*T, C)
        vals = v[batch, window_index].reshape(b, n_win, topk * n_tok, c)
        if self.mean_tokens:
            keys = torch.cat([keys, k_mean.unsqueeze(1).expand(b, n_win, n_win, c)], dim=2)
            vals = torch.cat([vals, v_mean.unsqueeze(1).expand(b, n_win, n_win, c)], dim=2)
        hd = self.dim // self.heads

        def heads_first(t):                                                       # (B, nW, S, C) -> (B*nW, h, S, d)
            return t.reshape(b * n_win, t.shape[2], self.heads, hd).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads_first(q), heads_first(keys), heads_first(vals))
        return out.transpose(1, 2).reshape(b, n_win, n_tok, c)


class ConvMlp(nn.Module):
    """Token MLP with a depthwise 3x3 conv inside: Linear -> ReLU -> dw3x3 -> GELU -> Linear (as published)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.dwconv.weight, 0.0, math.sqrt(2.0 / 9.0))
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, in_dim) -> (B, H, W, out_dim)."""
        y = F.relu(self.fc1(x))
        y = self.dwconv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)              # channels_last conv, no copy
        return self.fc2(F.gelu(y))


class TopKWindowAttentionLayer(nn.Module):
    """One Top-K window attention layer: message = LN(merge(attn(x))); out = x + LN(MLP([x, message])).

    Input and output (B, C, H, W); the output has channels_last strides (tokens stay contiguous).
    """

    def __init__(self, dim: int, heads: int, window: int, topk: int, attention: str = "linear",
                 mean_tokens: bool = True):
        super().__init__()
        self.attn = TopKWindowAttention(dim, heads, window, topk, attention, mean_tokens)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = ConvMlp(2 * dim, 2 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        t = x.permute(0, 2, 3, 1)                                                 # (B, H, W, C)
        message = self.norm1(self.attn(t))
        t = t + self.norm2(self.mlp(torch.cat([t, message], dim=-1)))
        return t.permute(0, 3, 1, 2)


class TopKWindowNeck(nn.Module):
    """The two-stage neck: per stage, blocks of MBConv (the first with stride 2) then a Top-K window attention layer.

    Defaults as published: (B, 128, 32, 32) -> stage 1: 5 blocks, 256 ch at 16^2, windows 4x4 tokens, top-4, 8 heads
    -> stage 2: 2 blocks, 512 ch at 8^2, windows 2x2 tokens, top-4, 16 heads -> (B, 512, 8, 8).
    """

    def __init__(self, in_ch: int = 128, dims=(256, 512), depths=(5, 2), heads=(8, 16), windows=(4, 2),
                 topks=(4, 4), attention: str = "linear", mean_tokens: bool = True):
        super().__init__()
        stages = []
        for dim, depth, n_heads, win, k in zip(dims, depths, heads, windows, topks):
            blocks = []
            for i in range(depth):
                blocks.append(nn.Sequential(
                    MBConv(in_ch if i == 0 else dim, dim, stride=2 if i == 0 else 1),
                    TopKWindowAttentionLayer(dim, n_heads, win, k, attention, mean_tokens)))
            stages.append(nn.Sequential(*blocks))
            in_ch = dim
        self.stages = nn.Sequential(*stages)
        self.out_ch = in_ch
        self.to(memory_format=torch.channels_last)              # conv weights in the layout the neck runs in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, dims[-1], H/4, W/4), channels_last strides.

        Runs in channels_last layout throughout, so the token view (B, H, W, C) of every map is contiguous.
        """
        return self.stages(x.contiguous(memory_format=torch.channels_last))


def sine_position_encoding(dim: int, height: int, width: int) -> torch.Tensor:
    """2D sinusoidal encoding (LoFTR layout, with the corrected frequency formula): (1, dim, height, width) float32.

    Channel groups of four hold sin(x f), cos(x f), sin(y f), cos(y f); x, y = 1-based column / row;
    f_j = 10000^(-2j / (dim/2)), j = 0 .. dim/4 - 1.
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    y = torch.arange(1, height + 1, dtype=torch.float64).view(1, height, 1).expand(1, height, width)
    x = torch.arange(1, width + 1, dtype=torch.float64).view(1, 1, width).expand(1, height, width)
    freq = torch.exp(torch.arange(0, dim // 2, 2, dtype=torch.float64) * (-math.log(10000.0) / (dim // 2)))
    freq = freq.view(-1, 1, 1)
    pe = torch.zeros(dim, height, width, dtype=torch.float64)
    pe[0::4], pe[1::4] = torch.sin(x * freq), torch.cos(x * freq)
    pe[2::4], pe[3::4] = torch.sin(y * freq), torch.cos(y * freq)
    return pe.unsqueeze(0).float()


class SinePositionalEncoding(nn.Module):
    """Adds a fixed 2D sine encoding (non-persistent buffer, not saved in checkpoints) to a (B, C, H, W) map."""

    def __init__(self, dim: int, max_shape=(8, 8)):
        super().__init__()
        self.register_buffer("pe", sine_position_encoding(dim, *max_shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) with H, W <= max_shape -> x + pe."""
        h, w = x.shape[-2:]
        if h > self.pe.shape[2] or w > self.pe.shape[3]:
            raise ValueError(f"feature map {h}x{w} exceeds the positional encoding's {tuple(self.pe.shape[2:])}")
        return x + self.pe[:, :, :h, :w].to(x.dtype)


class GlobalAttentionLayer(nn.Module):
    """LoFTR-style self-attention encoder layer over all H*W tokens, after a sine positional encoding.

    message = LN(merge(attn(x))); out = x + LN(MLP([x, message])), MLP = Linear(2C,2C) -> ReLU -> Linear(2C,C)
    (no biases; xavier-uniform init as LoFTR).
    """

    def __init__(self, dim: int = 512, heads: int = 8, attention: str = "linear", max_shape=(8, 8)):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.heads, self.attention = heads, attention
        self.pos_encoding = SinePositionalEncoding(dim, max_shape)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm2 = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W) with channels_last strides."""
        x = self.pos_encoding(x)
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)                           # (B, L, C)
        q, k, v = self.qkv(t).unflatten(-1, (3, self.heads, c // self.heads)).unbind(2)   # (B, L, h, d)
        if self.attention == "linear":
            out = linear_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = out.transpose(1, 2)
        message = self.norm1(self.merge(out.reshape(b, h * w, c)))
        t = t + self.norm2(self.mlp(torch.cat([t, message], dim=-1)))
        return t.reshape(b, h, w, c).permute(0, 3, 1, 2)
