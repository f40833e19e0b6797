"""Optimiser pieces: parameter groups (weight decay on weights only, or on everything as published) and the
per-step learning-rate schedule (linear warm-up, then per-epoch exponential decay or cosine).
"""
from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("exp", "cosine")


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool = True) -> list[dict]:
    """Optimiser parameter groups. decay_norm_bias=True: one group, weight decay on every parameter (as published);
    False: no weight decay on 1-D parameters (biases, BatchNorm / LayerNorm scales and shifts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: (step + 1) / warmup_steps for the first warmup_steps steps (0-based step), then 1."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def lr_factor(step: int, *, warmup_steps: int, steps_per_epoch: int, total_steps: int, schedule: str = "exp",
              decay: float = 0.8) -> float:
    """Learning rate / base learning rate at optimiser step `step` (0-based).

    Linear warm-up over warmup_steps, times "exp": decay ** (completed epochs) (the published per-epoch decay) or
    "cosine": 0.5 * (1 + cos(pi * t)), t = (step - warm-up) / (total_steps - warm-up), clipped to [0, 1].
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "exp":
        after = decay ** (step // max(1, steps_per_epoch))
    else:
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        after = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, t))))
    return warmup_factor(step, warmup_steps) * after


OPTIMIZERS = ("adam", "adamw", "radam")


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """The optimiser named by --optimizer over parameter_groups(...): "adam" (weight decay added to the gradient,
    as published), "adamw" (decoupled weight decay) or "radam" (Adam with the variance of its adaptive step
    rectified in the first steps, Liu et al. 2020; weight decay added to the gradient, as "adam")."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[name]
    return cls(groups, lr=lr)
