"""Pictures of prediction results: the faces' depth image and the shaded-mesh overlay on the photo.

Both share one rasterisation of the predicted meshes (render_faces), so the -predict job draws them together cheaply.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from inference.predict import FaceResult


def render_faces(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray):
    """Rasterise all faces' meshes over the image once: (tri_id, bary, depth, vertices, triangles)."""
    from faceutil.render import rasterize

    h, w = image.shape[:2]
    n = len(faces[0].vertices) if faces else 0
    verts = np.concatenate([f.vertices for f in faces]) if faces else np.zeros((0, 3))
    tris = np.concatenate([triangles + k * n for k in range(len(faces))]) if faces else np.zeros((0, 3), np.int64)
    tri_id, bary, depth = rasterize(verts, tris, h, w)
    return tri_id, bary, depth, verts, tris


def depth_image(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray, raster=None) -> np.ndarray:
    """(H, W) uint8 depth picture: the predicted face surfaces, nearest = 255, farthest face point = 1, background 0."""
    tri_id, _, depth, _, _ = raster if raster is not None else render_faces(image, faces, triangles)
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    covered = tri_id >= 0
    if covered.any():
        z = depth[covered].astype(np.float64)
        lo, hi = float(z.min()), float(z.max())
        out[covered] = np.clip(1 + 254 * (z - lo) / max(hi - lo, 1e-6), 1, 255).astype(np.uint8)
    return out


def overlay_image(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray, raster=None,
                  alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: the shaded predicted meshes blended over the image, boxes, and the 68 landmarks (green)."""
    import cv2

    from faceutil.render import interpolate, vertex_normals

    out = np.array(image, dtype=np.uint8, copy=True)
    if faces:
        tri_id, bary, _, verts, tris = raster if raster is not None else render_faces(image, faces, triangles)
        covered = tri_id >= 0
        if covered.any():
            normals = interpolate(tri_id, bary, tris, vertex_normals(verts, tris))
            length = np.linalg.norm(normals, axis=-1)
            shade = 0.25 + 0.75 * np.abs(normals[..., 2]) / np.maximum(length, 1e-12)   # light from the camera
            grey = (np.array([200.0, 205.0, 215.0]) * shade[..., None])[covered]
            out[covered] = np.clip((1 - alpha) * out[covered] + alpha * grey, 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    r = max(1, int(round(min(h, w) / 250)))
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 200, 0), max(1, r // 2), lineType=cv2.LINE_AA)
        for x, y in f.landmarks_2d:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(out, (int(round(x)), int(round(y))), r + 1, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    return out
