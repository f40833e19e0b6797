"""The --demo: the whole pipeline on built-in synthetic data, on CPU, in minutes.

Synthesises a 300W-LP-format training set and an AFLW2000-format test set, processes both like processor.py,
evaluates an untrained E2TKFace, trains it (time-limited), evaluates again and draws predictions.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from config import Config
from faceutil.appearance import Appearance

# Settings the demo uses unless the flag is given explicitly (see Config.given). E2TKFace (equivariant encoder) at
# width 0.5 and 128 px input, so about 900 steps fit in 6 minutes on two CPU cores (at 64 px one run left the mean
# face after 400 steps and another never did in 1400); the mean-residual head (the
# Config default), linear warm-up then cosine, bf16 (benchmarks/results/convergence.md measures why). The test set
# is upright, so the augmentation leaves out the in-plane rotation.
DEMO_DEFAULTS = {
    "model": "e2tkface",
    "model_kwargs": {"width_mult": 0.5},
    "input_size": 128,
    "epochs": 20,                  # 25 took 8.7 min alone on 2 cores (7.8 min training); 18 took 5.9-6.0 min
    "batch_size": 16,
    "lr": 5e-4,
    "warmup_steps": 500,           # with 100, seed 1 stayed on the mean face to step ~500 (convergence.md, finding 10)
    "lr_schedule": "cosine",
    "augment_rotation": False,
    "precision": "bf16",
    "num_workers": 0,
    "pre_read": True,              # its 600 float32 position maps (470 MB) in memory: no per-item file read
    "val_fraction": 0.05,
    "time_limit": 7.0,
    "device": "cpu",
}


# A demo whose trained NME is above this fraction of the mean face's has not learnt: it says so and exits non-zero.
LEARNED_BELOW = 0.8


def demo_config(config: Config) -> Config:
    """The user's config with DEMO_DEFAULTS filled in where the flag was not given; run folder defaulted."""
    changes = {k: v for k, v in DEMO_DEFAULTS.items() if k not in config.given}
    if config.out is None:
        changes["out"] = str(Path("savedmodel") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    return config.replace(**changes, bfm="synthetic", train=True, test=True, resume=None, gt="original")


def _make_data(root: Path, config: Config, face_model) -> dict[str, Path]:
    """Synthesise and process the two datasets (skipped when already complete, so a rerun reuses them)."""
    from faceutil.appearance import PLAIN
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    paths = {"train_raw": root / "300W_LP", "train": root / "300W_LP-crop",
             "test_raw": root / "AFLW2000", "test": root / "AFLW2000-crop"}
    train_look = Appearance.parse(config.appearance)
    for kind, raw, count, seed, look in (
            ("300W_LP", paths["train_raw"], config.demo_train_count, config.seed, train_look),
            ("AFLW2000", paths["test_raw"], config.demo_test_count, config.seed + 1, PLAIN)):
        if len(list(raw.glob("*.mat"))) < count:
            t = time.perf_counter()
            synthesize_dataset(raw, kind, count, seed, model=face_model, appearance=look)
            print(f"synthesised {count} {kind}-format images in {raw} ({time.perf_counter() - t:.0f} s)", flush=True)
    for raw_key, out_key in (("train_raw", "train"), ("test_raw", "test")):
        summary = process_dataset(paths[raw_key], paths[out_key], bfm="synthetic", progress=config.progress,
                                  seed=config.seed)
        print(f"processed {paths[raw_key].name} -> {paths[out_key]}: {summary.lines()[0]}", flush=True)
    return paths


def _draw_predictions(report, raw_dir: Path, out_dir: Path, count: int = 6, overview: int = 4,
                      tile: int = 200) -> list[Path]:
    """Original images with true (green) and predicted (red) landmarks, written as jpg, and overview.png: the first
    ``overview`` of them side by side, each cut to the square 1.5x the true landmarks' box (tile px). Returns the
    jpg paths."""
    import cv2

    from faceutil.sampleio import atomic_write_image, read_image

    from engine.monitor import landmark_panel

    out_dir.mkdir(parents=True, exist_ok=True)
    written, tiles = [], []
    for i, name in enumerate(report.names[:count]):
        image = read_image(raw_dir / f"{name}.jpg")
        panel = landmark_panel(image, report.truth[i], report.landmarks[i])
        path = out_dir / f"{name}_landmarks.jpg"
        atomic_write_image(path, panel)
        written.append(path)
        if len(tiles) < overview:
            lo, hi = report.truth[i][:, :2].min(axis=0), report.truth[i][:, :2].max(axis=0)
            half = 0.75 * float((hi - lo).max())
            cx, cy = (lo + hi) / 2
            x0, y0 = int(round(cx - half)), int(round(cy - half))
            side = int(round(2 * half))
            padded = cv2.copyMakeBorder(panel, side, side, side, side, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
            tiles.append(cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA))
    if tiles:
        atomic_write_image(out_dir / "overview.png", np.concatenate(tiles, axis=1))
    return written


def refresh_batchnorm(checkpoint: Path, out_path: Path, config: Config, images: int = 64) -> Path:
    """Recompute BatchNorm running statistics of a checkpoint's network over training images; save and return it.

    A run of a few hundred steps leaves the running means/variances (momentum 0.1) behind the weights, so the
    evaluation-mode network is worse than the training-mode one; torch.optim.swa_utils.update_bn re-estimates
    them (cumulative average over ``images`` un-augmented training crops). Only BN buffers change.
    """
    from torch.optim.swa_utils import update_bn

    from data.dataset import PosmapDataset
    from data.index import read_index
    from engine.checkpoint import save_checkpoint
    from engine.loading import load_network

    loaded = load_network(checkpoint, train=True)
    model, ck = loaded.module, loaded.checkpoint
    names = read_index(config.train_dir)[:images]
    loader = torch.utils.data.DataLoader(PosmapDataset(config.train_dir, names), batch_size=config.batch_size)
    with torch.no_grad():
        update_bn((batch["image"] for batch in loader), model)
    ck["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ck["batchnorm_refreshed_on"] = len(names)
    return save_checkpoint(out_path, ck)


def run_demo(config: Config) -> dict:
    """Run the demo; prints progress and the before/after NME; returns the summary dict (also demo_summary.json)."""
    from faceutil.facemodel import load_model
    from faceutil.sampleio import atomic_write_bytes
    from faceutil.uv import uv_layout

    from engine.evaluate import MeanPosmapModel, run_evaluation
    from engine.loading import default_factory, model_spec, needs_mean_posmap
    from engine.train import run_training

    start = time.perf_counter()
    config = demo_config(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"E2TKFace demo in {out} (synthetic face model and data, {config.device})", flush=True)
    face_model = load_model("synthetic")
    uv = uv_layout("synthetic")
    paths = _make_data(out / "data", config, face_model)
    run_dir = out / "run"
    cfg = config.replace(train_dir=str(paths["train"]), predict_dir=str(paths["test"]), out=str(run_dir),
                         val_dir=None)

    mean_face = MeanPosmapModel(paths["train"])
    reference = run_evaluation(cfg, model=mean_face, tag="mean-face", uv=uv, quiet=True)
    # untrained network: same seed and initialisation as the one that will be trained; with the mean-residual head
    # it predicts exactly the mean training face (its last layer starts at zero), so it is not evaluated twice
    name, kwargs = model_spec(cfg)
    torch.manual_seed(cfg.seed)
    untrained = default_factory(name, **kwargs).eval()
    starts_at_mean = needs_mean_posmap(untrained)
    before = reference if starts_at_mean else run_evaluation(
        cfg, model=untrained.export() if hasattr(untrained, "export") else untrained, tag="untrained", uv=uv,
        quiet=True)
    del untrained
    print(f"untrained {name}: 2D NME {before.summary['pt3d_68 2D']['mean']:.2f} % on "
          f"{len(before.names)} test images" + (" (the mean-residual head starts at the mean face: the reference "
                                                "below)" if starts_at_mean else ""), flush=True)

    print(f"mean-face reference (the mean training position map for every image): 2D NME "
          f"{reference.summary['pt3d_68 2D']['mean']:.2f} %", flush=True)

    t = time.perf_counter()
    result = run_training(cfg, uv=uv)
    train_seconds = time.perf_counter() - t
    trained = result.best_path if result.best_path.is_file() else result.last_path
    checkpoint = refresh_batchnorm(trained, run_dir / "final.pth", cfg)
    after = run_evaluation(cfg, checkpoint=checkpoint, uv=uv, quiet=True)
    print(after.table())
    vis = _draw_predictions(after, paths["test_raw"], out / "vis")

    summary = {
        "nme2d_before": before.summary["pt3d_68 2D"]["mean"], "nme2d_after": after.summary["pt3d_68 2D"]["mean"],
        "nme3d_before": before.summary["pt3d_68 3D"]["mean"], "nme3d_after": after.summary["pt3d_68 3D"]["mean"],
        "nme2d_mean_face": reference.summary["pt3d_68 2D"]["mean"],
        "after_over_mean_face": after.summary["pt3d_68 2D"]["mean"] / reference.summary["pt3d_68 2D"]["mean"],
        "dense_before": before.summary.get("dense 3D (face mask)", {}).get("mean"),
        "dense_after": after.summary.get("dense 3D (face mask)", {}).get("mean"),
        "epochs_trained": len(result.history), "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "checkpoint": str(checkpoint),
        "trained_checkpoint": str(trained),
        "tensorboard": str(run_dir / "tensorboard"), "visualisations": str(out / "vis"),
        "results_csv": str(after.csv_path), "model": name, "model_kwargs": kwargs,
        "train_images": config.demo_train_count, "test_images": config.demo_test_count,
        "appearance": Appearance.parse(config.appearance).name,
        "spread_ratio": result.history[-1].get("spread_ratio") if result.history else None,
    }
    summary["learned"] = summary["after_over_mean_face"] <= LEARNED_BELOW
    atomic_write_bytes(out / "demo_summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    print("\n".join([
        "",
        f"68-point 2D NME on the synthetic AFLW2000-format test set (mean over {len(after.names)} images):",
        f"  untrained: {summary['nme2d_before']:.2f} %   trained ({summary['epochs_trained']} epochs, "
        f"{train_seconds / 60:.1f} min): {summary['nme2d_after']:.2f} %",
        f"  3D NME: {summary['nme3d_before']:.2f} % -> {summary['nme3d_after']:.2f} %",
        f"  reference, the mean training face for every image: {summary['nme2d_mean_face']:.2f} %; trained / "
        f"reference = {summary['after_over_mean_face']:.2f} (a network that is not clearly below 1 has learnt little "
        "beyond the mean face)",
        f"checkpoint:      {checkpoint} (= {trained.name} with BatchNorm statistics refreshed)",
        f"TensorBoard:     tensorboard --logdir {run_dir / 'tensorboard'}",
        f"visualisations:  {out / 'vis'} ({len(vis)} images: green = truth, red = prediction)",
        f"per-image CSV:   {after.csv_path}",
        f"demo finished in {summary['total_seconds'] / 60:.1f} min",
    ]), flush=True)
    if not summary["learned"]:
        print(f"did not learn: the trained network is at {summary['after_over_mean_face']:.2f} x the mean face's NME "
              f"(a network that learnt is below {LEARNED_BELOW}); it predicts close to the mean face for every image. "
              f"Use --optimizer=adamw (the default) if another was given, else a longer --warmup or a lower --lr "
              f"(benchmarks/results/convergence.md).", flush=True)
    return summary
