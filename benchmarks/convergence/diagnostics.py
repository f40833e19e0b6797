"""Per-block measurements of a network during training, for the convergence probes and benchmarks.escape: the
tracked blocks, their gradient and weight norms, how much of a block's output differs between images (a block whose
output is the same for every image passes nothing on), dead ReLU channels, and the effective rank of a feature map."""
from __future__ import annotations

import math

import numpy as np


def layer_groups(model) -> list[tuple[str, object]]:
    """(name, module) of the blocks whose gradients and features are tracked, input to output."""
    groups = [("encoder", model.encoder)]
    if hasattr(model, "neck"):
        groups += [(f"neck.stage{i}", s) for i, s in enumerate(model.neck.stages)]
        groups.append(("global", model.global_layer))
    groups += [(f"decoder.{i}", layer) for i, layer in enumerate(model.decoder.layers)]
    return groups


def grad_norms(groups) -> dict:
    """{group: [gradient L2 norm, weight L2 norm]} of each group's parameters (run_probe appends the relative
    size of the optimiser step, ||w_after - w_before|| / ||w_before||)."""
    out = {}
    for name, module in groups:
        g = w = 0.0
        for p in module.parameters():
            w += float(p.detach().float().square().sum())
            if p.grad is not None:
                g += float(p.grad.detach().float().square().sum())
        out[name] = [math.sqrt(g), math.sqrt(w)]
    return out


def between_image_share(t) -> float:
    """Variance across images (per element, averaged) / variance over images and positions (per channel,
    averaged) of a (B, C, ...) tensor: about 0 when every image gives the same feature map."""
    t = t.detach().float().reshape(t.shape[0], t.shape[1], -1)
    total = t.transpose(0, 1).reshape(t.shape[1], -1).var(dim=1).mean()
    return float(t.var(dim=0).mean() / total.clamp_min(1e-20))


def tensor_stats(t) -> dict:
    """{"image_info": between_image_share, "dead": share of channels <= 0 everywhere, "saturated": share of values
    with |v| > 0.99 (for the published head's tanh output)} of a (B, C, H, W) or (B, C, L) tensor."""
    t = t.detach().float()
    t = t.reshape(t.shape[0], t.shape[1], -1)                              # (B, C, L)
    per_channel = t.transpose(0, 1).reshape(t.shape[1], -1)
    dead = (per_channel.amax(dim=1) <= 0).float().mean()
    return {"image_info": between_image_share(t), "dead": float(dead),
            "saturated": float((t.abs() > 0.99).float().mean())}


def block_outputs(model, x, named, measure) -> dict:
    """{name: measure(output of module)} for each (name, module) of `named`, from one forward pass of x without
    gradient, in the mode the model is in."""
    import torch

    found, hooks = {}, []
    for name, module in named:
        hooks.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, measure(out))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return found


def feature_stats(model, x, groups) -> dict:
    """{group: tensor_stats of its output} for one forward pass in training mode (what the loss sees)."""
    return block_outputs(model, x, groups, tensor_stats)


def effective_rank(t) -> float:
    """Participation ratio (sum λ)² / sum λ² of the channel covariance of a (B, C, H, W) tensor: how many channels'
    worth of independent variation it carries (C when all channels are uncorrelated with equal variance, 1 when they
    move together)."""
    t = t.detach().double()
    c = t.transpose(0, 1).reshape(t.shape[1], -1)
    c = c - c.mean(dim=1, keepdim=True)
    lam = np.clip(np.linalg.eigvalsh((c @ c.T / c.shape[1]).numpy()), 0, None)
    return float(lam.sum() ** 2 / max(float((lam ** 2).sum()), 1e-300))
