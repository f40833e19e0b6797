"""benchmarks.real_transfer (issue 25): a tiny run is trained on randomised synthetic faces, scored on the genuine
samples as the protocol scores them, resumed without retraining, and reported with the figures it recorded."""
import json

import numpy as np
import pytest

from benchmarks import real_transfer, study_data
from benchmarks.convergence import curves


@pytest.fixture()
def tiny_run(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)                                   # the synthetic data cache is relative: keep it here
    monkeypatch.setattr(study_data, "DATA_WORK", tmp_path / "data")
    monkeypatch.setattr(real_transfer, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(real_transfer, "FULL_LOOK_COUNT", 6)
    (tmp_path / "results").mkdir()
    spec = json.dumps({"train_count": 12, "epochs": 2, "minutes": 1.0, "appearance": "hair,camera", "batch": 6,
                       "warmup": 1, "input_size": 64})
    argv = ["run", f"--out={tmp_path / 'runs'}", "--label=tiny", "--threads=1", f"--spec={spec}"]
    assert real_transfer.main(argv) == 0
    return tmp_path, argv


def test_a_run_is_scored_on_the_genuine_samples_and_reported(tiny_run):
    from engine.evaluate import MeanPosmapModel
    from faceutil.uv import uv_layout

    tmp_path, argv = tiny_run
    curve = json.loads((tmp_path / "runs" / "tiny" / "curve.json").read_text())
    assert curve["spec"]["appearance"] == "hair,camera"
    assert (tmp_path / "data" / "train12-test0-seed0-hair_camera" / "300W_LP" / "appearance.txt").is_file()
    tests = real_transfer.extra_tests()
    assert len(tests["genuine"]) == 31 and len(tests["genuine_frontal"]) == 20 and len(tests["synthetic_full"]) == 6
    train_root = tmp_path / "data" / "train12-test0-seed0-hair_camera" / "300W_LP-crop"
    mean_face = study_data.evaluate_nme(MeanPosmapModel(train_root), tests["genuine"], uv_layout("synthetic").kpt_ind)
    assert curve["mean_face_nme2d_genuine"] == pytest.approx(mean_face, rel=1e-9)
    last = curve["points"][-1]
    assert last["epoch"] == 2 and np.isfinite([last["nme2d_genuine"], last["nme2d_genuine_frontal"],
                                               last["nme2d_synthetic_full"]]).all()

    assert real_transfer.main(argv) == 0                          # done: resumes to nothing, adds no point
    assert json.loads((tmp_path / "runs" / "tiny" / "curve.json").read_text())["points"] == curve["points"]
    # a run made before a test set existed gets it at its end point (from run/last.pth) when run again
    older = json.loads(json.dumps(curve))
    del older["points"][-1]["nme2d_synthetic_full"], older["mean_face_nme2d_synthetic_full"]
    (tmp_path / "runs" / "tiny" / "curve.json").write_text(json.dumps(older))
    assert real_transfer.main(argv) == 0
    backfilled = json.loads((tmp_path / "runs" / "tiny" / "curve.json").read_text())
    assert backfilled["points"][-1]["nme2d_synthetic_full"] == pytest.approx(last["nme2d_synthetic_full"], abs=1e-9)
    assert backfilled["mean_face_nme2d_synthetic_full"] == pytest.approx(curve["mean_face_nme2d_synthetic_full"],
                                                                         abs=1e-9)

    assert real_transfer.main(["report", f"--out={tmp_path / 'runs'}"]) == 0
    row = json.loads((tmp_path / "results" / "real_transfer.json").read_text())["runs"][0]
    assert (row["genuine"], row["genuine_mean"], row["synthetic"]) == \
        (last["nme2d_genuine"], curve["mean_face_nme2d_genuine"], last["nme2d"])
    assert "| tiny | hair,camera | 12 |" in (tmp_path / "results" / "real_transfer.md").read_text()


def test_curve_settings_are_checked():
    with pytest.raises(SystemExit, match="unknown curve settings"):
        curves.run_curve({**curves.CURVE_DEFAULTS, "colour": 1}, None, "x", 1)
