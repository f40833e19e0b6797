"""Torch networks for E2TKFace: the registry (build_model / list_models), E2TKFace, the PRNet baseline, Top-K window
attention, decoder, losses, device/precision helpers and size summaries. Importing does no work beyond definitions.
"""
from .device import autocast_context, get_device, grad_scaler, to_channels_last
from .loss import WeightedPosmapLoss
from .registry import build_model, list_models, register_model
from .summary import ModelSummary, summary

# the built-in models register themselves on import (timm's pattern: the registry imports no model module)
from . import e2tkface, prnet  # noqa: E402,F401  isort: skip

__all__ = ["build_model", "list_models", "register_model", "summary", "ModelSummary", "WeightedPosmapLoss",
           "get_device", "autocast_context", "grad_scaler", "to_channels_last"]
