"""Morphable face model: the BFM-layout tables (mean, shape/expression/texture bases, topology, UV, landmarks).

Owns the in-memory model and turning coefficients into vertices; reading/writing face3d's files lives here too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear 3D morphable model in face3d's BFM layout, with 0-based indices.

    Attributes (n vertices, K shape / E expression / T texture components, m triangles):
        mean: (n, 3) float32, model units (BFM: micrometres, +y up, +z towards the camera); shapeMU + expMU.
        shape_pc: (3n, K) float32, xyz-interleaved rows (row 3i+c is coordinate c of vertex i).
        shape_ev: (K,) float32, standard deviations of the shape coefficients.
        exp_pc: (3n, E) float32; exp_ev: (E,) float32.
        tex_mu: (3n,) float32, mean albedo in [0, 255] (face3d); tex_pc: (3n, T); tex_ev: (T,).
        triangles: (m, 3) int32 vertex ids; mouth_triangles: (k, 3) int32.
        kpt_ind: (68,) int64 vertex ids of the 68 landmarks (iBUG order).
        uv: (n, 2) float64 texture coordinates in [0, 1].
    """

    mean: np.ndarray
    shape_pc: np.ndarray
    shape_ev: np.ndarray
    exp_pc: np.ndarray
    exp_ev: np.ndarray
    tex_mu: np.ndarray
    tex_pc: np.ndarray
    tex_ev: np.ndarray
    triangles: np.ndarray
    mouth_triangles: np.ndarray
    kpt_ind: np.ndarray
    uv: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_pc.shape[1])

    @property
    def n_exp(self) -> int:
        return int(self.exp_pc.shape[1])

    def _offsets(self, rows: np.ndarray | slice, shape_para, exp_para) -> np.ndarray:
        """Basis displacement for the given interleaved rows; shorter coefficient vectors use the leading PCs."""
        out = np.zeros(self.shape_pc[rows, :0].shape[0], dtype=np.float64)
        for pc, para in ((self.shape_pc, shape_para), (self.exp_pc, exp_para)):
            if para is None:
                continue
            p = np.asarray(para, dtype=np.float64).reshape(-1)
            if p.size > pc.shape[1]:
                raise ValueError(f"{p.size} coefficients given for a basis of {pc.shape[1]} components")
            out += pc[rows, : p.size].astype(np.float64) @ p
        return out

    def vertices(self, shape_para=None, exp_para=None) -> np.ndarray:
        """Vertices for the given coefficients. Returns (n, 3) float32, model units."""
        offs = self._offsets(slice(None), shape_para, exp_para).reshape(-1, 3)
        return (self.mean.astype(np.float64) + offs).astype(np.float32)

    def landmarks(self, shape_para=None, exp_para=None) -> np.ndarray:
        """The 68 landmark vertices only (cheap: touches 204 basis rows). Returns (68, 3) float32, model units."""
        rows = (3 * self.kpt_ind[:, None] + np.arange(3)[None, :]).reshape(-1)
        offs = self._offsets(rows, shape_para, exp_para).reshape(-1, 3)
        return (self.mean[self.kpt_ind].astype(np.float64) + offs).astype(np.float32)

    def texture(self, tex_para=None) -> np.ndarray:
        """Per-vertex albedo. Returns (n, 3) float32 in [0, 1]."""
        tex = self.tex_mu.astype(np.float64)
        if tex_para is not None:
            p = np.asarray(tex_para, dtype=np.float64).reshape(-1)
            tex = tex + self.tex_pc[:, : p.size].astype(np.float64) @ p
        return np.clip(tex.reshape(-1, 3) / 255.0, 0.0, 1.0).astype(np.float32)
