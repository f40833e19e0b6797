"""The rotation study's run files: one JSON per finished run (one model, one augmentation variant, one seed) and one
for the mean-face reference (BASELINE_FILE), so the study resumes run by run and merges runs made on several
machines. Owns their format, the check that runs share their settings (design.SETTING_KEYS) and which runs count
(design.PASS_RATIO); both the harness (resuming) and the report (collecting) read them through here."""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.common import json_default, write_json
from benchmarks.rotation_study.design import PASS_RATIO, SETTING_KEYS

BASELINE_FILE = "baseline.json"


class RunFileError(Exception):
    """A run file that cannot be used (missing, unreadable, not a run record); the message is one sentence."""


def run_filename(label: str, rotation: bool, seed: int) -> str:
    return f"{label.lower().replace(' + ', '+').replace(' ', '-')}_{'rot' if rotation else 'norot'}_seed{seed}.json"


def settings_difference(a: dict, b: dict) -> str | None:
    """'steps 1200 here, 800 there'-style text for the first SETTING_KEYS entry that differs, or None."""
    for key in SETTING_KEYS:
        if json.dumps(a.get(key)) != json.dumps(b.get(key)):
            return f"{key} {json.dumps(a.get(key))} against {json.dumps(b.get(key))}"
    return None


def write_run(path: Path, record: dict) -> None:
    write_json(path, {**record, "nme": {str(a): v for a, v in record["nme"].items()}}, default=json_default)


def read_run(path: Path) -> dict:
    """A run (or baseline) record with integer angle keys; RunFileError for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        nme = {int(a): v for a, v in record["nme"].items()}
        settings = record["settings"]
        if record.get("kind") != "baseline":
            bad = [a for a, v in nme.items() if not math.isfinite(float(v["mean"]))]
            if bad or 0 not in nme or not {"label", "rotation", "seed", "facts"} <= set(record):
                raise ValueError("incomplete run record")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunFileError(f"{path} is not a readable run record ({type(err).__name__}: {err})") from None
    if not isinstance(settings, dict):
        raise RunFileError(f"{path} has no settings")
    return {**record, "nme": nme, "path": str(path)}


def collect_runs(paths) -> tuple[list, dict | None, list]:
    """Runs and the mean-face baseline from run files and folders of them.

    Returns (runs, baseline or None, problems): every missing or corrupt file is named in `problems` and skipped.
    Raises SystemExit with one sentence when two records were made with different settings.
    """
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    runs, baseline, problems, reference = [], None, [], None
    for f in files:
        try:
            record = read_run(f)
        except RunFileError as err:
            problems.append(str(err))
            continue
        if reference is None:
            reference = record
        diff = settings_difference(record["settings"], reference["settings"])
        if diff:
            raise SystemExit(f"cannot combine {f} with {reference['path']}: they were made with different settings "
                             f"({diff}).")
        if record.get("kind") == "baseline":
            baseline = baseline or record
            continue
        key = (record["label"], bool(record["rotation"]), record["seed"])
        twin = next((r for r in runs if (r["label"], bool(r["rotation"]), r["seed"]) == key), None)
        if twin is not None:
            problems.append(f"{f} repeats the run in {twin['path']} ({key[0]}, rotation {key[1]}, seed {key[2]})")
            continue
        runs.append(record)
    return runs, baseline, problems


def passes(run: dict, baseline: dict | None) -> bool:
    """True when the run's 0-degree NME is at most PASS_RATIO x the mean face's (unknown baseline: False)."""
    if baseline is None or 0 not in baseline["nme"]:
        return False
    return run["nme"][0]["mean"] <= PASS_RATIO * baseline["nme"][0]["mean"]
