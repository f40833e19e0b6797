"""Tests for faceutil.render: the numba rasteriser against a slow reference, fill rule, occlusion, normals, shading."""
import numpy as np
import pytest

from faceutil import render

EPS = 1e-9  # reference: pixel centres closer than this (in barycentric terms) to an edge count as ties


def reference_rasterize(vertices, triangles, height, width):
    """Obviously-correct O(H*W*m) rasteriser: for each pixel, every triangle whose barycentrics are all >= 0.

    Returns tri_id (H, W) (-1 empty), bary (H, W, 3), and 'ambiguous' (H, W) bool: pixels where the answer depends
    on a tie (centre within EPS of an edge of a candidate triangle, or two candidates at equal depth).
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri_id = np.full((height, width), -1)
    bary = np.zeros((height, width, 3))
    ambiguous = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            hits = []
            for t, (a, b, c) in enumerate(triangles):
                m = np.array([[v[a, 0], v[b, 0], v[c, 0]], [v[a, 1], v[b, 1], v[c, 1]], [1.0, 1.0, 1.0]])
                if abs(np.linalg.det(m)) < 1e-12:
                    continue
                w = np.linalg.solve(m, [x, y, 1.0])
                if np.all(w >= -EPS):
                    z = w @ v[[a, b, c], 2]
                    hits.append((z, t, w, bool(np.any(np.abs(w) <= EPS))))
            if not hits:
                continue
            hits.sort(key=lambda h: -h[0])
            z, t, w, on_edge = hits[0]
            tri_id[y, x] = t
            bary[y, x] = w
            ambiguous[y, x] = on_edge or (len(hits) > 1 and hits[1][0] >= z - 1e-9) or any(h[3] for h in hits)
    return tri_id, bary, ambiguous


def random_mesh(rng, n_vertices, n_triangles, size):
    vertices = np.column_stack([rng.uniform(-2, size + 1, n_vertices), rng.uniform(-2, size + 1, n_vertices),
                                rng.uniform(-10, 10, n_vertices)])
    triangles = np.array([rng.choice(n_vertices, 3, replace=False) for _ in range(n_triangles)], dtype=np.int32)
    return vertices, triangles


def grid_mesh(nx, ny, x0, y0, step, rng=None, jitter=0.0):
    """A flat quad as an (nx x ny)-vertex grid split into triangles along alternating diagonals."""
    xs, ys = np.meshgrid(x0 + step * np.arange(nx), y0 + step * np.arange(ny))
    vertices = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(nx * ny)]).astype(np.float64)
    if jitter:
        inner = np.zeros((ny, nx), dtype=bool)
        inner[1:-1, 1:-1] = True
        vertices[inner.ravel(), :2] += rng.uniform(-jitter, jitter, (inner.sum(), 2))
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i, (j + 1) * nx + i + 1
            if (i + j) % 2:
                tris += [(a, b, d), (a, d, c)]
            else:
                tris += [(a, b, c), (b, d, c)]
    return vertices, np.array(tris, dtype=np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_matches_reference(seed):
    rng = np.random.default_rng(seed)
    size = 16
    vertices, triangles = random_mesh(rng, 20, 12, size)
    tri_id, bary, depth = render.rasterize(vertices, triangles, size, size)
    ref_id, ref_bary, ambiguous = reference_rasterize(vertices, triangles, size, size)
    assert tri_id.dtype == np.int32 and bary.dtype == np.float32 and depth.dtype == np.float32
    assert ambiguous.mean() < 0.05  # random float coordinates: ties are rare
    ok = ~ambiguous
    assert np.array_equal(tri_id[ok], ref_id[ok])
    covered = ok & (ref_id >= 0)
    assert covered.sum() > 30
    np.testing.assert_allclose(bary[covered], ref_bary[covered], atol=1e-5)
    expected_depth = np.einsum("pk,pk->p", ref_bary[covered], vertices[triangles[ref_id[covered]], 2])
    np.testing.assert_allclose(depth[covered], expected_depth, atol=1e-4)
    assert np.all(np.isneginf(depth[tri_id < 0])) and np.all(bary[tri_id < 0] == 0)


def test_render_attributes_matches_reference():
    rng = np.random.default_rng(7)
    size = 16
    vertices, triangles = random_mesh(rng, 20, 12, size)
    attributes = rng.normal(size=(20, 4))
    background = rng.uniform(size=(size, size, 4))
    out = render.render_attributes(vertices, triangles, attributes, size, size, background=background)
    ref_id, ref_bary, ambiguous = reference_rasterize(vertices, triangles, size, size)
    assert out.shape == (size, size, 4) and out.dtype == np.float32
    for y in range(size):
        for x in range(size):
            if ambiguous[y, x]:
                continue
            if ref_id[y, x] < 0:
                expected = background[y, x]
            else:
                expected = ref_bary[y, x] @ attributes[triangles[ref_id[y, x]]]
            np.testing.assert_allclose(out[y, x], expected, atol=1e-5)


def test_near_triangle_hides_far_one_in_either_order():
    near = [[2, 2, 5.0], [14, 2, 5.0], [2, 14, 5.0]]
    far = [[1, 1, -3.0], [15, 1, -3.0], [8, 15, -3.0]]
    vertices = np.array(near + far)
    for triangles, near_id in (([[0, 1, 2], [3, 4, 5]], 0), ([[3, 4, 5], [0, 1, 2]], 1)):
        tri_id, _, depth = render.rasterize(vertices, np.array(triangles), 16, 16)
        assert tri_id[4, 4] == near_id and depth[4, 4] == pytest.approx(5.0)
        assert tri_id[12, 9] == 1 - near_id and depth[12, 9] == pytest.approx(-3.0)  # only the far one there
        colours = np.repeat([[1.0], [0.0]], 3, axis=0)  # near = 1, far = 0
        img = render.render_attributes(vertices, np.array(triangles), colours, 16, 16)
        assert img[4, 4, 0] == pytest.approx(1.0) and img[12, 9, 0] == pytest.approx(0.0)


@pytest.mark.parametrize("jitter", [0.0, 0.45])
def test_flat_quad_is_covered_exactly_once(jitter):
    # Integer vertices put many pixel centres exactly on shared edges and vertices: the fill rule must give each
    # centre inside the quad to exactly one triangle (no holes, no double coverage).
    rng = np.random.default_rng(3)
    vertices, triangles = grid_mesh(7, 6, 2.0, 3.0, 4.0, rng, jitter)  # spans x in [2, 26], y in [3, 23]
    h, w = 28, 30
    count = np.zeros((h, w), dtype=int)
    for t in range(len(triangles)):
        tid, _, _ = render.rasterize(vertices, triangles[t:t + 1], h, w)
        count += tid >= 0
    assert count.max() == 1
    assert np.all(count[4:23, 3:26] == 1)  # every centre strictly inside the quad
    tri_id, _, _ = render.rasterize(vertices, triangles, h, w)
    assert np.array_equal(tri_id >= 0, count == 1)
    # inclusive edges: the closed quad, its bottom and right borders included, and nothing else
    tri_inc, _, _ = render.rasterize(vertices, triangles, h, w, inclusive=True)
    closed = np.zeros((h, w), dtype=bool)
    closed[3:24, 2:27] = True
    assert np.array_equal(tri_inc >= 0, closed)
    # the same quad with the opposite winding is covered identically
    tri_id_flipped, _, _ = render.rasterize(vertices, triangles[:, ::-1], h, w)
    assert np.array_equal(tri_id_flipped >= 0, tri_id >= 0)


def test_vertices_outside_image_and_degenerate_triangles():
    vertices = np.array([[-50.0, -50, 0], [80, -40, 0], [-30, 90, 0], [5, 5, 1], [6, 6, 1], [7, 7, 1]])
    tri_id, _, _ = render.rasterize(vertices, np.array([[0, 1, 2], [3, 4, 5]]), 10, 12)
    assert np.all(tri_id == 0)  # the big triangle covers the whole image; the degenerate one nothing
    bad = np.array([[np.nan, 1, 0], [5, 1, 0], [1, 6, 0], [np.inf, 2, 0], [1e30, -1e30, 0], [2, 9, 0]])
    tri_id, _, depth = render.rasterize(bad, np.array([[0, 1, 2], [3, 1, 2], [4, 5, 2]]), 10, 12)
    assert np.all(tri_id == -1) or np.all(np.isfinite(depth[tri_id >= 0]))


def uv_sphere(n_lat=24, n_lon=48, radius=1.0):
    """Closed sphere, triangles counter-clockwise seen from outside."""
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.column_stack([np.sin(t).ravel() * np.cos(p).ravel(), np.sin(t).ravel() * np.sin(p).ravel(),
                            np.cos(t).ravel()])
    vertices = np.vstack([[0, 0, 1], ring, [0, 0, -1]]) * radius
    top, bottom = 0, len(vertices) - 1
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    tris = [(top, idx(0, j), idx(0, j + 1)) for j in range(n_lon)]
    for i in range(n_lat - 2):
        for j in range(n_lon):
            tris += [(idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)), (idx(i, j), idx(i + 1, j + 1), idx(i, j + 1))]
    tris += [(bottom, idx(n_lat - 2, j + 1), idx(n_lat - 2, j)) for j in range(n_lon)]
    return vertices, np.array(tris, dtype=np.int32)


def test_vertex_normals_of_sphere_point_outwards():
    vertices, triangles = uv_sphere(radius=3.0)
    vertices = vertices + [10.0, -4.0, 2.0]
    normals = render.vertex_normals(vertices, triangles)
    assert normals.shape == vertices.shape and normals.dtype == np.float32
    radial = (vertices - [10.0, -4.0, 2.0]) / 3.0
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(normals * radial, axis=1)) > 0.99
    flipped = render.vertex_normals(vertices, triangles[:, ::-1])
    np.testing.assert_allclose(flipped, -normals, atol=1e-6)


def test_vertex_normals_flat_and_unused_vertex():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    normals = render.vertex_normals(vertices, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(normals[:3], [[0, 0, 1]] * 3, atol=1e-7)
    assert np.all(normals[3] == 0)


@pytest.mark.parametrize("light", [(0, 0, 1), (0.6, -0.3, 0.74), (0.9, 0.1, -0.3), (0, 0, -1)])
def test_lambertian_shading_of_a_plane(light):
    # a tilted plane z = 0.3 x - 0.2 y: its camera-facing unit normal is (-0.3, 0.2, 1) / |.|
    vertices, triangles = grid_mesh(5, 5, 1.0, 1.0, 5.0)
    vertices[:, 2] = 0.3 * vertices[:, 0] - 0.2 * vertices[:, 1]
    albedo = np.array([0.8, 0.5, 0.2])
    background = np.full((24, 24, 3), 0.25)
    img = render.render_shaded(vertices, triangles, np.tile(albedo, (len(vertices), 1)), 24, 24, light_dir=light,
                               ambient=0.3, background=background)
    n = np.array([-0.3, 0.2, 1.0]) / np.linalg.norm([-0.3, 0.2, 1.0])
    lvec = np.asarray(light, dtype=float) / np.linalg.norm(light)
    expected = np.clip(albedo * (0.3 + max(0.0, n @ lvec)), 0, 1)
    np.testing.assert_allclose(img[5:20, 5:20], np.broadcast_to(expected, (15, 15, 3)), atol=1e-5)
    np.testing.assert_allclose(img[22:, :], 0.25)  # outside the plane: background
    # both windings shade the same (normals are turned towards the camera)
    img2 = render.render_shaded(vertices, triangles[:, ::-1], np.tile(albedo, (len(vertices), 1)), 24, 24,
                                light_dir=light, ambient=0.3, background=background)
    np.testing.assert_allclose(img2, img, atol=1e-6)


def test_shaded_sphere_follows_cosine_law():
    vertices, triangles = uv_sphere(48, 96, radius=20.0)
    vertices = vertices + [32.0, 32.0, 0.0]
    colours = np.full((len(vertices), 3), 0.6)
    img = render.render_shaded(vertices, triangles, colours, 64, 64, light_dir=(0, 0, 1), ambient=0.2)
    ys, xs = np.mgrid[0:64, 0:64]
    r2 = (xs - 32.0) ** 2 + (ys - 32.0) ** 2
    inner = r2 < 17.0 ** 2
    cos = np.sqrt(np.clip(1 - r2 / 400.0, 0, 1))  # n . l for the true sphere (front surface)
    np.testing.assert_allclose(img[inner, 0], 0.6 * (0.2 + cos[inner]), atol=0.01)
    assert np.all(img[r2 > 21.0 ** 2] == 0)


def test_rasterize_bfm_sized_mesh_has_no_holes():
    # correctness at BFM scale (105,840 triangles into 256x256); timing lives in benchmarks/
    vertices, triangles = grid_mesh(231, 231, 10.0, 10.0, 236.0 / 230.0)
    assert len(triangles) == 105800
    tri_id, _, _ = render.rasterize(vertices, triangles, 256, 256)
    inside = np.zeros((256, 256), dtype=bool)
    inside[11:246, 11:246] = True
    outside = np.ones((256, 256), dtype=bool)
    outside[10:247, 10:247] = False
    assert np.all(tri_id[inside] >= 0) and np.all(tri_id[outside] == -1)
