"""Learning curves: one network trained on the whole synthetic training set with the toolkit's own training loop
(engine.train.run_training), its 2D NME on the synthetic test set every few minutes of training time beside the
mean face's. Resumable: a checkpoint after every epoch, and curve.json gains each point as it is measured. Owns the
curve settings (CURVE_DEFAULTS) and the runner."""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from benchmarks.common import machine_line, write_json
from benchmarks.convergence.probes import probe_name
from benchmarks.study_data import evaluate_nme, study_data, study_test_set

CURVE_DEFAULTS = {"model": "e2tkface", "encoder": "aligned", "width_mult": 0.5, "input_size": 128,
                  "head": "mean-residual", "lr": 5e-4, "warmup": 500, "schedule": "cosine", "lr_decay": 0.8,
                  "optimizer": "adamw", "decay_norm_bias": True, "epochs": 100, "minutes": 60.0, "batch": 16,
                  "precision": "bf16", "augment": True, "rotation": False, "seed": 0, "eval_minutes": 3.0,
                  "train_count": 800, "pre_read": False, "appearance": "plain", "step_seconds": 0.0}
# curves saved before a setting existed ran with this value of it (the toolkit's default then)
CURVE_FORMER = {"optimizer": "adam", "pre_read": False, "train_count": 800, "appearance": "plain",
                "step_seconds": 0.0}


def curve_config(spec: dict, train_root: Path, run_dir: Path, time_limit: float):
    """The toolkit Config of a learning-curve run (the real training loop, engine.train.run_training)."""
    from config import Config

    return Config(train=True, test=False, train_dir=str(train_root), model=spec["model"], encoder=spec["encoder"],
                  model_kwargs={"width_mult": spec["width_mult"]} if spec["model"] == "e2tkface" else {},
                  head=spec["head"], input_size=spec["input_size"], epochs=spec["epochs"], batch_size=spec["batch"],
                  lr=spec["lr"], warmup_steps=spec["warmup"], lr_schedule=spec["schedule"],
                  lr_decay=spec["lr_decay"], optimizer=spec["optimizer"], decay_norm_bias=spec["decay_norm_bias"],
                  augment=spec["augment"], pre_read=spec["pre_read"],
                  augment_rotation=spec["rotation"], precision=spec["precision"], seed=spec["seed"], device="cpu",
                  num_workers=0, out=str(run_dir), progress=False, bfm="synthetic", time_limit=time_limit,
                  resume="auto" if (run_dir / "last.pth").is_file() else None)


def cmd_curve(args) -> None:
    """One learning curve (the command line's `curve`): settings from --spec, folder <out>/curves/<label>."""
    spec = {**CURVE_DEFAULTS, **json.loads(args.spec)}
    label = args.label or probe_name(spec).replace("e2tkface", "e2tkface-" + spec["encoder"])
    run_curve(spec, Path(args.out) / "curves" / label, label, args.threads, resume=args.resume)


def run_curve(spec: dict, folder: Path, label: str, threads: int, resume: bool = False,
              extra_tests: dict | None = None) -> dict:
    """Train with run_training and evaluate 2D NME on the synthetic test set every spec["eval_minutes"] of training
    time, and on each of `extra_tests` ({name: AFLWEvalSet-like items}, recorded as "nme2d_<name>" per point, with
    the mean face's figure in "mean_face_nme2d_<name>"). Saves folder/curve.json after every point; resumable.
    Training time: the wall clock of the training epochs, or, when spec["step_seconds"] > 0, optimiser steps x that
    many seconds (the time of one step measured with the cores to itself: the figure then does not depend on what
    else the machine ran, and the run ends at spec["epochs"], not at a wall-clock limit).
    Returns the curve record."""
    import torch

    from data.dataset import AFLWEvalSet
    from engine.checkpoint import load_checkpoint
    from engine.evaluate import MeanPosmapModel
    from engine.loading import load_network
    from engine.train import run_training
    from faceutil.uv import uv_layout

    torch.set_num_threads(threads)
    unknown = sorted(set(spec) - set(CURVE_DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown curve settings {unknown}; the settings are {sorted(CURVE_DEFAULTS)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "curve.json"
    # the same 120 test images whatever the training set (a randomised training set is made without test images)
    train_root, _ = study_data(spec["train_count"], 120 if spec["appearance"] == "plain" else 0,
                               appearance=spec["appearance"])
    test_raw = study_test_set()
    kpt_ind = uv_layout("synthetic").kpt_ind
    test = AFLWEvalSet(test_raw)
    tests = {"": [test[i] for i in range(len(test))], **(extra_tests or {})}
    curve = json.loads(path.read_text()) if path.is_file() else None
    if curve is not None and not resume:
        raise SystemExit(f"{path} exists: pass --resume to continue that run, or another --label.")
    if curve is not None and {**CURVE_FORMER, **curve["spec"]} != spec:   # a setting added since ran as FORMER
        raise SystemExit(f"{path} was made with other settings ({curve['spec']}); use another --label.")
    if curve is None:
        mean_face = MeanPosmapModel(train_root)
        curve = {"spec": spec, "label": label, "points": [], "machine": machine_line("cpu"),
                 "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
        for name, items in tests.items():
            curve["mean_face_nme2d" + (f"_{name}" if name else "")] = evaluate_nme(mean_face, items, kpt_ind)
        write_json(path, curve)
    run_dir = folder / "run"
    per_step = spec["step_seconds"] / 60.0

    def minutes_of(records) -> float:
        if per_step:
            return records[-1].get("step", 0) * per_step if records else 0.0
        return sum(r.get("train_seconds", 0.0) for r in records) / 60.0
    spent = minutes_of(curve["points"])
    history = []
    if (run_dir / "last.pth").is_file():
        history = load_checkpoint(run_dir / "last.pth").get("history", [])
        spent = minutes_of(history)
    if spent >= spec["minutes"] or (history and history[-1]["epoch"] >= spec["epochs"]):
        _backfill(curve, path, run_dir, tests, kpt_ind, train_root)
        print(f"{label}: done ({spent:.1f} training minutes)", flush=True)
        return curve
    if history and (not curve["points"] or curve["points"][-1]["epoch"] < history[-1]["epoch"]):
        model = load_network(run_dir / "last.pth", export=False).module   # killed between checkpoint and curve point
        _add_point(curve, path, model, history[-1], spent, tests, kpt_ind)
    state = {"minutes": spent, "next": (math.floor(spent / spec["eval_minutes"]) + 1) * spec["eval_minutes"]}

    def on_epoch(model, record):
        state["minutes"] = record["step"] * per_step if per_step else state["minutes"] + record["train_seconds"] / 60.0
        last = state["minutes"] >= spec["minutes"] or record["epoch"] >= spec["epochs"] or record.get("stopped_early")
        if state["minutes"] >= state["next"] or last:
            _add_point(curve, path, model, record, state["minutes"], tests, kpt_ind)
            state["next"] = (math.floor(state["minutes"] / spec["eval_minutes"]) + 1) * spec["eval_minutes"]

    run_training(curve_config(spec, train_root, run_dir, 0.0 if per_step else spec["minutes"] - spent),
                 on_epoch=on_epoch)
    return curve


def _backfill(curve: dict, path: Path, run_dir: Path, tests: dict, kpt_ind, train_root: Path) -> None:
    """A finished run scored on test sets added after it ran: the network as it ended (run_dir/last.pth, the last
    point's) and its mean face, on every set of `tests` the last point lacks; curve.json rewritten."""
    from engine.evaluate import MeanPosmapModel
    from engine.loading import load_network

    point = curve["points"][-1] if curve["points"] else None
    missing = [name for name in tests if name and point is not None and f"nme2d_{name}" not in point]
    if not missing or not (run_dir / "last.pth").is_file():
        return
    model, mean_face = load_network(run_dir / "last.pth", export=False).module, MeanPosmapModel(train_root)
    for name in missing:
        point[f"nme2d_{name}"] = evaluate_nme(model, tests[name], kpt_ind)
        curve[f"mean_face_nme2d_{name}"] = evaluate_nme(mean_face, tests[name], kpt_ind)
    write_json(path, curve)


def _add_point(curve: dict, path: Path, model, record: dict, minutes: float, tests: dict, kpt_ind) -> None:
    point = {"epoch": record["epoch"], "step": record.get("step"), "minutes": round(minutes, 2),
             "train_loss": record["train_loss"], "val_loss": record.get("val_loss")}
    for name, items in tests.items():
        point["nme2d" + (f"_{name}" if name else "")] = evaluate_nme(model, items, kpt_ind)
    point["train_seconds"] = record.get("train_seconds", 0.0)
    curve["points"].append(point)
    curve["updated"] = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    write_json(path, curve)
    extra = "".join(f", {name} {point['nme2d_' + name]:.2f} %" for name in tests if name)
    print(f"{curve['label']}: {minutes:.1f} min, epoch {record['epoch']}: test 2D NME {point['nme2d']:.2f} % "
          f"(mean face {curve['mean_face_nme2d']:.2f} %){extra}", flush=True)


def steptime_name(spec: dict) -> str:
    """The step-time record's name: what a step's cost depends on (network, width, input size, batch, precision)."""
    return (f"{spec['model']}-{spec['encoder'] if spec['model'] == 'e2tkface' else 'full'}-w{spec['width_mult']}-"
            f"{spec['input_size']}px-b{spec['batch']}-{spec['precision']}")


def cmd_steptime(args) -> None:
    """Seconds per optimiser step of a curve's recipe, with the cores to itself (the `step_seconds` of a curve):
    two epochs of the 800-image study set; the second epoch's training time / its steps. Records how busy the
    process kept the cores (its CPU time / wall time / threads): well below 1, something else was running."""
    import time

    import torch

    from engine.train import run_training

    torch.set_num_threads(args.threads)
    spec = {**CURVE_DEFAULTS, **json.loads(args.spec), "train_count": 800, "epochs": 2, "appearance": "plain",
            "warmup": 10}
    train_root, _ = study_data(800)
    folder = Path(args.out) / "steptime"
    run_dir = folder / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    marks = []

    def on_epoch(_model, record):
        marks.append((record, time.process_time(), time.perf_counter()))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    run_training(curve_config(spec, train_root, run_dir, 0.0), on_epoch=on_epoch)
    (first, cpu1, wall1), (second, cpu2, wall2) = marks
    steps = second["step"] - first["step"]
    result = {"spec": {k: spec[k] for k in ("model", "encoder", "width_mult", "input_size", "batch", "precision")},
              "step_seconds": round(second["train_seconds"] / steps, 4), "steps": steps,
              "cpu_busy": round((cpu2 - cpu1) / ((wall2 - wall1) * args.threads), 3), "machine": machine_line("cpu"),
              "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    write_json(folder / f"{steptime_name(spec)}.json", result)
    print(json.dumps(result), flush=True)
