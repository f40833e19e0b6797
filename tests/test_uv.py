"""Tests for faceutil.uv: UV pixels, the position-map renderer, and the UV layout (checked against PRNet's uv-data)."""
import numpy as np
import pytest

from faceutil import uv as uvmod
from faceutil.errors import FaceUtilError
from faceutil.morphable import MorphableModel


def make_model(mean, triangles, kpt_ind, uv) -> MorphableModel:
    """A MorphableModel with only mean / topology / landmarks / UV (bases with zero components)."""
    n = len(mean)
    empty = np.zeros((3 * n, 0), dtype=np.float32)
    none = np.zeros(0, dtype=np.float32)
    return MorphableModel(mean=np.asarray(mean, np.float32), shape_pc=empty, shape_ev=none, exp_pc=empty,
                          exp_ev=none, tex_mu=np.zeros(3 * n, np.float32), tex_pc=empty, tex_ev=none,
                          triangles=np.asarray(triangles, np.int32), mouth_triangles=np.zeros((0, 3), np.int32),
                          kpt_ind=np.asarray(kpt_ind, np.int64), uv=np.asarray(uv, np.float64))


def grid_topology(n):
    """Triangles of an n x n vertex grid (vertex id = row * n + col)."""
    j, i = np.mgrid[0:n - 1, 0:n - 1]
    a = (j * n + i).ravel()
    b, c, d = a + 1, a + n, a + n + 1
    return np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])]).astype(np.int32)


def landmark_template_uv():
    """A crude iBUG-68 layout in UV (u right, v up), anatomically ordered: jaw, brows, nose, eyes, mouth."""
    a = np.linspace(np.pi, 2 * np.pi, 17)
    jaw = np.column_stack([0.5 + 0.44 * np.cos(a), 0.62 + 0.37 * np.sin(a)])
    brow_l = np.column_stack([np.linspace(0.22, 0.45, 5), [0.80, 0.83, 0.84, 0.83, 0.81]])
    brow_r = np.column_stack([1 - brow_l[::-1, 0], brow_l[::-1, 1]])
    bridge = np.column_stack([np.full(4, 0.5), np.linspace(0.76, 0.62, 4)])
    base = np.column_stack([np.linspace(0.45, 0.55, 5), [0.57, 0.56, 0.555, 0.56, 0.57]])
    t = np.linspace(0, 2 * np.pi, 7)[:-1]
    eye_l = np.column_stack([0.33 - 0.07 * np.cos(t), 0.73 + 0.02 * np.sin(t)])
    eye_r = np.column_stack([1 - eye_l[[3, 2, 1, 0, 5, 4], 0], eye_l[[3, 2, 1, 0, 5, 4], 1]])
    t = np.linspace(0, 2 * np.pi, 13)[:-1]
    outer = np.column_stack([0.5 - 0.09 * np.cos(t), 0.44 + 0.05 * np.sin(t)])
    t = np.linspace(0, 2 * np.pi, 9)[:-1]
    inner = np.column_stack([0.5 - 0.06 * np.cos(t), 0.44 + 0.015 * np.sin(t)])
    pts = np.vstack([jaw, brow_l, brow_r, bridge, base, eye_l, eye_r, outer, inner])
    assert pts.shape == (68, 2)
    return pts


@pytest.fixture(scope="module")
def toy_face():
    """A head-like half ellipsoid on a 81 x 81 UV grid (BFM axes and units), landmarks snapped to grid vertices."""
    n = 81
    vv, uu = np.mgrid[0:n, 0:n] / (n - 1.0)
    uv = np.column_stack([uu.ravel(), vv.ravel()])
    lon = (uv[:, 0] - 0.5) * np.pi
    lat = (uv[:, 1] - 0.55) * 0.9 * np.pi
    mean = np.column_stack([80000 * np.sin(lon) * np.cos(lat), 110000 * np.sin(lat),
                            100000 * np.cos(lon) * np.cos(lat)])
    template = landmark_template_uv()
    kpt = np.argmin(((uv[None, :, :] - template[:, None, :]) ** 2).sum(-1), axis=1)
    return make_model(mean, grid_topology(n), kpt, uv)


def test_uv_pixels_convention():
    pix = uvmod.uv_pixels(np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.25]]), size=256)
    np.testing.assert_allclose(pix, [[0, 255], [255, 0], [127.5, 191.25]])
    assert pix.dtype == np.float64


def test_posmap_reproduces_affine_function_of_uv_position():
    # vertices = A @ [x_uv, y_uv, 1]: barycentric interpolation reproduces affine functions, so every covered UV
    # pixel (x, y) must read back exactly A @ [x, y, 1] -- also for an irregular (jittered) UV mesh.
    rng = np.random.default_rng(0)
    n, size = 25, 64
    vv, uu = np.mgrid[0:n, 0:n] / (n - 1.0)
    uv = np.column_stack([uu.ravel(), vv.ravel()])
    interior = (uv > 0).all(1) & (uv < 1).all(1)
    uv[interior] += rng.uniform(-0.3, 0.3, (interior.sum(), 2)) / (n - 1)
    amat = np.array([[1.5, -0.2, 10.0], [0.3, 0.9, -4.0], [-0.7, 0.4, 2.5]])
    pix = uvmod.uv_pixels(uv, size)
    vertices = np.column_stack([pix, np.ones(len(pix))]) @ amat.T
    model = make_model(vertices, grid_topology(n), np.arange(68), uv)
    renderer = uvmod.UVRenderer(model, size)
    pm = renderer.posmap(vertices)
    assert pm.shape == (size, size, 3) and pm.dtype == np.float32
    assert renderer.covered.all()  # the UV mesh spans the whole square, corners included
    ys, xs = np.mgrid[0:size, 0:size]
    expected = np.stack([xs, ys, np.ones_like(xs)], -1) @ amat.T
    np.testing.assert_allclose(pm, expected, atol=1e-4)


def test_posmap_outside_mesh_is_zero_and_landmarks_exact_on_vertices():
    # UV grid occupying only part of the map, vertices exactly on pixel centres; landmark pixels coincide with
    # vertices, so posmap_landmarks returns the vertices themselves (any values, not just affine ones).
    rng = np.random.default_rng(1)
    size, n = 32, 17
    vv, uu = np.mgrid[0:n, 0:n]
    uv = np.column_stack([(uu.ravel() + 4) / (size - 1.0), (vv.ravel() + 10) / (size - 1.0)])
    vertices = rng.normal(size=(n * n, 3)) * 50
    kpt = rng.choice(n * n, 68, replace=False)
    model = make_model(vertices, grid_topology(n), kpt, uv)
    layout_kpt = np.rint(uvmod.uv_pixels(uv[kpt], size)).astype(np.int64).T
    pm = uvmod.UVRenderer(model, size).posmap(vertices)
    np.testing.assert_allclose(uvmod.posmap_landmarks(pm, layout_kpt), vertices[kpt].astype(np.float32), rtol=1e-6)
    covered = np.zeros((size, size), dtype=bool)
    covered[size - 1 - 10 - (n - 1):size - 1 - 10 + 1, 4:4 + n] = True
    assert np.all(pm[~covered] == 0) and np.all(np.abs(pm[covered]).sum(-1) > 0)
    batch = np.stack([pm, 2 * pm])
    assert uvmod.posmap_landmarks(batch, layout_kpt).shape == (2, 68, 3)
    np.testing.assert_allclose(uvmod.posmap_landmarks(batch, layout_kpt)[1], 2 * vertices[kpt], rtol=1e-5)


def test_posmap_vertices_row_major_order():
    rng = np.random.default_rng(2)
    pm = rng.normal(size=(8, 8, 3)).astype(np.float32)
    mask = rng.uniform(size=(8, 8)) > 0.5
    out = uvmod.posmap_vertices(pm, mask)
    np.testing.assert_array_equal(out, pm.reshape(-1, 3)[np.flatnonzero(mask)])
    assert uvmod.posmap_vertices(np.stack([pm, pm]), mask).shape == (2, mask.sum(), 3)


def test_layout_invariants_on_toy_face(toy_face):
    size = 128
    layout = uvmod.build_uv_layout(toy_face, size=size)
    assert layout.size == size
    assert layout.kpt_ind.shape == (2, 68) and layout.kpt_ind.dtype == np.int64
    expected = np.rint(uvmod.uv_pixels(toy_face.uv[toy_face.kpt_ind], size)).T
    np.testing.assert_array_equal(layout.kpt_ind, expected)
    face, weight = layout.face_mask, layout.weight_mask
    assert face.shape == (size, size) and face.dtype == bool
    assert weight.shape == (size, size) and weight.dtype == np.float32
    assert set(np.unique(weight)) <= {0.0, 3.0, 4.0, 16.0}
    kmask = np.zeros((size, size), dtype=bool)
    kmask[layout.kpt_ind[1], layout.kpt_ind[0]] = True
    assert np.array_equal(weight == 16, kmask)
    assert np.array_equal(weight > 0, face | kmask)
    assert face[layout.kpt_ind[1], layout.kpt_ind[0]].all()  # all 68 landmarks lie in the face
    # eyes / nose / mouth get 4 around their landmarks, cheeks and forehead 3, the neck rows below the chin 0
    for k in (30, 39, 42, 51, 57):  # nose tip, inner eye corners, lips
        x, y = layout.kpt_ind[:, k]
        assert weight[y, x + 1] == 4 or weight[y + 1, x] == 4
    x8, y8 = layout.kpt_ind[:, 8]
    assert weight[y8 - 3, x8] == 3 and weight[min(y8 + 12, size - 1), x8] == 0
    assert not face[0].any() and not face[:, 0].any() and not face[:, -1].any()


def test_layout_rejects_bad_model(toy_face):
    bad = make_model(toy_face.mean, toy_face.triangles, toy_face.kpt_ind[:10], toy_face.uv)
    with pytest.raises(FaceUtilError, match="68"):
        uvmod.build_uv_layout(bad)
    bad_uv = make_model(toy_face.mean, toy_face.triangles, toy_face.kpt_ind, toy_face.uv[:-1])
    with pytest.raises(FaceUtilError, match="UV"):
        uvmod.UVRenderer(bad_uv)


# --- the real BFM against PRNet's published uv-data ------------------------------------------------------------


@pytest.fixture(scope="module")
def real_bfm(shared_data):
    """Mean, topology, landmarks and UV of the real BFM from ../shared/data/bfm_small (bases are not available)."""
    import scipy.io as sio

    d = shared_data / "bfm_small"
    mean = (np.load(d / "3ddfa" / "u_shp.npy") + np.load(d / "3ddfa" / "u_exp.npy")).reshape(-1, 3)
    tri = sio.loadmat(d / "3ddfa" / "tri.mat")["tri"].T.astype(np.int32) - 1
    kpt = np.load(d / "3ddfa" / "keypoints_sim.npy")[0::3] // 3
    uv = sio.loadmat(d / "3ddfa_v2" / "BFM_UV.mat")["UV"]
    return make_model(mean, tri, kpt, uv)


@pytest.fixture(scope="module")
def real_layout(real_bfm):
    return uvmod.build_uv_layout(real_bfm, 256)


# PRNet's uv_weight_mask.png has 9 grey levels. 0, 48, 64 and 255 are 16 x the weights 0, 3, 4 and 16 (PRNet-PyTorch
# reads grey / 16 with 255 -> 256). The rest are artefacts of how the image was drawn: 53 and 58 blend 3 and 4 on
# the border of the eyes/nose/mouth region (-> nearest), 117 marks pixels beside jaw keypoints inside the
# weight-3 area and 122, 128 pixels beside keypoints inside the weight-4 area (-> the weight of their area).
PRNET_GREY_TO_WEIGHT = {0: 0, 48: 3, 53: 3, 58: 4, 64: 4, 117: 3, 122: 4, 128: 4, 255: 16}


@pytest.fixture(scope="module")
def prnet_uv(shared_data):
    from PIL import Image

    d = shared_data / "uv_data"
    grey = np.asarray(Image.open(d / "uv_weight_mask.png"))
    assert set(np.unique(grey)) <= set(PRNET_GREY_TO_WEIGHT)
    lut = np.zeros(256)
    for g, w in PRNET_GREY_TO_WEIGHT.items():
        lut[g] = w
    face = np.asarray(Image.open(d / "uv_face_mask.png")) > 0
    # PRNet's own weight image is 3 outside the face too; its training code multiplies it by the face mask
    return {"kpt": np.loadtxt(d / "uv_kpt_ind.txt"), "face": face, "weight": lut[grey] * face}


def test_bfm_kpt_ind_matches_prnet(real_layout, prnet_uv):
    dev = np.abs(real_layout.kpt_ind - prnet_uv["kpt"])
    print(f"uv_kpt_ind: max deviation {dev.max():.0f} px, {np.all(dev == 0, axis=0).sum()}/68 exact")
    assert dev.max() <= 1


def test_bfm_face_mask_matches_prnet(real_layout, prnet_uv):
    ours, ref = real_layout.face_mask, prnet_uv["face"]
    iou = (ours & ref).sum() / (ours | ref).sum()
    print(f"face mask: IoU {iou:.4f}, ours {ours.sum()} px, PRNet {ref.sum()} px")
    # Measured 0.976; the misses are PRNet's hand-drawn earlobe notches and chin tip. A mask that kept the neck
    # (every covered pixel) would score 0.67 and one without the 5-px frame 0.94, so 0.95 separates right from wrong.
    assert iou > 0.95


def test_bfm_weight_mask_matches_prnet(real_layout, prnet_uv):
    ref = prnet_uv["weight"]
    ours = real_layout.weight_mask
    lines = []
    for level in (0, 3, 4, 16):
        r, o = ref == level, ours == level
        recall, iou = (r & o).sum() / r.sum(), (r & o).sum() / (r | o).sum()
        lines.append(f"{level:g}: PRNet {r.sum()} px, ours {o.sum()} px, recall {recall:.3f}, IoU {iou:.3f}")
        assert recall > (0.999 if level == 16 else 0.95)
    agreement = (ref == ours).mean()
    print("weight mask: " + "; ".join(lines) + f"; pixel agreement {agreement:.4f}")
    assert agreement > 0.95


def test_bfm_posmap_affine_and_landmarks(real_bfm, real_layout):
    renderer = uvmod.UVRenderer(real_bfm, 256)
    assert renderer.covered.mean() > 0.98
    # affine function of the UV pixel position, in crop-pixel-like magnitudes
    amat = np.array([[0.8, 0.1, 20.0], [-0.1, 0.9, 15.0], [0.05, 0.02, 3.0]])
    pix = uvmod.uv_pixels(real_bfm.uv, 256)
    values = np.column_stack([pix, np.ones(len(pix))]) @ amat.T
    pm = renderer.posmap(values)
    ys, xs = np.mgrid[0:256, 0:256]
    expected = np.stack([xs, ys, np.ones_like(xs)], -1) @ amat.T
    np.testing.assert_allclose(pm[renderer.covered], expected[renderer.covered], atol=2e-3)
    assert np.all(pm[~renderer.covered] == 0)
    # landmarks read from the mean-shape position map: the keypoint pixel is within 0.71 px of the landmark vertex,
    # so its error is bounded by how much the map changes over one pixel around it
    mean = real_bfm.mean
    pm = renderer.posmap(mean)
    lms = uvmod.posmap_landmarks(pm, real_layout.kpt_ind)
    err = np.linalg.norm(lms - mean[real_bfm.kpt_ind], axis=1)
    for k, (x, y) in enumerate(real_layout.kpt_ind.T):
        nb = pm[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)[renderer.covered[y - 1:y + 2, x - 1:x + 2].reshape(-1)]
        assert err[k] <= np.linalg.norm(nb - pm[y, x], axis=1).max()
    print(f"posmap landmarks vs mean landmarks: max {err.max():.0f}, mean {err.mean():.0f} BFM units (um)")
    assert err.max() < 3000  # 3 mm on a ~150 mm wide face
    face = uvmod.posmap_vertices(pm, real_layout.face_mask)
    assert face.shape == (real_layout.face_mask.sum(), 3)


def test_bfm_mean_posmap_equals_face3d_pipeline(shared_data, real_bfm, real_layout):
    # SADRNet's mean_uv_posmap.npy is the BFM mean shape rendered into UV by the face3d pipeline, in units of 1e4 um.
    # Every covered face pixel must match it to float32 precision: same pixel convention, same triangle per pixel,
    # same barycentrics. (The lip gap needs the BFM's tri_mouth, absent from bfm_small; the few mismatches elsewhere
    # sit in the outermost pixels of the map, where the mesh border runs along the UV square.)
    ref = np.load(shared_data / "uv_data" / "mean_uv_posmap.npy").astype(np.float64)
    renderer = uvmod.UVRenderer(real_bfm, 256)
    pm = renderer.posmap(real_bfm.mean).astype(np.float64) * 1e-4
    check = renderer.covered & real_layout.face_mask
    assert check.sum() > 43000
    np.testing.assert_allclose(pm[check], ref[check], atol=1e-4)
    same = np.all(np.abs(pm - ref) < 1e-4, axis=-1)[renderer.covered]
    print(f"mean posmap vs face3d/SADRNet: face pixels identical, all covered pixels {same.mean():.4f} identical")
    assert same.mean() > 0.98
