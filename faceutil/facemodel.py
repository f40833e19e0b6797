"""Which face model: load_model("synthetic" | a face3d data/Out folder | its BFM.mat) -> MorphableModel.

The one door to a face model by name, above both the BFM file reader (faceutil.morphable) and the procedural model
(faceutil.synthetic_model), so neither needs the other.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from faceutil.errors import FaceUtilError
from faceutil.morphable import BFM_FILE, UV_FILE, MorphableModel, load_bfm
from faceutil.synthetic_model import build_synthetic_model


@functools.lru_cache(maxsize=2)
def _synthetic_model(seed: int) -> MorphableModel:
    """The synthetic model, built once per process and seed; its arrays are read-only since callers share it."""
    model = build_synthetic_model(seed)
    for value in vars(model).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return model


def load_model(spec="synthetic", seed: int = 0) -> MorphableModel:
    """The morphable model the pipeline uses.

    Args:
        spec: "synthetic" for the project's procedural model (faceutil.synthetic_model, built from ``seed``), or a
            folder holding face3d's ``BFM.mat`` and ``BFM_UV.mat`` (``data/Out``); a path to that BFM.mat works too.
        seed: seed of the synthetic model (ignored for files).
    Raises:
        FaceUtilError: the folder or one of its files is missing or malformed (one sentence naming it).
    """
    if isinstance(spec, str) and spec.strip().lower() == "synthetic":
        return _synthetic_model(int(seed))
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".mat":
        return load_bfm(path, path.parent / UV_FILE)
    if not path.is_dir():
        raise FaceUtilError(
            f"morphable model '{spec}' is neither 'synthetic' nor a folder holding {BFM_FILE} and {UV_FILE}")
    for name in (BFM_FILE, UV_FILE):
        if not (path / name).is_file():
            raise FaceUtilError(
                f"{path / name} is missing (make face3d's data/Out with faceutil.morphable.generate_bfm or generate.m)")
    return load_bfm(path / BFM_FILE, path / UV_FILE)
