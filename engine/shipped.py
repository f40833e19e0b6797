"""The network that ships with the repository (issue 25, item 4): `-predict` uses it when no --loadModelPath is given.

The shipped file is an ordinary checkpoint (engine.checkpoint format: model name, builder arguments, face model,
weights) holding the weights only, floating-point parameters stored as float16 (half the size; buffers such as the
mean position map stay float32), and a "shipped" record saying what it was trained on, how, and how well it does.
Beside it, <file>.sha256 holds its SHA-256, checked before every load, so a damaged or half-written file is one
clear sentence (how to restore or rebuild it), never a wrong prediction.

    python -m engine.shipped SOURCE.pth [--note JSON]    # write weights/e2tkface-synthetic.pth (+ .sha256) from a run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from .errors import RunError

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "e2tkface-synthetic.pth"
REBUILD = "python -m engine.shipped savedmodel/<run>/best.pth"


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_path(path: Path | None = None) -> Path:
    """The shipped checkpoint (default SHIPPED), its SHA-256 checked; RunError (one sentence: how to restore or
    rebuild it) when the file or its checksum is absent, or they disagree."""
    path = Path(path or SHIPPED)
    shown = _shown(path)
    if not path.is_file():
        raise RunError(f"No --loadModelPath was given and no shipped network is at {shown}; pass "
                       f"--loadModelPath=PATH to a trained checkpoint (`python torchrun.py --demo` makes one), or make "
                       f"one the default with `{REBUILD}`.")
    digest = digest_path(path)
    expected = digest.read_text(encoding="utf-8").split()[0] if digest.is_file() else ""
    if not expected or sha256(path) != expected:
        raise RunError(f"The shipped network {shown} is damaged (its SHA-256 does not match {digest.name}); restore "
                       f"it with `git checkout -- {shown}` or rebuild it with `{REBUILD}`.")
    return path


def ship(source: str | Path, dest: Path | None = None, note: dict | None = None) -> Path:
    """Write the weights of the checkpoint `source` as a shipped file at `dest` (atomically), floating-point
    parameters as float16, with `note` as its "shipped" record; then its .sha256. Returns dest."""
    from faceutil.sampleio import atomic_write_bytes

    from .checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint

    dest = Path(dest or SHIPPED)
    ck = load_checkpoint(source)
    if ck.get("model_name") is None:
        raise RunError(f"{source} is a bare state_dict; ship a checkpoint saved by this toolkit (it records the "
                       "model).")
    buffers = _buffer_names(ck, source)
    weights = {k: (v.half() if v.is_floating_point() and k not in buffers else v) for k, v in ck["model"].items()}
    shipped = {"format": FORMAT, "version": VERSION, "model_name": ck["model_name"],
               "model_kwargs": dict(ck.get("model_kwargs") or {}), "bfm": ck.get("bfm"), "model": weights,
               "shipped": {"source": str(source), "epoch": ck.get("epoch"), **(note or {})}}
    save_checkpoint(dest, shipped)
    atomic_write_bytes(digest_path(dest), f"{sha256(dest)}  {dest.name}\n".encode("utf-8"))
    return dest


def _buffer_names(ck: dict, source) -> set:
    """Names of the network's buffers (BatchNorm statistics, the mean position map, e2cnn's bases): they keep their
    dtype; only parameters go to float16."""
    from .loading import build_network

    net = build_network(ck["model_name"], dict(ck.get("model_kwargs") or {}), source)
    return {name for name, _ in net.named_buffers()}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.shipped", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a checkpoint saved by training (best.pth / last.pth)")
    p.add_argument("--out", default=str(SHIPPED), help="where to write the shipped file (default: %(default)s)")
    p.add_argument("--note", default="{}", help="JSON: what it was trained on, the command, its figures")
    args = p.parse_args(argv)
    try:
        note = json.loads(args.note)
        if not isinstance(note, dict):
            raise ValueError
    except ValueError:
        print("engine.shipped: --note must be a JSON object, e.g. '{\"trained_on\": \"...\"}'.", file=sys.stderr)
        return 2
    try:
        path = ship(args.source, Path(args.out), note)
    except RunError as err:
        print(f"engine.shipped: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {digest_path(path).name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
