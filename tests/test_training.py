"""The real networks through the real training loop (issue 12): E2TKFace must memorise a handful of synthetic
samples far below the mean-map loss, and the mean-residual head and --input-size must survive train -> test ->
predict -> export (fp32 and int8 ONNX) with the mean map travelling in every artefact. Bad head / size / mean-map
inputs are one sentence and a non-zero exit. A brief run must beat the mean face on held-out faces (issue 22)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import torchrun
from config import Config
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import RunError
from faceutil.uv import uv_layout
from tests.helpers import landmark_shift_px, read_crops

TRAIN_COUNT = 12


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """12 processed synthetic 300W-LP-format samples and 4 raw AFLW2000-format ones."""
    from faceutil.facemodel import load_model
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    root = tmp_path_factory.mktemp("synth")
    model = load_model("synthetic")
    synthesize_dataset(root / "train_raw", "300W_LP", TRAIN_COUNT, seed=11, model=model)
    synthesize_dataset(root / "test_raw", "AFLW2000", 4, seed=12, model=model)
    process_dataset(root / "train_raw", root / "train", progress=False)
    return root


def mean_map_loss(train_dir) -> float:
    """The weighted loss of predicting the samples' own mean position map for each of them (computed here, from the
    files, not by the code under test)."""
    from data.index import read_index
    from faceutil.uv import uv_layout

    maps = np.stack([np.load(train_dir / n / f"{n}_cropped_uv_posmap.npy") for n in read_index(train_dir)]) / 280.0
    weight = uv_layout("synthetic").weight_mask
    return float(((maps - maps.mean(0)) ** 2 * weight[None, :, :, None]).mean())


def config_for(train_dir, out, **changes) -> Config:
    base = Config(train=True, test=False, train_dir=str(train_dir), model="e2tkface", encoder="aligned",
                  model_kwargs={"width_mult": 0.25}, input_size=64, head="mean-residual", epochs=60,
                  batch_size=TRAIN_COUNT, lr=5e-4, warmup_steps=5, lr_schedule="cosine", augment=False,
                  num_workers=0, device="cpu", out=str(out), progress=False, bfm="synthetic", seed=0)
    return base.replace(**changes)


def test_real_e2tkface_memorises_a_handful_of_samples(synth, tmp_path):
    """The check that would have caught the collapse onto the mean face: 60 full-batch steps of the real E2TKFace
    (equivariant encoder, width 0.25, 64 px) through engine.train must end far below the mean-map loss."""
    from engine.train import run_training

    reference = mean_map_loss(synth / "train")
    result = run_training(config_for(synth / "train", tmp_path / "run"))
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 60
    assert losses[0] == pytest.approx(reference, rel=0.05)      # the head starts at the mean map (train-mode BN aside)
    assert losses[-1] < 0.35 * reference, (losses, reference)


def test_mean_residual_and_input_size_through_test_predict_and_export(synth, tmp_path, capsys):
    """A 128-px mean-residual E2TKFace trained for 2 epochs: -test, -predict and both ONNX exports run from its
    checkpoint; the ONNX file reproduces torch, and the mean map is in the checkpoint and in the ONNX graph."""
    from inference.backends import OnnxBackend
    from engine.train import run_training
    from model import build_model

    cfg = config_for(synth / "train", tmp_path / "run", input_size=128, epochs=2, batch_size=6, warmup_steps=0, lr=1e-3)
    result = run_training(cfg)
    ck = load_checkpoint(result.last_path)
    assert ck["model_kwargs"]["head"] == "mean-residual" and ck["model_kwargs"]["input_size"] == 128
    mean = ck["model"]["io.mean_posmap"]
    from data.dataset import PosmapDataset
    want = torch.from_numpy(PosmapDataset(synth / "train").mean_posmap()).permute(2, 0, 1)[None] / 280.0
    assert torch.allclose(mean, want, atol=1e-6)

    assert torchrun.main(["-train=False", "-test=True", f"-pd={synth / 'test_raw'}",
                          f"--loadModelPath={result.last_path}", f"--out={tmp_path / 'eval'}", "--bfm=synthetic",
                          "--progress=False"]) == 0
    assert torchrun.main([f"-predict={synth / 'test_raw'}", f"--loadModelPath={result.last_path}",
                          f"-o={tmp_path / 'pred'}", "--bbox=100,100,350,350", "--bfm=synthetic",
                          "--progress=False"]) == 0
    assert list((tmp_path / "pred").rglob("*.obj"))
    onnx_path, int8_path = tmp_path / "m.onnx", tmp_path / "m8.onnx"
    assert torchrun.main(["-export=onnx", f"--loadModelPath={result.last_path}", f"-o={onnx_path}"]) == 0
    assert torchrun.main(["-export=onnx-int8", f"--loadModelPath={result.last_path}", f"-o={int8_path}",
                          f"-td={synth / 'train'}"]) == 0
    net = build_model("e2tkface", **ck["model_kwargs"])
    net.load_state_dict(ck["model"])
    x, _ = read_crops(synth / "train")                           # (12, 3, 256, 256) face crops
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    got = OnnxBackend(onnx_path)(x.numpy())
    residual = ref - mean.numpy()
    assert np.abs(residual).max() > 1e-3                         # trained: not the mean map alone
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(residual).max() + 1e-5
    kpt_ind = uv_layout("synthetic").kpt_ind
    shift = landmark_shift_px(OnnxBackend(int8_path)(x.numpy()), ref, kpt_ind)
    off_mean = landmark_shift_px(np.broadcast_to(mean.numpy(), ref.shape), ref, kpt_ind)
    assert np.median(off_mean) > 0.75                            # the residual moves landmarks (measured 1.37 px)
    # the int8 graph keeps the float mean map and this network's small residual: landmarks measured within 4e-5 px
    # of torch's (12 crops); without the mean map they would be ~200 px off, without the residual 1.37 px (median)
    assert shift.max() <= 0.25
    capsys.readouterr()


def test_bad_head_size_and_mean_map_inputs_are_one_sentence(synth, tmp_path, capsys):
    from engine.checkpoint import load_weights, make_checkpoint
    from engine.train import run_training
    from model import build_model

    for flag, needle in (("--head=tanh", "Unknown --head='tanh'"), ("--input-size=96", "--input-size must be one of"),
                         ("--warmup=-1", "--warmup must be 0 or more"), ("--lr-schedule=step", "--lr-schedule")):
        assert torchrun.main(["-train=True", f"-td={synth / 'train'}", flag]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and err.count("\n") == 0
    # a training folder too small to estimate the mean map
    small = tmp_path / "small"
    small.mkdir()
    names = sorted(p.name for p in (synth / "train").iterdir() if p.is_dir())[:5]
    (small / "index.tsv").write_text("name\tstatus\treason\n" + "".join(f"{n}\tok\t\n" for n in names))
    for n in names:
        (small / n).symlink_to(synth / "train" / n)
    with pytest.raises(RunError, match="too few to estimate the mean position map"):
        run_training(config_for(small, tmp_path / "r1", epochs=1))
    # weights whose head needs a mean map they do not carry (a bare state_dict, as published weights come)
    weights = build_model("prnet", input_size=64, head="mean-residual").state_dict()
    del weights["io.mean_posmap"]
    path = save_checkpoint(tmp_path / "bare.pth", weights)
    capsys.readouterr()
    assert torchrun.main(["-train=False", "-test=True", f"-pd={synth / 'test_raw'}", f"--loadModelPath={path}",
                          "--model=prnet", "--input-size=64", "--head=mean-residual", "--bfm=synthetic"]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not carry the mean position map" in err and err.count("\n") == 0
    ck = make_checkpoint(build_model("prnet", input_size=64, head="mean-residual"), "prnet",
                         {"input_size": 64, "head": "mean-residual"})
    del ck["model"]["io.mean_posmap"]
    with pytest.raises(RunError, match="does not carry the mean position map"):
        load_weights(build_model("prnet", input_size=64, head="mean-residual"), ck, "x.pth")
    # weights of the published head for a mean-residual network: the usual "do not fit" sentence
    with pytest.raises(RunError, match="do not fit this model"):
        load_weights(build_model("prnet", input_size=64, head="mean-residual"),
                     {"model": build_model("prnet", input_size=64).state_dict()}, "y.pth")
    assert json.dumps(Config().to_dict())                       # the new options are JSON-saveable


# The brief training below: E2TKFace as the toolkit builds it (equivariant 'aligned' encoder, mean-residual head) at
# width 0.5 and 64 px, 160 synthetic training images, batch 16, 20 epochs = 200 steps, lr 5e-4 after a 100-step
# warm-up, cosine, no augmentation, one torch thread. Held-out 2D NME / mean face's (24 AFLW2000-format images, mean
# face 21.6 %) of last.pth, measured on network seeds 0-5 (2026-12-06, data seeds 100 / 101): 0.52, 0.49, 0.60, 0.52,
# 0.63, 0.58 (seed 0 is the test's). Width 0.25 with the same recipe was not reliable (seeds 0-4: 0.53, 0.51, 0.53,
# 0.85, 0.67); with a 20-step warm-up (lr 1e-4 or 2.5e-4) seed 3 stayed on the mean face (0.98-1.00); batch 8 for
# 400 steps did no better (seed 3: 0.77). The test takes 116 s on one thread beside two busy processes.
BRIEF_TRAIN, BRIEF_TEST = 160, 24
BRIEF_CHANGES = {"model_kwargs": {"width_mult": 0.5}, "epochs": 20, "batch_size": 16, "warmup_steps": 100,
                 "lr": 5e-4, "val_fraction": 0.0, "seed": 0}
#: trained held-out NME must be at most this fraction of the mean face's (measured 0.49-0.63 over six seeds)
LEARNT_BELOW = 0.8


@pytest.mark.usefixtures("one_torch_thread")
def test_brief_training_beats_the_mean_face_on_held_out_faces(tmp_path):
    """Training that learns (issue 22): a brief run of the real training loop must take E2TKFace well off the mean
    face on faces it has not seen -- held-out 2D NME at most LEARNT_BELOW of the mean training face's NME."""
    from data.dataset import AFLWEvalSet
    from engine.evaluate import MeanPosmapModel, evaluate_model
    from engine.loading import load_network
    from engine.train import run_training
    from faceutil.facemodel import load_model
    from faceutil.synthetic import synthesize_dataset
    from tests.helpers import synthetic_crops

    train_dir = synthetic_crops(tmp_path / "train_raw", tmp_path / "train", BRIEF_TRAIN, seed=100)
    synthesize_dataset(tmp_path / "test_raw", "AFLW2000", BRIEF_TEST, seed=101, model=load_model("synthetic"))
    result = run_training(config_for(train_dir, tmp_path / "run", **BRIEF_CHANGES))
    assert result.history[-1]["step"] == 200
    layout, test_set = uv_layout("synthetic"), AFLWEvalSet(tmp_path / "test_raw")
    trained = evaluate_model(load_network(result.last_path).module, test_set, layout.kpt_ind, layout.face_mask)
    mean_face = evaluate_model(MeanPosmapModel(train_dir), test_set, layout.kpt_ind, layout.face_mask)
    assert len(trained.nme2d) == BRIEF_TEST and mean_face.nme2d.mean() > 10.0       # a real pose/shape spread
    assert trained.nme2d.mean() <= LEARNT_BELOW * mean_face.nme2d.mean(), \
        (trained.nme2d.mean(), mean_face.nme2d.mean(), [h["train_loss"] for h in result.history])
