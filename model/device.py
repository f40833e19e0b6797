"""Device and numeric-precision choices, in one place: get_device (cuda when available, else CPU),
autocast_context (bf16 on CPU, fp16/bf16 on CUDA), grad scaler and channels_last helpers. All off by default.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from faceutil.errors import FaceUtilError

PRECISIONS = ("fp32", "bf16", "fp16")


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: prefer=None -> "cuda" when available, else "cpu"; "cpu", "cuda", "cuda:N" (or "mps")
    force one.

    Raises FaceUtilError (one sentence) when CUDA is asked for and is not available.
    """
    if prefer is None or prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError as err:
        raise FaceUtilError(f"device {prefer!r} is not a valid device name (use cpu, cuda or cuda:N).") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FaceUtilError(f"device {prefer!r} was asked for but CUDA is not available on this machine.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FaceUtilError(f"device {prefer!r} does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s).")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise FaceUtilError(f"device {prefer!r} was asked for but Apple MPS is not available on this machine.")
    elif device.type != "cpu":
        raise FaceUtilError(f"device {prefer!r} is not supported (use cpu, cuda or cuda:N).")
    return device


def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """Context manager for mixed precision: "fp32" -> no-op; "bf16" on CPU or CUDA; "fp16" on CUDA only."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise FaceUtilError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise FaceUtilError("precision fp16 needs a CUDA device; use bf16 on CPU.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device | str, precision: str = "fp32") -> torch.amp.GradScaler:
    """Loss scaler for training: active only for fp16 on CUDA (bf16 and fp32 need none)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put the model's 4-D parameters in channels_last memory format and tell models with a channels_last flag to
    feed NHWC tensors to their convolutions; returns the model (modified in place)."""
    model = model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if hasattr(m, "channels_last") and isinstance(m.channels_last, bool):
            m.channels_last = True
    return model


def prepare_input(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a (B, 3, H, W) batch to device (non-blocking), optionally in channels_last layout."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
