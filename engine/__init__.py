"""Training, evaluation and demo engine behind torchrun.py: loops, checkpoints, DDP, logging, the AFLW2000 protocol.

Submodules: train, evaluate, checkpoint, distributed, monitor, demo, errors. Importing does no work.
"""
