"""Is the network predicting one face for every image? The training loop's watch on the mean-face plateau.

A network that stays on the mean face (benchmarks/results/convergence.md) predicts nearly the same position map
for every image of a batch, so the spread of its predictions across the batch is a small fraction of the spread of
the targets. ``spread_ratio`` measures that on the face region (weight-mask > 0); ``CollapseWatch`` keeps a running
mean of it and, ``check_step`` steps into training, says once whether the run is still on the plateau.
"""
from __future__ import annotations

import torch

# Below this ratio of prediction spread to target spread the network is taken to predict one face for every image.
# Measured (escape probes, 128 px aligned encoder, batch 16): runs that stayed on the mean face had an output
# spread of 0-2 px against targets spread by about 20 px across the batch (ratio <= 0.1); runs that learnt were at
# 13-20 px (>= 0.6) by step 300.
COLLAPSED_BELOW = 0.25
MIN_UPDATES = 20              # batches seen (since the start or a resume) before a verdict


@torch.no_grad()
def spread_ratio(pred: torch.Tensor, target: torch.Tensor, face: torch.Tensor) -> float:
    """Spread of the predictions across the batch / spread of the targets, over the face pixels.

    pred, target: (B, 3, H, W) position maps (any common unit); face: (H, W) bool. Spread = root mean over face
    pixels and channels of the variance across the batch. Returns nan for a batch of one or flat targets.
    """
    if pred.shape[0] < 2:
        return float("nan")
    p = pred.detach().float()[:, :, face]
    t = target.detach().float()[:, :, face]
    true = float(t.var(dim=0).mean())
    return float("nan") if true <= 0 else (float(p.var(dim=0).mean()) / true) ** 0.5


class CollapseWatch:
    """Running mean of spread_ratio over training steps and a one-time verdict at ``check_step``.

    face: (H, W) bool mask of the pixels that matter (the loss weight mask > 0). ``update`` returns the running
    value (for TensorBoard); ``verdict`` returns the warning text once, at the first update at or past check_step,
    when the running value is below COLLAPSED_BELOW, else None.
    """

    def __init__(self, face: torch.Tensor, check_step: int, momentum: float = 0.9):
        self.face = face.bool()
        self.check_step = int(check_step)
        self.momentum = momentum
        self.value: float | None = None
        self.updates = 0
        self.checked = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> float | None:
        r = spread_ratio(pred, target, self.face.to(pred.device))
        if r == r:                                                  # not nan
            self.value = r if self.value is None else self.momentum * self.value + (1 - self.momentum) * r
            self.updates += 1
        return self.value

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run continues the same running value and verdict."""
        return {"value": self.value, "updates": self.updates, "checked": self.checked}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore state_dict() (None: a checkpoint from before the watch existed; the watch starts afresh)."""
        if state:
            self.value, self.updates, self.checked = state["value"], int(state["updates"]), bool(state["checked"])

    def verdict(self, step: int) -> str | None:
        if self.checked or step < self.check_step or self.updates < MIN_UPDATES:
            return None
        self.checked = True
        if self.value >= COLLAPSED_BELOW:
            return None
        return (f"warning: after {step} steps the network still predicts nearly the same face for every image (its "
                f"predictions spread {self.value:.0%} as much as the targets across a batch; below "
                f"{COLLAPSED_BELOW:.0%} means it has not left the mean face). Its result will be close to the "
                f"mean face's. With --optimizer=adam or radam, use adamw (the default: Adam's gradient-added weight "
                f"decay shrinks the decoder's weights); else try a longer --warmup or a lower --lr "
                f"(benchmarks/results/convergence.md).")
