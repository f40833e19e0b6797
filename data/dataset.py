"""Torch datasets: PosmapDataset (processor output, memory-mapped position maps) and AFLWEvalSet (evaluation).

Items are dicts of CHW float32 tensors: image in [0, 1], position map divided by POSMAP_SCALE (280).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import augment as augment_sample
from data.index import BBOX_SUFFIX, IMAGE_SUFFIX, POSMAP_SUFFIX, read_index
from faceutil.errors import FaceUtilError, SampleError
from faceutil.sampleio import read_bbox_info, read_image, read_sample_mat
from faceutil.uv import POSMAP_SCALE

CROP_SIZE = 256
MIN_MEAN_SAMPLES = 8            # fewest training samples the mean-residual head's mean position map is taken from
MEAN_POSMAP_LIMIT = 4096        # most samples read for it
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor in [0, 1].

    Converted in numpy (single-threaded) rather than torch: inside loader workers and on shared cores torch's
    intra-op threads made this tiny step ~100x slower.
    """
    chw = image.transpose(2, 0, 1).astype(np.float32)
    chw /= np.float32(255.0)
    return torch.from_numpy(chw)


def posmap_tensor(posmap: np.ndarray) -> torch.Tensor:
    """(S, S, 3) position map in crop pixels -> (3, S, S) float32 tensor divided by POSMAP_SCALE."""
    chw = np.asarray(posmap).transpose(2, 0, 1).astype(np.float32)
    chw /= np.float32(POSMAP_SCALE)
    return torch.from_numpy(chw)


def _check_image(image: np.ndarray, path: Path, size: int) -> None:
    if image.shape != (size, size, 3):
        raise FaceUtilError(f"cropped image {path} is {image.shape[1]}x{image.shape[0]}, expected {size}x{size} "
                            f"(re-run processor.py on this folder).")


def _open_posmap(path: Path, size: int) -> np.memmap:
    """Memory-map one (size, size, 3) position map .npy read-only; FaceUtilError naming the file if unusable."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FaceUtilError(f"position map {path} is missing (re-run processor.py on this folder).") from None
    except (OSError, ValueError) as err:
        raise FaceUtilError(f"position map {path} is not a readable .npy file ({err}).") from None
    if arr.shape != (size, size, 3) or arr.dtype.kind != "f":
        raise FaceUtilError(f"position map {path} has shape {arr.shape} {arr.dtype}, expected ({size}, {size}, 3) "
                            f"float (re-run processor.py on this folder).")
    return arr


class PosmapDataset(Dataset):
    """Training/validation samples from a processor output folder (layout: CONTRACT "Processor output").

    root: the folder; names: sample names to use (default: data.index.read_index(root), i.e. the 'ok' rows).
    augment: apply data.augment.augment (rotation=False: without its in-plane rotation), seeded by (seed, epoch,
    index) so the result does not depend on the number or order of loader workers; epoch comes from set_epoch() or
    from an (epoch, index) key (see data.loader, which tags indices so persistent workers see the current epoch).
    pre_read: False (default) memory-maps each position map when its item is read (np.load mmap_mode="r", in
    whichever process reads it; nothing is opened in __init__), so memory does not grow with the dataset.
    True reads every map once into ONE array of shape (N, 256, 256, 3) (shared memory when /dev/shm has room,
    else ordinary memory shared copy-on-write with forked workers; each DDP rank holds its own copy, so budget
    ranks per node x N x 768 KiB); pre_read_dtype "float16" halves it
    (768 KiB -> 384 KiB per sample) at a rounding error <= 0.0625 px for |value| < 256 and <= 0.125 px below
    512 (<= 4.5e-4 after the /280 scaling).
    Item: {"image": (3, 256, 256) float32 in [0, 1], "posmap": (3, 256, 256) float32 = posmap / 280,
    "index": int}. A damaged sample file raises FaceUtilError naming it.
    Names are held in one fixed-width numpy array (no per-sample Python objects), so forked workers do not
    copy them page by page through reference counting.
    """

    accepts_epoch_tag = True  # data.loader may pass (epoch, index) keys

    def __init__(self, root, names=None, augment: bool = False, seed: int = 0, pre_read: bool = False,
                 pre_read_dtype: str = "float32", size: int = CROP_SIZE, rotation: bool = True):
        self.root = Path(root)
        names = read_index(self.root) if names is None else list(names)
        if not names:
            raise FaceUtilError(f"no samples selected from dataset folder {self.root}.")
        self._names = np.array(names, dtype=np.str_)
        self.augment, self.rotation = bool(augment), bool(rotation)
        self.seed = int(seed)
        self.size = int(size)
        self.epoch = 0
        self._shared: torch.Tensor | None = None
        if pre_read:
            if pre_read_dtype not in ("float32", "float16"):
                raise FaceUtilError(f"pre-read dtype must be 'float32' or 'float16', got {pre_read_dtype!r}.")
            self._shared = self._read_all(getattr(torch, pre_read_dtype))

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        """Sample names in dataset order (a new list each call)."""
        return self._names.tolist()

    @property
    def pre_read(self) -> bool:
        return self._shared is not None

    @property
    def face_model(self) -> dict | None:
        """The processor's record of the face model that made this folder ({"bfm", "fingerprint", "size"}; see
        faceutil.uv.FACE_MODEL_FILE), None for a folder processed before the record existed."""
        from faceutil.uv import read_face_model_record

        return read_face_model_record(self.root)

    @property
    def shared_posmaps(self) -> torch.Tensor | None:
        """The pre-read (N, 256, 256, 3) tensor of all position maps (crop pixels), or None when memory-mapping."""
        return self._shared

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` for keys given as plain indices."""
        self.epoch = int(epoch)

    def image_path(self, i: int) -> Path:
        name = str(self._names[i])
        return self.root / name / (name + IMAGE_SUFFIX)

    def posmap_path(self, i: int) -> Path:
        name = str(self._names[i])
        return self.root / name / (name + POSMAP_SUFFIX)

    def mean_posmap(self, limit: int = MEAN_POSMAP_LIMIT, minimum: int = MIN_MEAN_SAMPLES) -> np.ndarray:
        """The mean position map, (256, 256, 3) float32 crop pixels, over at most `limit` samples spread evenly
        over the dataset (the mean has converged to ~0.1 px long before that on 300W-LP; reading all 122k maps
        would take minutes). Accumulated in float64; un-augmented. FaceUtilError when the dataset holds fewer than
        `minimum` samples (too few to estimate a mean face)."""
        n = len(self)
        if n < minimum:
            raise FaceUtilError(f"dataset folder {self.root} holds {n} training sample(s), too few to estimate the "
                                f"mean position map of the mean-residual head (at least {minimum}); use "
                                f"more samples or --head=published.")
        picks = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))
        total = np.zeros((self.size, self.size, 3), np.float64)
        for i in picks:
            total += np.asarray(self.posmap_array(int(i)), dtype=np.float64)
        return (total / len(picks)).astype(np.float32)

    def posmap_array(self, i: int) -> np.ndarray:
        """Sample i's stored position map, (256, 256, 3) crop pixels, NOT copied: a read-only np.memmap, or a view
        of the pre-read array (float16 when pre-read so)."""
        if self._shared is not None:
            return self._shared.numpy()[i]
        return _open_posmap(self.posmap_path(i), self.size)

    # -- items ---------------------------------------------------------------------------------------------------
    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple):
            epoch, i = int(key[0]), int(key[1])
        else:
            epoch, i = self.epoch, int(key)
        n = len(self._names)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} samples")
        i %= n
        path = self.image_path(i)
        try:
            image = read_image(path)
        except SampleError as err:
            raise FaceUtilError(f"{err} (re-run processor.py on this folder).") from None
        _check_image(image, path, self.size)
        posmap = np.array(self.posmap_array(i), dtype=np.float32)  # copy out of the map / shared array
        if self.augment:
            image, posmap = augment_sample(image, posmap, np.random.default_rng([self.seed, epoch, i]),
                                           rotation=self.rotation)
        return {"image": image_tensor(image), "posmap": posmap_tensor(posmap), "index": i}

    # -- pre-read ------------------------------------------------------------------------------------------------
    def _read_all(self, dtype: torch.dtype) -> torch.Tensor:
        """All position maps in one (N, S, S, 3) tensor; in shared memory when /dev/shm can hold it."""
        n, s = len(self._names), self.size
        nbytes = n * s * s * 3 * torch.empty((), dtype=dtype).element_size()
        shared = torch.empty((n, s, s, 3), dtype=dtype)
        if _shm_free_bytes() > 1.1 * nbytes:
            shared.share_memory_()  # workers started with spawn then get a handle, not a copy
        out = shared.numpy()
        for i in range(n):
            out[i] = _open_posmap(self.posmap_path(i), s)
        return shared


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class AFLWEvalSet(Dataset):
    """AFLW2000-3D evaluation samples, cropped deterministically (no jitter) from the annotated pt3d_68.

    folder: either a raw AFLW2000-3D-format folder (<name>.jpg + <name>.mat holding Pose_Para and pt3d_68;
    the crop is faceutil.crop.crop_similarity(pt3d_68[:, :2], rng=None)), or a processor output folder whose
    bbox_info files carry pt3d_68 (processor --isOldKpt=True); the latter also yields the position map.
    Samples that cannot be used (unreadable image or .mat, missing pt3d_68 or files) are left out with a
    one-sentence reason in `.skipped` (list of (name, reason)); construction never fails on a bad sample. For a
    raw folder it decodes every image once to find broken ones (~3 ms each, ~6 s for AFLW2000-3D's 2,000).
    Item: {"image": (3, 256, 256) float32 in [0, 1], "matrix": (3, 3) float64 original->crop similarity,
    "scale": float crop px per original px, "pt3d_68": (68, 3) float32 original image px, "yaw": float degrees
    (degrees(Pose_Para[1]) as stored, not wrapped), "name": str, "index": int,
    "posmap": (3, 256, 256) float32 = posmap / 280 (processor output only)}.
    """

    def __init__(self, folder, size: int = CROP_SIZE):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FaceUtilError(f"evaluation folder {self.folder} does not exist (check the -vd/-pd path).")
        self.size = int(size)
        self.skipped: list[tuple[str, str]] = []
        self._names: list[str] = []
        self._image_paths: list[Path] = []
        self._posmap_paths: list[Path] | None = None
        self._sims: list = []                 # crop Similarity (raw) or (3, 3) matrix (processor output)
        self._scales: list[float] = []
        self._pt3d: list[np.ndarray] = []
        self._yaw: list[float] = []
        if any(self.folder.glob("*.mat")):
            self.kind = "raw"
            self._scan_raw()
        else:
            self.kind = "processed"
            self._scan_processed()
        if not self._names:
            raise FaceUtilError(f"evaluation folder {self.folder} holds no usable AFLW2000-3D sample "
                                f"({len(self.skipped)} skipped).")

    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def _scan_raw(self) -> None:
        from faceutil.crop import crop_similarity

        images = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS)
        for path in images:
            name = path.stem
            mat = path.with_suffix(".mat")
            if not mat.is_file():
                self.skipped.append((name, f"no annotation file {mat.name} beside {path.name}"))
                continue
            try:
                sample = read_sample_mat(mat, n_shape=None, n_exp=None)
                if sample.pt3d_68 is None:
                    raise SampleError(f"sample file {mat} has no 'pt3d_68' entry")
                sim = crop_similarity(sample.pt3d_68[:, :2], out_size=self.size, rng=None)
                read_image(path)  # decoded once here so that a broken image is skipped, not fatal later
            except SampleError as err:
                self.skipped.append((name, str(err)))
                continue
            self._add(name, path, sim, float(sim.scale), sample.pt3d_68, sample.pose_para)

    def _scan_processed(self) -> None:
        try:
            names = read_index(self.folder)
        except FaceUtilError as err:
            raise FaceUtilError(f"evaluation folder {self.folder} holds neither AFLW2000-3D .mat files nor "
                                f"processor output ({err})") from None
        self._posmap_paths = []
        for name in names:
            d = self.folder / name
            try:
                info = read_bbox_info(d / (name + BBOX_SUFFIX))
            except SampleError as err:
                self.skipped.append((name, str(err)))
                continue
            if "pt3d_68" not in info:
                self.skipped.append((name, f"{name}{BBOX_SUFFIX} has no pt3d_68 (process the folder with "
                                           f"--isOldKpt=True)"))
                continue
            image_path, posmap_path = d / (name + IMAGE_SUFFIX), d / (name + POSMAP_SUFFIX)
            missing = [p.name for p in (image_path, posmap_path) if not p.is_file()]
            if missing:
                self.skipped.append((name, f"missing {', '.join(missing)}"))
                continue
            self._posmap_paths.append(posmap_path)
            self._add(name, image_path, np.asarray(info["matrix"], dtype=np.float64), float(info["scale"]),
                      info["pt3d_68"], info["pose_para"])

    def _add(self, name, image_path, sim, scale, pt3d, pose_para) -> None:
        self._names.append(name)
        self._image_paths.append(image_path)
        self._sims.append(sim)
        self._scales.append(scale)
        self._pt3d.append(np.asarray(pt3d, dtype=np.float32).reshape(68, 3))
        self._yaw.append(math.degrees(float(pose_para[1])))

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        try:
            image = read_image(self._image_paths[i])
        except SampleError as err:
            raise FaceUtilError(f"{err} (it was readable when the evaluation set was built).") from None
        item = {"name": self._names[i], "index": i, "scale": self._scales[i], "pt3d_68": self._pt3d[i].copy(),
                "yaw": self._yaw[i]}
        if self._posmap_paths is None:
            sim = self._sims[i]
            item["image"] = image_tensor(sim.warp_image(image, self.size))
            item["matrix"] = np.array(sim.matrix, dtype=np.float64)
        else:
            _check_image(image, self._image_paths[i], self.size)
            item["image"] = image_tensor(image)
            item["matrix"] = self._sims[i].copy()
            item["posmap"] = posmap_tensor(_open_posmap(self._posmap_paths[i], self.size))
        return item
