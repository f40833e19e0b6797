"""The one way from a checkpoint to a network: model identity, builder arguments and face model, each chosen by the
rule "explicit flag > what the checkpoint records > default", and the weights loaded (weights_only, strict).

train (--loadModelPath / --resume), -test, -predict, -export, the demo and the benchmarks all come through here, so
they agree on which network and which face model (UV layout, landmark pixels, weight mask) a checkpoint means.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from engine.checkpoint import check_model_identity, load_checkpoint, load_weights, unwrap
from engine.errors import RunError

DEFAULT_MODEL = "e2tkface"
POSMAP_MODELS = ("e2tkface", "prnet")          # the registered models that take --head and --input-size


@dataclass
class LoadedNetwork:
    """A network built from a checkpoint.

    module: the network with the checkpoint's weights (eval mode; its export() twin when asked for);
    name / kwargs: the registered model name and builder arguments it was built with; bfm: the face model it was
    trained on, resolved ("synthetic" or a face3d data/Out folder); checkpoint: the loaded checkpoint dict.
    """

    module: nn.Module
    name: str
    kwargs: dict
    bfm: str
    checkpoint: dict
    path: Path


def model_spec(config) -> tuple[str, dict]:
    """(registered model name, constructor kwargs) a Config asks for; --encoder applies to e2tkface only,
    --head and --input-size to the position-map networks (POSMAP_MODELS)."""
    kwargs = dict(config.model_kwargs)
    if config.model == "e2tkface":
        kwargs.setdefault("encoder", config.encoder)
    if config.model in POSMAP_MODELS:
        kwargs.setdefault("head", config.head)
        kwargs.setdefault("input_size", config.input_size)
    if config.canonicalize:                      # the registry refuses it, in one sentence, for other networks
        from model.canonical import ESTIMATOR_ORDER

        kwargs.setdefault("canonicalize", True)
        kwargs.setdefault("estimator_order", ESTIMATOR_ORDER)      # recorded, so the checkpoint says which it holds
    return config.model, kwargs


def needs_mean_posmap(model: nn.Module) -> bool:
    """Whether the model's output head adds a mean position map (model.head.PosmapIO, head "mean-residual")."""
    io = getattr(unwrap(model), "io", None)
    return io is not None and io.head == "mean-residual"


def check_canonicalizer(requested: dict, recorded: dict, path: Path) -> None:
    """RunError (one sentence) when --canonicalize asks for a canonicaliser a saved network does not hold (its
    recorded builder arguments): the angle estimator is trained with the network, it cannot be added afterwards."""
    if requested.get("canonicalize") and not recorded.get("canonicalize"):
        raise RunError(f"--canonicalize asks for a canonicalised network, but {path} holds one without the angle "
                       f"estimator, which cannot be added to a saved network: train one with --canonicalize "
                       f"(without --loadModelPath), or leave the flag out.")


def is_canonicalized(model: nn.Module) -> bool:
    """Whether the model is a model.canonical.Canonicalized wrapper (--canonicalize: it trains an angle estimator)."""
    return hasattr(unwrap(model), "last_vector")


def build_network(name: str, kwargs: dict, source: str | Path | None = None) -> nn.Module:
    """build_model(name, **kwargs) with one sentence for arguments the builder refuses: a RunError naming the
    checkpoint `source` when the arguments came from one, else a ConfigError (they came from the flags)."""
    from config import ConfigError
    from model.registry import build_model

    try:
        return build_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        if source is not None:
            raise RunError(f"The checkpoint {source} names a model ({name}, {kwargs}) this code cannot build: "
                           f"{err}.") from None
        raise ConfigError(f"Cannot build --model={name} with arguments {kwargs}: {err}.") from None


def default_factory(name: str, **kwargs) -> nn.Module:
    """The ModelFactory used when none is given: the registry, with one-sentence errors."""
    return build_network(name, kwargs)


def recorded_bfm(checkpoint: dict) -> str | None:
    """The face model a checkpoint records: its top-level "bfm", else its training config's --bfm (older files)."""
    if checkpoint.get("bfm"):
        return str(checkpoint["bfm"])
    config = checkpoint.get("config")
    return str(config["bfm"]) if isinstance(config, dict) and config.get("bfm") else None


def face_model_for(explicit: str | None, recorded: str | None) -> str:
    """explicit --bfm > the recorded face model > "auto", resolved once (config.resolve_bfm: "auto" is data/Out when
    it holds BFM.mat, else "synthetic"). Checkpoints written since the face model is stored resolved never carry
    "auto", so their face model does not depend on the working directory."""
    from config import resolve_bfm

    return resolve_bfm(explicit or recorded or "auto")


def load_network(path: str | Path, *, model: str | None = None, model_kwargs: dict | None = None,
                 bfm: str | None = None, export: bool = True, train: bool = False,
                 factory: Callable[..., nn.Module] | None = None, checkpoint: dict | None = None) -> LoadedNetwork:
    """Build the network a checkpoint holds and load its weights.

    model: an explicitly requested model name (a checkpoint of another model is a RunError); model_kwargs: builder
    arguments used only for a bare state_dict that records none; bfm: an explicit face model (else the recorded
    one, else "auto"); export: swap in the plain-torch twin (model.export()) for inference; train: leave the
    network in training mode (for fine-tuning / resuming; export is then ignored); factory(name, **kwargs): builds
    the network instead of the registry (tests, custom models); checkpoint: the file's contents when already loaded.
    """
    path = Path(path)
    ck = checkpoint if checkpoint is not None else load_checkpoint(path)
    name = model or DEFAULT_MODEL
    kwargs = dict(model_kwargs or {})
    check_model_identity(ck, path, name, model is not None)
    if ck.get("model_name") is not None:
        check_canonicalizer(kwargs, ck.get("model_kwargs") or {}, path)
        name, kwargs = ck["model_name"], dict(ck.get("model_kwargs") or {})
        if kwargs.get("canonicalize") and "estimator_order" not in kwargs:
            from model.canonical import LEGACY_ORDER

            kwargs["estimator_order"] = LEGACY_ORDER       # saved before the order was recorded: a C8 estimator
    net = factory(name, **kwargs) if factory is not None else build_network(name, kwargs, path)
    load_weights(net, ck, path)
    if train:
        net.train()
    else:
        net.eval()
        if export and hasattr(net, "export"):
            net = net.export().eval()
    return LoadedNetwork(net, name, kwargs, face_model_for(bfm, recorded_bfm(ck)), ck, path)
