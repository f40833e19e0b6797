"""Evaluation metrics: 68-point NME (2D / 3D), NME by yaw bin (3DDFA protocol) and dense position-map NME.

Owns the AFLW2000-3D protocol numbers of DESIGN.md §6; everything is vectorised over samples.
"""
from __future__ import annotations

import numpy as np

#: yaw bin names, in order, for |yaw| <= 30, 30 < |yaw| <= 60, |yaw| > 60 (degrees, as stored, not wrapped)
YAW_BINS = ("|yaw|<=30", "30<|yaw|<=60", "|yaw|>60")
#: samples per block in dense_nme (bounds the float64 working memory to ~blocks of 64 x 65k x 3)
_DENSE_BLOCK = 64


def _as_batch(a: np.ndarray, point_axis_ndim: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == point_axis_ndim else a


def _point_nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pred, gt (N, P, D) float64, D in {2, 3}; the normaliser is sqrt(w * h) of gt's 2D box. -> (N,) percent."""
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] not in (2, 3):
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, P, 2) or (N, P, 3)")
    if pred.shape[-1] == 3:
        pred = pred.copy()
        gt = gt.copy()
        pred[..., 2] -= pred[..., 2].mean(axis=1, keepdims=True)
        gt[..., 2] -= gt[..., 2].mean(axis=1, keepdims=True)
    span = gt[..., :2].max(axis=1) - gt[..., :2].min(axis=1)  # (N, 2): w, h
    norm = np.sqrt(span[:, 0] * span[:, 1])
    err = np.linalg.norm(pred - gt, axis=-1).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, 100.0 * err / np.where(norm > 0, norm, 1.0), np.nan)


def nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-sample normalised mean error of landmarks, percent.

    pred, gt: (N, 68, 2) or (N, 68, 3) (a single (68, D) is treated as N = 1), image pixels, same D.
    Error = mean over points of the Euclidean distance, divided by sqrt(w * h) of gt's 2D landmark box.
    3D: the z of pred and of gt are each centred by their own mean first (depth offset is not an error).
    Returns (N,) float64; NaN where gt's box has no area.
    """
    return _point_nme(_as_batch(pred, 2), _as_batch(gt, 2))


def nme_by_yaw(nme_values: np.ndarray, yaw_degrees: np.ndarray) -> dict:
    """Group per-sample NME by yaw as in 3DDFA's AFLW2000-3D benchmark.

    nme_values: (N,) percent. yaw_degrees: (N,) degrees(Pose_Para[1]) as stored; bins use |yaw| as given, NOT
    wrapped into (-180, 180] (DESIGN.md §6: 1312 / 383 / 305 of AFLW2000-3D's 2000).
    Returns {"|yaw|<=30": mean, "30<|yaw|<=60": mean, "|yaw|>60": mean (NaN for an empty bin),
    "counts": {bin: int}, "mean_of_bins": mean of the non-empty bins' means (the published headline figure when
    all three are filled), "mean": plain mean over all samples}.
    """
    e = np.asarray(nme_values, dtype=np.float64).reshape(-1)
    yaw = np.abs(np.asarray(yaw_degrees, dtype=np.float64).reshape(-1))
    if e.shape != yaw.shape:
        raise ValueError(f"{e.size} NME values but {yaw.size} yaw angles")
    if not np.all(np.isfinite(yaw)):
        raise ValueError("yaw angles must be finite")
    idx = (yaw > 30.0).astype(np.int64) + (yaw > 60.0)
    counts = np.bincount(idx, minlength=3)
    sums = np.bincount(idx, weights=e, minlength=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    filled = means[counts > 0]
    out: dict = {name: float(m) for name, m in zip(YAW_BINS, means)}
    out["counts"] = {name: int(c) for name, c in zip(YAW_BINS, counts)}
    out["mean_of_bins"] = float(filled.mean()) if filled.size else float("nan")
    out["mean"] = float(e.mean()) if e.size else float("nan")
    return out


def dense_nme(pred_posmap: np.ndarray, gt_posmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dense reconstruction NME over the masked pixels of position maps, percent (3D, z centred).

    pred_posmap, gt_posmap: (N, H, W, 3) (or one (H, W, 3)), crop pixels (x, y, depth). mask: (H, W) bool face
    pixels. Each sample's error is the mean 3D distance over masked pixels after centring each map's z on its own
    masked mean, divided by sqrt(w * h) of gt's masked 2D (x, y) box. Returns (N,) float64.
    """
    pred = np.asarray(pred_posmap)
    gt = np.asarray(gt_posmap)
    if pred.ndim == 3:
        pred, gt = pred[None], gt[None]
    mask = np.asarray(mask, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3 or mask.shape != pred.shape[1:3]:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} must be (N, H, W, 3) and mask {mask.shape} (H, W)")
    flat = np.flatnonzero(mask)
    n = pred.shape[0]
    out = np.empty(n, dtype=np.float64)
    p_all = pred.reshape(n, -1, 3)
    g_all = gt.reshape(n, -1, 3)
    for start in range(0, n, _DENSE_BLOCK):  # blocks of samples bound the memory; no per-sample loop
        sl = slice(start, start + _DENSE_BLOCK)
        p = p_all[sl][:, flat].astype(np.float64)
        g = g_all[sl][:, flat].astype(np.float64)
        out[sl] = _point_nme(p, g)
    return out
