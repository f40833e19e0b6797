"""The demo's pictures: one per test face and an overview strip cut around each face's true landmarks."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from engine.demo import _draw_predictions
from faceutil.sampleio import atomic_write_image, read_image


def test_overview_tiles_are_cut_around_the_true_landmarks(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    names, truth = [], []
    rng = np.random.default_rng(0)
    for k in range(5):
        image = np.zeros((300, 400, 3), np.uint8)
        box = np.array([40 + 30 * k, 60]), np.array([140 + 30 * k, 160])        # a 100 px landmark box
        image[box[0][1]:box[1][1], box[0][0]:box[1][0]] = 200                  # grey where the face is
        atomic_write_image(raw / f"face{k}.jpg", image)
        pts = np.concatenate([rng.uniform(box[0], box[1], (66, 2)), [box[0], box[1]]])
        names.append(f"face{k}")
        truth.append(np.concatenate([pts, np.zeros((68, 1))], axis=1))
    report = SimpleNamespace(names=names, truth=np.array(truth), landmarks=np.array(truth) + 2.0)
    written = _draw_predictions(report, raw, tmp_path / "vis", count=5, overview=4, tile=150)
    assert len(written) == 5 and all(p.is_file() for p in written)
    strip = read_image(tmp_path / "vis" / "overview.png")
    assert strip.shape == (150, 600, 3)
    for k in range(4):            # the 100 px box fills the middle 2/3 of each 150 px tile (cut 1.5x the box)
        tile = strip[:, 150 * k:150 * (k + 1)].astype(int)
        assert np.median(tile[50:100, 50:100]) > 120 and tile[:10, :10].mean() < 60     # face in, dark outside
        grey = (np.abs(tile - 200) < 40).all(axis=2)
        rows, cols = np.nonzero(grey)
        assert abs(rows.min() - 25) <= 3 and abs(rows.max() - 125) <= 3
        assert abs(cols.min() - 25) <= 3 and abs(cols.max() - 125) <= 3
