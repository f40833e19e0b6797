"""Tests for faceutil.sampleio: atomic writers, image reading (bad inputs too), sample .mat and bbox_info files."""
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from faceutil import sampleio
from faceutil.errors import FaceUtilError, SampleError
from faceutil.sampleio import Sample


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _sample(rng, with_pt2d=True, with_pt3d=True) -> Sample:
    return Sample(
        name="x",
        pose_para=np.array([0.1, -0.7, 0.05, 220.0, 230.0, -60.0, 1.3e-3]),
        shape_para=rng.normal(0, 3e5, 199),
        exp_para=rng.normal(0, 1.5, 29),
        pt2d=rng.uniform(0, 450, (68, 2)) if with_pt2d else None,
        pt3d_68=rng.uniform(0, 450, (68, 3)) if with_pt3d else None,
    )


def _mat(path: Path, **overrides):
    """Write a valid sample .mat at `path`, with some keys replaced (value None: key removed)."""
    data = {"Pose_Para": np.array([[0.1, -0.7, 0.05, 220.0, 230.0, -60.0, 1.3e-3]], np.float32),
            "Shape_Para": np.ones((199, 1)), "Exp_Para": np.ones((29, 1)), "pt2d": np.ones((2, 68))}
    for k, v in overrides.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    scipy.io.savemat(path, data)
    return path


# -- atomic writers ---------------------------------------------------------------------------------------------------
def test_atomic_writers_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sampleio.atomic_write_bytes(tmp_path / "a.bin", b"hello")
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    sampleio.atomic_write_bytes(tmp_path / "c.bin", [b"ab", memoryview(b"cd")])
    assert (tmp_path / "c.bin").read_bytes() == b"abcd"
    arr = rng.normal(size=(4, 5, 3)).astype(np.float32)
    sampleio.atomic_save_npy(tmp_path / "p.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), arr)
    sampleio.atomic_save_mat(tmp_path / "m.mat", {"k": arr[..., 0]})
    np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / "m.mat")["k"], arr[..., 0])
    # overwriting an existing file replaces it
    sampleio.atomic_write_bytes(tmp_path / "a.bin", b"again")
    assert (tmp_path / "a.bin").read_bytes() == b"again"
    assert _leftovers(tmp_path) == []


def test_atomic_write_failing_midway_leaves_nothing(tmp_path):
    target = tmp_path / "out.npy"

    def failing(f):
        f.write(b"partial data")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        sampleio._atomic_write(target, failing)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    # an existing target survives a failed rewrite untouched
    sampleio.atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        sampleio._atomic_write(target, failing)
    assert target.read_bytes() == b"good"
    assert _leftovers(tmp_path) == []


def test_atomic_write_of_unpicklable_array_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        sampleio.atomic_save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_into_missing_or_blocked_folder(tmp_path):
    with pytest.raises(FaceUtilError, match="does not exist"):
        sampleio.atomic_write_bytes(tmp_path / "nope" / "a.bin", b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FaceUtilError, match="file"):
        sampleio.atomic_save_npy(tmp_path / "file" / "a.npy", np.zeros(3))
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(FaceUtilError, match="folder"):
        sampleio.atomic_write_bytes(tmp_path / "dir.bin", b"x")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_atomic_write_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.bin").write_bytes(b"old")
    (ro / "old.bin").chmod(0o444)
    try:
        with pytest.raises(FaceUtilError, match="read-only"):
            sampleio.atomic_write_bytes(ro / "old.bin", b"new")
        ro.chmod(0o555)
        with pytest.raises(FaceUtilError, match="no file can be created"):
            sampleio.atomic_write_bytes(ro / "new.bin", b"new")
    finally:
        ro.chmod(0o755)
    assert (ro / "old.bin").read_bytes() == b"old"
    assert _leftovers(ro) == []


def test_atomic_write_readonly_target_message_even_as_root(tmp_path, monkeypatch):
    (tmp_path / "t.bin").write_bytes(b"old")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(FaceUtilError, match=r"t\.bin.*read-only"):
        sampleio.atomic_write_bytes(tmp_path / "t.bin", b"new")
    assert (tmp_path / "t.bin").read_bytes() == b"old"


def test_created_files_get_normal_permissions(tmp_path):
    sampleio.atomic_write_bytes(tmp_path / "a.bin", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask


# -- images -----------------------------------------------------------------------------------------------------------
def _test_image(h=40, w=60):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4 % 256, yy * 6 % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def test_image_round_trip_png_exact_and_jpg_close(tmp_path):
    img = _test_image()
    sampleio.atomic_write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(sampleio.read_image(tmp_path / "a.png"), img)
    sampleio.atomic_write_image(tmp_path / "a.jpg", img, quality=100)
    back = sampleio.read_image(tmp_path / "a.jpg")
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img).mean() < 3
    # channel order: a pure red image stays red (RGB in memory)
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    sampleio.atomic_write_image(tmp_path / "r.jpg", red)
    assert sampleio.read_image(tmp_path / "r.jpg")[8, 8].argmax() == 0
    assert _leftovers(tmp_path) == []


def test_png_named_jpg_is_read(tmp_path):
    img = _test_image()
    sampleio.atomic_write_image(tmp_path / "a.png", img)
    os.replace(tmp_path / "a.png", tmp_path / "b.jpg")
    np.testing.assert_array_equal(sampleio.read_image(tmp_path / "b.jpg"), img)


def test_grey_and_alpha_images_become_rgb(tmp_path):
    from PIL import Image

    grey = _test_image()[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = sampleio.read_image(tmp_path / "g.png")
    assert out.shape == grey.shape + (3,)
    np.testing.assert_array_equal(out[..., 1], grey)
    rgba = np.concatenate([_test_image(), np.full((40, 60, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(sampleio.read_image(tmp_path / "a.png"), rgba[..., :3])


def test_sixteen_bit_and_cmyk_images_become_8_bit_rgb(tmp_path):
    """16-bit grey (high byte kept) and CMYK (converted) come out as (H, W, 3) uint8 like every other image."""
    from PIL import Image

    grey16 = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27 % 65536).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = sampleio.read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[..., 0], (grey16 >> 8).astype(np.uint8))
    rgb = _test_image()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    back = sampleio.read_image(tmp_path / "c.jpg")
    assert back.dtype == np.uint8 and back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 6.0


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                               (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied_only_when_asked(tmp_path, orientation, turn):
    """EXIF Orientation (1 upright, 3 upside down, 6 / 8 turned 90 deg clockwise / counter-clockwise for display,
    2 mirrored): the stored grid by default (dataset annotations refer to it), the displayed picture on request."""
    from PIL import Image

    stored = np.random.default_rng(orientation).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert np.array_equal(sampleio.read_image(path), stored)
    assert np.array_equal(sampleio.read_image(path, exif_orientation=True), turn(stored))


def test_bad_images_raise_sample_error_naming_the_file(tmp_path):
    img = _test_image(120, 160)
    sampleio.atomic_write_image(tmp_path / "good.jpg", img)
    sampleio.atomic_write_image(tmp_path / "good.png", img)
    jpg = (tmp_path / "good.jpg").read_bytes()
    png = (tmp_path / "good.png").read_bytes()
    cases = {
        "missing.jpg": None,
        "empty.jpg": b"",
        "trunc_half.jpg": jpg[: len(jpg) // 2],
        "trunc_eoi.jpg": jpg[:-2],
        "trunc_head.jpg": jpg[:50],
        "trunc.png": png[: len(png) // 2],
        "text.jpg": b"this is not an image at all\n" * 10,
        "random.png": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(SampleError) as info:
            sampleio.read_image(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, (name, msg)
    with pytest.raises(SampleError, match="not a file"):
        sampleio.read_image(tmp_path)


def test_jpeg_with_trailing_bytes_after_eoi_is_read(tmp_path):
    img = _test_image()
    sampleio.atomic_write_image(tmp_path / "a.jpg", img)
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes() + b"\x00" * 16)
    np.testing.assert_array_equal(sampleio.read_image(tmp_path / "b.jpg"), sampleio.read_image(tmp_path / "a.jpg"))


def test_genuine_images_read(shared_data):
    import cv2

    for path in [shared_data / "300wlp_samples" / "IBUG_image_008_1_0.jpg",
                 *sorted((shared_data / "aflw2000_samples").glob("*.jpg"))[:3]]:
        img = sampleio.read_image(path)
        assert img.shape == (450, 450, 3) and img.dtype == np.uint8
        bgr = cv2.imread(str(path))
        assert np.abs(img.astype(int) - bgr[..., ::-1]).max() <= 1


# -- sample .mat -----------------------------------------------------------------------------------------------------
def test_sample_mat_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    s = _sample(rng)
    sampleio.write_sample_mat(tmp_path / "image00042.mat", s)
    raw = scipy.io.loadmat(tmp_path / "image00042.mat")
    assert raw["Pose_Para"].shape == (1, 7) and raw["Shape_Para"].shape == (199, 1)
    assert raw["Exp_Para"].shape == (29, 1) and raw["pt2d"].shape == (2, 68) and raw["pt3d_68"].shape == (3, 68)
    back = sampleio.read_sample_mat(tmp_path / "image00042.mat")
    assert back.name == "image00042"
    for key in ("pose_para", "shape_para", "exp_para", "pt2d", "pt3d_68"):
        np.testing.assert_array_equal(getattr(back, key), getattr(s, key))
    s2 = _sample(rng, with_pt2d=False, with_pt3d=False)
    sampleio.write_sample_mat(tmp_path / "b.mat", s2)
    back2 = sampleio.read_sample_mat(tmp_path / "b.mat")
    assert back2.pt2d is None and back2.pt3d_68 is None
    assert _leftovers(tmp_path) == []


def test_sample_mat_lengths_are_configurable(tmp_path):
    _mat(tmp_path / "a.mat", Shape_Para=np.ones((40, 1)), Exp_Para=np.ones((10, 1)))
    s = sampleio.read_sample_mat(tmp_path / "a.mat", n_shape=40, n_exp=10)
    assert s.shape_para.shape == (40,) and s.exp_para.shape == (10,)
    s = sampleio.read_sample_mat(tmp_path / "a.mat", n_shape=None, n_exp=None)
    assert s.shape_para.shape == (40,)
    with pytest.raises(SampleError, match="Shape_Para.*40 values, expected 199"):
        sampleio.read_sample_mat(tmp_path / "a.mat")


def test_pt2d_21_points_is_none_not_an_error(tmp_path):
    _mat(tmp_path / "a.mat", pt2d=np.full((2, 21), np.nan), pt3d_68=np.ones((3, 68), np.float32))
    s = sampleio.read_sample_mat(tmp_path / "a.mat")
    assert s.pt2d is None and s.pt3d_68.shape == (68, 3)


BAD_MATS = {
    "no_pose": ({"Pose_Para": None}, "Pose_Para"),
    "no_shape": ({"Shape_Para": None}, "Shape_Para"),
    "no_exp": ({"Exp_Para": None}, "Exp_Para"),
    "short_pose": ({"Pose_Para": np.ones((1, 6))}, "Pose_Para"),
    "matrix_pose": ({"Pose_Para": np.ones((7, 7))}, "Pose_Para"),
    "text_pose": ({"Pose_Para": "abcdefg"}, "Pose_Para"),
    "long_exp": ({"Exp_Para": np.ones((30, 1))}, "Exp_Para"),
    "nan_shape": ({"Shape_Para": np.r_[np.ones(198), np.nan][:, None]}, "Shape_Para"),
    "inf_pose": ({"Pose_Para": np.array([[0, 0, 0, np.inf, 0, 0, 1e-3]])}, "Pose_Para"),
    "zero_scale": ({"Pose_Para": np.array([[0, 0, 0, 200, 200, -50, 0.0]])}, "scale"),
    "neg_scale": ({"Pose_Para": np.array([[0, 0, 0, 200, 200, -50, -1e-3]])}, "scale"),
    "huge_scale": ({"Pose_Para": np.array([[0, 0, 0, 200, 200, -50, 3.0]])}, "scale"),
    "angle": ({"Pose_Para": np.array([[0, 7.0, 0, 200, 200, -50, 1e-3]])}, "angle"),
    "translation": ({"Pose_Para": np.array([[0, 0, 0, 200, 2e6, -50, 1e-3]])}, "translation"),
    "shape_absurd": ({"Shape_Para": np.full((199, 1), 1e9)}, "Shape_Para"),
    "exp_absurd": ({"Exp_Para": np.full((29, 1), -5e3)}, "Exp_Para"),
    "pt3d_shape": ({"pt3d_68": np.ones((3, 21))}, "pt3d_68"),
    "pt3d_nan": ({"pt3d_68": np.full((3, 68), np.nan)}, "pt3d_68"),
    "pt2d_nan": ({"pt2d": np.full((2, 68), np.inf)}, "pt2d"),
    "pt2d_far": ({"pt2d": np.full((2, 68), 1e7)}, "pt2d"),
}


@pytest.mark.parametrize("case", sorted(BAD_MATS))
def test_bad_sample_mat_raises_naming_file_and_key(tmp_path, case):
    overrides, key = BAD_MATS[case]
    path = _mat(tmp_path / f"{case}.mat", **overrides)
    with pytest.raises(SampleError) as info:
        sampleio.read_sample_mat(path)
    msg = str(info.value)
    assert f"{case}.mat" in msg and key in msg and "\n" not in msg, msg


def test_unreadable_sample_files(tmp_path):
    good = _mat(tmp_path / "good.mat").read_bytes()
    cases = {"missing.mat": None, "empty.mat": b"", "text.mat": b"not a mat file" * 20,
             "trunc.mat": good[: len(good) // 2], "head.mat": good[:100]}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(SampleError) as info:
            sampleio.read_sample_mat(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_genuine_samples_read(shared_data):
    paths = sorted((shared_data / "aflw2000_samples").glob("*.mat"))
    assert len(paths) == 31
    for p in paths:
        s = sampleio.read_sample_mat(p)
        raw = scipy.io.loadmat(p)
        assert s.name == p.stem and s.pt2d is None  # AFLW2000-3D's pt2d has 21 points
        np.testing.assert_array_equal(s.pt3d_68, raw["pt3d_68"].T)
        np.testing.assert_array_equal(s.pose_para, raw["Pose_Para"].ravel())
        assert s.shape_para.shape == (199,) and s.exp_para.shape == (29,)
    lp = sampleio.read_sample_mat(shared_data / "300wlp_samples" / "IBUG_image_008_1_0.mat")
    raw = scipy.io.loadmat(shared_data / "300wlp_samples" / "IBUG_image_008_1_0.mat")
    np.testing.assert_array_equal(lp.pt2d, raw["pt2d"].T)
    assert lp.pt3d_68 is None


def test_genuine_sample_rewritten_reads_back_equal(shared_data, tmp_path):
    s = sampleio.read_sample_mat(shared_data / "aflw2000_samples" / "image00002.mat")
    sampleio.write_sample_mat(tmp_path / "image00002.mat", s)
    back = sampleio.read_sample_mat(tmp_path / "image00002.mat")
    np.testing.assert_array_equal(back.pose_para, s.pose_para)
    np.testing.assert_array_equal(back.pt3d_68, s.pt3d_68)


# -- bbox_info -------------------------------------------------------------------------------------------------------
def _info(rng, pt3d=True):
    info = {"matrix": np.array([[0.8, 0.1, -20.0], [-0.1, 0.8, -30.0], [0, 0, 1]]), "scale": 0.806,
            "z_shift": -12.5, "image_size": np.array([450, 450]), "pose_para": rng.normal(size=7),
            "kpt": rng.uniform(0, 450, (68, 3))}
    if pt3d:
        info["pt3d_68"] = rng.uniform(0, 450, (68, 3))
    return info


def test_bbox_info_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    info = _info(rng)
    sampleio.write_bbox_info(tmp_path / "b.mat", info)
    back = sampleio.read_bbox_info(tmp_path / "b.mat")
    assert back["scale"] == info["scale"] and back["z_shift"] == info["z_shift"]
    assert back["image_size"] == (450, 450)
    for key in ("matrix", "pose_para", "kpt", "pt3d_68"):
        np.testing.assert_array_equal(back[key], info[key])
    info2 = _info(rng, pt3d=False)
    info2["image_size"] = (300, 400)
    sampleio.write_bbox_info(tmp_path / "c.mat", info2)
    back2 = sampleio.read_bbox_info(tmp_path / "c.mat")
    assert "pt3d_68" not in back2 and back2["image_size"] == (300, 400)
    assert _leftovers(tmp_path) == []


def test_bbox_info_bad_inputs(tmp_path):
    rng = np.random.default_rng(3)
    info = _info(rng)
    del info["kpt"]
    with pytest.raises(ValueError, match="kpt"):
        sampleio.write_bbox_info(tmp_path / "b.mat", info)
    assert not (tmp_path / "b.mat").exists()
    scipy.io.savemat(tmp_path / "c.mat", {"matrix": np.eye(3)})
    with pytest.raises(SampleError, match=r"c\.mat.*'scale'"):
        sampleio.read_bbox_info(tmp_path / "c.mat")
    with pytest.raises(SampleError, match=r"d\.mat"):
        sampleio.read_bbox_info(tmp_path / "d.mat")
