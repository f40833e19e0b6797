"""Tests for faceutil.synthetic: the procedural morphable model, parameter draws, rendering and dataset writing.

Fast tests use a coarse 81 x 81 grid; the full-size (231 x 231, BFM-sized) model is checked in slow tests.
"""
import numpy as np
import pytest
import scipy.io

from faceutil.errors import FaceUtilError
from faceutil.pose import project
from faceutil.synthetic import draw_params, render_sample, synthesize_dataset
from faceutil.synthetic_model import EXP_MODE_NAMES, JAW_OPEN, build_synthetic_model

SMALL_GRID = 81
EYES = list(range(36, 48))


@pytest.fixture(scope="module")
def small():
    return build_synthetic_model(seed=0, grid=SMALL_GRID)


def _check_bfm_like_landmarks(lm, tol):
    """The mean face's 68 landmarks span what the BFM's do: x ~ [-74k, 73k], y ~ [-86k, 49k], z up to ~132k."""
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    assert -74_000 - tol < lo[0] < -74_000 + tol and 73_000 - tol < hi[0] < 73_000 + tol
    assert -86_000 - tol < lo[1] < -86_000 + tol and 49_000 - tol < hi[1] < 49_000 + tol
    assert 132_000 - tol < hi[2] < 132_000 + tol
    assert 10_000 < lo[2] < 30_000  # jaw ends on the sides of the head, like the BFM's (~18k)
    # anatomy: nose tip closest to the camera, chin lowest, brows > eyes > nose tip > mouth > chin, symmetry
    assert np.argmax(lm[:, 2]) == 30 and np.argmin(lm[:, 1]) == 8
    assert lm[17:27, 1].min() > lm[36:48, 1].max() > lm[30, 1] > lm[48:68, 1].max() > lm[8, 1]
    assert lm[36, 0] < lm[39, 0] < 0 < lm[42, 0] < lm[45, 0]  # subject's right eye on the image left
    mirror = np.r_[16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47:45:-1, 39:35:-1, 41:39:-1,
                   54:47:-1, 59:54:-1, 64:59:-1, 67:64:-1]
    np.testing.assert_allclose(lm[mirror, 0], -lm[:, 0], atol=tol / 4)
    np.testing.assert_allclose(lm[mirror, 1:], lm[:, 1:], atol=tol / 4)


def test_small_model_layout(small):
    g = SMALL_GRID
    n = g * g
    m = small
    assert m.mean.shape == (n, 3) and m.mean.dtype == np.float32
    assert m.triangles.shape == (2 * (g - 1) ** 2, 3) and m.triangles.dtype == np.int32
    assert m.triangles.min() == 0 and m.triangles.max() == n - 1
    assert m.shape_pc.shape == (3 * n, 199) and m.shape_pc.dtype == np.float32 and m.shape_ev.shape == (199,)
    assert m.exp_pc.shape == (3 * n, 29) and m.exp_ev.shape == (29,) and len(EXP_MODE_NAMES) <= 29
    assert m.tex_mu.shape == (3 * n,) and 0 <= m.tex_mu.min() and m.tex_mu.max() <= 255
    assert m.tex_pc.shape[0] == 3 * n and m.tex_pc.shape[1] == m.tex_ev.shape[0] <= 199
    assert m.kpt_ind.shape == (68,) and m.kpt_ind.dtype == np.int64 and len(set(m.kpt_ind.tolist())) == 68
    assert m.uv.shape == (n, 2) and m.uv.dtype == np.float64 and m.uv.min() >= 0 and m.uv.max() <= 1
    # uv is the grid: u right (with +x), v up (with +y), one 256-map pixel per grid step, every vertex on a pixel
    # centre; the face sits in the middle of the UV square
    np.testing.assert_allclose(m.uv[1] - m.uv[0], [1 / 255, 0])
    np.testing.assert_allclose(m.uv[g] - m.uv[0], [0, 1 / 255])
    np.testing.assert_allclose(m.uv * 255, np.rint(m.uv * 255), atol=1e-9)
    assert abs(m.uv[m.kpt_ind[30], 0] - 0.5) < 0.01 and 0.35 < m.uv[m.kpt_ind[30], 1] < 0.65
    kuv = m.uv[m.kpt_ind]
    assert 0.05 < kuv[:, 0].min() and kuv[:, 0].max() < 0.95 and 0.1 < kuv[:, 1].min() and kuv[:, 1].max() < 0.9
    # winding like the BFM (tri.mat): cross(v1 - v0, v2 - v0) points into the head on the face front
    v = m.mean.astype(np.float64)
    t = m.triangles
    normals = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    front = v[t].mean(axis=1)[:, 2] > 100_000
    assert (normals[front, 2] < 0).mean() > 0.95
    # mouth triangles: a few, all real triangles of the mesh, lying between the lips
    assert 4 <= len(m.mouth_triangles) < 500 and m.mouth_triangles.dtype == np.int32
    assert {tuple(r) for r in m.mouth_triangles.tolist()} <= {tuple(r) for r in m.triangles.tolist()}
    centres = v[m.mouth_triangles].mean(axis=1)
    lm = m.landmarks()
    assert np.all(centres[:, 1] < lm[51, 1]) and np.all(centres[:, 1] > lm[57, 1])
    assert np.all(np.abs(centres[:, 0]) < abs(lm[48, 0]))


def test_small_model_landmarks_are_bfm_like(small):
    _check_bfm_like_landmarks(small.landmarks().astype(np.float64), tol=4_000)
    np.testing.assert_array_equal(small.landmarks(), small.mean[small.kpt_ind])


def test_build_is_deterministic_and_seeded():
    a = build_synthetic_model(seed=3, grid=41)
    b = build_synthetic_model(seed=3, grid=41)
    c = build_synthetic_model(seed=4, grid=41)
    for field in ("mean", "shape_pc", "shape_ev", "exp_pc", "exp_ev", "tex_mu", "tex_pc", "tex_ev", "triangles",
                  "mouth_triangles", "kpt_ind", "uv"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert not np.array_equal(a.shape_pc, c.shape_pc) and not np.array_equal(a.exp_pc, c.exp_pc)
    np.testing.assert_array_equal(a.kpt_ind, c.kpt_ind)  # the seed varies the bases, not the anatomy


def test_bases_orthonormal_and_ordered(small):
    pc = small.shape_pc.astype(np.float64)
    np.testing.assert_allclose(pc.T @ pc, np.eye(pc.shape[1]), atol=2e-5)
    ev = small.shape_ev
    assert np.all(ev > 0) and np.all(np.diff(ev) < 0)
    # Shape_Para ~ N(0, ev): entries of order 1e5 like 300W-LP at the BFM-like grid (ev scales with grid / 231)
    np.testing.assert_allclose(ev[:3] * 231 / SMALL_GRID, [4e5, 2e5, 4e5 / 3], rtol=1e-5)
    tex = small.tex_pc.astype(np.float64)
    np.testing.assert_allclose(tex.T @ tex, np.eye(tex.shape[1]), atol=2e-5)
    assert np.all(small.exp_ev > 0) and 1.0 <= small.exp_ev[0] <= 2.0 and small.exp_ev.min() >= 0.2


def test_shape_draws_are_plausible_faces(small):
    rng = np.random.default_rng(0)
    base = small.landmarks().astype(np.float64)
    for _ in range(5):
        para = rng.standard_normal(small.n_shape) * small.shape_ev
        lm = small.landmarks(para).astype(np.float64)
        move = np.linalg.norm(lm - base, axis=1)
        assert 500 < np.sqrt((move ** 2).mean()) < 8_000  # visible but not monstrous (mm, not cm)
        assert lm[17:27, 1].min() > lm[36:48, 1].max() > lm[30, 1] > lm[48:68, 1].max() > lm[8, 1]
        assert np.argmax(lm[:, 2]) == 30
    # a draw at 3 standard deviations of the first components still keeps the face's layout
    lm = small.landmarks(3 * small.shape_ev[:10]).astype(np.float64)
    assert lm[36:48, 1].min() > lm[30, 1] > lm[48:68, 1].max() > lm[8, 1]


def test_jaw_open_moves_chin_and_lower_lip_down_not_eyes(small):
    assert EXP_MODE_NAMES[JAW_OPEN] == "jaw_open"
    exp = np.zeros(small.n_exp)
    exp[JAW_OPEN] = 3.0
    d = small.landmarks(exp_para=exp).astype(np.float64) - small.landmarks().astype(np.float64)
    assert d[8, 1] < -5_000 and d[57, 1] < -5_000 and d[66, 1] < -5_000  # chin, lower lips: > 5 mm down
    assert np.abs(d[EYES]).max() < 100 and np.abs(d[17:31]).max() < 100  # eyes, brows, nose ridge stay
    assert abs(d[51, 1]) < 0.25 * abs(d[57, 1])  # the upper lip stays (nearly)
    assert d[57, 1] - d[51, 1] < -5_000  # the mouth opens


def test_eye_close_lowers_upper_lids(small):
    exp = np.zeros(small.n_exp)
    exp[EXP_MODE_NAMES.index("eye_close")] = 2.0
    d = small.landmarks(exp_para=exp).astype(np.float64) - small.landmarks().astype(np.float64)
    upper, lower = [37, 38, 43, 44], [40, 41, 46, 47]
    assert np.all(d[upper, 1] < -2_000) and np.all(np.abs(d[lower, 1]) < 0.5 * np.abs(d[upper, 1]).min())
    assert np.abs(d[48:68]).max() < 50 and abs(d[8, 1]) < 50


@pytest.mark.parametrize("kind", ["300W_LP", "AFLW2000"])
def test_draw_params_ranges_and_landmarks_inside(small, kind):
    rng = np.random.default_rng(11)
    yaws = []
    for _ in range(40):
        pose, shape, exp = draw_params(rng, small, kind, image_size=450)
        assert pose.shape == (7,) and shape.shape == (199,) and exp.shape == (29,)
        pitch, yaw, roll = np.degrees(pose[:3])
        assert abs(pitch) <= 30 and abs(yaw) <= 90 and abs(roll) <= 30
        assert 1.0e-3 <= pose[6] <= 1.6e-3 and -100 <= pose[5] <= -20
        # genuine files (|yaw| <= 72 deg): tx 106 .. 334, ty 120 .. 265; yaw 90 and scale 1.6e-3 reach further
        assert 30 < pose[3] < 420 and 100 < pose[4] < 300
        assert np.abs(exp).max() <= 3.5 and exp[JAW_OPEN] >= 0
        lm = project(small.landmarks(shape, exp), pose, 450)
        assert lm[:, :2].min() >= 7 and lm[:, :2].max() <= 443
        yaws.append(abs(yaw))
    assert max(yaws) > 45  # large poses are drawn


def test_aflw2000_yaw_bins_follow_the_benchmark(small):
    rng = np.random.default_rng(5)
    yaw = np.array([abs(np.degrees(draw_params(rng, small, "AFLW2000")[0][1])) for _ in range(400)])
    frac = [(yaw <= 30).mean(), ((yaw > 30) & (yaw <= 60)).mean(), (yaw > 60).mean()]
    np.testing.assert_allclose(frac, [0.656, 0.1915, 0.1525], atol=0.07)


def test_render_sample(small):
    rng = np.random.default_rng(2)
    pose = np.array([0.0, np.radians(20.0), 0.0, 0.0, 0.0, -50.0, 1.3e-3])
    centre = project(small.landmarks(), pose, 450)[:, :2].mean(axis=0)
    pose[3], pose[4] = 225 - centre[0], centre[1] - 225
    image, lm = render_sample(small, pose, None, None, rng, image_size=450)
    assert image.shape == (450, 450, 3) and image.dtype == np.uint8
    assert lm.shape == (68, 3)
    np.testing.assert_allclose(lm, project(small.landmarks(), pose, 450), atol=1e-4)
    # skin at the nose and cheeks (reddish, brighter than the hair), a dark pupil, background elsewhere
    x, y = np.rint(lm[30, :2]).astype(int)
    assert image[y, x, 0] >= image[y, x, 2]
    again, _ = render_sample(small, pose, None, None, np.random.default_rng(2), image_size=450)
    np.testing.assert_array_equal(image, again)
    other, _ = render_sample(small, pose, None, None, np.random.default_rng(3), image_size=450)
    assert not np.array_equal(image, other)


def test_synthesize_dataset_format_and_determinism(small, tmp_path):
    names = synthesize_dataset(tmp_path / "lp", "300W_LP", 2, seed=9, model=small)
    assert names == ["synth_000001", "synth_000002"]
    for name in names:
        m = scipy.io.loadmat(tmp_path / "lp" / f"{name}.mat")
        assert m["Pose_Para"].shape == (1, 7) and m["Shape_Para"].shape == (199, 1)
        assert m["Exp_Para"].shape == (29, 1) and m["pt2d"].shape == (2, 68) and m["roi"].shape == (1, 4)
        assert "pt3d_68" not in m
        pose, shape, exp = m["Pose_Para"][0], m["Shape_Para"][:, 0], m["Exp_Para"][:, 0]
        expected = project(small.landmarks(shape, exp), pose, 450)[:, :2]
        np.testing.assert_allclose(m["pt2d"].T, expected, atol=1e-3)
        x1, y1, x2, y2 = m["roi"][0]
        assert x1 < expected[:, 0].min() and expected[:, 0].max() < x2
        assert y1 < expected[:, 1].min() and expected[:, 1].max() < y2
        img = (tmp_path / "lp" / f"{name}.jpg").read_bytes()
        assert img[:3] == b"\xff\xd8\xff"
    # same seed -> byte-identical files (no creation time in the .mat header); each sample depends on (seed, index)
    assert b"Created on" not in (tmp_path / "lp" / f"{names[0]}.mat").read_bytes()[:128]
    again = synthesize_dataset(tmp_path / "again", "300W_LP", 1, seed=9, model=small)
    for suffix in (".jpg", ".mat"):
        assert (tmp_path / "again" / f"{again[0]}{suffix}").read_bytes() == \
            (tmp_path / "lp" / f"{names[0]}{suffix}").read_bytes()
    other = synthesize_dataset(tmp_path / "other", "300W_LP", 1, seed=10, model=small)
    assert (tmp_path / "other" / f"{other[0]}.mat").read_bytes() != (tmp_path / "lp" / f"{names[0]}.mat").read_bytes()
    assert not list((tmp_path / "lp").glob(".*.tmp"))


def test_synthesize_aflw2000_has_pt3d(small, tmp_path):
    from faceutil.sampleio import read_image, read_sample_mat

    (name,) = synthesize_dataset(tmp_path, "AFLW2000", 1, seed=1, model=small)
    m = scipy.io.loadmat(tmp_path / f"{name}.mat")
    assert m["pt3d_68"].shape == (3, 68) and "pt2d" not in m
    sample = read_sample_mat(tmp_path / f"{name}.mat")
    expected = project(small.landmarks(sample.shape_para, sample.exp_para), sample.pose_para, 450)
    np.testing.assert_allclose(sample.pt3d_68, expected, atol=1e-3)
    assert read_image(tmp_path / f"{name}.jpg").shape == (450, 450, 3)


def test_bad_arguments_raise(small, tmp_path):
    with pytest.raises(FaceUtilError, match="kind"):
        synthesize_dataset(tmp_path, "LFPW", 1, seed=0, model=small)
    with pytest.raises(FaceUtilError, match="kind"):
        draw_params(np.random.default_rng(0), small, "300WLP")
    with pytest.raises(FaceUtilError):
        synthesize_dataset(tmp_path, "300W_LP", -1, seed=0, model=small)


@pytest.mark.slow
def test_full_size_model_is_bfm_sized_and_bfm_like():
    m = build_synthetic_model(seed=0)
    assert m.n_vertices == 231 * 231 and len(m.triangles) == 2 * 230 * 230  # BFM: 53,215 / 105,840
    assert 50_000 < m.n_vertices < 56_000 and 100_000 < len(m.triangles) < 110_000
    assert m.shape_pc.shape == (3 * m.n_vertices, 199) and m.shape_pc.dtype == np.float32
    _check_bfm_like_landmarks(m.landmarks().astype(np.float64), tol=3_000)
    lm = m.landmarks().astype(np.float64)
    width = lm[:, 0].max() - lm[:, 0].min()
    assert 140_000 < width < 160_000
    pc = m.shape_pc[:, :20].astype(np.float64)
    np.testing.assert_allclose(pc.T @ pc, np.eye(20), atol=2e-5)
    exp = np.zeros(m.n_exp)
    exp[JAW_OPEN] = 3.0
    d = m.landmarks(exp_para=exp).astype(np.float64) - lm
    assert d[8, 1] < -5_000 and d[57, 1] < -5_000 and np.abs(d[EYES]).max() < 100


def test_mean_landmarks_close_to_genuine_bfm_mean(small, shared_data):
    """Our mean face's 68 landmarks lie within a few mm of the real BFM mean's (no alignment: same units/axes)."""
    d = shared_data / "bfm_small" / "3ddfa"
    mean = (np.load(d / "u_shp.npy") + np.load(d / "u_exp.npy")).reshape(-1, 3)
    bfm = mean[np.load(d / "keypoints_sim.npy")[0::3] // 3].astype(np.float64)
    dist = np.linalg.norm(small.landmarks().astype(np.float64) - bfm, axis=1)
    assert dist.mean() < 5_000 and dist.max() < 15_000


def test_drawn_params_resemble_genuine_annotations(small, shared_data):
    """Scale, landmark-box placement and coefficient magnitudes match the genuine AFLW2000-3D / 300W-LP files."""
    files = sorted((shared_data / "aflw2000_samples").glob("*.mat")) + \
        sorted((shared_data / "300wlp_samples").glob("*.mat"))
    centres, scales, shapes, exps = [], [], [], []
    for f in files:
        m = scipy.io.loadmat(f)
        pts = m["pt3d_68"][:2].T if "pt3d_68" in m else m["pt2d"].T
        centres.append((pts.min(axis=0) + pts.max(axis=0)) / 2)
        scales.append(m["Pose_Para"][0, 6])
        shapes.append(m["Shape_Para"][:10, 0])
        exps.append(m["Exp_Para"][:10, 0])
    rng = np.random.default_rng(0)
    ours = [draw_params(rng, small, "AFLW2000") for _ in range(100)]
    our_centres = [(lambda p: (p.min(axis=0) + p.max(axis=0)) / 2)(project(small.landmarks(s, e), pose, 450)[:, :2])
                   for pose, s, e in ours]
    np.testing.assert_allclose(np.mean(our_centres, axis=0), np.mean(centres, axis=0), atol=15)
    our_scales = np.array([p[6] for p, _, _ in ours])
    assert min(scales) - 1e-4 < our_scales.min() and our_scales.max() < max(scales) + 1e-4
    # coefficient magnitudes within a factor 3 of the genuine fits (our Shape_Para scaled back to grid 231)
    our_shape = np.abs([s[:10] for _, s, _ in ours]).mean() * 231 / SMALL_GRID
    our_exp = np.abs([e[:10] for _, _, e in ours]).mean()
    assert 1 / 3 < our_shape / np.abs(shapes).mean() < 3
    assert 1 / 3 < our_exp / np.abs(exps).mean() < 3
