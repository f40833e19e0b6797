"""ONNX export of a trained network (encoder export() applied, dynamic batch axis, identity in metadata_props), in
fp32 or statically quantised to int8, and its onnxruntime-backed twin of the Predictor (same interface); used by
-export=onnx / -export=onnx-int8 and by -predict on a .onnx file.

Decoder form (model.decoder.as_convolutions): the fp32 graph computes the stride-1 transposed convolutions with more
than 3 output channels as convolutions (exact; faster in onnxruntime); the int8 graph does so for every transposed
convolution it quantises, since onnxruntime's int8 kernels (QLinearConv) cover convolutions only. The int8 graph is
QDQ (onnxruntime.quantization.quantize_static): weights int8 per output channel, activations uint8 with ranges from
calibration crops (min/max), for every Conv and MatMul (and the ReLUs and pads between them) except in the last
INT8_FLOAT_TAIL decoder layers; those, the attention's elementwise parts, normalisations and the rest stay float.
"""
from __future__ import annotations

import copy
import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from engine.errors import RunError

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "posmap"
#: metadata_props keys written into every exported file
META_KEYS = ("format", "model_name", "model_kwargs", "bfm", "posmap_scale", "input_size", "input", "output", "batch",
             "precision", "calibration_images")
#: -export formats: name -> precision of the graph
FORMATS = {"onnx": "fp32", "onnx-int8": "int8"}
#: calibration crops an int8 export reads (evenly spaced over the folder)
CALIBRATION_IMAGES = 64
#: op types quantised in an int8 export. Relu / Clip let each convolution's uint8 output take the activation's range
#: (onnxruntime fuses them into QLinearConv; median landmark shift on the early checkpoint named below 1.98 -> 1.42 px against
#: Conv + MatMul alone); Pad then runs on uint8 too.
INT8_OPS = ("Conv", "MatMul", "Relu", "Clip", "Pad")
#: decoder layers an int8 export keeps in float: the last six (32 and 16 channels at 128^2 and 256^2, and the three
#: 3-channel output layers). On an early checkpoint of a 45-minute --demo run (2026-11-25, NME 28 %) the median
#: landmark shift against fp32 was 1.42 px with these six float, 1.72 / 2.31 / 3.07 px with four / five / all of the
#: 128^2-256^2 layers int8. The run's final checkpoint is more sensitive: see benchmarks/results/predict.md.
INT8_FLOAT_TAIL = 6


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


def calibration_crops(folder, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Up to ``count`` network inputs, (3, 256, 256) float32 in [0, 1], evenly spaced over a processor output folder
    (the training set is the natural choice). RunError (one sentence) when the folder is not one."""
    from data.dataset import PosmapDataset
    from faceutil.errors import FaceUtilError

    try:
        data = PosmapDataset(folder)
        picks = np.unique(np.linspace(0, len(data) - 1, num=min(count, len(data))).round().astype(int))
        return [data[int(i)]["image"].numpy() for i in picks]
    except (FaceUtilError, OSError) as err:
        raise RunError(f"Cannot read calibration crops from {folder}: {err}".rstrip(".") + ".") from None


def _quantize_int8(data: bytes, crops, float_scopes=()) -> bytes:
    """The fp32 graph ``data`` as a QDQ int8 graph calibrated on ``crops`` (see the module docstring); nodes whose
    name contains one of ``float_scopes`` (torch module scopes such as "/decoder/layers/layers.13/") stay float."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.items = iter({INPUT_NAME: np.ascontiguousarray(c, dtype=np.float32)[None]} for c in crops)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="e2tk-int8-") as tmp:
        src, pre, dst = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            keep = [n.name for n in onnx.load(str(pre)).graph.node if any(scope in n.name for scope in float_scopes)]
            quantize_static(str(pre), str(dst), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(INT8_OPS), nodes_to_exclude=keep)
        return dst.read_bytes()


def export_onnx(model, path, model_name: str, model_kwargs: dict | None = None, bfm: str = "synthetic",
                dynamic_batch: bool = True, calibration=None) -> dict:
    """Write ``model`` (eval mode, encoder export() applied) as ONNX at ``path``, atomically.

    The graph maps "image" (B, 3, 256, 256) float32 RGB in [0, 1] to "posmap" (B, 3, 256, 256) = position map / 280.
    calibration: None for an fp32 graph (torch within 1e-3); a sequence of network inputs, (3, 256, 256) float32
    crops (calibration_crops()), for an int8 graph calibrated on them (metadata precision "int8").
    The batch axis is dynamic; when the traced graph turns out to have the batch size baked in (checked with
    onnxruntime: batch 2 against two batch-1 runs), the file declares batch 1 instead and metadata "batch" = "1"
    (the predictor then feeds one face at a time). metadata_props: model_name, model_kwargs (JSON), bfm,
    posmap_scale, input_size, batch, precision, calibration_images, format. Returns the metadata dict.
    """
    import onnx

    from faceutil.sampleio import atomic_write_bytes
    from model.decoder import as_convolutions

    net = model.eval().export() if hasattr(model, "export") else copy.deepcopy(model)
    int8 = calibration is not None
    if int8 and not len(calibration):
        raise RunError("An int8 export needs at least one calibration crop.")
    net = net.eval().to("cpu")
    layers = list(net.decoder.layers) if hasattr(net, "decoder") and hasattr(net.decoder, "layers") else []
    n_int8 = max(0, len(layers) - INT8_FLOAT_TAIL) if int8 else 0
    for layer in layers[:n_int8]:
        as_convolutions(layer, strides=(1, 2))
    as_convolutions(net, strides=(1,))                   # fp32 layers: only stride 1 is faster as a convolution
    data = _trace_to_onnx(net, 1, dynamic_batch)
    if int8:
        data = _quantize_int8(data, calibration, [f"/decoder/layers/layers.{i}/" for i in range(n_int8, len(layers))])
    batch = "dynamic" if dynamic_batch and _batch_works(data) else "1"
    proto = onnx.load_from_string(data)
    if batch == "1":
        _fix_batch_one(proto)          # traced at batch 1, so the graph is exact for one image at a time
    meta = {"format": "e2tkface-onnx-1", "model_name": str(model_name), "model_kwargs": json.dumps(model_kwargs or {}),
            "bfm": str(bfm), "posmap_scale": "280", "input_size": "256",
            "input": "image (B,3,256,256) float32 RGB in [0,1]", "output": "posmap (B,3,256,256) = position map / 280",
            "batch": batch, "precision": "int8" if int8 else "fp32",
            "calibration_images": str(len(calibration)) if int8 else "0"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "E2TKFace"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return meta


def OnnxPredictor(path, device=None, bfm: str | None = None, batch_size: int = 8, detector=None):
    """The onnxruntime twin of inference.predict.Predictor (same __call__(image, boxes) -> list[FaceResult])."""
    from inference.predict import Predictor

    if Path(path).suffix.lower() != ".onnx":
        raise RunError(f"{path} is not an .onnx file.")
    return Predictor(path, device=device, bfm=bfm, batch_size=batch_size, detector=detector)


def run_export(config, checkpoint=None) -> Path:
    """CLI entry: -export=onnx|onnx-int8 --loadModelPath=CKPT -o=model.onnx [-td=CALIBRATION_FOLDER]. The int8
    export calibrates on crops of -td (default: the training folder the checkpoint records). Prints where the file
    went; RunError on failure."""
    from engine.loading import load_network

    fmt = str(config.export_format).lower()
    if fmt not in FORMATS:
        raise RunError(f"-export={config.export_format} is not supported; use -export=onnx or -export=onnx-int8.")
    source = checkpoint or config.load_model_path
    if source is None:
        raise RunError(f"-export={fmt} needs --loadModelPath=PATH to a checkpoint.")
    given = getattr(config, "given", ())
    model = config.model if "model" in given else None
    requested = {**config.model_kwargs, **({"canonicalize": True} if getattr(config, "canonicalize", False) else {})}
    loaded = load_network(source, model=model, model_kwargs=requested,
                          bfm=config.bfm if "bfm" in given else None, export=True)
    net, name, kwargs, bfm = loaded.module, loaded.name, loaded.kwargs, loaded.bfm
    recorded = loaded.checkpoint.get("config") if isinstance(loaded.checkpoint.get("config"), dict) else {}
    crops = None
    if FORMATS[fmt] == "int8":
        folder = config.train_dir if "train_dir" in given else recorded.get("train_dir")
        if not folder or not Path(folder).is_dir():
            raise RunError(f"-export={fmt} calibrates on training crops: give -td=DIR (a processor output folder); "
                           f"the checkpoint records {folder or 'none'}, which is not a folder here.")
        crops = calibration_crops(folder)
    out = Path(config.out) if config.out else Path(source).with_suffix(".onnx")
    if out.is_dir():
        out = out / (Path(source).stem + ".onnx")
    meta = export_onnx(net, out, name, kwargs, bfm, calibration=crops)
    detail = f", int8 calibrated on {meta['calibration_images']} crops" if crops is not None else ""
    print(f"exported {name} ({'dynamic' if meta['batch'] == 'dynamic' else 'fixed batch 1'}{detail}) to {out}")
    if crops is not None:
        print("int8 moves landmarks against fp32: measure it on your test set before quoting NME from this file "
              "(python benchmarks/predict.py --checkpoint CKPT --test-dir DIR --calibration-dir DIR).")
    return out
