"""faceutil.pose: 3DDFA rotation convention, its inverse, projection to image pixels, and similarity fitting.

The image-row convention (y = H + 1 - world_y) is checked against the 31 genuine AFLW2000-3D samples.
"""
from math import pi

import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from faceutil.pose import angle2matrix, estimate_similarity, matrix2angle, project

# ------------------------------------------------------------------------------------------------ angle2matrix


def _textbook(axis: str, a: float) -> np.ndarray:
    """Right-handed rotation by angle a about one axis (the usual counter-clockwise matrix)."""
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_angle2matrix_matches_independent_constructions():
    rng = np.random.default_rng(1)
    for p, y, r in rng.uniform(-pi, pi, size=(20, 3)):
        R = angle2matrix(p, y, r)
        # 3DDFA's factors are the transposed (clockwise) textbook rotations, multiplied x, y, z.
        expected = _textbook("x", -p) @ _textbook("y", -y) @ _textbook("z", -r)
        np.testing.assert_allclose(R, expected, atol=1e-12)
        # scipy: intrinsic "XYZ" is Rx(a) Ry(b) Rz(c) of textbook rotations.
        np.testing.assert_allclose(R, Rotation.from_euler("XYZ", [-p, -y, -r]).as_matrix(), atol=1e-12)


def test_angle2matrix_hand_values():
    np.testing.assert_allclose(angle2matrix(0, 0, 0), np.eye(3), atol=1e-15)
    # yaw +90 deg maps the model's +x axis onto +z (towards the camera), as face3d's Ry_3ddfa does.
    np.testing.assert_allclose(angle2matrix(0, pi / 2, 0) @ [1, 0, 0], [0, 0, 1], atol=1e-15)
    # pitch +90 deg maps +y onto -z; roll +90 deg maps +x onto -y.
    np.testing.assert_allclose(angle2matrix(pi / 2, 0, 0) @ [0, 1, 0], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(angle2matrix(0, 0, pi / 2) @ [1, 0, 0], [0, -1, 0], atol=1e-15)


def test_angle2matrix_is_a_rotation_and_vectorised():
    rng = np.random.default_rng(2)
    angles = rng.uniform(-pi, pi, size=(50, 3))
    R = angle2matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    assert R.shape == (50, 3, 3) and R.dtype == np.float64
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    for i in range(50):
        np.testing.assert_array_equal(R[i], angle2matrix(*angles[i]))


# ------------------------------------------------------------------------------------------------ matrix2angle


def test_matrix2angle_inverts_angle2matrix():
    rng = np.random.default_rng(3)
    n = 500
    angles = np.stack([rng.uniform(-pi, pi, n), rng.uniform(-pi / 2 + 1e-3, pi / 2 - 1e-3, n),
                       rng.uniform(-pi, pi, n)], axis=1)
    p, y, r = matrix2angle(angle2matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    np.testing.assert_allclose(np.stack([p, y, r], axis=1), angles, atol=1e-9)
    one = matrix2angle(angle2matrix(0.3, -0.4, 0.5))
    assert isinstance(one[0], float)
    np.testing.assert_allclose(one, (0.3, -0.4, 0.5), atol=1e-12)


@pytest.mark.parametrize("yaw", [pi / 2, -pi / 2])
def test_matrix2angle_gimbal_lock(yaw):
    R = angle2matrix(0.7, yaw, -0.2)
    p, y, r = matrix2angle(R)
    assert y == pytest.approx(yaw, abs=1e-7)
    assert r == 0.0
    np.testing.assert_allclose(angle2matrix(p, y, r), R, atol=1e-7)


def test_matrix2angle_of_random_rotations_reproduces_them():
    R = Rotation.random(200, random_state=4).as_matrix()
    np.testing.assert_allclose(angle2matrix(*matrix2angle(R)), R, atol=1e-10)


# ------------------------------------------------------------------------------------------------ project


def test_project_hand_example():
    v = np.array([[1000.0, 2000.0, 3000.0], [0.0, 0.0, 0.0]])
    # yaw 90 deg: (x, y, z) -> (-z, y, x); then s = 0.01, t = (100, 50, -5); H = 450.
    pose = np.array([0.0, pi / 2, 0.0, 100.0, 50.0, -5.0, 0.01])
    out = project(v, pose, 450)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out[0], [100 - 30, 451 - (50 + 20), -5 + 10], atol=1e-4)
    np.testing.assert_allclose(out[1], [100, 451 - 50, -5], atol=1e-4)


def test_project_batched_matches_single():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(4, 30, 3)) * 5e4
    poses = np.concatenate([rng.uniform(-1, 1, (4, 3)), rng.uniform(100, 300, (4, 3)),
                            rng.uniform(1e-3, 2e-3, (4, 1))], axis=1)
    batched = project(v, poses, 450)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], project(v[i], poses[i], 450))


# ------------------------------------------------------------------------------------------------ estimate_similarity


def test_estimate_similarity_recovers_known_transform():
    rng = np.random.default_rng(6)
    src = rng.normal(size=(68, 3)) * 5e4
    R = Rotation.random(random_state=7).as_matrix()
    s, t = 1.3e-3, np.array([200.0, 180.0, -40.0])
    dst = s * src @ R.T + t
    s_hat, R_hat, t_hat = estimate_similarity(src, dst)
    assert s_hat == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-8)
    # with noise the fit stays close and is a least-squares optimum (no better rotation nearby)
    noisy = dst + rng.normal(scale=0.5, size=dst.shape)
    s2, R2, t2 = estimate_similarity(src, noisy)
    assert abs(s2 / s - 1) < 1e-2 and np.abs(R2 - R).max() < 1e-2
    err = np.sum((s2 * src @ R2.T + t2 - noisy) ** 2)
    for k in range(5):
        dR = Rotation.from_rotvec(rng.normal(scale=1e-3, size=3)).as_matrix()
        assert err <= np.sum((s2 * src @ (dR @ R2).T + t2 - noisy) ** 2)


def test_estimate_similarity_returns_proper_rotation_for_mirrored_points():
    rng = np.random.default_rng(8)
    src = rng.normal(size=(40, 3))
    dst = src * np.array([-1.0, 1.0, 1.0])  # a reflection: no rotation maps src onto dst
    s, R, t = estimate_similarity(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert s > 0


def test_estimate_similarity_batched():
    rng = np.random.default_rng(9)
    src = rng.normal(size=(3, 20, 3))
    R = Rotation.random(3, random_state=10).as_matrix()
    dst = 2.0 * np.einsum("bij,bnj->bni", R, src) + 1.0
    s, R_hat, t = estimate_similarity(src, dst)
    np.testing.assert_allclose(s, 2.0)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t, np.ones((3, 3)), atol=1e-10)


# ------------------------------------------------------------------------------------------------ genuine AFLW2000-3D


def _aflw_landmarks(shared_data):
    """(model 68-point landmarks, pose, gt pt3d_68 (68,3)) for the 31 genuine samples, with 3DDFA's 68-point basis."""
    base = shared_data / "bfm_small" / "3ddfa" / "cpp_weights"
    u = np.loadtxt(base / "u_base.txt")  # (204,) = u_shp + u_exp at the landmarks, xyz-interleaved
    w_shp = np.loadtxt(base / "w_shp_base.txt")  # (204, 40)
    w_exp = np.loadtxt(base / "w_exp_base.txt")  # (204, 10)
    out = []
    for f in sorted((shared_data / "aflw2000_samples").glob("*.mat")):
        m = scipy.io.loadmat(f)
        shp, exp = m["Shape_Para"].ravel(), m["Exp_Para"].ravel()
        verts = (u + w_shp @ shp[:40] + w_exp @ exp[:10]).reshape(68, 3)
        out.append((verts, m["Pose_Para"].ravel().astype(np.float64), m["pt3d_68"].T.astype(np.float64)))
    assert len(out) == 31
    return out


def _nme_2d(pred, gt):
    """Mean 2D landmark error (percent) normalised by sqrt(w*h) of the gt landmark box."""
    w, h = gt[:, :2].max(0) - gt[:, :2].min(0)
    return 100 * np.linalg.norm(pred[:, :2] - gt[:, :2], axis=1).mean() / np.sqrt(w * h)


def test_projection_convention_on_genuine_aflw2000(shared_data):
    """Measured: H + 1 - y gives NME 0.777 %, offset (-0.047, -0.037) px, z offset -0.05 px;
    H - y gives 0.98 % and H - y - 1 (face3d/PRNet) 1.38 %, 1 and 2 px too low in y."""
    nme, off, z_off, nme_face3d = [], [], [], []
    for verts, pose, gt in _aflw_landmarks(shared_data):
        pred = project(verts, pose, 450).astype(np.float64)
        nme.append(_nme_2d(pred, gt))
        off.append((pred - gt).mean(0))
        z_off.append((pred[:, 2] - gt[:, 2]).mean())
        face3d = pred.copy()
        face3d[:, 1] -= 2  # H - y - 1 instead of H + 1 - y
        nme_face3d.append(_nme_2d(face3d, gt))
    off = np.array(off)
    assert np.mean(nme) < 0.85  # 0.777 measured; H - y (0.98) and H - y - 1 (1.38) fail this
    assert np.max(nme) < 2.0  # 1.60 measured (a 3DDFA 40+10 PC truncation residual)
    assert np.all(np.abs(off[:, :2].mean(0)) < 0.25)  # (-0.047, -0.037) px
    assert abs(np.mean(z_off)) < 0.25  # z_img = world z, no offset (-0.05 px)
    assert np.mean(nme_face3d) > 1.2  # 1.38: the competing convention is measurably worse
