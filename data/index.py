"""Which samples a processor output folder holds (index.tsv), and the deterministic train/validation split.

Names only: no images or position maps are read here, so indexing 122k samples takes well under a second.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from faceutil.errors import FaceUtilError

INDEX_FILE = "index.tsv"
SHARD_INDEX_GLOB = "index.shard*of*.tsv"
POSMAP_SUFFIX = "_cropped_uv_posmap.npy"
IMAGE_SUFFIX = "_cropped.jpg"
BBOX_SUFFIX = "_bbox_info.mat"

# 300W-LP names its synthesised views of one photo <photo>_<k> (e.g. AFW_134212_1_0 ... AFW_134212_1_17).
_VIEW_SUFFIX = re.compile(r"^(.*_\d+)_\d+$")


def read_index(root: str | Path) -> list[str]:
    """Names of the usable samples under a processor output folder, sorted.

    root: folder written by processor.py. Reads <root>/index.tsv (header "name\tstatus\treason") and any shard
    indexes <root>/index.shard<i>of<n>.tsv (processor --shard), keeping names whose status is "ok"; when a name
    appears on several rows, the last one read wins (index.tsv first, then the shards in name order).
    Without any index file, falls back to the sub-folders <root>/<name>/ that hold <name>_cropped.jpg and
    <name>_cropped_uv_posmap.npy. Raises FaceUtilError for a missing folder, a malformed index, or no samples.
    """
    root = Path(root)
    if not root.is_dir():
        raise FaceUtilError(f"dataset folder {root} does not exist (check the -td/-vd/-pd path).")
    index_paths = [root / INDEX_FILE] if (root / INDEX_FILE).is_file() else []
    index_paths += sorted(root.glob(SHARD_INDEX_GLOB))
    if not index_paths:
        names = sorted(p.name for p in root.iterdir()
                       if (p / (p.name + IMAGE_SUFFIX)).is_file() and (p / (p.name + POSMAP_SUFFIX)).is_file())
        if not names:
            raise FaceUtilError(f"dataset folder {root} has no {INDEX_FILE} and no processed sample folders "
                                f"(run processor.py on it first).")
        return names

    status: dict[str, str] = {}
    for index_path in index_paths:
        status.update(_read_rows(index_path))
    names = sorted(name for name, st in status.items() if st == "ok")
    if not names:
        raise FaceUtilError(f"{index_paths[0]} lists no sample with status 'ok'.")
    return names


def _read_rows(index_path: Path) -> dict[str, str]:
    """name -> status from one index file; raises FaceUtilError naming the file and line when malformed."""
    status: dict[str, str] = {}
    with open(index_path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n\r").split("\t")
        if header[:2] != ["name", "status"]:
            raise FaceUtilError(f"{index_path} does not start with the header 'name<TAB>status<TAB>reason'.")
        for line_no, line in enumerate(fh, start=2):
            line = line.rstrip("\n\r")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in ("ok", "skipped"):
                raise FaceUtilError(f"{index_path} line {line_no} is not 'name<TAB>ok|skipped<TAB>reason'.")
            status[fields[0]] = fields[1]
    return status


def group_of(name: str) -> str:
    """The source photo a sample name belongs to: 300W-LP views '<photo>_<k>' share '<photo>'; else the name."""
    match = _VIEW_SUFFIX.match(name)
    return match.group(1) if match else name


def split_names(names: list[str], val_fraction: float = 0.02, seed: int = 0,
                group: bool = True) -> tuple[list[str], list[str]]:
    """Deterministic, disjoint train/validation split of sample names.

    names: sample names (order and duplicates do not matter: the split depends only on the set of names).
    val_fraction: share of samples held out, in [0, 1); the validation set gets round(val_fraction * n) samples,
    rounded up to whole groups. group=True keeps every view of one photo (see group_of) on the same side, so
    the validation set holds no re-rendered twin of a training face (300W-LP has up to 18 views per photo).
    Returns (train_names, val_names), each sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(names))
    n_val = int(round(val_fraction * len(unique)))
    if n_val == 0:
        return unique, []
    groups: dict[str, list[str]] = {}
    for name in unique:
        groups.setdefault(group_of(name) if group else name, []).append(name)
    keys = sorted(groups)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(len(keys))
    val: list[str] = []
    for k in order:
        if len(val) >= n_val:
            break
        members = groups[keys[k]]
        if len(val) + len(members) < len(unique):  # never hold out everything
            val.extend(members)
    val_set = set(val)
    return [n for n in unique if n not in val_set], sorted(val)
