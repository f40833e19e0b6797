"""The network's contract with the 256x256 crop: the input size the network runs at and the output head.

Owns PosmapIO (shrink the crop to --input-size, map the network's position map back to the 256 crop, add the mean
position map for the "mean-residual" head), and the names/validation of both options.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from faceutil.uv import POSMAP_SCALE

from .errors import ModelConfigError

HEADS = ("published", "mean-residual")
INPUT_SIZES = (64, 128, 256)
CROP_SIZE = 256


def to_posmaps(output: torch.Tensor) -> np.ndarray:
    """Network output (B, 3, H, W) = posmap / 280 -> (B, H, W, 3) float32 position maps in crop pixels."""
    return (output.detach().float().cpu() * POSMAP_SCALE).permute(0, 2, 3, 1).numpy()


def check_head(head: str, input_size: int) -> None:
    """ModelConfigError (one sentence) for a head or input size outside the allowed sets."""
    if head not in HEADS:
        raise ModelConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}.")
    if input_size not in INPUT_SIZES:
        raise ModelConfigError(f"input_size must be one of {', '.join(map(str, INPUT_SIZES))}, got {input_size!r}.")


class PosmapIO(nn.Module):
    """Input resizing and output head shared by every position-map network (no trainable parameters).

    input_size s: the crop (B, 3, 256, 256) is average-pooled to (B, 3, s, s) before the network (``shrink``); the
    network's (B, 3, s, s) output is upsampled bilinearly to 256 (``expand``) and its coordinates mapped to the 256
    crop: a small-crop pixel p lands at (p + 0.5) * 256 / s - 0.5 (x, y), z scales by 256 / s. Data, loss mask,
    evaluation and exports keep the 256 contract whatever s is.
    head "published": the decoder ends in BatchNorm + tanh and its output is the position map / 280.
    head "mean-residual": the decoder ends in a linear layer that starts at zero, and the output is the training
    set's mean position map (buffer ``mean_posmap``, (1, 3, 256, 256) / 280, saved in the state dict, so it travels
    with checkpoints, inference twins and ONNX files) plus that residual: an untrained network predicts exactly
    the mean face. A difference needs no pixel-centre shift, so the residual is only scaled by 256 / s.
    """

    def __init__(self, input_size: int = CROP_SIZE, head: str = "published"):
        super().__init__()
        check_head(head, input_size)
        self.input_size, self.head = int(input_size), head
        self.factor = CROP_SIZE // self.input_size
        if head == "mean-residual":
            self.register_buffer("mean_posmap", torch.zeros(1, 3, CROP_SIZE, CROP_SIZE))

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) crop -> (B, 3, s, s): the mean of each factor x factor block (area resampling). A crop
        already shrunk, (B, 3, s, s), passes through (model.canonical turns it upright at that size)."""
        return x if self.factor == 1 or x.shape[-1] == self.input_size else F.avg_pool2d(x, self.factor)

    def expand(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 3, s, s) network output -> (B, 3, 256, 256) position map / 280 of the 256 crop (float32)."""
        y = y.float()
        if self.factor != 1:
            y = F.interpolate(y, scale_factor=float(self.factor), mode="bilinear", align_corners=False) * self.factor
        if self.head == "mean-residual":
            return self.mean_posmap + y
        if self.factor == 1:
            return y
        shift = 0.5 * (self.factor - 1) / POSMAP_SCALE                 # x, y only: (p + 0.5) * f - 0.5 = p*f + shift
        return y + y.new_tensor([shift, shift, 0.0]).view(1, 3, 1, 1)

    @torch.no_grad()
    def set_mean_posmap(self, posmap: np.ndarray | torch.Tensor) -> None:
        """Store the mean training position map: (256, 256, 3) in crop pixels (as the processor writes it)."""
        if self.head != "mean-residual":
            raise ValueError("only the mean-residual head holds a mean position map")
        array = torch.as_tensor(np.asarray(posmap, dtype=np.float32))
        if array.shape != (CROP_SIZE, CROP_SIZE, 3) or not torch.isfinite(array).all():
            raise ValueError(f"the mean position map must be a finite (256, 256, 3) array, got {tuple(array.shape)}")
        self.mean_posmap.copy_(array.permute(2, 0, 1).unsqueeze(0) / POSMAP_SCALE)

    def _apply(self, fn, recurse=True):
        """Module casts (``.to(torch.bfloat16)``, ``.half()``) move the mean map but keep it float32: in bf16 a
        200-px coordinate would round by up to 0.5 px before the residual is even added."""
        mean = self._buffers.get("mean_posmap")
        result = super()._apply(fn, recurse)
        if mean is not None and self.mean_posmap.dtype != mean.dtype:
            self._buffers["mean_posmap"] = mean.to(device=self.mean_posmap.device)
        return result

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, head={self.head!r}"


def published_topk(input_size: int) -> int:
    """Top-K windows keeping the published fraction (4 of the 16 windows per stage at 256): 1 at 128 and 64."""
    return max(1, round(4 * (input_size / CROP_SIZE) ** 2))
