"""The synthetic data the training studies share, and the NME with which the convergence and escape studies score a
network.

One 300W-LP-format training set and one AFLW2000-format test set drawn from the synthetic face model
(faceutil.synthetic) and processed as real data are (faceutil.process), made once under DATA_WORK and reused. The
rotation study makes it at its own --train-count / --test-count / --data-seed; the convergence and escape studies
use study_data(), which is the rotation study's default set (800 training images, 120 test images, seed 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_WORK = Path("savedmodel") / "rotation_study_data"        # synthetic data (git-ignored), reused across studies


def make_data(work: Path, train_count: int, test_count: int, data_seed: int, face_model,
              appearance: str = "plain") -> tuple[Path, Path]:
    """Synthesise + process the training set and synthesise the raw test set (reused when complete). `appearance`
    (faceutil.appearance) applies to the training images only; the test images stay plain."""
    from faceutil.appearance import PLAIN, Appearance
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset

    look = Appearance.parse(appearance)
    name = f"train{train_count}-test{test_count}-seed{data_seed}"          # one folder per data set, reused
    work = work / (name if not look else f"{name}-{look.name.replace(',', '_')}")
    train_raw, train_crop, test_raw = work / "300W_LP", work / "300W_LP-crop", work / "AFLW2000"
    for kind, folder, count, seed, folder_look in (("300W_LP", train_raw, train_count, data_seed, look),
                                                   ("AFLW2000", test_raw, test_count, data_seed + 1, PLAIN)):
        if count and len(list(folder.glob("*.mat"))) < count:
            synthesize_dataset(folder, kind, count, seed, model=face_model, appearance=folder_look)
    process_dataset(train_raw, train_crop, bfm="synthetic", progress=False, seed=data_seed)
    return train_crop, test_raw


def study_data(train_count: int = 800, test_count: int = 120, seed: int = 0,
               appearance: str = "plain") -> tuple[Path, Path]:
    """(processed training folder, raw AFLW2000-format test folder), synthesised once and reused."""
    from faceutil.facemodel import load_model

    return make_data(DATA_WORK, train_count, test_count, seed, load_model("synthetic"), appearance)


def study_test_set(test_count: int = 120, seed: int = 0) -> Path:
    """The raw AFLW2000-format test folder of study_data(test_count=test_count, seed=seed), made without its training
    set when that does not exist yet (the test images depend only on their count and seed)."""
    from faceutil.facemodel import load_model
    from faceutil.synthetic import synthesize_dataset

    folder = DATA_WORK / f"train800-test{test_count}-seed{seed}" / "AFLW2000"
    if len(list(folder.glob("*.mat"))) < test_count:
        synthesize_dataset(folder, "AFLW2000", test_count, seed + 1, model=load_model("synthetic"))
    return folder


def memorise_batch(train_root: Path, count: int):
    """The first `count` training samples as one batch: (images (N, 3, 256, 256), posmaps / POSMAP_SCALE
    (N, 3, 256, 256))."""
    import torch

    from data.dataset import PosmapDataset
    from data.index import read_index

    ds = PosmapDataset(train_root, read_index(train_root)[:count], augment=False)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["posmap"] for it in items])


def evaluate_nme(model, items: list, kpt_ind, batch: int = 16) -> float:
    """Mean 68-point 2D NME (%) of `model` (eval mode, fp32) on AFLWEvalSet items."""
    from engine.evaluate import evaluate_model

    was_training = model.training
    report = evaluate_model(model, items, kpt_ind, None, "cpu", batch)
    model.train(was_training)
    return float(np.mean(report.nme2d))
