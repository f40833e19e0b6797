"""benchmarks/rotation_study.py: test-set rotation, NME after rotation, the no-rotation augmentation, the report."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import rotation_study as rs
from faceutil.crop import crop_similarity


def _blob_image(x: float, y: float, size: int = 256, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    w = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


@pytest.mark.parametrize("angle", [30, 90, 135, 180, -60])
def test_rotate_crop_moves_a_dot_where_the_landmark_goes(angle):
    point = np.array([[181.3, 64.7, 12.0]])
    image = _blob_image(*point[0, :2])
    rotated, moved, sim = rs.rotate_crop(image, point, angle)
    assert rotated.shape == image.shape and rotated.dtype == np.uint8
    assert np.linalg.norm(_centroid(rotated) - moved[0, :2]) < 1.0
    assert moved[0, 2] == pytest.approx(12.0)                      # depth untouched (scale 1)
    # counter-clockwise as displayed: a point right of centre goes up (smaller row) for +90
    if angle == 90:
        c = 127.5
        assert moved[0, 0] == pytest.approx(c + (point[0, 1] - c))
        assert moved[0, 1] == pytest.approx(c - (point[0, 0] - c))


def _items(n: int = 6, seed: int = 0) -> list:
    """AFLWEvalSet-like items with random landmarks in a 450 px image and yaw spread over the three bins."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        centre = rng.uniform(180, 270, size=2)
        pts = np.concatenate([centre + rng.normal(0, 40, size=(68, 2)), rng.normal(0, 20, size=(68, 1))], axis=1)
        sim = crop_similarity(pts[:, :2])
        items.append({"image": torch.rand(3, 256, 256), "matrix": torch.from_numpy(sim.matrix.copy()),
                      "scale": float(sim.scale), "pt3d_68": torch.from_numpy(pts.astype(np.float32)),
                      "yaw": float([10, -45, 75][i % 3]), "name": f"s{i}", "index": i})
    return items


class _Oracle(nn.Module):
    """Returns, batch after batch, position maps holding given crop-pixel landmarks at the kpt_ind pixels."""

    def __init__(self, crop_points: list, kpt_ind: np.ndarray):
        super().__init__()
        self.maps = []
        for pts in crop_points:
            m = np.zeros((256, 256, 3), np.float32)
            m[kpt_ind[1], kpt_ind[0]] = pts
            self.maps.append(torch.from_numpy(m.transpose(2, 0, 1) / np.float32(280.0)))
        self.k = 0

    def forward(self, x):
        out = torch.stack(self.maps[self.k:self.k + x.shape[0]])
        self.k += x.shape[0]
        return out


def _kpt_ind() -> np.ndarray:
    flat = np.random.default_rng(3).choice(256 * 256, size=68, replace=False)
    return np.stack([flat % 256, flat // 256]).astype(np.int64)


@pytest.mark.parametrize("angle", [0, 30, 90, 135, 180])
def test_exact_prediction_on_a_rotated_crop_scores_zero(angle):
    from engine.evaluate import evaluate_model
    from faceutil.crop import Similarity

    items, kpt = _items(), _kpt_ind()
    data = rs.RotatedEvalSet(items, angle)
    # the truth as it appears in the rotated crop: rotate the crop-pixel landmarks with rotate_crop
    exact = []
    for it in items:
        crop_pts = Similarity(it["matrix"].numpy()).apply(it["pt3d_68"].numpy())
        exact.append(rs.rotate_crop(np.zeros((256, 256, 3), np.uint8), crop_pts, angle)[1])
    report = evaluate_model(_Oracle(exact, kpt), data, kpt, None, "cpu", batch_size=4)
    assert np.all(report.nme2d < 1e-3)
    if angle:  # the unrotated landmarks are wrong on a rotated crop: the rotation really is applied
        unrotated = [Similarity(it["matrix"].numpy()).apply(it["pt3d_68"].numpy()) for it in items]
        wrong = evaluate_model(_Oracle(unrotated, kpt), rs.RotatedEvalSet(items, angle), kpt, None, "cpu", 4)
        assert np.all(wrong.nme2d > 5.0)
    bins = rs.evaluate_angles(_Oracle(exact * 1, kpt), items, kpt, "cpu", 4, angles=(angle,))[angle]["bins"]
    assert bins["counts"] == {"|yaw|<=30": 2, "30<|yaw|<=60": 2, "|yaw|>60": 2}


def test_rotated_item_image_and_matrix_agree():
    item = _items(1)[0]
    image = (item["image"].numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    got = rs.RotatedEvalSet([item], 60)[0]
    want, _, sim = rs.rotate_crop(image, np.zeros((0, 2)), 60)
    assert np.array_equal((got["image"].numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8), want)
    assert np.allclose(got["matrix"].numpy(), sim.matrix @ item["matrix"].numpy())
    assert "posmap" not in got and got["name"] == "s0"


def _fake_runs(cnn_better: bool) -> list:
    runs = []
    for seed in (0, 1):
        for label, name, _ in rs.MODELS:
            for rotation in (True, False):
                base = 5.0 + seed * 0.1
                slope = 0.01 if label in rs.EQUIVARIANT else 0.05
                if cnn_better:
                    slope = 0.05 if label in rs.EQUIVARIANT else 0.01
                nme = {}
                for a in rs.ANGLES:
                    v = base + slope * a
                    nme[a] = {"mean": v, "bins": {"|yaw|<=30": v, "30<|yaw|<=60": v + 1, "|yaw|>60": float("nan"),
                                                  "counts": {"|yaw|<=30": 3, "30<|yaw|<=60": 2, "|yaw|>60": 0},
                                                  "mean_of_bins": v + 0.5, "mean": v}}
                runs.append({"label": label, "model": name, "kwargs": {}, "rotation": rotation, "seed": seed,
                             "facts": {"train_seconds": 1.0, "steps": 3}, "nme": nme})
    return runs


def _meta() -> dict:
    return {"command": "python -m benchmarks.rotation_study --x", "date": "2026-11-25 00:00 UTC", "machine": "m",
            "device": "cpu", "steps": 3, "batch": 2, "minutes": 0.0, "lr": 5e-4, "seeds": [0, 1], "data_seed": 0,
            "train_count": 4, "test_count": 5, "width_mult": 0.5, "smoke": False,
            "baseline": {str(a): 50.0 for a in rs.ANGLES}}


def _tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


@pytest.mark.parametrize("cnn_better", [False, True])
def test_report_writes_parseable_markdown_and_png(tmp_path, cnn_better):
    md_path, png_path = rs.write_report(tmp_path, _fake_runs(cnn_better), _meta())
    text = md_path.read_text()
    tables = _tables(text)
    assert len(tables) == 2
    for table in tables:
        assert len({len(r) for r in table}) == 1                    # every row has the header's column count
        assert all(re.fullmatch(r"-+", c) for c in table[1])
    assert len(tables[0]) == 3 + 2 * len(rs.MODELS)                 # + the mean-face reference row
    assert len(tables[1]) == 2 + 2 * len(rs.MODELS)
    assert tables[0][-1][0].startswith("mean face") and tables[0][-1][2] == "50.00"
    header = tables[0][0]
    assert header[2:2 + len(rs.ANGLES)] == [f"{a}°" for a in rs.ANGLES]
    row = tables[0][2]
    assert row[0] == "E2TKFace faithful" and row[1] == "rotation"
    m, s = (float(v) for v in row[2].split("±"))
    assert m == pytest.approx(5.05) and s == pytest.approx(0.0707, abs=1e-3)
    assert "python -m benchmarks.rotation_study --x" in text
    if cnn_better:
        assert "is NOT more robust" in text and "IS more robust" not in text
    else:
        assert "IS more robust" in text and "NOT" not in text
    img = cv2.imread(str(png_path))
    assert img is not None and img.ndim == 3 and img.shape[0] > 200 and (img < 250).any()
    assert (tmp_path / "rotation.json").is_file()


def test_arguments_refuse_unsafe_or_crashing_settings():
    with pytest.raises(SystemExit):
        rs.parse_args(["--smoke"])                                  # would overwrite benchmarks/results
    with pytest.raises(SystemExit):
        rs.parse_args(["--width-mult", "0.25"])
    with pytest.raises(SystemExit):
        rs.parse_args(["--seeds", "0"])
    args = rs.parse_args(["--smoke", "--out", "/tmp/x"])
    assert args.steps == rs.SMOKE["steps"] and args.width_mult == rs.MIN_WIDTH
    assert rs.model_kwargs("prnet", {}, 0.5) == {"input_size": 256, "head": "published"}
    assert rs.model_kwargs("e2tkface", {"encoder": "cnn"}, 0.5, size=128, head="mean-residual") == \
        {"encoder": "cnn", "width_mult": 0.5, "topk": 4, "input_size": 128, "head": "mean-residual"}


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    result = rs.main(["--smoke", "--out", str(tmp_path)])
    assert len(result["runs"]) == 2 * 2 * len(rs.MODELS)
    assert (tmp_path / "rotation.md").is_file() and (tmp_path / "rotation.png").is_file()
    assert all(np.isfinite(r["nme"][a]["mean"]) for r in result["runs"] for a in rs.ANGLES)
    assert sorted(int(a) for a in result["meta"]["baseline"]) == sorted(rs.ANGLES)
    assert "mean face (constant, reference)" in (tmp_path / "rotation.md").read_text()


def test_merge_combines_partial_reports(tmp_path):
    runs = _fake_runs(False)
    half = {"E2TKFace faithful", "E2TKFace aligned"}
    rs.write_report(tmp_path / "a", [r for r in runs if r["label"] in half], _meta())
    rs.write_report(tmp_path / "b", [r for r in runs if r["label"] not in half], _meta())
    result = rs.main(["--merge", str(tmp_path / "a" / "rotation.json"), str(tmp_path / "b" / "rotation.json"),
                      "--out", str(tmp_path / "all")])
    assert len(result["runs"]) == len(runs)
    tables = _tables((tmp_path / "all" / "rotation.md").read_text())
    assert len(tables[0]) == 3 + 2 * len(rs.MODELS)
    assert (tmp_path / "all" / "rotation.png").is_file()


def test_size_option_is_validated():
    with pytest.raises(SystemExit):
        rs.parse_args(["--size", "100", "--out", "/tmp/x"])
    args = rs.parse_args(["--size", "128", "--out", "/tmp/x"])
    assert args.size == 128 and args.topk == 1
