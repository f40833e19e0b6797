"""Escape probes: the rotation study's training run (benchmarks.rotation_study.harness.train_model, its recipe)
stopped after its first ESCAPE_DEFAULTS["steps"] steps, on the full augmented training set: does the network leave
the mean position map? Logs the loss, the output's spread across the batch and the encoder's gradient norm; owns
the escape-probe settings, the named sets, the verdict and the runner."""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_line
from benchmarks.convergence.diagnostics import effective_rank
from benchmarks.convergence.probes import probe_folder, run_missing
from benchmarks.study_data import memorise_batch, study_data
from faceutil.uv import POSMAP_SCALE

# The rotation study's recipe (benchmarks.rotation_study, 2000-step cosine schedule) stopped after its first
# ESCAPE_DEFAULTS["steps"] steps: on the full augmented training set, does the network leave the mean position map?
ESCAPE_DEFAULTS = {"model": "e2tkface", "encoder": "aligned", "width_mult": 0.5, "topk": 1, "input_size": 128,
                   "head": "mean-residual", "lr": 5e-4, "warmup": 100, "weight_decay": 2e-4, "schedule_steps": 2000,
                   "steps": 300, "batch": 16, "precision": "bf16", "seed": 0}
ESCAPE_SETS = {
    # the rotation study's warm-up (100 steps) against a longer one (500), four seeds of the aligned encoder
    # (the 500-step warm-up probes run past the warm-up, to 600 steps, so that the peak learning rate is tested)
    "warmup": [dict(seed=s, warmup=w, steps=300 if w == 100 else 600) for w in (100, 500) for s in (0, 1, 2, 3)],
    # the other networks of the study at its recipe, on seeds where the aligned encoder stays on the mean
    "networks": [dict(encoder="faithful", seed=1), dict(encoder="faithful", seed=1, warmup=500, steps=600),
                 dict(encoder="cnn", seed=1), dict(encoder="cnn", seed=2), dict(model="prnet", seed=1),
                 dict(model="prnet", seed=2)],
    # a lower peak learning rate instead of a longer warm-up; bf16 and weight decay ruled out
    "causes": [dict(seed=1, lr=2.5e-4), dict(seed=3, lr=2.5e-4), dict(seed=1, precision="fp32"),
               dict(seed=1, weight_decay=0.0)],
}
ESCAPE_ORDER = ("warmup", "networks", "causes")
ESCAPE_EVERY = 10                     # steps between two logged points


def escape_name(spec: dict) -> str:
    parts = [spec["model"] if spec["model"] == "prnet" else f"e2tkface-{spec['encoder']}"]
    parts += [f"{k}={spec[k]}" for k in sorted(spec) if k not in ("model", "encoder") and spec[k] != ESCAPE_DEFAULTS[k]]
    return "__".join(parts)


def mean_map_loss(train_root: Path, weight_mask, mean_posmap) -> float:
    """The weighted loss of predicting the mean position map for every training sample (augmentation moves no
    position map when it does not rotate, so this is the loss to beat during the probe)."""
    from data.dataset import PosmapDataset, posmap_tensor
    from data.index import read_index
    from model.loss import WeightedPosmapLoss

    ds = PosmapDataset(train_root, read_index(train_root), augment=False)
    loss_fn = WeightedPosmapLoss(weight_mask)
    mean = posmap_tensor(mean_posmap)[None]
    total = 0.0
    for i in range(len(ds)):                      # the stored maps only: no image decoding
        total += float(loss_fn(mean, posmap_tensor(ds.posmap_array(i))[None]))
    return total / len(ds)


def run_escape(spec: dict, train_root: Path) -> dict:
    """One escape probe: the study's training loop for spec["steps"] steps, logging every ESCAPE_EVERY steps the
    mean loss, the spread of the output across the batch (px) and the encoder's gradient norm; the encoder output's
    effective rank on 16 un-augmented crops before and after."""
    import torch

    from benchmarks.rotation_study.harness import model_kwargs, train_model
    from engine.train import seed_everything
    from faceutil.uv import uv_layout
    from model.registry import build_model

    kwargs = ({"input_size": spec["input_size"], "head": spec["head"]} if spec["model"] == "prnet" else
              model_kwargs("e2tkface", {"encoder": spec["encoder"]}, spec["width_mult"], spec["topk"],
                           spec["input_size"], spec["head"]))
    settings = {"steps": spec["schedule_steps"], "batch": spec["batch"], "lr": spec["lr"], "warmup": spec["warmup"],
                "weight_decay": spec["weight_decay"], "precision": spec["precision"]}
    weight_mask = uv_layout("synthetic").weight_mask
    x, _ = memorise_batch(train_root, 16)
    seed_everything(spec["seed"])
    fresh = build_model(spec["model"], **kwargs).train()
    with torch.no_grad():
        rank_init = effective_rank(fresh.encoder(fresh.io.shrink(x)))
    log, window, state = [], [], {}

    def on_step(step, model, out, loss):
        window.append(loss)
        if step % ESCAPE_EVERY == 0:
            grad = math.sqrt(sum(float(p.grad.float().square().sum()) for p in model.encoder.parameters()
                                 if p.grad is not None))
            spread = float(out.detach().float().std(dim=0).mean()) * POSMAP_SCALE
            log.append([step, float(np.mean(window)), spread, grad])
            window.clear()
        state["model"] = model

    start = time.perf_counter()
    train_model(spec["model"], kwargs, train_root, False, spec["seed"], settings, "cpu", weight_mask,
                stop_after=spec["steps"], on_step=on_step)
    model = state["model"].train()
    with torch.no_grad():
        rank_end = effective_rank(model.encoder(model.io.shrink(x)))
    return {"spec": spec, "log": log, "mean_map_loss": mean_map_loss(train_root, weight_mask, _mean_posmap(model)),
            "encoder_rank": [rank_init, rank_end],
            "seconds": round(time.perf_counter() - start, 1),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line("cpu")}


def _mean_posmap(model) -> np.ndarray:
    """The (256, 256, 3) mean position map (pixels) a mean-residual head carries."""
    return model.io.mean_posmap[0].permute(1, 2, 0).cpu().numpy() * POSMAP_SCALE


def escape_verdict(record: dict) -> str:
    """"leaves the mean" when the last 50 steps' loss is below 0.9 x the mean-map loss, else "stays on the mean"."""
    tail = [row[1] for row in record["log"][-(50 // ESCAPE_EVERY):]]
    return "leaves the mean" if np.mean(tail) < 0.9 * record["mean_map_loss"] else "stays on the mean"


def escape_specs(name: str) -> list[dict]:
    return [{**ESCAPE_DEFAULTS, **s} for s in ESCAPE_SETS[name]]


def cmd_escape(args) -> None:
    out = probe_folder(args, "escape")
    train_root, _ = study_data()
    specs = escape_specs(args.set) if args.set else [{**ESCAPE_DEFAULTS, **json.loads(args.spec)}]
    run_missing(specs, out, escape_name, lambda spec: run_escape(spec, train_root), args.force,
                 lambda r: f"loss {r['log'][-1][1]:.4f} (mean map {r['mean_map_loss']:.4f}), "
                           f"{escape_verdict(r)}, {r['seconds']} s")
