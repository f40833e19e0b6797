"""What the canonicaliser (model/canonical.py, issue 23) adds to a network's inference time: batch 1, 2 torch
threads, the plain-torch twins (model.export()) of each backbone alone and wrapped, timed round-robin in the same
run, and the same for the fp32 ONNX files in onnxruntime. Weights are random (latency does not depend on them).

Owns benchmarks/results/canonical_cost.md (+ .json). Goal (issue 23): extra time at most 15 % of the backbone's.

    python -m benchmarks.canonical_cost [--calls 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, machine_line, write_json

#: (label, registered name, builder arguments): the rotation study's two backbones at its 128-px input, and the
#: full-size defaults
NETWORKS = (("PRNet, 128 px (the rotation study's)", "prnet", {"input_size": 128}),
            ("E2TKFace aligned, width 0.5, top-k 1, 128 px (the rotation study's)", "e2tkface",
             {"input_size": 128, "width_mult": 0.5, "topk": 1}),
            ("PRNet, 256 px", "prnet", {}),
            ("E2TKFace aligned, 256 px", "e2tkface", {}))
GOAL = 0.15
MORE_LOOKS = 3            # the canonicaliser is timed with one look and with this many (the rotation study's)


class _NoBackbone(torch.nn.Module):
    """A stand-in backbone that does no work beyond a real one's first step (pooling the crop to its input size;
    its output is one pixel of that, spread): the canonicaliser around it, less it alone, costs what the
    canonicaliser itself adds (estimator looks, turns, value-turn)."""

    def __init__(self, input_size: int):
        super().__init__()
        from model.head import PosmapIO

        self.io = PosmapIO(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.io.shrink(x)[:, :, :1, :1].expand(-1, 3, 256, 256).contiguous()


def timed_blocks(runners: dict, x, calls: int, passes: int = 2) -> dict:
    """{key: ms}: each runner called `calls` times in a block (after 3 warm-up calls), the runners one after the
    other, `passes` times over; a runner's figure is the lowest of its blocks' medians. Blocks, not alternating
    calls: several onnxruntime sessions called in turn slow each other (their thread pools spin after a call)."""
    best = {key: float("inf") for key in runners}
    for _ in range(passes):
        for key, fn in runners.items():
            for _ in range(3):
                fn(x)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn(x)
                times.append(1e3 * (time.perf_counter() - start))
            best[key] = min(best[key], float(np.median(times)))
    return best


def measure(name: str, kwargs: dict, calls: int, work: Path) -> dict:
    """Per engine (torch twin, onnxruntime fp32): the backbone alone, canonicalised, and the canonicaliser around
    a backbone that does no work, with MORE_LOOKS looks and with one, timed in the same run (timed_blocks)."""
    from inference.backends import OnnxBackend
    from inference.export import export_onnx
    from model import build_model
    from model.canonical import AngleEstimator, Canonicalized

    torch.manual_seed(0)
    nothing, estimator = _NoBackbone(kwargs.get("input_size", 256)), AngleEstimator()
    nets = {"alone": build_model(name, **kwargs), "canonicalised": build_model(name, canonicalize=True, **kwargs),
            "nothing": nothing, "canonicaliser": Canonicalized(nothing, estimator, refine=MORE_LOOKS - 1),
            "one_look": Canonicalized(nothing, estimator, refine=0)}
    twins = {k: (n.eval().export() if hasattr(n, "export") else n.eval()).eval() for k, n in nets.items()}
    runners = {("torch", k): (lambda inp, t=t: t(inp)) for k, t in twins.items()}
    for key, twin in twins.items():
        path = work / f"{name}-{key}.onnx"
        export_onnx(twin, path, name, {}, bfm="synthetic")
        backend = OnnxBackend(path, threads=torch.get_num_threads())
        runners[("onnxruntime", key)] = lambda inp, b=backend: b(inp.numpy())
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        med = timed_blocks(runners, x, calls)
    out = {}
    for engine in ("torch", "onnxruntime"):
        cost, one = (med[(engine, key)] - med[(engine, "nothing")] for key in ("canonicaliser", "one_look"))
        out[engine] = {"alone_ms": med[(engine, "alone")], "canonicalised_ms": med[(engine, "canonicalised")],
                       "canonicaliser_ms": cost, "extra": cost / med[(engine, "alone")],
                       "one_look_ms": one, "extra_one_look": one / med[(engine, "alone")]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per variant and pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR / "canonical_cost.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from model.canonical import ESTIMATOR_ORDER, ESTIMATOR_SIZE, ESTIMATOR_WIDTH, REFINE

    looks = f"{1 + REFINE} look{'s' * (REFINE > 0)}"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, kwargs in NETWORKS:
            rows.append({"label": label, "model": name, "kwargs": kwargs, **measure(name, kwargs, args.calls,
                                                                                      Path(tmp))})
            print(label, {k: round(rows[-1][k]["extra"], 3) for k in ("torch", "onnxruntime")}, flush=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# What the canonicaliser costs at inference", "",
             f"`python -m benchmarks.canonical_cost --calls {args.calls} --threads {args.threads}` ({date}; "
             f"{machine_line()}). Batch 1, random weights, the plain-torch twins and their fp32 ONNX files; each "
             "variant's median over a block of calls, the variants one after the other, twice over, the lower of "
             "the two medians kept (several onnxruntime sessions called in turn slow each other: their threads "
             f"spin after a call). The canonicaliser runs the C{ESTIMATOR_ORDER} angle estimator (width "
             f"{ESTIMATOR_WIDTH}) on a {ESTIMATOR_SIZE}x{ESTIMATOR_SIZE} pooled copy of the crop ({looks} by "
             "default, the canonicalised column; refining looks turn that copy upright), turns the crop upright at "
             "the backbone's input size (one gather for the quarter turn, one bilinear resampling) and turns the "
             "output's x, y values back. Its cost is timed "
             "directly, as the time of the canonicaliser around a stand-in backbone that only pools the crop to "
             "its input size, less that stand-in's own time (the difference of the first two columns is within "
             f"the timing noise of the backbone), and the extra is that cost over the backbone's time, with "
             f"{MORE_LOOKS} looks and with one.",
             "", f"| network | engine | backbone alone (ms) | canonicalised, {looks} (ms) | canonicaliser, "
             f"{MORE_LOOKS} looks (ms) | extra, {MORE_LOOKS} looks | canonicaliser, 1 look (ms) | extra, 1 look |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for engine in ("torch", "onnxruntime"):
            e = r[engine]
            lines.append(f"| {r['label']} | {engine} | {e['alone_ms']:.2f} | {e['canonicalised_ms']:.2f} | "
                         f"{e['canonicaliser_ms']:.2f} | {100 * e['extra']:+.1f} % | {e['one_look_ms']:.2f} | "
                         f"{100 * e['extra_one_look']:+.1f} % |")
    lines += ["", f"Goal (issue 23): extra time at most {100 * GOAL:.0f} % of the backbone's."]
    for size in sorted({r["kwargs"].get("input_size", 256) for r in rows}):
        for key, n in (("extra", MORE_LOOKS), ("extra_one_look", 1)):
            worst = max(r[e][key] for r in rows if r["kwargs"].get("input_size", 256) == size
                        for e in ("torch", "onnxruntime"))
            lines.append(f"- {size} px backbones, {n} look{'s' * (n > 1)}: "
                         f"{'met' if worst <= GOAL else 'NOT met'} (largest {100 * worst:+.1f} %).")
    lines.append("")
    out = Path(args.out)
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(out, "\n".join(lines).encode("utf-8"))
    write_json(out.with_suffix(".json"), {"date": date, "machine": machine_line(), "calls": args.calls,
                                          "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
