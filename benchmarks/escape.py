"""Leaving the mean face (issue 22): does a recipe's first few hundred steps take the network off the mean face,
for every seed and thread count? The mechanism probe, the intervention table and the reliability benchmark.

One run = the training recipe on the synthetic study data (800 training crops, augmented, batch 16), stopped
``steps`` steps in; logged every LOG_EVERY steps: the loss against the mean-map loss of the same batch, the
collapse watch's spread ratio (engine.collapse), and every BLOCK_EVERY steps per block (encoder, neck stages,
global layer, each decoder layer): the between-image share of its output's variance on a fixed batch of 16 crops,
the gradient norm reaching its parameters, Adam's update relative to its weights and its weight norm relative to
initialisation. At the end, 2D NME on the 120
synthetic AFLW2000-format test images (BatchNorm statistics refreshed). One JSON per run; a rerun skips what is
done, so sets can be spread over sessions and shards (--shard i/n) run side by side.

    python -m benchmarks.escape run --set baseline [--shard 0/2]
    python -m benchmarks.escape report                  # the table for benchmarks/results/convergence.md
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from faceutil.uv import POSMAP_SCALE

WORK = Path("savedmodel") / "escape"
LOG_EVERY = 10
BLOCK_EVERY = 50
LEFT_BELOW = 0.9              # loss / mean-map loss of the last 50 steps below this: the run left the mean face

# The demo's recipe (engine.demo.DEMO_DEFAULTS before issue 22): cosine over 875 steps (25 epochs of 35 batches).
DEFAULTS = {"model": "e2tkface", "encoder": "aligned", "width_mult": 0.5, "input_size": 128, "head": "mean-residual",
            "optimizer": "adam", "lr": 5e-4, "warmup": 100, "weight_decay": 2e-4, "schedule_steps": 875,
            "batch": 16, "clip": 0.0, "precision": "bf16", "seed": 0, "threads": 1, "steps": 300}

SEEDS = tuple(range(8))
CHANGES = {                   # one change to the recipe per set, each run on 8 seeds with 1 torch thread
    "baseline": {}, "threads2": dict(threads=2), "adamw": dict(optimizer="adamw"), "wd0": dict(weight_decay=0.0),
    "radam": dict(optimizer="radam"), "warmup500": dict(warmup=500, steps=700), "lr2.5e-4": dict(lr=2.5e-4),
    "clip1": dict(clip=1.0), "batch32": dict(batch=32),
}
SETS = {name: [dict(seed=s, **change) for s in SEEDS] for name, change in CHANGES.items()}
# the reliability benchmark of the new default (AdamW): the demo recipe at 2 torch threads and at the other input
# sizes, and the rotation study's recipe (500-step warm-up, cosine over 2000 steps) for its four networks
NETWORKS = (dict(model="prnet"), dict(encoder="cnn"), dict(encoder="aligned"), dict(encoder="faithful"))
CHANGES.update({"adamw-threads2": dict(optimizer="adamw", threads=2), "adamw-64px": dict(optimizer="adamw",
                input_size=64), "adamw-256px": dict(optimizer="adamw", input_size=256),
                "adamw-study": dict(optimizer="adamw", warmup=500, schedule_steps=2000, steps=700)})
SETS.update({"adamw-threads2": [dict(seed=s, **CHANGES["adamw-threads2"]) for s in SEEDS],
             "adamw-sizes": [dict(seed=s, **CHANGES[f"adamw-{px}px"]) for px in (64, 256) for s in SEEDS[:4]],
             "adamw-networks": [dict(seed=s, **net, **CHANGES["adamw-study"]) for net in NETWORKS for s in SEEDS[:4]]})


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


def between_image_share(t) -> float:
    """Variance across images (per element, averaged) / variance over images and positions (per channel,
    averaged) of a (B, C, ...) tensor: about 0 when every image gives the same feature map."""
    t = t.detach().float().reshape(t.shape[0], t.shape[1], -1)
    total = t.transpose(0, 1).reshape(t.shape[1], -1).var(dim=1).mean()
    return float(t.var(dim=0).mean() / total.clamp_min(1e-20))


def block_shares(model, x, named) -> dict:
    """{block: between_image_share of its output} for one training-mode forward pass of x (no gradient; BatchNorm
    running statistics left as they were)."""
    import torch

    shares, hooks = {}, []
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    for name, module in named:
        hooks.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: shares.__setitem__(name, between_image_share(out))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.load_state_dict(saved, strict=False)
    return shares


def build(spec: dict):
    from benchmarks.rotation_study import model_kwargs
    from model.registry import build_model

    kwargs = ({"input_size": spec["input_size"], "head": spec["head"]} if spec["model"] == "prnet" else
              model_kwargs("e2tkface", {"encoder": spec["encoder"]}, spec["width_mult"], 1, spec["input_size"],
                           spec["head"]))
    return build_model(spec["model"], **kwargs), kwargs


def run(spec: dict, train_root: Path, test_items: list, save: Path | None = None) -> dict:
    """One run of the recipe for spec["steps"] steps (schedule over spec["schedule_steps"]); see the module doc.
    save: where to write the network's state dict as training left it (for later analysis)."""
    import torch
    from torch.optim.swa_utils import update_bn

    from benchmarks.convergence import evaluate_nme, memorise_batch
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
    mean_map = model.io.mean_posmap.clone()
    loader = build_loader(dataset, batch_size=spec["batch"], workers=0, shuffle=True, seed=spec["seed"],
                          drop_last=True, device=None)
    optimizer = make_optimizer(spec["optimizer"], parameter_groups(model, spec["weight_decay"]), spec["lr"])
    factor = functools.partial(lr_factor, warmup_steps=spec["warmup"], steps_per_epoch=len(loader),
                               total_steps=spec["schedule_steps"], schedule="cosine")
    named = blocks(model)
    initial_norms = {name: weight_norm(m) for name, m in named}
    log, block_log, window = [], [], []
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
    return {"spec": spec, "log": log, "blocks": block_log, "norm": "weights", "nme2d": nme,
            "train_seconds": round(train_s, 1),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine()}


def machine() -> str:
    import os
    import platform

    import torch

    return f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores; torch {torch.__version__}"


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
    from benchmarks.convergence import study_data
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
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
        last = record["log"][-1]
        print(f"{path.stem}: loss {last[1]:.2f} x mean map, spread ratio {last[2]:.2f}, "
              f"{'left' if left_mean(record) else 'STAYED ON'} the mean face, NME {record['nme2d']:.2f} %, "
              f"{record['train_seconds']:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------ report
RESULTS = Path(__file__).resolve().parent / "results" / "escape.json"
GROUPS = (("encoder, neck, global", lambda n: not n.startswith("decoder.")),
          ("decoder 0-6 (to 32 px)", lambda n: n.startswith("decoder.") and int(n.split(".")[1]) <= 6),
          ("decoder 7-15 (64-128 px)", lambda n: n.startswith("decoder.") and 7 <= int(n.split(".")[1]) <= 15))


def summarise(record: dict) -> dict:
    """The compact form of a run kept in results/escape.json: verdict, step left, NME, and per block group the
    median between-image share, gradient norm and relative Adam step at every BLOCK_EVERY steps."""
    groups = {}
    for label, member in GROUPS:
        rows = []
        for row in record["blocks"]:
            values = np.array([v[:3] + [v[3] if record.get("norm") == "weights" else float("nan")]
                               for k, v in row.items() if k != "step" and member(k)], dtype=np.float64)
            with warnings.catch_warnings():                 # runs logged before the weight norm was: nan
                warnings.simplefilter("ignore", RuntimeWarning)
                rows.append([row["step"], *np.nanmedian(values, axis=0).round(6).tolist()])
        groups[label] = rows
    return {"name": run_name(record["spec"]), "spec": record["spec"], "left": left_mean(record),
            "step_left": step_left(record), "nme2d": record["nme2d"], "loss_end": record["log"][-1][1],
            "spread_end": record["log"][-1][2], "groups": groups, "weights_end": record.get("weights_end"),
            "train_seconds": record["train_seconds"],
            "date": record["date"], "machine": record["machine"]}


def change_of(spec: dict) -> str:
    """The CHANGES name a run's spec belongs to (ignoring the seed and the network), or its own difference from
    DEFAULTS."""
    for name, change in CHANGES.items():
        if {**DEFAULTS, **change, "seed": spec["seed"], "model": spec["model"], "encoder": spec["encoder"]} == spec:
            return name
    return run_name({**spec, "seed": DEFAULTS["seed"]})


def _range(values, fmt="{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def table(runs: list[dict], mean_face: float | None) -> list[str]:
    """Markdown: one row per change x network: seeds that left the mean face, the step they left it, NME."""
    rows = ["| change to the demo recipe | network | left the mean face / seeds | step left (median, range) | "
            "2D NME at the end, runs that left | runs that stayed |", "|---|---|---|---|---|---|"]
    keyed: dict[tuple, list] = {}
    for r in runs:
        net = ("PRNet" if r["spec"]["model"] == "prnet" else f"E2TKFace {r['spec']['encoder']}") + \
            f", {r['spec']['input_size']} px"
        keyed.setdefault((change_of(r["spec"]), net), []).append(r)
    order = list(CHANGES)
    for (change, net), group in sorted(keyed.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order
                                                                        else len(order), kv[0])):
        left = [r for r in group if r["left"]]
        steps = [r["step_left"] for r in left if r["step_left"] is not None]
        stayed = [r for r in group if not r["left"]]
        rows.append(f"| {change} | {net} | {len(left)} / {len(group)} | "
                    f"{int(np.median(steps)) if steps else '–'} ({_range(steps, '{:d}')}) | "
                    f"{_range([r['nme2d'] for r in left])} % | "
                    + (f"{_range([r['nme2d'] for r in stayed])} %" if stayed else "–") + " |")
    if mean_face is not None:
        rows += ["", f"The mean face scores {mean_face:.2f} % on the same test images."]
    return rows


def mechanism(runs: list[dict], steps=(50, 100, 150, 200, 300)) -> list[str]:
    """Markdown: per block group, the median over runs that left / stayed of the between-image share / the gradient
    norm / Adam's relative step / the weight norm relative to initialisation, at the given steps."""
    rows = ["| block group | runs | " + " | ".join(f"step {s}" for s in steps) + " | weights at the end / at the "
            "start |", "|---|---|" + "---|" * (len(steps) + 1)]
    for label, _ in GROUPS:
        for verdict, members in (("left", [r for r in runs if r["left"]]),
                                 ("stayed", [r for r in runs if not r["left"]])):
            if not members:
                continue
            cells = []
            for s in steps:
                values = [row[1:] for r in members for row in r["groups"][label] if row[0] == s]
                if not values:
                    cells.append("–")
                    continue
                share, grad, rel, norm = np.median(np.array(values), axis=0)
                cells.append(f"{share:.2f} / {grad:.0e} / {rel:.0e}" + ("" if np.isnan(norm) else f" / {norm:.2f}"))
            ends = [r["weights_end"][label] for r in members if r.get("weights_end")]
            cells.append(f"{_range(ends)} ({len(ends)} runs)" if ends else "–")
            rows.append(f"| {label} | {verdict} ({len(members)}) | " + " | ".join(cells) + " |")
    return rows


def weights_at_end(spec: dict, saved: Path) -> dict:
    """{block group: median over its blocks of weight_norm at the end / at initialisation}, the initialisation
    rebuilt from the run's seed as run() built it, the end read from the saved state dict."""
    import torch

    from engine.train import seed_everything

    seed_everything(spec["seed"])
    model, _ = build(spec)
    start = {name: weight_norm(m) for name, m in blocks(model)}
    model.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
    ratios = {name: norm_ratio(weight_norm(m), start[name]) for name, m in blocks(model)}
    return {label: round(float(np.nanmedian([r for n, r in ratios.items() if member(n)])), 4)
            for label, member in GROUPS}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": [], "mean_face_nme2d": None}


def cmd_report(args) -> None:
    """Fold every finished run under --work into results/escape.json (a run there of the same name is replaced)."""
    from benchmarks.convergence import evaluate_nme, study_data
    from data.dataset import AFLWEvalSet
    from engine.evaluate import MeanPosmapModel
    from faceutil.sampleio import atomic_write_bytes
    from faceutil.uv import uv_layout

    results = load_results()
    runs = {r["name"]: r for r in results["runs"]}
    for path in sorted(Path(args.work).glob("*.json")):
        record = json.loads(path.read_text())
        saved = path.parent / "weights" / (path.stem + ".pt")
        if saved.is_file():
            record["weights_end"] = weights_at_end(record["spec"], saved)
        record = summarise(record)
        runs[record["name"]] = record
    if results["mean_face_nme2d"] is None:
        train_root, test_raw = study_data()
        test = AFLWEvalSet(test_raw)
        results["mean_face_nme2d"] = evaluate_nme(MeanPosmapModel(train_root), [test[i] for i in range(len(test))],
                                                  uv_layout("synthetic").kpt_ind)
    results["runs"] = [runs[k] for k in sorted(runs)]
    atomic_write_bytes(RESULTS, (json.dumps(results, indent=1) + "\n").encode("utf-8"))
    print("\n".join(table(results["runs"], results["mean_face_nme2d"])))
    print()
    print("\n".join(mechanism([r for r in results["runs"] if change_of(r["spec"]) in ("baseline", "threads2")])))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.escape", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the missing runs of a set (or one --spec)")
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--set", help=f"comma-separated set names, run in that order: {', '.join(SETS)}")
    group.add_argument("--spec", help="JSON changes to the defaults, e.g. '{\"seed\": 3}'")
    r.add_argument("--shard", default="0/1", help="i/n: run every n-th spec starting at i (parallel shards)")
    r.add_argument("--work", default=str(WORK))
    rep = sub.add_parser("report", help="fold the finished runs into results/escape.json and print the tables")
    rep.add_argument("--work", default=str(WORK))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "run":
        cmd_run(args)
    else:
        cmd_report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
