"""ONNX export of a trained network (encoder export() applied, dynamic batch axis, identity in metadata_props) and its
onnxruntime-backed twin of the Predictor (same interface), used by -export=onnx and by -predict on a .onnx file.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from engine.errors import RunError

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "posmap"
#: metadata_props keys written into every exported file
META_KEYS = ("format", "model_name", "model_kwargs", "bfm", "posmap_scale", "input_size", "input", "output", "batch")


def _trace_to_onnx(module, batch: int, dynamic: bool) -> bytes:
    import torch

    dummy = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # TracerWarnings about shape asserts; the result is verified below
        torch.onnx.export(module, (dummy,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()


def _session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4          # the batch probe may fail on purpose: no error print
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _batch_works(data: bytes) -> bool:
    """True when the exported graph runs a batch of 2 and gives each item's batch-1 result (some graphs bake the
    traced batch size into a reshape)."""
    x = np.random.default_rng(1).random((2, 3, 256, 256), dtype=np.float32)
    session = _session(data)
    try:
        both = session.run(None, {INPUT_NAME: x})[0]
    except Exception:  # onnxruntime raises its own Fail / InvalidArgument types for a baked-in reshape
        return False
    ones = np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(2)])
    return both.shape == ones.shape and float(np.abs(both - ones).max()) <= 1e-4


def _fix_batch_one(proto) -> None:
    """Declare the graph's input and output batch dimension as exactly 1."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1


def export_onnx(model, path, model_name: str, model_kwargs: dict | None = None, bfm: str = "synthetic",
                dynamic_batch: bool = True) -> dict:
    """Write ``model`` (eval mode, encoder export() applied) as ONNX at ``path``, atomically.

    The graph maps "image" (B, 3, 256, 256) float32 RGB in [0, 1] to "posmap" (B, 3, 256, 256) = position map / 280.
    The batch axis is dynamic; when the traced graph turns out to have the batch size baked in (checked with
    onnxruntime: batch 2 against two batch-1 runs), the file declares batch 1 instead and metadata "batch" = "1"
    (the predictor then feeds one face at a time). metadata_props: model_name, model_kwargs (JSON), bfm,
    posmap_scale, input_size, batch, format. Returns the metadata dict.
    """
    import onnx

    from faceutil.sampleio import atomic_write_bytes

    net = model.eval()
    if hasattr(net, "export"):
        net = net.export()
    net = net.eval().to("cpu")
    data = _trace_to_onnx(net, 1, dynamic_batch)
    batch = "dynamic" if dynamic_batch and _batch_works(data) else "1"
    proto = onnx.load_from_string(data)
    if batch == "1":
        _fix_batch_one(proto)          # traced at batch 1, so the graph is exact for one image at a time
    meta = {"format": "e2tkface-onnx-1", "model_name": str(model_name), "model_kwargs": json.dumps(model_kwargs or {}),
            "bfm": str(bfm), "posmap_scale": "280", "input_size": "256",
            "input": "image (B,3,256,256) float32 RGB in [0,1]", "output": "posmap (B,3,256,256) = position map / 280",
            "batch": batch}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "E2TKFace"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return meta


class OnnxBackend:
    """onnxruntime session over an exported file; same call contract as engine.predict.TorchBackend.

    metadata: the file's metadata_props as a dict. max_batch: 1 for files exported with a fixed batch, else None.
    """

    name = "onnxruntime"

    def __init__(self, path, device=None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - listed in requirements.txt
            raise RunError("onnxruntime is not installed, so the .onnx model cannot be run (pip install "
                           "onnxruntime).") from None
        path = Path(path)
        providers = ["CPUExecutionProvider"]
        if device is not None and str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RunError(f"--device={device} was asked for, but this onnxruntime has no CUDA provider.")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises InvalidProtobuf / Fail / ... for damaged files
            detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise RunError(f"Cannot load the ONNX model {path}: {detail}.") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape)[1:] != [3, 256, 256]:
            raise RunError(f"The ONNX model {path} does not take one (B, 3, 256, 256) image input.")
        self.input_name = inputs[0].name
        self.max_batch = 1 if self.metadata.get("batch") == "1" or isinstance(inputs[0].shape[0], int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """batch (B, 3, 256, 256) float32 in [0, 1] -> (B, 3, 256, 256) float32 network output."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.max_batch == 1 and len(x) > 1:
            return np.concatenate([self(x[i:i + 1]) for i in range(len(x))])
        return self.session.run(None, {self.input_name: x})[0]


def OnnxPredictor(path, device=None, bfm: str | None = None, batch_size: int = 8, detector=None):
    """The onnxruntime twin of engine.predict.Predictor (same __call__(image, boxes) -> list[FaceResult])."""
    from engine.predict import Predictor

    if Path(path).suffix.lower() != ".onnx":
        raise RunError(f"{path} is not an .onnx file.")
    return Predictor(path, device=device, bfm=bfm, batch_size=batch_size, detector=detector)


def run_export(config, checkpoint=None) -> Path:
    """CLI entry: -export=onnx --loadModelPath=CKPT -o=model.onnx. Prints where the file went; RunError on failure."""
    from engine.predict import load_torch_model, resolve_bfm_spec

    fmt = str(config.export_format).lower()
    if fmt != "onnx":
        raise RunError(f"-export={config.export_format} is not supported; use -export=onnx.")
    source = checkpoint or config.load_model_path
    if source is None:
        raise RunError("-export=onnx needs --loadModelPath=PATH to a checkpoint.")
    given = getattr(config, "given", ())
    model = config.model if "model" in given else None
    net, name, kwargs, ck = load_torch_model(source, model, dict(config.model_kwargs), export=True)
    recorded = (ck.get("config") or {}).get("bfm") if isinstance(ck.get("config"), dict) else None
    bfm = resolve_bfm_spec(config.bfm if "bfm" in given else recorded)
    out = Path(config.out) if config.out else Path(source).with_suffix(".onnx")
    if out.is_dir():
        out = out / (Path(source).stem + ".onnx")
    meta = export_onnx(net, out, name, kwargs, bfm)
    print(f"exported {name} ({'dynamic' if meta['batch'] == 'dynamic' else 'fixed batch 1'}) to {out}")
    return out
