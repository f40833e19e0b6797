"""Training behind torchrun.py: the loop, checkpoints, DDP, optimiser and schedule, the mean-face watch, logging, the
AFLW2000 evaluation protocol, checkpoint loading and the demo.

Submodules: train, evaluate, checkpoint, loading, distributed, optim, collapse, monitor, demo, errors. Nothing here
imports the inference package. Importing does no work.
"""
