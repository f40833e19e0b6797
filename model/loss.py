"""Position-map losses: squared error of the network output (position map / 280) weighted per UV pixel by
PRNet's weight mask (16 keypoints / 4 eyes, nose, mouth / 3 face / 0 elsewhere); the mask is a buffer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

LOSS_KINDS = ("mse", "rse")


class WeightedPosmapLoss(nn.Module):
    """Weighted position-map error.

    weight_mask: (H, W) numpy array or tensor, float, >= 0 (faceutil.uv.build_uv_layout(model).weight_mask).
    kind="mse": mean over (B, 3, H, W) of w(h, w) * (pred - target)^2  (PRNet's weighted square error);
    kind="rse": mean over (B, H, W) of w(h, w) * ||pred - target||_2 over the 3 channels (PRNet-PyTorch's "wrse").
    pred, target: (B, 3, H, W) float, same units (the network's posmap / 280). Returns a scalar tensor (float32).
    """

    def __init__(self, weight_mask, kind: str = "mse"):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
        mask = torch.as_tensor(np.asarray(weight_mask, dtype=np.float32))
        if mask.ndim != 2:
            raise ValueError(f"weight_mask must be (H, W), got shape {tuple(mask.shape)}")
        if not torch.isfinite(mask).all() or (mask < 0).any():
            raise ValueError("weight_mask must hold finite non-negative weights")
        self.kind = kind
        self.register_buffer("weight_mask", mask)                  # saved with the module, never trained

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, 3, H, W) -> scalar loss (computed in float32 even under autocast)."""
        if pred.shape != target.shape or pred.shape[-2:] != self.weight_mask.shape:
            raise ValueError(f"pred {tuple(pred.shape)} / target {tuple(target.shape)} do not match the "
                             f"weight mask {tuple(self.weight_mask.shape)}")
        diff = pred.float() - target.float()
        if self.kind == "mse":
            return (diff.square() * self.weight_mask).mean()
        dist = torch.sqrt(diff.square().sum(dim=1) + 1e-12)        # (B, H, W); eps keeps the gradient finite
        return (dist * self.weight_mask).mean()
