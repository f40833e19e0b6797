"""The canonicalised networks' part of the rotation report (issue 23): per counting run of a CANONICALISED label, its
cost of rotation against its own backbone trained the same way without a canonicaliser, the quarter-turn exactness,
the oracle floor (the estimator replaced by the true test angle), the angle estimator's error and the NME off the
15-degree grid; then the issue's goals, each met or not with its number. Computed from run files alone."""
from __future__ import annotations

import math
import statistics

from benchmarks.rotation_study.analysis import mean_std, pm
from benchmarks.rotation_study.design import CANONICALISED, OFF_GRID_ANGLES
from benchmarks.rotation_study.runs import passes

BACKBONE = {"E2TKFace aligned + canonicaliser": "E2TKFace aligned", "PRNet + canonicaliser": "PRNet"}
COST_GOAL, EXACT_GOAL, UPRIGHT_GOAL = 1.0, 0.05, 0.3          # NME points (issue 23's goals)
COST_LINK = "[canonical_cost.md](canonical_cost.md)"


def _by_angle(block: dict) -> dict:
    """{int angle: mean} of a run's nme / nme_oracle / nme_off_grid block (JSON keys are strings)."""
    return {int(a): float(v["mean"]) for a, v in (block or {}).items()}


def _f(value: float, spec: str) -> str:
    """`value` formatted by `spec`, "–" when it is not a finite number (a figure the run files cannot give)."""
    return format(value, spec) if math.isfinite(value) else "–"


def run_figures(run: dict) -> dict:
    """One canonicalised run's figures: cost (mean over 15-180 deg minus 0 deg), exact (max |NME(90|180) - NME(0)|),
    oracle cost, angle errors on and off the grid (mean, max over images and angles), off-grid NME."""
    nme = _by_angle(run["nme"])
    oracle = _by_angle(run.get("nme_oracle"))
    grid = {int(a): v for a, v in (run.get("angle_error") or {}).items() if int(a) not in OFF_GRID_ANGLES}
    off = {int(a): v for a, v in (run.get("angle_error") or {}).items() if int(a) in OFF_GRID_ANGLES}
    return {"at0": nme[0], "cost": _cost(nme),
            "exact": max(abs(nme[a] - nme[0]) for a in (90, 180) if a in nme) if 90 in nme or 180 in nme else math.nan,
            "oracle_cost": _cost(oracle),
            "angle_grid": (statistics.fmean(v["mean"] for v in grid.values()), max(v["max"] for v in grid.values()))
            if grid else (math.nan, math.nan),
            "angle_off": (statistics.fmean(v["mean"] for v in off.values()), max(v["max"] for v in off.values()))
            if off else (math.nan, math.nan),
            "off_grid": _by_angle(run.get("nme_off_grid")),
            "by_looks": {int(n): (_by_angle(block).get(0, math.nan), _cost(_by_angle(block)))
                         for n, block in (run.get("nme_looks") or {}).items()}}


def _cost(nme: dict) -> float:
    """Mean NME over 15-180 degrees minus NME at 0 degrees, from {angle: NME}; nan without both."""
    rotated = [nme[a] for a in nme if 0 < a <= 180]
    return statistics.fmean(rotated) - nme[0] if rotated and 0 in nme else math.nan


def version(run: dict) -> str:
    """The canonicaliser a run was made with, in words (runs before the record existed: the first one)."""
    made = run["facts"].get("canonicaliser")
    if not made:
        return "first (no disc, 1 look)"
    return f"C{made.get('order', 8)}, {'disc' if made.get('disc') else 'no disc'}, {1 + made.get('refine', 0)} looks"


def canonical_section(runs: list, baseline: dict | None) -> list[str]:
    """Markdown lines of the section, [] when no canonicalised run exists."""
    mine = [r for r in runs if r["label"] in CANONICALISED and passes(r, baseline)]
    if not mine:
        return []
    plain = {(r["label"], r["seed"]): _by_angle(r["nme"])[0] for r in runs
             if not r["rotation"] and r["label"] in BACKBONE.values() and passes(r, baseline)}
    md = ["", "## Canonicalised networks (issue 23): trained without rotation augmentation", "",
          "Each backbone behind the angle estimator (model/canonical.py; C16 since 2026-12-07, C8 before): the crop "
          "is turned upright by the "
          "estimated angle (quarter turns exact, the rest one bilinear resampling) and the position map's x, y "
          "values are turned back. Cost = mean NME over 15–180° minus NME at 0°. Exact = the larger of |NME(90°) − "
          "NME(0°)| and |NME(180°) − NME(0°)|. Oracle = the same trained network with its estimator replaced by the "
          "true test angle (what a perfect canonicaliser would give). Angle error = |estimate on the turned crop − "
          "estimate on the upright crop − test angle| (the face's own roll cancels), mean / max over images and "
          "angles. Off-grid: NME at " + ", ".join(f"{a}°" for a in OFF_GRID_ANGLES) + ".", "",
          "Canonicaliser: the version a run was made with (the first had no disc and one look; the harness retrains "
          "such runs). Estimator alone: [canonical_estimator.md](canonical_estimator.md).", "",
          "Fewer looks: NME at 0° and cost of rotation of the same weights with fewer refining looks (inference "
          "only; each look is one run of the estimator, " + COST_LINK + ").", "",
          "| network | seed | canonicaliser | 0° | cost | fewer looks: 0°, cost | exact | 0° − backbone alone "
          "(same seed, no rotation aug) | oracle cost | angle error, test angles (mean / max) | angle error off-grid "
          "(mean / max) | off-grid NME |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goals = {"cost": [], "exact": [], "upright": [], "cost1": [], "upright1": []}      # ...1: with one look
    for r in sorted(mine, key=lambda r: (r["label"], r["seed"])):
        f = run_figures(r)
        alone = plain.get((BACKBONE[r["label"]], r["seed"]))
        delta = f["at0"] - alone if alone is not None else math.nan
        goals["cost"].append(f["cost"])
        goals["exact"].append(f["exact"])
        goals["upright"].append(delta)
        at0_one, cost_one = f["by_looks"].get(1, (math.nan, math.nan))
        goals["cost1"].append(cost_one)
        goals["upright1"].append(at0_one - alone if alone is not None else math.nan)
        fewer = "; ".join(f"{n} look{'s' * (n > 1)}: {_f(at0, '.2f')}, {_f(c, '+.2f')}"
                          for n, (at0, c) in sorted(f["by_looks"].items()))
        md.append(f"| {r['label']} | {r['seed']} | {version(r)} | {f['at0']:.2f} | {_f(f['cost'], '+.2f')} | "
                  f"{fewer or '–'} | {_f(f['exact'], '.3f')} | {_f(delta, '+.2f')} | {_f(f['oracle_cost'], '+.2f')} | "
                  f"{_f(f['angle_grid'][0], '.1f')}° / {_f(f['angle_grid'][1], '.1f')}° | "
                  f"{_f(f['angle_off'][0], '.1f')}° / {_f(f['angle_off'][1], '.1f')}° | "
                  + ", ".join(f"{a}°: {v:.2f}" for a, v in sorted(f["off_grid"].items())) + " |")
    from model.canonical import REFINE

    default = ", the toolkit's default" if REFINE == 0 else ""
    md += ["", f"Goals (issue 23), every counting run (\"one look\": the same weights with a single look{default}):",
           ""]
    cost_goal, upright_goal = f"cost of rotation at most {COST_GOAL:g} NME point", \
        f"0° no worse than the backbone alone by more than {UPRIGHT_GOAL:g} point"
    for key, name, limit in (("cost", cost_goal, COST_GOAL), ("cost1", cost_goal + ", one look", COST_GOAL),
                             ("exact", f"90° and 180° equal to 0° within {EXACT_GOAL:g} point", EXACT_GOAL),
                             ("upright", upright_goal, UPRIGHT_GOAL),
                             ("upright1", upright_goal + ", one look", UPRIGHT_GOAL)):
        values = [v for v in goals[key] if math.isfinite(v)]
        worst = max(values) if values else math.nan
        verdict = "no run to judge" if not values else ("met" if worst <= limit else "NOT met")
        md.append(f"- {name}: {verdict} (worst {_f(worst, '+.3f')}; mean {pm(values)})")
    md.append(f"- extra inference time at most 15 % of the backbone's: measured apart, {COST_LINK}.")
    return md


def canonical_record(runs: list, baseline: dict | None) -> dict:
    """The section's numbers for rotation.json: {label: {figure: (mean, std) over the counting seeds}}."""
    out = {}
    for label in CANONICALISED:
        figs = [run_figures(r) for r in runs if r["label"] == label and passes(r, baseline)]
        if figs:
            out[label] = {k: mean_std([f[k] for f in figs]) for k in ("at0", "cost", "exact", "oracle_cost")}
    return out
