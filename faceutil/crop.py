"""Cropping: 2D similarity transforms between an original image and a square face crop.

Owns the crop box rule (landmark box, enlarged x1.5, optional seeded jitter), in-plane rotations, image warping.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceutil.errors import SampleError


@dataclass(frozen=True, eq=False)
class Similarity:
    """A 2D similarity (rotation, uniform scale, translation) acting on image coordinates.

    matrix: (3, 3) float64 mapping homogeneous [x, y, 1] (source image px; x = column, y = row, pixel centres at
    integer coordinates) to the destination image (e.g. the crop). Depth is carried along multiplied by `scale`.
    """

    matrix: np.ndarray

    def __post_init__(self):
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape == (2, 3):
            m = np.vstack([m, [0.0, 0.0, 1.0]])
        if m.shape != (3, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"a Similarity needs a finite (3, 3) or (2, 3) matrix, got shape {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @property
    def scale(self) -> float:
        """Destination pixels per source pixel: sqrt(|det|) of the linear part."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def angle(self) -> float:
        """Degrees, counter-clockwise as displayed (y down), by which the map turns the image (rotation_about's
        sense): a crop made by turning the image by -r sees a face turned by r upright."""
        return float(np.degrees(np.arctan2(self.matrix[0, 1], self.matrix[0, 0])))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points (..., 2) or (..., 3): x, y by the similarity, z (if present) multiplied by `scale`.

        Returns a new float64 array of the same shape.
        """
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] not in (2, 3):
            raise ValueError(f"points must have 2 or 3 coordinates in the last axis, got shape {p.shape}")
        out = np.empty(p.shape, dtype=np.float64)
        a = self.matrix
        out[..., :2] = p[..., :2] @ a[:2, :2].T + a[:2, 2]
        if p.shape[-1] == 3:
            out[..., 2] = p[..., 2] * self.scale
        return out

    def inverse(self) -> "Similarity":
        """The transform from the destination back to the source image."""
        return Similarity(np.linalg.inv(self.matrix))

    def compose(self, other: "Similarity") -> "Similarity":
        """`self` first, then `other`: result.apply(p) == other.apply(self.apply(p))."""
        return Similarity(other.matrix @ self.matrix)

    def warp_image(self, img: np.ndarray, out_size: int) -> np.ndarray:
        """Resample `img` (H, W) or (H, W, C) into the (out_size, out_size[, C]) destination; dtype kept.

        Bilinear (cv2.warpAffine, INTER_LINEAR), pixels from outside the source are 0. A source point p lands at
        self.apply(p) in the output.
        """
        import cv2

        img = np.asarray(img)
        size = (int(out_size), int(out_size))
        m = self.matrix[:2]
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
        if img.ndim == 3 and img.shape[2] > 4:  # OpenCV warps at most 4 channels at once
            parts = [self.warp_image(img[..., k:k + 4], out_size) for k in range(0, img.shape[2], 4)]
            return np.concatenate([p if p.ndim == 3 else p[..., None] for p in parts], axis=2)
        out = cv2.warpAffine(np.ascontiguousarray(img), m, size, flags=flags, borderMode=border, borderValue=0)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
            out = out[..., None]
        return out


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x1, y1, x2, y2) in pixels around landmarks (68, 2+) (only x, y are used)."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[..., 0], p[..., 1]
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def crop_similarity(points: np.ndarray, out_size: int = 256, enlarge: float = 1.5,
                    rng: np.random.Generator | None = None, shift: float = 0.1,
                    scale_range: tuple[float, float] = (0.9, 1.1)) -> Similarity:
    """The original-image -> crop similarity for a face with landmarks `points` (68, 2+), image pixels.

    A square box centred on the landmark box with side = enlarge * max(w, h) maps onto the whole
    out_size x out_size crop: its centre goes to the crop centre ((out_size - 1) / 2, pixel centres at integers)
    and its side to out_size pixels. rng None: deterministic (evaluation). With rng (training jitter, drawn in this
    order): centre x and y each shifted by U(-shift, shift) * side, then side *= U(*scale_range).
    Raises SampleError when the landmarks are not finite or span no area.
    """
    p = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(p[..., :2])):
        raise SampleError("the landmarks contain NaN or infinite values, so no crop can be made")
    x1, y1, x2, y2 = landmark_box(p)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = enlarge * max(x2 - x1, y2 - y1)
    if not side > 0:
        raise SampleError(f"the landmarks span a degenerate {x2 - x1:g} x {y2 - y1:g} px box, so no crop can be made")
    if rng is not None:
        dx, dy = rng.uniform(-shift, shift, size=2)
        cx += dx * side
        cy += dy * side
        side *= rng.uniform(scale_range[0], scale_range[1])
    k = out_size / side
    c = (out_size - 1) / 2.0
    return Similarity(np.array([[k, 0.0, c - k * cx], [0.0, k, c - k * cy], [0.0, 0.0, 1.0]]))


def rotation_about(center, angle_deg: float) -> Similarity:
    """Rotation by `angle_deg` about `center` (x, y) pixels; positive = counter-clockwise as displayed (y down),
    the same sense as cv2.getRotationMatrix2D. Scale 1.
    """
    cx, cy = (float(v) for v in np.asarray(center, dtype=np.float64).reshape(2))
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    # y points down, so a visually counter-clockwise turn is [[c, s], [-s, c]] in (x, y).
    return Similarity(np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0.0, 0.0, 1.0]]))
