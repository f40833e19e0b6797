"""Causal temporal smoothing of tracked points (landmarks, dense face points) for video: the One Euro filter.

The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) is an exponential low-pass filter whose cut-off frequency
rises with the speed of the signal: slow, jittery points are smoothed hard, fast motion passes with little lag.
This implementation filters a whole (N, D) array of points per call, the speed taken per point (the norm over its
D coordinates), so a point's coordinates are smoothed alike. numpy only.
"""
from __future__ import annotations

import math

import numpy as np

#: --smooth strength s in [0, 1] -> filter settings: minimum cut-off MAX_CUTOFF * (MIN_CUTOFF / MAX_CUTOFF) ** s Hz
#: and speed coefficient BETA (per image pixel per second); s = 0 is no filter at all
MAX_CUTOFF, MIN_CUTOFF = 8.0, 0.15
BETA = 0.02
DERIVATIVE_CUTOFF = 1.0


def _alpha(cutoff, dt: float):
    """Smoothing factor of a first-order low-pass filter with the given cut-off (Hz) at time step dt (s)."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One Euro filter over arrays of points.

    min_cutoff: cut-off (Hz) for points at rest (lower = smoother, more lag); beta: how fast the cut-off rises with
    speed (Hz per unit/s); d_cutoff: cut-off of the speed estimate. Call with (N, D) points and the frame time (s);
    returns the filtered (N, D) float64 points. The first call returns its input.
    """

    def __init__(self, min_cutoff: float, beta: float = BETA, d_cutoff: float = DERIVATIVE_CUTOFF):
        if not (min_cutoff > 0 and beta >= 0 and d_cutoff > 0):
            raise ValueError("min_cutoff and d_cutoff must be > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None
        self.time: float | None = None

    @classmethod
    def from_strength(cls, strength: float) -> "OneEuroFilter | None":
        """The filter for a --smooth strength in [0, 1]; None for 0 (no smoothing)."""
        s = float(strength)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"smoothing strength must lie in [0, 1], got {strength}")
        if s == 0.0:
            return None
        return cls(MAX_CUTOFF * (MIN_CUTOFF / MAX_CUTOFF) ** s)

    def reset(self) -> None:
        self.value = self.speed = self.time = None

    def __call__(self, points: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(points, dtype=np.float64)
        if self.value is None or self.value.shape != x.shape or self.time is None or t <= self.time:
            self.value, self.speed, self.time = x.copy(), np.zeros(x.shape[:-1] + (1,)), float(t)
            return self.value.copy()
        dt = float(t) - self.time
        rate = np.linalg.norm(x - self.value, axis=-1, keepdims=True) / dt          # speed per point, units/s
        a_d = _alpha(self.d_cutoff, dt)
        self.speed = a_d * rate + (1.0 - a_d) * self.speed
        a = _alpha(self.min_cutoff + self.beta * self.speed, dt)
        self.value = a * x + (1.0 - a) * self.value
        self.time = float(t)
        return self.value.copy()
