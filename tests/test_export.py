"""ONNX export: onnxruntime agrees with torch for both registered models, metadata identifies the model, the
onnxruntime Predictor twin gives the torch Predictor's results, damaged files are one-sentence errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from inference.backends import OnnxBackend
from engine.errors import RunError
from inference.export import OnnxPredictor, export_onnx
from inference.predict import Predictor
from tests.helpers import calibrated
from model import build_model

# Random-init weights suffice for agreement; reduced width keeps E2TKFace fast (same layers, same ops).
CASES = {"e2tkface": {"width_mult": 0.25}, "prnet": {}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both models exported once: E2TKFace through the command line from a checkpoint (-export=onnx), PRNet with
    export_onnx directly. Returns {name: (torch net in eval mode, onnx path, metadata)}."""
    import torchrun
    from engine.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, kwargs in CASES.items():
        torch.manual_seed(0)
        net = calibrated(build_model(name, **kwargs))
        path = root / f"{name}.onnx"
        if name == "e2tkface":
            ck = save_checkpoint(root / f"{name}.pth", make_checkpoint(net, name, kwargs))
            assert torchrun.main(["-export=onnx", f"--loadModelPath={ck}", f"-o={path}", "--bfm=synthetic"]) == 0
            meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        else:
            meta = export_onnx(net, path, name, kwargs, bfm="synthetic")
        out[name] = (net, path, meta)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_matches_torch(exported, name):
    net, path, meta = exported[name]
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = net(x).numpy()                                   # eager, equivariant encoder (not the export)
    got = OnnxBackend(path)(x.numpy())
    assert got.shape == want.shape
    span = float(want.max() - want.min())                       # position-map range (output units = posmap / 280)
    assert span > 0.5 and want.std() > 0.05                     # a real spread of values, not a constant map
    assert float(np.abs(got - want).max()) <= 1e-3 * span


@pytest.mark.parametrize("name", sorted(CASES))
def test_metadata_identifies_the_model(exported, name):
    _, path, meta = exported[name]
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["model_name"] == name and props["bfm"] == "synthetic" and props["posmap_scale"] == "280"
    assert props["batch"] in ("dynamic", "1") and all(props[k] == v for k, v in meta.items())


def test_prnet_batch_axis_is_dynamic(exported):
    _, path, meta = exported["prnet"]
    assert meta["batch"] == "dynamic"
    x = np.random.default_rng(0).random((3, 3, 256, 256), dtype=np.float32)
    backend = OnnxBackend(path)
    both = backend(x)
    assert both.shape == (3, 3, 256, 256)
    assert np.abs(both[1:2] - backend(x[1:2])).max() < 1e-4


def test_e2tkface_batch_axis_is_dynamic(exported):
    _, path, meta = exported["e2tkface"]
    assert meta["batch"] == "dynamic"
    x = np.random.default_rng(2).random((2, 3, 256, 256), dtype=np.float32)
    backend = OnnxBackend(path)
    assert backend.max_batch is None
    assert np.abs(backend(x)[1:2] - backend(x[1:2])).max() < 1e-4


class _BakedBatch(torch.nn.Module):
    """A network whose traced graph hard-codes batch 1 (as model code with x.reshape(1, ...) would)."""

    def forward(self, x):
        return x.reshape(1, 3, 256, 256) * 0.5


def test_graph_with_a_baked_batch_is_saved_with_batch_one_and_fed_one_at_a_time(tmp_path):
    path = tmp_path / "baked.onnx"
    meta = export_onnx(_BakedBatch(), path, "prnet", {}, bfm="synthetic")
    assert meta["batch"] == "1"
    backend = OnnxBackend(path)
    assert backend.max_batch == 1
    x = np.random.default_rng(3).random((3, 3, 256, 256), dtype=np.float32)
    np.testing.assert_allclose(backend(x), 0.5 * x, rtol=1e-6)


def test_onnx_predictor_twin_matches_torch_predictor(exported):
    net, path, _ = exported["e2tkface"]
    rng = np.random.default_rng(1)
    image = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    boxes = np.array([[40.0, 50.0, 190.0, 200.0], [230.0, 60.0, 380.0, 210.0]])
    torch_results = Predictor(net, device="cpu", bfm="synthetic")(image, boxes)
    twin = OnnxPredictor(path)
    assert twin.model_name == "e2tkface" and twin.bfm == "synthetic" and twin.backend_name == "onnxruntime"
    onnx_results = twin(image, boxes)
    assert len(onnx_results) == 2
    for a, b in zip(torch_results, onnx_results):
        assert np.abs(a.landmarks - b.landmarks).max() < 0.3          # original px; 1e-3 of the 280 px map range
        assert abs(a.pose["yaw"] - b.pose["yaw"]) < 0.5


def test_damaged_or_foreign_onnx_file_is_one_sentence(exported, tmp_path):
    data = exported["prnet"][1].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 3])
    for bad in (cut, tmp_path / "text.onnx"):
        if bad.name == "text.onnx":
            bad.write_text("not a model")
        with pytest.raises(RunError) as err:
            Predictor(bad, device="cpu")
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(RunError, match="prnet"):
        Predictor(exported["prnet"][1], device="cpu", model="e2tkface")


def test_cli_predict_with_the_onnx_file(exported, shared_data, tmp_path, capsys):
    import json

    import torchrun

    _, onnx_path, meta = exported["e2tkface"]
    assert meta["model_name"] == "e2tkface" and json.loads(meta["model_kwargs"]) == CASES["e2tkface"]
    out = tmp_path / "out"
    code = torchrun.main([f"-predict={shared_data / 'photos' / 'skimage_astronaut.png'}",
                          f"--loadModelPath={onnx_path}", f"-o={out}", "--device=cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    record = json.loads((out / "skimage_astronaut.json").read_text())
    assert record["backend"] == "onnxruntime" and record["model"] == "e2tkface" and len(record["faces"]) == 1
    assert record["bfm"] == "synthetic"                        # taken from the file's metadata


class _Smooth(torch.nn.Module):
    """A shallow, well-conditioned conv net (random deep nets with calibrated BatchNorm amplify any rounding
    chaotically, so they cannot show whether bf16 is accurate; trained networks are measured in benchmarks/)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.down = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.up = torch.nn.ConvTranspose2d(16, 3, 8, stride=8)

    def forward(self, x):
        return torch.tanh(self.up(torch.relu(self.down(x))) + 0.4)


# ------------------------------------------------------------------------------------------------- int8
@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """A reduced-width E2TKFace checkpoint exported with -export=onnx-int8, calibrated on 4 processed synthetic
    training crops (-td). Returns (torch net, checkpoint, onnx path, calibration folder, stdout)."""
    import torchrun
    from engine.checkpoint import make_checkpoint, save_checkpoint
    from faceutil.facemodel import load_model
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    root = tmp_path_factory.mktemp("int8")
    synthesize_dataset(root / "raw", "300W_LP", 4, seed=2, model=load_model("synthetic"))
    process_dataset(root / "raw", root / "crop", progress=False)
    torch.manual_seed(0)
    net = calibrated(build_model("e2tkface", width_mult=0.25))
    ck = save_checkpoint(root / "e2tkface.pth", make_checkpoint(net, "e2tkface", {"width_mult": 0.25}))
    path = root / "e2tkface-int8.onnx"
    assert torchrun.main(["-export=onnx-int8", f"--loadModelPath={ck}", f"-o={path}", f"-td={root / 'crop'}",
                          "--bfm=synthetic"]) == 0
    return net, ck, path, root / "crop"


def _check_int8_graph(path, calibration_images: int) -> None:
    """QDQ form: each Conv / MatMul reads its activation and its weight through DequantizeLinear (onnxruntime fuses
    them into int8 kernels), except in the last INT8_FLOAT_TAIL decoder layers, which stay float; there the stride-1
    layers with more than 3 channels are convolutions, the rest transposed convolutions. The metadata says so."""
    from inference.export import INT8_FLOAT_TAIL

    proto = onnx.load(str(path))
    producer = {out: node.op_type for node in proto.graph.node for out in node.output}
    initializers = {t.name for t in proto.graph.initializer}
    tail = [f"/decoder/layers/layers.{i}/" for i in range(17 - INT8_FLOAT_TAIL, 17)]
    ops = [n for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "ConvTranspose")]
    floats = [n for n in ops if any(scope in n.name for scope in tail)]
    assert len(ops) > 20 and len(floats) == INT8_FLOAT_TAIL
    for node in ops:
        if node in floats:
            assert node.input[1] in initializers, node.name                      # float weights, float input
            assert producer.get(node.input[0]) != "DequantizeLinear", node.name
        else:
            assert node.op_type != "ConvTranspose", node.name
            assert [producer.get(i) for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
    # PRNet's layer strides: the tail is 32ch@128 (s1), 16ch@256 (s2), 16ch@256 (s1), then three 3-channel layers
    assert [n.op_type for n in floats] == ["Conv", "ConvTranspose", "Conv"] + ["ConvTranspose"] * 3
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "int8" and props["calibration_images"] == str(calibration_images)
    assert props["batch"] == "dynamic"


def test_int8_export_quantises_every_conv_and_matmul_but_the_decoder_tail(int8_export, tmp_path):
    _check_int8_graph(int8_export[2], 4)                                    # E2TKFace, through the command line
    torch.manual_seed(0)
    path = tmp_path / "prnet-int8.onnx"
    export_onnx(calibrated(build_model("prnet")), path, "prnet", {}, bfm="synthetic",
                calibration=[np.random.default_rng(i).random((3, 256, 256), dtype=np.float32) for i in range(2)])
    _check_int8_graph(path, 2)


def test_int8_graph_runs_batched_and_in_range(int8_export):
    """The int8 graph runs a batch (the batch axis stays dynamic) and its published head keeps the tanh range. How
    far int8 moves a trained network's landmarks is bounded in tests/test_trained_backends.py (a random network's
    int8 error says nothing)."""
    _, _, path, crops = int8_export
    from inference.export import calibration_crops

    x = np.stack(calibration_crops(crops))
    backend = OnnxBackend(path)
    out = backend(x)
    assert out.shape == (4, 3, 256, 256) and np.isfinite(out).all() and np.abs(out).max() <= 1 + 1e-6
    assert np.abs(out[2:3] - backend(x[2:3])).max() < 1e-4          # the batch axis stays dynamic


def test_int8_export_bad_calibration_input_is_one_sentence(int8_export, tmp_path, capsys):
    import torchrun

    _, ck, _, _ = int8_export
    not_processed = tmp_path / "photos"
    not_processed.mkdir()
    cases = [([], "-td"),                                    # the checkpoint records no training folder
             ([f"-td={not_processed}"], "calibration"),
             ([f"-td={tmp_path / 'missing'}"], "-td")]
    for extra, needle in cases:
        code = torchrun.main(["-export=onnx-int8", f"--loadModelPath={ck}", f"-o={tmp_path / 'x.onnx'}"] + extra)
        err = capsys.readouterr().err.strip()
        assert code != 0 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    code = torchrun.main(["-export=tflite", f"--loadModelPath={ck}", f"-o={tmp_path / 'x.onnx'}"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "onnx-int8" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_bf16_predictor_casts_weights_once_and_stays_close_to_fp32(exported):
    """--precision=bf16 for -predict: the weights are cast once to bf16 (the caller's model untouched), the
    output comes back as float32 within bf16 rounding; E2TKFace runs that way end to end."""
    rng = np.random.default_rng(2)
    crops = rng.random((2, 3, 256, 256)).astype(np.float32)
    smooth = _Smooth().eval()
    ref = Predictor(smooth, device="cpu", bfm="synthetic").backend(crops)
    low = Predictor(smooth, device="cpu", bfm="synthetic", precision="bf16", channels_last=True)
    assert all(p.dtype == torch.bfloat16 for p in low.backend.module.parameters())
    assert all(p.dtype == torch.float32 for p in smooth.parameters())
    out = low.backend(crops)
    assert out.dtype == np.float32 and out.shape == ref.shape
    diff = np.abs(out - ref)
    assert 0 < diff.max() < 2e-2 and diff.mean() < 3e-3            # bf16 keeps 8 significant bits

    # E2TKFace runs so end to end (its bf16 accuracy: tests/test_trained_backends.py, on a trained network)
    net, path, _ = exported["e2tkface"]
    image = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    boxes = np.array([[40.0, 50.0, 190.0, 200.0], [230.0, 60.0, 380.0, 210.0]])
    e2 = Predictor(net, device="cpu", bfm="synthetic", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in e2.backend.module.parameters())
    faces = e2(image, boxes)
    assert len(faces) == 2 and all(np.isfinite(f.landmarks).all() for f in faces)
    with pytest.raises(RunError, match="apply to torch checkpoints"):
        Predictor(path, device="cpu", precision="bf16")


def test_compiled_predictor_matches_eager(tmp_path, monkeypatch):
    """--compile: the torch.compile'd network gives the eager network's output (tiny net: the compile is quick)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))     # compiled kernels stay in tmp
    monkeypatch.setattr(inductor_config, "compile_threads", 1)    # compile in this process: no worker pool to start
    crops = np.random.default_rng(4).random((2, 3, 256, 256)).astype(np.float32)
    smooth = _Smooth().eval()
    ref = Predictor(smooth, device="cpu", bfm="synthetic").backend(crops)
    compiled = Predictor(smooth, device="cpu", bfm="synthetic", compile=True)
    assert compiled.backend.module is not smooth and hasattr(compiled.backend.module, "_orig_mod")
    np.testing.assert_allclose(compiled.backend(crops), ref, rtol=1e-5, atol=1e-5)
