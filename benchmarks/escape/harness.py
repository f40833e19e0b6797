"""The escape study's running side: the demo's recipe (DEFAULTS), the one-change sets (CHANGES, SETS), one run of
the recipe with its per-block logging (see the package's docstring), the run's verdict (did it leave the mean face,
and from which step) and the resumable, shardable loop that writes one JSON per run under --work."""
from __future__ import annotations

import datetime as _dt
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import machine_line, write_json
from benchmarks.convergence.diagnostics import between_image_share, block_outputs
from benchmarks.study_data import evaluate_nme, memorise_batch, study_data

WORK = Path("savedmodel") / "escape"
LOG_EVERY = 10
BLOCK_EVERY = 50
LEFT_BELOW = 0.9              # loss / mean-map loss of the last 50 steps below this: the run left the mean face

# The demo's recipe (engine.demo.DEMO_DEFAULTS before issue 22): cosine over 875 steps (25 epochs of 35 batches).
DEFAULTS = {"model": "e2tkface", "encoder": "aligned", "width_mult": 0.5, "input_size": 128, "head": "mean-residual",
            "optimizer": "adam", "lr": 5e-4, "warmup": 100, "weight_decay": 2e-4, "schedule_steps": 875,
            "batch": 16, "clip": 0.0, "precision": "bf16", "seed": 0, "threads": 1, "steps": 300,
            "last_init": 0.0, "decoder_norm": "batch", "target_scale": "none"}
# the last three are study-only changes to the network (apply_changes): the output layer's initial weights (normal,
# this std; 0 = the head's zero start), the decoder's normalisation ("batch" | "group": GroupNorm of 16 groups, one
# for layers under 16 channels) and the residual's units ("none" | "std": the decoder predicts the residual in units
# of the training targets' per-channel spread, output = mean + spread x prediction)

SEEDS = tuple(range(8))
CHANGES = {                   # one change to the recipe per set, each run on 8 seeds with 1 torch thread
    "baseline": {}, "threads2": dict(threads=2), "adamw": dict(optimizer="adamw"), "wd0": dict(weight_decay=0.0),
    "radam": dict(optimizer="radam"), "warmup500": dict(warmup=500, steps=700), "lr2.5e-4": dict(lr=2.5e-4),
    "clip1": dict(clip=1.0), "batch32": dict(batch=32), "init1e-3": dict(last_init=1e-3),
    "groupnorm": dict(decoder_norm="group"), "target-std": dict(target_scale="std"),
}
SETS = {name: [dict(seed=s, **change) for s in SEEDS] for name, change in CHANGES.items()}
# the reliability benchmark of the default recipe (AdamW, 500-step warm-up): did each seed leave the mean face within
# 350 steps (the full demo's seeds left by step 140-245 with it), at 1 and 2 torch threads (8 seeds each), for the
# other networks and at the other input sizes (4 seeds each)? The first 350 steps are all warm-up, so they are the
# same whatever the schedule's length: the escape phase of the demo's and the rotation study's schedules alike.
DEFAULT_RECIPE = dict(optimizer="adamw", warmup=500, steps=350)
NETWORKS = (dict(model="prnet"), dict(encoder="cnn"), dict(encoder="faithful"))       # and aligned: adamw-w500
CHANGES.update({"adamw-threads2": dict(optimizer="adamw", threads=2), "adamw-w500": DEFAULT_RECIPE,
                "adamw-w500-threads2": dict(DEFAULT_RECIPE, threads=2),
                "adamw-64px": dict(DEFAULT_RECIPE, input_size=64), "adamw-256px": dict(DEFAULT_RECIPE, input_size=256)})
SETS.update({name: [dict(seed=s, **CHANGES[name]) for s in SEEDS]
             for name in ("adamw-threads2", "adamw-w500", "adamw-w500-threads2")})
SETS.update({"adamw-sizes": [dict(seed=s, **CHANGES[f"adamw-{px}px"]) for px in (64, 256) for s in SEEDS[:4]],
             "adamw-networks": [dict(seed=s, **net, **DEFAULT_RECIPE) for net in NETWORKS for s in SEEDS[:4]]})


def run_name(spec: dict) -> str:
    parts = [spec["model"] if spec["model"] == "prnet" else f"e2tkface-{spec['encoder']}"]
    parts += [f"{k}={spec[k]}" for k in sorted(spec) if k not in ("model", "encoder") and spec[k] != DEFAULTS.get(k)]
    return "__".join(parts)


def specs_of(name: str) -> list[dict]:
    return [{**DEFAULTS, **s} for s in SETS[name]]


def blocks(model) -> list[tuple[str, object]]:
    """(name, module) of the tracked blocks, input to output."""
    out = [("encoder", model.encoder)]
    if hasattr(model, "neck"):
        out += [(f"neck.{i}", s) for i, s in enumerate(model.neck.stages)] + [("global", model.global_layer)]
    return out + [(f"decoder.{i}", layer) for i, layer in enumerate(model.decoder.layers)]


def weight_norm(module) -> float:
    """Norm of a block's weights: convolution and linear weights (parameters of 2 or more dimensions, and e2cnn's
    steerable-basis coefficients, its 1-D ``weights``), not the BatchNorm scales and shifts or biases."""
    return float(sum(float(p.detach().float().square().sum()) for n, p in module.named_parameters()
                     if p.dim() > 1 or n.rsplit(".", 1)[-1] == "weights")) ** 0.5


def norm_ratio(now: float, start: float) -> float:
    """now / start, nan for a block that starts at zero (the zero-initialised output layer)."""
    return now / start if start > 0 else float("nan")


def block_shares(model, x, named) -> dict:
    """{block: between_image_share of its output} for one training-mode forward pass of x (no gradient; BatchNorm
    running statistics left as they were)."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    try:
        return block_outputs(model, x, named, between_image_share)
    finally:
        model.load_state_dict(saved, strict=False)


class ChannelScale(nn.Module):
    """(B, C, H, W) -> the same times a fixed per-channel factor (the target_scale="std" change)."""

    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.scale.to(x.dtype)


def residual_spread(dataset, face, count: int = 200) -> np.ndarray:
    """Per channel (x, y, z), the spread (rms over images and face pixels) of the training position maps about
    their mean, in the network's output units (posmap / POSMAP_SCALE), from `count` samples spread over the set."""
    from faceutil.uv import POSMAP_SCALE

    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), count)).round().astype(int))
    maps = np.stack([np.asarray(dataset.posmap_array(int(i)))[face] for i in picks]).astype(np.float64)
    return (np.sqrt(((maps - maps.mean(0)) ** 2).mean((0, 1))) / POSMAP_SCALE).astype(np.float32)


def apply_changes(model, spec: dict, spread=None) -> None:
    """The study-only network changes of DEFAULTS' last three keys, in place (the defaults change nothing).
    spread: (3,) residual_spread, needed for target_scale="std"."""
    last = model.decoder.layers[-1]
    if spec["last_init"] > 0:
        nn.init.normal_(last.deconv.weight, std=spec["last_init"])
    if spec["decoder_norm"] == "group":
        for layer in model.decoder.layers:
            if isinstance(layer.bn, nn.BatchNorm2d):
                channels = layer.bn.num_features
                layer.bn = nn.GroupNorm(16 if channels % 16 == 0 else 1, channels, eps=1e-3)
    if spec["target_scale"] == "std":
        model.decoder.layers[-1] = nn.Sequential(last, ChannelScale(spread))


def build(spec: dict):
    from benchmarks.rotation_study.harness import model_kwargs
    from model.registry import build_model

    kwargs = ({"input_size": spec["input_size"], "head": spec["head"]} if spec["model"] == "prnet" else
              model_kwargs("e2tkface", {"encoder": spec["encoder"]}, spec["width_mult"], 1, spec["input_size"],
                           spec["head"]))
    return build_model(spec["model"], **kwargs), kwargs


def run(spec: dict, train_root: Path, test_items: list, save: Path | None = None) -> dict:
    """One run of the recipe for spec["steps"] steps (schedule over spec["schedule_steps"]); see the module doc.
    save: where to write the network's state dict as training left it (for later analysis)."""
    from torch.optim.swa_utils import update_bn

    from data.dataset import PosmapDataset
    from data.index import read_index
    from data.loader import build_loader
    from engine.collapse import spread_ratio
    from engine.optim import lr_factor, make_optimizer, parameter_groups
    from engine.train import seed_everything
    from faceutil.uv import uv_layout
    from model.device import autocast_context
    from model.loss import WeightedPosmapLoss

    torch.set_num_threads(spec["threads"])
    layout = uv_layout("synthetic")
    loss_fn = WeightedPosmapLoss(layout.weight_mask)
    face = torch.as_tensor(layout.weight_mask) > 0
    probe_x, _ = memorise_batch(train_root, 16)
    seed_everything(spec["seed"])
    model, _ = build(spec)
    names = read_index(train_root)
    dataset = PosmapDataset(train_root, names, augment=True, seed=spec["seed"])
    model.io.set_mean_posmap(dataset.mean_posmap())
    apply_changes(model, spec, residual_spread(dataset, face.numpy()) if spec["target_scale"] == "std" else None)
    mean_map = model.io.mean_posmap.clone()
    loader = build_loader(dataset, batch_size=spec["batch"], workers=0, shuffle=True, seed=spec["seed"],
                          drop_last=True, device=None)
    optimizer = make_optimizer(spec["optimizer"], parameter_groups(model, spec["weight_decay"]), spec["lr"])
    factor = functools.partial(lr_factor, warmup_steps=spec["warmup"], steps_per_epoch=len(loader),
                               total_steps=spec["schedule_steps"], schedule="cosine")
    named = blocks(model)
    initial_norms = {name: weight_norm(m) for name, m in named}
    log, block_log, window, output_norm = [], [], [], []
    output_layer = named[-1][1]
    step, epoch, start = 0, 0, time.perf_counter()
    model.train()
    while step < spec["steps"]:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            x, y = batch["image"], batch["posmap"]
            for group in optimizer.param_groups:
                group["lr"] = spec["lr"] * factor(step)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(torch.device("cpu"), spec["precision"]):
                out = model(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            if spec["clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
            track = (step + 1) % BLOCK_EVERY == 0
            before = [torch.cat([p.detach().flatten() for p in m.parameters()]).clone() for _, m in named] \
                if track else None
            optimizer.step()
            step += 1
            with torch.no_grad():
                window.append((float(loss), float(loss_fn(mean_map.expand_as(y), y)),
                               spread_ratio(out, y, face)))
            if step % LOG_EVERY == 0:
                loss_mean, map_mean, ratio = (float(np.nanmean(v)) for v in zip(*window))
                log.append([step, loss_mean / map_mean, ratio])
                window.clear()
            if track:
                shares = block_shares(model, probe_x, named)
                row = {"step": step}
                for (name, module), w0 in zip(named, before):
                    grads = [p.grad.detach().float().flatten() for p in module.parameters() if p.grad is not None]
                    w1 = torch.cat([p.detach().flatten() for p in module.parameters()])
                    row[name] = [shares.get(name, float("nan")),
                                 float(torch.cat(grads).norm()) if grads else 0.0,
                                 float((w1 - w0).norm() / w0.norm().clamp_min(1e-12)),
                                 norm_ratio(weight_norm(module), initial_norms[name])]
                block_log.append(row)
                output_norm.append([step, weight_norm(output_layer)])
            if step >= spec["steps"]:
                break
        epoch += 1
    train_s = time.perf_counter() - start
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save)
    refresh = PosmapDataset(train_root, names[:64], augment=False)
    with torch.no_grad():
        update_bn((b["image"] for b in torch.utils.data.DataLoader(refresh, batch_size=16)), model)
    model.eval()
    nme = evaluate_nme(model.export() if hasattr(model, "export") else model, test_items, layout.kpt_ind)
    return {"spec": spec, "log": log, "blocks": block_log, "norm": "weights", "output_norm": output_norm,
            "nme2d": nme,
            "train_seconds": round(train_s, 1),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line("cpu")}


def left_mean(record: dict) -> bool:
    """Whether the run's last 50 steps' loss is below LEFT_BELOW x the mean-map loss of the same batches."""
    tail = [row[1] for row in record["log"][-(50 // LOG_EVERY):]]
    return float(np.mean(tail)) < LEFT_BELOW


def step_left(record: dict) -> int | None:
    """First logged step from which the spread ratio stays at or above engine.collapse.COLLAPSED_BELOW."""
    from engine.collapse import COLLAPSED_BELOW

    first = None
    for step, _, ratio in record["log"]:
        if ratio >= COLLAPSED_BELOW:
            first = step if first is None else first
        else:
            first = None
    return first


def cmd_run(args) -> None:
    from data.dataset import AFLWEvalSet

    train_root, test_raw = study_data()
    test = AFLWEvalSet(test_raw)
    items = [test[i] for i in range(len(test))]
    specs = ([spec for name in args.set.split(",") for spec in specs_of(name)] if args.set else
             [{**DEFAULTS, **json.loads(args.spec)}])
    index, count = (int(v) for v in args.shard.split("/"))
    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs[index::count]:
        path = out / (run_name(spec) + ".json")
        if path.is_file():
            continue
        record = run(spec, train_root, items, out / "weights" / (run_name(spec) + ".pt"))
        write_json(path, record, indent=None)
        last = record["log"][-1]
        print(f"{path.stem}: loss {last[1]:.2f} x mean map, spread ratio {last[2]:.2f}, "
              f"{'left' if left_mean(record) else 'STAYED ON'} the mean face, NME {record['nme2d']:.2f} %, "
              f"{record['train_seconds']:.0f} s", flush=True)
