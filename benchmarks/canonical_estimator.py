"""The canonicaliser's angle estimator alone (issue 23): how well an estimator trained on upright faces only reads
the angle of a turned face, and what the disc and the refining looks (model.canonical) change.

The estimator (model.canonical.AngleEstimator) is trained by itself, with the angle loss against each face's own
roll (roll_of_posmaps of its position map against the mean face), on the rotation study's 800 processed upright
training crops (no rotation augmentation), then shown the study's 120 test crops turned by ANGLES. Error: the
angle it turns the turned crop back by, minus the one for the unturned crop, minus the test angle, wrapped, |deg|
(the face's own roll cancels); "looks" 1 = one estimate, 2 = plus one refining look at the copy turned upright, 3 =
plus two. Variants: "disc" C8 regular fields, the copy seen through the inscribed disc (the first default);
"nodisc" the same without the disc; "disc-c16" C16 (the default since 2026-12-07); "disc-so2" SO(2) fields of
frequencies 0-3 with norm-ReLU and norm BatchNorm (one seed: its training loss stayed 1.5-4x the others', and so did
its error); "disc-c16-w2", "-w3": C16 with 2 or 3 fields in the first stage instead of 4 (a quarter, about a half of
its multiply-adds); "disc-c16-s32": C16 on a 32x32 copy (a quarter); "disc-c16-w2-s32": both (a sixteenth).

    python -m benchmarks.canonical_estimator [--variants disc,nodisc] [--seeds 0 1]  # -> results/canonical_estimator.md
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, machine_line, write_json

ANGLES = (7, 15, 30, 37, 45, 60, 75, 143, 200)
LOOKS = (1, 2, 3)
VARIANTS = {"disc": {"disc": True, "width": 4, "N": 8}, "nodisc": {"disc": False, "width": 4, "N": 8},
            "disc-width8": {"disc": True, "width": 8, "N": 8}, "disc-c16": {"disc": True, "width": 4, "N": 16},
            "disc-so2": {"disc": True, "width": 4, "N": 0},
            "disc-c16-w2": {"disc": True, "width": 2, "N": 16},
            "disc-c16-s32": {"disc": True, "width": 4, "N": 16, "size": 32},
            "disc-c16-w2-s32": {"disc": True, "width": 2, "N": 16, "size": 32},
            "disc-c16-w3": {"disc": True, "width": 3, "N": 16}}
WORK = Path("savedmodel") / "canonical_estimator"


def study_tensors():
    """(training crops pooled to 64 (N, 3, 64, 64), their rolls (N,) degrees, test crops (M, 3, 256, 256))."""
    import torch
    import torch.nn.functional as F

    from benchmarks.study_data import study_data
    from data.dataset import AFLWEvalSet, PosmapDataset
    from data.index import read_index
    from faceutil.uv import uv_layout
    from model.canonical import roll_of_posmaps

    train_root, test_raw = study_data()
    ds = PosmapDataset(train_root, read_index(train_root), augment=False)
    mean = torch.as_tensor(ds.mean_posmap()).permute(2, 0, 1)[None] / 280.0
    items = [ds[i] for i in range(len(ds))]
    crops = torch.stack([F.avg_pool2d(it["image"][None], 4)[0] for it in items])
    mask = torch.as_tensor(uv_layout("synthetic").weight_mask > 0)
    rolls = roll_of_posmaps(torch.stack([it["posmap"] for it in items]), mean, mask)
    test = AFLWEvalSet(test_raw)
    return crops, rolls, torch.stack([test[i]["image"] for i in range(len(test))])


def train_estimator(crops, rolls, width: int, disc: bool, seed: int, steps: int = 1500, lr: float = 2e-3, N: int = 8,
                    size: int = 64):
    """An AngleEstimator (C_N, N=0: SO(2); on a size x size copy) trained alone (AdamW, 100-step warm-up, cosine,
    batch 16); eval mode. crops: (N, 3, 64, 64)."""
    import torch
    from e2cnn import nn as enn

    from model.canonical import AngleEstimator, angle_loss

    torch.manual_seed(seed)
    est = AngleEstimator(width=width, N=N, size=size)
    crops = torch.nn.functional.avg_pool2d(crops, 64 // size) if size != 64 else crops
    if not disc:
        est.disc.fill_(1.0)
    opt = torch.optim.AdamW(est.parameters(), lr=lr, weight_decay=2e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(crops), (16,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        v = est.net(enn.GeometricTensor(crops[idx] * est.disc, est.in_type)).tensor.mean((2, 3))
        loss = angle_loss(v, rolls[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return est.eval(), float(loss.detach())


def angle_errors(est, test) -> dict:
    """{looks: {angle: mean |error| degrees}} of a trained estimator on the test crops turned by ANGLES."""
    import torch

    from model.canonical import Canonicalized, rotate_images

    class Pool(torch.nn.Module):                       # a stand-in backbone: its io.shrink pools to 64
        class io:
            @staticmethod
            def shrink(x):
                return torch.nn.functional.avg_pool2d(x, x.shape[-1] // 64)

    out = {}
    with torch.no_grad():
        for looks in LOOKS:
            net = Canonicalized(Pool(), est, refine=looks - 1).eval()
            base = net.angle(test)
            errors = {}
            for a in ANGLES:
                turn = torch.tensor([[np.cos(np.radians(a)), np.sin(np.radians(a))]], dtype=torch.float32)
                e = net.angle(rotate_images(test, turn.expand(len(test), 2))) - base - a
                errors[a] = round(float(((e + 180) % 360 - 180).abs().mean()), 2)
            out[looks] = errors
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="disc,nodisc", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    crops, rolls, test = study_tensors()
    WORK.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        for seed in args.seeds:
            path = WORK / f"{variant}-s{seed}.json"
            if path.is_file():
                continue
            t = time.perf_counter()
            est, loss = train_estimator(crops, rolls, seed=seed, **VARIANTS[variant])
            write_json(path, {"variant": variant, **VARIANTS[variant], "seed": seed, "final_loss": loss,
                              "errors": angle_errors(est, test), "seconds": round(time.perf_counter() - t, 1),
                              "machine": machine_line("cpu"), "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")})
            print(f"{variant} seed {seed}: {json.loads(path.read_text())['errors']}", flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(WORK.glob("*.json"))]
    md = ["# The canonicaliser's angle estimator alone (issue 23)", "",
          f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python -m benchmarks.canonical_estimator`. "
          + __doc__.split("\n\n")[1].replace("\n", " "), "",
          "Summary: mean error over the test angles with all three looks, range over seeds.", "",
          "| variant | group | first-stage fields | copy (px) | seeds | mean error, 3 looks |",
          "|---|---|---|---|---|---|"]
    for variant in sorted({r["variant"] for r in runs}):
        mine = [r for r in runs if r["variant"] == variant]
        means = [np.mean(list(r["errors"][str(LOOKS[-1])].values())) for r in mine]
        order = mine[0].get("N", 8)                # runs saved before the order was recorded: C8
        group = f"C{order}" if order else "SO(2)"
        md.append(f"| {variant} | {group} | {mine[0]['width']} | {mine[0].get('size', 64)} | {len(mine)} | "
                  + (f"{min(means):.1f}–{max(means):.1f}°" if len(means) > 1 else f"{means[0]:.1f}°") + " |")
    md += ["", "All runs:", "",
           "| variant | seed | looks | " + " | ".join(f"{a}°" for a in ANGLES) + " | mean |",
           "|---|---|---|" + "---|" * (len(ANGLES) + 1)]
    for r in runs:
        for looks in LOOKS:
            e = r["errors"][str(looks)]
            md.append(f"| {r['variant']} | {r['seed']} | {looks} | " + " | ".join(f"{e[str(a)]:.1f}" for a in ANGLES)
                      + f" | {np.mean(list(e.values())):.1f} |")
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(RESULTS_DIR / "canonical_estimator.md", ("\n".join(md) + "\n").encode("utf-8"))
    write_json(RESULTS_DIR / "canonical_estimator.json", {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
