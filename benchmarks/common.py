"""What the training studies (benchmarks.rotation_study, benchmarks.convergence, benchmarks.escape) share in their
records and reports: the results folder, the machine line every run record carries, and how a JSON record is
written (atomically, one trailing newline).

Said once here so that the three studies' records read alike. The synthetic data they train and test on is
benchmarks.study_data; their figures are benchmarks.plots.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"       # the committed reports and their JSON records


def machine_line(device="cpu") -> str:
    """'host, processor, N CPU cores[, GPU]; torch V, torch threads T': where a run or a report was made."""
    import torch

    text = f"{platform.node() or 'host'}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text + f"; torch {torch.__version__}, torch threads {torch.get_num_threads()}"


def json_default(v):
    """json.dumps `default`: numpy scalars as Python numbers, anything else as its str()."""
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def write_json(path: Path, data, indent: int | None = 1, default=None) -> None:
    """`data` as JSON (json.dumps with `indent` and `default`) and a newline, UTF-8, written atomically."""
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=indent, default=default) + "\n").encode("utf-8"))
