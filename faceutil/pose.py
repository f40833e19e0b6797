"""Head pose: 3DDFA Euler angles <-> rotation matrices, weak-perspective projection to image pixels, similarity fits.

Owns the one pose convention of the project (DESIGN.md section 3), measured on the genuine AFLW2000-3D samples.

Convention (3DDFA / face3d ``angle2matrix_3ddfa``): ``Pose_Para`` (7,) = [pitch, yaw, roll, tx, ty, tz, s], radians.
``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` where each factor is the *transpose* of the textbook right-handed rotation:

    Rx(a) = [[1, 0, 0], [0, cos a, sin a], [0, -sin a, cos a]]
    Ry(a) = [[cos a, 0, -sin a], [0, 1, 0], [sin a, 0, cos a]]
    Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]

world = s * R @ v + t (orthographic), then image x = world_x (column), y = H + 1 - world_y (row), z = world_z
(larger z = closer to the camera, pixel scale). Rebuilding the 68 landmarks of the 31 genuine AFLW2000-3D samples
from their Pose/Shape/Exp parameters with 3DDFA's 68-point basis (tests/test_pose.py) lands on ``pt3d_68`` with a
2D NME of 0.78 % and a mean offset of (-0.05, -0.04) px for H + 1 - y; face3d/PRNet's H - y - 1 gives 1.38 % and a
2.0 px offset in y, H - y gives 0.98 % and 1.0 px.
"""
from __future__ import annotations

import numpy as np

# Below this |cos(yaw)| the pitch/roll split is undetermined (gimbal lock); roll is then reported as 0.
_GIMBAL_EPS = 1e-9


def angle2matrix(pitch, yaw, roll) -> np.ndarray:
    """3DDFA rotation ``Rx(pitch) @ Ry(yaw) @ Rz(roll)`` (see the module docstring for the sign pattern).

    Args:
        pitch, yaw, roll: radians; floats or broadcastable arrays of shape (...).
    Returns:
        (3, 3) float64 rotation matrix, or (..., 3, 3) for array inputs.
    """
    p, y, r = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (pitch, yaw, roll)))
    cp, sp = np.cos(p), np.sin(p)
    cy, sy = np.cos(y), np.sin(y)
    cr, sr = np.cos(r), np.sin(r)
    # The product Rx @ Ry @ Rz written out (one pass, no per-element Python loop).
    out = np.empty(p.shape + (3, 3), dtype=np.float64)
    out[..., 0, 0] = cy * cr
    out[..., 0, 1] = cy * sr
    out[..., 0, 2] = -sy
    out[..., 1, 0] = sp * sy * cr - cp * sr
    out[..., 1, 1] = sp * sy * sr + cp * cr
    out[..., 1, 2] = sp * cy
    out[..., 2, 0] = cp * sy * cr + sp * sr
    out[..., 2, 1] = cp * sy * sr - sp * cr
    out[..., 2, 2] = cp * cy
    return out


def matrix2angle(R) -> tuple:
    """Inverse of :func:`angle2matrix`: the 3DDFA Euler angles of a rotation matrix.

    Args:
        R: (3, 3) or (..., 3, 3) rotation matrix (orthonormal, det +1).
    Returns:
        (pitch, yaw, roll) radians; floats for one matrix, (...) float64 arrays otherwise. yaw is in
        [-pi/2, pi/2], pitch and roll in (-pi, pi]. At gimbal lock (|yaw| = pi/2) only pitch -/+ roll is
        determined; roll is set to 0 and pitch carries the whole in-plane angle, so angle2matrix of the result
        still reproduces R.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"matrix2angle expects (..., 3, 3) matrices, got shape {R.shape}")
    sy = np.clip(-R[..., 0, 2], -1.0, 1.0)
    yaw = np.arcsin(sy)
    cy = np.hypot(R[..., 0, 0], R[..., 0, 1])  # = |cos(yaw)|, more accurate than sqrt(1 - sy^2) near the lock
    locked = cy < _GIMBAL_EPS
    pitch = np.where(locked, np.arctan2(-R[..., 2, 1], R[..., 1, 1]), np.arctan2(R[..., 1, 2], R[..., 2, 2]))
    roll = np.where(locked, 0.0, np.arctan2(R[..., 0, 1], R[..., 0, 0]))
    if R.ndim == 2:
        return float(pitch), float(yaw), float(roll)
    return pitch, yaw, roll


def project(vertices, pose_para, image_height: int) -> np.ndarray:
    """Model-space vertices -> image coordinates under a 3DDFA pose (orthographic, scaled).

    Args:
        vertices: (n, 3) (or (..., n, 3)) model units (BFM: micrometres, +y up, +z towards the camera).
        pose_para: (7,) (or (..., 7)) [pitch, yaw, roll, tx, ty, tz, s]; radians, pixels, pixels per model unit.
        image_height: H of the image in pixels.
    Returns:
        (n, 3) float32 (or (..., n, 3)): x = column, y = row = H + 1 - world_y, z = world_z (pixel scale,
        larger = closer to the camera).
    """
    v = np.asarray(vertices, dtype=np.float64)
    pose = np.asarray(pose_para, dtype=np.float64)
    if v.shape[-1] != 3 or pose.shape[-1] != 7:
        raise ValueError(f"project expects (..., n, 3) vertices and (..., 7) pose, got {v.shape} and {pose.shape}")
    R = angle2matrix(pose[..., 0], pose[..., 1], pose[..., 2])  # (..., 3, 3)
    s = pose[..., 6, None, None]
    t = pose[..., None, 3:6]
    world = s * np.matmul(v, np.swapaxes(R, -1, -2)) + t
    world[..., 1] = (image_height + 1) - world[..., 1]
    return world.astype(np.float32)


def estimate_similarity(src, dst):
    """Least-squares similarity dst ~= s * R @ src + t (Umeyama 1991), with a proper rotation (det R = +1).

    Args:
        src, dst: (n, 3) corresponding points (n >= 3, not all collinear), or (..., n, 3) batches.
    Returns:
        (s, R, t): s float (or (...) array), R (3, 3) float64 (or (..., 3, 3)), t (3,) float64 (or (..., 3)).
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.shape != b.shape or a.shape[-1] != 3 or a.shape[-2] < 3:
        raise ValueError(f"estimate_similarity expects two (..., n>=3, 3) arrays, got {a.shape} and {b.shape}")
    mu_a = a.mean(axis=-2, keepdims=True)
    mu_b = b.mean(axis=-2, keepdims=True)
    a0 = a - mu_a
    b0 = b - mu_b
    n = a.shape[-2]
    var_a = np.sum(a0 * a0, axis=(-2, -1)) / n
    if np.any(var_a <= 0):
        raise ValueError("estimate_similarity: the source points all coincide")
    cov = np.matmul(np.swapaxes(b0, -1, -2), a0) / n  # (..., 3, 3) = E[dst src^T]
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    d = np.where(d == 0, 1.0, d)
    D = np.ones(S.shape)
    D[..., 2] = d
    R = np.matmul(U * D[..., None, :], Vt)
    s = np.sum(S * D, axis=-1) / var_a
    t = mu_b[..., 0, :] - s[..., None] * np.matmul(R, mu_a[..., 0, :, None])[..., 0]
    if a.ndim == 2:
        return float(s), R, t
    return s, R, t
