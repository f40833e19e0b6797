"""UV space of a morphable model: vertex UV pixels, the UV layout (landmark pixels, face and loss-weight masks) and
the position-map renderer (mesh -> (size, size, 3) UV position map by a precomputed barycentric gather).

Everything is computed from the model itself (its UV coordinates, mean shape and 68 landmark ids); no PRNet file is
read. For the real BFM the computed layout matches PRNet's published uv-data closely (tests/test_uv.py measures it).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit
from scipy import ndimage

from faceutil.errors import FaceUtilError
from faceutil.render import rasterize
from faceutil.sampleio import atomic_write_bytes

# --- Face region (where the position map is supervised and evaluated) -------------------------------------------
# PRNet's uv_face_mask.png keeps the face and drops the neck and the ears. Its lower boundary, mapped back onto the
# BFM mean shape, lies on a sphere to within ~2.5 mm: a large sphere centred above and in front of the face cuts
# the head just below the jaw line and in front of the ears. We therefore define the face as the part of the mean
# shape inside that sphere, expressed in a landmark frame so it follows any model with the same axes (+y up, +z
# towards the camera): origin o = midpoint of the outer eye corners (landmarks 36, 45), unit s = their 3D distance;
# centre = o + s * _FACE_SPHERE_CENTRE, radius = s * _FACE_SPHERE_RADIUS. The constants were fitted once to
# PRNet's mask on the real BFM (IoU 0.976); no PRNet data is needed at run time.
_FACE_SPHERE_CENTRE = np.array([0.0, 1.113, 1.240])
_FACE_SPHERE_RADIUS = 2.817
# PRNet's mask also leaves out a 5-pixel frame at the top and sides of the 256x256 UV map (the mesh border there is
# the back of the scalp and the ear roots); we do the same, scaled with the map size.
_BORDER_AT_256 = 5

# --- Loss weights (PRNet: 68 keypoints : eyes, nose, mouth : other face : neck and outside = 16 : 4 : 3 : 0) ------
# uv_weight_mask.png stores weight * 16 as grey levels (255 for 16, 64 for 4, 48 for 3, 0 for 0; PRNet-PyTorch reads
# it as grey / 16 with 255 -> 256). Its eyes/nose/mouth region is a union of three rounded blobs around the landmark
# groups in UV space. We draw each blob as a superellipse centred on the group's UV bounding box, its half-width
# and upper / lower half-heights enlarged by the margins below (fractions of the UV distance between the outer eye
# corners, 99.7 px in PRNet's 256 map); exponent _BLOB_EXPONENT. Fitted once to PRNet's BFM map (IoU 0.95).
# Keypoints get 16 at exactly their rounded UV pixel, as in PRNet. Two deliberate differences from the PNG: it
# holds 3 (grey 48) outside the face as well, which PRNet-PyTorch's loss cancels by multiplying with the face mask,
# so we store 0 there directly (the paper's "neck 0"); and its ~150 grey-117..128 pixels beside some keypoints
# (about twice the surrounding weight, a drawing artefact) are not reproduced.
_BLOB_GROUPS = {
    # name: (landmark ids, (side margin, top margin, bottom margin))
    "eyes_brows": (tuple(range(17, 27)) + tuple(range(36, 48)), (0.040, 0.070, 0.211)),
    "nose": (tuple(range(27, 36)), (0.120, 0.281, 0.211)),
    "mouth": (tuple(range(48, 68)), (0.161, 0.060, 0.040)),
}
_BLOB_EXPONENT = 3.5
#: the network sees position maps divided by this (crop pixels -> about [0, 1]; DESIGN.md §3)
POSMAP_SCALE = 280.0
WEIGHT_KEYPOINT = 16.0
WEIGHT_EYES_NOSE_MOUTH = 4.0
WEIGHT_FACE = 3.0
WEIGHT_OUTSIDE = 0.0


def uv_pixels(uv, size: int = 256) -> np.ndarray:
    """UV texture coordinates -> UV-map pixel coordinates (face3d / PRNet convention).

    Args:
        uv: (n, 2) float in [0, 1], (u, v) with v pointing up.
        size: side of the square UV map in pixels.
    Returns:
        (n, 2) float64 (x = column, y = row): x = u * (size - 1), y = (size - 1) - v * (size - 1).
    """
    uv = np.asarray(uv, dtype=np.float64)
    out = np.empty(uv.shape, dtype=np.float64)
    out[..., 0] = uv[..., 0] * (size - 1)
    out[..., 1] = (size - 1) - uv[..., 1] * (size - 1)
    return out


@njit(cache=True)
def _gather(pix, vid, wts, values, out):
    """out[pix[p], :] = sum_k wts[p, k] * values[vid[p, k], :] for every covered pixel p (float64 accumulation)."""
    n_ch = values.shape[1]
    for p in range(pix.shape[0]):
        a = vid[p, 0]
        b = vid[p, 1]
        c = vid[p, 2]
        wa = np.float64(wts[p, 0])
        wb = np.float64(wts[p, 1])
        wc = np.float64(wts[p, 2])
        q = pix[p]
        for ch in range(n_ch):
            out[q, ch] = wa * values[a, ch] + wb * values[b, ch] + wc * values[c, ch]


class UVRenderer:
    """Renders per-vertex quantities of one mesh topology into its UV map.

    The UV-space rasterisation (which triangle covers each UV pixel centre, and the barycentric weights there) is
    computed once in the constructor; ``posmap`` is then a single gather over the covered pixels. The mesh is the
    model's triangles followed by its mouth triangles (face3d's full_triangles). Pixel centres on the border of the
    UV mesh count as covered (inclusive edges, as face3d's UV rendering); where triangles overlap in UV, the first
    one listed wins. For the real BFM this reproduces face3d-generated mean position maps exactly (tests/test_uv.py).

    Attributes:
        size: side of the UV map in pixels.
        covered: (size, size) bool, UV pixels whose centre lies in some triangle of the UV mesh.
        pixel_index: (P,) int64 flat (row-major) indices of the covered pixels.
        vertex_ids: (P, 3) int32 vertex ids of the covering triangle; weights: (P, 3) float32 barycentrics.
    """

    def __init__(self, model, size: int = 256):
        uv = np.asarray(model.uv, dtype=np.float64)
        n = int(np.asarray(model.mean).shape[0])
        if uv.ndim != 2 or uv.shape != (n, 2):
            raise FaceUtilError(f"the model's UV coordinates have shape {uv.shape}, expected ({n}, 2) "
                                "(BFM_UV.mat 'UV' must hold one (u, v) row per vertex)")
        self.size = int(size)
        # face3d / PRNet render position maps with the full topology: the face plus the triangles that close the
        # mouth (tri_mouth), so the lip gap inside the face mask gets positions too
        mouth = np.asarray(model.mouth_triangles, dtype=np.int32).reshape(-1, 3)
        triangles = np.concatenate([np.asarray(model.triangles, dtype=np.int32).reshape(-1, 3), mouth])
        pix = uv_pixels(uv, self.size)
        flat = np.concatenate([pix, np.zeros((n, 1))], axis=1)  # all at z = 0: the first triangle listed wins ties
        tri_id, bary, _ = rasterize(flat, triangles, self.size, self.size, inclusive=True)
        self.covered = tri_id >= 0
        self.pixel_index = np.flatnonzero(self.covered).astype(np.int64)
        self.vertex_ids = np.ascontiguousarray(triangles[tri_id.reshape(-1)[self.pixel_index]], dtype=np.int32)
        self.weights = np.ascontiguousarray(bary.reshape(-1, 3)[self.pixel_index], dtype=np.float32)
        self.n_vertices = n

    def render(self, values) -> np.ndarray:
        """Any per-vertex quantity into the UV map.

        Args:
            values: (n, C) float per-vertex values.
        Returns:
            (size, size, C) float32; barycentric interpolation at covered pixels, 0 elsewhere.
        """
        vals = np.asarray(values)
        if vals.ndim != 2 or vals.shape[0] != self.n_vertices:
            raise ValueError(f"expected ({self.n_vertices}, C) per-vertex values, got {vals.shape}")
        if vals.dtype not in (np.float32, np.float64):
            vals = vals.astype(np.float64)
        out = np.zeros((self.size * self.size, vals.shape[1]), dtype=np.float32)
        _gather(self.pixel_index, self.vertex_ids, self.weights, np.ascontiguousarray(vals), out)
        return out.reshape(self.size, self.size, vals.shape[1])

    def posmap(self, vertices) -> np.ndarray:
        """UV position map of a mesh with this topology.

        Args:
            vertices: (n, 3) float, typically crop coordinates (x column, y row, z depth).
        Returns:
            (size, size, 3) float32 position map; pixels outside the UV mesh are 0.
        """
        return self.render(np.asarray(vertices).reshape(-1, 3))


@dataclass
class UVLayout:
    """Where things are in the UV map of one model.

    Attributes:
        size: side of the UV map in pixels.
        kpt_ind: (2, 68) int64 UV pixels of the 68 landmarks; row 0 = column, row 1 = row
            (landmarks = posmap[kpt_ind[1], kpt_ind[0]], as PRNet's uv_kpt_ind.txt).
        face_mask: (size, size) bool, face region (no neck, no ears).
        weight_mask: (size, size) float32 loss weights: 16 at the 68 keypoint pixels, 4 in the eyes/brows, nose and
            mouth regions, 3 on the rest of the face, 0 outside the face (neck, ears, scalp border).
    """

    size: int
    kpt_ind: np.ndarray
    face_mask: np.ndarray
    weight_mask: np.ndarray


def _landmark_kpt_ind(model, size: int) -> np.ndarray:
    kpt = np.asarray(model.kpt_ind, dtype=np.int64).reshape(-1)
    pix = uv_pixels(np.asarray(model.uv, dtype=np.float64)[kpt], size)
    ind = np.rint(pix).astype(np.int64).T  # (2, 68)
    return np.clip(ind, 0, size - 1)


def _face_mask(model, renderer: UVRenderer) -> np.ndarray:
    size = renderer.size
    mean = np.asarray(model.mean, dtype=np.float64)
    lms = mean[np.asarray(model.kpt_ind, dtype=np.int64)]
    origin = 0.5 * (lms[36] + lms[45])
    unit = float(np.linalg.norm(lms[45] - lms[36]))
    centre = origin + unit * _FACE_SPHERE_CENTRE
    points = renderer.render(mean)  # (size, size, 3) mean-shape position of every UV pixel
    inside = np.sum((points.astype(np.float64) - centre) ** 2, axis=-1) < (unit * _FACE_SPHERE_RADIUS) ** 2
    inside &= renderer.covered
    border = int(round(_BORDER_AT_256 * size / 256.0))
    if border > 0:
        inside[:border] = False
        inside[:, :border] = False
        inside[:, size - border:] = False
    # holes of the UV mesh inside the face (the gap between the lips) belong to the face
    return ndimage.binary_fill_holes(inside)


def _eyes_nose_mouth(model, size: int) -> np.ndarray:
    kpt = np.asarray(model.kpt_ind, dtype=np.int64).reshape(-1)
    pts = uv_pixels(np.asarray(model.uv, dtype=np.float64)[kpt], size)
    unit = float(np.linalg.norm(pts[45] - pts[36]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    region = np.zeros((size, size), dtype=bool)
    for ids, (side, top, bottom) in _BLOB_GROUPS.values():
        lo = pts[list(ids)].min(axis=0)
        hi = pts[list(ids)].max(axis=0)
        cx, cy = 0.5 * (lo + hi)
        half_w = 0.5 * (hi[0] - lo[0]) + side * unit
        half_h = np.where(yy < cy, cy - lo[1] + top * unit, hi[1] - cy + bottom * unit)
        region |= (np.abs((xx - cx) / half_w) ** _BLOB_EXPONENT + np.abs((yy - cy) / half_h) ** _BLOB_EXPONENT) <= 1.0
    return region


def build_uv_layout(model, size: int = 256) -> UVLayout:
    """Compute the UV layout of a morphable model (landmark pixels, face mask, loss weight mask).

    Args:
        model: a faceutil.morphable.MorphableModel (uses mean, triangles, kpt_ind, uv).
        size: side of the UV map in pixels.
    Returns:
        UVLayout; see its docstring for the arrays and their meaning.
    """
    kpt = np.asarray(model.kpt_ind).reshape(-1)
    if kpt.shape != (68,):
        raise FaceUtilError(f"the model has {kpt.size} landmark ids, expected 68 (BFM.mat 'kpt_ind')")
    renderer = UVRenderer(model, size)
    kpt_ind = _landmark_kpt_ind(model, size)
    face = _face_mask(model, renderer)
    weight = np.full((size, size), WEIGHT_OUTSIDE, dtype=np.float32)
    weight[face] = WEIGHT_FACE
    weight[face & _eyes_nose_mouth(model, size)] = WEIGHT_EYES_NOSE_MOUTH
    weight[kpt_ind[1], kpt_ind[0]] = WEIGHT_KEYPOINT
    return UVLayout(size=int(size), kpt_ind=kpt_ind, face_mask=face, weight_mask=weight)


@functools.lru_cache(maxsize=4)
def uv_layout(bfm: str, size: int = 256) -> UVLayout:
    """The UV layout of a face model by name ("synthetic" or a face3d data/Out folder, already resolved), built
    once per process (seconds for the synthetic model). Callers must not modify its arrays."""
    from faceutil.facemodel import load_model

    return build_uv_layout(load_model(bfm), size)


def posmap_landmarks(posmap, kpt_ind) -> np.ndarray:
    """The 68 landmarks read from position maps.

    Args:
        posmap: (..., H, W, 3) position map(s); kpt_ind: (2, 68) int, row 0 = column, row 1 = row.
    Returns:
        (..., 68, 3) array of the same dtype.
    """
    ind = np.asarray(kpt_ind, dtype=np.int64)
    return np.asarray(posmap)[..., ind[1], ind[0], :]


def posmap_vertices(posmap, face_mask) -> np.ndarray:
    """The dense face points of position map(s), in row-major pixel order (PRNet's face_ind order).

    Args:
        posmap: (..., H, W, 3); face_mask: (H, W) bool.
    Returns:
        (..., F, 3) with F = face_mask.sum().
    """
    return np.asarray(posmap)[..., np.asarray(face_mask, dtype=bool), :]


# --- Which face model made a processed folder -------------------------------------------------------------------
#: written by the processor into its output folder: {"bfm": name, "fingerprint": layout_fingerprint, "size": int}
FACE_MODEL_FILE = "face_model.json"


def layout_fingerprint(layout: UVLayout) -> str:
    """16 hex digits identifying a UV layout (landmark pixels, face mask, loss weights): two face models whose
    position maps can be mixed share it; any change of the UV layout changes it."""
    h = hashlib.sha256(f"uv-layout size={int(layout.size)};".encode())
    for array, dtype in ((layout.kpt_ind, np.int64), (layout.face_mask, np.uint8), (layout.weight_mask, np.float32)):
        h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return h.hexdigest()[:16]


def face_model_record(bfm: str, layout: UVLayout) -> dict:
    return {"bfm": str(bfm), "fingerprint": layout_fingerprint(layout), "size": int(layout.size)}


def read_face_model_record(folder) -> dict | None:
    """The FACE_MODEL_FILE record of a processed folder; None when the folder has none (made before it existed).
    FaceUtilError (one sentence) for an unreadable record."""
    path = Path(folder) / FACE_MODEL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("fingerprint"), str) or "bfm" not in record:
            raise ValueError("no bfm / fingerprint")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise FaceUtilError(f"{path} is not a readable face-model record ({err})") from None
    return record


def write_face_model_record(folder, bfm: str, layout: UVLayout) -> dict:
    """Record (atomically) which face model writes into a processor output folder; FaceUtilError when the folder
    already holds samples of a face model with another UV layout (mixing them would corrupt the data set)."""
    record = face_model_record(bfm, layout)
    held = read_face_model_record(folder)
    if held is not None and held["fingerprint"] != record["fingerprint"]:
        raise FaceUtilError(f"output folder {folder} holds samples made with face model {held['bfm']} (UV layout "
                            f"{held['fingerprint']}), not {bfm} ({record['fingerprint']}); use another output folder")
    if held != record:
        atomic_write_bytes(Path(folder) / FACE_MODEL_FILE, (json.dumps(record) + "\n").encode("utf-8"))
    return record


def check_face_model(folder, bfm: str, layout: UVLayout) -> str | None:
    """Whether a processed folder was made with the face model in use.

    Returns None when its record matches, a warning sentence when it has no record (an older folder: it is then
    assumed to match); raises FaceUtilError naming both face models when the UV layouts differ.
    """
    held = read_face_model_record(folder)
    fingerprint = layout_fingerprint(layout)
    if held is None:
        return (f"warning: {folder} does not record the face model it was made with (processed before "
                f"{FACE_MODEL_FILE} existed); assuming {bfm}")
    if held["fingerprint"] != fingerprint:
        raise FaceUtilError(f"{folder} was made with face model {held['bfm']} (UV layout {held['fingerprint']}), "
                            f"but this run uses {bfm} (UV layout {fingerprint}); pass --bfm={held['bfm']} or "
                            f"process the data again with --bfm={bfm}")
    return None
