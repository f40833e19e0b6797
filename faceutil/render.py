"""Triangle-mesh rendering in image space: z-buffer rasterisation, attribute interpolation, normals, Lambertian shading.

Owns the numba rasteriser that the UV position-map renderer, the synthetic data generator and visualisations share.

Conventions (DESIGN.md §3): vertices are image coordinates, x = column, y = row, pixel centres at integer coordinates,
z = depth with LARGER z closer to the camera. A pixel is covered by a triangle when its centre lies inside it; a centre
exactly on an edge shared by two triangles belongs to exactly one of them (top-left rule, see ``_rasterize_kernel``),
so a closed surface renders without holes or double coverage.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _edge(ax, ay, bx, by, px, py):
    """Twice the signed area of (a, b, p); positive when p lies to the left of a -> b (x right, y down)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@njit(cache=True)
def _owns_edge(nx, ny):
    """Tie rule for a pixel centre exactly on an edge: keep it iff the edge's inward normal (nx, ny) points to +x,
    or exactly along +y. The neighbour across a shared edge sees the opposite normal, so exactly one keeps it."""
    return nx > 0.0 or (nx == 0.0 and ny > 0.0)


@njit(cache=True)
def _canonical_edge(vx, vy, ia, ib, orient):
    """Endpoints of edge (ia, ib) in ascending vertex-id order, and the sign that turns the canonical edge function
    into one that is positive inside a triangle of orientation ``orient``."""
    if ia > ib:
        return vx[ib], vy[ib], vx[ia], vy[ia], -orient
    return vx[ia], vy[ia], vx[ib], vy[ib], orient


@njit(cache=True)
def _rasterize_kernel(vx, vy, vz, tris, height, width, inclusive, tri_id, bary, depth):
    """Z-buffer rasterisation into preallocated buffers (see ``rasterize``).

    Each edge function is evaluated with its two endpoints in ascending vertex-id order, so the two triangles that
    share an edge compute bit-identical values and agree on which side of it every pixel centre lies.
    ``inclusive``: every triangle owns all of its edges (centres on the outer border of a mesh are covered too;
    on shared edges the z-buffer keeps the first / nearest triangle).
    """
    for t in range(tris.shape[0]):
        i0 = tris[t, 0]
        i1 = tris[t, 1]
        i2 = tris[t, 2]
        x0 = vx[i0]
        y0 = vy[i0]
        x1 = vx[i1]
        y1 = vy[i1]
        x2 = vx[i2]
        y2 = vy[i2]
        area = _edge(x0, y0, x1, y1, x2, y2)
        if not (area != 0.0 and abs(area) < np.inf):  # degenerate, NaN or infinite
            continue
        fxmin = max(np.ceil(min(x0, x1, x2)), 0.0)
        fxmax = min(np.floor(max(x0, x1, x2)), width - 1.0)
        fymin = max(np.ceil(min(y0, y1, y2)), 0.0)
        fymax = min(np.floor(max(y0, y1, y2)), height - 1.0)
        if fxmin > fxmax or fymin > fymax:
            continue
        xmin = int(fxmin)
        xmax = int(fxmax)
        ymin = int(fymin)
        ymax = int(fymax)
        orient = 1.0 if area > 0.0 else -1.0
        # edge k is opposite vertex k
        ax0, ay0, bx0, by0, s0 = _canonical_edge(vx, vy, i1, i2, orient)
        ax1, ay1, bx1, by1, s1 = _canonical_edge(vx, vy, i2, i0, orient)
        ax2, ay2, bx2, by2, s2 = _canonical_edge(vx, vy, i0, i1, orient)
        # inward normal of edge k = s_k * gradient of its canonical edge function
        own0 = inclusive or _owns_edge(-(by0 - ay0) * s0, (bx0 - ax0) * s0)
        own1 = inclusive or _owns_edge(-(by1 - ay1) * s1, (bx1 - ax1) * s1)
        own2 = inclusive or _owns_edge(-(by2 - ay2) * s2, (bx2 - ax2) * s2)
        z0 = vz[i0]
        z1 = vz[i1]
        z2 = vz[i2]
        for y in range(ymin, ymax + 1):
            py = float(y)
            for x in range(xmin, xmax + 1):
                px = float(x)
                e0 = _edge(ax0, ay0, bx0, by0, px, py) * s0
                if e0 < 0.0 or (e0 == 0.0 and not own0):
                    continue
                e1 = _edge(ax1, ay1, bx1, by1, px, py) * s1
                if e1 < 0.0 or (e1 == 0.0 and not own1):
                    continue
                e2 = _edge(ax2, ay2, bx2, by2, px, py) * s2
                if e2 < 0.0 or (e2 == 0.0 and not own2):
                    continue
                total = e0 + e1 + e2
                if total <= 0.0:
                    continue
                w0 = e0 / total
                w1 = e1 / total
                w2 = e2 / total
                z = w0 * z0 + w1 * z1 + w2 * z2
                if z > depth[y, x]:
                    depth[y, x] = z
                    tri_id[y, x] = t
                    bary[y, x, 0] = w0
                    bary[y, x, 1] = w1
                    bary[y, x, 2] = w2


@njit(cache=True)
def _interpolate_kernel(tri_id, bary, triangles, attr, out):
    """out[y, x, :] = sum_k bary[y, x, k] * attr[triangles[tri_id[y, x], k], :] where tri_id >= 0 (float64 sums)."""
    height, width = tri_id.shape
    n_ch = attr.shape[1]
    for y in range(height):
        for x in range(width):
            t = tri_id[y, x]
            if t < 0:
                continue
            a = triangles[t, 0]
            b = triangles[t, 1]
            c = triangles[t, 2]
            wa = np.float64(bary[y, x, 0])
            wb = np.float64(bary[y, x, 1])
            wc = np.float64(bary[y, x, 2])
            for ch in range(n_ch):
                out[y, x, ch] = wa * attr[a, ch] + wb * attr[b, ch] + wc * attr[c, ch]


def _check_mesh(vertices, triangles) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    tri = np.ascontiguousarray(triangles, dtype=np.int32)
    if v.ndim != 2 or v.shape[1] < 3:
        raise ValueError(f"vertices must be (n, 3), got {v.shape}")
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"triangles must be (m, 3), got {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= v.shape[0]):
        raise ValueError(f"triangle vertex ids must lie in [0, {v.shape[0]}), got [{tri.min()}, {tri.max()}]")
    return v, tri


def rasterize(vertices, triangles, height: int, width: int, *, inclusive: bool = False):
    """Z-buffer rasterisation of a triangle mesh.

    Args:
        vertices: (n, 3) float, image coordinates (x column, y row, z depth; larger z = closer to the camera).
        triangles: (m, 3) int, 0-based vertex ids.
        height, width: output size in pixels.
        inclusive: False (default) = top-left fill rule: a centre exactly on an edge shared by two triangles is
            covered once, and centres exactly on the bottom / right border of a mesh are left out, as in GPU
            rasterisers. True = a centre on any edge is covered (the whole closed mesh region, e.g. for UV maps
            whose vertices sit on pixel centres); a shared edge then goes to the nearer, else the earlier triangle.
    Returns:
        tri_id: (H, W) int32, index of the visible triangle, -1 where no triangle covers the pixel centre.
        bary: (H, W, 3) float32, barycentric weights of the triangle's three vertices (0 where empty).
        depth: (H, W) float32, interpolated z of the visible surface, -inf where empty.
    """
    v, tri = _check_mesh(vertices, triangles)
    height, width = int(height), int(width)
    tri_id = np.full((height, width), -1, dtype=np.int32)
    bary64 = np.zeros((height, width, 3), dtype=np.float64)
    depth64 = np.full((height, width), -np.inf, dtype=np.float64)
    _rasterize_kernel(np.ascontiguousarray(v[:, 0]), np.ascontiguousarray(v[:, 1]), np.ascontiguousarray(v[:, 2]),
                      tri, height, width, bool(inclusive), tri_id, bary64, depth64)
    return tri_id, bary64.astype(np.float32), depth64.astype(np.float32)


def interpolate(tri_id, bary, triangles, attributes, background=None) -> np.ndarray:
    """Barycentric interpolation of per-vertex attributes over a rasterisation.

    Args:
        tri_id: (H, W) int32 and bary: (H, W, 3) float32, as returned by ``rasterize``.
        triangles: (m, 3) int vertex ids; attributes: (n, C) float per-vertex values.
        background: None (zeros) or an array broadcastable to (H, W, C) used where tri_id == -1.
    Returns:
        (H, W, C) float32.
    """
    attr = np.asarray(attributes)
    squeeze = attr.ndim == 1
    attr = attr.reshape(attr.shape[0], -1)
    if attr.dtype not in (np.float32, np.float64):
        attr = attr.astype(np.float64)
    h, w = tri_id.shape
    c = attr.shape[1]
    if background is None:
        out = np.zeros((h, w, c), dtype=np.float32)
    else:
        bg = np.asarray(background, dtype=np.float32)
        if bg.ndim == 2:  # (H, W) for a single-channel attribute
            bg = bg[..., None]
        out = np.array(np.broadcast_to(bg, (h, w, c)), dtype=np.float32)
    _interpolate_kernel(np.ascontiguousarray(tri_id, dtype=np.int32), np.ascontiguousarray(bary, dtype=np.float32),
                        np.ascontiguousarray(triangles, dtype=np.int32), np.ascontiguousarray(attr), out)
    return out[..., 0] if squeeze else out


def render_attributes(vertices, triangles, attributes, height: int, width: int, background=None) -> np.ndarray:
    """Render any per-vertex attribute (colour, normal, position, ...) with z-buffering.

    Args:
        vertices: (n, 3) float image coordinates; triangles: (m, 3) int; attributes: (n, C) float ((n,) -> (H, W)).
        height, width: output size; background: None (zeros) or broadcastable to (H, W, C).
    Returns:
        (H, W, C) float32, barycentric interpolation of the attribute of the visible triangle at each pixel centre.
    """
    tri_id, bary, _ = rasterize(vertices, triangles, height, width)
    return interpolate(tri_id, bary, triangles, attributes, background)


def vertex_normals(vertices, triangles) -> np.ndarray:
    """Area-weighted vertex normals, vectorised.

    The face normal of (v0, v1, v2) is cross(v1 - v0, v2 - v0) (right-hand rule: counter-clockwise seen from the
    side it points to). Vertices touched by no non-degenerate triangle get (0, 0, 0).

    Args:
        vertices: (n, 3) float; triangles: (m, 3) int.
    Returns:
        (n, 3) float32 unit normals.
    """
    v, tri = _check_mesh(vertices, triangles)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    i0, i1, i2 = tri[:, 0], tri[:, 1], tri[:, 2]
    x0, y0, z0 = x[i0], y[i0], z[i0]
    ax, ay, az = x[i1] - x0, y[i1] - y0, z[i1] - z0
    bx, by, bz = x[i2] - x0, y[i2] - y0, z[i2] - z0
    n = v.shape[0]
    ids = tri.T.reshape(-1)  # corner-major: all first corners, then all second, then all third
    out = np.empty((n, 3), dtype=np.float64)
    # face normal components (|face normal| = 2 * area), each summed onto the triangle's three corners
    for c, comp in enumerate((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)):
        out[:, c] = np.bincount(ids, weights=np.tile(comp, 3), minlength=n)
    norm = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, norm, out=out, where=norm > 0)
    return out.astype(np.float32)


def render_shaded(vertices, triangles, colors, height: int, width: int, light_dir=(0.0, 0.0, 1.0),
                  ambient: float = 0.3, background=None, specular: float = 0.0, shininess: float = 20.0,
                  return_ids: bool = False):
    """Lambertian (per-pixel, two-sided) shading of a coloured mesh, with an optional Blinn-Phong highlight.

    Each pixel gets albedo * (ambient + max(0, n . l)) + specular * max(0, n . h)^shininess (white light; h is the
    half-way vector of l and the view direction +z), clipped to [0, 1], where albedo and the vertex normal are
    interpolated barycentrically, n is renormalised and flipped to face the camera (+z) — so the result does not
    depend on the triangle winding, nor on the y flip between model and image space — and l = light_dir / |light_dir|
    (image coordinates; the default (0, 0, 1) points from the face towards the camera).

    Args:
        vertices: (n, 3) float image coordinates; triangles: (m, 3) int; colors: (n, 3) float albedo in [0, 1].
        height, width: output size; light_dir: (3,) direction towards the light; ambient: ambient fraction.
        background: None (black) or (H, W, 3) float in [0, 1] shown where no triangle is visible.
        specular: strength of the highlight (0: none, the pure Lambertian image); shininess: its exponent.
        return_ids: also return the (H, W) int32 id of the triangle seen at each pixel (-1: background).
    Returns:
        (H, W, 3) float32 in [0, 1] (and the triangle ids when return_ids).
    """
    v, tri = _check_mesh(vertices, triangles)
    light = np.asarray(light_dir, dtype=np.float64).reshape(3)
    light = light / np.linalg.norm(light)
    albedo = np.ascontiguousarray(np.asarray(colors, dtype=np.float64))
    if albedo.shape != (v.shape[0], 3):
        raise ValueError(f"colors must be ({v.shape[0]}, 3), got {albedo.shape}")
    normals = vertex_normals(v, tri).astype(np.float64)
    tri_id, bary, _ = rasterize(v, tri, height, width)
    if background is None:
        out = np.zeros((height, width, 3), dtype=np.float32)
    else:
        out = np.array(np.broadcast_to(np.asarray(background, dtype=np.float32), (height, width, 3)), dtype=np.float32)
    half = light + np.array([0.0, 0.0, 1.0])
    half = half / max(np.linalg.norm(half), 1e-12)
    _shade_kernel(tri_id, bary, tri, albedo, normals, light, float(ambient), half, float(specular), float(shininess),
                  out)
    return (out, tri_id) if return_ids else out


@njit(cache=True)
def _shade_kernel(tri_id, bary, triangles, albedo, normals, light, ambient, half, specular, shininess, out):
    """Per covered pixel: interpolate albedo and normal, renormalise, turn the normal towards +z, shade."""
    height, width = tri_id.shape
    for y in range(height):
        for x in range(width):
            t = tri_id[y, x]
            if t < 0:
                continue
            nx = 0.0
            ny = 0.0
            nz = 0.0
            r = 0.0
            g = 0.0
            b = 0.0
            for k in range(3):
                vid = triangles[t, k]
                w = np.float64(bary[y, x, k])
                nx += w * normals[vid, 0]
                ny += w * normals[vid, 1]
                nz += w * normals[vid, 2]
                r += w * albedo[vid, 0]
                g += w * albedo[vid, 1]
                b += w * albedo[vid, 2]
            length = np.sqrt(nx * nx + ny * ny + nz * nz)
            cos = 0.0
            if length > 0.0:
                cos = (nx * light[0] + ny * light[1] + nz * light[2]) / length
                if nz < 0.0:
                    cos = -cos
            shade = ambient + max(cos, 0.0)
            highlight = 0.0
            if specular > 0.0 and length > 0.0:
                ch = (nx * half[0] + ny * half[1] + nz * half[2]) / length
                if nz < 0.0:
                    ch = -ch
                highlight = specular * max(ch, 0.0) ** shininess
            out[y, x, 0] = min(max(r * shade + highlight, 0.0), 1.0)
            out[y, x, 1] = min(max(g * shade + highlight, 0.0), 1.0)
            out[y, x, 2] = min(max(b * shade + highlight, 0.0), 1.0)
