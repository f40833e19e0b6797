"""Tests for faceutil.metrics: NME against hand-computed values, yaw bins (AFLW2000-3D counts), dense NME."""
import numpy as np
import pytest

from faceutil.metrics import YAW_BINS, dense_nme, nme, nme_by_yaw


def _gt(rng, n, w=120.0, h=160.0, d=3):
    """n landmark sets whose 2D box is exactly w x h (two points pin the corners)."""
    gt = rng.uniform(0, 1, (n, 68, d)) * ([w, h, 90.0][:d]) + ([50.0, 80.0, 10.0][:d])
    gt[:, 0, :2] = [50.0, 80.0]
    gt[:, 1, :2] = [50.0 + w, 80.0 + h]
    return gt


def test_constant_one_pixel_offset_2d():
    gt = _gt(np.random.default_rng(0), 4, d=2)
    pred = gt + [1.0, 0.0]
    np.testing.assert_allclose(nme(pred, gt), 100.0 / np.sqrt(120.0 * 160.0))
    pred = gt + [3.0, 4.0]  # 5 px
    np.testing.assert_allclose(nme(pred, gt), 500.0 / np.sqrt(120.0 * 160.0))


def test_hand_computed_mixed_errors():
    gt = np.zeros((1, 68, 2))
    gt[0, :, 0] = np.linspace(0, 100, 68)
    gt[0, :, 1] = np.linspace(0, 25, 68)  # box 100 x 25 -> normaliser 50
    pred = gt.copy()
    pred[0, 0] += [6.0, 8.0]  # one point 10 px off, the rest exact
    np.testing.assert_allclose(nme(pred, gt), [100.0 * (10.0 / 68) / 50.0])
    np.testing.assert_allclose(nme(pred[0], gt[0]), [100.0 * (10.0 / 68) / 50.0])  # a single (68, 2) works too


def test_3d_z_is_centred_and_counts_otherwise():
    rng = np.random.default_rng(1)
    gt = _gt(rng, 3)
    np.testing.assert_allclose(nme(gt + [0.0, 0.0, 37.5], gt), 0.0, atol=1e-12)  # constant z offset: no error
    np.testing.assert_allclose(nme(gt + [1.0, 0.0, 1234.0], gt), 100.0 / np.sqrt(120.0 * 160.0))
    # a z error that is not a constant does count: half the points +2, half -2 (mean 0) -> 2 px each
    pred = gt.copy()
    pred[:, :34, 2] += 2.0
    pred[:, 34:, 2] -= 2.0
    np.testing.assert_allclose(nme(pred, gt), 200.0 / np.sqrt(120.0 * 160.0))
    # normaliser comes from gt's 2D box only (its z extent is irrelevant)
    gt2 = gt.copy()
    gt2[..., 2] *= 10
    np.testing.assert_allclose(nme(gt2 + [1.0, 0, 0], gt2), 100.0 / np.sqrt(120.0 * 160.0))


def test_nme_shape_mismatch_and_degenerate_box():
    gt = _gt(np.random.default_rng(2), 2)
    with pytest.raises(ValueError):
        nme(gt[..., :2], gt)
    flat = np.zeros((1, 68, 2))
    flat[0, :, 0] = np.arange(68)
    assert np.isnan(nme(flat + 1, flat)[0])


def test_nme_by_yaw_hand_computed():
    e = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    yaw = np.array([-30.0, 10.0, 30.0001, -60.0, 61.0, -350.0])  # |-350| > 60: not wrapped to 10
    r = nme_by_yaw(e, yaw)
    assert r["counts"] == {"|yaw|<=30": 2, "30<|yaw|<=60": 2, "|yaw|>60": 2}
    assert r["|yaw|<=30"] == pytest.approx(1.5)
    assert r["30<|yaw|<=60"] == pytest.approx(3.5)
    assert r["|yaw|>60"] == pytest.approx(5.5)
    assert r["mean_of_bins"] == pytest.approx((1.5 + 3.5 + 5.5) / 3)
    assert r["mean"] == pytest.approx(3.5)
    assert tuple(k for k in r if k in YAW_BINS) == YAW_BINS


def test_nme_by_yaw_empty_bin():
    r = nme_by_yaw(np.array([2.0, 4.0]), np.array([5.0, 80.0]))
    assert r["counts"]["30<|yaw|<=60"] == 0 and np.isnan(r["30<|yaw|<=60"])
    assert r["mean_of_bins"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        nme_by_yaw(np.ones(3), np.ones(2))


def test_aflw2000_yaw_bin_counts(shared_data):
    yaw = np.load(shared_data / "aflw2000_gt" / "AFLW2000-3D.pose.npy")
    r = nme_by_yaw(np.ones(yaw.shape[0]), yaw)
    assert r["counts"] == {"|yaw|<=30": 1312, "30<|yaw|<=60": 383, "|yaw|>60": 305}
    assert r["mean_of_bins"] == pytest.approx(1.0)


def test_genuine_pts68_self_and_offset(shared_data):
    gt = np.load(shared_data / "aflw2000_gt" / "AFLW2000-3D.pts68.npy").transpose(0, 2, 1)  # (2000, 68, 3)
    assert np.all(nme(gt, gt) == 0)
    w = gt[..., 0].max(1) - gt[..., 0].min(1)
    h = gt[..., 1].max(1) - gt[..., 1].min(1)
    np.testing.assert_allclose(nme(gt[..., :2] + [0.0, 1.0], gt[..., :2]), 100.0 / np.sqrt(w * h), rtol=1e-6)


def test_dense_nme():
    rng = np.random.default_rng(3)
    h = w = 16
    mask = np.zeros((h, w), bool)
    mask[3:13, 2:14] = True
    gt = rng.uniform(0, 1, (130, h, w, 3)).astype(np.float32) * [200.0, 50.0, 80.0]
    gt[:, 3, 2, :2] = [0.0, 0.0]  # masked box exactly 200 x 50
    gt[:, 12, 13, :2] = [200.0, 50.0]
    gt[:, 0, 0, :2] = [-1000.0, 5000.0]  # outside the mask: must not affect anything
    pred = gt + np.float32([0.0, 1.0, 25.0])
    pred[:, ~mask] = 1e6  # garbage outside the mask is ignored
    out = dense_nme(pred, gt, mask)
    assert out.shape == (130,)  # more than one block of samples
    np.testing.assert_allclose(out, 1.0, rtol=1e-5)  # 1 px / sqrt(200 * 50) = 1 %
    np.testing.assert_allclose(dense_nme(pred[0], gt[0], mask), [1.0], rtol=1e-5)
    with pytest.raises(ValueError):
        dense_nme(pred, gt, mask[:8])
