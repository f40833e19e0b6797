"""E2TKFace: E(2)-equivariant CNN encoder -> Top-K window attention neck -> global attention layer -> PRNet decoder;
registered as "e2tkface". Maps images to position maps; the loss lives in model/loss.py.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .decoder import PRNET_DECODER_LAYERS, PRNetDecoder
from .fold import fuse_batchnorm
from .head import CROP_SIZE, PosmapIO, check_head, published_topk
from .registry import ModelConfigError, register_model
from .topk_attention import ATTENTION_KINDS, GlobalAttentionLayer, TopKWindowNeck

ENCODER_KINDS = ("aligned", "faithful", "cnn")


class E2TKFace(nn.Module):
    """image (B, 3, 256, 256) in [0, 1] -> position map / 280, (B, 3, 256, 256) (tanh range).

    encoder: (B, 3, 256, 256) -> (B, C_enc, 32, 32) plain tensors (model.encoder.E2Encoder / CNNEncoder or any
    module with that contract); neck: (B, C_enc, 32, 32) -> (B, 512, 8, 8); global_layer: same shape;
    decoder: (B, 512, 8, 8) -> (B, 3, 256, 256). The neck and the decoder always run in NHWC (channels_last)
    layout; channels_last=True also feeds the encoder NHWC tensors (see model.device.to_channels_last).
    io: model.head.PosmapIO (input size and output head; default: 256 and the published head). At input size s the
    inner shapes above scale by s / 256; the outer contract stays (B, 3, 256, 256) -> (B, 3, 256, 256).
    """

    def __init__(self, encoder: nn.Module, neck: nn.Module, global_layer: nn.Module, decoder: nn.Module,
                 channels_last: bool = False, io: PosmapIO | None = None):
        super().__init__()
        self.io = io if io is not None else PosmapIO()
        self.encoder = encoder
        self.neck = neck
        self.global_layer = global_layer
        self.decoder = decoder
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 256, 256) float in [0, 1] -> (B, 3, 256, 256) float32, position map / 280."""
        x = self.io.shrink(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.encoder(x)                                   # (B, 128, 32, 32)
        tokens = self.global_layer(self.neck(features))              # (B, 512, 8, 8), channels_last strides
        return self.io.expand(self.decoder(tokens))

    def export(self) -> "E2TKFace":
        """Inference twin in eval mode: the encoder replaced by its plain-torch export (if it has one), the rest
        deep-copied with every BatchNorm folded into the convolution before it; same outputs as this model in eval
        mode (up to float rounding)."""
        was_training = self.training
        self.eval()
        encoder = self.encoder.export() if hasattr(self.encoder, "export") else copy.deepcopy(self.encoder)
        twin = E2TKFace(encoder, fuse_batchnorm(copy.deepcopy(self.neck)), copy.deepcopy(self.global_layer),
                        fuse_batchnorm(copy.deepcopy(self.decoder)), self.channels_last, copy.deepcopy(self.io))
        self.train(was_training)
        return twin.eval()


def build_encoder(kind: str = "aligned", width_mult: float = 1.0, out_ch: int = 128,
                  cnn_layout: str = "aligned") -> nn.Module:
    """The encoder named by --encoder: "aligned" / "faithful" (E2Encoder layouts, C8 regular fields (4, 8, 16))
    or "cnn" (plain CNN ablation with the same channel widths (32, 64, 128), downsampling as ``cnn_layout``)."""
    if kind not in ENCODER_KINDS:
        raise ModelConfigError(f"encoder must be one of {', '.join(ENCODER_KINDS)}, got {kind!r}.")
    from .encoder import CNNEncoder, E2Encoder                   # deferred: e2cnn is slow to import

    # at least 2 regular fields per stage: e2cnn 0.2.3 crashes natively (double free) in the backward pass of the
    # faithful layout's stride-2 1x1 shortcut when a stage has a single regular field (width_mult < 0.375)
    fields = tuple(max(2, round(w * width_mult)) for w in (4, 8, 16))
    if kind == "cnn":
        return CNNEncoder(layout=cnn_layout, widths=tuple(8 * f for f in fields), out_ch=out_ch)
    return E2Encoder(layout=kind, widths=fields, out_ch=out_ch)


def scaled_dims(width_mult: float) -> dict:
    """Widths of neck, global layer and decoder for a width multiplier (1.0 = the published sizes).

    Neck channels are multiples of 32 (heads of 32); the global layer keeps heads of 64.
    """
    if width_mult <= 0:
        raise ModelConfigError(f"width_mult must be positive, got {width_mult}.")
    d1 = max(32, int(round(256 * width_mult / 32)) * 32)
    d2 = 2 * d1
    decoder = tuple((c if c == 3 else max(4, int(round(c * width_mult))), s) for c, s in PRNET_DECODER_LAYERS)
    return {"enc_out": max(8, int(round(128 * width_mult))), "dims": (d1, d2), "heads": (d1 // 32, d2 // 32),
            "global_heads": max(1, d2 // 64), "decoder": decoder}


def build_e2tkface_from(encoder: nn.Module, enc_out: int = 128, width_mult: float = 1.0,
                        attention: str = "linear", mean_tokens: bool = True, topk: int = 4,
                        channels_last: bool = False, input_size: int = CROP_SIZE,
                        head: str = "published") -> E2TKFace:
    """E2TKFace around a given encoder module producing (B, enc_out, input_size / 8, input_size / 8)."""
    dims = scaled_dims(width_mult)
    neck = TopKWindowNeck(enc_out, dims["dims"], (5, 2), dims["heads"], (4, 2), (topk, topk), attention, mean_tokens)
    global_layer = GlobalAttentionLayer(dims["dims"][1], dims["global_heads"], attention)
    decoder = PRNetDecoder(dims["dims"][1], dims["decoder"], linear_output=head == "mean-residual")
    return E2TKFace(encoder, neck, global_layer, decoder, channels_last, PosmapIO(input_size, head))


@register_model("e2tkface")
def build_e2tkface(encoder: str = "aligned", width_mult: float = 1.0, attention: str = "linear",
                   mean_tokens: bool = True, topk: int | None = None, channels_last: bool = False,
                   cnn_layout: str = "aligned", input_size: int = CROP_SIZE, head: str = "published") -> E2TKFace:
    """E2TKFace as published (width_mult 1: about 23.0 M trainable parameters, 6.8 GMAC per 256^2 image).

    encoder: "aligned" (exactly 90-degree equivariant at 256, default) | "faithful" (published stride-2) | "cnn".
    attention: "linear" (published) | "softmax"; mean_tokens: append every window's mean key/value token;
    topk: key windows kept per query window (default: the published quarter of the windows, 4 at 256, 1 below);
    channels_last: NHWC convolutions; cnn_layout: downsampling of "cnn"; input_size, head: model.head.PosmapIO.
    """
    check_head(head, input_size)
    if attention not in ATTENTION_KINDS:
        raise ModelConfigError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {attention!r}.")
    topk = published_topk(input_size) if topk is None else topk
    if not 1 <= topk <= 16:
        raise ModelConfigError(f"topk must be between 1 and 16 (the windows per stage), got {topk}.")
    enc_out = scaled_dims(width_mult)["enc_out"]
    enc = build_encoder(encoder, width_mult, enc_out, cnn_layout)
    return build_e2tkface_from(enc, enc_out, width_mult, attention, mean_tokens, topk, channels_last, input_size, head)
