"""Dataset processor: synthetic round trip, bad input, resume after a hard kill, shards, CLI errors."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.ndimage import maximum_filter

from faceutil import crop, sampleio
from faceutil.facemodel import load_model
from faceutil.process import output_paths, process_dataset
from faceutil.render import rasterize
from faceutil.synthetic import synthesize_dataset
from faceutil.uv import build_uv_layout, posmap_landmarks
import processor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return load_model("synthetic")


@pytest.fixture(scope="module")
def layout(model):
    return build_uv_layout(model, 256)


@pytest.fixture(scope="module")
def raw(tmp_path_factory, model):
    """A small 300W-LP-format set and an AFLW2000-format set, made once for the module."""
    root = tmp_path_factory.mktemp("raw")
    synthesize_dataset(root / "lp", "300W_LP", 6, seed=3, model=model)
    synthesize_dataset(root / "aflw", "AFLW2000", 3, seed=4, model=model)
    return root


@pytest.fixture(scope="module")
def processed(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    s_lp = process_dataset(raw / "lp", out / "lp", full=True, visualize=True, progress=False)
    s_aflw = process_dataset(raw / "aflw", out / "aflw", old_kpt=True, progress=False)
    return out, s_lp, s_aflw


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.jpg"))


def test_round_trip_landmarks_within_one_pixel(raw, processed, layout):
    out, s_lp, s_aflw = processed
    assert s_lp.processed == 6 and s_aflw.processed == 3 and not s_lp.skipped and not s_aflw.skipped
    for kind, key in (("lp", "pt2d"), ("aflw", "pt3d_68")):
        for name in _names(raw / kind):
            paths = output_paths(out / kind, name)
            posmap = np.load(paths["posmap"])
            info = sampleio.read_bbox_info(paths["bbox_info"])
            truth = scipy.io.loadmat(raw / kind / f"{name}.mat")[key].T[:, :2]  # (68, 2) original image px
            sim = crop.Similarity(info["matrix"])
            truth_crop = sim.apply(truth)
            got = posmap_landmarks(posmap, layout.kpt_ind)[:, :2]
            err = np.linalg.norm(got - truth_crop, axis=1)
            assert err.max() < 1.0, (name, err.max())
            # and mapping the position-map landmarks back lands on the original annotation
            back = sim.inverse().apply(got)
            assert np.abs(back - truth).max() < 1.0 / sim.scale


def test_position_map_depth_is_the_visible_surface(raw, processed, layout):
    """Every face point lies on or behind the rendered (z-buffer) surface of its mesh; many are on it."""
    from faceutil.mesh import read_obj

    out, _, _ = processed
    for name in _names(raw / "lp")[:3]:
        paths = output_paths(out / "lp", name)
        pts = np.load(paths["posmap"])[layout.face_mask]  # (F, 3) crop x, y, depth
        assert pts[:, 2].min() >= -1e-3
        v_img, tri, _ = read_obj(paths["mesh"])  # the -f mesh, original image px with y up
        info = sampleio.read_bbox_info(paths["bbox_info"])
        v_img[:, 1] = info["image_size"][0] + 1 - v_img[:, 1]
        verts = crop.Similarity(info["matrix"]).apply(v_img.astype(np.float64))
        verts[:, 2] -= info["z_shift"]
        _, _, depth = rasterize(verts.astype(np.float32), tri, 256, 256)
        xi, yi = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
        inside = (xi >= 0) & (xi < 256) & (yi >= 0) & (yi < 256)
        d, z = depth[yi[inside], xi[inside]], pts[inside, 2]
        covered = np.isfinite(d)
        # no face point is in front of the visible surface: its depth is at most the nearest surface within one
        # pixel (rounding to a pixel centre can step over a silhouette edge onto a farther surface). A handful of
        # points on edge-on triangles at the crop border cover no pixel centre at all (measured: <= 17 of ~33k).
        near = maximum_filter(np.where(np.isfinite(depth), depth, -1e9), size=3)[yi[inside], xi[inside]]
        assert np.mean(z[covered] > near[covered] + 0.5) < 1e-3
        # ... and a good share of them are that surface (the rest are hidden, e.g. the far cheek)
        assert np.mean(np.abs(z[covered] - d[covered]) < 1.5) > 0.4
    # and the nose tip (landmark 30) is in front of the outer eye corners (36, 45) in a frontal-ish view
    posmaps = [np.load(p) for p in sorted((out / "lp").glob("*/*_posmap.npy"))]
    kp = [posmap_landmarks(p, layout.kpt_ind) for p in posmaps]
    assert sum(k[30, 2] > max(k[36, 2], k[45, 2]) for k in kp) >= len(kp) // 2


def test_full_mode_writes_mesh_landmarks_and_picture(raw, processed, model):
    from faceutil.mesh import read_obj

    out, _, _ = processed
    name = _names(raw / "lp")[0]
    paths = output_paths(out / "lp", name)
    v, tri, colors = read_obj(paths["mesh"])
    assert v.shape == (model.n_vertices, 3) and np.array_equal(tri, model.triangles)
    assert colors is not None and colors.min() >= 0 and colors.max() <= 1
    kpt = np.loadtxt(paths["kpt"])
    np.testing.assert_allclose(kpt[:, 0], v[model.kpt_ind, 0], atol=1e-3)
    np.testing.assert_allclose(kpt[:, 1], 450 + 1 - v[model.kpt_ind, 1], atol=1e-3)  # the .obj is y-up
    truth = scipy.io.loadmat(raw / "lp" / f"{name}.mat")["pt2d"].T
    np.testing.assert_allclose(kpt[:, :2], truth, atol=1e-2)
    vis = sampleio.read_image(paths["vis"])
    assert vis.shape == (256, 512, 3)
    idx = (out / "lp" / "index.tsv").read_text().splitlines()
    assert idx[0] == "name\tstatus\treason" and all(r.split("\t")[1] == "ok" for r in idx[1:]) and len(idx) == 7


def test_evaluation_crop_is_deterministic_and_keeps_pt3d(raw, processed):
    out, _, _ = processed
    for name in _names(raw / "aflw"):
        info = sampleio.read_bbox_info(output_paths(out / "aflw", name)["bbox_info"])
        pt3d = scipy.io.loadmat(raw / "aflw" / f"{name}.mat")["pt3d_68"].T
        np.testing.assert_allclose(info["pt3d_68"], pt3d, atol=1e-4)
        expect = crop.crop_similarity(pt3d[:, :2], out_size=256, rng=None)
        np.testing.assert_allclose(info["matrix"], expect.matrix, atol=1e-9)


def _copy_pair(src: Path, name: str, dst: Path, new: str | None = None) -> tuple[Path, Path]:
    new = new or name
    j, m = dst / f"{new}.jpg", dst / f"{new}.mat"
    shutil.copy(src / f"{name}.jpg", j)
    shutil.copy(src / f"{name}.mat", m)
    return j, m


def test_bad_samples_are_skipped_with_reasons(raw, tmp_path, capsys):
    src = raw / "lp"
    good = _names(src)
    bad = tmp_path / "in"
    bad.mkdir()
    for n in good[:2]:
        _copy_pair(src, n, bad)
    # kinds of bad input, each from a good sample
    j, _ = _copy_pair(src, good[2], bad, "truncated")
    j.write_bytes(j.read_bytes()[: len(j.read_bytes()) // 2])
    j, _ = _copy_pair(src, good[2], bad, "zero_byte")
    j.write_bytes(b"")
    _, m = _copy_pair(src, good[2], bad, "no_mat")
    m.unlink()
    _, m = _copy_pair(src, good[2], bad, "no_pose")
    d = scipy.io.loadmat(m)
    d.pop("Pose_Para")
    scipy.io.savemat(m, {k: v for k, v in d.items() if not k.startswith("__")})
    for tag, key, value in (("nan_shape", "Shape_Para", np.nan), ("short_exp", "Exp_Para", None),
                            ("outside", "Pose_Para", None)):
        _, m = _copy_pair(src, good[2], bad, tag)
        d = {k: v for k, v in scipy.io.loadmat(m).items() if not k.startswith("__")}
        if tag == "nan_shape":
            d[key][5, 0] = value
        elif tag == "short_exp":
            d[key] = d[key][:10]
        else:
            d[key][0, 3] += 5000.0  # translate the face far off the image
        scipy.io.savemat(m, d)
    (bad / "not_an_image.jpg").write_text("hello")
    shutil.copy(src / f"{good[2]}.mat", bad / "not_an_image.mat")
    sub = bad / "sub"
    sub.mkdir()
    _copy_pair(src, good[0], sub)  # duplicate name in a sub-folder

    out = tmp_path / "out"
    code = processor.main([f"-i={bad}", f"-o={out}", "--progress=False"])
    text = capsys.readouterr().out
    assert code == 1
    rows = dict((r.split("\t")[0], r.split("\t")[1:]) for r in (out / "index.tsv").read_text().splitlines()[1:])
    for n in good[:2]:
        assert rows[n] == ["ok", ""] and output_paths(out, n)["posmap"].is_file()
    expected = {"truncated": "truncated", "zero_byte": "empty", "no_mat": "missing", "no_pose": "Pose_Para",
                "nan_shape": "Shape_Para", "short_exp": "Exp_Para", "outside": "outside",
                "not_an_image": "not_an_image"}
    for n, word in expected.items():
        status, reason = rows[n]
        assert status == "skipped" and word.lower() in reason.lower(), (n, reason)
        assert f"skipped {n}:" in text
        assert not (out / n).exists() or not any((out / n).iterdir())
    assert "duplicate" in text
    # nothing temporary is left anywhere
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_cli_errors_are_one_sentence(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ([f"-i={empty}", f"-o={tmp_path / 'o'}"], "holds no images"),
        ([f"-i={tmp_path / 'missing'}", f"-o={tmp_path / 'o'}"], "does not exist"),
        ([f"-i={empty}"], "-o"),
        (["--synthesize=300W_LP", "--count=2", f"-o={blocker / 'sub'}"], "cannot"),
        ([f"-i={empty}", f"-o={tmp_path / 'o'}", "--shard=3/2"], "shard"),
        ([f"-i={empty}", f"-o={tmp_path / 'o'}", "-f=maybe"], "boolean"),
    ]
    for argv, word in cases:
        r = subprocess.run([sys.executable, str(ROOT / "processor.py"), *argv], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr and word.lower() in r.stderr.lower(), (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_shards_partition_the_dataset(raw, tmp_path):
    out = tmp_path / "o"
    s0 = process_dataset(raw / "lp", out, shard=(0, 2), progress=False)
    s1 = process_dataset(raw / "lp", out, shard=(1, 2), progress=False)
    assert s0.processed + s1.processed == 6 and s0.processed == 3
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == _names(raw / "lp")
    rows = [(out / f"index.shard{i}of2.tsv").read_text().splitlines()[1:] for i in range(2)]
    assert not {r.split("\t")[0] for r in rows[0]} & {r.split("\t")[0] for r in rows[1]}


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_after_sigkill_is_byte_identical(raw, tmp_path, model):
    src = tmp_path / "in"
    total = 120                      # ~1 s of work left after the 10th sample: a slow poll still kills half-way
    synthesize_dataset(src, "300W_LP", total, seed=11, model=model)
    ref = tmp_path / "ref"
    assert process_dataset(src, ref, progress=False).processed == total
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "processor.py"), f"-i={src}", f"-o={out}", "--progress=False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/*_bbox_info.mat"))) < 10:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("*/*_bbox_info.mat")))
    assert 0 < done < total, done  # it really was stopped half-way
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"already done {done}" in r.stdout
    assert _tree(out) == _tree(ref)
