"""Convergence study (issue 12): why the networks collapsed onto the mean face, and what makes them learn.

Owns benchmarks/results/convergence.md (+ convergence.json). Two kinds of run, each saved to its own JSON file as
soon as it ends, so a rerun skips what is done and a study can be spread over several sessions:

  probe  memorise a few training images (full batch, no augmentation) for a fixed number of steps: the fastest test
         of an optimiser or architecture pathology. Records the loss every step next to the mean-map loss of the
         same images, per-layer gradient norms, and per-layer "image information" (the share of a feature's
         variance that varies between images) and dead-ReLU fractions at the end.
  curve  train on the whole synthetic training set with the toolkit's training loop (engine.train.run_training),
         evaluate 2D NME on the synthetic AFLW2000-format test set every few minutes of training time (the mean-face
         NME beside it); a checkpoint after every epoch, so `--resume` continues an interrupted run.

    python -m benchmarks.convergence probes --set lr             # one probe table (about a minute a probe on 2 cores)
    python -m benchmarks.convergence curve --label e2tkface-aligned \
        --spec '{"lr": 5e-4, "warmup": 100, "schedule": "cosine", "epochs": 170, "minutes": 60}' [--resume]
    python -m benchmarks.convergence report                      # writes results/convergence.md from the JSONs

Layout: one module per kind of run, each owning its settings, its named sets and its runner; the report reads only
their saved JSON records (and the committed results/convergence.json), never reruns anything:
  diagnostics.py    per-block measurements of a network (gradient norms, between-image share, dead ReLUs, rank),
                    shared with benchmarks.escape
  probes.py         memorisation probes
  escape_probes.py  the rotation study's recipe stopped after its first steps (does the network leave the mean?)
  curves.py         learning curves with the toolkit's training loop
  report.py         convergence.md / .json / .png (the figure through benchmarks.plots), with benchmarks.escape's
                    tables as one of its sections
  __main__.py       the command line above
benchmarks.escape (issue 22: one change to the recipe at a time, 8 seeds each) is its own package with its own
command and results/escape.json; this report shows its tables. The synthetic data is benchmarks.study_data.
"""
