"""Numbers drawn from the rotation study's runs, for its report: runs grouped by (model, augmentation) with mean ±
std over the counting seeds, the conclusion's sentences, how busy the CPU was during each run (were the cores
shared?), and the measured quarter-turn equivariance error of each E2TKFace encoder."""
from __future__ import annotations

import functools
import math
import statistics

from benchmarks.rotation_study.design import CANONICALISED, EQUIVARIANT, MIN_WIDTH, MODELS, PASS_RATIO, is_exact
from benchmarks.rotation_study.runs import passes, run_filename
from data.augment import MAX_ANGLE_DEG       # the training augmentation's rotation range (±)

YAW_BINS = ("|yaw|<=30", "30<|yaw|<=60", "|yaw|>60")         # faceutil.metrics.nme_by_yaw keys
SHARED_BELOW = 0.6          # CPU busy below this: the cores were shared (measured 0.94-0.95 alone, 0.49 beside 2 loops)


def mean_std(values) -> tuple[float, float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def pm(values) -> str:
    """'mean ± std' of the finite values (2 decimals), '-' when there are none."""
    m, s = mean_std(values)
    return "-" if not math.isfinite(m) else f"{m:.2f} ± {s:.2f}"


def row_key(label: str, rotation: bool) -> str:
    return f"{label} | {'rot aug' if rotation else 'no rot aug'}"


def _angle_mean(nme: dict, angles) -> float:
    values = [nme[a]["mean"] for a in angles if a in nme]
    return statistics.fmean(values) if values else float("nan")


def summarise(runs: list, baseline: dict | None) -> dict:
    """Group runs by (model label, rotation) -> {"per_angle": {angle: [NME per passing seed]},
    "bins": {angle: {bin: [...]}}, "rotated_mean" / "exact_mean" / "interpolated_mean": [mean over the positive
    angles > 0 / the multiples of 90 / the others, per passing seed], "in_range_mean" / "beyond_range_mean": [the
    same over the positive angles within / beyond the training augmentation's rotation range], "gap":
    [rotated_mean - NME at 0 deg] (the robustness figure: what rotation costs), "symmetry": [mean |NME(-a) -
    NME(a)|], "seeds" / "failed": the passing / failing seeds, "seconds": [train + evaluation seconds of every run]}."""
    groups: dict = {}
    for r in sorted(runs, key=lambda r: (r["seed"], [m[0] for m in MODELS].index(r["label"])
                                         if r["label"] in [m[0] for m in MODELS] else 99)):
        g = groups.setdefault(row_key(r["label"], r["rotation"]),
                              {"label": r["label"], "rotation": r["rotation"], "per_angle": {}, "bins": {},
                               "rotated_mean": [], "exact_mean": [], "interpolated_mean": [], "in_range_mean": [],
                               "beyond_range_mean": [], "gap": [],
                               "symmetry": [], "seeds": [], "failed": [], "seconds": []})
        g["seconds"].append(r["facts"]["train_seconds"] + r["facts"].get("eval_seconds", 0.0))
        if not passes(r, baseline):
            g["failed"].append(r["seed"])
            continue
        g["seeds"].append(r["seed"])
        nme = r["nme"]
        for a in sorted(nme):
            g["per_angle"].setdefault(a, []).append(nme[a]["mean"])
            for b in YAW_BINS + ("mean_of_bins",):
                g["bins"].setdefault(a, {}).setdefault(b, []).append(nme[a]["bins"][b])
        positive = [a for a in nme if 0 < a <= 180]
        g["rotated_mean"].append(_angle_mean(nme, positive))
        g["exact_mean"].append(_angle_mean(nme, [a for a in positive if is_exact(a)]))
        g["interpolated_mean"].append(_angle_mean(nme, [a for a in positive if not is_exact(a)]))
        g["in_range_mean"].append(_angle_mean(nme, [a for a in positive if a <= MAX_ANGLE_DEG]))
        g["beyond_range_mean"].append(_angle_mean(nme, [a for a in positive if a > MAX_ANGLE_DEG]))
        g["gap"].append(g["rotated_mean"][-1] - nme[0]["mean"])
        pairs = [abs(nme[-a]["mean"] - nme[a]["mean"]) for a in positive if -a in nme]
        if pairs:
            g["symmetry"].append(statistics.fmean(pairs))
    return groups


def _verdict(rows: dict) -> str | None:
    """Equivariant vs not, by the cost of rotation (rotated-angle mean minus 0 deg): a difference counts when it
    exceeds twice the combined seed spread (2 sqrt(s1^2 + s2^2)); only models with at least two passing seeds take
    part (one seed has no spread). The canonicalised networks are not in this question (the paper's encoder against
    plain networks); their own section answers for them."""
    eq = [k for k in EQUIVARIANT if k in rows]
    others = [k for k in rows if k not in EQUIVARIANT and k not in CANONICALISED]
    if not eq or not others:
        return None
    eq2, others2 = ([k for k in group if len(rows[k]["gap"]) >= 2] for group in (eq, others))
    if not eq2 or not others2:
        return "no verdict yet: the equivariant or the non-equivariant side has no model with two passing seeds"
    best_eq = min(eq2, key=lambda k: mean_std(rows[k]["gap"])[0])
    best_other = min(others2, key=lambda k: mean_std(rows[k]["gap"])[0])
    (g_eq, s_eq), (g_o, s_o) = mean_std(rows[best_eq]["gap"]), mean_std(rows[best_other]["gap"])
    diff, noise = g_o - g_eq, 2.0 * math.hypot(s_eq, s_o)
    m_eq, m_o = mean_std(rows[best_eq]["rotated_mean"])[0], mean_std(rows[best_other]["rotated_mean"])[0]
    if diff > 0 and diff > noise:
        head = (f"the equivariant encoder IS more robust: rotation costs {best_eq} {g_eq:.2f} NME points and "
                f"{best_other} (the most robust non-equivariant model) {g_o:.2f}, a difference larger than twice the "
                f"combined seed spread ({noise:.2f})")
    elif diff > 0:
        head = (f"the equivariant encoder is NOT clearly more robust: rotation costs {best_eq} {g_eq:.2f} NME points "
                f"and {best_other} {g_o:.2f}, a difference within twice the combined seed spread ({noise:.2f})")
    else:
        head = (f"the equivariant encoder is NOT more robust: rotation costs {best_other} {g_o:.2f} NME points and "
                f"the most robust equivariant model ({best_eq}) {g_eq:.2f} (twice the combined seed spread "
                f"{noise:.2f})")
    return head + f"; their mean NME over the rotated angles: {m_eq:.2f} vs {m_o:.2f} %"


def conclusion(groups: dict) -> list[str]:
    """Sentences drawn from the passing runs' numbers: which models are robust to rotation, with and without
    rotation augmentation, and how much of the gap the augmentation closes."""
    lines = []
    counted = {k: g for k, g in groups.items() if g["seeds"]}
    if not counted:
        return [f"No run counts yet: none beats the mean face at 0° by {1 / PASS_RATIO:g}× (see the list below)."]
    for rotation in (False, True):
        rows = {g["label"]: g for g in counted.values() if g["rotation"] == rotation}
        if not rows:
            continue
        aug = "with" if rotation else "without"
        by_gap = sorted(rows, key=lambda k: mean_std(rows[k]["gap"])[0])
        text = (f"**{aug.capitalize()} rotation augmentation**: cost of rotation (mean NME over 15–180° minus the "
                f"0° NME): " + ", ".join(f"{k} {pm(rows[k]['gap'])}" for k in by_gap)
                + f"; smallest: {by_gap[0]}.")
        verdict = _verdict(rows)
        lines.append(text + (f" So {verdict}." if verdict else ""))
    no_aug = {g["label"]: g for g in counted.values() if not g["rotation"]}
    with_aug = {g["label"]: g for g in counted.values() if g["rotation"]}
    eq = [k for k in EQUIVARIANT if k in no_aug]
    best_eq = min(eq, key=lambda k: mean_std(no_aug[k]["rotated_mean"])[0]) if eq else None
    for label in [m[0] for m in MODELS]:
        if label not in no_aug or label not in with_aug:
            continue
        r0, r1 = mean_std(no_aug[label]["rotated_mean"])[0], mean_std(with_aug[label]["rotated_mean"])[0]
        c0, c1 = mean_std(no_aug[label]["gap"])[0], mean_std(with_aug[label]["gap"])[0]

        def arrow(key: str) -> str:        # "no-aug mean → aug mean" of one summary figure
            return " → ".join(f"{mean_std(g[key])[0]:.2f}" for g in (no_aug[label], with_aug[label]))

        text = (f"{label}: rotation augmentation takes the rotated-angle NME from {r0:.2f} to {r1:.2f} % and the "
                f"cost of rotation from {c0:.2f} to {c1:.2f} points"
                + (f" ({100 * (c0 - c1) / c0:.0f} % of it removed)" if c0 > 0 else "")
                + f"; over the rotated angles within the augmentation's range (≤ {MAX_ANGLE_DEG:g}°) "
                + f"{arrow('in_range_mean')} %, beyond it (> {MAX_ANGLE_DEG:g}°) {arrow('beyond_range_mean')} %")
        if best_eq is not None and label not in EQUIVARIANT:
            eq_r0 = mean_std(no_aug[best_eq]["rotated_mean"])[0]
            gap = r0 - eq_r0
            if gap > 0 and r1 < eq_r0:
                text += (f"; without augmentation it trails {best_eq} (no augmentation) by {gap:.2f} points on the "
                         f"rotated angles, and augmentation more than closes that gap ({eq_r0 - r1:.2f} points ahead "
                         f"of it)")
            elif gap > 0:
                text += (f"; without augmentation it trails {best_eq} (no augmentation) by {gap:.2f} points on the "
                         f"rotated angles, and augmentation closes {100 * (r0 - r1) / gap:.0f} % of that gap")
            else:
                text += f"; without augmentation it is not behind {best_eq} on the rotated angles ({-gap:.2f} ahead)"
        lines.append(text + ".")
    missing = [row_key(g["label"], g["rotation"]) for g in groups.values() if len(g["seeds"]) < 2]
    if missing:
        lines.append("Fewer than two passing seeds (no seed spread, weaker evidence): " + "; ".join(missing) + ".")
    return lines


def cpu_busy(run: dict) -> float | None:
    """Process CPU time / (wall time x torch threads) of a CPU run, both over the whole run (build, training,
    BatchNorm refresh, export, evaluation): near 1 alone on the cores, far less when another process shared them
    (the run then takes several times longer, so its minutes overstate what it costs alone). None for runs on
    another device and runs recorded before cpu_seconds existed. Data-loader worker processes are not counted
    (workers=0 is the default)."""
    f = run["facts"]
    if "cpu_seconds" not in f or not str(f.get("device", "")).startswith("cpu") or f.get("run_seconds", 0) <= 0:
        return None
    return f["cpu_seconds"] / (f["run_seconds"] * max(1, f.get("threads", 1)))


def contention_sentence(runs: list) -> str:
    """One sentence for the report's Runs line: how many runs recorded their CPU time, and which of them shared
    the cores (busy below SHARED_BELOW), so their CPU-minute figures are too high."""
    known = {run_filename(r["label"], r["rotation"], r["seed"]): b for r in runs if (b := cpu_busy(r)) is not None}
    if not known:
        return "process CPU time not recorded for these runs, so sharing of the cores is not checked"
    shared = [f"{k} ({v:.2f})" for k, v in sorted(known.items()) if v < SHARED_BELOW]
    return (f"CPU busy (process CPU time / wall time x threads) recorded for {len(known)} of {len(runs)} runs, "
            f"{min(known.values()):.2f}–{max(known.values()):.2f}; "
            + (f"below {SHARED_BELOW:g}, so the cores were shared and the time overstated: {', '.join(shared)}"
               if shared else f"none below {SHARED_BELOW:g} (no run shared the cores)"))


@functools.lru_cache(maxsize=4)
def encoder_equivariance(width_mult: float, size: int) -> dict:
    """{encoder kind: (error at 90°, error at 180°)}: model.encoder.rot90_equivariance_error of each E2TKFace
    encoder at `width_mult`, freshly initialised (torch seed 0), on two uniform-noise images of size² (the study's
    network input; area downsampling from 256 commutes with quarter turns, so this is the error inside the study)."""
    import torch

    from model.e2tkface import build_encoder
    from model.encoder import rot90_equivariance_error

    width = max(width_mult, MIN_WIDTH)
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size)
    result = {}
    for label, _, base in MODELS[:3]:
        encoder = build_encoder(base["encoder"], width_mult=width).eval()
        result[label] = tuple(round(rot90_equivariance_error(encoder, x, k), 4) for k in (1, 2))
    return result
