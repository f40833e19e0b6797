"""Model size report: parameter counts and multiply-accumulates (MACs) per image, in total and per top-level
child, counted by torch.utils.flop_counter on one forward pass (convolutions, linear layers, matmuls, attention).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ModelSummary:
    """params: trainable parameters; total_params: all parameters; buffers: buffer elements (masks, BN stats);
    macs: multiply-accumulates for one image of input_size; macs_by_child / params_by_child: per top-level child."""
    params: int
    total_params: int
    buffers: int
    macs: int
    input_size: tuple
    params_by_child: dict = field(default_factory=dict)
    macs_by_child: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"trainable parameters {self.params:,} (total {self.total_params:,}, buffer elements "
                 f"{self.buffers:,}); {self.macs / 1e9:.3f} GMAC per {self.input_size[1:]} input"]
        for name, p in self.params_by_child.items():
            lines.append(f"  {name:<14} {p:>12,} params  {self.macs_by_child.get(name, 0) / 1e9:8.3f} GMAC")
        return "\n".join(lines)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def summary(model: nn.Module, input_size=(1, 3, 256, 256)) -> ModelSummary:
    """Parameters and MACs per image of ``model`` (run once in eval mode on zeros of the model's device and dtype; the
    training flag is restored). input_size: (B, C, H, W); MACs are divided by B."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(torch.zeros(input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    batch = input_size[0]
    counts = counter.get_flop_counts()
    roots = [k for k in counts if k != "Global" and "." not in k]       # the model's own entry, named by class
    root = roots[0] if roots else None
    macs_by_child, params_by_child = {}, {}
    for name, child in model.named_children():
        params_by_child[name] = count_parameters(child)
        key = f"{root}.{name}" if root else name
        macs_by_child[name] = int(sum(counts.get(key, {}).values())) // 2 // batch
    return ModelSummary(params=count_parameters(model), total_params=count_parameters(model, False),
                        buffers=sum(b.numel() for b in model.buffers()),
                        macs=int(counter.get_total_flops()) // 2 // batch, input_size=tuple(input_size),
                        params_by_child=params_by_child, macs_by_child=macs_by_child)
