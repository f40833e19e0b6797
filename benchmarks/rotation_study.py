"""Rotation study: is the equivariant encoder more robust to in-plane rotation than PRNet or a plain CNN?

Owns benchmarks/results/rotation.md (+ rotation.png, rotation.json) and the per-run records under
benchmarks/results/rotation_runs/. Trains E2TKFace (faithful / aligned / plain-CNN encoder) and PRNet, each with and
without the rotation part of the training augmentation, on one synthetic 300W-LP-format training set with one
configuration for all (steps, batch, learning-rate schedule, input size, head, seeds); evaluates each on a synthetic
AFLW2000-format test set whose crops are rotated in-plane every 15 degrees from -180 to 180 (68-point 2D NME,
DESIGN.md §6 protocol, per angle and per yaw bin); reports mean ± std over seeds. Run from the repository root:

    python -m benchmarks.rotation_study --smoke --out /tmp/rotation_smoke        # ~1 min on 2 CPU cores
    python -m benchmarks.rotation_study --budget-minutes 120      # the CPU study: trains what is missing, resumes
    python -m benchmarks.rotation_study --report-only             # rewrite the report from the saved runs
    python -m benchmarks.rotation_study --merge DIR_OR_JSON ... --out OUT   # runs made elsewhere, same settings

Each finished run (one model, one augmentation variant, one seed) is written at once to its own JSON file in --runs;
a rerun skips the runs already there, so the study's CPU time can be spread over several sessions (--budget-minutes
stops starting new runs after that long). A run file made with other settings is refused, naming the difference;
a corrupt one is named and trained again.

Notes. Training here is a fixed-step loop (Adam, the toolkit's parameter groups and per-step learning rate:
linear warm-up then cosine, WeightedPosmapLoss), not engine.train.run_training (epoch-based), so every model gets
exactly the same optimiser steps; BatchNorm statistics are then refreshed over un-augmented training crops before
evaluation. The no-rotation variant is data.augment.augment(rotation=False) (the same random draws, the rotation
skipped). --size and --head are the toolkit's --input-size and --head (model.head.PosmapIO). build_model("prnet")
has no width argument, so PRNet runs at full width whatever --width-mult says. A trained run counts only if it
beats the mean-face reference (the mean training position map predicted for every image) at 0 deg by at least a
factor of 2; the report flags the others and draws its conclusion from the passing runs only.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from data.augment import MAX_ANGLE_DEG       # the training augmentation's rotation range (±)

ANGLES = tuple(range(0, 181, 15))                   # the study's test rotations (degrees, counter-clockwise)
NEGATIVE_ANGLES = tuple(range(-15, -180, -15))      # the clockwise side (-180 is 180), for the symmetry check
YAW_BINS = ("|yaw|<=30", "30<|yaw|<=60", "|yaw|>60")         # faceutil.metrics.nme_by_yaw keys
BIN_LABELS = {"|yaw|<=30": "yaw ≤ 30°", "30<|yaw|<=60": "30° < yaw ≤ 60°", "|yaw|>60": "yaw > 60°"}  # no "|" in md
# (label, registered model name, builder kwargs without width); width_mult is added for e2tkface only.
MODELS = (
    ("E2TKFace faithful", "e2tkface", {"encoder": "faithful"}),
    ("E2TKFace aligned", "e2tkface", {"encoder": "aligned"}),
    ("E2TKFace CNN", "e2tkface", {"encoder": "cnn"}),
    ("PRNet", "prnet", {}),
)
EQUIVARIANT = ("E2TKFace faithful", "E2TKFace aligned")
# The faithful encoder crashes in backward (native "double free or corruption") when its first stage has a single
# regular field, i.e. round(4 * width_mult) < 2 (measured 2026-11-25: widths 0.125, 0.25, 0.3 crash; 0.375, 0.5 run).
MIN_WIDTH = 0.375
PASS_RATIO = 0.5            # a run counts when its 0-degree NME is at most this fraction of the mean face's
SHARED_BELOW = 0.6          # CPU busy below this: the cores were shared (measured 0.94-0.95 alone, 0.49 beside 2 loops)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUNS_DIR = RESULTS_DIR / "rotation_runs"                         # one JSON per finished run (committed)
DEFAULT_WORK = Path("savedmodel") / "rotation_study_data"       # synthetic data (git-ignored), reused across runs
BASELINE_FILE = "baseline.json"
# The settings every run of one study shares; a run file (or a --merge input) with any of them different is refused.
SETTING_KEYS = ("steps", "batch", "lr", "warmup", "weight_decay", "width_mult", "size", "head", "topk", "precision",
                "train_count", "test_count", "data_seed", "angles")
SMOKE = {"steps": 2, "batch": 2, "warmup": 1, "width_mult": MIN_WIDTH, "train_count": 8, "test_count": 4,
         "seeds": [0, 1], "size": 64, "angles": [0, 90, 180]}
COLOURS = {"E2TKFace faithful": "#0072B2", "E2TKFace aligned": "#009E73", "E2TKFace CNN": "#E69F00",
           "PRNet": "#D55E00"}


def is_exact(angle: int) -> bool:
    """Multiples of 90 degrees turn the pixel grid onto itself: the rotated crop is a pixel permutation (no
    interpolation), so a C4-equivariant network sees exactly the rotated input; other angles are interpolated."""
    return int(angle) % 90 == 0


# ----------------------------------------------------------------------------------------------------------------
# rotated test set
# ----------------------------------------------------------------------------------------------------------------
def rotate_crop(image: np.ndarray, points: np.ndarray, angle_deg: float):
    """Rotate a square crop about its centre ((S-1)/2, (S-1)/2) by angle_deg (counter-clockwise as displayed).

    image: (S, S, 3) uint8; points: (N, 2|3) crop px (z kept). Returns (image, points, Similarity) where a crop
    point p lands at Similarity.apply(p) in the rotated image (faceutil.crop.rotation_about, bilinear, outside -> 0).
    """
    from faceutil.crop import rotation_about

    size = image.shape[0]
    sim = rotation_about(((size - 1) / 2.0, (size - 1) / 2.0), angle_deg)
    return sim.warp_image(image, size), sim.apply(points), sim


class RotatedEvalSet:
    """AFLWEvalSet-like items with the crop rotated by `angle_deg` (torch Dataset protocol).

    items: a list of AFLWEvalSet items (image (3, S, S) float [0, 1], matrix (3, 3) original->crop, pt3d_68, yaw,
    name, index). The rotated item's matrix is original->rotated crop, so engine.evaluate.evaluate_model maps the
    predicted landmarks back to the original image and scores them against the unrotated pt3d_68: the NME
    normaliser (ground-truth landmark box) is the same at every angle. The position map is dropped (no dense NME).
    """

    def __init__(self, items: list, angle_deg: float):
        self.items, self.angle = items, float(angle_deg)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.items[i]
        image = (item["image"].numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
        rotated, _, sim = rotate_crop(image, np.zeros((0, 2)), self.angle)
        out = {k: v for k, v in item.items() if k not in ("image", "matrix", "posmap")}
        out["image"] = torch.from_numpy(rotated.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
        out["matrix"] = torch.from_numpy(sim.matrix @ np.asarray(item["matrix"], dtype=np.float64))
        return out



# ----------------------------------------------------------------------------------------------------------------
# one training run + evaluation
# ----------------------------------------------------------------------------------------------------------------
def model_kwargs(name: str, base: dict, width_mult: float, topk: int = 4, size: int = 256,
                 head: str = "mean-residual") -> dict:
    """Builder kwargs: input_size and head for both; width_mult and topk for e2tkface (PRNet stays at full width)."""
    common = {"input_size": size, "head": head}
    return {**base, "width_mult": width_mult, "topk": topk, **common} if name == "e2tkface" else {**base, **common}


def train_model(name: str, kwargs: dict, train_root: Path, rotation: bool, seed: int, settings: dict, device,
                weight_mask: np.ndarray, workers: int = 0, stop_after: int | None = None, on_step=None):
    """Train one network for settings["steps"] optimiser steps; BatchNorm statistics refreshed after.

    settings: the study's SETTING_KEYS (batch, lr, warmup, weight_decay, precision ...); the learning rate is the
    toolkit's per-step schedule (engine.optim.lr_factor: linear warm-up, then cosine to zero at the last step).
    stop_after: end after this many steps, the schedule still spanning settings["steps"] (the convergence study's
    early-phase probes). on_step(step, model, output, loss): called after every optimiser step, the gradients
    still in place (probes read them).
    Returns (model in eval mode (exported when it offers export()), dict of run facts).
    """
    import functools

    import torch
    from torch.optim.swa_utils import update_bn

    from data.dataset import PosmapDataset
    from data.index import read_index
    from data.loader import build_loader
    from engine.optim import lr_factor, parameter_groups
    from engine.loading import needs_mean_posmap
    from engine.train import seed_everything
    from model.device import autocast_context
    from model.loss import WeightedPosmapLoss
    from model.registry import build_model

    steps, batch, lr = settings["steps"], settings["batch"], settings["lr"]
    last = min(steps, stop_after) if stop_after else steps
    seed_everything(seed)
    model = build_model(name, **kwargs)
    names = read_index(train_root)
    dataset = PosmapDataset(train_root, names, augment=True, seed=seed, rotation=rotation)
    if needs_mean_posmap(model):
        model.io.set_mean_posmap(dataset.mean_posmap())
    model = model.to(device)
    loader = build_loader(dataset, batch_size=batch, workers=workers, shuffle=True, seed=seed,
                          drop_last=len(dataset) >= batch, device=device)
    optimizer = torch.optim.Adam(parameter_groups(model, settings["weight_decay"]), lr=lr)
    factor = functools.partial(lr_factor, warmup_steps=settings["warmup"], steps_per_epoch=len(loader),
                               total_steps=steps, schedule="cosine")
    loss_fn = WeightedPosmapLoss(weight_mask).to(device)
    step, epoch, losses, start = 0, 0, [], time.perf_counter()
    model.train()
    while step < last:
        loader.sampler.set_epoch(epoch)
        for batch_data in loader:
            x = batch_data["image"].to(device, non_blocking=True)
            y = batch_data["posmap"].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor(step)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, settings["precision"]):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name} {kwargs} seed {seed}: loss is not finite at step {step}")
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if on_step is not None:
                on_step(step, model, out, losses[-1])
            if step % 250 == 0:
                print(f"  {name} {kwargs.get('encoder', '')} rotation={rotation} seed {seed}: step {step}/{steps}, "
                      f"loss {np.mean(losses[-50:]):.4f}, {time.perf_counter() - start:.0f} s", flush=True)
            if step >= last:
                break
        epoch += 1
    train_s = time.perf_counter() - start
    refresh = PosmapDataset(train_root, names[:64], augment=False)
    with torch.no_grad():
        update_bn((b["image"].to(device) for b in torch.utils.data.DataLoader(refresh, batch_size=batch)), model)
    model.eval()
    if hasattr(model, "export"):
        model = model.export().to(device)      # plain-torch twin (same outputs); moved in case export builds on CPU
    facts = {"steps": step, "epochs": epoch, "train_seconds": round(train_s, 2),
             "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-10:])) if losses else None,
             "parameters": int(sum(p.numel() for p in model.parameters()))}
    return model.eval(), facts


def evaluate_angles(model, items: list, kpt_ind: np.ndarray, device, batch: int, angles=ANGLES) -> dict:
    """{angle: {"mean": 2D NME %, "bins": nme_by_yaw dict}} of `model` on `items` rotated by each angle."""
    from engine.evaluate import evaluate_model

    out = {}
    for angle in angles:
        report = evaluate_model(model, RotatedEvalSet(items, angle), kpt_ind, None, device, batch)
        out[int(angle)] = {"mean": float(np.mean(report.nme2d)), "bins": report.summary["pt3d_68 2D"]}
    return out


# ----------------------------------------------------------------------------------------------------------------
# run files: one JSON per finished run, so the study resumes run by run and merges across machines
# ----------------------------------------------------------------------------------------------------------------
class RunFileError(Exception):
    """A run file that cannot be used (missing, unreadable, not a run record); the message is one sentence."""


def run_filename(label: str, rotation: bool, seed: int) -> str:
    return f"{label.lower().replace(' ', '-')}_{'rot' if rotation else 'norot'}_seed{seed}.json"


def settings_difference(a: dict, b: dict) -> str | None:
    """'steps 1200 here, 800 there'-style text for the first SETTING_KEYS entry that differs, or None."""
    for key in SETTING_KEYS:
        if json.dumps(a.get(key)) != json.dumps(b.get(key)):
            return f"{key} {json.dumps(a.get(key))} against {json.dumps(b.get(key))}"
    return None


def write_run(path: Path, record: dict) -> None:
    from faceutil.sampleio import atomic_write_bytes

    record = {**record, "nme": {str(a): v for a, v in record["nme"].items()}}
    atomic_write_bytes(path, (json.dumps(record, indent=1, default=_json_default) + "\n").encode("utf-8"))


def read_run(path: Path) -> dict:
    """A run (or baseline) record with integer angle keys; RunFileError for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        nme = {int(a): v for a, v in record["nme"].items()}
        settings = record["settings"]
        if record.get("kind") != "baseline":
            bad = [a for a, v in nme.items() if not math.isfinite(float(v["mean"]))]
            if bad or 0 not in nme or not {"label", "rotation", "seed", "facts"} <= set(record):
                raise ValueError("incomplete run record")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunFileError(f"{path} is not a readable run record ({type(err).__name__}: {err})") from None
    if not isinstance(settings, dict):
        raise RunFileError(f"{path} has no settings")
    return {**record, "nme": nme, "path": str(path)}


def collect_runs(paths) -> tuple[list, dict | None, list]:
    """Runs and the mean-face baseline from run files and folders of them.

    Returns (runs, baseline or None, problems): every missing or corrupt file is named in `problems` and skipped.
    Raises SystemExit with one sentence when two records were made with different settings.
    """
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    runs, baseline, problems, reference = [], None, [], None
    for f in files:
        try:
            record = read_run(f)
        except RunFileError as err:
            problems.append(str(err))
            continue
        if reference is None:
            reference = record
        diff = settings_difference(record["settings"], reference["settings"])
        if diff:
            raise SystemExit(f"cannot combine {f} with {reference['path']}: they were made with different settings "
                             f"({diff}).")
        if record.get("kind") == "baseline":
            baseline = baseline or record
            continue
        key = (record["label"], bool(record["rotation"]), record["seed"])
        twin = next((r for r in runs if (r["label"], bool(r["rotation"]), r["seed"]) == key), None)
        if twin is not None:
            problems.append(f"{f} repeats the run in {twin['path']} ({key[0]}, rotation {key[1]}, seed {key[2]})")
            continue
        runs.append(record)
    return runs, baseline, problems


def passes(run: dict, baseline: dict | None) -> bool:
    """True when the run's 0-degree NME is at most PASS_RATIO x the mean face's (unknown baseline: False)."""
    if baseline is None or 0 not in baseline["nme"]:
        return False
    return run["nme"][0]["mean"] <= PASS_RATIO * baseline["nme"][0]["mean"]


# ----------------------------------------------------------------------------------------------------------------
# aggregation, report, plot
# ----------------------------------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _pm(values) -> str:
    m, s = mean_std(values)
    return "-" if not math.isfinite(m) else f"{m:.2f} ± {s:.2f}"


def row_key(label: str, rotation: bool) -> str:
    return f"{label} | {'rot aug' if rotation else 'no rot aug'}"


def _angle_mean(nme: dict, angles) -> float:
    values = [nme[a]["mean"] for a in angles if a in nme]
    return statistics.fmean(values) if values else float("nan")


def summarise(runs: list, baseline: dict | None) -> dict:
    """Group runs by (model label, rotation) -> {"per_angle": {angle: [NME per passing seed]},
    "bins": {angle: {bin: [...]}}, "rotated_mean" / "exact_mean" / "interpolated_mean": [mean over the positive
    angles > 0 / the multiples of 90 / the others, per passing seed], "in_range_mean" / "beyond_range_mean": [the
    same over the positive angles within / beyond the training augmentation's rotation range], "gap":
    [rotated_mean - NME at 0 deg] (the robustness figure: what rotation costs), "symmetry": [mean |NME(-a) -
    NME(a)|], "seeds" / "failed": the passing / failing seeds, "seconds": [train + evaluation seconds of every run]}."""
    groups: dict = {}
    for r in sorted(runs, key=lambda r: (r["seed"], [m[0] for m in MODELS].index(r["label"])
                                         if r["label"] in [m[0] for m in MODELS] else 99)):
        g = groups.setdefault(row_key(r["label"], r["rotation"]),
                              {"label": r["label"], "rotation": r["rotation"], "per_angle": {}, "bins": {},
                               "rotated_mean": [], "exact_mean": [], "interpolated_mean": [], "in_range_mean": [],
                               "beyond_range_mean": [], "gap": [],
                               "symmetry": [], "seeds": [], "failed": [], "seconds": []})
        g["seconds"].append(r["facts"]["train_seconds"] + r["facts"].get("eval_seconds", 0.0))
        if not passes(r, baseline):
            g["failed"].append(r["seed"])
            continue
        g["seeds"].append(r["seed"])
        nme = r["nme"]
        for a in sorted(nme):
            g["per_angle"].setdefault(a, []).append(nme[a]["mean"])
            for b in YAW_BINS + ("mean_of_bins",):
                g["bins"].setdefault(a, {}).setdefault(b, []).append(nme[a]["bins"][b])
        positive = [a for a in nme if 0 < a <= 180]
        g["rotated_mean"].append(_angle_mean(nme, positive))
        g["exact_mean"].append(_angle_mean(nme, [a for a in positive if is_exact(a)]))
        g["interpolated_mean"].append(_angle_mean(nme, [a for a in positive if not is_exact(a)]))
        g["in_range_mean"].append(_angle_mean(nme, [a for a in positive if a <= MAX_ANGLE_DEG]))
        g["beyond_range_mean"].append(_angle_mean(nme, [a for a in positive if a > MAX_ANGLE_DEG]))
        g["gap"].append(g["rotated_mean"][-1] - nme[0]["mean"])
        pairs = [abs(nme[-a]["mean"] - nme[a]["mean"]) for a in positive if -a in nme]
        if pairs:
            g["symmetry"].append(statistics.fmean(pairs))
    return groups


def _verdict(rows: dict) -> str | None:
    """Equivariant vs not, by the cost of rotation (rotated-angle mean minus 0 deg): a difference counts when it
    exceeds twice the combined seed spread (2 sqrt(s1^2 + s2^2)); only models with at least two passing seeds take
    part (one seed has no spread)."""
    eq = [k for k in EQUIVARIANT if k in rows]
    others = [k for k in rows if k not in EQUIVARIANT]
    if not eq or not others:
        return None
    eq2, others2 = ([k for k in group if len(rows[k]["gap"]) >= 2] for group in (eq, others))
    if not eq2 or not others2:
        return "no verdict yet: the equivariant or the non-equivariant side has no model with two passing seeds"
    best_eq = min(eq2, key=lambda k: mean_std(rows[k]["gap"])[0])
    best_other = min(others2, key=lambda k: mean_std(rows[k]["gap"])[0])
    (g_eq, s_eq), (g_o, s_o) = mean_std(rows[best_eq]["gap"]), mean_std(rows[best_other]["gap"])
    diff, noise = g_o - g_eq, 2.0 * math.hypot(s_eq, s_o)
    m_eq, m_o = mean_std(rows[best_eq]["rotated_mean"])[0], mean_std(rows[best_other]["rotated_mean"])[0]
    if diff > 0 and diff > noise:
        head = (f"the equivariant encoder IS more robust: rotation costs {best_eq} {g_eq:.2f} NME points and "
                f"{best_other} (the most robust non-equivariant model) {g_o:.2f}, a difference larger than twice the "
                f"combined seed spread ({noise:.2f})")
    elif diff > 0:
        head = (f"the equivariant encoder is NOT clearly more robust: rotation costs {best_eq} {g_eq:.2f} NME points "
                f"and {best_other} {g_o:.2f}, a difference within twice the combined seed spread ({noise:.2f})")
    else:
        head = (f"the equivariant encoder is NOT more robust: rotation costs {best_other} {g_o:.2f} NME points and "
                f"the most robust equivariant model ({best_eq}) {g_eq:.2f} (twice the combined seed spread "
                f"{noise:.2f})")
    return head + f"; their mean NME over the rotated angles: {m_eq:.2f} vs {m_o:.2f} %"


def conclusion(groups: dict) -> list[str]:
    """Sentences drawn from the passing runs' numbers: which models are robust to rotation, with and without
    rotation augmentation, and how much of the gap the augmentation closes."""
    lines = []
    counted = {k: g for k, g in groups.items() if g["seeds"]}
    if not counted:
        return [f"No run counts yet: none beats the mean face at 0° by {1 / PASS_RATIO:g}× (see the list below)."]
    for rotation in (False, True):
        rows = {g["label"]: g for g in counted.values() if g["rotation"] == rotation}
        if not rows:
            continue
        aug = "with" if rotation else "without"
        by_gap = sorted(rows, key=lambda k: mean_std(rows[k]["gap"])[0])
        text = (f"**{aug.capitalize()} rotation augmentation**: cost of rotation (mean NME over 15–180° minus the "
                f"0° NME): " + ", ".join(f"{k} {_pm(rows[k]['gap'])}" for k in by_gap)
                + f"; smallest: {by_gap[0]}.")
        verdict = _verdict(rows)
        lines.append(text + (f" So {verdict}." if verdict else ""))
    no_aug = {g["label"]: g for g in counted.values() if not g["rotation"]}
    with_aug = {g["label"]: g for g in counted.values() if g["rotation"]}
    eq = [k for k in EQUIVARIANT if k in no_aug]
    best_eq = min(eq, key=lambda k: mean_std(no_aug[k]["rotated_mean"])[0]) if eq else None
    for label in [m[0] for m in MODELS]:
        if label not in no_aug or label not in with_aug:
            continue
        r0, r1 = mean_std(no_aug[label]["rotated_mean"])[0], mean_std(with_aug[label]["rotated_mean"])[0]
        c0, c1 = mean_std(no_aug[label]["gap"])[0], mean_std(with_aug[label]["gap"])[0]

        def arrow(key: str) -> str:        # "no-aug mean → aug mean" of one summary figure
            return " → ".join(f"{mean_std(g[key])[0]:.2f}" for g in (no_aug[label], with_aug[label]))

        text = (f"{label}: rotation augmentation takes the rotated-angle NME from {r0:.2f} to {r1:.2f} % and the "
                f"cost of rotation from {c0:.2f} to {c1:.2f} points"
                + (f" ({100 * (c0 - c1) / c0:.0f} % of it removed)" if c0 > 0 else "")
                + f"; over the rotated angles within the augmentation's range (≤ {MAX_ANGLE_DEG:g}°) "
                + f"{arrow('in_range_mean')} %, beyond it (> {MAX_ANGLE_DEG:g}°) {arrow('beyond_range_mean')} %")
        if best_eq is not None and label not in EQUIVARIANT:
            eq_r0 = mean_std(no_aug[best_eq]["rotated_mean"])[0]
            gap = r0 - eq_r0
            if gap > 0 and r1 < eq_r0:
                text += (f"; without augmentation it trails {best_eq} (no augmentation) by {gap:.2f} points on the "
                         f"rotated angles, and augmentation more than closes that gap ({eq_r0 - r1:.2f} points ahead "
                         f"of it)")
            elif gap > 0:
                text += (f"; without augmentation it trails {best_eq} (no augmentation) by {gap:.2f} points on the "
                         f"rotated angles, and augmentation closes {100 * (r0 - r1) / gap:.0f} % of that gap")
            else:
                text += f"; without augmentation it is not behind {best_eq} on the rotated angles ({-gap:.2f} ahead)"
        lines.append(text + ".")
    missing = [row_key(g["label"], g["rotation"]) for g in groups.values() if len(g["seeds"]) < 2]
    if missing:
        lines.append("Fewer than two passing seeds (no seed spread, weaker evidence): " + "; ".join(missing) + ".")
    return lines


def cpu_busy(run: dict) -> float | None:
    """Process CPU time / (wall time x torch threads) of a CPU run, both over the whole run (build, training,
    BatchNorm refresh, export, evaluation): near 1 alone on the cores, far less when another process shared them
    (the run then takes several times longer, so its minutes overstate what it costs alone). None for runs on
    another device and runs recorded before cpu_seconds existed. Data-loader worker processes are not counted
    (workers=0 is the default)."""
    f = run["facts"]
    if "cpu_seconds" not in f or not str(f.get("device", "")).startswith("cpu") or f.get("run_seconds", 0) <= 0:
        return None
    return f["cpu_seconds"] / (f["run_seconds"] * max(1, f.get("threads", 1)))


def contention_sentence(runs: list) -> str:
    """One sentence for the report's Runs line: how many runs recorded their CPU time, and which of them shared
    the cores (busy below SHARED_BELOW), so their CPU-minute figures are too high."""
    known = {run_filename(r["label"], r["rotation"], r["seed"]): b for r in runs if (b := cpu_busy(r)) is not None}
    if not known:
        return "process CPU time not recorded for these runs, so sharing of the cores is not checked"
    shared = [f"{k} ({v:.2f})" for k, v in sorted(known.items()) if v < SHARED_BELOW]
    return (f"CPU busy (process CPU time / wall time x threads) recorded for {len(known)} of {len(runs)} runs, "
            f"{min(known.values()):.2f}–{max(known.values()):.2f}; "
            + (f"below {SHARED_BELOW:g}, so the cores were shared and the time overstated: {', '.join(shared)}"
               if shared else f"none below {SHARED_BELOW:g} (no run shared the cores)"))


def _loss_note(run: dict) -> str:
    """ "; training loss A → B (mean of the last 10 steps)" from a run's facts, or "" when they are missing."""
    first, last = run["facts"].get("first_loss"), run["facts"].get("last_loss")
    return f"; training loss {first:.4f} → {last:.4f} (mean of the last 10 steps)" if first and last else ""


# Printed under the conclusion: an argument from the architecture (the tables are the measurement).
EQUIVARIANCE_NOTE = (
    "Why an equivariant encoder need not make the output robust (reasoning about the architecture): the network's "
    "output is a UV position map, whose pixel (u, v) is one fixed point of the face whatever the pose. For an input "
    "rotated by θ the right answer keeps that layout and rotates the (x, y) values. The equivariant encoders "
    "(model.encoder) end in rotation-invariant scalar fields, so a rotated input gives the same features at "
    "rotated positions: a feature map rotated in space. The neck and the transposed-conv decoder are ordinary, "
    "non-equivariant layers, so they receive a rotated feature map they were not trained on, as PRNet's first "
    "layer receives a rotated image. Equivariance reaches the output only through a bottleneck that is invariant "
    "to rotation, or a decoder whose output transforms with the input, and neither is in the published design.")


@functools.lru_cache(maxsize=4)
def encoder_equivariance(width_mult: float, size: int) -> dict:
    """{encoder kind: (error at 90°, error at 180°)}: model.encoder.rot90_equivariance_error of each E2TKFace
    encoder at `width_mult`, freshly initialised (torch seed 0), on two uniform-noise images of size² (the study's
    network input; area downsampling from 256 commutes with quarter turns, so this is the error inside the study)."""
    import torch

    from model.e2tkface import build_encoder
    from model.encoder import rot90_equivariance_error

    width = max(width_mult, MIN_WIDTH)
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size)
    result = {}
    for label, _, base in MODELS[:3]:
        encoder = build_encoder(base["encoder"], width_mult=width).eval()
        result[label] = tuple(round(rot90_equivariance_error(encoder, x, k), 4) for k in (1, 2))
    return result


def equivariance_sentence(errors: dict, size: int) -> str:
    """The measured encoder equivariance errors as one sentence for the report."""
    return ("Measured encoder equivariance at the exact angles (relative error ||E(rot x) − rot E(x)|| / ||E(x)||, "
            f"freshly initialised encoders, random {size}² input; 90° / 180°): "
            + ", ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in errors.items())
            + ". Only an encoder with error 0 is exactly equivariant; the faithful layout's stride-2 convolutions "
              "sample a grid that quarter turns do not map onto itself (seeds, sizes and 45°: "
              "benchmarks/results/equivariance.md).")


def _header(a: int) -> str:
    return f"{a}°" + ("*" if is_exact(a) and a else "")


def write_report(out: Path, runs: list, baseline: dict | None, meta: dict) -> tuple[Path, Path]:
    """Write rotation.md, rotation.png and rotation.json under `out`; returns (markdown path, png path)."""
    from faceutil.sampleio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    groups = summarise(runs, baseline)
    s = meta["settings"]
    angles = sorted({a for r in runs for a in r["nme"] if a >= 0} | set(s.get("angles", ())))
    negatives = sorted({a for r in runs for a in r["nme"] if a < 0}, reverse=True)
    base = {a: v["mean"] for a, v in baseline["nme"].items()} if baseline else {}
    seconds = sum(r["facts"]["train_seconds"] + r["facts"].get("eval_seconds", 0.0) for r in runs)
    seconds += baseline["facts"].get("seconds", 0.0) if baseline else 0.0
    failing = [r for r in runs if not passes(r, baseline)]
    md = ["# Rotation study: in-plane rotation robustness", ""]
    if meta.get("smoke"):
        md += ["**SMOKE RUN** — tiniest sizes, a pipeline check only; the numbers mean nothing.", ""]
    md += [f"- Commands: {'; '.join(f'`{c}`' for c in meta['commands'])}",
           f"- Dates: {', '.join(meta['dates'])}; machines: {'; '.join(meta['machines'])}",
           f"- Runs: {len(runs)} ({len(runs) - len(failing)} beat the mean face at 0° by ≥ {1 / PASS_RATIO:g}×); "
           f"total CPU time {seconds / 60:.1f} min (wall-clock time of the training + evaluation of every run, "
           f"and the mean-face reference; a true CPU figure only when nothing else ran beside the study): "
           f"{contention_sentence(runs)}{' — ' + meta['note'] if meta.get('note') else ''}",
           f"- Budget: {s['steps']} optimiser steps of batch {s['batch']} per run, Adam lr {s['lr']:g} with a "
           f"{s['warmup']}-step linear warm-up then cosine to zero, weight decay {s['weight_decay']:g}; BatchNorm "
           f"refreshed on ≤ 64 un-augmented training crops",
           f"- Seeds: {meta['seeds']} (initialisation, augmentation, data order); data seed {s['data_seed']}",
           f"- Data: synthetic 300W-LP-format training set of {s['train_count']} images, synthetic "
           f"AFLW2000-format test set of {s['test_count']} images (faceutil.synthetic + faceutil.process)",
           f"- Width: E2TKFace width_mult {s['width_mult']:g} for all three encoders, top-k {s['topk']}; PRNet at "
           f"full width (build_model(\"prnet\") has no width argument).",
           f"- Network input size: {s['size']}² for every model"
           + ("" if s["size"] == 256 else
              " (the 256² crop area-downsampled; the predicted position map upsampled to 256² and its coordinates "
              "rescaled; loss and evaluation at 256² as usual)")
           + f"; output head {s['head']}; training precision {s['precision']}; evaluation fp32 (exported twins).",
           "- Augmentation: 'rotation' = data.augment.augment (colour p 0.5, rotation U(±90°) p 0.5, erasing "
           "p 0.25); 'no rotation' = the same draws with the rotation skipped.",
           "- Test rotation: each deterministic test crop rotated about its centre (counter-clockwise for positive "
           "angles); predictions mapped back to the original image and scored against the unrotated pt3d_68 "
           "(normaliser unchanged). `*`: multiples of 90°, where the rotated crop is an exact pixel permutation "
           "(no interpolation); the other angles are interpolated.",
           "- Protocol: 68-point 2D NME (%), sqrt(w·h) of the ground-truth landmark box (DESIGN.md §6). "
           "Mean ± std over the passing seeds of the per-seed mean over test images.",
           f"- A run counts only when its 0° NME is at most {PASS_RATIO:g} × the mean face's"
           + (f" ({PASS_RATIO * base[0]:.2f} %)" if 0 in base else " (no mean-face reference found: none counts)")
           + "; the tables and the conclusion use the counting runs only.",
           "", "## Conclusion (computed from the counting runs)", ""]
    md += [f"- {line}" for line in conclusion(groups)] + ["", EQUIVARIANCE_NOTE]
    if meta.get("equivariance"):
        md += ["", equivariance_sentence(meta["equivariance"], s["size"])]
    if failing:
        md += ["", "## Runs that do not count (0° NME above the limit)", ""]
        md += [f"- {r['label']}, {'rotation' if r['rotation'] else 'no rotation'}, seed {r['seed']}: "
               f"{r['nme'][0]['mean']:.2f} % at 0°" + _loss_note(r) for r in failing]
    md += ["", "## 2D NME (%) per test rotation angle", "",
           "| model | training aug | seeds | " + " | ".join(_header(a) for a in angles)
           + " | mean 15–180° | exact (90°, 180°) | interpolated | cost (− 0°) | CPU min/run |",
           "|---|---|---|" + "---|" * (len(angles) + 5)]
    for g in groups.values():
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  f"{len(g['seeds'])}/{len(g['seeds']) + len(g['failed'])} | "
                  + " | ".join(_pm(g["per_angle"].get(a, [])) for a in angles)
                  + f" | {_pm(g['rotated_mean'])} | {_pm(g['exact_mean'])} | {_pm(g['interpolated_mean'])} | "
                  f"{_pm(g['gap'])} | {mean_std(g['seconds'])[0] / 60:.1f} |")
    if base:
        pos = [a for a in angles if a > 0 and a in base]
        ex, ip = [base[a] for a in pos if is_exact(a)], [base[a] for a in pos if not is_exact(a)]
        rot = [base[a] for a in pos]
        f = (lambda v: f"{statistics.fmean(v):.2f}" if v else "-")
        md.append("| mean face (constant, reference) | - | - | "
                  + " | ".join(f"{base[a]:.2f}" if a in base else "-" for a in angles)
                  + f" | {f(rot)} | {f(ex)} | {f(ip)} | "
                  + (f"{statistics.fmean(rot) - base[0]:.2f}" if rot and 0 in base else "-") + " | - |")
    if negatives:
        md += ["", "## The clockwise side (negative angles) and symmetry", "",
               "| model | training aug | " + " | ".join(_header(a) for a in negatives)
               + " | mean abs(NME(−a) − NME(a)) |", "|---|---|" + "---|" * (len(negatives) + 1)]
        for g in groups.values():
            if any(a in g["per_angle"] for a in negatives):
                md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                          + " | ".join(_pm(g["per_angle"].get(a, [])) for a in negatives)
                          + f" | {_pm(g['symmetry'])} |")
    md += ["", "## 2D NME (%) per yaw bin — at 0° and averaged over 0–180°", "",
           "| model | training aug | " + " | ".join(f"{BIN_LABELS[b]} @0°" for b in YAW_BINS)
           + " | " + " | ".join(f"{BIN_LABELS[b]} 0–180°" for b in YAW_BINS) + " | mean of bins 0–180° |",
           "|---|---|" + "---|" * 7]
    counts = runs[0]["nme"][0]["bins"]["counts"] if runs else {}
    for g in groups.values():
        at0 = [_pm(g["bins"].get(0, {}).get(b, [])) for b in YAW_BINS]
        avg = []
        for b in YAW_BINS + ("mean_of_bins",):
            per_seed = [statistics.fmean(g["bins"][a][b][i] for a in angles) for i in range(len(g["seeds"]))]
            avg.append(_pm(per_seed))
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  + " | ".join(at0) + " | " + " | ".join(avg) + " |")
    md += ["", "Test images per yaw bin: " + ", ".join(f"{BIN_LABELS[b]}: {counts.get(b, 0)}" for b in YAW_BINS), "",
           "![NME vs angle](rotation.png)", ""]
    md_path, png_path = out / "rotation.md", out / "rotation.png"
    atomic_write_bytes(md_path, "\n".join(md).encode("utf-8"))
    draw_plot(groups, sorted(negatives) + angles, base, png_path)
    record = {"meta": meta, "baseline": base, "cpu_minutes": round(seconds / 60, 1),
              "groups": {k: {kk: vv for kk, vv in g.items() if kk != "bins"} for k, g in groups.items()},
              "conclusion": conclusion(groups)}
    atomic_write_bytes(out / "rotation.json", (json.dumps(record, indent=1, default=_json_default) + "\n").encode())
    return md_path, png_path


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def draw_plot(groups: dict, angles: list, baseline: dict, path: Path) -> Path:
    """NME vs test angle, one line per model (mean ± std over the counting seeds), two panels (without / with
    rotation augmentation); the mean face dashed grey; thin grey verticals at the exact (quarter-turn) angles."""
    from benchmarks.plots import Panel, Series, save_figure

    panels = []
    for rotation in (False, True):
        series = [Series("mean face", [a for a in angles if a in baseline], [baseline[a] for a in angles
                                                                                 if a in baseline], reference=True)]
        for g in groups.values():
            if g["rotation"] == rotation:
                stats = [mean_std(g["per_angle"].get(a, [])) for a in angles]
                series.append(Series(g["label"], angles, [m for m, _ in stats], err=[s for _, s in stats],
                                     colour=COLOURS.get(g["label"])))
        panels.append(Panel(f"{'with' if rotation else 'without'} rotation augmentation", series,
                            xlabel="test rotation (deg)", ylabel="2D NME (%)",
                            xticks=[a for a in angles if a % 45 == 0], vlines=[a for a in angles if is_exact(a)]))
    return save_figure(panels, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# data and main
# ----------------------------------------------------------------------------------------------------------------
def make_data(work: Path, train_count: int, test_count: int, data_seed: int, face_model) -> tuple[Path, Path]:
    """Synthesise + process the training set and synthesise the raw test set (reused when complete)."""
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    work = work / f"train{train_count}-test{test_count}-seed{data_seed}"   # one folder per data set, reused
    train_raw, train_crop, test_raw = work / "300W_LP", work / "300W_LP-crop", work / "AFLW2000"
    for kind, folder, count, seed in (("300W_LP", train_raw, train_count, data_seed),
                                      ("AFLW2000", test_raw, test_count, data_seed + 1)):
        if len(list(folder.glob("*.mat"))) < count:
            synthesize_dataset(folder, kind, count, seed, model=face_model)
    process_dataset(train_raw, train_crop, bfm="synthetic", progress=False, seed=data_seed)
    return train_crop, test_raw


def machine_line(device) -> str:
    import torch

    text = f"{platform.node() or 'host'}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text + f"; torch {torch.__version__}, torch threads {torch.get_num_threads()}"




def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per training run (the budget)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (after the warm-up)")
    p.add_argument("--warmup", type=int, default=500,
                   help="linear warm-up steps; cosine to zero after them (100 left the equivariant encoders on the "
                        "mean face for 3 seeds of 4: benchmarks/results/convergence.md, escape probes)")
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--width-mult", type=float, default=0.5,
                   help=f"E2TKFace width for all encoders (>= {MIN_WIDTH}); PRNet has no width and runs full size")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256),
                   help="network input size for all models alike (the toolkit's --input-size: < 256 runs the "
                        "network on the area-downsampled crop and upsamples its position map, model.head.PosmapIO)")
    p.add_argument("--head", default="mean-residual", choices=("published", "mean-residual"),
                   help="output head for all models alike (the toolkit's --head)")
    p.add_argument("--topk", type=int, default=None,
                   help="E2TKFace top-k windows (default: the published fraction of windows, 4 at 256, 1 below)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="training autocast precision")
    p.add_argument("--train-count", type=int, default=800)
    p.add_argument("--test-count", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=[m[0] for m in MODELS], choices=[m[0] for m in MODELS])
    p.add_argument("--angles", type=int, nargs="+", default=list(ANGLES),
                   help="test rotations in [0, 180] (the negative side is added for --negative-models)")
    p.add_argument("--negative-models", nargs="*", default=[m[0] for m in MODELS], choices=[m[0] for m in MODELS],
                   help="models also tested at the negated angles (the symmetry check)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for rotation.md / .png / .json")
    p.add_argument("--runs", default=None, help=f"folder of the per-run JSON files (default: {RUNS_DIR}; with "
                                                f"--smoke: <out>/rotation_runs)")
    p.add_argument("--work", default=None,
                   help=f"folder for the synthetic data (default: {DEFAULT_WORK}; --smoke: <out>/rotation_data)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="training data loader workers")
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="start no new run after this many minutes (0 = train every missing run)")
    p.add_argument("--smoke", action="store_true", help="tiniest sizes, everything once, ~1 min on 2 CPU cores")
    p.add_argument("--report-only", action="store_true", help="no training: rewrite the report from --runs")
    p.add_argument("--note", default=None, help="a sentence added to the report's Runs line")
    p.add_argument("--merge", nargs="+", default=None, metavar="PATH",
                   help="no training: write the report into --out from run files and folders of them (e.g. made on "
                        "several machines); they must share every setting")
    args = p.parse_args(argv)
    if args.merge:
        return args
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        if Path(args.out).resolve() == RESULTS_DIR.resolve():
            p.error("--smoke must not overwrite benchmarks/results; pass --out to a scratch folder")
    if args.width_mult < MIN_WIDTH:
        p.error(f"--width-mult {args.width_mult} is below {MIN_WIDTH}: the faithful encoder crashes in backward "
                f"with a single regular field in its first stage; use >= {MIN_WIDTH}")
    if args.topk is None:
        from model.head import published_topk

        args.topk = published_topk(args.size)
    if len(set(args.seeds)) < 2:
        p.error("--seeds needs at least two seeds (the report gives mean ± std)")
    if min(args.steps, args.batch, args.train_count, args.test_count) < 1 or args.warmup < 0:
        p.error("--steps, --batch, --train-count and --test-count must be >= 1, --warmup >= 0")
    if any(not 0 <= a <= 180 for a in args.angles) or 0 not in args.angles:
        p.error("--angles must lie in [0, 180] and include 0 (the unrotated reference)")
    args.angles = sorted(set(args.angles))
    return args


def study_settings(args) -> dict:
    return {"steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "width_mult": args.width_mult, "size": args.size, "head": args.head,
            "topk": args.topk, "precision": args.precision, "train_count": args.train_count,
            "test_count": args.test_count, "data_seed": args.data_seed, "angles": list(args.angles)}


def report_meta(runs: list, baseline: dict | None, settings: dict, smoke: bool = False) -> dict:
    records = runs + ([baseline] if baseline else [])
    return {"settings": settings, "smoke": smoke, "seeds": sorted({r["seed"] for r in runs}),
            "commands": sorted({r.get("command", "?") for r in records}),
            "dates": sorted({r.get("date", "?")[:10] for r in records}),
            "machines": sorted({r.get("machine", "?") for r in records}),
            "equivariance": encoder_equivariance(settings["width_mult"], settings["size"])}


def write_from_runs(paths, out: Path, smoke: bool = False, note: str | None = None) -> dict:
    """Collect run files (naming and skipping bad ones), then write the report (`note`: a sentence for its Runs
    line); returns the result dict."""
    runs, baseline, problems = collect_runs(paths)
    for text in problems:
        print(f"skipped: {text}", flush=True)
    if not runs:
        raise SystemExit(f"no usable run files in {', '.join(map(str, paths))}; nothing to report.")
    settings = (runs[0] if runs else baseline)["settings"]
    if baseline is None:
        print("no mean-face reference (baseline.json) among the inputs: no run can count", flush=True)
    meta = report_meta(runs, baseline, settings, smoke)
    if note:
        meta["note"] = note
    md, png = write_report(out, runs, baseline, meta)
    print(f"wrote {md} and {png} from {len(runs)} runs", flush=True)
    return {"runs": runs, "baseline": baseline, "meta": meta, "markdown": md, "png": png, "problems": problems}


def _stamp(device, argv) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    return {"command": "python -m benchmarks.rotation_study " + " ".join(shlex.quote(a) for a in argv),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_line(device)}


def _existing(path: Path, settings: dict) -> dict | None:
    """The finished run in `path`, None when it must be trained (absent or corrupt: said so); SystemExit with one
    sentence when it was made with other settings."""
    if not path.exists():
        return None
    try:
        record = read_run(path)
    except RunFileError as err:
        print(f"{err}: training it again", flush=True)
        return None
    diff = settings_difference(settings, record["settings"])
    if diff:
        raise SystemExit(f"{path} was made with other settings ({diff} there); pass another --runs folder or "
                         f"remove it.")
    return record


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    if args.merge:
        return write_from_runs(args.merge, out, note=args.note)
    runs_dir = Path(args.runs) if args.runs else (out / "rotation_runs" if args.smoke else RUNS_DIR)
    if args.report_only:
        return write_from_runs([runs_dir], out, args.smoke, args.note)
    import torch

    from data.dataset import AFLWEvalSet
    from data.index import read_index
    from engine.evaluate import MeanPosmapModel
    from faceutil.uv import uv_layout
    from faceutil.facemodel import load_model
    from model.device import get_device

    start = time.perf_counter()
    device = get_device(args.device)
    settings = study_settings(args)
    work = Path(args.work) if args.work else (out / "rotation_data" if args.smoke else DEFAULT_WORK)
    runs_dir.mkdir(parents=True, exist_ok=True)
    layout = uv_layout("synthetic")
    weight_mask, kpt_ind = layout.weight_mask, layout.kpt_ind
    train_root, test_raw = make_data(work, args.train_count, args.test_count, args.data_seed, load_model("synthetic"))
    eval_set = AFLWEvalSet(test_raw)
    items = [eval_set[i] for i in range(len(eval_set))]
    print(f"data ready in {time.perf_counter() - start:.1f} s: {train_root} (train), {test_raw} "
          f"({len(items)} test images); device {device}", flush=True)
    all_angles = args.angles + [-a for a in args.angles if 0 < a < 180]
    threads = torch.get_num_threads()
    baseline_path = runs_dir / BASELINE_FILE
    if _existing(baseline_path, settings) is None:
        t0 = time.perf_counter()
        nme = evaluate_angles(MeanPosmapModel(train_root, read_index(train_root)), items, kpt_ind, device,
                              args.batch, all_angles)
        write_run(baseline_path, {"kind": "baseline", "settings": settings, "nme": nme, **_stamp(device, argv),
                                  "facts": {"seconds": round(time.perf_counter() - t0, 2)}})
        print("mean-face constant: NME " + " ".join(f"{a}°:{v['mean']:.1f}" for a, v in nme.items()), flush=True)
    deadline = start + 60.0 * args.budget_minutes if args.budget_minutes > 0 else None
    trained = skipped = 0
    for seed in args.seeds:
        for label, name, base in MODELS:
            if label not in args.models:
                continue
            kwargs = model_kwargs(name, base, args.width_mult, args.topk, args.size, args.head)
            for rotation in (False, True):
                path = runs_dir / run_filename(label, rotation, seed)
                if _existing(path, settings) is not None:
                    skipped += 1
                    continue
                if deadline is not None and time.perf_counter() > deadline:
                    print(f"--budget-minutes {args.budget_minutes:g} reached: not starting {path.name}", flush=True)
                    continue
                cpu0, wall0 = time.process_time(), time.perf_counter()
                model, facts = train_model(name, kwargs, train_root, rotation, seed, settings, device, weight_mask,
                                           args.workers)
                t0 = time.perf_counter()
                angles = all_angles if label in args.negative_models else args.angles
                nme = evaluate_angles(model, items, kpt_ind, device, args.batch, angles)
                facts["eval_seconds"] = round(time.perf_counter() - t0, 2)
                facts.update(cpu_seconds=round(time.process_time() - cpu0, 2), threads=threads, device=str(device),
                             run_seconds=round(time.perf_counter() - wall0, 2))
                write_run(path, {"label": label, "model": name, "kwargs": kwargs, "rotation": rotation, "seed": seed,
                                 "settings": settings, "facts": facts, "nme": nme, **_stamp(device, argv)})
                trained += 1
                print(f"seed {seed} {label:<18} {'rot' if rotation else 'no-rot'}: {facts['steps']} steps "
                      f"{facts['train_seconds']:.0f} s + eval {facts['eval_seconds']:.0f} s, NME "
                      + " ".join(f"{a}°:{v['mean']:.1f}" for a, v in nme.items() if a >= 0), flush=True)
                del model
    print(f"{trained} runs trained, {skipped} found in {runs_dir}", flush=True)
    return write_from_runs([runs_dir], out, args.smoke, args.note)


if __name__ == "__main__":
    main()
