"""Tests for faceutil.crop: the crop box rule, similarity algebra, image warping and seeded jitter."""
import cv2
import numpy as np
import pytest

from faceutil.crop import Similarity, crop_similarity, landmark_box, rotation_about
from faceutil.errors import SampleError


def _landmarks(rng, cx=210.0, cy=240.0, w=150.0, h=170.0):
    pts = rng.uniform(-0.5, 0.5, (68, 3)) * [w, h, 80.0] + [cx, cy, 0.0]
    pts[0, :2] = [cx - w / 2, cy - h / 2]  # pin the box exactly
    pts[1, :2] = [cx + w / 2, cy + h / 2]
    return pts


def test_landmark_box():
    pts = np.array([[3.0, 7.0, 1.0], [10.0, -2.0, 5.0], [5.0, 4.0, -9.0]])
    assert landmark_box(pts) == (3.0, -2.0, 10.0, 7.0)


@pytest.mark.parametrize("w,h", [(150.0, 170.0), (200.0, 120.0)])
def test_crop_maps_box_centre_to_crop_centre_and_side_to_out_size(w, h):
    pts = _landmarks(np.random.default_rng(0), w=w, h=h)
    sim = crop_similarity(pts, out_size=256, enlarge=1.5)
    side = 1.5 * max(w, h)
    assert sim.scale == pytest.approx(256 / side)
    np.testing.assert_allclose(sim.apply(np.array([210.0, 240.0])), [127.5, 127.5], atol=1e-9)
    # the enlarged box's edges land on the crop's outer pixel edges (-0.5 and 255.5)
    corners = np.array([[210 - side / 2, 240 - side / 2], [210 + side / 2, 240 + side / 2]])
    np.testing.assert_allclose(sim.apply(corners), [[-0.5, -0.5], [255.5, 255.5]], atol=1e-9)
    # deterministic without rng
    np.testing.assert_array_equal(crop_similarity(pts).matrix, crop_similarity(pts).matrix)


def test_apply_inverse_compose():
    rng = np.random.default_rng(1)
    sim = crop_similarity(_landmarks(rng), out_size=256).compose(rotation_about((127.5, 127.5), 33.0))
    pts = rng.uniform(0, 450, (5, 68, 3))
    back = sim.inverse().apply(sim.apply(pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    # compose: self first, then other
    a = rotation_about((10.0, 20.0), 40.0)
    b = crop_similarity(_landmarks(rng))
    np.testing.assert_allclose(a.compose(b).apply(pts), b.apply(a.apply(pts)), atol=1e-9)
    assert sim.apply(pts[0, :, :2]).shape == (68, 2)
    np.testing.assert_allclose(sim.compose(sim.inverse()).matrix, np.eye(3), atol=1e-12)


def test_z_scales_by_scale():
    sim = crop_similarity(_landmarks(np.random.default_rng(2)))
    rot = rotation_about((5.0, 6.0), 70.0)
    both = sim.compose(rot)
    p = np.array([[100.0, 200.0, 37.0], [1.0, 2.0, -4.0]])
    np.testing.assert_allclose(sim.apply(p)[:, 2], p[:, 2] * sim.scale)
    np.testing.assert_allclose(rot.apply(p)[:, 2], p[:, 2])
    assert rot.scale == pytest.approx(1.0)
    assert both.scale == pytest.approx(sim.scale)


def test_rotation_about_fixes_centre_and_turns_counter_clockwise_on_screen():
    rot = rotation_about((50.0, 60.0), 90.0)
    np.testing.assert_allclose(rot.apply(np.array([50.0, 60.0])), [50.0, 60.0], atol=1e-12)
    # a point to the right of the centre goes up on screen (smaller row) for +90 degrees
    np.testing.assert_allclose(rot.apply(np.array([60.0, 60.0])), [50.0, 50.0], atol=1e-12)
    np.testing.assert_allclose(rot.matrix[:2], cv2.getRotationMatrix2D((50.0, 60.0), 90.0, 1.0), atol=1e-12)


def _dot_image(h, w, x, y):
    """A Gaussian dot centred at (x, y) pixels (sub-pixel), float32 (h, w, 1)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)[..., None]


def _centroid(img):
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    wgt = img[..., 0].astype(np.float64)
    wgt = np.where(wgt > 0.05 * wgt.max(), wgt, 0)
    return np.array([(xx * wgt).sum(), (yy * wgt).sum()]) / wgt.sum()


@pytest.mark.parametrize("angle,face", [(0.0, 150.0), (30.0, 150.0), (-75.0, 150.0), (0.0, 40.0), (20.0, 400.0)])
def test_warp_image_agrees_with_apply(angle, face):
    # crop scales from ~0.43 to ~4.3: a half-pixel convention slip would show as 0.5 * |scale - 1| px
    rng = np.random.default_rng(3)
    pts = _landmarks(rng, w=face, h=face)
    sim = crop_similarity(pts, out_size=256, rng=rng).compose(rotation_about((127.5, 127.5), angle))
    src = np.array([230.3, 251.7])
    img = _dot_image(450, 450, *src)
    out = sim.warp_image(img, 256)
    assert out.shape == (256, 256, 1) and out.dtype == np.float32
    err = np.linalg.norm(_centroid(out) - sim.apply(src))
    assert err < 0.1, err  # measured <= 0.025 px; the brief allows 0.5


def test_warp_image_uint8_rgb_and_border_zero():
    img = np.full((100, 120, 3), 200, np.uint8)
    sim = Similarity(np.array([[1.0, 0, 50.0], [0, 1.0, 50.0], [0, 0, 1]]))
    out = sim.warp_image(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:40, :40] == 0).all() and (out[60:, 60:] == 200).all()
    many = np.repeat(img[..., :1], 6, axis=2)
    assert sim.warp_image(many, 64).shape == (64, 64, 6)


def test_same_seed_same_crop_and_jitter_changes_it():
    pts = _landmarks(np.random.default_rng(4))
    a = crop_similarity(pts, rng=np.random.default_rng(7))
    b = crop_similarity(pts, rng=np.random.default_rng(7))
    c = crop_similarity(pts, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, c.matrix)


def test_jitter_ranges_respected():
    pts = _landmarks(np.random.default_rng(5), w=150.0, h=170.0)
    side0 = 1.5 * 170.0
    rng = np.random.default_rng(9)
    shifts, sides = [], []
    for _ in range(2000):
        sim = crop_similarity(pts, out_size=256, rng=rng, shift=0.1, scale_range=(0.9, 1.1))
        centre = sim.inverse().apply(np.array([127.5, 127.5]))
        shifts.append((centre - [210.0, 240.0]) / side0)
        sides.append(256 / sim.scale / side0)
    shifts, sides = np.array(shifts), np.array(sides)
    assert np.abs(shifts).max() <= 0.1 + 1e-9 and sides.min() >= 0.9 - 1e-9 and sides.max() <= 1.1 + 1e-9
    # uniform draws fill their ranges
    assert np.abs(shifts).max() > 0.098 and sides.min() < 0.902 and sides.max() > 1.098
    assert np.abs(shifts.mean(axis=0)).max() < 0.01 and abs(sides.mean() - 1.0) < 0.01


def test_degenerate_landmarks_raise_sample_error():
    with pytest.raises(SampleError, match="degenerate"):
        crop_similarity(np.zeros((68, 2)))
    bad = _landmarks(np.random.default_rng(6))
    bad[3, 0] = np.nan
    with pytest.raises(SampleError, match="NaN"):
        crop_similarity(bad)


def test_similarity_matrix_is_validated_and_read_only():
    with pytest.raises(ValueError):
        Similarity(np.eye(4))
    s = Similarity(np.eye(3)[:2])
    assert s.matrix.shape == (3, 3)
    with pytest.raises(ValueError):
        s.matrix[0, 0] = 2.0
