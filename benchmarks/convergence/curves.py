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
                  "train_count": 800, "pre_read": False, "appearance": "plain"}
# curves saved before a setting existed ran with this value of it (the toolkit's default then)
CURVE_FORMER = {"optimizer": "adam", "pre_read": False, "train_count": 800, "appearance": "plain"}


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
    spent = sum(p_["train_seconds"] for p_ in curve["points"]) / 60.0 if curve["points"] else 0.0
    history = []
    if (run_dir / "last.pth").is_file():
        history = load_checkpoint(run_dir / "last.pth").get("history", [])
        spent = sum(h.get("train_seconds", 0.0) for h in history) / 60.0
    if spent >= spec["minutes"] or (history and history[-1]["epoch"] >= spec["epochs"]):
        print(f"{label}: done ({spent:.1f} training minutes)", flush=True)
        return curve
    if history and (not curve["points"] or curve["points"][-1]["epoch"] < history[-1]["epoch"]):
        model = load_network(run_dir / "last.pth", export=False).module   # killed between checkpoint and curve point
        _add_point(curve, path, model, history[-1], spent, tests, kpt_ind)
    state = {"minutes": spent, "next": (math.floor(spent / spec["eval_minutes"]) + 1) * spec["eval_minutes"]}

    def on_epoch(model, record):
        state["minutes"] += record["train_seconds"] / 60.0
        last = state["minutes"] >= spec["minutes"] or record["epoch"] >= spec["epochs"] or record.get("stopped_early")
        if state["minutes"] >= state["next"] or last:
            _add_point(curve, path, model, record, state["minutes"], tests, kpt_ind)
            state["next"] = (math.floor(state["minutes"] / spec["eval_minutes"]) + 1) * spec["eval_minutes"]

    run_training(curve_config(spec, train_root, run_dir, spec["minutes"] - spent), on_epoch=on_epoch)
    return curve


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
