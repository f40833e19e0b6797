"""The shared plotting module: a figure is written atomically with the requested size, its series drawn."""
from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks.plots import Panel, Series, save_figure


def test_a_two_panel_figure_has_its_size_and_its_lines(tmp_path):
    x = np.arange(0, 181, 15)
    panels = [Panel(title, [Series("model", x, 5 + 0.3 * x, err=np.full(len(x), 1.0)),
                            Series("mean face", x, np.full(len(x), 20.0), reference=True)],
                    xlabel="test rotation (deg)", ylabel="2D NME (%)", xticks=[0, 90, 180], vlines=[0, 90, 180])
              for title in ("without", "with")]
    path = save_figure(panels, tmp_path / "fig.png", panel_size=(4.0, 3.0), dpi=100)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (350, 800, 3)                 # 2 x 4 in wide; 3 in + 0.5 in for the legend below, at 100 dpi
    # the palette's first colour (#0072B2) is drawn in both halves; the reference grey too
    blue = np.all(np.abs(image.astype(int) - [0x00, 0x72, 0xB2]) < 8, axis=2)
    assert blue[:, :400].sum() > 200 and blue[:, 400:].sum() > 200
    grey = np.all(np.abs(image.astype(int) - [0x77, 0x77, 0x77]) < 8, axis=2)
    assert grey.sum() > 100
    assert not list(tmp_path.glob(".*"))                # no temp file left behind


def test_one_panel_keeps_its_legend_inside_and_gaps_for_missing_values(tmp_path):
    y = np.array([1.0, 2.0, np.nan, 4.0])
    path = save_figure([Panel("", [Series("a", [0, 1, 2, 3], y)], xlabel="x", ylabel="y", ymin=None)],
                       tmp_path / "one.png", panel_size=(3.0, 2.0), dpi=100)
    assert np.asarray(Image.open(path)).shape[:2] == (200, 300)
