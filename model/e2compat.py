"""Compatibility shim for e2cnn 0.2.3 on torch >= 2: makes its basis-expansion masks boolean.

Owns the one patch the encoder needs from e2cnn; ``model.encoder`` applies it when imported (idempotent).

Why: ``e2cnn.nn.modules.r2_conv.basisexpansion_singleblock.SingleBlockBasisExpansion.__init__`` turns its
element mask into a ``uint8`` tensor (``torch.tensor(mask.astype(np.uint8))``) and later writes
``full_mask[mask] = norms.to(torch.uint8)``.  When the block keeps exactly one basis element (e.g. a 1x1
``R2Conv`` between trivial and regular fields) torch routes that assignment to ``masked_fill_``, which on
torch >= 2 refuses non-boolean masks ("masked_fill_ only supports boolean masks"); with more elements it only
warns that uint8 indexing is deprecated.  The patch gives that module a view of ``torch`` whose ``tensor()``
turns ``uint8`` numpy arrays into ``bool`` tensors and whose ``uint8`` dtype is ``bool`` (the module uses
``torch.uint8`` only for that mask), so ``mask``, ``full_mask`` and the assigned values are all boolean and both
the error and the warning disappear.  Nothing else in e2cnn or torch is touched.
"""
from __future__ import annotations

import importlib
import inspect
import types

import numpy as np
import torch

_TARGET = "e2cnn.nn.modules.r2_conv.basisexpansion_singleblock"
_MARKER = "_e2tkface_bool_masks"


class _BoolMaskTorch(types.ModuleType):
    """A stand-in for the ``torch`` module inside e2cnn's single-block expansion: same attributes, except that
    ``tensor(ndarray of uint8)`` returns a boolean tensor and ``uint8`` names ``torch.bool``."""

    def __init__(self, real_torch: types.ModuleType):
        super().__init__("torch")
        self._real = real_torch

    def __getattr__(self, name):
        if name == "uint8":
            return self._real.bool
        return getattr(self._real, name)

    def tensor(self, data, *args, **kwargs):
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and not args and not kwargs:
            return self._real.tensor(data.astype(bool))
        return self._real.tensor(data, *args, **kwargs)


def _needs_patch(module: types.ModuleType) -> bool:
    """True when the installed source still builds uint8 masks (True too when the source cannot be read)."""
    try:
        source = inspect.getsource(module.SingleBlockBasisExpansion.__init__)
    except (OSError, TypeError):
        return True
    return "uint8" in source


def apply_e2cnn_compat() -> bool:
    """Patch e2cnn's single-block basis expansion to use boolean masks; safe to call any number of times.

    Returns:
        True when the patch is in place after the call, False when the installed e2cnn does not need it.
    """
    module = importlib.import_module(_TARGET)
    state = getattr(module, _MARKER, None)
    if state is not None:
        return state
    patched = _needs_patch(module)
    if patched:
        module.torch = _BoolMaskTorch(torch)
    setattr(module, _MARKER, patched)
    return patched
