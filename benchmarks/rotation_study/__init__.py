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

Layout: the run files are the seam between training and reporting, so each side can change or run alone (a report
from runs made on other machines, `--merge`, never imports the training code):
  design.py    what the study compares and how it judges: models, angles, shared settings, the pass ratio
  harness.py   the training side: rotated test set, one training run, its evaluation, the resumable loop
  runs.py      the run files: writing, reading, checking settings, collecting folders of them
  analysis.py  numbers from runs: groups over seeds, the conclusion's sentences, CPU contention, encoder
               equivariance
  report.py    rotation.md / rotation.json / rotation.png (the figure through benchmarks.plots)
  __main__.py  the command line above
The synthetic data is benchmarks.study_data, shared with the convergence and escape studies.
"""
