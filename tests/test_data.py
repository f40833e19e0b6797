"""Tests for data/: index reading and splitting, PosmapDataset (memory-mapped / pre-read), augmentation
consistency between image and position map, AFLWEvalSet, and build_loader (workers, epochs, ranks)."""
import math
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data.distributed import DistributedSampler

import data.augment as augment_mod
from data.augment import augment, colour_scale, random_erase, rotate
from data.dataset import POSMAP_SCALE, AFLWEvalSet, PosmapDataset
from data.index import group_of, read_index, split_names
from data.loader import build_loader
from faceutil.crop import crop_similarity
from faceutil.errors import FaceUtilError
from faceutil.sampleio import atomic_write_image, read_image

S = 256
N_DOTS = 12


# -- synthetic processor output ----------------------------------------------------------------------------------
def _dots_sample(rng: np.random.Generator):
    """An image of N_DOTS bright Gaussian dots on black and a posmap whose UV pixels hold those dots' (x, y, z).

    Dots lie within 90 px of the crop centre, 12 px apart, so any rotation about the centre keeps them inside the crop.
    Returns image (S, S, 3) uint8, posmap (S, S, 3) float32 (zero outside the 'mesh'), uv (N_DOTS, 2) int rows/cols.
    """
    xy = np.empty((0, 2))
    while len(xy) < N_DOTS:  # dots at least 12 px apart, so each one's window holds only itself
        r, a = rng.uniform(20, 90), rng.uniform(0, 2 * np.pi)
        p = np.array([127.5 + r * np.cos(a), 127.5 + r * np.sin(a)])
        if np.all(np.hypot(*(xy - p).T) >= 12):
            xy = np.vstack([xy, p])
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    img = np.zeros((S, S), np.float64)
    for x, y in xy:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
    image = np.repeat(np.clip(img * 255, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    posmap = np.zeros((S, S, 3), np.float32)
    uv = rng.choice(S * S, N_DOTS, replace=False)
    uv = np.stack([uv // S, uv % S], axis=1)
    posmap[uv[:, 0], uv[:, 1], :2] = xy
    posmap[uv[:, 0], uv[:, 1], 2] = rng.uniform(1, 200, N_DOTS)
    return image, posmap, uv


def _write_sample(root, name, image, posmap, extra_info=None):
    d = root / name
    d.mkdir(parents=True)
    atomic_write_image(d / f"{name}_cropped.jpg", image)
    np.save(d / f"{name}_cropped_uv_posmap.npy", posmap)
    info = {"matrix": np.eye(3), "scale": np.array([[1.0]]), "z_shift": np.array([[0.0]]),
            "image_size": np.array([450, 450]), "pose_para": np.zeros((1, 7)), "kpt": np.zeros((68, 3))}
    info.update(extra_info or {})
    scipy.io.savemat(d / f"{name}_bbox_info.mat", info)


def _write_index(root, rows, filename="index.tsv"):
    text = "name\tstatus\treason\n" + "".join(f"{n}\t{s}\t{r}\n" for n, s, r in rows)
    (root / filename).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """8 usable samples (dots + posmaps) and 2 'skipped' index rows whose folders do not exist."""
    root = tmp_path_factory.mktemp("processed")
    rng = np.random.default_rng(5)
    truth = {}
    for k in range(8):
        name = f"AFW_{100 + k}_1_0"
        image, posmap, uv = _dots_sample(rng)
        _write_sample(root, name, image, posmap)
        truth[name] = (posmap, uv)
    rows = [(n, "ok", "") for n in truth] + [("bad_1", "skipped", "image x is empty"), ("bad_2", "skipped", "x")]
    _write_index(root, rows)
    return root, truth


def _dot_centroids(image_chw: torch.Tensor, points: np.ndarray, half: int = 4) -> np.ndarray:
    """Intensity centroid of the image (3, H, W) tensor in a (2 half + 1)^2 window around each (x, y) point."""
    img = image_chw.numpy().mean(axis=0).astype(np.float64)
    out = []
    for x, y in points:
        cx, cy = int(round(x)), int(round(y))
        win = img[cy - half:cy + half + 1, cx - half:cx + half + 1]
        win = np.clip(win - np.median(img), 0, None)
        yy, xx = np.mgrid[cy - half:cy + half + 1, cx - half:cx + half + 1]
        out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
    return np.array(out)


# -- index -------------------------------------------------------------------------------------------------------
def test_read_index_keeps_ok_rows_only(processed):
    root, truth = processed
    assert read_index(root) == sorted(truth)


def test_read_index_shards_fallback_and_errors(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_cropped.jpg").write_bytes(b"x")
        (tmp_path / name / f"{name}_cropped_uv_posmap.npy").write_bytes(b"x")
    (tmp_path / "not_a_sample").mkdir()
    assert read_index(tmp_path) == ["a", "b", "c"]  # no index: scan the folders
    _write_index(tmp_path, [("a", "ok", ""), ("b", "skipped", "r")], "index.shard0of2.tsv")
    _write_index(tmp_path, [("c", "ok", ""), ("d", "skipped", "r")], "index.shard1of2.tsv")
    assert read_index(tmp_path) == ["a", "c"]
    (tmp_path / "index.tsv").write_text("name\tstatus\treason\na\tmaybe\t\n", encoding="utf-8")
    with pytest.raises(FaceUtilError, match="index.tsv line 2"):
        read_index(tmp_path)
    with pytest.raises(FaceUtilError, match="does not exist"):
        read_index(tmp_path / "missing")


def test_split_names_deterministic_disjoint_grouped():
    names = [f"HELEN_{p}_1_{k}" for p in range(200) for k in range(5)] + [f"image{i:05d}" for i in range(100)]
    train, val = split_names(names, val_fraction=0.1, seed=3)
    assert (train, val) == split_names(list(reversed(names)), val_fraction=0.1, seed=3)  # order-independent
    assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert 110 <= len(val) <= 115  # round(0.1 * 1100) = 110, completed to whole groups of <= 5
    assert not {group_of(n) for n in train} & {group_of(n) for n in val}  # no photo on both sides
    assert group_of("HELEN_7_1_3") == "HELEN_7_1" and group_of("image00002") == "image00002"
    assert split_names(names, val_fraction=0.1, seed=4)[1] != val
    assert split_names(names, val_fraction=0.0) == (sorted(names), [])
    with pytest.raises(ValueError):
        split_names(names, val_fraction=1.0)


# -- PosmapDataset -----------------------------------------------------------------------------------------------
def test_item_shapes_dtypes_and_scales(processed):
    root, truth = processed
    ds = PosmapDataset(root)
    assert len(ds) == 8 and ds.names == sorted(truth)
    item = ds[3]
    name = ds.names[3]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["posmap"].shape == (3, S, S) and item["posmap"].dtype == torch.float32
    assert item["index"] == 3
    expected_image = read_image(root / name / f"{name}_cropped.jpg").transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["image"].numpy(), expected_image, atol=1e-6)
    np.testing.assert_allclose(item["posmap"].numpy(), truth[name][0].transpose(2, 0, 1) / POSMAP_SCALE,
                               rtol=1e-6)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    with pytest.raises(IndexError):
        ds[8]


def test_posmaps_are_memory_mapped_lazily(processed):
    root, _ = processed
    ds = PosmapDataset(root)
    assert not any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in vars(ds).values())  # nothing opened
    assert isinstance(ds.posmap_array(0), np.memmap)
    assert len(pickle.dumps(ds)) < 4096  # what a worker receives: names and settings, no position maps


def test_pre_read_one_shared_array(processed):
    root, truth = processed
    ds = PosmapDataset(root, pre_read=True)
    whole = ds.shared_posmaps
    assert whole.shape == (8, S, S, 3) and whole.dtype == torch.float32
    a0, a5 = ds.posmap_array(0), ds.posmap_array(5)
    assert not isinstance(a0, np.memmap)
    assert np.shares_memory(a0, whole.numpy()) and np.shares_memory(a5, whole.numpy())  # views of the one array
    for i, name in enumerate(ds.names):
        np.testing.assert_array_equal(ds[i]["posmap"].numpy() * POSMAP_SCALE,
                                      (truth[name][0].transpose(2, 0, 1) / POSMAP_SCALE) * POSMAP_SCALE)
    half = PosmapDataset(root, pre_read=True, pre_read_dtype="float16")
    for i, name in enumerate(half.names):
        err = np.abs(half[i]["posmap"].numpy() * POSMAP_SCALE - truth[name][0].transpose(2, 0, 1))
        assert err.max() <= 0.0625 + 1e-4  # documented bound for |value| < 256


def test_rotation_moves_image_and_posmap_values_together():
    image, posmap, uv = _dots_sample(np.random.default_rng(11))
    for angle in (-90.0, -37.3, 12.5, 90.0):
        out_img, out_pos = rotate(image, posmap, angle)
        pts = out_pos[uv[:, 0], uv[:, 1]]
        found = _dot_centroids(torch.from_numpy(out_img.transpose(2, 0, 1).astype(np.float32)), pts[:, :2])
        assert np.abs(found - pts[:, :2]).max() < 1.0, angle
        np.testing.assert_array_equal(out_pos[..., 2], posmap[..., 2])  # depth unchanged
        outside = ~np.any(posmap != 0, axis=-1)
        assert not np.any(out_pos[outside])  # pixels outside the UV mesh stay zero
    # +90 degrees is counter-clockwise as displayed: the point right of the centre goes to the top.
    probe = np.zeros((S, S, 3), np.float32)
    probe[0, 0] = (227.5, 127.5, 5.0)
    np.testing.assert_allclose(rotate(image, probe, 90.0)[1][0, 0], (127.5, 27.5, 5.0), atol=1e-4)


def test_augmented_items_keep_image_and_posmap_consistent(processed, monkeypatch):
    root, truth = processed
    monkeypatch.setattr(augment_mod, "ERASE_P", 0.0)  # an erased dot could not be located; tested separately
    ds = PosmapDataset(root, augment=True, seed=1)
    rotated = 0
    for epoch in range(3):
        for i, name in enumerate(ds.names):
            item = ds[(epoch, i)]
            _, uv = truth[name]
            pts = item["posmap"].numpy().transpose(1, 2, 0)[uv[:, 0], uv[:, 1]] * POSMAP_SCALE
            found = _dot_centroids(item["image"], pts[:, :2])
            assert np.abs(found - pts[:, :2]).max() < 1.0, (epoch, name)
            rotated += not np.allclose(pts, truth[name][0][uv[:, 0], uv[:, 1]], atol=1e-3)
    assert 4 <= rotated <= 20  # p 0.5 of 24 draws


def test_erasing_and_colour_touch_the_image_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    erased = random_erase(image, np.random.default_rng(1))
    changed = np.any(erased != image, axis=-1)
    ys, xs = np.nonzero(changed)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0.02 * S * S * 0.9 <= box <= 0.33 * S * S * 1.1 and changed.sum() > 0.9 * box  # one rectangle
    gains = np.array([0.6, 1.0, 1.4])
    scaled = colour_scale(image, gains)
    np.testing.assert_array_equal(scaled, np.clip(np.rint(image * gains), 0, 255).astype(np.uint8))
    _, posmap, _ = _dots_sample(rng)
    counts = np.zeros(3)
    for seed in range(200):  # posmap changes only through rotation; the inputs are never modified
        img0, pos0 = image.copy(), posmap.copy()
        out_img, out_pos = augment(image, posmap, np.random.default_rng(seed))
        np.testing.assert_array_equal(image, img0)
        np.testing.assert_array_equal(posmap, pos0)
        counts[0] += not np.array_equal(out_pos, posmap)
    assert 70 <= counts[0] <= 130  # rotation p 0.5


def test_evaluation_dataset_is_not_augmented(processed):
    root, truth = processed
    ds = PosmapDataset(root, augment=False)
    ds.set_epoch(7)
    a, b = ds[2], ds[(3, 2)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["posmap"], b["posmap"])


# -- loader ------------------------------------------------------------------------------------------------------
def _epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(b["index"].clone(), b["image"].clone(), b["posmap"].clone()) for b in loader]


def test_same_seed_same_samples_for_any_worker_count(processed):
    root, _ = processed
    results = {}
    for workers in (0, 2):
        ds = PosmapDataset(root, augment=True, seed=9)
        loader = build_loader(ds, batch_size=3, workers=workers, shuffle=True, seed=9)
        assert loader.persistent_workers == (workers > 0)
        assert loader.pin_memory == torch.cuda.is_available()  # pinned only for a CUDA device
        results[workers] = [_epoch_batches(loader, e) for e in (0, 1)]
        del loader
    for e in (0, 1):
        for (i0, x0, p0), (i2, x2, p2) in zip(results[0][e], results[2][e]):
            assert torch.equal(i0, i2) and torch.equal(x0, x2) and torch.equal(p0, p2)
    # The epoch reached the persistent workers: epoch 1 differs from epoch 0 in order and augmentation, and
    # each item equals the in-process item for (epoch, index).
    ds = PosmapDataset(root, augment=True, seed=9)
    idx0 = torch.cat([b[0] for b in results[2][0]])
    idx1 = torch.cat([b[0] for b in results[2][1]])
    assert not torch.equal(idx0, idx1) and sorted(idx1.tolist()) == list(range(8))
    first = results[2][1][0]
    assert torch.equal(first[1][0], ds[(1, int(first[0][0]))]["image"])


def test_dataset_set_epoch_alone_drives_the_loader(processed):
    root, _ = processed
    ds = PosmapDataset(root, augment=True, seed=2)
    loader = build_loader(ds, batch_size=8, workers=0, shuffle=True, seed=2)
    ds.set_epoch(4)
    assert loader.sampler.epoch == 4
    batch = next(iter(loader))
    assert torch.equal(batch["image"][0], ds[(4, int(batch["index"][0]))]["image"])


def test_distributed_sampler_splits_ranks_disjointly(processed):
    root, _ = processed
    ds = PosmapDataset(root)
    seen = []
    for rank in (0, 1):
        loader = build_loader(ds, batch_size=2, workers=0, shuffle=True, seed=5, rank=rank, world_size=2)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.num_replicas == 2
        loader.sampler.set_epoch(1)
        seen.append(torch.cat([b["index"] for b in loader]).tolist())
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(8))


# -- AFLWEvalSet -------------------------------------------------------------------------------------------------
def _aflw_folder(root, rng):
    """3 good AFLW2000-3D-format samples and 3 bad ones; returns {name: (pt3d (68, 3), pose (7,))}."""
    root.mkdir()
    good = {}
    for k in range(3):
        name = f"image{k:05d}"
        image = rng.integers(0, 256, (450, 450, 3), dtype=np.uint8)
        pt3d = np.column_stack([rng.uniform(150, 300, 68), rng.uniform(140, 320, 68), rng.uniform(0, 80, 68)])
        pose = np.array([0.1, rng.uniform(-1.5, 1.5), -0.2, 225.0, 225.0, -50.0, 1.3e-3])
        atomic_write_image(root / f"{name}.jpg", image)
        scipy.io.savemat(root / f"{name}.mat", {"pt3d_68": pt3d.T.astype(np.float32),
                                                "Pose_Para": pose[None].astype(np.float32),
                                                "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))})
        good[name] = (pt3d, pose)
    atomic_write_image(root / "image09000.jpg", image)                        # no .mat
    (root / "image09001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")      # broken image
    scipy.io.savemat(root / "image09001.mat", {"pt3d_68": pt3d.T, "Pose_Para": pose[None],
                                               "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))})
    atomic_write_image(root / "image09002.jpg", image)                        # .mat without pt3d_68
    scipy.io.savemat(root / "image09002.mat", {"Pose_Para": pose[None], "Shape_Para": np.zeros((199, 1)),
                                               "Exp_Para": np.zeros((29, 1))})
    return good


def test_aflw_eval_set_raw_folder_uses_the_deterministic_crop(tmp_path):
    good = _aflw_folder(tmp_path / "aflw", np.random.default_rng(2))
    ds = AFLWEvalSet(tmp_path / "aflw")
    assert ds.names == sorted(good) and len(ds) == 3
    assert sorted(n for n, _ in ds.skipped) == ["image09000", "image09001", "image09002"]
    assert all(isinstance(r, str) and r for _, r in ds.skipped)
    for i, name in enumerate(ds.names):
        pt3d, pose = good[name]
        item = ds[i]
        sim = crop_similarity(pt3d[:, :2], rng=None)
        np.testing.assert_allclose(item["matrix"], sim.matrix, atol=1e-4)
        assert item["scale"] == pytest.approx(sim.scale, rel=1e-5)
        expected = sim.warp_image(read_image(tmp_path / "aflw" / f"{name}.jpg"), S).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(item["pt3d_68"], pt3d, atol=1e-3)
        assert item["yaw"] == pytest.approx(math.degrees(pose[1]), abs=1e-4)
        assert item["name"] == name and "posmap" not in item
    batch = next(iter(build_loader(ds, batch_size=3, workers=0)))
    assert batch["image"].shape == (3, 3, S, S) and batch["name"] == ds.names


def test_aflw_eval_set_processor_output(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "crop"
    pt3d = rng.uniform(100, 300, (68, 3))
    image, posmap, _ = _dots_sample(rng)
    matrix = np.array([[0.8, 0.0, -20.0], [0.0, 0.8, -30.0], [0.0, 0.0, 1.0]])
    _write_sample(root, "image00002", image, posmap, {"pt3d_68": pt3d, "matrix": matrix,
                                                        "scale": np.array([[0.8]]),
                                                        "pose_para": np.array([[0, 0.7, 0, 0, 0, 0, 1e-3]])})
    _write_sample(root, "image00004", image, posmap)  # processed without --isOldKpt: no pt3d_68
    _write_index(root, [("image00002", "ok", ""), ("image00004", "ok", "")])
    ds = AFLWEvalSet(root)
    assert ds.names == ["image00002"] and ds.skipped[0][0] == "image00004" and "pt3d_68" in ds.skipped[0][1]
    item = ds[0]
    np.testing.assert_allclose(item["matrix"], matrix)
    assert item["scale"] == pytest.approx(0.8) and item["yaw"] == pytest.approx(math.degrees(0.7))
    np.testing.assert_allclose(item["posmap"].numpy(), posmap.transpose(2, 0, 1) / POSMAP_SCALE, rtol=1e-6)
    np.testing.assert_allclose(item["pt3d_68"], pt3d, atol=1e-3)


def test_aflw_eval_set_on_genuine_samples(shared_data):
    folder = shared_data / "aflw2000_samples"
    ds = AFLWEvalSet(folder)
    assert len(ds) == 31 and ds.skipped == []
    rows = dict(line.split("\t")[:2] for line in (shared_data / "aflw2000_gt" / "sample_index.tsv")
                .read_text().splitlines() if line and not line.startswith("name"))
    yaw_gt = np.load(shared_data / "aflw2000_gt" / "AFLW2000-3D.pose.npy")
    pts_gt = np.load(shared_data / "aflw2000_gt" / "AFLW2000-3D.pts68.npy")
    for i in (0, 17, 30):
        item, name = ds[i], ds.names[i]
        row = int(rows[name])
        assert item["yaw"] == pytest.approx(float(yaw_gt[row]), abs=1e-3)
        np.testing.assert_allclose(item["pt3d_68"], pts_gt[row].T, atol=1e-4)
        crop_pts = np.c_[item["pt3d_68"][:, :2], np.ones(68)] @ item["matrix"].T
        assert crop_pts[:, :2].min() > 0 and crop_pts[:, :2].max() < S - 1  # the face sits inside the crop


def test_augment_without_rotation_draws_the_same_numbers_and_skips_only_the_rotation():
    from data.augment import augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    posmap = rng.uniform(1, 250, size=(256, 256, 3)).astype(np.float32)
    seen = set()
    for s in range(40):
        draws = np.random.default_rng([s, 0, 0])
        draws.random(), draws.uniform(size=3)
        did_rotate = draws.random() < 0.5                       # the rotation decision (third draw, p 0.5)
        a_img, a_pos = augment(image, posmap, np.random.default_rng([s, 0, 0]))
        b_img, b_pos = augment(image, posmap, np.random.default_rng([s, 0, 0]), rotation=False)
        assert np.array_equal(b_pos, posmap)
        if not did_rotate:
            assert np.array_equal(a_img, b_img) and np.array_equal(a_pos, b_pos)
        else:
            assert not np.array_equal(a_pos, posmap)
        seen.add(did_rotate)
    assert seen == {True, False}


def test_loader_workers_start_after_the_parent_used_opencv_threads():
    """OpenCV's thread pool is not fork-safe: a forked worker that resets its thread count after the parent used
    the pool hangs for ever (it did, before build_loader set the parent single-threaded). Run in a child process
    with a time limit, so a hang fails the test instead of the suite."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import numpy as np, cv2, torch\n"
            "from data.loader import build_loader\n"
            "img = np.zeros((2000, 2000, 3), np.uint8)\n"
            "cv2.warpAffine(img, np.float32([[1, 0.1, 0], [0.1, 1, 0]]), (2000, 2000))\n"
            "class D(torch.utils.data.Dataset):\n"
            "    def __len__(self): return 4\n"
            "    def __getitem__(self, i): return torch.zeros(1)\n"
            "print(sum(1 for _ in build_loader(D(), batch_size=2, workers=2)))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("loader workers hung after the parent used OpenCV's thread pool")
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]
