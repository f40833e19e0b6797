"""Network backends behind the Predictor facade and -test: each maps (B, 3, 256, 256) float32 crops in [0, 1] to the
network output (posmap / 280) as float32 arrays.

- TorchBackend: an nn.Module (a checkpoint's network, eager or its export() twin) or any callable, on a torch
  device, in fp32 / bf16 / fp16.
- OnnxBackend: an exported .onnx file (fp32 or int8, inference/export.py) under onnxruntime.

open_network(source) picks the backend for a checkpoint path, an .onnx path, an nn.Module or a callable, and says
which model and face model it holds (engine.loading's rule: explicit flag > recorded > default).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import RunError


class TorchBackend:
    """Runs an nn.Module (or any callable on (B, 3, 256, 256) float tensors) on a torch device.

    precision "bf16" / "fp16" (fp16: CUDA only): an nn.Module's weights are cast once and the inputs with them (no
    per-call casting as under autocast); another callable runs under autocast. channels_last: NHWC convolutions.
    compile: wrap an nn.Module in torch.compile (the first call of each batch size compiles).
    """

    name = "torch"

    def __init__(self, module, device=None, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False):
        import torch

        from model.device import autocast_context, get_device, to_channels_last

        self.device = get_device(device) if not isinstance(device, torch.device) else device
        autocast_context(self.device, precision)           # unknown precision, fp16 without CUDA: one sentence
        self.precision, self.dtype = precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module
        if isinstance(module, torch.nn.Module):
            if channels_last or self.dtype is not None:
                module = copy.deepcopy(module)              # casting and re-laying out are in place: not the caller's
            self.module = module.to(self.device).eval()
            if channels_last:
                to_channels_last(self.module)
            if self.dtype is not None:
                self.module = self.module.to(self.dtype)
            if compile:
                self.module = torch.compile(self.module)
        # weights already in self.dtype: feed inputs in it; a plain callable gets autocast instead
        self.weights_cast = self.dtype is not None and isinstance(module, torch.nn.Module)
        self.max_batch = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """batch (B, 3, 256, 256) float32 in [0, 1] -> (B, 3, 256, 256) float32 network output (posmap / 280)."""
        import torch

        from model.device import autocast_context

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast_context(self.device, "fp32" if self.weights_cast else self.precision):
            out = self.module(x.to(self.dtype) if self.weights_cast else x)
        if isinstance(out, torch.Tensor):
            return out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)



class OnnxBackend:
    """onnxruntime session over an exported file; the same call contract as TorchBackend.

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


@dataclass
class OpenedNetwork:
    """A backend and what it holds: registered model name and builder kwargs (None / {} when unknown) and the
    resolved face model its position maps belong to."""

    backend: object
    name: str | None
    kwargs: dict
    bfm: str


def open_network(source, device=None, bfm: str | None = None, model: str | None = None,
                 model_kwargs: dict | None = None, export: bool = True, precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False) -> OpenedNetwork:
    """The backend for `source`: a checkpoint (.pth / .pt), an exported .onnx file, an nn.Module or a callable.

    bfm / model: explicit choices (a file holding another model is a RunError; the face model defaults to what the
    file records, else "auto"); model_kwargs: builder arguments for a bare state_dict; export: run a torch network's
    export() twin; precision / channels_last / compile: torch only (a RunError for an .onnx file).
    """
    import torch

    from engine.loading import check_canonicalizer, face_model_for, load_network

    name, kwargs, recorded = model, dict(model_kwargs or {}), None
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise RunError(f"The model file {path} does not exist.")
        if path.suffix.lower() == ".onnx":
            if precision != "fp32" or channels_last or compile:
                raise RunError(f"--precision, --channels-last and --compile apply to torch checkpoints; the "
                               f"ONNX file {path} runs as exported (drop those flags).")
            # the same thread count as torch (its default follows the cores this process may use)
            backend = OnnxBackend(path, device=device, threads=torch.get_num_threads())
            meta = backend.metadata
            if model is not None and meta.get("model_name") not in (None, model):
                raise RunError(f"The ONNX file {path} holds a {meta.get('model_name')!r} model, not "
                               f"--model={model!r}; drop --model or pass --model={meta.get('model_name')}.")
            name, kwargs = meta.get("model_name", model), json.loads(meta.get("model_kwargs", "{}"))
            check_canonicalizer(dict(model_kwargs or {}), kwargs, path)
            recorded = meta.get("bfm")
        else:
            loaded = load_network(path, model=model, model_kwargs=model_kwargs, export=export)
            name, kwargs, recorded = loaded.name, loaded.kwargs, loaded.bfm
            backend = TorchBackend(loaded.module, device, precision, channels_last, compile)
    elif isinstance(source, torch.nn.Module):
        net = source.eval()
        if export and hasattr(net, "export"):
            net = net.export()
        backend = TorchBackend(net, device, precision, channels_last, compile)
    elif callable(source):
        backend = TorchBackend(source, device, precision, channels_last, compile)
    else:
        raise TypeError(f"a network source is a checkpoint / .onnx path, an nn.Module or a callable, "
                        f"got {type(source)}")
    return OpenedNetwork(backend, name, kwargs, face_model_for(bfm, recorded))


class BackendModule:
    """A backend seen as a torch network for evaluation code written against nn.Module: tensor in, tensor out."""

    def __init__(self, backend):
        self.backend = backend

    def eval(self):
        return self

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.backend(x.detach().float().cpu().numpy()))


def run_test(config, checkpoint=None):
    """-test=True for any saved network: a .pth through engine.evaluate.run_evaluation as it is; an exported .onnx
    file (fp32 or int8) opened by onnxruntime first, so the NME of the file that is deployed can be quoted. The face
    model is --bfm when given, else the one the file records. Returns the EvalReport."""
    from engine.evaluate import run_evaluation
    from model.device import get_device

    checkpoint = checkpoint or config.load_model_path
    if checkpoint is None or Path(checkpoint).suffix.lower() != ".onnx":
        return run_evaluation(config, checkpoint=checkpoint)
    opened = open_network(checkpoint, device=get_device(config.device),
                          bfm=config.bfm if "bfm" in config.given else None,
                          model=config.model if "model" in config.given else None, precision=config.precision)
    return run_evaluation(config, checkpoint=checkpoint, model=BackendModule(opened.backend), bfm=opened.bfm)
