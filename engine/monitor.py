"""TensorBoard logging (rank 0 only, writer created on first use) and the small drawings it shows.

Images: input crop with true (green) and predicted (red) landmarks; position-map channels, truth above prediction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

GREEN = (0, 255, 0)
RED = (255, 40, 40)


def draw_points(image: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int = 1) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) uint8 with (N, 2+) points (x = column, y = row, pixels) drawn as squares."""
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    centres = np.rint(pts).astype(np.int64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x = centres[:, 0] + dx
            y = centres[:, 1] + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            out[y[ok], x[ok]] = color
    return out


def landmark_panel(image: np.ndarray, true_pts: np.ndarray | None, pred_pts: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the crop with true landmarks in green and predicted ones in red."""
    out = image if true_pts is None else draw_points(image, true_pts, GREEN)
    return draw_points(out, pred_pts, RED)


def posmap_panel(true_posmap: np.ndarray | None, pred_posmap: np.ndarray) -> np.ndarray:
    """(rows*H, 3*W) uint8 grey: x, y, z channels side by side; truth on top (if given), prediction below.

    Posmaps are (H, W, 3) float crop pixels; each channel is scaled by the truth's range when there is one.
    """
    rows = [p for p in (true_posmap, pred_posmap) if p is not None]
    ref = rows[0]
    lo = ref.reshape(-1, 3).min(axis=0)
    hi = ref.reshape(-1, 3).max(axis=0)
    span = np.where(hi - lo > 1e-6, hi - lo, 1.0)
    tiles = []
    for p in rows:
        scaled = np.clip((p - lo) / span, 0.0, 1.0)
        tiles.append(np.concatenate([scaled[..., c] for c in range(3)], axis=1))
    return (np.concatenate(tiles, axis=0) * 255.0 + 0.5).astype(np.uint8)


class Monitor:
    """Lazily created torch.utils.tensorboard SummaryWriter under <run>/tensorboard; inert when disabled."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None

    @property
    def writer(self):
        if self._writer is None and self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                import sys

                print("warning: the tensorboard package is not installed; training runs without TensorBoard logs "
                      "(pip install tensorboard).", file=sys.stderr)
                self.enabled = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: (H, W, 3) or (H, W) uint8."""
        if not self.enabled or self.writer is None:
            return
        img = np.asarray(image)
        if img.ndim == 2:
            self.writer.add_image(tag, img[None], step, dataformats="CHW")
        else:
            self.writer.add_image(tag, img, step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
