"""Convergence study (issue 12): why the networks collapsed onto the mean face, and what makes them learn.

Owns benchmarks/results/convergence.md (+ convergence.json). Two kinds of run, each saved to its own JSON file as
soon as it ends, so a rerun skips what is done and a study can be spread over several sessions:

  probe  memorise a few training images (full batch, no augmentation) for a fixed number of steps: the fastest test
         of an optimiser or architecture pathology. Records the loss every step next to the mean-map loss of the
         same images, per-layer gradient norms, and per-layer "image information" (the share of a feature's
         variance that varies between images) and dead-ReLU fractions at the end.
  curve  train on the whole synthetic training set with the toolkit's training loop (engine.train.run_training),
         evaluate 2D NME on the synthetic AFLW2000-format test set every few minutes of training time (the mean-face
         NME beside it); a checkpoint after every epoch, so `--resume` continues an interrupted run.

    python -m benchmarks.convergence probes --set lr             # one probe table (about a minute a probe on 2 cores)
    python -m benchmarks.convergence curve --label e2tkface-aligned \
        --spec '{"lr": 5e-4, "warmup": 100, "schedule": "cosine", "epochs": 170, "minutes": 60}' [--resume]
    python -m benchmarks.convergence report                      # writes results/convergence.md from the JSONs
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from faceutil.uv import POSMAP_SCALE

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_WORK = Path("savedmodel") / "convergence"
DATA_WORK = Path("savedmodel") / "rotation_study_data"           # the rotation study's synthetic data, shared


# ------------------------------------------------------------------------------------------------ data
def study_data(train_count: int = 800, test_count: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """(processed training folder, raw AFLW2000-format test folder), synthesised once and reused."""
    from benchmarks.rotation_study import make_data
    from faceutil.facemodel import load_model

    return make_data(DATA_WORK, train_count, test_count, seed, load_model("synthetic"))


def memorise_batch(train_root: Path, count: int):
    """The first `count` training samples as one batch: (images (N, 3, 256, 256), posmaps / POSMAP_SCALE
    (N, 3, 256, 256))."""
    import torch

    from data.dataset import PosmapDataset
    from data.index import read_index

    ds = PosmapDataset(train_root, read_index(train_root)[:count], augment=False)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["posmap"] for it in items])


# ------------------------------------------------------------------------------------------------ diagnostics
def layer_groups(model) -> list[tuple[str, object]]:
    """(name, module) of the blocks whose gradients and features are tracked, input to output."""
    groups = [("encoder", model.encoder)]
    if hasattr(model, "neck"):
        groups += [(f"neck.stage{i}", s) for i, s in enumerate(model.neck.stages)]
        groups.append(("global", model.global_layer))
    groups += [(f"decoder.{i}", layer) for i, layer in enumerate(model.decoder.layers)]
    return groups


def grad_norms(groups) -> dict:
    """{group: [gradient L2 norm, weight L2 norm]} of each group's parameters (run_probe appends the relative
    size of the optimiser step, ||w_after - w_before|| / ||w_before||)."""
    out = {}
    for name, module in groups:
        g = w = 0.0
        for p in module.parameters():
            w += float(p.detach().float().square().sum())
            if p.grad is not None:
                g += float(p.grad.detach().float().square().sum())
        out[name] = [math.sqrt(g), math.sqrt(w)]
    return out


def tensor_stats(t) -> dict:
    """{"image_info": mean variance across images / mean variance per channel over (images, positions),
    "dead": share of channels <= 0 everywhere, "saturated": share of values with |v| > 0.99 (for the published
    head's tanh output)} of a (B, C, H, W) or (B, C, L) tensor."""
    t = t.detach().float()
    t = t.reshape(t.shape[0], t.shape[1], -1)                              # (B, C, L)
    between = t.var(dim=0).mean()                                          # variance across images, per element
    per_channel = t.transpose(0, 1).reshape(t.shape[1], -1)
    dead = (per_channel.amax(dim=1) <= 0).float().mean()
    return {"image_info": float(between / per_channel.var(dim=1).mean().clamp_min(1e-20)), "dead": float(dead),
            "saturated": float((t.abs() > 0.99).float().mean())}


def feature_stats(model, x, groups) -> dict:
    """{group: {"image_info": share of the output's variance that differs between images, "dead": share of
    channels that are <= 0 everywhere}} for one forward pass in training mode (what the loss sees)."""
    import torch

    stats, hooks = {}, []

    def hook(name):
        def fn(_module, _inputs, output):
            stats[name] = tensor_stats(output)
        return fn

    for name, module in groups:
        hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


# ------------------------------------------------------------------------------------------------ probes
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
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line()}


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


def machine_line() -> str:
    from benchmarks.rotation_study import machine_line as study_machine_line

    return study_machine_line("cpu")


def cmd_probes(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out) / "probes"
    out.mkdir(parents=True, exist_ok=True)
    train_root, _ = study_data()
    batch = memorise_batch(train_root, 16)
    specs = probe_specs(args.set) if args.set else [{**PROBE_DEFAULTS, **json.loads(args.spec)}]
    _run_missing(specs, out, probe_name, lambda spec: run_probe(spec, batch), args.force,
                 lambda r: f"loss {r['losses'][0]:.4f} -> {np.mean(r['losses'][-10:]):.4f} "
                           f"(mean map {r['mean_map_loss']:.4f}), {r['seconds']} s")


def _run_missing(specs, out: Path, name_fn, run_fn, force: bool, summary_fn) -> None:
    """Run each spec whose JSON (out / name_fn(spec).json) is missing (all with force), saving it as it ends."""
    for spec in specs:
        path = out / (name_fn(spec) + ".json")
        if path.is_file() and not force:
            print(f"done already: {path.name}", flush=True)
            continue
        record = run_fn(spec)
        _write_json(path, record)
        print(f"{path.name}: {summary_fn(record)}", flush=True)


# ------------------------------------------------------------------------------------------------ escape probes
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


def effective_rank(t) -> float:
    """Participation ratio (sum λ)² / sum λ² of the channel covariance of a (B, C, H, W) tensor: how many channels'
    worth of independent variation it carries (C when all channels are uncorrelated with equal variance, 1 when they
    move together)."""
    t = t.detach().double()
    c = t.transpose(0, 1).reshape(t.shape[1], -1)
    c = c - c.mean(dim=1, keepdim=True)
    lam = np.clip(np.linalg.eigvalsh((c @ c.T / c.shape[1]).numpy()), 0, None)
    return float(lam.sum() ** 2 / max(float((lam ** 2).sum()), 1e-300))


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

    from benchmarks.rotation_study import model_kwargs, train_model
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
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line()}


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
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out) / "escape"
    out.mkdir(parents=True, exist_ok=True)
    train_root, _ = study_data()
    specs = escape_specs(args.set) if args.set else [{**ESCAPE_DEFAULTS, **json.loads(args.spec)}]
    _run_missing(specs, out, escape_name, lambda spec: run_escape(spec, train_root), args.force,
                 lambda r: f"loss {r['log'][-1][1]:.4f} (mean map {r['mean_map_loss']:.4f}), "
                           f"{escape_verdict(r)}, {r['seconds']} s")


def escape_rows(records: list) -> list[str]:
    """Markdown table rows of escape probes."""
    rows = ["| probe | loss at step 50 / 100 / 200 / end (× mean map) | output spread at end (px) | encoder grad "
            "norm, median over steps 50–end | encoder rank init → end | verdict |", "|---|---|---|---|---|---|"]
    for r in records:
        by_step = {row[0]: row for row in r["log"]}
        m = r["mean_map_loss"]
        losses = " / ".join(f"{by_step[s][1] / m:.2f}" if s in by_step else "-" for s in (50, 100, 200))
        end = r["log"][-1]
        grad = float(np.median([row[3] for row in r["log"] if row[0] >= 50]))
        rows.append(f"| {escape_name(r['spec'])} | {losses} / {end[1] / m:.2f} | {end[2]:.1f} | {grad:.1e} | "
                    f"{r['encoder_rank'][0]:.1f} → {r['encoder_rank'][1]:.1f} | {escape_verdict(r)} |")
    return rows


# ------------------------------------------------------------------------------------------------ learning curves
CURVE_DEFAULTS = {"model": "e2tkface", "encoder": "aligned", "width_mult": 0.5, "input_size": 128,
                  "head": "mean-residual", "lr": 1e-4, "warmup": 0, "schedule": "exp", "lr_decay": 0.8,
                  "decay_norm_bias": True, "epochs": 100, "minutes": 60.0, "batch": 16, "precision": "bf16",
                  "augment": True, "rotation": False, "seed": 0, "eval_minutes": 3.0, "train_count": 800}


def curve_config(spec: dict, train_root: Path, run_dir: Path, time_limit: float):
    """The toolkit Config of a learning-curve run (the real training loop, engine.train.run_training)."""
    from config import Config

    return Config(train=True, test=False, train_dir=str(train_root), model=spec["model"], encoder=spec["encoder"],
                  model_kwargs={"width_mult": spec["width_mult"]} if spec["model"] == "e2tkface" else {},
                  head=spec["head"], input_size=spec["input_size"], epochs=spec["epochs"], batch_size=spec["batch"],
                  lr=spec["lr"], warmup_steps=spec["warmup"], lr_schedule=spec["schedule"],
                  lr_decay=spec["lr_decay"], decay_norm_bias=spec["decay_norm_bias"], augment=spec["augment"],
                  augment_rotation=spec["rotation"], precision=spec["precision"], seed=spec["seed"], device="cpu",
                  num_workers=0, out=str(run_dir), progress=False, bfm="synthetic", time_limit=time_limit,
                  resume="auto" if (run_dir / "last.pth").is_file() else None)


def evaluate_nme(model, items: list, kpt_ind, batch: int = 16) -> float:
    """Mean 68-point 2D NME (%) of `model` (eval mode, fp32) on AFLWEvalSet items."""
    from engine.evaluate import evaluate_model

    was_training = model.training
    report = evaluate_model(model, items, kpt_ind, None, "cpu", batch)
    model.train(was_training)
    return float(np.mean(report.nme2d))


def cmd_curve(args) -> None:
    """One learning curve: train with run_training, evaluate test NME every --eval-minutes of training time."""
    import torch

    from data.dataset import AFLWEvalSet
    from engine.checkpoint import load_checkpoint
    from engine.evaluate import MeanPosmapModel
    from engine.loading import load_network
    from engine.train import run_training
    from faceutil.uv import uv_layout

    torch.set_num_threads(args.threads)
    spec = {**CURVE_DEFAULTS, **json.loads(args.spec)}
    unknown = sorted(set(spec) - set(CURVE_DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown curve settings {unknown}; the settings are {sorted(CURVE_DEFAULTS)}")
    label = args.label or probe_name(spec).replace("e2tkface", "e2tkface-" + spec["encoder"])
    folder = Path(args.out) / "curves" / label
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "curve.json"
    train_root, _ = study_data(spec["train_count"])
    _, test_raw = study_data()                      # the same 120 test images whatever the training-set size
    kpt_ind = uv_layout("synthetic").kpt_ind
    test = AFLWEvalSet(test_raw)
    items = [test[i] for i in range(len(test))]
    curve = json.loads(path.read_text()) if path.is_file() else None
    if curve is not None and not args.resume:
        raise SystemExit(f"{path} exists: pass --resume to continue that run, or another --label.")
    if curve is not None and curve["spec"] != spec:
        raise SystemExit(f"{path} was made with other settings ({curve['spec']}); use another --label.")
    if curve is None:
        curve = {"spec": spec, "label": label, "points": [], "machine": machine_line(),
                 "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                 "mean_face_nme2d": evaluate_nme(MeanPosmapModel(train_root), items, kpt_ind)}
        _write_json(path, curve)
    run_dir = folder / "run"
    spent = sum(p_["train_seconds"] for p_ in curve["points"]) / 60.0 if curve["points"] else 0.0
    history = []
    if (run_dir / "last.pth").is_file():
        history = load_checkpoint(run_dir / "last.pth").get("history", [])
        spent = sum(h.get("train_seconds", 0.0) for h in history) / 60.0
    if spent >= spec["minutes"] or (history and history[-1]["epoch"] >= spec["epochs"]):
        print(f"{label}: done ({spent:.1f} training minutes)", flush=True)
        return
    if history and (not curve["points"] or curve["points"][-1]["epoch"] < history[-1]["epoch"]):
        model = load_network(run_dir / "last.pth", export=False).module   # killed between checkpoint and curve point
        _add_point(curve, path, model, history[-1], spent, items, kpt_ind)
    state = {"minutes": spent, "next": (math.floor(spent / spec["eval_minutes"]) + 1) * spec["eval_minutes"]}

    def on_epoch(model, record):
        state["minutes"] += record["train_seconds"] / 60.0
        last = state["minutes"] >= spec["minutes"] or record["epoch"] >= spec["epochs"] or record.get("stopped_early")
        if state["minutes"] >= state["next"] or last:
            _add_point(curve, path, model, record, state["minutes"], items, kpt_ind)
            state["next"] = (math.floor(state["minutes"] / spec["eval_minutes"]) + 1) * spec["eval_minutes"]

    run_training(curve_config(spec, train_root, run_dir, spec["minutes"] - spent), on_epoch=on_epoch)


def _add_point(curve: dict, path: Path, model, record: dict, minutes: float, items, kpt_ind) -> None:
    nme2d = evaluate_nme(model, items, kpt_ind)
    curve["points"].append({"epoch": record["epoch"], "step": record.get("step"), "minutes": round(minutes, 2),
                            "train_loss": record["train_loss"], "val_loss": record.get("val_loss"),
                            "nme2d": nme2d, "train_seconds": record.get("train_seconds", 0.0)})
    curve["updated"] = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    _write_json(path, curve)
    print(f"{curve['label']}: {minutes:.1f} min, epoch {record['epoch']}: test 2D NME {nme2d:.2f} % "
          f"(mean face {curve['mean_face_nme2d']:.2f} %)", flush=True)


# ------------------------------------------------------------------------------------------------ report
def verdict(record: dict) -> str:
    """What a memorisation probe shows, from its last 10 losses against the mean-map loss of the same images."""
    end, ref = float(np.mean(record["losses"][-10:])), record["mean_map_loss"]
    if not math.isfinite(end):
        return "diverged"
    if end < 0.25 * ref:
        return "memorises"
    if end < 0.9 * ref:
        return "learns"
    if end < 1.1 * ref:
        return "stays on the mean"
    return "stuck above the mean"


def probe_rows(records: list) -> list[str]:
    rows = ["| network | head | lr | warm-up | decay on norm/bias | steps | loss @25 | @50 | @100 | end "
            "| end / mean-map loss | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        sp, L = r["spec"], r["losses"]
        net = "PRNet" if sp["model"] == "prnet" else f"E2TKFace {sp['encoder']} ×{sp['width_mult']}"
        if sp["input_size"] != PROBE_DEFAULTS["input_size"]:
            net += f", {sp['input_size']} px"
        if not sp.get("tail_relu", True):
            net += ", no ReLU in the 3-ch tail"
        end = float(np.mean(L[-10:]))
        at = [f"{L[i]:.4f}" if i < len(L) else "-" for i in (24, 49, 99)]
        decay = "yes" if sp["decay_norm_bias"] else "no"
        rows.append(f"| {net} | {sp['head']} | {sp['lr']:g} | {sp['warmup']} | {decay} | {len(L)} | {' | '.join(at)} "
                    f"| {end:.4f} | {end / r['mean_map_loss']:.2f} | {verdict(r)} |")
    return rows


def step_size_rows(records: list, step: str) -> list[str]:
    """Relative optimiser step ||dw|| / ||w|| per layer group at `step` (groups summarised to a few columns)."""
    cols = ("encoder", "neck.stage0", "neck.stage1", "global", "decoder.0", "decoder.4", "decoder.10", "decoder.14",
            "decoder.16")
    rows = ["| network | head | lr | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in records:
        g = r["grad_norms"].get(step)
        if g is None or len(next(iter(g.values()))) < 3:
            continue
        sp = r["spec"]
        net = "PRNet" if sp["model"] == "prnet" else f"E2TKFace {sp['encoder']}"
        cells = [("from 0" if g[c][1] == 0 else f"{g[c][2]:.1e}") if c in g else "-" for c in cols]
        lr = f"{sp['lr']:g}" + (f", warm-up {sp['warmup']}" if sp["warmup"] else "")
        rows.append(f"| {net} | {sp['head']} | {lr} | " + " | ".join(cells) + " |")
    return rows


GOAL_NME, GOAL_MINUTES = 6.0, 60.0          # issue 12's goal for E2TKFace on this CPU


def curve_reading(curve: dict) -> str:
    """One sentence computed from a curve: where it ended, its best point, and the issue's goal."""
    pts = curve["points"]
    best = min(pts, key=lambda p: p["nme2d"])
    within = [p for p in pts if p["minutes"] <= GOAL_MINUTES]
    met = any(p["nme2d"] <= GOAL_NME for p in within)
    spec, last = curve["spec"], pts[-1]
    finished = last["epoch"] >= spec["epochs"] or last["minutes"] >= spec["minutes"] - 0.5
    verdict_text = "met" if met else ("not met" if finished else "not met so far (the run has not finished)")
    return (f"Last point {pts[-1]['nme2d']:.2f} % after {pts[-1]['minutes']:.1f} training minutes "
            f"({pts[-1]['nme2d'] / curve['mean_face_nme2d']:.2f} of the mean face); best {best['nme2d']:.2f} % at "
            f"{best['minutes']:.1f} min. Goal (≤ {GOAL_NME:g} % within {GOAL_MINUTES:g} min): "
            f"{verdict_text}.")


def draw_curves(curves: list, path: Path) -> Path:
    """Test NME vs training minutes, one line per curve, each run's mean-face NME dashed, the goal dotted."""
    from benchmarks.plots import Panel, Series, save_figure

    series = [Series(c["label"], [p["minutes"] for p in c["points"]], [p["nme2d"] for p in c["points"]])
              for c in curves]
    references = sorted({round(c["mean_face_nme2d"], 2) for c in curves})
    xmax = max([p["minutes"] for c in curves for p in c["points"]] + [GOAL_MINUTES])
    series += [Series(f"mean face {r:.2f} %", [0, xmax], [r, r], reference=True) for r in references]
    series.append(Series(f"goal {GOAL_NME:g} %", [0, xmax], [GOAL_NME, GOAL_NME], colour="#444444", markers=False,
                         width=1.0, linestyle=":"))
    return save_figure([Panel("", series, xlabel="2-core CPU training minutes", ylabel="2D NME (%)")], Path(path),
                       panel_size=(7.2, 4.2))


PROBE_ORDER = ("lr", "head", "lr-fine", "warmup", "decay", "tail", "encoders")


def cmd_report(args) -> None:
    """benchmarks/results/convergence.md (+ .json, .png) from the committed convergence.json and every finished probe
    and curve under --out (a run under --out replaces the committed one of the same name)."""
    out = Path(args.out)
    # the committed results first (a new checkout has no savedmodel/), then this machine's runs, which win
    committed = RESULTS_DIR / "convergence.json"
    saved = json.loads(committed.read_text()) if committed.is_file() else {"probes": [], "curves": []}
    records = {probe_name(r["spec"]): r for r in saved["probes"]}
    for path in sorted((out / "probes").glob("*.json")):
        r = json.loads(path.read_text())
        records[probe_name(r["spec"])] = r
    curve_map = {c["label"]: c for c in saved["curves"]}
    for path in (out / "curves").glob("*/curve.json"):
        c = json.loads(path.read_text())
        curve_map[c["label"]] = c
    curves = [curve_map[k] for k in sorted(curve_map) if curve_map[k]["points"]]
    sections, used = [], set()
    for name in PROBE_ORDER:
        rows = [records[probe_name(sp)] for sp in probe_specs(name) if probe_name(sp) in records]
        if rows:
            sections.append((name, rows))
            used.update(probe_name(r["spec"]) for r in rows)
    extra = [r for k, r in records.items() if k not in used]
    if extra:
        sections.append(("other", extra))
    md = ["# Convergence: why the networks stayed on the mean face, and what makes them learn", "",
          f"Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by `python -m benchmarks.convergence report` from the "
          f"runs under `{out}`; each run's JSON names its machine and date. Machine of this report: {machine_line()}.",
          "", "Data: the synthetic face model's 300W-LP-format training set (800 images) and AFLW2000-format test set "
          "(120 images), `benchmarks.rotation_study.make_data(seed 0)`; weighted position-map loss (PRNet's mask).", ""]
    if args.findings and Path(args.findings).is_file():
        md += [Path(args.findings).read_text().rstrip(), ""]
    md += ["## Memorisation probes", "",
           "Command: `python -m benchmarks.convergence probes --set NAME` (NAME: " + ", ".join(PROBE_ORDER) + "). "
           "Each probe trains on the same 16 training crops as one full batch, no augmentation, for "
           f"{PROBE_DEFAULTS['steps']} Adam steps; unless the row says otherwise: "
           + ", ".join(f"{k} {v}" for k, v in PROBE_DEFAULTS.items() if k not in ("steps",)) + ". "
           "'end' is the mean of the last 10 losses; the mean-map loss (predicting the 16 images' own mean position "
           "map) is the line to beat. Verdicts: memorises < 0.25 x mean-map loss, learns < 0.9 x, stays on the "
           "mean 0.9-1.1 x, stuck above > 1.1 x.", ""]
    for name, rows in sections:
        md += [f"### {name}", ""] + probe_rows(rows) + [""]
    for step in ("1", "10"):
        steps_rows = step_size_rows([r for _, rows in sections for r in rows], step)
        if len(steps_rows) > 2:
            md += [f"### Relative optimiser step per layer group at step {step}", "",
                   f"||w_after - w_before|| / ||w_before|| of each group's parameters for the step Adam took at step "
                   f"{step} (decoder.16 is the output layer; the mean-residual head starts it at zero).", ""]
            md += steps_rows + [""]
    escapes = {escape_name(r["spec"]): r for r in saved.get("escape", [])}
    for path in sorted((out / "escape").glob("*.json")):
        r = json.loads(path.read_text())
        escapes[escape_name(r["spec"])] = r
    if escapes:
        md += ["## Escape probes: leaving the mean map on the full training set", "",
               "Command: `python -m benchmarks.convergence escape --set NAME` (NAME: " + ", ".join(ESCAPE_ORDER)
               + "). The rotation study's recipe (augmented 800-image training set, batch 16, Adam, cosine schedule "
               "over 2000 steps) stopped after its first steps; unless the probe's name says otherwise: "
               + ", ".join(f"{k} {v}" for k, v in ESCAPE_DEFAULTS.items()) + ". Losses are means over 10 steps, "
               "divided by the loss of the mean position map over the training set. 'output spread': standard "
               "deviation of the prediction across the batch (px), about 0 for a network that predicts the same "
               "face for every image. 'encoder rank': effective rank (participation ratio) of the encoder "
               "output's channel covariance on 16 crops (E2TKFace at width 0.5: 64 channels; PRNet: 512). "
               "Verdict: leaves the mean when the last 50 steps' loss is below 0.9 × the "
               "mean-map loss.", ""]
        done = set()
        for name in ESCAPE_ORDER:
            rows = [escapes[escape_name(sp)] for sp in escape_specs(name) if escape_name(sp) in escapes]
            rows = [r for r in rows if escape_name(r["spec"]) not in done]
            if rows:
                md += [f"### {name}", ""] + escape_rows(rows) + [""]
                done.update(escape_name(r["spec"]) for r in rows)
        rest = [r for k, r in escapes.items() if k not in done]
        if rest:
            md += ["### other", ""] + escape_rows(rest) + [""]
    md += escape_section()
    if curves:
        md += ["## Learning curves", "", "Command: `python -m benchmarks.convergence curve --spec JSON` (resumable: "
               "the same command continues a run). 68-point 2D NME (%) on the 120 synthetic AFLW2000-format test "
               "images against minutes of 2-core CPU training (wall clock of the training epochs; validation and "
               "test evaluation excluded). The network is evaluated as training left it (eval mode, BatchNorm running "
               "statistics), every 3 training minutes at the end of the epoch that crosses the mark. The dashed line "
               "of the plot is the mean-face NME. ![learning curves](convergence.png)", ""]
        for c in curves:
            sp = dict(c["spec"])
            if sp["model"] == "prnet":                   # PRNet has no encoder choice and no width: full size
                sp.pop("encoder", None)
                sp["width_mult"] = "1 (PRNet has no width option)"
            md += [f"### {c['label']}", "", "Settings: " + ", ".join(f"{k} {v}" for k, v in sp.items()) +
                   f". Started {c['started']}, last point {c.get('updated', '-')}; {c['machine']}.", "",
                   f"Mean-face reference: {c['mean_face_nme2d']:.2f} %. {curve_reading(c)}", "",
                   "| minutes | epoch | step | train loss | test 2D NME % | / mean face |", "|---|---|---|---|---|---|"]
            md += [f"| {p_['minutes']:.1f} | {p_['epoch']} | {p_['step']} | {p_['train_loss']:.4f} | "
                   f"{p_['nme2d']:.2f} | {p_['nme2d'] / c['mean_face_nme2d']:.2f} |" for p_ in c["points"]] + [""]
        draw_curves(curves, RESULTS_DIR / "convergence.png")
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(RESULTS_DIR / "convergence.md", ("\n".join(md) + "\n").encode("utf-8"))
    _write_json(RESULTS_DIR / "convergence.json", {"probes": list(records.values()), "curves": curves,
                                                   "escape": list(escapes.values())})
    print(f"wrote {RESULTS_DIR / 'convergence.md'}", flush=True)


def escape_section() -> list[str]:
    """The intervention table and the mechanism table of benchmarks.escape (from results/escape.json)."""
    from benchmarks import escape

    results = escape.load_results()
    if not results["runs"]:
        return []
    d = escape.DEFAULTS
    return ["## Leaving the mean face: one change at a time, 8 seeds each", "",
            "Command: `python -m benchmarks.escape run --set NAME` then `python -m benchmarks.escape report` "
            f"(NAME: {', '.join(escape.CHANGES)}). The demo's recipe as it was before issue 22 ({d['model']} "
            f"{d['encoder']}, width {d['width_mult']}, {d['input_size']} px, {d['head']} head, {d['optimizer']} lr "
            f"{d['lr']} with weight decay {d['weight_decay']} added to the gradient, {d['warmup']}-step warm-up then "
            f"cosine over {d['schedule_steps']} steps, batch {d['batch']}, {d['precision']}) on the augmented "
            f"800-image training set, stopped after {d['steps']} steps (700 for the 500-step warm-up), torch "
            f"threads {d['threads']} unless the row says otherwise; seeds 0–7. A run has left the mean face when its "
            f"last 50 steps' loss is below {escape.LEFT_BELOW} × the loss of the mean position map on the same "
            "batches; 'step left': from which logged step on the collapse watch's spread ratio stayed ≥ 0.25. "
            "NME: 2D NME on the 120 test images after the run (BatchNorm statistics refreshed), as far as it got.", ""]\
        + escape.table(results["runs"], results["mean_face_nme2d"]) + \
        ["", "### Per block: runs that left against runs that stayed", "",
         "Median over runs of: the between-image share of the block's output variance on 16 fixed crops / the "
         "gradient norm reaching its parameters / Adam's step relative to its weights [/ its weight norm relative to "
         "initialisation, in runs that log it]; last column: the weights' norm at the "
         "end over the start, from the saved state (runs that saved it).", ""] + \
        [line for change in ("baseline", "adamw") if any(escape.change_of(r["spec"]) == change
                                                          for r in results["runs"])
         for line in [f"**{change}**", ""] + escape.mechanism([r for r in results["runs"]
                                                               if escape.change_of(r["spec"]) == change]) + [""]]


def _write_json(path: Path, data) -> None:
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probes", help="memorisation probes")
    pr.add_argument("--set", choices=sorted(PROBE_SETS), help="a named list of probes")
    pr.add_argument("--spec", default="{}", help="one probe: JSON overrides of PROBE_DEFAULTS")
    pr.add_argument("--force", action="store_true", help="rerun probes that are done already")
    cu = sub.add_parser("curve", help="one learning curve (resumable: rerun the same command to continue)")
    cu.add_argument("--spec", default="{}", help="JSON overrides of CURVE_DEFAULTS")
    cu.add_argument("--label", default=None, help="folder name under <out>/curves (default: from the settings)")
    cu.add_argument("--resume", action="store_true", help="continue the run saved under this label")
    es = sub.add_parser("escape", help="early-phase probes of the rotation study's recipe on the full training set")
    es.add_argument("--set", choices=sorted(ESCAPE_SETS), help="a named list of escape probes")
    es.add_argument("--spec", default="{}", help="one probe: JSON overrides of ESCAPE_DEFAULTS")
    es.add_argument("--force", action="store_true", help="rerun probes that are done already")
    rp = sub.add_parser("report", help="write results/convergence.md from the finished runs")
    rp.add_argument("--findings", default=str(RESULTS_DIR / "convergence_findings.md"),
                    help="a markdown file of conclusions placed at the top of the report")
    for s in (pr, cu, es, rp):
        s.add_argument("--out", default=str(DEFAULT_WORK))
        s.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    {"probes": cmd_probes, "curve": cmd_curve, "escape": cmd_escape, "report": cmd_report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
