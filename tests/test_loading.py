"""One way from a checkpoint to a network and its face model (engine/loading.py), backends behind -test and
-predict (inference/backends.py), processed folders that record their face model, and no import circles (issue 14)."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import torchrun
from config import Config
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import RunError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 64-px E2TKFace (width 0.25, mean-residual) trained for one epoch with --bfm=auto, run in a folder without
    data/Out (so "auto" means the synthetic model there), on 8 processed synthetic samples; 4 raw test images."""
    from engine.train import run_training
    from faceutil.facemodel import load_model
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    root = tmp_path_factory.mktemp("loading")
    synthesize_dataset(root / "train_raw", "300W_LP", 8, seed=21, model=load_model("synthetic"))
    synthesize_dataset(root / "test_raw", "AFLW2000", 4, seed=22, model=load_model("synthetic"))
    process_dataset(root / "train_raw", root / "train", progress=False)
    cfg = Config(train=True, test=False, train_dir=str(root / "train"), model="e2tkface", encoder="cnn",
                 model_kwargs={"width_mult": 0.25}, input_size=64, epochs=1, batch_size=4, warmup_steps=0,
                 augment=False, num_workers=0, device="cpu", out=str(root / "run"), progress=False, bfm="auto")
    here = os.getcwd()
    os.chdir(root)
    try:
        result = run_training(cfg)
    finally:
        os.chdir(here)
    return root, result.last_path


def test_training_stores_the_face_model_resolved(trained):
    _, path = trained
    ck = load_checkpoint(path)
    assert ck["bfm"] == "synthetic" and ck["config"]["bfm"] == "synthetic"     # never the cwd-dependent "auto"


def test_test_predict_and_export_agree_on_the_face_model_whatever_the_working_directory(trained, tmp_path,
                                                                                      monkeypatch, capsys):
    """In a folder where "auto" would mean data/Out (a BFM.mat is there), -test, -predict and -export all use the
    synthetic face model the checkpoint was trained on."""
    from inference.backends import OnnxBackend
    from inference.predict import Predictor

    root, ck = trained
    (tmp_path / "data" / "Out").mkdir(parents=True)
    (tmp_path / "data" / "Out" / "BFM.mat").write_bytes(b"not a real model")
    monkeypatch.chdir(tmp_path)
    from config import resolve_bfm

    assert resolve_bfm("auto") == "data/Out"                                   # the trap is set
    assert Predictor(ck, device="cpu").bfm == "synthetic"
    assert torchrun.main(["-export=onnx", f"--loadModelPath={ck}", f"-o={tmp_path / 'm.onnx'}"]) == 0
    assert OnnxBackend(tmp_path / "m.onnx").metadata["bfm"] == "synthetic"
    assert torchrun.main(["-train=False", "-test=True", f"-pd={root / 'test_raw'}", f"--loadModelPath={ck}",
                          f"--out={tmp_path / 'eval'}", "--progress=False"]) == 0
    summary = json.loads((tmp_path / "eval" / "eval-test_raw.json").read_text())
    assert summary["face_model"] == "synthetic"
    assert Predictor(tmp_path / "m.onnx", device="cpu").bfm == "synthetic"
    capsys.readouterr()


def test_face_model_rule_is_explicit_then_recorded_then_auto(tmp_path, monkeypatch):
    from engine.loading import face_model_for, recorded_bfm

    monkeypatch.chdir(tmp_path)
    assert face_model_for("some/Out", "synthetic") == "some/Out"
    assert face_model_for(None, "synthetic") == "synthetic"
    assert face_model_for(None, None) == "synthetic"                         # no data/Out here
    assert recorded_bfm({"bfm": "a", "config": {"bfm": "b"}}) == "a"
    assert recorded_bfm({"config": {"bfm": "b"}}) == "b" and recorded_bfm({"model": {}}) is None


def test_test_evaluates_onnx_files_like_the_checkpoint(trained, trained_e2tkface, trained_onnx, tmp_path, capsys):
    """-test on the fp32 ONNX export of the session's trained network gives the checkpoint's NME image by image
    (onnxruntime vs torch: same landmarks to a fraction of a pixel); the int8 file's per-image NME stays within 1.5
    points of it (measured 0.01-1.04 on these 4 images), closer than the mean face's (2.8-5.5 points away), so an
    int8 file that lost what the network learnt would fail; torch-only flags are refused."""
    from data.dataset import AFLWEvalSet
    from engine.evaluate import MeanPosmapModel, evaluate_model
    from faceutil.uv import uv_layout

    root, _ = trained
    onnx = trained_onnx["fp32"]
    nme = {}                                                           # per-image 2D NME (%), CSV order
    for tag, path in (("pth", trained_e2tkface.checkpoint), ("onnx", onnx), ("int8", trained_onnx["int8"])):
        out = tmp_path / tag
        assert torchrun.main(["-train=False", "-test=True", f"-pd={root / 'test_raw'}", f"--loadModelPath={path}",
                              f"--out={out}", "--progress=False"]) == 0
        rows = [line.split(",") for line in (out / "eval-test_raw.csv").read_text().splitlines()]
        assert rows[0][:3] == ["name", "yaw_deg", "nme2d"] and len(rows) == 1 + 4
        nme[tag] = np.array([float(r[2]) for r in rows[1:]])
    layout = uv_layout("synthetic")
    mean_face = evaluate_model(MeanPosmapModel(trained_e2tkface.train_dir), AFLWEvalSet(root / "test_raw"),
                               layout.kpt_ind, layout.face_mask).nme2d
    assert np.abs(nme["onnx"] - nme["pth"]).max() <= 1e-3
    assert np.abs(mean_face - nme["pth"]).min() > 2.0                  # the network is not the mean face here
    assert np.abs(nme["int8"] - nme["pth"]).max() <= 1.5
    capsys.readouterr()
    assert torchrun.main(["-train=False", "-test=True", f"-pd={root / 'test_raw'}", f"--loadModelPath={onnx}",
                          "--precision=bf16", f"--out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "apply to torch checkpoints" in err and err.count("\n") == 0


# ------------------------------------------------------------------------------------------ face-model records
def test_processor_records_the_face_model_and_its_uv_layout(trained):
    from data.dataset import PosmapDataset
    from faceutil.uv import layout_fingerprint, uv_layout

    root, _ = trained
    record = json.loads((root / "train" / "face_model.json").read_text())
    layout = uv_layout("synthetic")
    assert record == {"bfm": "synthetic", "fingerprint": layout_fingerprint(layout), "size": 256}
    assert PosmapDataset(root / "train").face_model == record
    # the fingerprint follows the layout: one landmark pixel moved, or one weight changed, gives another one
    moved = np.array(layout.kpt_ind)
    moved[0, 0] += 1
    weights = np.array(layout.weight_mask)
    weights[0, 0] += 1.0
    others = {layout_fingerprint(type(layout)(layout.size, moved, layout.face_mask, layout.weight_mask)),
              layout_fingerprint(type(layout)(layout.size, layout.kpt_ind, layout.face_mask, weights))}
    assert record["fingerprint"] not in others and len(others) == 2


def _copy_folder(src: Path, dst: Path, record: dict | None) -> Path:
    """A processed folder linking to src's samples, with a given face-model record (None: none, an old folder)."""
    dst.mkdir()
    (dst / "index.tsv").write_text((src / "index.tsv").read_text())
    for sample in src.iterdir():
        if sample.is_dir():
            (dst / sample.name).symlink_to(sample)
    if record is not None:
        (dst / "face_model.json").write_text(json.dumps(record))
    return dst


def test_training_refuses_a_folder_of_another_face_model_and_warns_for_an_old_one(trained, tmp_path, capsys):
    from engine.train import run_training

    root, _ = trained
    other = _copy_folder(root / "train", tmp_path / "other",
                         {"bfm": "data/Out", "fingerprint": "0123456789abcdef", "size": 256})
    cfg = Config(train=True, test=False, train_dir=str(other), model="e2tkface", encoder="cnn",
                 model_kwargs={"width_mult": 0.25}, input_size=64, epochs=1, batch_size=4, warmup_steps=0,
                 augment=False, num_workers=0, device="cpu", out=str(tmp_path / "run"), progress=False,
                 bfm="synthetic")
    with pytest.raises(RunError) as err:
        run_training(cfg)
    text = str(err.value)
    assert "made with face model data/Out (UV layout 0123456789abcdef)" in text and "this run uses synthetic" in text
    assert "\n" not in text
    old = _copy_folder(root / "train", tmp_path / "old", None)
    result = run_training(cfg.replace(train_dir=str(old), out=str(tmp_path / "run_old")))
    assert len(result.history) == 1
    assert "does not record the face model" in capsys.readouterr().err


def test_processor_refuses_to_mix_face_models_in_one_folder(trained, tmp_path):
    from faceutil.errors import FaceUtilError
    from faceutil.process import process_dataset

    root, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "face_model.json").write_text(json.dumps({"bfm": "data/Out", "fingerprint": "fedcba9876543210",
                                                     "size": 256}))
    with pytest.raises(FaceUtilError, match="holds samples made with face model data/Out"):
        process_dataset(root / "train_raw", out, progress=False)
    assert not (out / "index.tsv").exists()


# ------------------------------------------------------------------------------------------ loading rules
def test_load_network_rules(trained, tmp_path):
    from engine.loading import load_network

    _, ck = trained
    loaded = load_network(ck)
    assert loaded.name == "e2tkface" and loaded.kwargs["input_size"] == 64 and not loaded.module.training
    eager = load_network(ck, export=False).module
    assert load_network(ck, train=True).module.training
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(eager(x), loaded.module(x), atol=1e-5)            # the export twin computes the same
    with pytest.raises(RunError, match="holds a 'e2tkface' model, not --model='prnet'"):
        load_network(ck, model="prnet")
    # a bare state_dict takes its identity from the request
    bare = save_checkpoint(tmp_path / "bare.pth", load_checkpoint(ck)["model"])
    got = load_network(bare, model_kwargs=load_checkpoint(ck)["model_kwargs"])
    with torch.no_grad():
        assert torch.equal(got.module(x), loaded.module(x))
    with pytest.raises(RunError, match="do not fit this model"):
        load_network(bare, model_kwargs={"width_mult": 0.5, "encoder": "cnn", "input_size": 64})


# ------------------------------------------------------------------------------------------ import structure
def _project_imports() -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its text (module level or inside functions)."""
    files = [p for d in ("config.py", "torchrun.py", "processor.py", "faceutil", "model", "data", "engine",
                         "inference")
             for p in ([ROOT / d] if d.endswith(".py") else sorted((ROOT / d).glob("*.py")))]
    names = {str(p.relative_to(ROOT).with_suffix("")).replace(os.sep, ".").removesuffix(".__init__"): p
             for p in files}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in names and t != name}
        graph[name] = edges
    return graph


def test_no_import_circles():
    graph = _project_imports()
    assert {"inference.predict", "inference.export", "faceutil.morphable", "model.registry"} <= set(graph)
    # Tarjan-free check: a module is in a circle when it can reach itself
    cycles = []
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node == start:
                cycles.append(start)
                break
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
    assert not cycles, f"modules in import circles: {sorted(cycles)}"


def test_training_never_imports_inference():
    """The two systems stay apart: inference may use engine (loading, evaluation), never the other way round; and
    faceutil, model and data import neither."""
    graph = _project_imports()
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                   if (m.startswith("engine") and t.startswith("inference"))
                   or (m.split(".")[0] in ("faceutil", "model", "data") and t.split(".")[0] in ("engine", "inference")))
    assert not wrong, wrong


def test_copy_checkpoint_keeps_its_bytes_when_the_source_is_written_again(tmp_path, monkeypatch):
    """best.pth is linked to last.pth; the next atomic write of last.pth must leave best.pth as it was; where hard
    links fail, a copy is made."""
    from engine.checkpoint import copy_checkpoint

    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_checkpoint(last, {"model": {"w": torch.ones(3)}, "epoch": 1})
    first = last.read_bytes()
    copy_checkpoint(last, best)
    save_checkpoint(last, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    assert best.read_bytes() == first and last.read_bytes() != first

    def no_links(*args):
        raise OSError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    copy_checkpoint(last, best)
    assert best.read_bytes() == last.read_bytes() and not list(tmp_path.glob(".*.tmp"))
