"""Training augmentation applied consistently to a 256x256 crop and its UV position map (DESIGN.md §5).

In-plane rotation moves the image pixels and the position map's x/y VALUES; erasing and colour touch the image only.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from faceutil.crop import rotation_about

ROTATE_P = 0.5
MAX_ANGLE_DEG = 90.0
ERASE_P = 0.25
ERASE_AREA = (0.02, 0.33)     # share of the image area covered by the erased rectangle
ERASE_ASPECT = (0.3, 3.3)     # height / width of the rectangle, drawn log-uniformly
COLOUR_P = 0.5
COLOUR_RANGE = (0.6, 1.4)     # independent gain per RGB channel


def rotate(image: np.ndarray, posmap: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a crop and its position map about the crop centre ((W-1)/2, (H-1)/2) by `angle_deg`.

    Positive = counter-clockwise as displayed (faceutil.crop.rotation_about). image: (H, W, 3) uint8.
    posmap: (S, S, 3) float32, x/y in the crop's pixels, z depth. The image is resampled bilinearly (outside ->
    0). The posmap is indexed by UV, so its grid stays put: each pixel's (x, y) value is mapped by the same
    similarity, z is unchanged (scale 1), and all-zero pixels (outside the UV mesh) stay zero.
    Returns new arrays (image uint8, posmap float32).
    """
    h, w = image.shape[:2]
    sim = rotation_about(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg)
    out_image = sim.warp_image(image, w) if h == w else cv2.warpAffine(
        image, sim.matrix[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # sim.apply on the (S, S, 2) values, written out per coordinate: numpy's stacked matmul is ~20x slower here.
    (a, b, tx), (c, d, ty) = sim.matrix[:2].astype(np.float32)
    x, y = posmap[..., 0], posmap[..., 1]
    inside = np.any(posmap != 0, axis=-1)
    out_pos = np.empty(posmap.shape, dtype=np.float32)
    out_pos[..., 0] = np.where(inside, a * x + b * y + tx, 0.0)
    out_pos[..., 1] = np.where(inside, c * x + d * y + ty, 0.0)
    out_pos[..., 2] = posmap[..., 2]
    return out_image, out_pos


def random_erase(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill one random rectangle of an (H, W, 3) uint8 image with uniform noise (occlusion); returns a new array."""
    h, w = image.shape[:2]
    area = rng.uniform(*ERASE_AREA) * h * w
    aspect = math.exp(rng.uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
    eh = int(min(h, max(1, round(math.sqrt(area * aspect)))))
    ew = int(min(w, max(1, round(math.sqrt(area / aspect)))))
    y0 = int(rng.integers(0, h - eh + 1))
    x0 = int(rng.integers(0, w - ew + 1))
    out = image.copy()
    out[y0:y0 + eh, x0:x0 + ew] = rng.integers(0, 256, size=(eh, ew, image.shape[2]), dtype=np.uint8)
    return out


def colour_scale(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply each RGB channel of an (H, W, 3) uint8 image by gains (3,), round and clip to [0, 255].

    Done through a per-channel 256-entry lookup table (cv2.LUT), exact and ~10x faster than float arithmetic.
    """
    table = np.clip(np.rint(np.arange(256.0)[:, None] * np.asarray(gains, dtype=np.float64)), 0, 255)
    return cv2.LUT(np.ascontiguousarray(image), table.astype(np.uint8).reshape(1, 256, 3))


def augment(image: np.ndarray, posmap: np.ndarray, rng: np.random.Generator,
            rotation: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """DESIGN.md §5 training augmentation of one sample, every draw from `rng`.

    image: (256, 256, 3) uint8 RGB crop. posmap: (256, 256, 3) float32 position map in crop coordinates.
    Steps, each drawn independently: colour channel gains U(0.6, 1.4) with p 0.5 (image only); in-plane
    rotation U(-90, 90) degrees about the crop centre with p 0.5 (image pixels and posmap x/y values, see
    rotate); random erasing with p 0.25 (image only, after rotation so the occluder is axis-aligned).
    rotation=False skips the rotation but draws the same random numbers, so only the rotation differs.
    Returns (image uint8, posmap float32); the inputs are never modified.
    """
    # Draw every decision up front, in a fixed order, so one branch never shifts another's random numbers.
    do_colour = rng.random() < COLOUR_P
    gains = rng.uniform(*COLOUR_RANGE, size=3)
    do_rotate = rng.random() < ROTATE_P
    angle = rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG)
    do_erase = rng.random() < ERASE_P
    erase_rng = np.random.default_rng(rng.integers(0, 2**63))

    out_image, out_pos = image, posmap
    if do_colour:
        out_image = colour_scale(out_image, gains)
    if do_rotate and rotation:
        out_image, out_pos = rotate(out_image, out_pos, angle)
    if do_erase:
        out_image = random_erase(out_image, erase_rng)
    if out_image is image:
        out_image = image.copy()
    if out_pos is posmap:
        out_pos = np.array(posmap, dtype=np.float32, copy=True)
    return out_image, out_pos
