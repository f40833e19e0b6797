"""Benchmark of training throughput: samples/s of full training steps fed by the real loader, 0 / 1 / 2 workers.

Synthesises and processes a small 300W-LP-format set with the synthetic face model, then runs E2TKFace training
steps (forward, weighted loss, backward, Adam; batch 16, augmentation on) fed by data.build_loader over
data.PosmapDataset (memory-mapped position maps), and the loader alone over the same data. The loader-only
figures for a 122,450-sample index, pre-read vs memmap and peak RSS are in train_loader.md
(benchmarks/train_loader.py). Usage: python benchmarks/train.py [--steps 4] [--precisions fp32,bf16]
[--out benchmarks/results/train.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.dataset import PosmapDataset  # noqa: E402
from data.loader import build_loader  # noqa: E402
from faceutil.facemodel import load_model  # noqa: E402
from faceutil.process import process_dataset  # noqa: E402
from faceutil.synthetic import synthesize_dataset  # noqa: E402
from faceutil.uv import build_uv_layout  # noqa: E402
from model import autocast_context, build_model  # noqa: E402
from model.loss import WeightedPosmapLoss  # noqa: E402


def loader_rate(dataset, workers: int, batch: int, batches: int) -> float:
    """Samples/s of the loader alone (after its first batch, which includes worker start-up)."""
    loader = build_loader(dataset, batch, workers=workers, shuffle=True, seed=0, drop_last=True)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            n += len(next(it)["image"])
        except StopIteration:
            it = iter(loader)
            n += len(next(it)["image"])
    return n / (time.perf_counter() - start)


def training_rate(dataset, workers: int, batch: int, steps: int, weight_mask,
                  precision: str = "fp32") -> tuple[float, float]:
    """(samples/s, seconds per step) of training steps fed by the loader, the forward pass under
    autocast_context("cpu", precision) as engine.train runs it; one warm-up step is not timed."""
    torch.manual_seed(0)
    net = build_model("e2tkface").train()
    loss_fn = WeightedPosmapLoss(weight_mask)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=2e-4)
    loader = build_loader(dataset, batch, workers=workers, shuffle=True, seed=0, drop_last=True)

    def batches():
        while True:
            yield from loader

    it = batches()
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        b = next(it)
        with autocast_context("cpu", precision):
            out = net(b["image"])
        loss = loss_fn(out.float(), b["posmap"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - start)
    per_step = sum(times) / len(times)
    return batch / per_step, per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=96, help="synthetic training samples")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per configuration")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated training precisions (fp32, bf16)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = load_model("synthetic")
        synthesize_dataset(tmp / "raw", "300W_LP", args.samples, seed=0, model=model)
        process_dataset(tmp / "raw", tmp / "crop", progress=False)
        mask = build_uv_layout(model).weight_mask
        dataset = PosmapDataset(tmp / "crop", augment=True, seed=0)
        rows = []
        for precision in args.precisions.split(","):
            for workers in (0, 1, 2):
                alone = loader_rate(dataset, workers, args.batch, 12)
                rate, step = training_rate(dataset, workers, args.batch, args.steps, mask, precision)
                rows.append((precision, workers, alone, rate, step))
                print(rows[-1], flush=True)
    lines = [
        "# Training throughput", "",
        f"- Date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} torch threads in the training process",
        f"- Command: `python benchmarks/train.py --samples {args.samples} --steps {args.steps} --batch {args.batch} "
        f"--precisions {args.precisions}`; "
        f"1-min load average at start {load1:.1f}, at end {os.getloadavg()[0]:.1f}",
        f"- Data: {args.samples} synthetic 300W-LP-format images processed by faceutil.process; PosmapDataset with "
        "memory-mapped position maps and training augmentation; build_loader (persistent workers).",
        "- Training step: full-size E2TKFace (equivariant encoder), weighted position-map loss, backward, Adam; "
        f"batch {args.batch}; mean of {args.steps} steps after one warm-up step; bf16 = autocast with fp32 master "
        "weights (--precision=bf16).", "",
        "| precision | loader workers | loader alone (samples/s) | training (samples/s) | s per step | "
        "loader / training |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for precision, workers, alone, rate, step in rows:
        lines.append(f"| {precision} | {workers} | {alone:.0f} | {rate:.2f} | {step:.2f} | {alone / rate:.0f}x |")
    lines += [
        "",
        "On 2 CPU cores the training step, not the loader, is the bottleneck: the loader with 2 workers delivers "
        "the ratio above (target >= 4x) of what a training step consumes. Loader workers compete with the "
        "training process for the same 2 cores, so more workers do not speed training up here; on a GPU machine "
        "the step is far shorter and the workers run on spare cores.",
        "Memory for a 122,450-sample index (memory-mapped vs --isPreRead) and per-item costs: "
        "[train_loader.md](train_loader.md).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
