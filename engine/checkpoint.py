"""Checkpoints: atomic save, safe loading (torch.load weights_only=True), RNG state capture/restore, model identity.

A checkpoint is a dict of tensors and plain Python values only, so it loads without unpickling arbitrary objects.
"""
from __future__ import annotations

import io
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import RunError

FORMAT = "e2tkface-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU, and CUDA when initialised) global RNG states as tensors / plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- save / load
def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict, **extra) -> dict:
    """The checkpoint dict: format tag, model identity (name + kwargs), model weights on CPU, plus ``extra``."""
    weights = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "model_name": model_name, "model_kwargs": dict(model_kwargs),
            "model": weights, **extra}


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """torch.save ``checkpoint`` to ``path`` atomically (temp file in the same folder, then rename)."""
    from faceutil.sampleio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
    return path


def copy_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` hold the same bytes as the checkpoint file ``source``, atomically: a hard link (no copy: the
    next atomic write of ``source`` replaces its name with a new file, so ``path`` keeps these bytes), or, where the
    file system has no hard links, a copy through a temp file."""
    import os
    import uuid

    from faceutil.sampleio import atomic_write_bytes

    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(path, source.read_bytes())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with torch.load(weights_only=True); refuses files holding arbitrary pickled objects.

    Returns our checkpoint dict; a bare state_dict (e.g. published weights) is wrapped as
    {"model": state_dict, "model_name": None, "model_kwargs": None}. Raises RunError with one sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"The checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise RunError(f"The checkpoint {path} is empty (0 bytes).")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"Refusing to load {path}: it holds pickled objects other than tensors and plain values "
                       "(code could run), and only weights are loaded.") from None
    except Exception:  # noqa: BLE001 - torch raises many kinds (KeyError, RuntimeError, OSError...) for bad bytes
        raise RunError(f"Cannot read the checkpoint {path}: the file is damaged or is not a PyTorch checkpoint "
                       "(truncated download?).") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"format": None, "model": data, "model_name": None, "model_kwargs": None}
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return {"format": None, "model": data["state_dict"], "model_name": None, "model_kwargs": None}
    raise RunError(f"The file {path} is not an E2TKFace checkpoint or a model state_dict.")


def check_model_identity(checkpoint: dict, path: str | Path, model_name: str, explicit: bool) -> None:
    """Raise RunError when the user asked (explicitly) for another model than the checkpoint holds."""
    held = checkpoint.get("model_name")
    if held is not None and explicit and held != model_name:
        raise RunError(f"The checkpoint {path} holds a {held!r} model, not --model={model_name!r}; "
                       f"drop --model or pass --model={held}.")


def load_weights(model: nn.Module, checkpoint: dict, path: str | Path) -> None:
    """Copy the checkpoint's weights into ``model`` (strict); a shape or key mismatch is one sentence."""
    weights = checkpoint["model"]
    if weights and all(k.startswith("module.") for k in weights):      # saved from a DDP/DataParallel wrapper
        weights = {k[len("module."):]: v for k, v in weights.items()}
    expected = set(unwrap(model).state_dict())
    missing = expected - set(weights)
    if missing and all(k.endswith("mean_posmap") for k in missing) and not set(weights) - expected:
        raise RunError(f"The checkpoint {path} does not carry the mean position map its mean-residual head needs "
                       f"(a bare state_dict, or weights of a network with another head); pass --head=published for "
                       f"weights trained with the published head.")
    try:
        unwrap(model).load_state_dict(weights, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise RunError(f"The weights in {path} do not fit this model ({detail[:200]}); check --model, --encoder "
                       f"and --model-kwargs.") from None
