"""The synthetic face model: a procedural morphable model in the BFM layout, the project's stand-in for the Basel
Face Model (DESIGN.md section 4): no external data.

The mean head is a surface over a (grid x grid) UV grid: column j gives the azimuth theta about the vertical axis
(u = j / (grid - 1), face centred at u = 0.5), row i gives the height y (v = i / (grid - 1), v up). Each row is a
superellipse cross-section of an egg-shaped head smoothly united with a neck cylinder; brow ridge, eye sockets,
nose, cheekbones, lips and chin are smooth depth (z) displacements in front. Units and statistics follow the BFM
(micrometres, +x towards the subject's left = image right in a frontal view, +y up, +z towards the camera); the
68 landmarks (iBUG order) are vertices at anatomical positions. faceutil.synthetic draws datasets from it.
"""
from __future__ import annotations

import math

import numpy as np

from faceutil.morphable import MorphableModel

# -- geometry of the mean head (micrometres) -------------------------------------------------------------------------
THETA_MAX = math.radians(100.0)  # azimuth at u = 0 / u = 1 (a little behind the ears)
Y_BOTTOM, Y_TOP = -135_000.0, 95_000.0  # heights of rows v = 0 (neck) and v = 1 (forehead)
_HEAD_HALF_WIDTH = 75_000.0  # widest half-width of the head (cheekbone / temple level)
_HEAD_WIDEST_Y = 15_000.0
_CHIN_BOTTOM_Y = -95_000.0  # where the head's half-width and front depth reach 0 (the neck takes over)
_FACE_DEPTH = 104_000.0  # depth of the face front (without features) in front of the vertical axis
_JAW_CORNER_Y = -72_000.0  # below this the face front rounds off into the underside of the chin
_SUPERELLIPSE_P = 2.6  # > 2: a face front flatter than an ellipse
_NECK_HALF_WIDTH, _NECK_DEPTH = 50_000.0, 52_000.0
_UNION_SOFTNESS = 3_000.0
_BFM_SIZED_VERTICES = 231 * 231  # the default grid; unit-norm bases get ev scaled by sqrt(n / this)

# 68 landmarks, iBUG order. Jaw (0-16): (azimuth degrees, height) on the head's boundary; others: frontal (x, y).
_K = 1000.0
_BROW_R = [(-57, 40), (-48, 46), (-38, 48.5), (-28, 47.5), (-19, 45)]
_NOSE_RIDGE = [(0, 26), (0, 14), (0, 2), (0, -8)]
_NOSE_BASE = [(-12, -17), (-6.5, -18.5), (0, -19.5), (6.5, -18.5), (12, -17)]
_EYE_R = [(-43, 25.8), (-36, 29.6), (-26.5, 29.8), (-19, 25.5), (-26.5, 23.3), (-36, 23.1)]
_EYE_L = [(19, 25.5), (26.5, 29.8), (36, 29.6), (43, 25.8), (36, 23.1), (26.5, 23.3)]
_LIPS_OUTER = [(-25, -41), (-16, -35), (-6, -31.5), (0, -32.5), (6, -31.5), (16, -35), (25, -41),
               (15.5, -45.5), (8, -48.3), (0, -48.8), (-8, -48.3), (-15.5, -45.5)]
_LIPS_INNER = [(-22.5, -40.2), (-7.5, -38.6), (0, -38.8), (7.5, -38.6), (22.5, -40.2),
               (7.5, -40.6), (0, -40.8), (-7.5, -40.6)]
FRONT_LANDMARKS_XY = np.array(
    _BROW_R + [(-x, y) for x, y in reversed(_BROW_R)] + _NOSE_RIDGE + _NOSE_BASE + _EYE_R + _EYE_L
    + _LIPS_OUTER + _LIPS_INNER, dtype=np.float64) * _K  # (51, 2) landmarks 17..67
EYE_CENTRES_X = (-31_000.0, 31_000.0)
EYE_CENTRE_Y = 26_500.0

#: Names of the expression modes (columns of exp_pc), most important first; the rest are local modes.
EXP_MODE_NAMES = ("jaw_open", "smile", "lip_pucker", "brow_raise", "eye_close", "brow_frown", "mouth_stretch",
                  "upper_lip_raise", "lower_lip_depress", "cheek_puff", "smile_left", "smile_right",
                  "wink_left", "wink_right", "brow_raise_left", "brow_raise_right", "jaw_sideways",
                  "nose_wrinkle", "lip_press")
JAW_OPEN = 0
EYE_CLOSE_MODES = tuple(EXP_MODE_NAMES.index(k) for k in ("eye_close", "wink_left", "wink_right"))
_JAW_RAD_PER_UNIT = 0.035  # jaw rotation per unit of the jaw-open coefficient (para 3 ~ 6 degrees, ~12 mm)
_HINGE_Y, _HINGE_Z = 5_000.0, -5_000.0  # jaw hinge axis (parallel to x), near the ears

#: UV map size whose pixel centres the grid vertices sit on (the position-map size, DESIGN.md §3)
UV_MAP_SIZE = 256


# -- small numeric helpers ---------------------------------------------------------------------------------------------
def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _pair(x, y, cx, cy, sx, sy):
    """A mirror-symmetric pair of Gaussians at (+-cx, cy)."""
    return _gauss(x, y, cx, cy, sx, sy) + _gauss(x, y, -cx, cy, sx, sy)


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _round_profile(t, m):
    """(1 - t^m)^(1/m) for t in [0, 1], 1 below 0 and 0 above 1: a rounded shoulder."""
    t = np.clip(t, 0.0, 1.0)
    return (1.0 - t ** m) ** (1.0 / m)


def _smooth_curve(knots, y):
    """Monotone C1 cubic (Fritsch-Carlson) through (y, value) knots given in thousands; 0 outside their span."""
    k = np.asarray(sorted(knots), dtype=np.float64) * _K
    xs, vs = k[:, 0], k[:, 1]
    h = np.diff(xs)
    delta = np.diff(vs) / h
    slope = np.zeros_like(vs)
    inner = delta[:-1] * delta[1:] > 0
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    safe_next, safe_prev = np.where(inner, delta[1:], 1.0), np.where(inner, delta[:-1], 1.0)
    slope[1:-1] = np.where(inner, (w1 + w2) / (w1 / safe_next + w2 / safe_prev), 0.0)
    y = np.asarray(y, dtype=np.float64)
    i = np.clip(np.searchsorted(xs, y) - 1, 0, xs.size - 2)
    t = (y - xs[i]) / h[i]
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    out = h00 * vs[i] + h10 * h[i] * slope[i] + h01 * vs[i + 1] + h11 * h[i] * slope[i + 1]
    return np.where((y >= xs[0]) & (y <= xs[-1]), out, 0.0)


# -- the mean head ---------------------------------------------------------------------------------------------------
def _head_profile(y):
    """Half-width a(y) and front depth c(y) of the head's cross-section at height y (micrometres)."""
    upper = _HEAD_HALF_WIDTH * np.sqrt(np.clip(1.0 - ((y - _HEAD_WIDEST_Y) / 220_000.0) ** 2, 0.0, 1.0))
    lower = _HEAD_HALF_WIDTH * _round_profile((_HEAD_WIDEST_Y - y) / (_HEAD_WIDEST_Y - _CHIN_BOTTOM_Y), 2.2)
    a = np.where(y >= _HEAD_WIDEST_Y, upper, lower)
    top = _FACE_DEPTH * np.sqrt(np.clip(1.0 - (np.maximum(y - 20_000.0, 0.0) / 230_000.0) ** 2, 0.0, 1.0))
    bottom = _FACE_DEPTH * _round_profile((_JAW_CORNER_Y - y) / (_JAW_CORNER_Y - _CHIN_BOTTOM_Y), 2.5)
    c = np.where(y >= _JAW_CORNER_Y, top, bottom)
    return np.maximum(a, 1.0), np.maximum(c, 1.0)


def _superellipse_radius(theta, a, c_front, c_back, p):
    """Polar radius at azimuth theta of a superellipse with half-width a and front/back depths."""
    s, co = np.abs(np.sin(theta)), np.cos(theta)
    c = np.where(co >= 0.0, c_front, c_back)
    return ((s / a) ** p + (np.abs(co) / c) ** p) ** (-1.0 / p)


def _mouth_line(x):
    """Height of the mouth slit (between the inner lips) at frontal x; valid for |x| <~ 25k."""
    return -39_700.0 - 600.0 * (x / 22_500.0) ** 2


def _base_surface(grid):
    """The head without facial features. Returns theta (n,), points (n, 3) f64 and head fraction (n,) in [0, 1]."""
    t = np.linspace(0.0, 1.0, grid)
    u, v = np.meshgrid(t, t)  # row i = v, column j = u
    theta = ((u - 0.5) * 2.0 * THETA_MAX).reshape(-1)
    y = (Y_BOTTOM + v * (Y_TOP - Y_BOTTOM)).reshape(-1)
    a, c = _head_profile(y)
    rho_head = _superellipse_radius(theta, a, c, a, _SUPERELLIPSE_P)
    rho_neck = _superellipse_radius(theta, _NECK_HALF_WIDTH, _NECK_DEPTH, _NECK_HALF_WIDTH, 2.0)
    k = _UNION_SOFTNESS
    rho = k * np.logaddexp(rho_head / k, rho_neck / k)  # smooth union of head and neck
    head_frac = 1.0 / (1.0 + np.exp(-np.clip((rho_head - rho_neck) / (2.0 * k), -50, 50)))
    pts = np.stack([rho * np.sin(theta), y, rho * np.cos(theta)], axis=1)
    return theta, pts, head_frac


def _feature_depth(x, y):
    """Depth (z) displacement of the facial features at frontal (x, y), before the frontal fade."""
    dz = np.zeros_like(x)
    # nose: a ridge whose height and width follow smooth profiles along y, plus the alae
    height = _smooth_curve([(36, 0), (28, 2.5), (20, 7.5), (10, 15), (2, 21.5), (-5, 26), (-8.5, 26.5),
                            (-12, 23), (-16, 14), (-19.5, 6.5), (-23, 1.5), (-27, 0)], y)
    width = _smooth_curve([(40, 6), (20, 5.2), (5, 6.2), (-6, 7.5), (-14, 9.5), (-22, 11), (-30, 11)], y)
    width = np.maximum(width, 4_000.0)
    dz += height * np.exp(-0.5 * (x / width) ** 2 - 0.5 * (x / (1.6 * width)) ** 4)
    dz += 6_500.0 * _pair(x, y, 10_500.0, -14_500.0, 4_000.0, 3_800.0)  # alae
    dz += 5_000.0 * _gauss(x, y, 0.0, 26_000.0, 7_000.0, 6_000.0)  # nasal bridge root
    # brow ridge and glabella, forehead
    dz += 5_500.0 * _pair(x, y, 30_000.0, 43_000.0, 17_000.0, 6_000.0)
    dz += 4_500.0 * _gauss(x, y, 0.0, 40_000.0, 10_000.0, 8_000.0)
    dz -= 3_000.0 * _pair(x, y, 62_000.0, 45_000.0, 10_000.0, 14_000.0)  # temples
    # eyes: socket, eyeball, lids
    dz -= 14_000.0 * _pair(x, y, 31_000.0, EYE_CENTRE_Y, 12_500.0, 8_500.0)
    dz += 8_000.0 * _pair(x, y, 31_000.0, EYE_CENTRE_Y, 8_500.0, 5_000.0)
    dz += 2_000.0 * _pair(x, y, 31_000.0, EYE_CENTRE_Y + 5_000.0, 10_000.0, 2_500.0)  # upper lid fold
    # cheekbones, lower face (the "muzzle"), lips, chin
    dz += 5_500.0 * _pair(x, y, 42_000.0, -2_000.0, 13_000.0, 11_000.0)
    dz += 7_500.0 * _gauss(x, y, 0.0, -40_000.0, 27_000.0, 17_000.0)
    dz += 4_500.0 * _gauss(x, y, 0.0, -34_000.0, 17_000.0, 3_500.0)  # upper lip
    dz += 4_500.0 * _gauss(x, y, 0.0, -45_000.0, 14_500.0, 3_800.0)  # lower lip
    dz -= 2_500.0 * np.exp(-0.5 * ((y - _mouth_line(x)) / 1_100.0) ** 2 - (x / 23_000.0) ** 6)  # mouth slit
    dz -= 3_500.0 * _gauss(x, y, 0.0, -56_000.0, 13_000.0, 4_000.0)  # labiomental fold
    dz += 5_500.0 * _gauss(x, y, 0.0, -70_000.0, 14_000.0, 8_000.0)  # chin
    return dz


def _mean_shape(grid):
    """Mean head vertices (n, 3) f64, theta (n,), head fraction (n,), frontal weight (n,)."""
    theta, base, head_frac = _base_surface(grid)
    x, y = base[:, 0], base[:, 1]
    front = np.clip(np.cos(theta), 0.0, 1.0) ** 1.5 * head_frac
    pts = base.copy()
    pts[:, 2] += _feature_depth(x, y) * front
    return pts, theta, head_frac, front


def _grid_triangles(grid):
    """2 (grid-1)^2 triangles, wound like the BFM (clockwise seen from the front)."""
    i, j = np.meshgrid(np.arange(grid - 1), np.arange(grid - 1), indexing="ij")
    a = (i * grid + j).reshape(-1)
    b, c, d = a + 1, a + grid, a + grid + 1  # b right, c up, d up-right
    tri = np.concatenate([np.stack([a, c, d], 1), np.stack([a, d, b], 1)], axis=0)
    order = np.argsort(np.concatenate([2 * np.arange(a.size), 2 * np.arange(a.size) + 1]), kind="stable")
    return tri[order].astype(np.int32)


def _landmark_indices(grid, pts, theta):
    """68 vertex ids (iBUG order): jaw on the head boundary by (azimuth, height), the rest nearest in frontal x, y."""
    y_step = (Y_TOP - Y_BOTTOM) / (grid - 1)
    beta = np.linspace(-0.5 * math.pi, 0.5 * math.pi, 17)
    jaw_theta = math.radians(74.0) * np.sin(beta)
    jaw_y = -86_000.0 + 104_000.0 * (1.0 - np.cos(beta))
    cols = np.rint((jaw_theta / (2.0 * THETA_MAX) + 0.5) * (grid - 1)).astype(np.int64)
    rows = np.rint((jaw_y - Y_BOTTOM) / y_step).astype(np.int64)
    jaw = rows * grid + cols
    front = np.flatnonzero(np.cos(theta) > 0.3)
    xy = pts[front, :2]
    d2 = ((FRONT_LANDMARKS_XY[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    inner = front[np.argmin(d2, axis=1)]
    kpt = np.concatenate([jaw, inner]).astype(np.int64)
    # a coarse grid may snap an upper and a lower inner-lip point to one vertex: keep the lower one a row lower
    for up, low in ((61, 67), (62, 66), (63, 65)):
        if kpt[low] == kpt[up]:
            kpt[low] -= grid
    return kpt


# -- texture ----------------------------------------------------------------------------------------------------------
def _mean_albedo(x, y, theta, head_frac):
    """Mean albedo (n, 3) in [0, 255]: skin, darker brows, eyes, lips, nostrils."""
    n = x.size
    skin = np.array([222.0, 176.0, 146.0])
    col = np.tile(skin, (n, 1))
    # rosy cheeks, slightly darker neck and sides
    col += np.array([8.0, -10.0, -8.0]) * _pair(x, y, 40_000.0, -10_000.0, 12_000.0, 11_000.0)[:, None]
    col *= (0.9 + 0.1 * head_frac)[:, None]

    def blend(mask, colour):
        m = np.clip(mask, 0.0, 1.0)[:, None]
        col[:] = col * (1.0 - m) + np.asarray(colour, dtype=np.float64) * m

    front = np.cos(theta) > 0.2
    # hair above a hairline that drops towards the ears, and behind the ears
    deg = np.degrees(np.abs(theta))
    hairline = 80_000.0 - 28_000.0 * np.clip((deg - 25.0) / 60.0, 0.0, 1.0) ** 1.5
    hairline = np.where(deg > 86.0, hairline - (deg - 86.0) * 12_000.0, hairline)
    blend(smoothstep((y - hairline) / 5_000.0 + 0.5), [58.0, 42.0, 34.0])
    # brows: a band along the brow landmarks, thick at the inner end
    bx = np.array([p[0] for p in _BROW_R]) * _K
    by = np.array([p[1] for p in _BROW_R]) * _K
    ax = np.abs(x)
    brow_y = np.interp(-ax, bx, by) - 1_000.0
    half = np.interp(-ax, bx, [1_300.0, 1_800.0, 2_400.0, 2_800.0, 2_800.0])
    inside = (ax > 17_000.0) & (ax < 59_500.0) & front
    blend(inside * smoothstep((half - np.abs(y - brow_y)) / 900.0 + 0.5), [78.0, 56.0, 44.0])
    # eyes: sclera between the lids, iris, pupil, lash line
    for cx in EYE_CENTRES_X:
        t = (x - cx) / 12_000.0
        open_ = np.clip(1.0 - t ** 2, 0.0, 1.0)
        up = EYE_CENTRE_Y - 400.0 + 4_600.0 * open_ ** 0.7
        lo = EYE_CENTRE_Y - 400.0 - 3_500.0 * open_ ** 0.7
        between = smoothstep((np.minimum(up - y, y - lo)) / 500.0 + 0.5) * front * (np.abs(t) < 1.0)
        blend(between, [236.0, 231.0, 224.0])
        r = np.hypot(x - cx, y - EYE_CENTRE_Y + 300.0)
        blend(between * smoothstep((5_600.0 - r) / 500.0 + 0.5), [92.0, 68.0, 48.0])
        blend(between * smoothstep((2_400.0 - r) / 400.0 + 0.5), [18.0, 14.0, 14.0])
        lash = np.exp(-0.5 * ((y - up) / 550.0) ** 2) * (np.abs(t) < 1.08) * front
        blend(0.9 * lash, [40.0, 30.0, 28.0])
    # lips (between the outer and inner lip contours) and the dark mouth slit
    lx = np.array([p[0] for p in _LIPS_OUTER[:7]]) * _K
    upper_out = np.interp(x, lx, np.array([p[1] for p in _LIPS_OUTER[:7]]) * _K)
    lower_pts = [_LIPS_OUTER[0]] + _LIPS_OUTER[7:][::-1] + [_LIPS_OUTER[6]]
    lower_pts = sorted(lower_pts)
    lower_out = np.interp(x, [p[0] * _K for p in lower_pts], [p[1] * _K for p in lower_pts])
    lips = smoothstep(np.minimum(upper_out - y, y - lower_out) / 900.0 + 0.5) * (ax < 26_000.0) * front
    blend(0.9 * lips, [178.0, 92.0, 90.0])
    slit = np.exp(-0.5 * ((y - _mouth_line(x)) / 700.0) ** 2) * (ax < 23_000.0) * front
    blend(slit, [70.0, 28.0, 30.0])
    # nostrils
    blend(0.8 * _pair(x, y, 6_000.0, -17_500.0, 2_600.0, 1_300.0) * front, [80.0, 45.0, 40.0])
    return np.clip(col, 0.0, 255.0)


def _dct_fields(grid, pairs):
    """Separable cosine fields over the grid, one column per (a, b) pair; unit norm, mutually orthogonal."""
    k = (np.arange(grid) + 0.5) / grid
    out = np.empty((grid * grid, len(pairs)))
    for col, (a, b) in enumerate(pairs):
        f = np.outer(np.cos(math.pi * b * k), np.cos(math.pi * a * k)).reshape(-1)
        out[:, col] = f / np.linalg.norm(f)
    return out


# -- bases ------------------------------------------------------------------------------------------------------------
def _weighted_cosines(count, weight):
    """Orthonormalise weight * cos(pi a (k + 0.5) / len) for a < count along one grid axis -> (len, count)."""
    m = weight.size
    k = (np.arange(m) + 0.5) / m
    f = np.cos(math.pi * np.arange(count)[None, :] * k[:, None]) * weight[:, None]
    q, r = np.linalg.qr(f)
    q *= np.sign(np.diag(r))[None, :]  # deterministic signs; column a keeps cos(pi a .)'s parity about the middle
    return q


def _shape_basis(grid, n_shape, rng):
    """Orthonormal (3n, K) float32 smooth displacement fields, coarse / mirror-symmetric first, and shape_ev (K,).

    Each field is a product of cosines in u and v, weighted by a separable envelope (larger on the face than on
    the neck and behind the ears) and orthonormalised per axis, so products are exactly orthonormal in 3D.
    """
    n = grid * grid
    t = np.linspace(0.0, 1.0, grid)
    theta = (t - 0.5) * 2.0 * THETA_MAX
    height = Y_BOTTOM + t * (Y_TOP - Y_BOTTOM)
    env_u = 0.35 + 0.65 * np.clip(np.cos(theta), 0.0, 1.0)
    env_v = 0.35 + 0.65 * np.exp(-0.5 * ((height + 20_000.0) / 60_000.0) ** 4)
    n_freq = 16
    cos_u = _weighted_cosines(n_freq, env_u)  # (grid, 16), column a: parity (-1)^a under u -> 1 - u
    cos_v = _weighted_cosines(n_freq, env_v)
    # candidate (coordinate, a, b) modes; mirror-symmetric deformations first: odd a for x, even a for y and z
    cands = []
    for c in range(3):
        for a in range(n_freq):
            for b in range(n_freq):
                if (a, b) == (0, 0):
                    continue
                symmetric = (a % 2 == 1) == (c == 0)
                cands.append((a * a + b * b + (0 if symmetric else 6) + 0.01 * c, c, a, b))
    chosen = sorted(cands)[:n_shape]
    fields = np.empty((n, n_shape))
    for k, (_, c, a, b) in enumerate(chosen):
        fields[:, k] = np.outer(cos_v[:, b], cos_u[:, a]).reshape(-1)
    coord = np.array([m[1] for m in chosen])
    # mix neighbouring components with seeded rotations (blocks of 6): oblique directions, still orthonormal
    basis = np.zeros((n, 3, n_shape), dtype=np.float32)
    for start in range(0, n_shape, 6):
        stop = min(start + 6, n_shape)
        q, r = np.linalg.qr(rng.standard_normal((stop - start, stop - start)))
        q *= np.sign(np.diag(r))[None, :]
        for c in range(3):
            sel = np.flatnonzero(coord[start:stop] == c)
            if sel.size:  # einsum's own loops: no multi-threaded BLAS call on this hot path
                basis[:, c, start:stop] = np.einsum("nk,kl->nl", fields[:, start + sel], q[sel, :])
    # standard deviations: 4e5 / (k + 1) at the BFM-like size (Shape_Para of order 1e5, like the genuine fits),
    # scaled by sqrt(n / n_BFM) so that a draw deforms the face by the same micrometres on any grid
    ev = 4.0e5 / (1.0 + np.arange(n_shape)) * math.sqrt(n / _BFM_SIZED_VERTICES)
    return basis.reshape(3 * n, n_shape), ev.astype(np.float32)


def _expression_basis(pts, theta, head_frac, front, n_exp, rng):
    """(3n, E) float32 localised expression displacements (micrometres per unit coefficient) and exp_ev (E,)."""
    n = pts.shape[0]
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    ax = np.abs(x)
    left = (1.0 / (1.0 + np.exp(-np.clip(x / 4_000.0, -50.0, 50.0))))[:, None]  # smooth 0 -> 1 across x = 0
    fw = front  # features live on the front of the head
    modes = []

    # jaw open: rotation about the hinge axis of everything below the mouth slit (smooth beyond the corners)
    line = np.where(ax < 24_000.0, _mouth_line(x), -40_000.0 + 0.6 * (ax - 24_000.0))
    sigma = 700.0 + 0.5 * np.maximum(ax - 22_000.0, 0.0)
    w_jaw = smoothstep((line - y) / (2.0 * sigma) + 0.5) * head_frac
    jaw_rot = np.stack([np.zeros(n), -(z - _HINGE_Z), y - _HINGE_Y], axis=1) * _JAW_RAD_PER_UNIT
    jaw = jaw_rot * w_jaw[:, None]
    modes.append(jaw)

    def local(cx, cy, sx, sy, d, mirror=True, sides=(1, -1)):
        g = np.zeros((n, 3))
        for s in (sides if mirror else (1,)):
            w = _gauss(x, y, s * cx, cy, sx, sy) * fw
            dd = np.array(d, dtype=np.float64) * np.array([s, 1.0, 1.0])
            g += w[:, None] * dd[None, :]
        return g

    smile = local(25_000, -40_000, 9_000, 7_000, (1_200, 2_400, -1_200)) + \
        local(38_000, -14_000, 12_000, 10_000, (0, 1_000, 800))
    modes.append(smile)
    lips = _gauss(x, y, 0, -40_000, 17_000, 8_000) * fw
    modes.append(np.stack([-x / 25_000.0 * 1_800.0 * lips, 0 * lips, 3_000.0 * lips], axis=1))  # pucker
    brow_w = _pair(x, y, 35_000, 45_000, 20_000, 9_000) + 0.35 * _gauss(x, y, 0, 62_000, 45_000, 18_000)
    brow_raise = np.stack([0 * x, 2_500.0 * brow_w * fw, 0 * x], axis=1)
    modes.append(brow_raise)

    def eye_close(sides):
        d = np.zeros((n, 3))
        for s in sides:
            cx = 31_000.0 * s
            lat = np.exp(-(((x - cx) / 14_000.0) ** 4))
            up_line, lo_line = EYE_CENTRE_Y + 3_200.0, EYE_CENTRE_Y - 3_500.0
            w = np.clip((y - lo_line) / (up_line - lo_line), 0.0, 1.0)
            w = np.where(y > up_line, np.clip(1.0 - (y - up_line) / 12_000.0, 0.0, 1.0), w)
            d[:, 1] -= 2_300.0 * w * lat * fw
        return d

    modes.append(eye_close((1, -1)))
    modes.append(local(24_000, 44_000, 10_000, 6_000, (-1_200, -1_600, 300)))  # frown
    modes.append(local(25_000, -41_000, 8_000, 6_000, (2_500, -500, -600)))  # stretch
    modes.append(local(0, -33_500, 15_000, 4_000, (0, 1_800, 400), mirror=False))  # upper lip raise
    modes.append(local(0, -47_000, 15_000, 5_000, (0, -2_000, 400), mirror=False))  # lower lip depress
    puff = (_pair(x, y, 40_000, -35_000, 13_000, 13_000) * fw * 2_500.0)[:, None] * \
        np.stack([np.sin(theta), 0 * x, np.cos(theta)], axis=1)
    modes.append(puff)
    modes.append(smile * left)
    modes.append(smile * (1.0 - left))
    modes.append(eye_close((1,)))
    modes.append(eye_close((-1,)))
    modes.append(brow_raise * left)
    modes.append(brow_raise * (1.0 - left))
    modes.append(np.stack([w_jaw * 1_500.0, 0 * x, 0 * x], axis=1))  # jaw sideways
    modes.append(local(0, 12_000, 9_000, 8_000, (0, 1_200, 0), mirror=False)
                 + local(11_000, -15_000, 5_000, 5_000, (0, 1_000, 0)))  # nose wrinkle
    modes.append(local(0, -40_000, 20_000, 7_000, (0, 0, -2_000), mirror=False))  # lip press
    # the rest: smaller seeded local modes around the mouth, eyes, brows, cheeks and nose
    centres = [(0, -40), (20, -42), (31, 26), (30, 45), (40, -10), (12, -16), (0, -70), (45, 10), (18, -55),
               (0, 50)]
    while len(modes) < n_exp:
        cx, cy = centres[(len(modes) - len(EXP_MODE_NAMES)) % len(centres)]
        jitter = rng.uniform(-4_000, 4_000, size=2)
        direction = rng.standard_normal(3)
        direction *= 1_000.0 / np.linalg.norm(direction)
        size = rng.uniform(6_000, 11_000)
        modes.append(local(cx * _K + jitter[0], cy * _K + jitter[1], size, size * 0.8, direction,
                           mirror=bool(rng.integers(0, 2)) and cx != 0))
    pcs = np.stack([m.reshape(-1) for m in modes[:n_exp]], axis=1).astype(np.float32)
    # standard deviations like the genuine Exp_Para (std 1.4, 1.1, 1.0, 0.7, 0.5, ... over the 32 files)
    ev = np.full(n_exp, 0.3)
    head = [1.5, 1.2, 1.0, 0.85, 0.75, 0.65, 0.6, 0.55, 0.5, 0.45] + [0.4] * 9
    ev[: min(n_exp, len(head))] = head[:n_exp]
    return pcs, ev.astype(np.float32)


def _texture_basis(grid, n_tex):
    """(3n, T) orthonormal smooth colour fields and tex_ev (T,): cosine fields along brightness, red-green and
    blue-yellow axes; coarse and left-right symmetric fields first, brightness varying most."""
    colours = np.array([[1.0, 1.0, 1.0], [1.0, -0.5, -0.5], [0.0, 1.0, -1.0]])
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    items = []
    for a in range(8):
        for b in range(8):
            for ci in range(3):
                items.append((a * a + b * b + (4 if a % 2 else 0) + 3 * ci, a, b, ci))
    items = sorted(items)[:n_tex]
    fields = _dct_fields(grid, [(a, b) for _, a, b, _ in items])
    tex = np.empty((grid * grid, 3, n_tex), dtype=np.float32)
    for k, (_, _, _, ci) in enumerate(items):
        tex[:, :, k] = fields[:, k, None] * colours[ci][None, :]
    ev = np.array([6_000.0 / (1.0 + k) ** 0.9 * (1.0 if it[3] == 0 else 0.6) for k, it in enumerate(items)])
    return tex.reshape(-1, n_tex), ev.astype(np.float32)


def build_synthetic_model(seed: int = 0, grid: int = 231, n_shape: int = 199, n_exp: int = 29,
                          n_tex: int = 40) -> MorphableModel:
    """Build the procedural morphable model (deterministic for a given seed; no external data).

    Args:
        seed: seeds the mixing of the shape basis and the minor expression modes (the mean face is fixed).
        grid: vertices per side of the UV grid; 231 gives 53,361 vertices and 105,800 triangles (BFM: 53,215 /
            105,840). n_shape (<= 3 * 255), n_exp (>= 1), n_tex: numbers of shape / expression / texture components.
    Returns:
        MorphableModel in BFM units: mean (n, 3) micrometres; shape_pc (3n, K) orthonormal columns with shape_ev
        (K,) standard deviations 4e5 / (k + 1) at grid 231 (Shape_Para entries of order 1e5; scaled by
        grid / 231 on other grids so that draws deform the face equally); exp_pc (3n, E) in micrometres
        per unit coefficient with exp_ev (E,) ~1.5 .. 0.3 (Exp_Para of order +-3); column 0 opens the jaw, 4 closes
        the eyes (see EXP_MODE_NAMES). uv (n, 2) = the grid (u right, v up), vertices on the pixel centres of a 256 UV map.
    """
    if grid < 21:
        raise ValueError(f"grid must be at least 21 vertices per side, got {grid}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    pts, theta, head_frac, front = _mean_shape(grid)
    # UV: the grid centred in a 256 map with every vertex on a pixel centre (u = col / 255), so the position map
    # holds each vertex's exact position at its pixel and a landmark read at uv_kpt_ind is the landmark itself.
    # (The real BFM's UVs fall between pixels; reading landmarks there costs up to about a pixel.)
    t = (UV_MAP_SIZE - grid) // 2 + np.arange(grid) if grid <= UV_MAP_SIZE else np.linspace(0, UV_MAP_SIZE - 1, grid)
    t = t / (UV_MAP_SIZE - 1.0)
    u, v = np.meshgrid(t, t)
    uv = np.stack([u.reshape(-1), v.reshape(-1)], axis=1)
    triangles = _grid_triangles(grid)
    kpt_ind = _landmark_indices(grid, pts, theta)

    shape_pc, shape_ev = _shape_basis(grid, n_shape, rng)
    exp_pc, exp_ev = _expression_basis(pts, theta, head_frac, front, n_exp, rng)
    tex_mu = _mean_albedo(pts[:, 0], pts[:, 1], theta, head_frac).astype(np.float32).reshape(-1)
    tex_pc, tex_ev = _texture_basis(grid, n_tex)

    # mouth triangles: those whose centre lies in the slit between the inner lips
    cen = pts[triangles].mean(axis=1)
    row_h = (Y_TOP - Y_BOTTOM) / (grid - 1)
    slit = (np.abs(cen[:, 1] - _mouth_line(cen[:, 0])) <= max(1_000.0, 0.75 * row_h)) & \
        (np.abs(cen[:, 0]) < 22_500.0) & (cen[:, 2] > 0)
    mouth_triangles = triangles[slit]

    return MorphableModel(
        mean=pts.astype(np.float32), shape_pc=shape_pc, shape_ev=shape_ev, exp_pc=exp_pc, exp_ev=exp_ev,
        tex_mu=tex_mu, tex_pc=tex_pc, tex_ev=tex_ev, triangles=triangles,
        mouth_triangles=mouth_triangles.astype(np.int32), kpt_ind=kpt_ind, uv=uv)


# -- drawing parameters, rendering, datasets ---------------------------------------------------------------------------
