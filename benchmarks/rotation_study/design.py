"""The rotation study's design, said once for its harness, run files and report: the networks it compares
(MODELS), the test rotations (ANGLES), the settings every run of one study shares (SETTING_KEYS) and the rule by
which a trained run counts (PASS_RATIO)."""
from __future__ import annotations

from benchmarks.common import RESULTS_DIR

ANGLES = tuple(range(0, 181, 15))                   # the study's test rotations (degrees, counter-clockwise)
NEGATIVE_ANGLES = tuple(range(-15, -180, -15))      # the clockwise side (-180 is 180), for the symmetry check
# (label, registered model name, builder kwargs without width); width_mult is added for e2tkface only.
MODELS = (
    ("E2TKFace faithful", "e2tkface", {"encoder": "faithful"}),
    ("E2TKFace aligned", "e2tkface", {"encoder": "aligned"}),
    ("E2TKFace CNN", "e2tkface", {"encoder": "cnn"}),
    ("PRNet", "prnet", {}),
    # issue 23: the backbone behind a steerable angle estimator (model/canonical.py), trained upright only
    ("E2TKFace aligned + canonicaliser", "e2tkface", {"encoder": "aligned", "canonicalize": True}),
    ("PRNet + canonicaliser", "prnet", {"canonicalize": True}),
)
EQUIVARIANT = ("E2TKFace faithful", "E2TKFace aligned")
CANONICALISED = ("E2TKFace aligned + canonicaliser", "PRNet + canonicaliser")     # trained without rotation only
OFF_GRID_ANGLES = (7, 37, 143, 200)                  # canonicalised runs are also tested off the 15-degree grid
STUDY_REFINE = 2      # canonicalised runs are evaluated with 3 looks, and the same weights with 1 and 2 (nme_looks)
# The faithful encoder crashes in backward (native "double free or corruption") when its first stage has a single
# regular field, i.e. round(4 * width_mult) < 2 (measured 2026-11-25: widths 0.125, 0.25, 0.3 crash; 0.375, 0.5 run).
MIN_WIDTH = 0.375
PASS_RATIO = 0.5            # a run counts when its 0-degree NME is at most this fraction of the mean face's
RUNS_DIR = RESULTS_DIR / "rotation_runs"                         # one JSON per finished run (committed)
# The settings every run of one study shares; a run file (or a --merge input) with any of them different is refused.
SETTING_KEYS = ("steps", "batch", "lr", "warmup", "weight_decay", "width_mult", "size", "head", "topk", "precision",
                "train_count", "test_count", "data_seed", "angles")


def is_exact(angle: int) -> bool:
    """Multiples of 90 degrees turn the pixel grid onto itself: the rotated crop is a pixel permutation (no
    interpolation), so a C4-equivariant network sees exactly the rotated input; other angles are interpolated."""
    return int(angle) % 90 == 0
