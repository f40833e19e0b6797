"""Model registry: every architecture is a builder function registered by name; build_model(name, **kwargs) is the
one door in, list_models() names what is there. The model modules import this one and register their builders when
the model package is imported (model/__init__.py); this module imports none of them (model.canonical only when
asked to wrap one).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .errors import ModelConfigError

__all__ = ["CANONICALIZABLE", "ModelConfigError", "build_model", "list_models", "register_model"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
CANONICALIZABLE = ("e2tkface", "prnet")     # position-map networks: (B, 3, 256, 256) crop -> posmap / 280 of it


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder function under ``name`` (lower case); a second use of a name is an error."""
    key = name.lower()

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if key in _BUILDERS and _BUILDERS[key] is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[key] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, canonicalize: bool = False, estimator_order: int | None = None, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with builder keyword overrides; an unknown name raises ModelConfigError.

    canonicalize=True wraps a position-map network (CANONICALIZABLE) in model.canonical.Canonicalized (an angle
    estimator turns the crop upright, the output values are turned back); it is one more builder keyword, so it
    travels in a checkpoint's model_kwargs. Without it (or with False) the model is built exactly as before.
    estimator_order: the estimator's rotation group C_N (default model.canonical.ESTIMATOR_ORDER; checkpoints that
    record none are loaded with LEGACY_ORDER by engine.loading).
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise ModelConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(_BUILDERS))}.")
    if canonicalize not in (True, False):
        raise ModelConfigError(f"canonicalize must be true or false, got {canonicalize!r}.")
    if canonicalize and key not in CANONICALIZABLE:
        raise ModelConfigError(f"canonicalize needs a position-map network ({', '.join(CANONICALIZABLE)}); "
                               f"model {name!r} cannot carry it.")
    if estimator_order is not None and not canonicalize:
        raise ModelConfigError("estimator_order belongs to a canonicalised network: give canonicalize=True with it.")
    net = _BUILDERS[key](**kwargs)
    if not canonicalize:
        return net
    from .canonical import ESTIMATOR_ORDER, AngleEstimator, Canonicalized     # deferred: e2cnn is slow to import

    return Canonicalized(net, AngleEstimator(N=ESTIMATOR_ORDER if estimator_order is None else estimator_order))
