"""The README's main command over several seeds (issue 22): `python torchrun.py --demo --seed=S` as a user runs it,
each seed in its own folder, then one table: NME before/after against the mean face, whether it learned, epochs,
minutes, and how busy the cores were (the child's CPU time / wall time / cores: below SHARED_BELOW something else
was running, and its minutes say nothing about speed).

    python -m benchmarks.demo_seeds run --seeds 0 1 2 3 4 [--time-limit 0]   # skips seeds already done
    python -m benchmarks.demo_seeds report [--name demo]                      # results/<name>.md + <name>.json
    python -m benchmarks.demo_seeds crosstest --work W [--count 400]          # -> results/demo_crosstest.json

crosstest: every finished seed's network (run/final.pth) and its own mean face on one common synthetic test set
(count AFLW2000-format faces, seed CROSS_SEED), so that the seeds' ratios differ by their training only and not by
the sampling of their own small test sets.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, write_json

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("savedmodel") / "demo-seeds"
SHARED_BELOW = 0.8          # CPU busy share below this: the cores were shared (a lone demo keeps 2 cores ~0.9 busy)
GOAL_RATIO, GOAL_MINUTES = 0.4, 7.0
CROSS_SEED = 100           # synthesis seed of the common test set of crosstest (the demo's own use seed + 1)
LEFT_AT = 0.25              # an epoch whose mean spread ratio (engine.collapse) reaches this has left the mean face


def run_seed(seed: int, work: Path, time_limit: float | None, flags: tuple[str, ...] = ()) -> dict:
    """One `torchrun.py --demo [flags]` in work/s<seed>; returns and writes work/s<seed>/run.json (wall, CPU share,
    exit status)."""
    out = work / f"s{seed}"
    cmd = [sys.executable, str(ROOT / "torchrun.py"), "--demo", f"--seed={seed}", f"--out={out}"]
    cmd += ([] if time_limit is None else [f"--time-limit={time_limit:g}"]) + list(flags)
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record = {"seed": seed, "command": " ".join(["python", "torchrun.py", *cmd[2:]]), "rc": rc,
              "wall_seconds": round(wall, 1),
              "cpu_busy": round(cpu / (wall * (os.cpu_count() or 1)), 3),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    write_json(out / "run.json", record)
    return record


def collect(work: Path) -> list[dict]:
    """Per seed folder with a demo_summary.json: its summary merged with run.json where that exists."""
    rows = []
    for folder in sorted(work.glob("s*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else -1):
        summary = folder / "demo_summary.json"
        if not (folder.name[1:].isdigit() and summary.is_file()):
            continue
        row = {"seed": int(folder.name[1:]), **json.loads(summary.read_text())}
        if (folder / "run.json").is_file():
            row.update(json.loads((folder / "run.json").read_text()))
        history = folder / "run" / "history.json"
        epochs = json.loads(history.read_text()) if history.is_file() else []
        row["step_left"] = next((e["step"] for e in epochs if e.get("spread_ratio", 0.0) >= LEFT_AT), None)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| seed | 2D NME untrained | trained | mean face | trained / mean face | learned | left the mean face "
             "by step | epochs | training min | whole command min | cores busy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        busy = r.get("cpu_busy")
        lines.append(f"| {r['seed']} | {r['nme2d_before']:.2f} | {r['nme2d_after']:.2f} | {r['nme2d_mean_face']:.2f} "
                     f"| {r['after_over_mean_face']:.3f} | {'yes' if r['learned'] else 'NO'} "
                     f"| {r.get('step_left') or '–'} "
                     f"| {r['epochs_trained']} "
                     f"| {r['train_seconds'] / 60:.1f} | "
                     f"{r['wall_seconds'] / 60 if 'wall_seconds' in r else r['total_seconds'] / 60:.1f} | "
                     + ("–" if busy is None else f"{busy:.2f}" + (" (shared)" if busy < SHARED_BELOW else "")) + " |")
    return lines


def summary_line(rows: list[dict]) -> str:
    ratios = [r["after_over_mean_face"] for r in rows]
    after = [r["nme2d_after"] for r in rows]
    alone = [r for r in rows if r.get("cpu_busy", 0.0) >= SHARED_BELOW]
    minutes = [r["wall_seconds"] / 60 for r in alone]
    speed = (f"whole command {min(minutes):.1f}–{max(minutes):.1f} min on {len(alone)} seed(s) run alone"
             if alone else "no seed ran alone, so no time is claimed")
    faces = [r["nme2d_mean_face"] for r in rows]
    left = [r["step_left"] for r in rows if r.get("step_left")]
    return (f"{len(rows)} seeds: trained 2D NME {min(after):.2f}–{max(after):.2f} % (median "
            f"{statistics.median(after):.2f} %), {min(ratios):.2f}–{max(ratios):.2f} × the mean face "
            f"({min(faces):.2f}–{max(faces):.2f} % on each seed's own test faces); "
            f"{sum(r['learned'] for r in rows)} of {len(rows)} learned; left the mean face (spread ratio "
            f"≥ {LEFT_AT}) "
            f"by step {min(left) if left else '–'}–{max(left) if left else '–'}; "
            f"goal ≤ {GOAL_RATIO} × the mean face {'met' if max(ratios) <= GOAL_RATIO else 'NOT met'} "
            f"({sum(x <= GOAL_RATIO for x in ratios)} of {len(rows)} seeds within it); {speed}.")


def cmd_report(args) -> None:
    from faceutil.sampleio import atomic_write_bytes

    rows = collect(Path(args.work))
    if not rows:
        raise SystemExit(f"No finished demo under {args.work}: run `python -m benchmarks.demo_seeds run` first.")
    test_count = "/".join(str(n) for n in sorted({r.get("test_images", "?") for r in rows}, key=str))
    md = ["# The demo over several seeds", "",
          f"Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by `python -m benchmarks.demo_seeds report "
          f"--work {args.work} --name {args.name}`. Each seed is the README's command `python torchrun.py --demo "
          f"--seed=S` (commands below); 2D NME on the demo's {test_count} synthetic AFLW2000-format test faces; the "
          "mean face predicts the training set's mean position map for every image. 'cores busy': the command's CPU "
          f"time / wall time / cores; below {SHARED_BELOW} the cores were shared with other jobs and its minutes are "
          "not a speed figure.",
          "", summary_line(rows), ""] + table(rows) + ["", "Commands: " + "; ".join(
              sorted({f"`{r['command']}`" for r in rows if 'command' in r}) or ["(not recorded)"]), ""]
    atomic_write_bytes(RESULTS_DIR / f"{args.name}.md", "\n".join(md).encode("utf-8"))
    keep = ("seed", "nme2d_before", "nme2d_after", "nme2d_mean_face", "after_over_mean_face", "learned", "step_left",
            "epochs_trained", "train_seconds", "total_seconds", "wall_seconds", "cpu_busy", "spread_ratio", "command",
            "date")
    write_json(RESULTS_DIR / f"{args.name}.json", {"summary": summary_line(rows), "runs": [
        {k: r[k] for k in keep if k in r} for r in rows]})
    print(summary_line(rows))


def cmd_crosstest(args) -> None:
    import torch

    from config import Config
    from engine.evaluate import MeanPosmapModel, run_evaluation
    from faceutil.facemodel import load_model
    from faceutil.process import process_dataset
    from faceutil.synthetic import synthesize_dataset
    from faceutil.uv import uv_layout

    torch.set_num_threads(2)
    root = Path("savedmodel") / f"demo-crosstest-{args.count}"
    raw, test = root / "AFLW2000", root / "AFLW2000-crop"
    if len(list(raw.glob("*.mat"))) < args.count:
        synthesize_dataset(raw, "AFLW2000", args.count, CROSS_SEED, model=load_model("synthetic"))
    process_dataset(raw, test, bfm="synthetic", progress=False)
    uv, results = uv_layout("synthetic"), {}
    for row in collect(Path(args.work)):
        folder = Path(args.work) / f"s{row['seed']}"
        cfg = Config(predict_dir=str(test), out=str(root / "eval" / folder.as_posix().replace("/", "_")),
                     bfm="synthetic", device="cpu", test=True)
        sources = (("trained", {"checkpoint": folder / "run" / "final.pth"}),
                   ("mean-face", {"model": MeanPosmapModel(folder / "data" / "300W_LP-crop")}))
        nme = {tag: run_evaluation(cfg, **kw, tag=tag, uv=uv, quiet=True).summary["pt3d_68 2D"]["mean"]
               for tag, kw in sources}
        results[f"s{row['seed']}"] = {"trained": round(nme["trained"], 2), "mean_face": round(nme["mean-face"], 2),
                                      "ratio": round(nme["trained"] / nme["mean-face"], 3),
                                      "own_test_ratio": round(row["after_over_mean_face"], 3)}
        print(args.work, f"s{row['seed']}", results[f"s{row['seed']}"], flush=True)
    path = RESULTS_DIR / "demo_crosstest.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything[f"{args.work} on {args.count} faces"] = {
        "date": f"{_dt.datetime.now():%Y-%m-%d %H:%M}", "test_faces": args.count, "test_seed": CROSS_SEED,
        "seeds": results}
    write_json(path, everything)


def cmd_run(args) -> None:
    for seed in args.seeds:
        if (Path(args.work) / f"s{seed}" / "demo_summary.json").is_file():
            print(f"seed {seed}: done already")
            continue
        record = run_seed(seed, Path(args.work), args.time_limit, tuple(args.flags))
        print(f"seed {seed}: exit {record['rc']}, {record['wall_seconds'] / 60:.1f} min, cores busy "
              f"{record['cpu_busy']:.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the demo for each seed not done yet")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--time-limit", type=float, default=None,
                   help="minutes passed on as --time-limit (default: the demo's own, 7; 0 lifts it)")
    r.add_argument("--flags", action="append", default=[],
                   help="one more torchrun.py flag, repeatable, e.g. --flags=--warmup=500 --flags=--lr=3e-4")
    rp = sub.add_parser("report", help="write results/<name>.md and <name>.json")
    rp.add_argument("--name", default="demo", help="file name of the report (default demo)")
    c = sub.add_parser("crosstest", help="every seed's network on one common test set -> results/demo_crosstest.json")
    c.add_argument("--count", type=int, default=400, help="faces in the common test set (default 400)")
    for s in (r, rp, c):
        s.add_argument("--work", default=str(WORK))
    args = p.parse_args(argv)
    {"run": cmd_run, "report": cmd_report, "crosstest": cmd_crosstest}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
