"""The demo-over-seeds report: figures from fake demo summaries with known values."""
from __future__ import annotations

import json

import pytest

from benchmarks import demo_seeds


def _seed_folder(work, seed, after, busy=None, learned=True):
    folder = work / f"s{seed}"
    folder.mkdir(parents=True)
    summary = {"nme2d_before": 19.64, "nme2d_after": after, "nme2d_mean_face": 19.64,
               "after_over_mean_face": after / 19.64, "learned": learned, "epochs_trained": 25,
               "train_seconds": 360.0, "total_seconds": 420.0, "spread_ratio": 0.9}
    (folder / "demo_summary.json").write_text(json.dumps(summary))
    (folder / "run").mkdir()
    history = [{"epoch": e, "step": 35 * e, "spread_ratio": 0.1 * e} for e in (1, 2, 3, 4)]   # >= 0.25 from epoch 3
    (folder / "run" / "history.json").write_text(json.dumps(history))
    if busy is not None:
        (folder / "run.json").write_text(json.dumps({"seed": seed, "command": f"torchrun.py --demo --seed={seed}",
                                                     "rc": 0, "wall_seconds": 400.0 + seed, "cpu_busy": busy}))


def test_summary_ranges_goal_and_shared_cores(tmp_path):
    _seed_folder(tmp_path, 0, 6.0)                       # no run.json: its time is not claimed
    _seed_folder(tmp_path, 1, 7.0, busy=0.93)
    _seed_folder(tmp_path, 2, 9.0, busy=0.45)            # shared cores
    (tmp_path / "s3").mkdir()                            # unfinished: ignored
    rows = demo_seeds.collect(tmp_path)
    assert [r["seed"] for r in rows] == [0, 1, 2]
    line = demo_seeds.summary_line(rows)
    assert "3 seeds: trained 2D NME 6.00–9.00 % (median 7.00 %)" in line
    assert "0.31–0.46 × the mean face (19.64–19.64 % on each seed's own test faces)" in line
    assert "NOT met (2 of 3 seeds within it)" in line                  # 9.0 / 19.64 = 0.458 > 0.4
    assert "whole command 6.7–6.7 min on 1 seed(s) run alone" in line
    assert "by step 105–105" in line
    lines = demo_seeds.table(rows)
    assert lines[3].endswith("| 0.93 |") and lines[4].endswith("| 0.45 (shared) |") and lines[2].endswith("| – |")


def test_report_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="No finished demo"):
        demo_seeds.main(["report", "--work", str(tmp_path)])
