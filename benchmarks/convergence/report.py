"""The convergence report: results/convergence.md (+ convergence.json, convergence.png) from the committed
convergence.json and every finished probe, escape probe and learning curve under --out (a run there replaces the
committed one of the same name). Owns the tables and verdicts drawn from saved records, the findings placed on top,
the figure (through benchmarks.plots) and benchmarks.escape's section; it runs no training."""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, machine_line, write_json
from benchmarks.convergence.escape_probes import ESCAPE_DEFAULTS, ESCAPE_ORDER, escape_name, escape_specs
from benchmarks.convergence.escape_probes import escape_verdict
from benchmarks.convergence.curves import CURVE_FORMER
from benchmarks.convergence.probes import PROBE_DEFAULTS, probe_name, probe_specs
from benchmarks.escape import harness as escape
from benchmarks.escape import report as escape_report


def verdict(record: dict) -> str:
    """What a memorisation probe shows, from its last 10 losses against the mean-map loss of the same images."""
    end, ref = float(np.mean(record["losses"][-10:])), record["mean_map_loss"]
    if not math.isfinite(end):
        return "diverged"
    if end < 0.25 * ref:
        return "memorises"
    if end < 0.9 * ref:
        return "learns"
    if end < 1.1 * ref:
        return "stays on the mean"
    return "stuck above the mean"


def probe_rows(records: list) -> list[str]:
    rows = ["| network | head | lr | warm-up | decay on norm/bias | steps | loss @25 | @50 | @100 | end "
            "| end / mean-map loss | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        sp, L = r["spec"], r["losses"]
        net = "PRNet" if sp["model"] == "prnet" else f"E2TKFace {sp['encoder']} ×{sp['width_mult']}"
        if sp["input_size"] != PROBE_DEFAULTS["input_size"]:
            net += f", {sp['input_size']} px"
        if not sp.get("tail_relu", True):
            net += ", no ReLU in the 3-ch tail"
        end = float(np.mean(L[-10:]))
        at = [f"{L[i]:.4f}" if i < len(L) else "-" for i in (24, 49, 99)]
        decay = "yes" if sp["decay_norm_bias"] else "no"
        rows.append(f"| {net} | {sp['head']} | {sp['lr']:g} | {sp['warmup']} | {decay} | {len(L)} | {' | '.join(at)} "
                    f"| {end:.4f} | {end / r['mean_map_loss']:.2f} | {verdict(r)} |")
    return rows


def step_size_rows(records: list, step: str) -> list[str]:
    """Relative optimiser step ||dw|| / ||w|| per layer group at `step` (groups summarised to a few columns)."""
    cols = ("encoder", "neck.stage0", "neck.stage1", "global", "decoder.0", "decoder.4", "decoder.10", "decoder.14",
            "decoder.16")
    rows = ["| network | head | lr | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for r in records:
        g = r["grad_norms"].get(step)
        if g is None or len(next(iter(g.values()))) < 3:
            continue
        sp = r["spec"]
        net = "PRNet" if sp["model"] == "prnet" else f"E2TKFace {sp['encoder']}"
        cells = [("from 0" if g[c][1] == 0 else f"{g[c][2]:.1e}") if c in g else "-" for c in cols]
        lr = f"{sp['lr']:g}" + (f", warm-up {sp['warmup']}" if sp["warmup"] else "")
        rows.append(f"| {net} | {sp['head']} | {lr} | " + " | ".join(cells) + " |")
    return rows


def escape_rows(records: list) -> list[str]:
    """Markdown table rows of escape probes."""
    rows = ["| probe | loss at step 50 / 100 / 200 / end (× mean map) | output spread at end (px) | encoder grad "
            "norm, median over steps 50–end | encoder rank init → end | verdict |", "|---|---|---|---|---|---|"]
    for r in records:
        by_step = {row[0]: row for row in r["log"]}
        m = r["mean_map_loss"]
        losses = " / ".join(f"{by_step[s][1] / m:.2f}" if s in by_step else "-" for s in (50, 100, 200))
        end = r["log"][-1]
        grad = float(np.median([row[3] for row in r["log"] if row[0] >= 50]))
        rows.append(f"| {escape_name(r['spec'])} | {losses} / {end[1] / m:.2f} | {end[2]:.1f} | {grad:.1e} | "
                    f"{r['encoder_rank'][0]:.1f} → {r['encoder_rank'][1]:.1f} | {escape_verdict(r)} |")
    return rows


GOAL_MINUTES = 60.0


def curve_goal(spec: dict) -> float:
    """The NME goal (%) within GOAL_MINUTES of a curve: issue 12's 6.0 on the 800-image training set, issue 22's 5.0
    on a larger one."""
    return 6.0 if spec.get("train_count", 800) <= 800 else 5.0


def curve_reading(curve: dict) -> str:
    """One sentence computed from a curve: where it ended, its best point, and the issue's goal."""
    pts = curve["points"]
    best = min(pts, key=lambda p: p["nme2d"])
    within = [p for p in pts if p["minutes"] <= GOAL_MINUTES]
    spec, last = curve["spec"], pts[-1]
    goal = curve_goal(spec)
    met = any(p["nme2d"] <= goal for p in within)
    finished = last["epoch"] >= spec["epochs"] or last["minutes"] >= spec["minutes"] - 0.5
    verdict_text = "met" if met else ("not met" if finished else "not met so far (the run has not finished)")
    return (f"Last point {pts[-1]['nme2d']:.2f} % after {pts[-1]['minutes']:.1f} training minutes "
            f"({pts[-1]['nme2d'] / curve['mean_face_nme2d']:.2f} of the mean face); best {best['nme2d']:.2f} % at "
            f"{best['minutes']:.1f} min. Goal (≤ {goal:g} % within {GOAL_MINUTES:g} min): "
            f"{verdict_text}.")


def draw_curves(curves: list, path: Path) -> Path:
    """Test NME vs training minutes, one line per curve, each run's mean-face NME dashed, the goal dotted."""
    from benchmarks.plots import Panel, Series, save_figure

    series = [Series(c["label"], [p["minutes"] for p in c["points"]], [p["nme2d"] for p in c["points"]])
              for c in curves]
    references = sorted({round(c["mean_face_nme2d"], 2) for c in curves})
    xmax = max([p["minutes"] for c in curves for p in c["points"]] + [GOAL_MINUTES])
    series += [Series(f"mean face {r:.2f} %", [0, xmax], [r, r], reference=True) for r in references]
    series += [Series(f"goal {g:g} %", [0, xmax], [g, g], colour="#444444", markers=False, width=1.0, linestyle=":")
               for g in sorted({curve_goal(c["spec"]) for c in curves})]
    return save_figure([Panel("", series, xlabel="2-core CPU training minutes", ylabel="2D NME (%)")], Path(path),
                       panel_size=(7.2, 4.2))


PROBE_ORDER = ("lr", "head", "lr-fine", "warmup", "decay", "tail", "encoders")


def cmd_report(args) -> None:
    """benchmarks/results/convergence.md (+ .json, .png) from the committed convergence.json and every finished probe
    and curve under --out (a run under --out replaces the committed one of the same name)."""
    out = Path(args.out)
    # the committed results first (a new checkout has no savedmodel/), then this machine's runs, which win
    committed = RESULTS_DIR / "convergence.json"
    saved = json.loads(committed.read_text()) if committed.is_file() else {"probes": [], "curves": []}
    records = {probe_name(r["spec"]): r for r in saved["probes"]}
    for path in sorted((out / "probes").glob("*.json")):
        r = json.loads(path.read_text())
        records[probe_name(r["spec"])] = r
    curve_map = {c["label"]: c for c in saved["curves"]}
    for path in (out / "curves").glob("*/curve.json"):
        c = json.loads(path.read_text())
        curve_map[c["label"]] = c
    curves = [curve_map[k] for k in sorted(curve_map) if curve_map[k]["points"]]
    sections, used = [], set()
    for name in PROBE_ORDER:
        rows = [records[probe_name(sp)] for sp in probe_specs(name) if probe_name(sp) in records]
        if rows:
            sections.append((name, rows))
            used.update(probe_name(r["spec"]) for r in rows)
    extra = [r for k, r in records.items() if k not in used]
    if extra:
        sections.append(("other", extra))
    md = ["# Convergence: why the networks stayed on the mean face, and what makes them learn", "",
          f"Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by `python -m benchmarks.convergence report` from the "
          f"runs under `{out}`; each run's JSON names its machine and date. Machine of this report: "
          f"{machine_line('cpu')}.",
          "", "Data: the synthetic face model's 300W-LP-format training set (800 images) and AFLW2000-format test set "
          "(120 images), `benchmarks.study_data.make_data(seed 0)`; weighted position-map loss (PRNet's mask).", ""]
    if args.findings and Path(args.findings).is_file():
        md += [Path(args.findings).read_text().rstrip(), ""]
    md += ["## Memorisation probes", "",
           "Command: `python -m benchmarks.convergence probes --set NAME` (NAME: " + ", ".join(PROBE_ORDER) + "). "
           "Each probe trains on the same 16 training crops as one full batch, no augmentation, for "
           f"{PROBE_DEFAULTS['steps']} Adam steps; unless the row says otherwise: "
           + ", ".join(f"{k} {v}" for k, v in PROBE_DEFAULTS.items() if k not in ("steps",)) + ". "
           "'end' is the mean of the last 10 losses; the mean-map loss (predicting the 16 images' own mean position "
           "map) is the line to beat. Verdicts: memorises < 0.25 x mean-map loss, learns < 0.9 x, stays on the "
           "mean 0.9-1.1 x, stuck above > 1.1 x.", ""]
    for name, rows in sections:
        md += [f"### {name}", ""] + probe_rows(rows) + [""]
    for step in ("1", "10"):
        steps_rows = step_size_rows([r for _, rows in sections for r in rows], step)
        if len(steps_rows) > 2:
            md += [f"### Relative optimiser step per layer group at step {step}", "",
                   f"||w_after - w_before|| / ||w_before|| of each group's parameters for the step Adam took at step "
                   f"{step} (decoder.16 is the output layer; the mean-residual head starts it at zero).", ""]
            md += steps_rows + [""]
    escapes = {escape_name(r["spec"]): r for r in saved.get("escape", [])}
    for path in sorted((out / "escape").glob("*.json")):
        r = json.loads(path.read_text())
        escapes[escape_name(r["spec"])] = r
    if escapes:
        md += ["## Escape probes: leaving the mean map on the full training set", "",
               "Command: `python -m benchmarks.convergence escape --set NAME` (NAME: " + ", ".join(ESCAPE_ORDER)
               + "). The rotation study's recipe (augmented 800-image training set, batch 16, Adam, cosine schedule "
               "over 2000 steps) stopped after its first steps; unless the probe's name says otherwise: "
               + ", ".join(f"{k} {v}" for k, v in ESCAPE_DEFAULTS.items()) + ". Losses are means over 10 steps, "
               "divided by the loss of the mean position map over the training set. 'output spread': standard "
               "deviation of the prediction across the batch (px), about 0 for a network that predicts the same "
               "face for every image. 'encoder rank': effective rank (participation ratio) of the encoder "
               "output's channel covariance on 16 crops (E2TKFace at width 0.5: 64 channels; PRNet: 512). "
               "Verdict: leaves the mean when the last 50 steps' loss is below 0.9 × the "
               "mean-map loss.", ""]
        done = set()
        for name in ESCAPE_ORDER:
            rows = [escapes[escape_name(sp)] for sp in escape_specs(name) if escape_name(sp) in escapes]
            rows = [r for r in rows if escape_name(r["spec"]) not in done]
            if rows:
                md += [f"### {name}", ""] + escape_rows(rows) + [""]
                done.update(escape_name(r["spec"]) for r in rows)
        rest = [r for k, r in escapes.items() if k not in done]
        if rest:
            md += ["### other", ""] + escape_rows(rest) + [""]
    md += escape_section()
    if curves:
        md += ["## Learning curves", "", "Command: `python -m benchmarks.convergence curve --spec JSON` (resumable: "
               "the same command continues a run). 68-point 2D NME (%) on the 120 synthetic AFLW2000-format test "
               "images against minutes of 2-core CPU training (wall clock of the training epochs; validation and "
               "test evaluation excluded). The network is evaluated as training left it (eval mode, BatchNorm running "
               "statistics), every 3 training minutes at the end of the epoch that crosses the mark. The dashed line "
               "of the plot is the mean-face NME. ![learning curves](convergence.png)", ""]
        for c in curves:
            sp = {**CURVE_FORMER, **c["spec"]}
            if sp["model"] == "prnet":                   # PRNet has no encoder choice and no width: full size
                sp.pop("encoder", None)
                sp["width_mult"] = "1 (PRNet has no width option)"
            md += [f"### {c['label']}", "", "Settings: " + ", ".join(f"{k} {v}" for k, v in sp.items()) +
                   f". Started {c['started']}, last point {c.get('updated', '-')}; {c['machine']}.", "",
                   f"Mean-face reference: {c['mean_face_nme2d']:.2f} %. {curve_reading(c)}", "",
                   "| minutes | epoch | step | train loss | test 2D NME % | / mean face |", "|---|---|---|---|---|---|"]
            md += [f"| {p_['minutes']:.1f} | {p_['epoch']} | {p_['step']} | {p_['train_loss']:.4f} | "
                   f"{p_['nme2d']:.2f} | {p_['nme2d'] / c['mean_face_nme2d']:.2f} |" for p_ in c["points"]] + [""]
        draw_curves(curves, RESULTS_DIR / "convergence.png")
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(RESULTS_DIR / "convergence.md", ("\n".join(md) + "\n").encode("utf-8"))
    write_json(RESULTS_DIR / "convergence.json", {"probes": list(records.values()), "curves": curves,
                                                  "escape": list(escapes.values())})
    print(f"wrote {RESULTS_DIR / 'convergence.md'}", flush=True)


def escape_section() -> list[str]:
    """The intervention table and the mechanism table of benchmarks.escape (from results/escape.json)."""
    results = escape_report.load_results()
    if not results["runs"]:
        return []
    d = escape.DEFAULTS
    return ["## Leaving the mean face: one change at a time, 8 seeds each", "",
            "Command: `python -m benchmarks.escape run --set NAME` then `python -m benchmarks.escape report` "
            f"(NAME: {', '.join(escape.CHANGES)}). The demo's recipe as it was before issue 22 ({d['model']} "
            f"{d['encoder']}, width {d['width_mult']}, {d['input_size']} px, {d['head']} head, {d['optimizer']} lr "
            f"{d['lr']} with weight decay {d['weight_decay']} added to the gradient, {d['warmup']}-step warm-up then "
            f"cosine over {d['schedule_steps']} steps, batch {d['batch']}, {d['precision']}) on the augmented "
            f"800-image training set, stopped after {d['steps']} steps (700 for the 500-step warm-up), torch "
            f"threads {d['threads']} unless the row says otherwise; seeds 0–7. A run has left the mean face when its "
            f"last 50 steps' loss is below {escape.LEFT_BELOW} × the loss of the mean position map on the same "
            "batches; 'step left': from which logged step on the collapse watch's spread ratio stayed ≥ 0.25. "
            "NME: 2D NME on the 120 test images after the run (BatchNorm statistics refreshed), as far as it got.", "",
            "The changes (settings of benchmarks.escape.harness; last_init, decoder_norm and target_scale are changes "
            "to the network made for this study only): " + "; ".join(
                f"{name}: " + (", ".join(f"{k} {v}" for k, v in change.items()) or "none")
                for name, change in escape.CHANGES.items()) + ".", ""]\
        + escape_report.table(results["runs"], results["mean_face_nme2d"]) + \
        ["", "### Per block: runs that left against runs that stayed", "",
         "Median over runs of: the between-image share of the block's output variance on 16 fixed crops / the "
         "gradient norm reaching its parameters / Adam's step relative to its weights [/ its weight norm relative to "
         "initialisation, in runs that log it]; last column: the weights' norm at the "
         "end over the start, from the saved state (runs that saved it).", ""] + \
        [line for change in ("baseline", "wd0", "adamw") if any(escape_report.change_of(r["spec"]) == change
                                                          for r in results["runs"])
         for line in [f"**{change}**", ""] + escape_report.mechanism(
             [r for r in results["runs"] if escape_report.change_of(r["spec"]) == change]) + [""]] + \
        output_growth_section(results["runs"])


def output_growth_section(runs: list[dict]) -> list[str]:
    """Per set that logged it: the zero-started output layer's weight norm in runs that left and runs that stayed."""
    out = []
    for change in escape.CHANGES:
        rows = escape_report.output_growth([r for r in runs if escape_report.change_of(r["spec"]) == change
                                            and r["spec"]["model"] == "e2tkface" and r["spec"]["encoder"] == "aligned"])
        out += [f"**{change}**", ""] + rows + [""] if rows else []
    if not out:
        return []
    return ["### The output layer's growth", "", "Weight norm of the zero-started output layer of E2TKFace `aligned` "
            "(median and range over the runs), logged since 2026-12-08; finding 13 measured it in two demo probes.",
            ""] + out
