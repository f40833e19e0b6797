"""The escape study's report: every finished run folded into results/escape.json in a compact form (verdict, step
left, NME, per block group the median diagnostics), and the markdown tables drawn from it: one row per change to the
recipe and network (table) and the per-block comparison of runs that left against runs that stayed (mechanism).
`python -m benchmarks.escape report` prints them; benchmarks.convergence's report places them in convergence.md."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, write_json
from benchmarks.escape.harness import CHANGES, DEFAULTS, apply_changes, blocks, build, left_mean, norm_ratio
from benchmarks.escape.harness import run_name, step_left
from benchmarks.escape.harness import weight_norm
from benchmarks.study_data import evaluate_nme, study_data

RESULTS = RESULTS_DIR / "escape.json"
GROUPS = (("encoder, neck, global", lambda n: not n.startswith("decoder.")),
          ("decoder 0-6 (to 32 px)", lambda n: n.startswith("decoder.") and int(n.split(".")[1]) <= 6),
          ("decoder 7-15 (64-128 px)", lambda n: n.startswith("decoder.") and 7 <= int(n.split(".")[1]) <= 15))


def summarise(record: dict) -> dict:
    """The compact form of a run kept in results/escape.json: verdict, step left, NME, and per block group the
    median between-image share, gradient norm and relative Adam step at every BLOCK_EVERY steps."""
    groups = {}
    for label, member in GROUPS:
        rows = []
        for row in record["blocks"]:
            values = np.array([v[:3] + [v[3] if record.get("norm") == "weights" else float("nan")]
                               for k, v in row.items() if k != "step" and member(k)], dtype=np.float64)
            with warnings.catch_warnings():                 # runs logged before the weight norm was: nan
                warnings.simplefilter("ignore", RuntimeWarning)
                rows.append([row["step"], *np.nanmedian(values, axis=0).round(6).tolist()])
        groups[label] = rows
    return {"name": run_name(record["spec"]), "spec": record["spec"], "left": left_mean(record),
            "step_left": step_left(record), "nme2d": record["nme2d"], "loss_end": record["log"][-1][1],
            "spread_end": record["log"][-1][2], "groups": groups, "weights_end": record.get("weights_end"),
            "output_norm": record.get("output_norm"),
            "train_seconds": record["train_seconds"],
            "date": record["date"], "machine": record["machine"]}


def change_of(spec: dict) -> str:
    """The CHANGES name a run's spec belongs to (ignoring the seed and the network), or its own difference from
    DEFAULTS. A setting the spec lacks (runs made before it existed) ran at its default."""
    spec = {**DEFAULTS, **spec}
    for name, change in CHANGES.items():
        if {**DEFAULTS, **change, "seed": spec["seed"], "model": spec["model"], "encoder": spec["encoder"]} == spec:
            return name
    return run_name({**spec, "seed": DEFAULTS["seed"]})


def _range(values, fmt="{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def table(runs: list[dict], mean_face: float | None) -> list[str]:
    """Markdown: one row per change x network: seeds that left the mean face, the step they left it, NME."""
    rows = ["| change to the demo recipe | network | left the mean face / seeds | step left (median, range) | "
            "2D NME at the end, runs that left | runs that stayed: NME (last logged loss) |",
            "|---|---|---|---|---|---|"]
    keyed: dict[tuple, list] = {}
    for r in runs:
        net = ("PRNet" if r["spec"]["model"] == "prnet" else f"E2TKFace {r['spec']['encoder']}") + \
            f", {r['spec']['input_size']} px"
        keyed.setdefault((change_of(r["spec"]), net), []).append(r)
    order = list(CHANGES)
    for (change, net), group in sorted(keyed.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order
                                                                        else len(order), kv[0])):
        left = [r for r in group if r["left"]]
        steps = [r["step_left"] for r in left if r["step_left"] is not None]
        stayed = [r for r in group if not r["left"]]
        rows.append(f"| {change} | {net} | {len(left)} / {len(group)} | "
                    f"{int(np.median(steps)) if steps else '–'} ({_range(steps, '{:d}')}) | "
                    + (f"{_range([r['nme2d'] for r in left])} %" if left else "–") + " | "
                    + (f"{_range([r['nme2d'] for r in stayed])} % (loss {_range([r['loss_end'] for r in stayed])} "
                       f"× the mean map's, seeds {', '.join(str(r['spec']['seed']) for r in stayed)})"
                       if stayed else "–") + " |")
    if mean_face is not None:
        rows += ["", f"The mean face scores {mean_face:.2f} % on the same test images."]
    return rows


def mechanism(runs: list[dict], steps=(50, 100, 150, 200, 300)) -> list[str]:
    """Markdown: per block group, the median over runs that left / stayed of the between-image share / the gradient
    norm / Adam's relative step / the weight norm relative to initialisation, at the given steps."""
    rows = ["| block group | runs | " + " | ".join(f"step {s}" for s in steps) + " | weights at the end / at the "
            "start |", "|---|---|" + "---|" * (len(steps) + 1)]
    for label, _ in GROUPS:
        for verdict, members in (("left", [r for r in runs if r["left"]]),
                                 ("stayed", [r for r in runs if not r["left"]])):
            if not members:
                continue
            cells = []
            for s in steps:
                values = [row[1:] for r in members for row in r["groups"][label] if row[0] == s]
                if not values:
                    cells.append("–")
                    continue
                share, grad, rel, norm = np.median(np.array(values), axis=0)
                cells.append(f"{share:.2f} / {grad:.0e} / {rel:.0e}" + ("" if np.isnan(norm) else f" / {norm:.2f}"))
            ends = [r["weights_end"][label] for r in members if r.get("weights_end")]
            cells.append(f"{_range(ends)} ({len(ends)} runs)" if ends else "–")
            rows.append(f"| {label} | {verdict} ({len(members)}) | " + " | ".join(cells) + " |")
    return rows


def output_growth(runs: list[dict], steps=(50, 100, 150, 200, 300)) -> list[str]:
    """Markdown: the output layer's weight norm (it starts at zero) at the given steps, median and range over the
    runs that left / stayed; runs logged before it was recorded are left out."""
    rows = ["| runs | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for verdict, members in (("left", [r for r in runs if r["left"] and r.get("output_norm")]),
                             ("stayed", [r for r in runs if not r["left"] and r.get("output_norm")])):
        if not members:
            continue
        cells = []
        for s in steps:
            values = [norm for r in members for step, norm in r["output_norm"] if step == s]
            cells.append("–" if not values else f"{values[0]:.4f}" if min(values) == max(values) else
                         f"{np.median(values):.4f} ({_range(values, '{:.4f}')})")
        rows.append(f"| {verdict} ({len(members)}) | " + " | ".join(cells) + " |")
    return rows if len(rows) > 2 else []


def weights_at_end(spec: dict, saved: Path) -> dict:
    """{block group: median over its blocks of weight_norm at the end / at initialisation}, the initialisation
    rebuilt from the run's seed as run() built it, the end read from the saved state dict."""
    import torch

    from engine.train import seed_everything

    spec = {**DEFAULTS, **spec}
    seed_everything(spec["seed"])
    model, _ = build(spec)
    apply_changes(model, spec, np.ones(3, np.float32))          # the spread buffer comes with the saved state
    start = {name: weight_norm(m) for name, m in blocks(model)}
    model.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
    ratios = {name: norm_ratio(weight_norm(m), start[name]) for name, m in blocks(model)}
    return {label: round(float(np.nanmedian([r for n, r in ratios.items() if member(n)])), 4)
            for label, member in GROUPS}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": [], "mean_face_nme2d": None}


def cmd_report(args) -> None:
    """Fold every finished run under --work into results/escape.json (a run there of the same name is replaced)."""
    from data.dataset import AFLWEvalSet
    from engine.evaluate import MeanPosmapModel
    from faceutil.uv import uv_layout

    results = load_results()
    runs = {r["name"]: r for r in results["runs"]}
    for path in sorted(Path(args.work).glob("*.json")):
        record = json.loads(path.read_text())
        saved = path.parent / "weights" / (path.stem + ".pt")
        if saved.is_file():
            record["weights_end"] = weights_at_end(record["spec"], saved)
        record = summarise(record)
        runs[record["name"]] = record
    if results["mean_face_nme2d"] is None:
        train_root, test_raw = study_data()
        test = AFLWEvalSet(test_raw)
        results["mean_face_nme2d"] = evaluate_nme(MeanPosmapModel(train_root), [test[i] for i in range(len(test))],
                                                  uv_layout("synthetic").kpt_ind)
    results["runs"] = [runs[k] for k in sorted(runs)]
    write_json(RESULTS, results)
    print("\n".join(table(results["runs"], results["mean_face_nme2d"])))
    print()
    print("\n".join(mechanism([r for r in results["runs"] if change_of(r["spec"]) in ("baseline", "threads2")])))
