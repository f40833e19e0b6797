"""Speed benchmark of the networks: forward latency at batch 1 and 16, one training step (forward + backward + Adam)
at batch 16, per-stage times and peak memory, for E2TKFace (equivariant / exported encoder) and PRNet.

Owns benchmarks/results/model.md. Run from the repository root:  python -m benchmarks.model  [--threads 2]
All variants are timed in one process, round-robin (A B C A B C ...), so that load from other processes hits them
alike; peak RSS is measured per variant in a fresh subprocess. Times: median (and min) of repeated runs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "model.md"

# name -> (registry name, kwargs, use export twin, channels_last, precision). precision: "fp32"; "bf16" = autocast
# (training and inference, master weights fp32); "bf16-weights" = the export twin's weights cast to bf16 once, as
# -predict --precision=bf16 runs it (inference only, no training step); "bf16-weights-compiled" = that, wrapped in
# torch.compile as -predict --compile runs it (compile time reported separately; no per-stage times).
VARIANTS = {
    "e2tkface": ("e2tkface", {}, False, False, "fp32"),
    "e2tkface-export": ("e2tkface", {}, True, False, "fp32"),
    "prnet": ("prnet", {}, False, False, "fp32"),
    "prnet-export": ("prnet", {}, True, False, "fp32"),
    "e2tkface-bf16": ("e2tkface", {}, False, False, "bf16"),
    "prnet-bf16": ("prnet", {}, False, False, "bf16"),
    "e2tkface-export-bf16": ("e2tkface", {}, True, True, "bf16-weights"),
    "prnet-export-bf16": ("prnet", {}, True, True, "bf16-weights"),
    "e2tkface-export-bf16-compiled": ("e2tkface", {}, True, True, "bf16-weights-compiled"),
    "prnet-export-bf16-compiled": ("prnet", {}, True, True, "bf16-weights-compiled"),
    "e2tkface-export-cl": ("e2tkface", {}, True, True, "fp32"),
    "prnet-cl": ("prnet", {}, False, True, "fp32"),
}
LABELS = {
    "e2tkface": "E2TKFace (equivariant encoder)",
    "e2tkface-export": "E2TKFace (export twin: plain encoder, BN folded)",
    "prnet": "PRNet",
    "prnet-export": "PRNet (export twin: BN folded)",
    "e2tkface-bf16": "E2TKFace (equivariant encoder), bf16 autocast",
    "prnet-bf16": "PRNet, bf16 autocast",
    "e2tkface-export-bf16": "E2TKFace (export twin), bf16 weights, channels_last",
    "prnet-export-bf16": "PRNet (export twin), bf16 weights, channels_last",
    "e2tkface-export-bf16-compiled": "E2TKFace (export twin), bf16 weights, channels_last, torch.compile",
    "prnet-export-bf16-compiled": "PRNet (export twin), bf16 weights, channels_last, torch.compile",
    "e2tkface-export-cl": "E2TKFace (export twin), channels_last",
    "prnet-cl": "PRNet, channels_last",
}
DEFAULT_VARIANTS = ("e2tkface", "e2tkface-export", "prnet", "prnet-export", "e2tkface-bf16", "prnet-bf16",
                    "e2tkface-export-bf16", "prnet-export-bf16", "e2tkface-export-bf16-compiled",
                    "prnet-export-bf16-compiled")


def _prnet_twin(variant: str) -> str:
    """The PRNet variant an E2TKFace variant is compared with (same export / layout / precision suffix)."""
    twin = "prnet" + variant[len("e2tkface"):] if variant.startswith("e2tkface") else variant
    return twin if twin in VARIANTS else "prnet"


def _stages(net, prnet: bool):
    """(name, callable(x) -> y) of the network's stages in order."""
    if prnet:
        return [("encoder", net.encoder), ("decoder", net.decoder)]
    return [("encoder", net.encoder), ("attention neck", lambda t: net.global_layer(net.neck(t))),
            ("decoder", net.decoder)]


class _Subject:
    """One benchmarked variant: the network, its input layout and precision context, an optimiser."""

    def __init__(self, variant: str, big_batch: int):
        import torch

        import model

        name, kwargs, export, channels_last, precision = VARIANTS[variant]
        torch.manual_seed(0)
        t0 = time.perf_counter()
        net = model.build_model(name, **kwargs)
        self.build_s = time.perf_counter() - t0
        if export:
            net = net.export()
        if channels_last:
            model.to_channels_last(net)
        weights_cast = precision.startswith("bf16-weights")
        dtype = torch.bfloat16 if weights_cast else torch.float32
        net = net.to(dtype)
        self.variant, self.net, self.is_prnet = variant, net, name == "prnet"
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.precision = "fp32" if weights_cast else precision
        self.trainable = not weights_cast
        self.compiled = precision.endswith("-compiled")
        size = model.summary(net)
        self.params, self.macs = size.params, size.macs
        self.loss_fn = model.WeightedPosmapLoss(torch.ones(256, 256))
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=2e-4)
        g = torch.Generator().manual_seed(1)
        self.inputs = {b: torch.rand(b, 3, 256, 256, generator=g).contiguous(memory_format=self.fmt).to(dtype)
                       for b in (1, big_batch)}
        self.target = torch.rand(big_batch, 3, 256, 256, generator=g)
        self.big_batch = big_batch
        self.compile_s = None
        if self.compiled:                      # compile (or load from inductor's cache) for both batch sizes now
            self.net = torch.compile(self.net)
            t0 = time.perf_counter()
            with torch.no_grad():
                for x in self.inputs.values():
                    self.net(x)
            self.compile_s = time.perf_counter() - t0

    def mode(self, training: bool) -> None:
        """Switch train/eval only when it changes: e2cnn re-expands every filter on each eval() call, which is
        set-up work, not inference."""
        if self.net.training != training:
            self.net.train(training)

    def ctx(self):
        import model

        return model.autocast_context("cpu", self.precision)

    def infer(self, batch: int):
        """Callable running one eval-mode forward at ``batch``."""
        import torch

        x = self.inputs[batch]

        def run():
            self.mode(False)
            with torch.no_grad(), self.ctx():
                self.net(x)
        return run

    def stage_inputs(self, batch: int) -> list:
        """[(stage name, callable)] each timing one stage on the previous stage's output."""
        import torch

        self.mode(False)
        calls, t = [], self.inputs[batch]
        if self.compiled:
            return calls
        with torch.no_grad(), self.ctx():
            for stage, fn in _stages(self.net, self.is_prnet):
                def run(fn=fn, inp=t):
                    self.mode(False)
                    with torch.no_grad(), self.ctx():
                        fn(inp)
                calls.append((stage, run))
                t = fn(t)
        return calls

    def train_step(self):
        """One training step at the big batch: forward + loss + backward + Adam."""
        self.mode(True)
        self.opt.zero_grad(set_to_none=True)
        with self.ctx():
            out = self.net(self.inputs[self.big_batch])
        loss = self.loss_fn(out.float(), self.target)
        loss.backward()
        self.opt.step()


def _interleaved(calls: dict, reps: int, warmup: int = 1) -> dict:
    """Time every callable reps times, round-robin (A B C A B C ...) so load changes hit all alike.

    Returns {key: {"median", "min", "reps"}} in seconds, after ``warmup`` untimed rounds."""
    times = {k: [] for k in calls}
    for i in range(warmup + reps):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v), "reps": len(v)} for k, v in times.items()}


def run_timings(variants: list[str], threads: int, reps: int, big_batch: int) -> dict:
    """All timings of all variants in this process, interleaved; returns {variant: {...}}."""
    import torch

    torch.set_num_threads(threads)
    subjects = {v: _Subject(v, big_batch) for v in variants}
    out = {v: {"variant": v, "label": LABELS[v], "threads": threads, "build_s": s.build_s, "params": s.params,
               "macs": s.macs, "compile_s": s.compile_s} for v, s in subjects.items()}
    for batch, n in ((1, 3 * reps), (big_batch, reps)):
        res = _interleaved({v: s.infer(batch) for v, s in subjects.items()}, n)
        for v in variants:
            out[v][f"infer_b{batch}"] = res[v]
        stage_calls = {(v, st): fn for v, s in subjects.items() for st, fn in s.stage_inputs(batch)}
        res = _interleaved(stage_calls, n)
        for (v, st), r in res.items():
            out[v].setdefault(f"stages_b{batch}", {})[st] = r
        print(f"inference at batch {batch}: done", file=sys.stderr, flush=True)
    res = _interleaved({v: s.train_step for v, s in subjects.items() if s.trainable}, reps)
    for v in variants:
        out[v][f"train_b{big_batch}"] = res.get(v)
    print("training steps: done", file=sys.stderr, flush=True)
    return out


def run_memory(variant: str, threads: int, big_batch: int) -> dict:
    """Peak RSS of a fresh process that builds the variant, runs inference at batch 1 and big_batch and two
    training steps at big_batch."""
    import torch

    torch.set_num_threads(threads)
    s = _Subject(variant, big_batch)
    s.infer(1)()
    s.infer(big_batch)()
    if s.trainable:
        s.train_step()
        s.train_step()
    return {"variant": variant, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM (ru_maxrss would include the parent's peak, which
    Linux carries over a fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _fmt(t: dict | None) -> str:
    return "-" if t is None else f"{t['median']:.3f} ({t['min']:.3f})"


def write_report(results: list[dict], args, load_before, load_after, path: Path) -> str:
    """Markdown report; returns its text."""
    by = {r["variant"]: r for r in results}
    bb = args.batch
    lines = [
        "# Network speed: E2TKFace vs PRNet (CPU)",
        "",
        f"- Date (UTC): {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M}",
        f"- Machine: {_machine()}",
        f"- Threads: torch.set_num_threads({args.threads}); variants timed round-robin in one process; peak RSS"
        " per variant in a fresh process (build, inference at batch 1 and the big batch, two training steps)",
        f"- Command: `python -m benchmarks.model {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- Load average before / after: {load_before} / {load_after} (other processes sharing the cores inflate"
        " and scatter the times; compare ratios measured in the same run)",
        f"- Times in seconds: median (min) of {args.reps} timed reps at batch {bb} and {3 * args.reps} at batch 1,"
        " after one warm-up round. Training step = forward + weighted-MSE loss + backward + Adam at batch "
        f"{bb} (fp32 master weights; '-' for inference-only variants). Inference in eval mode under "
        "torch.no_grad(). Export twin = model.export(): E2TKFace's encoder as plain convolutions, every foldable "
        "BatchNorm folded into its convolution.",
        "",
        f"| model | params | GMAC/image | infer b1 | infer b{bb} | train step b{bb} | peak RSS (MB) | "
        f"GFLOP/s infer b1 | GFLOP/s infer b{bb} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        gmac = f"{r['macs'] / 1e9:.2f}" if "macs" in r else "-"
        rates = [f"{2 * r['macs'] * b / r[f'infer_b{b}']['median'] / 1e9:.0f}" if "macs" in r else "-" for b in (1, bb)]
        lines.append(f"| {r['label']} | {r['params']:,} | {gmac} | {_fmt(r['infer_b1'])} | "
                     f"{_fmt(r[f'infer_b{bb}'])} | {_fmt(r[f'train_b{bb}'])} | {r['peak_rss_mb']:.0f} | "
                     + " | ".join(rates) + " |")
    ref = by.get("prnet")
    if ref:
        lines += ["", "Ratios to PRNet measured in the same run (median; < 1 = faster than PRNet):", "",
                  f"| model | infer b1 | infer b{bb} | train step b{bb} |", "|---|---:|---:|---:|"]
        for r in results:
            base = by.get(_prnet_twin(r["variant"]), ref)
            cells = [f"{r[k]['median'] / base[k]['median']:.2f}" if r.get(k) and base.get(k) else "-"
                     for k in ("infer_b1", f"infer_b{bb}", f"train_b{bb}")]
            lines.append(f"| {r['label']} (vs {base['label']}) | " + " | ".join(cells) + " |")
    lines += ["", "Per-stage inference times, median (min) seconds:", "",
              "| model | batch | " + " | ".join(["encoder", "attention neck", "decoder"]) + " |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        for batch in (1, bb):
            st = r.get(f"stages_b{batch}")
            if not st:                                    # compiled variants are timed whole only
                continue
            cells = [_fmt(st[s]) if s in st else "-" for s in ("encoder", "attention neck", "decoder")]
            lines.append(f"| {r['label']} | {batch} | " + " | ".join(cells) + " |")
    compiled = [r for r in results if r.get("compile_s") is not None]
    if compiled:
        lines += ["", "torch.compile time before the first timed call (both batch sizes; inductor's on-disk cache "
                  "makes later runs much shorter): " + "; ".join(f"{r['label']} {r['compile_s']:.0f} s"
                                                                 for r in compiled) + "."]
    lines += ["", "Targets (2 threads, E2TKFace): inference <= 0.060 s at batch 1 and <= 1.2 s at batch 16, training "
              "step <= 3.8 s at batch 16. Published implementation: 0.133 / 2.30 / 5.45 s; PRNet 0.074 / 1.94 / "
              "4.60 s. At 6.75 GMAC per image the targets ask for 2 x 6.75 / 0.060 = 225 GFLOP/s at batch 1 and "
              "2 x 6.75 x 16 / 1.2 = 180 GFLOP/s at batch 16 (compare the GFLOP/s columns above). Medians of this "
              "run against the targets:", "",
              f"| E2TKFace variant | infer b1 <= 0.060 | infer b{bb} <= 1.2 | train step b{bb} <= 3.8 |",
              "|---|---|---|---|"]
    for r in results:
        if r["variant"].startswith("e2tkface") and bb == 16:
            cells = [("met" if r[k]["median"] <= limit else "not met") + f" ({r[k]['median']:.3f})" if r.get(k)
                     else "-" for k, limit in (("infer_b1", 0.060), (f"infer_b{bb}", 1.2), (f"train_b{bb}", 3.8))]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines.append("")
    text = "\n".join(lines)
    if not args.no_write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads per measurement (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions at the big batch (batch 1 gets 3x)")
    ap.add_argument("--batch", type=int, default=16, help="the big batch size (default 16)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown report path")
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_memory(args.worker, args.threads, args.batch)))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    by_variant = run_timings(variants, args.threads, args.reps, args.batch)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    for v in variants:
        cmd = [sys.executable, "-m", "benchmarks.model", "--worker", v, "--threads", str(args.threads),
               "--batch", str(args.batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        if proc.returncode != 0:
            print(f"error: measuring the memory of {v} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        by_variant[v].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{v}: memory done", file=sys.stderr, flush=True)
    results = [by_variant[v] for v in variants]
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(write_report(results, args, load_before, load_after, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
