"""Rotation study (issue 7): is the equivariant encoder more robust to in-plane rotation than PRNet or a plain CNN?

Owns benchmarks/results/rotation.md (+ rotation.png, rotation.json). Trains E2TKFace (faithful / aligned / plain-CNN
encoder) and PRNet, each with and without the rotation part of the training augmentation, on one synthetic
300W-LP-format training set with the same step budget and seeds; evaluates each on a synthetic AFLW2000-format test
set whose crops are rotated in-plane by 0, 30, 60, 90, 135 and 180 degrees (68-point 2D NME, DESIGN.md §6 protocol,
per angle and per yaw bin); repeats over seeds and reports mean ± std. Run from the repository root:

    python -m benchmarks.rotation_study --smoke --out /tmp/rotation_smoke       # ~30 s on 2 CPU cores
    python -m benchmarks.rotation_study --steps N --batch 32 --precision bf16 --device cuda --out OUT
    # N: enough steps for every model to beat the mean-face reference row (not yet known; needs a GPU)
    # a documented CPU budget (all models alike): --size 128 --width-mult 0.5 --precision bf16; at 600 steps of
    # batch 16 (10 min per run on 2 cores) the networks were still worse than the mean face (see below)
    # on a machine with a per-command time limit: one --models per call into its own --out, then
    python -m benchmarks.rotation_study --merge out_a/rotation.json out_b/rotation.json ...

Notes. Training here is a fixed-step loop (Adam, constant lr, the project's WeightedPosmapLoss), not
engine.train.run_training (epoch-based), so every model gets exactly the same number of optimiser steps; BatchNorm
statistics are then refreshed over un-augmented training crops (as engine.demo does) before evaluation.
The no-rotation variant is data.augment.augment(rotation=False) (the same random draws, the rotation skipped).
--size and --head are the toolkit's --input-size and --head (model.head.PosmapIO). build_model("prnet") has
no width argument, so PRNet always runs at full width (13.35 M parameters) whatever --width-mult says.
The report includes a reference row, the mean training position map predicted for every image (18.8 % NME at 0 deg
on the 800/120-image data): short runs do not beat it (2026-11-25, CPU, plain-CNN encoder, size 128, width 0.5,
bf16: 41.6 % after 120 steps, 35.6 % after 600 steps at lr 2e-3), and while the networks are worse than that mean
face an NME-vs-angle curve says nothing about robustness -- the report says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
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

ANGLES = (0, 30, 60, 90, 135, 180)
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
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_WORK = Path("savedmodel") / "rotation_study_data"       # synthetic data (git-ignored), reused across runs
SMOKE = {"steps": 1, "batch": 2, "width_mult": MIN_WIDTH, "train_count": 4, "test_count": 4, "seeds": [0, 1],
         "size": 128}
COLOURS_BGR = {"E2TKFace faithful": (200, 60, 20), "E2TKFace aligned": (30, 160, 30),
               "E2TKFace CNN": (20, 120, 230), "PRNet": (40, 40, 200)}


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
                 head: str = "published") -> dict:
    """Builder kwargs: input_size and head for both; width_mult and topk for e2tkface (PRNet stays at full width)."""
    common = {"input_size": size, "head": head}
    return {**base, "width_mult": width_mult, "topk": topk, **common} if name == "e2tkface" else {**base, **common}


def train_model(name: str, kwargs: dict, train_root: Path, rotation: bool, seed: int, steps: int, batch: int,
                lr: float, device, weight_mask: np.ndarray, minutes: float = 0.0, workers: int = 0,
                precision: str = "fp32"):
    """Train one network for `steps` optimiser steps (or until `minutes` pass, when > 0); BN refreshed after.

    kwargs: builder kwargs (input size and head included, see model_kwargs); precision: "fp32" or "bf16" autocast
    for training (evaluation always runs in fp32).

    Returns (model in eval mode (exported when it offers export()), dict of run facts).
    """
    import torch
    from torch.optim.swa_utils import update_bn

    from data.dataset import PosmapDataset
    from data.index import read_index
    from data.loader import build_loader
    from engine.train import needs_mean_posmap, seed_everything
    from model.device import autocast_context
    from model.loss import WeightedPosmapLoss
    from model.registry import build_model

    seed_everything(seed)
    model = build_model(name, **kwargs)
    names = read_index(train_root)
    dataset = PosmapDataset(train_root, names, augment=True, seed=seed, rotation=rotation)
    if needs_mean_posmap(model):
        model.io.set_mean_posmap(dataset.mean_posmap())
    model = model.to(device)
    loader = build_loader(dataset, batch_size=batch, workers=workers, shuffle=True, seed=seed,
                          drop_last=len(dataset) >= batch, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=2e-4)
    loss_fn = WeightedPosmapLoss(weight_mask).to(device)
    deadline = time.monotonic() + 60.0 * minutes if minutes > 0 else None
    step, epoch, losses, start = 0, 0, [], time.perf_counter()
    model.train()
    while step < steps and not (deadline and time.monotonic() > deadline):
        loader.sampler.set_epoch(epoch)
        for batch_data in loader:
            x = batch_data["image"].to(device, non_blocking=True)
            y = batch_data["posmap"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, precision):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name} {kwargs} seed {seed}: loss is not finite at step {step}")
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= steps or (deadline and time.monotonic() > deadline):
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


def summarise(runs: list) -> dict:
    """Group run records by (model label, rotation) -> {"per_angle": {angle: [nme per seed]},
    "bins": {angle: {bin: [...]}}, "rotated_mean": [mean over angles > 0 per seed], "all_mean": [...],
    "gap": [rotated_mean - NME at 0 deg, per seed] (the robustness figure: how much rotation costs)}."""
    groups: dict = {}
    for r in runs:
        g = groups.setdefault(row_key(r["label"], r["rotation"]),
                              {"label": r["label"], "rotation": r["rotation"], "per_angle": {}, "bins": {},
                               "rotated_mean": [], "all_mean": [], "gap": [], "train_seconds": []})
        angles = sorted(int(a) for a in r["nme"])
        for a in angles:
            g["per_angle"].setdefault(a, []).append(r["nme"][a]["mean"])
            for b in YAW_BINS + ("mean_of_bins",):
                g["bins"].setdefault(a, {}).setdefault(b, []).append(r["nme"][a]["bins"][b])
        g["rotated_mean"].append(statistics.fmean(r["nme"][a]["mean"] for a in angles if a != 0)
                                 if len(angles) > 1 else float("nan"))
        g["all_mean"].append(statistics.fmean(r["nme"][a]["mean"] for a in angles))
        g["gap"].append(g["rotated_mean"][-1] - r["nme"][0]["mean"] if 0 in r["nme"] else float("nan"))
        g["train_seconds"].append(r["facts"]["train_seconds"])
    return groups


def conclusion(groups: dict) -> list[str]:
    """Sentences drawn from the numbers: which model is most robust to rotation, with and without augmentation."""
    lines = []
    for rotation in (False, True):
        rows = {g["label"]: g for g in groups.values() if g["rotation"] == rotation}
        if not rows:
            continue
        aug = "with" if rotation else "without"
        scored = sorted(rows, key=lambda k: mean_std(rows[k]["rotated_mean"])[0])
        best = scored[0]
        by_gap = sorted(rows, key=lambda k: mean_std(rows[k]["gap"])[0])
        text = [f"**{aug.capitalize()} rotation augmentation**: mean NME over the rotated angles (30–180°): "
                + ", ".join(f"{k} {_pm(rows[k]['rotated_mean'])} %" for k in scored) + f"; lowest: {best}. "
                + "Cost of rotation (that minus the 0° NME): "
                + ", ".join(f"{k} {_pm(rows[k]['gap'])}" for k in by_gap) + f"; smallest: {by_gap[0]}."]
        eq = [k for k in EQUIVARIANT if k in rows]
        others = [k for k in rows if k not in EQUIVARIANT]
        if eq and others:
            # robustness = the cost of rotation (mean NME over 30-180 deg minus NME at 0 deg), not accuracy
            best_eq = min(eq, key=lambda k: mean_std(rows[k]["gap"])[0])
            best_other = min(others, key=lambda k: mean_std(rows[k]["gap"])[0])
            (g_eq, s_eq), (g_o, s_o) = mean_std(rows[best_eq]["gap"]), mean_std(rows[best_other]["gap"])
            diff, noise = g_o - g_eq, max(s_eq, s_o)
            if diff > 0 and diff > noise:
                verdict = (f"The equivariant encoder IS more robust: rotation costs {best_eq} {g_eq:.2f} NME points "
                           f"and {best_other} (the most robust non-equivariant model) {g_o:.2f}, a difference "
                           f"larger than the seed spread ({noise:.2f})")
            elif diff > 0:
                verdict = (f"The equivariant encoder is NOT clearly more robust: rotation costs {best_eq} {g_eq:.2f} "
                           f"NME points and {best_other} {g_o:.2f}, a difference within the seed spread ({noise:.2f})")
            else:
                verdict = (f"The equivariant encoder is NOT more robust: rotation costs {best_other} {g_o:.2f} NME "
                           f"points and the most robust equivariant model ({best_eq}) {g_eq:.2f} "
                           f"(seed spread {noise:.2f})")
            m_eq, m_o = mean_std(rows[best_eq]["rotated_mean"])[0], mean_std(rows[best_other]["rotated_mean"])[0]
            text.append(verdict + f"; their mean NME over the rotated angles: {m_eq:.2f} vs {m_o:.2f} %.")
        lines.append(" ".join(text))
    for label in sorted({g["label"] for g in groups.values()}):
        a = groups.get(row_key(label, True))
        b = groups.get(row_key(label, False))
        if a and b:
            gain = mean_std(b["rotated_mean"])[0] - mean_std(a["rotated_mean"])[0]
            lines.append(f"{label}: rotation augmentation changes the rotated-angle NME by {-gain:+.2f} points.")
    return lines


def write_report(out: Path, runs: list, meta: dict) -> tuple[Path, Path]:
    """Write rotation.md, rotation.png and rotation.json under `out`; returns (markdown path, png path)."""
    from faceutil.sampleio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    groups = summarise(runs)
    angles = sorted({int(a) for r in runs for a in r["nme"]})
    md = ["# Rotation study: in-plane rotation robustness (issue 7)", ""]
    if meta.get("smoke"):
        md += ["**SMOKE RUN** — tiniest sizes, a pipeline check only; the numbers mean nothing.", ""]
    md += [f"- Command: `{meta['command']}`",
           f"- Date: {meta['date']}; machine: {meta['machine']}; device: {meta['device']}",
           f"- Budget: {meta['steps']} optimiser steps of batch {meta['batch']} per run"
           + (f" (or {meta['minutes']:g} min, whichever first)" if meta.get("minutes") else "")
           + f", Adam lr {meta['lr']:g} (constant), weight decay 2e-4; BatchNorm refreshed on ≤ 64 training crops",
           f"- Seeds: {meta['seeds']} (initialisation, augmentation, data order); data seed {meta['data_seed']}",
           f"- Data: synthetic 300W-LP-format training set of {meta['train_count']} images, synthetic "
           f"AFLW2000-format test set of {meta['test_count']} images (faceutil.synthetic + faceutil.process)",
           f"- Width: E2TKFace width_mult {meta['width_mult']:g} for all three encoders, top-k "
           f"{meta.get('topk', 4)}; PRNet at full width (build_model(\"prnet\") has no width argument).",
           f"- Network input size: {meta.get('size', 256)}² for every model"
           + ("" if meta.get("size", 256) == 256 else
              " (the 256² crop area-downsampled; the predicted position map upsampled bilinearly to 256² and its "
              "coordinates rescaled; loss and evaluation at 256² as usual)")
           + f"; output head {meta.get('head', 'published')}; training precision {meta.get('precision', 'fp32')}.",
           "- Augmentation: 'rot aug' = data.augment.augment (colour p 0.5, rotation U(±90°) p 0.5, erasing p 0.25); "
           "'no rot aug' = the same draws with the rotation skipped.",
           "- Test rotation: each deterministic test crop rotated about its centre (counter-clockwise); predictions "
           "mapped back to the original image and scored against the unrotated pt3d_68 (normaliser unchanged).",
           "- Protocol: 68-point 2D NME (%), sqrt(w·h) of the ground-truth landmark box (DESIGN.md §6). "
           "Mean ± std over seeds of the per-seed mean over test images.",
           "", "## Conclusion (from the numbers below)", ""]
    md += [f"- {line}" for line in conclusion(groups)]
    md += ["", "## 2D NME (%) per test rotation angle", "",
           "| model | training aug | " + " | ".join(f"{a}°" for a in angles) + " | mean 30–180° | cost (− 0°) | train s |",
           "|---|---|" + "---|" * (len(angles) + 3)]
    for g in groups.values():
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  + " | ".join(_pm(g["per_angle"].get(a, [])) for a in angles)
                  + f" | {_pm(g['rotated_mean'])} | {_pm(g['gap'])} | {mean_std(g['train_seconds'])[0]:.1f} |")
    base = {int(a): v for a, v in (meta.get("baseline") or {}).items()}
    if base:
        rot = [base[a] for a in angles if a != 0 and a in base]
        md.append("| mean face (constant, reference) | - | " + " | ".join(
            f"{base[a]:.2f}" if a in base else "-" for a in angles)
            + f" | {statistics.fmean(rot) if rot else float('nan'):.2f} | "
            + (f"{statistics.fmean(rot) - base[0]:.2f}" if rot and 0 in base else "-") + " | - |")
        best0 = min((mean_std(g["per_angle"].get(0, []))[0] for g in groups.values()), default=float("nan"))
        if 0 in base and math.isfinite(best0):
            md += ["", f"Reference: predicting the mean training position map for every image gives {base[0]:.2f} % "
                   f"at 0°; the best trained model gives {best0:.2f} % "
                   + ("(clearly better, so the networks read the image)." if best0 < 0.5 * base[0] else
                      "(NOT clearly better: the networks have learnt little beyond the mean face, so these "
                      "robustness figures mean little — train longer).")]
    md += ["", "## 2D NME (%) per yaw bin — at 0° and averaged over all test angles", "",
           "| model | training aug | " + " | ".join(f"{BIN_LABELS[b]} @0°" for b in YAW_BINS)
           + " | " + " | ".join(f"{BIN_LABELS[b]} all angles" for b in YAW_BINS) + " | mean of bins all angles |",
           "|---|---|" + "---|" * 7]
    counts = runs[0]["nme"][angles[0]]["bins"]["counts"] if runs else {}
    for g in groups.values():
        at0 = [_pm(g["bins"].get(0, {}).get(b, [])) for b in YAW_BINS]
        n_seeds = len(g["all_mean"])
        avg = []
        for b in YAW_BINS + ("mean_of_bins",):
            per_seed = [statistics.fmean(g["bins"][a][b][s] for a in angles) if all(
                math.isfinite(g["bins"][a][b][s]) for a in angles) else float("nan") for s in range(n_seeds)]
            avg.append(_pm(per_seed))
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  + " | ".join(at0) + " | " + " | ".join(avg) + " |")
    md += ["", "Test images per yaw bin: " + ", ".join(f"{BIN_LABELS[b]}: {counts.get(b, 0)}" for b in YAW_BINS), "",
           "![NME vs angle](rotation.png)", ""]
    md_path, png_path = out / "rotation.md", out / "rotation.png"
    atomic_write_bytes(md_path, "\n".join(md).encode("utf-8"))
    draw_plot(groups, angles, png_path)
    record = {"meta": meta, "runs": [{**r, "nme": {str(a): v for a, v in r["nme"].items()}} for r in runs]}
    atomic_write_bytes(out / "rotation.json", (json.dumps(record, indent=1, default=_json_default) + "\n").encode())
    return md_path, png_path


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def draw_plot(groups: dict, angles: list, path: Path) -> Path:
    """NME vs test angle, one line per model, two panels (with / without rotation augmentation); OpenCV only."""
    import cv2

    pw, ph, margin = 520, 380, 60
    img = np.full((ph + 70, 2 * pw, 3), 255, np.uint8)
    values = [mean_std(v)[0] + mean_std(v)[1] for g in groups.values() for v in g["per_angle"].values()]
    values = [v for v in values if math.isfinite(v)]
    ymax = max(values) * 1.1 if values else 1.0
    ymax = ymax if ymax > 0 else 1.0
    amax = max(max(angles), 1) if angles else 180
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, rotation in enumerate((True, False)):
        x0, y0, x1, y1 = p * pw + margin, 30, p * pw + pw - 20, ph - 40
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(img, f"{'with' if rotation else 'without'} rotation augmentation", (x0, 20), font, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)

        def xy(a, v):
            return (int(round(x0 + (x1 - x0) * a / amax)), int(round(y1 - (y1 - y0) * v / ymax)))

        for a in angles:
            x, _ = xy(a, 0)
            cv2.line(img, (x, y1), (x, y1 + 4), (0, 0, 0), 1)
            cv2.putText(img, str(a), (x - 10, y1 + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for k in range(5):
            v = ymax * k / 4
            _, y = xy(0, v)
            cv2.line(img, (x0 - 4, y), (x0, y), (0, 0, 0), 1)
            cv2.putText(img, f"{v:.1f}", (x0 - 50, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "test rotation (deg)", (x0 + 150, y1 + 34), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "NME %", (p * pw + 5, y1 + 34), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for g in groups.values():
            if g["rotation"] != rotation:
                continue
            colour = COLOURS_BGR.get(g["label"], (0, 0, 0))
            pts = []
            for a in angles:
                m, s = mean_std(g["per_angle"].get(a, []))
                if not math.isfinite(m):
                    continue
                pts.append(xy(a, m))
                top, bottom = xy(a, m + s), xy(a, max(m - s, 0.0))
                cv2.line(img, top, bottom, colour, 1, cv2.LINE_AA)
            for u, w in zip(pts[:-1], pts[1:]):
                cv2.line(img, u, w, colour, 2, cv2.LINE_AA)
            for u in pts:
                cv2.circle(img, u, 3, colour, -1, cv2.LINE_AA)
    for k, (label, colour) in enumerate(COLOURS_BGR.items()):
        x = 20 + k * (2 * pw - 40) // 4
        cv2.line(img, (x, ph + 35), (x + 30, ph + 35), colour, 2, cv2.LINE_AA)
        cv2.putText(img, label, (x + 36, ph + 40), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"cannot encode the plot {path}")
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(path, buf.tobytes())
    return path


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
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps per training run (the budget)")
    p.add_argument("--minutes", type=float, default=0.0, help="also stop a run after this many minutes (0 = off)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--width-mult", type=float, default=1.0,
                   help=f"E2TKFace width for all encoders (>= {MIN_WIDTH}); PRNet has no width and runs full size")
    p.add_argument("--size", type=int, default=256, choices=(64, 128, 256),
                   help="network input size for all models alike (the toolkit's --input-size: < 256 runs the "
                        "network on the area-downsampled crop and upsamples its position map, model.head.PosmapIO)")
    p.add_argument("--head", default="published", choices=("published", "mean-residual"),
                   help="output head for all models alike (the toolkit's --head)")
    p.add_argument("--topk", type=int, default=None,
                   help="E2TKFace top-k windows (default: the published fraction of windows, 4 at 256, 1 at 128)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="training autocast precision")
    p.add_argument("--train-count", type=int, default=1000)
    p.add_argument("--test-count", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=[m[0] for m in MODELS], choices=[m[0] for m in MODELS])
    p.add_argument("--angles", type=int, nargs="+", default=list(ANGLES))
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for rotation.md / .png / .json")
    p.add_argument("--work", default=None,
                   help=f"folder for the synthetic data (default: {DEFAULT_WORK}; --smoke: <out>/rotation_data)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="training data loader workers")
    p.add_argument("--smoke", action="store_true", help="tiniest sizes, everything once, ~1 min on 2 CPU cores")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no training: write the report from rotation.json files of partial runs (e.g. one --models "
                        "per machine call) into --out")
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
    if len(args.seeds) < 2:
        p.error("--seeds needs at least two seeds (the report gives mean ± std)")
    if args.steps < 1 or args.batch < 1 or args.train_count < 1 or args.test_count < 1:
        p.error("--steps, --batch, --train-count and --test-count must be >= 1")
    return args


def merge_reports(paths, out: Path) -> dict:
    """Combine the runs of several rotation.json files (partial studies with the same settings) into one report."""
    runs, metas = [], []
    for path in paths:
        record = json.loads(Path(path).read_text())
        metas.append(record["meta"])
        for r in record["runs"]:
            runs.append({**r, "nme": {int(a): v for a, v in r["nme"].items()}})
    keys = ("steps", "batch", "lr", "width_mult", "train_count", "test_count", "data_seed", "minutes", "size", "topk",
            "precision", "head")
    differ = [k for k in keys if len({json.dumps(m.get(k)) for m in metas}) > 1]
    if differ:
        raise SystemExit(f"cannot merge {', '.join(map(str, paths))}: they differ in {', '.join(differ)}")
    meta = dict(metas[0])
    meta["command"] = " ; ".join(m["command"] for m in metas)
    meta["seeds"] = sorted({r["seed"] for r in runs})
    meta["smoke"] = any(m.get("smoke") for m in metas)
    meta["date"] = ", ".join(sorted({m["date"] for m in metas}))
    meta["machine"] = "; ".join(sorted({m["machine"] for m in metas}))
    meta["device"] = ", ".join(sorted({m["device"] for m in metas}))
    md, png = write_report(out, runs, meta)
    print(f"merged {len(runs)} runs from {len(metas)} files into {md} and {png}", flush=True)
    return {"runs": runs, "meta": meta, "markdown": md, "png": png}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge_reports(args.merge, Path(args.out))
    from data.dataset import AFLWEvalSet
    from engine.evaluate import MeanPosmapModel
    from engine.train import uv_tables
    from model.device import get_device

    start = time.perf_counter()
    device = get_device(args.device)
    out = Path(args.out)
    work = Path(args.work) if args.work else (out / "rotation_data" if args.smoke else DEFAULT_WORK)
    weight_mask, kpt_ind, _ = uv_tables("synthetic")
    from faceutil.morphable import load_model

    train_root, test_raw = make_data(work, args.train_count, args.test_count, args.data_seed, load_model("synthetic"))
    eval_set = AFLWEvalSet(test_raw)
    items = [eval_set[i] for i in range(len(eval_set))]
    print(f"data ready in {time.perf_counter() - start:.1f} s: {train_root} (train), {test_raw} "
          f"({len(items)} test images); device {device}", flush=True)
    from data.index import read_index

    baseline = evaluate_angles(MeanPosmapModel(train_root, read_index(train_root)), items, kpt_ind, device,
                               args.batch, args.angles)
    print("mean-face constant: NME " + " ".join(f"{a}°:{v['mean']:.1f}" for a, v in baseline.items()), flush=True)
    runs = []
    for seed in args.seeds:
        for label, name, base in MODELS:
            if label not in args.models:
                continue
            kwargs = model_kwargs(name, base, args.width_mult, args.topk, args.size, args.head)
            for rotation in (True, False):
                model, facts = train_model(name, kwargs, train_root, rotation, seed, args.steps, args.batch, args.lr,
                                           device, weight_mask, args.minutes, args.workers, args.precision)
                nme = evaluate_angles(model, items, kpt_ind, device, args.batch, args.angles)
                runs.append({"label": label, "model": name, "kwargs": kwargs, "rotation": rotation, "seed": seed,
                             "facts": facts, "nme": nme})
                print(f"seed {seed} {label:<18} {'rot' if rotation else 'no-rot'}: {facts['steps']} steps "
                      f"{facts['train_seconds']:.1f} s, NME " + " ".join(f"{a}°:{v['mean']:.1f}"
                                                                      for a, v in nme.items()), flush=True)
                del model
    meta = {"command": "python -m benchmarks.rotation_study " + " ".join(shlex.quote(a) for a in
                                                                          (sys.argv[1:] if argv is None else argv)),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_line(device), "device": str(device), "steps": args.steps, "batch": args.batch,
            "minutes": args.minutes, "lr": args.lr, "seeds": list(args.seeds), "data_seed": args.data_seed,
            "train_count": args.train_count, "test_count": len(items), "width_mult": args.width_mult,
            "size": args.size, "head": args.head, "topk": args.topk, "precision": args.precision,
            "smoke": bool(args.smoke), "baseline": {str(a): v["mean"] for a, v in baseline.items()},
            "total_seconds": round(time.perf_counter() - start, 1)}
    md, png = write_report(out, runs, meta)
    print(f"wrote {md} and {png} in {time.perf_counter() - start:.1f} s", flush=True)
    return {"runs": runs, "meta": meta, "markdown": md, "png": png}


if __name__ == "__main__":
    main()
