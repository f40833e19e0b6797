"""Leaving the mean face (issue 22): does a recipe's first few hundred steps take the network off the mean face,
for every seed and thread count? The mechanism probe, the intervention table and the reliability benchmark.

One run = the training recipe on the synthetic study data (800 training crops, augmented, batch 16), stopped
``steps`` steps in; logged every LOG_EVERY steps: the loss against the mean-map loss of the same batch, the
collapse watch's spread ratio (engine.collapse), and every BLOCK_EVERY steps per block (encoder, neck stages,
global layer, each decoder layer): the between-image share of its output's variance on a fixed batch of 16 crops,
the gradient norm reaching its parameters, Adam's update relative to its weights and its weight norm relative to
initialisation, and the output layer's weight norm (it starts at zero). At the end, 2D NME on the 120 synthetic
AFLW2000-format test images (BatchNorm statistics refreshed). One JSON per run; a rerun skips what is
done, so sets can be spread over sessions and shards (--shard i/n) run side by side.

    python -m benchmarks.escape run --set baseline [--shard 0/2]
    python -m benchmarks.escape report                  # the table for benchmarks/results/convergence.md

Layout: the per-run JSON files under --work are the seam between running and reporting.
  harness.py   the recipe and its one-change sets, one run with its per-block logging, the run's verdict, the
               resumable (shardable) loop
  report.py    results/escape.json (the compact form of every run) and the intervention and mechanism tables,
               which benchmarks.convergence's report prints as a section of results/convergence.md
  __main__.py  the command line above
It measures blocks with benchmarks.convergence.diagnostics and trains on benchmarks.study_data; it is its own
package, not part of benchmarks.convergence, because it has its own command, work folder and results file (the
convergence report only reads escape.json).
"""
