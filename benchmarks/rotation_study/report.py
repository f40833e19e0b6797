"""The rotation study's report: rotation.md (settings, conclusion, tables per angle, per yaw bin and for the
clockwise side), rotation.json (the same numbers) and rotation.png (drawn through benchmarks.plots), written from run
files alone (runs.collect_runs), so a report needs neither torch training nor the machine the runs were made on."""
from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import json_default, write_json
from benchmarks.rotation_study.analysis import YAW_BINS, conclusion, contention_sentence, encoder_equivariance
from benchmarks.rotation_study.analysis import mean_std, pm, summarise
from benchmarks.rotation_study.canonical import canonical_record, canonical_section
from benchmarks.rotation_study.design import PASS_RATIO, is_exact
from benchmarks.rotation_study.runs import collect_runs, passes

BIN_LABELS = {"|yaw|<=30": "yaw ≤ 30°", "30<|yaw|<=60": "30° < yaw ≤ 60°", "|yaw|>60": "yaw > 60°"}  # no "|" in md
COLOURS = {"E2TKFace faithful": "#0072B2", "E2TKFace aligned": "#009E73", "E2TKFace CNN": "#E69F00",
           "PRNet": "#D55E00", "E2TKFace aligned + canonicaliser": "#CC79A7", "PRNet + canonicaliser": "#56B4E9"}


def _loss_note(run: dict) -> str:
    """ "; training loss A → B (mean of the last 10 steps)" from a run's facts, or "" when they are missing."""
    first, last = run["facts"].get("first_loss"), run["facts"].get("last_loss")
    return f"; training loss {first:.4f} → {last:.4f} (mean of the last 10 steps)" if first and last else ""


# Printed under the conclusion: an argument from the architecture (the tables are the measurement).
EQUIVARIANCE_NOTE = (
    "Why an equivariant encoder need not make the output robust (reasoning about the architecture): the network's "
    "output is a UV position map, whose pixel (u, v) is one fixed point of the face whatever the pose. For an input "
    "rotated by θ the right answer keeps that layout and rotates the (x, y) values. The equivariant encoders "
    "(model.encoder) end in rotation-invariant scalar fields, so a rotated input gives the same features at "
    "rotated positions: a feature map rotated in space. The neck and the transposed-conv decoder are ordinary, "
    "non-equivariant layers, so they receive a rotated feature map they were not trained on, as PRNet's first "
    "layer receives a rotated image. Equivariance reaches the output only through a bottleneck that is invariant "
    "to rotation, or a decoder whose output transforms with the input, and neither is in the published design.")


def equivariance_sentence(errors: dict, size: int) -> str:
    """The measured encoder equivariance errors as one sentence for the report."""
    return ("Measured encoder equivariance at the exact angles (relative error ||E(rot x) − rot E(x)|| / ||E(x)||, "
            f"freshly initialised encoders, random {size}² input; 90° / 180°): "
            + ", ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in errors.items())
            + ". Only an encoder with error 0 is exactly equivariant; the faithful layout's stride-2 convolutions "
              "sample a grid that quarter turns do not map onto itself (seeds, sizes and 45°: "
              "benchmarks/results/equivariance.md).")


def _header(a: int) -> str:
    return f"{a}°" + ("*" if is_exact(a) and a else "")


def write_report(out: Path, runs: list, baseline: dict | None, meta: dict) -> tuple[Path, Path]:
    """Write rotation.md, rotation.png and rotation.json under `out`; returns (markdown path, png path)."""
    from faceutil.sampleio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    groups = summarise(runs, baseline)
    s = meta["settings"]
    angles = sorted({a for r in runs for a in r["nme"] if a >= 0} | set(s.get("angles", ())))
    negatives = sorted({a for r in runs for a in r["nme"] if a < 0}, reverse=True)
    base = {a: v["mean"] for a, v in baseline["nme"].items()} if baseline else {}
    seconds = sum(r["facts"]["train_seconds"] + r["facts"].get("eval_seconds", 0.0) for r in runs)
    seconds += baseline["facts"].get("seconds", 0.0) if baseline else 0.0
    failing = [r for r in runs if not passes(r, baseline)]
    md = ["# Rotation study: in-plane rotation robustness", ""]
    if meta.get("smoke"):
        md += ["**SMOKE RUN** — tiniest sizes, a pipeline check only; the numbers mean nothing.", ""]
    md += [f"- Commands: {'; '.join(f'`{c}`' for c in meta['commands'])}",
           f"- Dates: {', '.join(meta['dates'])}; machines: {'; '.join(meta['machines'])}",
           f"- Runs: {len(runs)} ({len(runs) - len(failing)} beat the mean face at 0° by ≥ {1 / PASS_RATIO:g}×); "
           f"total CPU time {seconds / 60:.1f} min (wall-clock time of the training + evaluation of every run, "
           f"and the mean-face reference; a true CPU figure only when nothing else ran beside the study): "
           f"{contention_sentence(runs)}{' — ' + meta['note'] if meta.get('note') else ''}",
           f"- Budget: {s['steps']} optimiser steps of batch {s['batch']} per run, Adam lr {s['lr']:g} with a "
           f"{s['warmup']}-step linear warm-up then cosine to zero, weight decay {s['weight_decay']:g}; BatchNorm "
           f"refreshed on ≤ 64 un-augmented training crops",
           f"- Seeds: {meta['seeds']} (initialisation, augmentation, data order); data seed {s['data_seed']}",
           f"- Data: synthetic 300W-LP-format training set of {s['train_count']} images, synthetic "
           f"AFLW2000-format test set of {s['test_count']} images (faceutil.synthetic + faceutil.process)",
           f"- Width: E2TKFace width_mult {s['width_mult']:g} for all three encoders, top-k {s['topk']}; PRNet at "
           f"full width (build_model(\"prnet\") has no width argument).",
           f"- Network input size: {s['size']}² for every model"
           + ("" if s["size"] == 256 else
              " (the 256² crop area-downsampled; the predicted position map upsampled to 256² and its coordinates "
              "rescaled; loss and evaluation at 256² as usual)")
           + f"; output head {s['head']}; training precision {s['precision']}; evaluation fp32 (exported twins).",
           "- Augmentation: 'rotation' = data.augment.augment (colour p 0.5, rotation U(±90°) p 0.5, erasing "
           "p 0.25); 'no rotation' = the same draws with the rotation skipped.",
           "- Test rotation: each deterministic test crop rotated about its centre (counter-clockwise for positive "
           "angles); predictions mapped back to the original image and scored against the unrotated pt3d_68 "
           "(normaliser unchanged). `*`: multiples of 90°, where the rotated crop is an exact pixel permutation "
           "(no interpolation); the other angles are interpolated.",
           "- Protocol: 68-point 2D NME (%), sqrt(w·h) of the ground-truth landmark box (DESIGN.md §6). "
           "Mean ± std over the passing seeds of the per-seed mean over test images.",
           f"- A run counts only when its 0° NME is at most {PASS_RATIO:g} × the mean face's"
           + (f" ({PASS_RATIO * base[0]:.2f} %)" if 0 in base else " (no mean-face reference found: none counts)")
           + "; the tables and the conclusion use the counting runs only.",
           "", "## Conclusion (computed from the counting runs)", ""]
    md += [f"- {line}" for line in conclusion(groups)] + ["", EQUIVARIANCE_NOTE]
    if meta.get("equivariance"):
        md += ["", equivariance_sentence(meta["equivariance"], s["size"])]
    if failing:
        md += ["", "## Runs that do not count (0° NME above the limit)", ""]
        md += [f"- {r['label']}, {'rotation' if r['rotation'] else 'no rotation'}, seed {r['seed']}: "
               f"{r['nme'][0]['mean']:.2f} % at 0°" + _loss_note(r) for r in failing]
    md += ["", "## 2D NME (%) per test rotation angle", "",
           "| model | training aug | seeds | " + " | ".join(_header(a) for a in angles)
           + " | mean 15–180° | exact (90°, 180°) | interpolated | cost (− 0°) | CPU min/run |",
           "|---|---|---|" + "---|" * (len(angles) + 5)]
    for g in groups.values():
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  f"{len(g['seeds'])}/{len(g['seeds']) + len(g['failed'])} | "
                  + " | ".join(pm(g["per_angle"].get(a, [])) for a in angles)
                  + f" | {pm(g['rotated_mean'])} | {pm(g['exact_mean'])} | {pm(g['interpolated_mean'])} | "
                  f"{pm(g['gap'])} | {mean_std(g['seconds'])[0] / 60:.1f} |")
    if base:
        pos = [a for a in angles if a > 0 and a in base]
        ex, ip = [base[a] for a in pos if is_exact(a)], [base[a] for a in pos if not is_exact(a)]
        rot = [base[a] for a in pos]
        f = (lambda v: f"{statistics.fmean(v):.2f}" if v else "-")
        md.append("| mean face (constant, reference) | - | - | "
                  + " | ".join(f"{base[a]:.2f}" if a in base else "-" for a in angles)
                  + f" | {f(rot)} | {f(ex)} | {f(ip)} | "
                  + (f"{statistics.fmean(rot) - base[0]:.2f}" if rot and 0 in base else "-") + " | - |")
    if negatives:
        md += ["", "## The clockwise side (negative angles) and symmetry", "",
               "| model | training aug | " + " | ".join(_header(a) for a in negatives)
               + " | mean abs(NME(−a) − NME(a)) |", "|---|---|" + "---|" * (len(negatives) + 1)]
        for g in groups.values():
            if any(a in g["per_angle"] for a in negatives):
                md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                          + " | ".join(pm(g["per_angle"].get(a, [])) for a in negatives)
                          + f" | {pm(g['symmetry'])} |")
    md += ["", "## 2D NME (%) per yaw bin — at 0° and averaged over 0–180°", "",
           "| model | training aug | " + " | ".join(f"{BIN_LABELS[b]} @0°" for b in YAW_BINS)
           + " | " + " | ".join(f"{BIN_LABELS[b]} 0–180°" for b in YAW_BINS) + " | mean of bins 0–180° |",
           "|---|---|" + "---|" * 7]
    counts = runs[0]["nme"][0]["bins"]["counts"] if runs else {}
    for g in groups.values():
        at0 = [pm(g["bins"].get(0, {}).get(b, [])) for b in YAW_BINS]
        avg = []
        for b in YAW_BINS + ("mean_of_bins",):
            per_seed = [statistics.fmean(g["bins"][a][b][i] for a in angles) for i in range(len(g["seeds"]))]
            avg.append(pm(per_seed))
        md.append(f"| {g['label']} | {'rotation' if g['rotation'] else 'no rotation'} | "
                  + " | ".join(at0) + " | " + " | ".join(avg) + " |")
    md += ["", "Test images per yaw bin: " + ", ".join(f"{BIN_LABELS[b]}: {counts.get(b, 0)}" for b in YAW_BINS)]
    md += canonical_section(runs, baseline)
    md += ["", "![NME vs angle](rotation.png)", ""]
    md_path, png_path = out / "rotation.md", out / "rotation.png"
    atomic_write_bytes(md_path, "\n".join(md).encode("utf-8"))
    draw_plot(groups, sorted(negatives) + angles, base, png_path)
    record = {"meta": meta, "baseline": base, "cpu_minutes": round(seconds / 60, 1),
              "groups": {k: {kk: vv for kk, vv in g.items() if kk != "bins"} for k, g in groups.items()},
              "conclusion": conclusion(groups), "canonicalised": canonical_record(runs, baseline)}
    write_json(out / "rotation.json", record, default=json_default)
    return md_path, png_path


def draw_plot(groups: dict, angles: list, baseline: dict, path: Path) -> Path:
    """NME vs test angle, one line per model (mean ± std over the counting seeds), two panels (without / with
    rotation augmentation); the mean face dashed grey; thin grey verticals at the exact (quarter-turn) angles."""
    from benchmarks.plots import Panel, Series, save_figure

    panels = []
    for rotation in (False, True):
        series = [Series("mean face", [a for a in angles if a in baseline], [baseline[a] for a in angles
                                                                                 if a in baseline], reference=True)]
        for g in groups.values():
            if g["rotation"] == rotation:
                stats = [mean_std(g["per_angle"].get(a, [])) for a in angles]
                series.append(Series(g["label"], angles, [m for m, _ in stats], err=[s for _, s in stats],
                                     colour=COLOURS.get(g["label"])))
        panels.append(Panel(f"{'with' if rotation else 'without'} rotation augmentation", series,
                            xlabel="test rotation (deg)", ylabel="2D NME (%)",
                            xticks=[a for a in angles if a % 45 == 0], vlines=[a for a in angles if is_exact(a)]))
    return save_figure(panels, Path(path))


def report_meta(runs: list, baseline: dict | None, settings: dict, smoke: bool = False) -> dict:
    records = runs + ([baseline] if baseline else [])
    return {"settings": settings, "smoke": smoke, "seeds": sorted({r["seed"] for r in runs}),
            "commands": sorted({r.get("command", "?") for r in records}),
            "dates": sorted({r.get("date", "?")[:10] for r in records}),
            "machines": sorted({r.get("machine", "?") for r in records}),
            "equivariance": encoder_equivariance(settings["width_mult"], settings["size"])}


def write_from_runs(paths, out: Path, smoke: bool = False, note: str | None = None) -> dict:
    """Collect run files (naming and skipping bad ones), then write the report (`note`: a sentence for its Runs
    line); returns the result dict."""
    runs, baseline, problems = collect_runs(paths)
    for text in problems:
        print(f"skipped: {text}", flush=True)
    if not runs:
        raise SystemExit(f"no usable run files in {', '.join(map(str, paths))}; nothing to report.")
    settings = (runs[0] if runs else baseline)["settings"]
    if baseline is None:
        print("no mean-face reference (baseline.json) among the inputs: no run can count", flush=True)
    meta = report_meta(runs, baseline, settings, smoke)
    if note:
        meta["note"] = note
    md, png = write_report(out, runs, baseline, meta)
    print(f"wrote {md} and {png} from {len(runs)} runs", flush=True)
    return {"runs": runs, "baseline": baseline, "meta": meta, "markdown": md, "png": png, "problems": problems}
