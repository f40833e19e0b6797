"""The rotation study's command line (`python -m benchmarks.rotation_study ...`, see the package's docstring):
arguments and their checks, then either the report alone (--report-only, --merge) or the resumable training loop
(harness.train_missing) followed by the report."""
from __future__ import annotations

import argparse
from pathlib import Path

import benchmarks.rotation_study as study
from benchmarks.common import RESULTS_DIR
from benchmarks.rotation_study.design import ANGLES, MIN_WIDTH, MODELS, RUNS_DIR
from benchmarks.rotation_study.harness import train_missing
from benchmarks.rotation_study.report import write_from_runs
from benchmarks.study_data import DATA_WORK

SMOKE = {"steps": 2, "batch": 2, "warmup": 1, "width_mult": MIN_WIDTH, "train_count": 8, "test_count": 4,
         "seeds": [0, 1], "size": 64, "angles": [0, 90, 180]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rotation_study", description=study.__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per training run (the budget)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (after the warm-up)")
    p.add_argument("--warmup", type=int, default=500,
                   help="linear warm-up steps; cosine to zero after them (100 left the equivariant encoders on the "
                        "mean face for 3 seeds of 4: benchmarks/results/convergence.md, escape probes)")
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--width-mult", type=float, default=0.5,
                   help=f"E2TKFace width for all encoders (>= {MIN_WIDTH}); PRNet has no width and runs full size")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256),
                   help="network input size for all models alike (the toolkit's --input-size: < 256 runs the "
                        "network on the area-downsampled crop and upsamples its position map, model.head.PosmapIO)")
    p.add_argument("--head", default="mean-residual", choices=("published", "mean-residual"),
                   help="output head for all models alike (the toolkit's --head)")
    p.add_argument("--topk", type=int, default=None,
                   help="E2TKFace top-k windows (default: the published fraction of windows, 4 at 256, 1 below)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="training autocast precision")
    p.add_argument("--train-count", type=int, default=800)
    p.add_argument("--test-count", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=[m[0] for m in MODELS], choices=[m[0] for m in MODELS])
    p.add_argument("--angles", type=int, nargs="+", default=list(ANGLES),
                   help="test rotations in [0, 180] (the negative side is added for --negative-models)")
    p.add_argument("--negative-models", nargs="*", default=[m[0] for m in MODELS], choices=[m[0] for m in MODELS],
                   help="models also tested at the negated angles (the symmetry check)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for rotation.md / .png / .json")
    p.add_argument("--runs", default=None, help=f"folder of the per-run JSON files (default: {RUNS_DIR}; with "
                                                f"--smoke: <out>/rotation_runs)")
    p.add_argument("--work", default=None,
                   help=f"folder for the synthetic data (default: {DATA_WORK}; --smoke: <out>/rotation_data)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="training data loader workers")
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="start no new run after this many minutes (0 = train every missing run)")
    p.add_argument("--smoke", action="store_true", help="tiniest sizes, everything once, ~1 min on 2 CPU cores")
    p.add_argument("--report-only", action="store_true", help="no training: rewrite the report from --runs")
    p.add_argument("--note", default=None, help="a sentence added to the report's Runs line")
    p.add_argument("--merge", nargs="+", default=None, metavar="PATH",
                   help="no training: write the report into --out from run files and folders of them (e.g. made on "
                        "several machines); they must share every setting")
    args = p.parse_args(argv)
    if args.merge:
        return args
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        if Path(args.out).resolve() == RESULTS_DIR.resolve():
            p.error("--smoke must not overwrite benchmarks/results; pass --out to a scratch folder")
    if args.width_mult < MIN_WIDTH:
        p.error(f"--width-mult {args.width_mult} is below {MIN_WIDTH}: the faithful encoder crashes in backward "
                f"with a single regular field in its first stage; use >= {MIN_WIDTH}")
    if args.topk is None:
        from model.head import published_topk

        args.topk = published_topk(args.size)
    if len(set(args.seeds)) < 2:
        p.error("--seeds needs at least two seeds (the report gives mean ± std)")
    if min(args.steps, args.batch, args.train_count, args.test_count) < 1 or args.warmup < 0:
        p.error("--steps, --batch, --train-count and --test-count must be >= 1, --warmup >= 0")
    if any(not 0 <= a <= 180 for a in args.angles) or 0 not in args.angles:
        p.error("--angles must lie in [0, 180] and include 0 (the unrotated reference)")
    args.angles = sorted(set(args.angles))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    if args.merge:
        return write_from_runs(args.merge, out, note=args.note)
    runs_dir = Path(args.runs) if args.runs else (out / "rotation_runs" if args.smoke else RUNS_DIR)
    if not args.report_only:
        train_missing(args, runs_dir, argv)
    return write_from_runs([runs_dir], out, args.smoke, args.note)


if __name__ == "__main__":
    main()
