"""Tests of engine/ and torchrun.py: resume bit-for-bit, DDP (2 gloo processes) == one process, NaN stop,
safe checkpoint loading, the AFLW2000 evaluation path (NME ~ 0 for a ground-truth stub), CLI errors, the demo.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from config import Config
from engine import distributed as D
from engine.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from engine.errors import RunError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ tiny stand-ins
class TinyNet(nn.Module):
    """A 2-layer conv net, (B, 3, 256, 256) -> (B, 3, 256, 256); no BatchNorm, so DDP == one process exactly."""

    def __init__(self, width: int = 4, nan_after: int | None = None):
        super().__init__()
        self.down = nn.Conv2d(3, width, 8, stride=8)
        self.up = nn.ConvTranspose2d(width, 3, 8, stride=8)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, x):
        out = self.up(torch.relu(self.down(x)))
        if self.training:
            self.calls += 1
            if self.nan_after is not None and self.calls > self.nan_after:
                out = out * float("nan")
        return out


def tiny_factory(name: str, **kwargs) -> nn.Module:
    """Module-level (picklable for spawned processes) model factory understanding the test model "tiny"."""
    assert name == "tiny", name
    return TinyNet(**kwargs)


def fake_uv():
    """A cheap faceutil.uv.UVLayout: weight mask 1 with 16 at 68 fixed 'keypoints', those keypoints, full face mask."""
    from faceutil.uv import UVLayout

    rng = np.random.default_rng(5)
    kpt = np.stack([rng.integers(40, 216, 68), rng.integers(40, 216, 68)]).astype(np.int64)
    mask = np.ones((256, 256), np.float32)
    mask[kpt[1], kpt[0]] = 16.0
    return UVLayout(size=256, kpt_ind=kpt, face_mask=np.ones((256, 256), bool), weight_mask=mask)


def write_fake_processed(root: Path, count: int, seed: int = 0) -> list[str]:
    """Processor-output-shaped folder: <name>/<name>_cropped.jpg + _cropped_uv_posmap.npy + index.tsv."""
    from faceutil.sampleio import atomic_save_npy, atomic_write_image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"sample_{i:03d}" for i in range(count)]
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    for k, name in enumerate(names):
        (root / name).mkdir()
        phase = rng.uniform(0, 6.28, 3)
        img = np.stack([127 + 100 * np.sin(xx / (20 + 5 * c) + phase[c]) for c in range(3)], axis=-1)
        atomic_write_image(root / name / f"{name}_cropped.jpg", img.clip(0, 255).astype(np.uint8))
        posmap = np.stack([xx * 0.5 + 60 + 5 * phase[0], yy * 0.5 + 60 + 5 * phase[1], 30 + 5 * phase[2] + 0 * xx],
                          axis=-1).astype(np.float32)
        atomic_save_npy(root / name / f"{name}_cropped_uv_posmap.npy", posmap)
    (root / "index.tsv").write_text("name\tstatus\treason\n" + "".join(f"{n}\tok\t\n" for n in names))
    return names


@pytest.fixture(scope="module")
def fake_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fakeset") / "train-crop"
    write_fake_processed(root, 8)
    return root


def tiny_config(train_dir: Path, out: Path, **changes) -> Config:
    base = Config(train=True, test=False, train_dir=str(train_dir), model="tiny", model_kwargs={"width": 4},
                  epochs=2, batch_size=2, num_workers=0, lr=1e-3, warmup_steps=0, val_fraction=0.2, seed=3,
                  device="cpu", out=str(out), progress=False, bfm="synthetic")
    return base.replace(**changes)


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


# ------------------------------------------------------------------------------------------------ training
def test_resume_is_bit_for_bit(fake_set, tmp_path):
    from engine.train import run_training

    uv = fake_uv()
    straight = run_training(tiny_config(fake_set, tmp_path / "a"), tiny_factory, uv)
    run_training(tiny_config(fake_set, tmp_path / "b", epochs=1), tiny_factory, uv)
    resumed = run_training(tiny_config(fake_set, tmp_path / "b", resume="auto"), tiny_factory, uv)

    a, b = load_checkpoint(straight.last_path), load_checkpoint(resumed.last_path)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    untimed = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in c["history"]] for c in (a, b)]
    assert untimed[0] == untimed[1]
    # the learning rate is a function of the step: epoch 2's steps ran at 1e-3 * 0.8 (one completed epoch)
    assert a["step"] == b["step"] and abs(a["optimizer"]["param_groups"][0]["lr"] - 1e-3 * 0.8) < 1e-12
    assert [h["lr"] for h in a["history"]] == pytest.approx([1e-3, 8e-4])
    # training moved the weights, best.pth exists, config.json records the run
    first = torch.load(tmp_path / "b" / "best.pth", weights_only=True)
    assert first["model_name"] == "tiny" and first["model_kwargs"] == {"width": 4}
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
    assert [h["epoch"] for h in json.loads((tmp_path / "a" / "history.json").read_text())] == [1, 2]
    saved = Config.load_json(tmp_path / "a" / "config.json")
    assert saved.epochs == 2 and saved.model == "tiny" and saved.out == str(tmp_path / "a")


def test_bf16_channels_last_training_tracks_fp32(fake_set, tmp_path):
    """--precision=bf16 --channels-last trains on CPU: the same run within bf16 rounding of the fp32 one."""
    from engine.train import run_training

    uv = fake_uv()
    ref = run_training(tiny_config(fake_set, tmp_path / "fp32", epochs=1), tiny_factory, uv)
    low = run_training(tiny_config(fake_set, tmp_path / "bf16", epochs=1, precision="bf16", channels_last=True),
                       tiny_factory, uv)
    a, b = ref.history[0], low.history[0]
    assert math.isfinite(b["train_loss"]) and math.isfinite(b["val_loss"])
    assert b["train_loss"] != a["train_loss"]                         # the low precision really ran
    assert abs(b["train_loss"] - a["train_loss"]) < 0.05 * a["train_loss"]
    wa, wb = _weights(ref.last_path), _weights(low.last_path)
    for key in wa:
        assert wb[key].dtype == torch.float32                         # master weights stay fp32
        torch.testing.assert_close(wb[key], wa[key], rtol=0.05, atol=2e-3)


def test_mean_posmap_model_is_the_mean_training_map(fake_set):
    from data.dataset import PosmapDataset
    from engine.evaluate import MeanPosmapModel

    ref = MeanPosmapModel(fake_set)
    base = PosmapDataset(fake_set, augment=False)
    want = np.mean([np.asarray(base.posmap_array(i), np.float64) for i in range(len(base))], axis=0) / 280.0
    out = ref(torch.rand(3, 3, 256, 256))
    assert out.shape == (3, 3, 256, 256) and torch.equal(out[0], out[2])
    np.testing.assert_allclose(out[1].numpy().transpose(1, 2, 0), want, rtol=1e-6, atol=1e-6)
    assert not list(ref.parameters())                                     # nothing to train: a buffer only


def test_fp16_without_cuda_is_one_sentence(fake_set, tmp_path):
    from engine.train import run_training
    from faceutil.errors import FaceUtilError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where fp16 is allowed")
    with pytest.raises(FaceUtilError, match="fp16 needs a CUDA device"):
        run_training(tiny_config(fake_set, tmp_path / "x", precision="fp16"), tiny_factory, fake_uv())
    assert not (tmp_path / "x" / "last.pth").exists()


def _ddp_worker(config: Config, uv, out: str) -> None:
    from engine.checkpoint import unwrap
    from engine.train import train_worker

    info = D.info_from_env()
    result = train_worker(config, info, tiny_factory, uv)
    torch.save(unwrap(result.model).state_dict(), Path(out) / f"rank{info.rank}.pt")


def test_ddp_two_gloo_processes_match_one_process(fake_set, tmp_path):
    from engine.train import run_training

    uv = fake_uv()
    single = run_training(tiny_config(fake_set, tmp_path / "single", batch_size=4, epochs=2), tiny_factory, uv)
    ddp_cfg = tiny_config(fake_set, tmp_path / "ddp", batch_size=2, epochs=2, gpus=2)
    D.spawn(_ddp_worker, (ddp_cfg, uv, str(tmp_path)), 2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    ref = single.model.state_dict()
    saved = _weights(tmp_path / "ddp" / "last.pth")
    for key in ref:
        assert torch.equal(r0[key], r1[key]), key
        assert torch.equal(saved[key], r0[key]), key
        torch.testing.assert_close(r0[key], ref[key], rtol=1e-4, atol=1e-6)
    ck = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fake_set, tmp_path):
    from engine.train import run_training

    # 6 training samples / batch 2 = 3 steps per epoch: epoch 1 is fine, epoch 2 turns NaN
    cfg = tiny_config(fake_set, tmp_path / "nan", epochs=3, model_kwargs={"width": 4, "nan_after": 4})
    with pytest.raises(RunError, match=r"NaN.*epoch 2.*last good checkpoint is .*last\.pth"):
        run_training(cfg, tiny_factory, fake_uv())
    ck = load_checkpoint(tmp_path / "nan" / "last.pth")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_checkpoint_loads_weights_only_and_refuses_code(tmp_path):
    ck = make_checkpoint(TinyNet(), "tiny", {"width": 4}, epoch=3, rng=[{"a": torch.zeros(2)}], note=None)
    path = save_checkpoint(tmp_path / "ok.pth", ck)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert load_checkpoint(path)["model_name"] == "tiny"

    marker = tmp_path / "code_ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"format": "e2tkface-checkpoint", "model": {}, "payload": Evil()}, evil)
    with pytest.raises(RunError, match="Refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the file really was dangerous: a plain unpickler would have run the command
    payload = pickle.dumps(Evil())
    pickle.loads(payload)
    assert marker.exists()


def test_rng_state_round_trip():
    import random

    from engine.checkpoint import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_checkpoint_of_other_model_is_a_clear_error(tmp_path):
    from engine.evaluate import load_for_inference

    path = save_checkpoint(tmp_path / "tiny.pth", make_checkpoint(TinyNet(), "tiny", {"width": 4}))
    cfg = Config(model="prnet", given=("model",))
    with pytest.raises(RunError, match=r"holds a 'tiny' model, not --model='prnet'"):
        load_for_inference(path, cfg, tiny_factory)
    loaded = load_for_inference(path, Config(), tiny_factory)            # default --model: the checkpoint wins
    assert loaded.name == "tiny" and not loaded.module.training


# ------------------------------------------------------------------------------------------------ evaluation
class PosmapStub(nn.Module):
    """Returns given position maps (already / 280) in call order: a 'perfect' network for the eval path."""

    def __init__(self, maps: torch.Tensor):
        super().__init__()
        self.maps = maps
        self.pos = 0

    def forward(self, x):
        out = self.maps[self.pos:self.pos + x.shape[0]]
        self.pos += x.shape[0]
        assert out.shape == x.shape
        return out


@pytest.fixture(scope="module")
def aflw_sets(tmp_path_factory):
    """3 synthetic AFLW2000-format images (raw jpg+mat) and their processor output (with pt3d_68)."""
    from faceutil.facemodel import load_model
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset
    from faceutil.uv import uv_layout

    root = tmp_path_factory.mktemp("aflw")
    face_model = load_model("synthetic")
    synthesize_dataset(root / "AFLW2000", "AFLW2000", 3, seed=11, model=face_model)
    process_dataset(root / "AFLW2000", root / "AFLW2000-crop", bfm="synthetic", progress=False)
    return root / "AFLW2000", root / "AFLW2000-crop", uv_layout("synthetic")


def test_evaluation_of_ground_truth_posmaps_gives_metric_values(aflw_sets, tmp_path):
    from data.dataset import AFLWEvalSet
    from faceutil.crop import Similarity
    from faceutil.metrics import nme
    from faceutil.uv import posmap_landmarks

    from engine.evaluate import run_evaluation

    raw, processed, uv = aflw_sets
    kpt_ind = uv.kpt_ind
    evalset = AFLWEvalSet(processed)
    maps = torch.stack([evalset[i]["posmap"] for i in range(len(evalset))])
    # expected: landmarks read from the truth maps, mapped back by the crop's inverse, against pt3d_68
    expect_pts = np.stack([Similarity(evalset[i]["matrix"]).inverse().apply(
        posmap_landmarks(maps[i].permute(1, 2, 0).numpy() * 280.0, kpt_ind)) for i in range(len(evalset))])
    gt = np.stack([evalset[i]["pt3d_68"] for i in range(len(evalset))]).astype(np.float64)
    expect2d = nme(expect_pts[..., :2], gt[..., :2])

    # re-annotated file: the truth shifted 2 px right, rows in sorted-name order
    shifted = gt[..., :2].copy()
    shifted[..., 0] += 2.0
    order = np.argsort(evalset.names)
    gt_file = tmp_path / "AFLW2000-3D-Reannotated.pts68.npy"
    np.save(gt_file, shifted[order].transpose(0, 2, 1).astype(np.float32))

    cfg = Config(train=False, test=True, predict_dir=str(processed), out=str(tmp_path / "run"), batch_size=2,
                 device="cpu", progress=False, gt="reannotated", gt_file=str(gt_file))
    report = run_evaluation(cfg, model=PosmapStub(maps), uv=uv, quiet=True)
    np.testing.assert_allclose(report.nme2d, expect2d, rtol=1e-6, atol=1e-9)
    assert np.all(report.nme2d < 1.0)                        # a perfect posmap gives (almost) zero landmark error
    np.testing.assert_allclose(report.dense, 0.0, atol=1e-9)   # and exactly zero dense error
    np.testing.assert_allclose(report.nme2d_reannotated, nme(expect_pts[..., :2], shifted), rtol=1e-6)
    assert report.summary["pt3d_68 2D"]["mean"] == pytest.approx(expect2d.mean())
    rows = list(csv.DictReader(open(report.csv_path)))
    assert [r["name"] for r in rows] == evalset.names
    assert float(rows[0]["nme2d"]) == pytest.approx(expect2d[0], abs=1e-6)
    assert {"nme3d", "nme2d_reannotated", "dense_nme", "yaw_deg"} <= set(rows[0])
    summary = json.loads(report.csv_path.with_suffix(".json").read_text())
    assert "sqrt(w*h)" in summary["protocol"] and summary["images"] == 3

    # the raw AFLW2000 folder gives the same crops (deterministic evaluation crop), hence the same numbers
    cfg_raw = cfg.replace(predict_dir=str(raw), gt="original", gt_file=None)
    raw_report = run_evaluation(cfg_raw, model=PosmapStub(maps), uv=uv, quiet=True)
    np.testing.assert_allclose(raw_report.nme2d, expect2d, rtol=1e-4, atol=1e-4)
    assert raw_report.dense is None


def test_validation_on_the_test_set_is_recognised(aflw_sets, fake_set, tmp_path):
    from engine.train import is_test_like

    raw, processed, _ = aflw_sets
    assert is_test_like(str(processed), None)                     # bbox_info carries pt3d_68 (AFLW2000 format)
    assert is_test_like(str(fake_set), str(fake_set))              # -vd == -pd
    assert not is_test_like(str(fake_set), str(raw))


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "torchrun.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["-train=maybe"], "not a boolean"),
    (["--batchSize=-4"], "at least 1"),
    (["-td=/nonexistent/300W_LP-crop"], "does not exist"),
    (["--demo", "--model=resnet"], "Unknown --model"),
])
def test_cli_bad_values_give_one_sentence(args, needle):
    proc = _cli(*args)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_test_of_an_unusable_folder_is_one_sentence(fake_set, tmp_path):
    # evaluation of a folder that is neither AFLW2000 nor processor output with pt3d_68 -> one sentence, exit 1
    save_checkpoint(tmp_path / "tiny.pth", make_checkpoint(TinyNet(), "tiny", {}))
    proc = _cli("-train=False", "-test=True", f"-pd={fake_set}", f"--loadModelPath={tmp_path / 'tiny.pth'}",
                "--device=cpu", "--bfm=synthetic")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_full_demo_improves_nme(tmp_path):
    """The default demo (about 7 min on 2 CPU cores): trained NME at most half the mean-face reference; the
    mean-residual head starts exactly at the mean face."""
    proc = _cli("--demo", f"--out={tmp_path / 'demo'}", "--progress=False", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["nme2d_after"] <= 0.5 * summary["nme2d_mean_face"]
    assert summary["nme2d_before"] == pytest.approx(summary["nme2d_mean_face"], abs=0.5) and \
        "mean-face reference" in proc.stdout
    assert summary["total_seconds"] > 0 and summary["model_kwargs"]["input_size"] == 128
    assert (tmp_path / "demo" / "run" / "best.pth").is_file() and (tmp_path / "demo" / "run" / "final.pth").is_file()
    assert list((tmp_path / "demo" / "vis").glob("*_landmarks.jpg"))
    assert "untrained" in proc.stdout and "TensorBoard" in proc.stdout


def test_reannotated_rows_match_genuine_aflw2000_samples(shared_data, tmp_path):
    import shutil

    from faceutil.sampleio import read_sample_mat

    from engine.evaluate import reannotated_rows

    gt_dir = shared_data / "aflw2000_gt"
    mats = sorted((shared_data / "aflw2000_samples").glob("*.mat"))[:6]
    names = [m.stem for m in mats]
    pt3d = np.stack([read_sample_mat(m).pt3d_68 for m in mats])
    rows = {ln.split("\t")[0]: int(ln.split("\t")[1]) for ln in (gt_dir / "sample_index.tsv").read_text().splitlines()[1:]}
    table = np.load(gt_dir / "AFLW2000-3D-Reannotated.pts68.npy").transpose(0, 2, 1)
    expect = table[[rows[n] for n in names]]
    np.testing.assert_array_equal(reannotated_rows(gt_dir / "AFLW2000-3D-Reannotated.pts68.npy", names, pt3d), expect)
    # without the index file, rows are found from the exact pt3d_68 in AFLW2000-3D.pts68.npy
    for f in ("AFLW2000-3D-Reannotated.pts68.npy", "AFLW2000-3D.pts68.npy"):
        shutil.copy(gt_dir / f, tmp_path / f)
    np.testing.assert_array_equal(reannotated_rows(tmp_path / "AFLW2000-3D-Reannotated.pts68.npy", names, pt3d),
                                  expect)
    (tmp_path / "AFLW2000-3D.pts68.npy").unlink()
    with pytest.raises(RunError, match="Cannot match the 6 evaluation images"):
        reannotated_rows(tmp_path / "AFLW2000-3D-Reannotated.pts68.npy", names, pt3d)
