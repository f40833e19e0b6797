"""Memorisation probes: a network trained on the same 16 training crops as one full batch (no augmentation) for a
fixed number of steps, its loss every step against the mean-map loss of those images, and per-block diagnostics
(benchmarks.convergence.diagnostics). The fastest test of an optimiser or architecture pathology. Owns the probe
settings (PROBE_DEFAULTS), the named sets (PROBE_SETS), the runner and the resumable loop the escape probes share."""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_line, write_json
from benchmarks.convergence.diagnostics import feature_stats, grad_norms, layer_groups, tensor_stats
from benchmarks.study_data import memorise_batch, study_data
from faceutil.uv import POSMAP_SCALE

PROBE_DEFAULTS = {"model": "e2tkface", "encoder": "cnn", "width_mult": 0.5, "input_size": 128, "head": "published",
                  "lr": 1e-4, "warmup": 0, "weight_decay": 2e-4, "decay_norm_bias": True, "optimizer": "adam",
                  "steps": 150, "images": 16, "precision": "bf16", "seed": 0, "tail_relu": True}


def probe_name(spec: dict) -> str:
    """A file name that names every setting differing from PROBE_DEFAULTS."""
    parts = [spec["model"]]
    for key in sorted(spec):
        if key != "model" and spec[key] != PROBE_DEFAULTS.get(key):
            parts.append(f"{key}={spec[key]}")
    return "__".join(parts).replace("/", "_")


def build_probe_model(spec: dict):
    """The probe's network; spec "tail_relu": False drops the ReLU of the two 3-channel decoder layers before the
    output layer (an ablation of the published 3-channel bottleneck, probes only)."""
    from torch import nn

    from model.registry import build_model

    kwargs = {"input_size": spec["input_size"], "head": spec["head"]}
    if spec["model"] == "e2tkface":
        kwargs.update(encoder=spec["encoder"], width_mult=spec["width_mult"])
    model = build_model(spec["model"], **kwargs)
    if not spec.get("tail_relu", True):
        for layer in model.decoder.layers[-3:-1]:
            layer.act = nn.Identity()
    return model


def make_optimizer(model, spec: dict):
    """Adam (L2 in the gradient, as published) or AdamW; weight decay on BatchNorm/LayerNorm/bias or not."""
    import torch

    from engine.optim import parameter_groups

    groups = parameter_groups(model, spec["weight_decay"], spec["decay_norm_bias"])
    cls = torch.optim.AdamW if spec["optimizer"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=spec["lr"])


def run_probe(spec: dict, batch) -> dict:
    """Memorise `batch` (images, posmaps / POSMAP_SCALE) with the probe's settings; returns the record."""
    from engine.optim import warmup_factor
    from engine.train import seed_everything
    from faceutil.uv import uv_layout
    from model.device import autocast_context
    from model.loss import WeightedPosmapLoss

    weight_mask = uv_layout("synthetic").weight_mask
    x, y = batch
    x, y = x[:spec["images"]], y[:spec["images"]]
    seed_everything(spec["seed"])
    model = build_probe_model(spec)
    if spec["head"] == "mean-residual":
        model.io.set_mean_posmap(y.mean(0).permute(1, 2, 0).numpy() * POSMAP_SCALE)
    loss_fn = WeightedPosmapLoss(weight_mask)
    mean_loss = float(loss_fn(y.mean(0, keepdim=True).expand_as(y), y))
    optimizer = make_optimizer(model, spec)
    groups = layer_groups(model)
    losses, norms, start = [], {}, time.perf_counter()
    model.train()
    for step in range(spec["steps"]):
        for g in optimizer.param_groups:
            g["lr"] = spec["lr"] * warmup_factor(step, spec["warmup"])
        optimizer.zero_grad(set_to_none=True)
        with autocast_context("cpu", spec["precision"]):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        tracked = step in (0, 9, 49) or step == spec["steps"] - 1
        if tracked:
            norms[step + 1] = grad_norms(groups)
            before = [[p.detach().clone() for p in m.parameters()] for _, m in groups]
        optimizer.step()
        if tracked:                                 # relative size of the step each group just took
            for (name, m), old in zip(groups, before):
                moved = sum(float((p.detach() - q).float().square().sum()) for p, q in zip(m.parameters(), old))
                norms[step + 1][name].append(math.sqrt(moved) / max(norms[step + 1][name][1], 1e-20))
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    return {"spec": spec, "mean_map_loss": mean_loss, "losses": losses, "grad_norms": norms,
            "features": {**feature_stats(model, x, groups), "target": tensor_stats(y)},
            "seconds": round(time.perf_counter() - start, 1),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line("cpu")}


_NETS = (("prnet", "cnn"), ("e2tkface", "cnn"))
PROBE_SETS = {
    # the published recipe and its learning-rate range, for each network
    "lr": [dict(model=m, encoder=e, lr=lr) for m, e in _NETS for lr in (1e-4, 5e-4, 2e-3)],
    # the head that starts at the mean position map, same learning rates
    "head": [dict(model=m, encoder=e, lr=lr, head="mean-residual") for m, e in _NETS for lr in (1e-4, 5e-4, 2e-3)],
    # warm-up and weight decay on norms / biases, at the learning rates that collapse
    "warmup": [dict(model=m, encoder=e, lr=lr, head="mean-residual", warmup=50) for m, e in _NETS
               for lr in (5e-4, 2e-3)],
    "decay": [dict(model=m, encoder=e, lr=5e-4, head="mean-residual", decay_norm_bias=False) for m, e in _NETS],
    # between the learning rates that memorise and the one that stays on the mean
    "lr-fine": [dict(model=m, encoder=e, lr=1e-3, head="mean-residual") for m, e in _NETS],
    # the floor both networks reach: without the ReLU of the 3-channel bottleneck before the output
    "tail": [dict(model=m, encoder=e, head="mean-residual", tail_relu=False) for m, e in _NETS],
    # the equivariant encoders
    "encoders": [dict(encoder=e, lr=lr, head=h) for e in ("aligned", "faithful") for lr in (1e-4, 5e-4)
                 for h in ("published", "mean-residual")],
}


def probe_specs(name: str) -> list[dict]:
    return [{**PROBE_DEFAULTS, **s} for s in PROBE_SETS[name]]


def probe_folder(args, kind: str) -> Path:
    """<--out>/<kind> (made), with torch set to --threads threads: where a kind of probe saves its records."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out) / kind
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_probes(args) -> None:
    out = probe_folder(args, "probes")
    train_root, _ = study_data()
    batch = memorise_batch(train_root, 16)
    specs = probe_specs(args.set) if args.set else [{**PROBE_DEFAULTS, **json.loads(args.spec)}]
    run_missing(specs, out, probe_name, lambda spec: run_probe(spec, batch), args.force,
                 lambda r: f"loss {r['losses'][0]:.4f} -> {np.mean(r['losses'][-10:]):.4f} "
                           f"(mean map {r['mean_map_loss']:.4f}), {r['seconds']} s")


def run_missing(specs, out: Path, name_fn, run_fn, force: bool, summary_fn) -> None:
    """Run each spec whose JSON (out / name_fn(spec).json) is missing (all with force), saving it as it ends."""
    for spec in specs:
        path = out / (name_fn(spec) + ".json")
        if path.is_file() and not force:
            print(f"done already: {path.name}", flush=True)
            continue
        record = run_fn(spec)
        write_json(path, record)
        print(f"{path.name}: {summary_fn(record)}", flush=True)
