"""engine.shipped (issue 25, item 4): the shipped network's file (weights only, float16 parameters, checksum), the
one-sentence errors for an absent or damaged file, and `-predict` falling back to it when no --loadModelPath is
given. A small untrained network with a random output layer stands in for the trained one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import shipped
from engine.errors import RunError


#: float16 weights against the float32 network: median and largest 2D landmark shift, crop px (measured 0.037 /
#: 0.41 px on the session's trained network; bf16 weights: 0.34 / 3.5 px, tests/test_trained_backends.py)
FP16_MEDIAN_PX, FP16_MAX_PX = 0.2, 2.0


@pytest.fixture(scope="module")
def source(trained_e2tkface):
    """(checkpoint path, the network): the session's small trained E2TKFace (tests.helpers.train_small_e2tkface)."""
    return trained_e2tkface.checkpoint, trained_e2tkface.net


def test_shipped_file_halves_the_weights_is_checked_and_predicts_like_the_source(source, trained_e2tkface, tmp_path,
                                                                        one_torch_thread):
    from engine.checkpoint import load_checkpoint
    from engine.loading import load_network
    from tests.helpers import landmark_shift_px

    path, net = source
    dest = shipped.ship(path, tmp_path / "weights" / "net.pth", {"trained_on": "16 synthetic crops (a test)"})
    digest = shipped.digest_path(dest).read_text().split()
    assert digest == [shipped.sha256(dest), "net.pth"] and shipped.shipped_path(dest) == dest
    ck = load_checkpoint(dest)
    assert ck["shipped"] == {"source": str(path), "epoch": None, "trained_on": "16 synthetic crops (a test)"}
    assert "optimizer" not in ck and ck["bfm"] == "synthetic" and ck["model_name"] == "e2tkface"
    params = dict(net.named_parameters())
    assert all(ck["model"][k].dtype == torch.float16 for k in params)
    assert ck["model"]["io.mean_posmap"].dtype == torch.float32          # buffers keep their dtype
    source_weights = load_checkpoint(path)["model"]
    size = {k: sum(w[n].numel() * w[n].element_size() for n in params) for k, w in (("source", source_weights),
                                                                                    ("shipped", ck["model"]))}
    assert size["shipped"] * 2 == size["source"] and dest.stat().st_size < path.stat().st_size
    with torch.no_grad():
        got = load_network(dest, export=False).module.eval()(trained_e2tkface.images).numpy()
    shift = landmark_shift_px(got, trained_e2tkface.eager, trained_e2tkface.kpt_ind)
    print(f"float16 weights: landmark shift median {np.median(shift):.3f} px, largest {shift.max():.3f} px")
    assert 0 < np.median(shift) <= FP16_MEDIAN_PX and shift.max() <= FP16_MAX_PX, (np.median(shift), shift.max())


def test_absent_or_damaged_shipped_file_is_one_sentence(source, tmp_path):
    path, _ = source
    with pytest.raises(RunError, match="no shipped network is at .*; pass --loadModelPath=PATH") as err:
        shipped.shipped_path(tmp_path / "none.pth")
    assert shipped.REBUILD in str(err.value) and "\n" not in str(err.value)
    dest = shipped.ship(path, tmp_path / "net.pth")
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    with pytest.raises(RunError, match="is damaged .*git checkout"):
        shipped.shipped_path(dest)
    shipped.ship(path, dest)
    shipped.digest_path(dest).unlink()                                  # no checksum: not trusted either
    with pytest.raises(RunError, match="is damaged"):
        shipped.shipped_path(dest)


def test_predict_without_load_model_path_uses_the_shipped_network(source, tmp_path, monkeypatch, capsys):
    import cv2

    import torchrun

    path, _ = source
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))
    argv = [f"-predict={image}", "--bbox=60,40,260,220", "--device=cpu"]
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "weights" / "absent.pth")
    assert torchrun.main(argv + [f"-o={tmp_path / 'none'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert "no shipped network is at" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(shipped, "SHIPPED", shipped.ship(path, tmp_path / "weights" / "net.pth"))
    assert torchrun.main(argv + [f"-o={tmp_path / 'out'}"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "face_kpt.txt").is_file() or any((tmp_path / "out").rglob("*kpt*"))
