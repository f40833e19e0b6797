"""The rotation study's training side: the rotated test set, one training run of a network and its evaluation at
every test angle, and the resumable loop that trains each missing run and writes its run file (runs.py) at once.
Imports torch and the toolkit lazily, so the report side (a --report-only or --merge) never needs them."""
from __future__ import annotations

import datetime as _dt
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_line
from benchmarks.rotation_study.design import ANGLES, CANONICALISED, MODELS, OFF_GRID_ANGLES, STUDY_REFINE
from benchmarks.rotation_study.runs import BASELINE_FILE, RunFileError, read_run, run_filename, settings_difference
from benchmarks.rotation_study.runs import write_run
from benchmarks.study_data import DATA_WORK, make_data


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
    from engine.loading import is_canonicalized, needs_mean_posmap
    from engine.train import AngleTarget, seed_everything
    from faceutil.uv import POSMAP_SCALE
    from model.device import autocast_context
    from model.loss import WeightedPosmapLoss
    from model.registry import build_model

    steps, batch, lr = settings["steps"], settings["batch"], settings["lr"]
    last = min(steps, stop_after) if stop_after else steps
    seed_everything(seed)
    model = build_model(name, **kwargs)
    names = read_index(train_root)
    dataset = PosmapDataset(train_root, names, augment=True, seed=seed, rotation=rotation)
    mean_map = dataset.mean_posmap() if needs_mean_posmap(model) or is_canonicalized(model) else None
    if needs_mean_posmap(model):
        model.io.set_mean_posmap(mean_map)
    model = model.to(device)
    angle = None                     # a canonicalised network: its angle estimator learns each face's roll (weight 1)
    if is_canonicalized(model):
        angle = AngleTarget(torch.as_tensor(mean_map).permute(2, 0, 1)[None].to(device) / POSMAP_SCALE,
                            torch.as_tensor(weight_mask > 0).to(device), 1.0)
    loader = build_loader(dataset, batch_size=batch, workers=workers, shuffle=True, seed=seed,
                          drop_last=len(dataset) >= batch, device=device)
    optimizer = torch.optim.Adam(parameter_groups(model, settings["weight_decay"]), lr=lr)
    factor = functools.partial(lr_factor, warmup_steps=settings["warmup"], steps_per_epoch=len(loader),
                               total_steps=steps, schedule="cosine")
    loss_fn = WeightedPosmapLoss(weight_mask).to(device)
    step, epoch, losses, angle_losses, start = 0, 0, [], [], time.perf_counter()
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
            losses.append(float(loss.detach()))                 # the position map's loss (the facts' losses)
            if angle is not None:
                angle_loss = angle.loss(model.last_vector, y)
                angle_losses.append(float(angle_loss.detach()))
                loss = loss + angle.weight * angle_loss
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name} {kwargs} seed {seed}: loss is not finite at step {step}")
            loss.backward()
            optimizer.step()
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
    if angle_losses:
        facts.update(first_angle_loss=angle_losses[0], last_angle_loss=float(np.mean(angle_losses[-10:])))
    return model.eval(), facts


class _FixedAngle:
    """Stands in for a canonicalised network's angle estimator: every crop's angle is `angle_deg` (the oracle)."""

    def __init__(self, angle_deg: float):
        self.vector = (float(np.cos(np.radians(angle_deg))), float(np.sin(np.radians(angle_deg))))

    @staticmethod
    def pool(x):
        return x

    def __call__(self, x):
        return x.new_tensor(self.vector).float().expand(x.shape[0], 2)


def evaluate_canonicalised(model, items: list, kpt_ind: np.ndarray, device, batch: int, angles) -> dict:
    """What a canonicalised run adds to its record (issue 23), over the test angles and OFF_GRID_ANGLES:
    nme_off_grid {angle: 2D NME %}; nme_oracle {angle: NME} with the estimator replaced by the true test angle (the
    crop turned back exactly as it was turned: what a perfect canonicaliser gives this backbone); angle_error
    {angle: {"mean", "max"} |degrees|}: the angle the network turns the crop back by (Canonicalized.angle, with its
    refinement) on the turned crop against the one on the unturned crop plus the test angle (the face's own roll
    cancels); nme_looks {looks: {angle: NME}} for every number of looks below the network's own (1 + refine): the
    same weights with fewer refining looks, on the test angles (what each look buys, against its time in
    canonical_cost.md)."""
    import torch

    from engine.evaluate import evaluate_model
    from model.canonical import Canonicalized

    out = {"nme_off_grid": evaluate_angles(model, items, kpt_ind, device, batch, OFF_GRID_ANGLES),
           "nme_oracle": {}, "angle_error": {},
           "nme_looks": {looks: {a: {"mean": v["mean"]} for a, v in evaluate_angles(
               Canonicalized(model.backbone, model.estimator, refine=looks - 1).eval(), items, kpt_ind, device, batch,
               angles).items()} for looks in range(1, 1 + model.refine)}}
    for angle in list(angles) + list(OFF_GRID_ANGLES):
        oracle = Canonicalized(model.backbone, _FixedAngle(angle), refine=0).eval()
        report = evaluate_model(oracle, RotatedEvalSet(items, angle), kpt_ind, None, device, batch)
        out["nme_oracle"][int(angle)] = {"mean": float(np.mean(report.nme2d))}

    def estimates(angle):
        found = []
        data = RotatedEvalSet(items, angle)
        with torch.no_grad():
            for k in range(0, len(data), batch):
                x = torch.stack([data[i]["image"] for i in range(k, min(k + batch, len(data)))]).to(device)
                found.append(model.angle(x).cpu().numpy())
        return np.concatenate(found)

    upright = estimates(0)
    for angle in list(angles) + list(OFF_GRID_ANGLES):
        err = np.abs((estimates(angle) - upright - angle + 180.0) % 360.0 - 180.0)
        out["angle_error"][int(angle)] = {"mean": float(err.mean()), "max": float(err.max())}
    return out


def evaluate_angles(model, items: list, kpt_ind: np.ndarray, device, batch: int, angles=ANGLES) -> dict:
    """{angle: {"mean": 2D NME %, "bins": nme_by_yaw dict}} of `model` on `items` rotated by each angle."""
    from engine.evaluate import evaluate_model

    out = {}
    for angle in angles:
        report = evaluate_model(model, RotatedEvalSet(items, angle), kpt_ind, None, device, batch)
        out[int(angle)] = {"mean": float(np.mean(report.nme2d)), "bins": report.summary["pt3d_68 2D"]}
    return out


# ----------------------------------------------------------------------------------------------------------------
# the study: every missing run, resumable
# ----------------------------------------------------------------------------------------------------------------
def study_settings(args) -> dict:
    return {"steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "width_mult": args.width_mult, "size": args.size, "head": args.head,
            "topk": args.topk, "precision": args.precision, "train_count": args.train_count,
            "test_count": args.test_count, "data_seed": args.data_seed, "angles": list(args.angles)}


def _stamp(device, argv) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    return {"command": "python -m benchmarks.rotation_study " + " ".join(shlex.quote(a) for a in argv),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_line(device)}


def _existing(path: Path, settings: dict, canonicalised: bool = False) -> dict | None:
    """The finished run in `path`, None when it must be trained (absent, corrupt, or a canonicalised run made with
    an earlier canonicaliser: said so); SystemExit with one sentence when it was made with other settings."""
    from model.canonical import CANONICALISER

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
    wanted = {**CANONICALISER, "refine": STUDY_REFINE}
    if canonicalised and record["facts"].get("canonicaliser") != wanted:
        print(f"{path} was made with an earlier canonicaliser ({record['facts'].get('canonicaliser')}, now "
              f"{wanted}): training it again", flush=True)
        return None
    return record


def train_missing(args, runs_dir: Path, argv=None) -> None:
    """Train and evaluate every run of the study that `runs_dir` lacks (the mean-face reference first), writing each
    run file as it ends; --budget-minutes stops starting new runs."""
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
    out = Path(args.out)
    work = Path(args.work) if args.work else (out / "rotation_data" if args.smoke else DATA_WORK)
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
            for rotation in ((False,) if label in CANONICALISED else (False, True)):
                path = runs_dir / run_filename(label, rotation, seed)
                if _existing(path, settings, label in CANONICALISED) is not None:
                    skipped += 1
                    continue
                if deadline is not None and time.perf_counter() > deadline:
                    print(f"--budget-minutes {args.budget_minutes:g} reached: not starting {path.name}", flush=True)
                    continue
                cpu0, wall0 = time.process_time(), time.perf_counter()
                model, facts = train_model(name, kwargs, train_root, rotation, seed, settings, device, weight_mask,
                                           args.workers)
                t0 = time.perf_counter()
                if label in CANONICALISED:
                    model.refine = STUDY_REFINE               # the study's looks, whatever the toolkit's default
                angles = all_angles if label in args.negative_models else args.angles
                nme = evaluate_angles(model, items, kpt_ind, device, args.batch, angles)
                extra = (evaluate_canonicalised(model, items, kpt_ind, device, args.batch, args.angles)
                         if label in CANONICALISED else {})
                if label in CANONICALISED:
                    from model.canonical import CANONICALISER

                    facts["canonicaliser"] = {**CANONICALISER, "refine": STUDY_REFINE}
                facts["eval_seconds"] = round(time.perf_counter() - t0, 2)
                facts.update(cpu_seconds=round(time.process_time() - cpu0, 2), threads=threads, device=str(device),
                             run_seconds=round(time.perf_counter() - wall0, 2))
                write_run(path, {"label": label, "model": name, "kwargs": kwargs, "rotation": rotation, "seed": seed,
                                 "settings": settings, "facts": facts, "nme": nme, **extra, **_stamp(device, argv)})
                trained += 1
                print(f"seed {seed} {label:<18} {'rot' if rotation else 'no-rot'}: {facts['steps']} steps "
                      f"{facts['train_seconds']:.0f} s + eval {facts['eval_seconds']:.0f} s, NME "
                      + " ".join(f"{a}°:{v['mean']:.1f}" for a, v in nme.items() if a >= 0), flush=True)
                del model
    print(f"{trained} runs trained, {skipped} found in {runs_dir}", flush=True)
