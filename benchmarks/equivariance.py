"""Rotation study of the encoders: 90 and 45 degree equivariance errors, parameter counts and forward timings.

Owns benchmarks/results/equivariance.md. Run from the repository root:  python -m benchmarks.equivariance
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from faceutil.sampleio import atomic_write_bytes
from model.encoder import CNNEncoder, E2Encoder, rot90_equivariance_error

RESULTS = Path(__file__).resolve().parent / "results" / "equivariance.md"


# ----------------------------------------------------------------------------------------------------------------
# inputs and rotations
# ----------------------------------------------------------------------------------------------------------------


def smooth_input(size: int, seed: int, sigma: float = 6.0, dtype=torch.float64) -> torch.Tensor:
    """(1, 3, size, size) Gaussian-blurred uniform noise in about [0, 1], faded to 0 outside a central disk.

    The soft disk window (1 inside radius 0.35*size, cosine taper to 0 at 0.48*size) keeps the rotated image free of
    empty corners, so rotating it changes nothing but the orientation (up to bilinear interpolation).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=g, dtype=dtype)
    radius = int(math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1),
                 groups=3)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1),
                 groups=3)
    x = (x - x.mean()) / x.std() * 0.25 + 0.5                    # blurred noise has a tiny spread: restore it
    r = _radius_map(size, dtype) / size
    window = torch.clamp((0.48 - r) / (0.48 - 0.35), 0.0, 1.0)
    window = torch.sin(0.5 * math.pi * window) ** 2
    return x * window


def _radius_map(size: int, dtype) -> torch.Tensor:
    """(size, size) distance of each pixel centre from the array centre, in pixels."""
    c = (size - 1) / 2
    t = torch.arange(size, dtype=dtype) - c
    return torch.sqrt(t[:, None] ** 2 + t[None, :] ** 2)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (B, C, H, W) maps counter-clockwise (as displayed) about the array centre, bilinear, zeros outside."""
    a = math.radians(degrees)
    # output pixel (u, v) reads the input at R(-a) (u, v); normalised coords (x right, y down), align_corners=True
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta[None].expand(x.shape[0], 2, 3), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _check_rotate_direction() -> None:
    """rotate(x, 90) must agree with torch.rot90(x, 1) (the quarter turn used for the exact checks)."""
    x = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-9)


@torch.no_grad()
def rotation_error(module, x: torch.Tensor, degrees: float, disk: float = 0.3) -> tuple[float, float]:
    """Equivariance error over the output pixels within ``disk`` * output size of the centre.

    Returns:
        (||d|| / ||rot f(x)||, ||d|| / ||rot f(x) - its per-channel mean||) with d = f(rot x) - rot f(x), all
        restricted to the disk. The second is not flattered by the large constant part of a random-init output.
    """
    y = module(x)
    y_rot = module(rotate(x, degrees))
    ref = rotate(y, degrees)
    mask = (_radius_map(y.shape[-1], y.dtype) <= disk * y.shape[-1]).to(y.dtype)
    diff = torch.linalg.vector_norm((y_rot - ref) * mask)
    mean = (ref * mask).sum(dim=(-2, -1), keepdim=True) / mask.sum()
    return (float(diff / torch.linalg.vector_norm(ref * mask)),
            float(diff / torch.linalg.vector_norm((ref - mean) * mask)))


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------


def _measure_ms(fn, repeats: int, threads: int) -> tuple[float, float, float]:
    """(min and median wall ms with ``threads`` intra-op threads, min process CPU ms with 1 thread).

    On a shared machine the wall time depends on the other jobs; the single-thread CPU time hardly does.
    """
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        fn()
        fn()
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
        torch.set_num_threads(1)
        fn()
        cpus = []
        for _ in range(max(3, repeats // 2)):
            c0 = time.process_time()
            fn()
            cpus.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(before)
    return min(walls) * 1000, statistics.median(walls) * 1000, min(cpus) * 1000


def time_encoders(encoders: dict, repeats: int, threads: int) -> list[tuple]:
    """Rows (name, mode, batch, min wall, median wall, 1-thread CPU), ms, float32 at 256x256: inference and a
    training step."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    inputs = {1: torch.rand(1, 3, 256, 256, generator=gen), 16: torch.rand(16, 3, 256, 256, generator=gen)}
    for name, enc in encoders.items():
        variants = []
        if isinstance(enc, E2Encoder):
            variants.append(("e2cnn, eval mode (cached filters)", enc.eval()))
        variants.append(("exported plain torch (BN folded)", enc.export()))
        variants.append(("exported, channels_last", enc.export(channels_last=True)))
        for mode, net in variants:
            for batch, x in inputs.items():
                with torch.inference_mode():
                    times = _measure_ms(lambda: net(x), repeats if batch == 1 else max(3, repeats // 3), threads)
                rows.append((name, mode, batch, *times))
        enc.train()

        def train_step(enc=enc, x=inputs[16]):
            enc.zero_grad(set_to_none=True)
            enc(x).square().mean().backward()

        rows.append((name, "train mode, forward + backward", 16, *_measure_ms(train_step, 3, threads)))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def _n_params(m) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + " (" + platform.machine() + ")"
    except OSError:
        pass
    return platform.machine() + " CPU"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--seeds", type=int, default=3, help="random smooth inputs averaged for the 45 deg error")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for the wall-clock timings")
    parser.add_argument("--no-timing", action="store_true", help="skip the forward/training timings")
    args = parser.parse_args(argv)
    _check_rotate_direction()
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()

    torch.manual_seed(0)
    encoders = {
        "E2Encoder faithful": E2Encoder("faithful"),
        "E2Encoder aligned": E2Encoder("aligned"),
        "CNNEncoder faithful": CNNEncoder("faithful"),
    }
    params = {name: _n_params(e) for name, e in encoders.items()}

    # exact quarter turns, float64, eval mode (BN at its initial running statistics), uniform random input
    cases = [("E2Encoder faithful", 256), ("E2Encoder faithful", 257), ("E2Encoder aligned", 256),
             ("E2Encoder aligned", 257), ("CNNEncoder faithful", 256), ("CNNEncoder faithful", 257)]
    rot90 = []
    for name, size in cases:
        net = encoders[name].double().eval()
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        errs = [rot90_equivariance_error(net, x, k) for k in (1, 2, 3)]
        with torch.no_grad():
            out_size = net(x).shape[-1]
        rot90.append((name, size, out_size, errs))

    # 45 degrees on smooth inputs, central disk of the outputs
    cases45 = [("E2Encoder faithful", 256), ("E2Encoder faithful", 257), ("E2Encoder aligned", 256),
               ("CNNEncoder faithful", 256), ("CNNEncoder faithful", 257)]
    rot45 = []
    for name, size in cases45:
        net = encoders[name].double().eval()
        errs = [rotation_error(net, smooth_input(size, seed), 45.0) for seed in range(args.seeds)]
        rot45.append((name, size, statistics.mean(e[0] for e in errs), statistics.mean(e[1] for e in errs)))

    for e in encoders.values():
        e.float()
    timings = [] if args.no_timing else time_encoders(encoders, args.repeats, args.threads)
    load_after = os.getloadavg()
    finished = _dt.datetime.now(_dt.timezone.utc)

    lines = [
        "# Encoder rotation study",
        "",
        f"Command: `python -m benchmarks.equivariance --seeds {args.seeds} --repeats {args.repeats}"
        f" --threads {args.threads}{' --no-timing' if args.no_timing else ''}` (from the repository root)",
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}; shared with other jobs (1-min load average "
        f"{load_before[0]:.1f} at start, {load_after[0]:.1f} at end).",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC.",
        "",
        "All encoders are randomly initialised (torch seed 0) and evaluated in eval mode, so BatchNorm uses its",
        "initial running statistics; errors are computed in float64.",
        "",
        "## Parameters",
        "",
        "| encoder | trainable parameters |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {n:,} |" for name, n in params.items()]
    lines += [
        "",
        "`E2Encoder aligned` has exactly the parameters of `faithful` (pooling replaces strides); "
        "`CNNEncoder aligned` has those of `CNNEncoder faithful`.",
        "",
        "## Quarter turns (exact rotations)",
        "",
        "Relative error ||f(rot90^k x) - rot90^k f(x)|| / ||f(x)|| on a uniform random input, k = 1, 2, 3.",
        "",
        "| encoder | input | output | 90 deg | 180 deg | 270 deg |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {s} | {o} | {e[0]:.2e} | {e[1]:.2e} | {e[2]:.2e} |" for n, s, o, e in rot90]
    lines += [
        "",
        "## 45 degrees (approximate rotations)",
        "",
        "Input: uniform noise blurred with a Gaussian (sigma 6 px), faded to zero outside a central disk (so the",
        "rotated image has no empty corners); rotated by 45 deg about the array centre with bilinear interpolation.",
        "d = f(rot x) - rot f(x), the output also rotated bilinearly about its centre, restricted to output pixels",
        "within 0.3 x output size of the centre. Column A: ||d|| / ||rot f(x)||. Column B: ||d|| divided by the",
        "norm of rot f(x) minus its per-channel mean (a random-init output is mostly a constant, which flatters A).",
        f"Mean over {args.seeds} inputs. Part of any 45 deg error is interpolation (of the input and of the 32x32",
        "output), so 0 is out of reach; the rows compare encoders under the same procedure. At 256 the stride-2",
        "layout's output grid is off the input centre (output pixel j sits at input pixel 8j: the grid centre 15.5",
        "maps to 124, not 127.5), which any rotation about the centre exposes; the pooled grid (8j + 3.5) is centred.",
        "",
        "| encoder | input | A | B |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {s} | {a:.3f} | {b:.3f} |" for n, s, a, b in rot45]
    if timings:
        lines += [
            "",
            "## Timings (float32, 256x256 input)",
            "",
            f"Wall: least and median of {args.repeats} runs at batch 1 ({max(3, args.repeats // 3)} at batch 16, 3 "
            f"for training) with {args.threads} intra-op threads; other jobs on the shared cores inflate these, the "
            "median most. CPU: the least process CPU time of the same call with 1 thread, which other jobs hardly "
            "change. Training: train mode, loss = mean square of the output, backward included.",
            "",
            "| encoder | mode | batch | wall min (ms) | wall median (ms) | 1-thread CPU (ms) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {n} | {m} | {b} | {w0:.0f} | {w1:.0f} | {c:.0f} |" for n, m, b, w0, w1, c in timings]
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
