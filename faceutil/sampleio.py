"""Sample I/O: reading 300W-LP / AFLW2000-3D images and .mat files, and atomic writing of every output file.

Owns the file boundary: BGR<->RGB and (3, 68)<->(68, 3) layout conversions, validation of user files, atomic writes.
"""
from __future__ import annotations

import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from faceutil.errors import FaceUtilError, SampleError

# -- plausibility limits for the sample .mat (evidence: the 32 genuine files in ../shared/data, 2026-11) ---------------
#: Pose_Para angles (radians). Genuine AFLW2000-3D stores some wrapped angles: pitch -300 deg, roll 297.6 deg
#: in the 31 samples, yaw -351 .. 188 deg over all 2000 images (aflw2000_gt/AFLW2000-3D.pose.npy). They denote
#: ordinary rotations, so anything up to one full turn (plus ~6 deg of slack) is accepted; beyond that is absurd.
ANGLE_LIMIT = 2.0 * math.pi + 0.1
#: Pose_Para translations (pixels / depth units). Genuine: tx, ty in 106 .. 334, tz in -113 .. -9.7 on 450 px images.
TRANSLATION_LIMIT = 1e5
#: Pose_Para scale must lie in (0, SCALE_MAX]. Genuine: 1.04e-3 .. 1.61e-3 (face ~150-230 px from ~1.5e5 BFM units).
SCALE_MAX = 1.0
#: |Shape_Para| limit. Genuine max 9.7e5 (coefficients of unit-norm PCs, BFM shapeEV ~1e6): 100x margin.
SHAPE_LIMIT = 1e8
#: |Exp_Para| limit. Genuine max 4.39: more than 200x margin, still far below overflow-like garbage.
EXP_LIMIT = 1e3
#: Largest coordinate accepted for pt2d / pt3d_68 (pixels); genuine values stay within -50 .. 500.
POINT_LIMIT = 1e5

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Sample:
    """One 300W-LP / AFLW2000-3D annotation (.mat), in the project's layouts.

    name: file stem. pose_para: (7,) float64 [pitch, yaw, roll (radians), tx, ty, tz, scale].
    shape_para: (K,) float64 identity coefficients; exp_para: (E,) float64 expression coefficients.
    pt2d: (68, 2) float64 image pixels (x, y) or None (absent, or AFLW's 21-point annotation).
    pt3d_68: (68, 3) float64 image pixels (x, y, z) or None (AFLW2000-3D only).
    """

    name: str
    pose_para: np.ndarray
    shape_para: np.ndarray
    exp_para: np.ndarray
    pt2d: np.ndarray | None = None
    pt3d_68: np.ndarray | None = None


# -- atomic writers --------------------------------------------------------------------------------------------------
def _atomic_write(path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Run `write(f)` on a temp file beside `path`, then rename it onto `path`; nothing partial ever remains.

    The temp file (".<name>.<random>.tmp" in the same folder, so the rename is atomic) is created with the usual
    umask permissions and removed if `write` or the rename fails. Raises FaceUtilError (one sentence) when the
    folder is missing or unwritable or the target is read-only; exceptions raised by `write` itself propagate.
    Only a hard kill between create and rename can leave a hidden .tmp file (never a partial target).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FaceUtilError(f"cannot write {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise FaceUtilError(f"cannot write {path}: a folder of that name is in the way")
    if path.exists() and not os.access(path, os.W_OK):
        raise FaceUtilError(f"cannot write {path}: the file is read-only")
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise FaceUtilError(f"cannot write {path}: no file can be created in {folder} ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise FaceUtilError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def atomic_write_bytes(path, data) -> None:
    """Write `data` (bytes-like, or a list/tuple of bytes-like chunks written in order) to `path` atomically."""
    chunks = data if isinstance(data, (list, tuple)) else (data,)

    def write(f):
        for chunk in chunks:
            f.write(chunk)

    _atomic_write(path, write)


def atomic_save_npy(path, arr: np.ndarray) -> None:
    """Save `arr` as a .npy file at exactly `path` (no suffix added), atomically; pickles are refused."""
    arr = np.asarray(arr)
    _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


#: fixed 116-byte MATLAB v5 header text: scipy writes the current time there, which would make reruns differ
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by E2TKFace".ljust(116)


def atomic_save_mat(path, data: dict, **savemat_kwargs) -> None:
    """Save a dict of arrays as a MATLAB v5 .mat file at exactly `path`, atomically (scipy.io.savemat).

    The header carries no timestamp, so the same data always gives the same bytes. `savemat_kwargs` are passed
    on (e.g. ``do_compression=False, oned_as="column"``).
    """
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, data, **savemat_kwargs)
    raw = buf.getbuffer()
    raw[:116] = _MAT_HEADER
    atomic_write_bytes(path, raw)


def atomic_write_image(path, rgb: np.ndarray, quality: int = 95) -> None:
    """Encode an RGB image by the suffix of `path` (.jpg/.jpeg with `quality`, .png, .bmp) and write it atomically.

    rgb: (H, W, 3) uint8 RGB or (H, W) uint8 grey.
    """
    import cv2

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 image, got {rgb.shape} {rgb.dtype}")
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix in (".png", ".bmp"):
        params = []
    else:
        raise FaceUtilError(f"cannot write image {path}: unsupported suffix {suffix!r} (use .jpg, .png or .bmp)")
    bgr = rgb if rgb.ndim == 2 else np.ascontiguousarray(rgb[..., ::-1])
    ok, buf = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise FaceUtilError(f"cannot write image {path}: OpenCV could not encode it")
    atomic_write_bytes(path, buf.tobytes())


# -- images ----------------------------------------------------------------------------------------------------------
def _jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG stream has an end-of-image marker after its last start-of-scan marker.

    Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so 0xFFDA / 0xFFD9 there are real
    markers; an EXIF thumbnail's EOI lies before the main scan and does not count. Trailing bytes after EOI are fine.
    """
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos) >= 0


def read_image(path, exif_orientation: bool = False) -> np.ndarray:
    """Read an image file into (H, W, 3) uint8 RGB.

    The format is detected from the content, not the suffix: a PNG named .jpg is a valid image and is read as such.
    exif_orientation: turn the pixels as the EXIF Orientation tag says, so the array is what a viewer shows (for
    -predict on phone photos); off by default, because dataset annotations refer to the stored pixel grid.
    Grey, palette, alpha and CMYK images are converted to RGB (alpha dropped); 16-bit images are reduced to their
    high byte. Raises SampleError (one sentence naming the file) for a missing, empty, truncated or non-image file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SampleError(f"image {path} does not exist" if not path.exists() else f"image {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SampleError(f"image {path} cannot be read ({err.strerror})") from None
    if not data:
        raise SampleError(f"image {path} is empty (0 bytes)")
    if data.startswith(_JPEG_MAGIC) and not _jpeg_is_complete(data):
        raise SampleError(f"image {path} is a truncated JPEG (no end-of-image marker)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if exif_orientation:
                img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.int64)
                grey = np.clip(arr >> 8 if arr.max() > 255 else arr, 0, 255).astype(np.uint8)
                rgb = np.repeat(grey[..., None], 3, axis=2)
            else:
                rgb = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise SampleError(f"image {path} is not a readable image file") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        reason = "truncated" if "truncat" in str(err).lower() else "corrupt"
        raise SampleError(f"image {path} is {reason} and cannot be decoded") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise SampleError(f"image {path} has no pixels")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# -- sample .mat -----------------------------------------------------------------------------------------------------
def _load_mat(path: Path, what: str) -> dict:
    import scipy.io

    if not path.is_file():
        raise SampleError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise SampleError(f"{what} {path} is empty (0 bytes)")
    try:
        return scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises many types for damaged files (ValueError, TypeError, OSError, ...)
        detail = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        raise SampleError(f"{what} {path} is not a readable MATLAB .mat file ({detail})") from None


def _numeric(m: dict, key: str, path: Path, required: bool = True) -> np.ndarray | None:
    if key not in m:
        if required:
            raise SampleError(f"sample file {path} has no '{key}' entry")
        return None
    a = np.asarray(m[key])
    if a.dtype.kind not in "fiub":
        raise SampleError(f"sample file {path}: '{key}' is not a numeric array (dtype {a.dtype})")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise SampleError(f"sample file {path}: '{key}' contains NaN or infinite values")
    return a


def _vector(m: dict, key: str, path: Path, length: int | None) -> np.ndarray:
    a = _numeric(m, key, path)
    if a.ndim > 2 or (a.ndim == 2 and min(a.shape) != 1 and a.size != 0):
        raise SampleError(f"sample file {path}: '{key}' has shape {a.shape}, expected a vector")
    v = a.reshape(-1)
    if length is not None and v.size != length:
        raise SampleError(f"sample file {path}: '{key}' has {v.size} values, expected {length}")
    return v


def _points(m: dict, key: str, path: Path, dims: int, optional_other_counts: bool) -> np.ndarray | None:
    """(dims, 68) .mat layout -> (68, dims); (68, dims) accepted as is. Other point counts -> None if allowed."""
    if key not in m:
        return None
    shape = np.shape(m[key])
    if shape not in ((dims, 68), (68, dims)):
        if optional_other_counts and len(shape) == 2 and dims in shape:
            return None  # e.g. AFLW2000-3D's pt2d (2, 21): not 68 points, ignored, not an error
        raise SampleError(f"sample file {path}: '{key}' has shape {shape}, expected ({dims}, 68)")
    a = _numeric(m, key, path)
    pts = a.T.copy() if shape == (dims, 68) else a.copy()
    if np.abs(pts).max() > POINT_LIMIT:
        raise SampleError(f"sample file {path}: '{key}' has coordinates beyond {POINT_LIMIT:g} px")
    return pts


def read_sample_mat(path, n_shape: int | None = 199, n_exp: int | None = 29) -> Sample:
    """Read and validate a 300W-LP / AFLW2000-3D sample .mat (Pose_Para, Shape_Para, Exp_Para, pt2d, pt3d_68).

    n_shape / n_exp: the exact number of coefficients required (None = any). Raises SampleError with one sentence
    naming the file and the key for: missing/empty/unreadable file, missing key, non-numeric or wrong-length data,
    NaN/inf, and absurd values (scale not in (0, 1], |angle| > 2 pi + 0.1, |t| > 1e5, |Shape_Para| > 1e8,
    |Exp_Para| > 1e3; see the module constants for the evidence). pt2d (2, 68) becomes (68, 2); a pt2d with another
    point count (AFLW2000-3D's 21 points) becomes None. pt3d_68 (3, 68) becomes (68, 3).
    """
    path = Path(path)
    m = _load_mat(path, "sample file")
    pose = _vector(m, "Pose_Para", path, 7)
    shape = _vector(m, "Shape_Para", path, n_shape)
    exp = _vector(m, "Exp_Para", path, n_exp)
    angles, t, s = pose[:3], pose[3:6], pose[6]
    if not 0.0 < s <= SCALE_MAX:
        raise SampleError(f"sample file {path}: 'Pose_Para' scale {s:g} is outside (0, {SCALE_MAX:g}]")
    if np.abs(angles).max() > ANGLE_LIMIT:
        raise SampleError(f"sample file {path}: 'Pose_Para' angle {angles[np.abs(angles).argmax()]:g} rad "
                          f"exceeds one full turn")
    if np.abs(t).max() > TRANSLATION_LIMIT:
        raise SampleError(f"sample file {path}: 'Pose_Para' translation {t[np.abs(t).argmax()]:g} is beyond "
                          f"±{TRANSLATION_LIMIT:g}")
    if shape.size and np.abs(shape).max() > SHAPE_LIMIT:
        raise SampleError(f"sample file {path}: 'Shape_Para' has a coefficient of {np.abs(shape).max():g}, "
                          f"beyond the plausible {SHAPE_LIMIT:g}")
    if exp.size and np.abs(exp).max() > EXP_LIMIT:
        raise SampleError(f"sample file {path}: 'Exp_Para' has a coefficient of {np.abs(exp).max():g}, "
                          f"beyond the plausible {EXP_LIMIT:g}")
    pt2d = _points(m, "pt2d", path, 2, optional_other_counts=True)
    pt3d = _points(m, "pt3d_68", path, 3, optional_other_counts=False)
    return Sample(name=path.stem, pose_para=pose, shape_para=shape, exp_para=exp, pt2d=pt2d, pt3d_68=pt3d)


def write_sample_mat(path, sample: Sample) -> None:
    """Write `sample` in the 300W-LP / AFLW2000-3D .mat layout, atomically.

    Pose_Para (1, 7), Shape_Para (K, 1), Exp_Para (E, 1), pt2d (2, 68) and pt3d_68 (3, 68) when present. All
    float64 (the genuine files store Pose_Para / pt3d_68 as float32; float64 keeps round trips exact, and every
    reader, ours and face3d's, converts anyway).
    """
    data = {
        "Pose_Para": np.asarray(sample.pose_para, dtype=np.float64).reshape(1, 7),
        "Shape_Para": np.asarray(sample.shape_para, dtype=np.float64).reshape(-1, 1),
        "Exp_Para": np.asarray(sample.exp_para, dtype=np.float64).reshape(-1, 1),
    }
    if sample.pt2d is not None:
        data["pt2d"] = np.asarray(sample.pt2d, dtype=np.float64).reshape(68, 2).T.copy()
    if sample.pt3d_68 is not None:
        data["pt3d_68"] = np.asarray(sample.pt3d_68, dtype=np.float64).reshape(68, 3).T.copy()
    atomic_save_mat(path, data)


# -- crop bookkeeping ------------------------------------------------------------------------------------------------
_BBOX_SHAPES = {"matrix": (3, 3), "scale": (), "z_shift": (), "image_size": (2,), "pose_para": (7,), "kpt": (68, 3)}
_BBOX_OPTIONAL = {"pt3d_68": (68, 3)}


def write_bbox_info(path, info: dict) -> None:
    """Write a crop's bookkeeping (.mat), atomically, so predictions can be mapped back to the original image.

    Required keys: "matrix" (3, 3) original->crop similarity, "scale" (crop px per original px), "z_shift" (crop
    depth subtracted so the face's min z is 0), "image_size" (H, W), "pose_para" (7,), "kpt" (68, 3) model
    landmarks in original image pixels; optional "pt3d_68" (68, 3). Other keys are stored as given.
    """
    data = {}
    for key, shape in {**_BBOX_SHAPES, **_BBOX_OPTIONAL}.items():
        if key not in info:
            if key in _BBOX_SHAPES:
                raise ValueError(f"bbox_info needs the key {key!r}")
            continue
        a = np.asarray(info[key], dtype=np.float64)
        if a.size != math.prod(shape):
            raise ValueError(f"bbox_info[{key!r}] has shape {a.shape}, expected {shape}")
        data[key] = a.reshape(shape) if shape else a.reshape(1, 1)
    for key, value in info.items():
        if key not in data:
            data[key] = value
    atomic_save_mat(path, data)


def read_bbox_info(path) -> dict:
    """Read a file written by `write_bbox_info`; raises SampleError (one sentence) if it is missing or malformed.

    Returns "matrix" (3, 3) float64, "scale" float, "z_shift" float, "image_size" (H, W) tuple of int,
    "pose_para" (7,) float64, "kpt" (68, 3) float64, "pt3d_68" (68, 3) float64 when stored; other stored keys as
    scipy.io.loadmat returns them.
    """
    path = Path(path)
    m = _load_mat(path, "bbox_info file")
    out: dict = {}
    for key, shape in {**_BBOX_SHAPES, **_BBOX_OPTIONAL}.items():
        if key not in m:
            if key in _BBOX_SHAPES:
                raise SampleError(f"bbox_info file {path} has no '{key}' entry")
            continue
        a = _numeric(m, key, path)
        if a.size != math.prod(shape):
            raise SampleError(f"bbox_info file {path}: '{key}' has shape {a.shape}, expected {shape}")
        out[key] = a.reshape(shape)
    out["scale"] = float(out["scale"])
    out["z_shift"] = float(out["z_shift"])
    out["image_size"] = (int(out["image_size"][0]), int(out["image_size"][1]))
    for key, value in m.items():
        if not key.startswith("__") and key not in out:
            out[key] = value
    return out
