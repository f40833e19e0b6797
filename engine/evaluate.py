"""AFLW2000-3D evaluation: predict position maps, read the 68 landmarks, map them back to the original image,
and report 2D / 3D NME per yaw bin (3DDFA protocol), dense NME where truth maps exist, and per-image CSV rows.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from config import Config, resolve_bfm
from engine.errors import RunError

if TYPE_CHECKING:
    from faceutil.uv import UVLayout

PROTOCOL = ("AFLW2000-3D protocol: 68-point NME (%) normalised by sqrt(w*h) of the ground-truth 2D landmark box; "
            "yaw = degrees(Pose_Para[1]) as stored, bins on |yaw| (not wrapped); 3D: z of prediction and truth "
            "each centred on its mean; dense: all face-mask pixels of the position map, same normaliser rule.")
BINS = ("|yaw|<=30", "30<|yaw|<=60", "|yaw|>60")


@dataclass
class EvalReport:
    """Per-image results (arrays of length N, in dataset order) and the per-yaw-bin summaries."""

    folder: str
    names: list
    yaw: np.ndarray
    nme2d: np.ndarray
    nme3d: np.ndarray
    landmarks: np.ndarray                      # (N, 68, 3) predictions, original image px
    truth: np.ndarray                          # (N, 68, 3) pt3d_68, original image px
    nme2d_reannotated: np.ndarray | None = None
    dense: np.ndarray | None = None
    skipped: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    csv_path: Path | None = None

    def table(self) -> str:
        """The result table, with the protocol stated above it."""
        from faceutil.metrics import nme_by_yaw

        counts = nme_by_yaw(self.nme2d, self.yaw)["counts"]
        head = (f"{'ground truth':<28}" + "".join(f"{b:>14}" for b in BINS) + f"{'mean of bins':>14}{'mean':>9}")
        sub = f"{'':<28}" + "".join(f"{'n=' + str(counts[b]):>14}" for b in BINS)
        lines = [PROTOCOL, f"{len(self.names)} images from {self.folder}"
                 + (f" ({len(self.skipped)} skipped)" if self.skipped else ""), head, sub]
        for label, stats in self.summary.items():
            lines.append(f"{label:<28}" + "".join(f"{_fmt(stats[b]):>14}" for b in BINS)
                         + f"{_fmt(stats['mean_of_bins']):>14}{_fmt(stats['mean']):>9}")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


# --------------------------------------------------------------------------------------------- model loading
def load_for_inference(path: str | Path, config: Config, factory: Callable[..., nn.Module] | None = None,
                       device: torch.device | None = None):
    """engine.loading.LoadedNetwork of a checkpoint for evaluation: eval mode, exported when --export and the model
    offers export(), on `device`, channels_last / compiled as the config says. The checkpoint's recorded model
    name/kwargs win (an explicit different --model is a RunError); the face model is --bfm when given, else the one
    the checkpoint records."""
    from engine.loading import load_network, model_spec

    given = config.given
    name, kwargs = model_spec(config)
    loaded = load_network(path, model=name if "model" in given else None, model_kwargs=kwargs,
                          bfm=config.bfm if "bfm" in given else None, export=config.export, factory=factory)
    model = loaded.module
    if device is not None:
        model = model.to(device)
    if config.channels_last:
        from model.device import to_channels_last

        to_channels_last(model)
    model = model.eval()
    loaded.module = torch.compile(model) if config.compile else model
    return loaded


# --------------------------------------------------------------------------------------------- core
class MeanPosmapModel(nn.Module):
    """Reference 'network': the mean training position map for every image, whatever the image (the mean face).

    A trained network whose NME is not clearly below this one's has learnt little beyond the mean face.
    train_root: processor output folder; names: the samples to average (default: its whole index).
    forward: (B, 3, S, S) -> (B, 3, 256, 256) position map / 280.
    """

    def __init__(self, train_root: str | Path, names: list[str] | None = None):
        super().__init__()
        from data.dataset import PosmapDataset, posmap_tensor
        from data.index import read_index

        base = PosmapDataset(train_root, names if names is not None else read_index(train_root), augment=False)
        self.register_buffer("map", posmap_tensor(base.mean_posmap(limit=len(base), minimum=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map.to(x.device).expand(x.shape[0], -1, -1, -1)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, kpt_ind: np.ndarray, face_mask: np.ndarray | None,
                   device: torch.device | str = "cpu", batch_size: int = 8, progress: bool = False,
                   reannotated: np.ndarray | None = None, folder: str = "", precision: str = "fp32") -> EvalReport:
    """Run ``model`` over an AFLWEvalSet-like dataset and compute the protocol's NMEs.

    precision: the forward pass runs under model.device.autocast_context(device, precision).
    kpt_ind: (2, 68) UV landmark pixels (row 0 column, row 1 row). face_mask: (256, 256) bool for dense NME.
    reannotated: optional (N, 68, 2) landmarks, original px, in dataset order (2D NME against them too).
    """
    from faceutil.crop import Similarity
    from faceutil.metrics import dense_nme, nme, nme_by_yaw
    from faceutil.uv import posmap_landmarks

    from model.head import to_posmaps
    from model.device import autocast_context

    device = torch.device(device)
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    if progress:
        from faceutil.progress import progress as progress_bar

        loader = progress_bar(loader, desc="evaluating", unit="batch", lines=False, leave=False)
    names, yaws, preds, truths, dense = [], [], [], [], []
    for batch in loader:
        with autocast_context(device, precision):
            out = model(batch["image"].to(device))
        pred_maps = to_posmaps(out)                                           # (B, 256, 256, 3) crop px
        crop_pts = posmap_landmarks(pred_maps, kpt_ind)                       # (B, 68, 3) crop px
        matrices = batch["matrix"].numpy()
        for b in range(crop_pts.shape[0]):
            preds.append(Similarity(matrices[b]).inverse().apply(crop_pts[b]))  # x, y original px; z / scale
        truths.append(batch["pt3d_68"].numpy().astype(np.float64))
        names.extend(batch["name"])
        yaws.append(batch["yaw"].numpy().astype(np.float64))
        if "posmap" in batch and face_mask is not None:
            dense.append(dense_nme(pred_maps, to_posmaps(batch["posmap"]), face_mask))
    pred = np.stack(preds)
    gt = np.concatenate(truths)
    yaw = np.concatenate(yaws)
    report = EvalReport(folder=folder, names=names, yaw=yaw, nme2d=nme(pred[..., :2], gt[..., :2]),
                        nme3d=nme(pred, gt), landmarks=pred, truth=gt, skipped=list(getattr(dataset, "skipped", [])))
    report.summary["pt3d_68 2D"] = nme_by_yaw(report.nme2d, yaw)
    report.summary["pt3d_68 3D"] = nme_by_yaw(report.nme3d, yaw)
    if reannotated is not None:
        attach_reannotated(report, reannotated)
    if dense and len(dense) == math.ceil(len(names) / batch_size):
        report.dense = np.concatenate(dense)
        report.summary["dense 3D (face mask)"] = nme_by_yaw(report.dense, yaw)
    return report


def attach_reannotated(report: EvalReport, reannotated: np.ndarray) -> None:
    """Add 2D NME against re-annotated landmarks (N, 68, 2), original px, in the report's image order."""
    from faceutil.metrics import nme, nme_by_yaw

    report.nme2d_reannotated = nme(report.landmarks[..., :2], np.asarray(reannotated, dtype=np.float64))
    report.summary["reannotated 2D"] = nme_by_yaw(report.nme2d_reannotated, report.yaw)


def reannotated_rows(gt_file: str | Path, names: list[str], pt3d: np.ndarray) -> np.ndarray:
    """(N, 68, 2) re-annotated landmarks for ``names`` from a (M, 2, 68) file in sorted-name row order.

    Rows are matched by position when M == N; otherwise by a sample_index.tsv (name, row) beside the file, or by
    the exact pt3d_68 in an AFLW2000-3D.pts68.npy beside it. Raises RunError when no rule applies.
    """
    gt_file = Path(gt_file)
    try:
        table = np.load(gt_file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RunError(f"Cannot read --gt-file {gt_file}: {err}.") from None
    if table.ndim != 3 or table.shape[1:] != (2, 68):
        raise RunError(f"--gt-file {gt_file} has shape {table.shape}, expected (N, 2, 68).")
    table = table.transpose(0, 2, 1).astype(np.float64)
    order = np.argsort(np.array(names))
    if table.shape[0] == len(names):
        out = np.empty_like(table)
        out[order] = table                 # row k of the file belongs to the k-th name in sorted order
        return out
    index = gt_file.parent / "sample_index.tsv"
    if index.is_file():
        rows = {}
        for line in index.read_text().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                rows[parts[0]] = int(parts[1])
        missing = [n for n in names if n not in rows]
        if not missing:
            return table[[rows[n] for n in names]]
    pts68 = gt_file.parent / "AFLW2000-3D.pts68.npy"
    if pts68.is_file():
        full = np.load(pts68, allow_pickle=False).transpose(0, 2, 1).astype(np.float64)   # (M, 68, 3)
        picks = []
        for p in np.asarray(pt3d, dtype=np.float64):
            err = np.abs(full - p[None]).max(axis=(1, 2))
            k = int(np.argmin(err))
            if err[k] > 1e-2:
                break
            picks.append(k)
        if len(picks) == len(names):
            return table[picks]
    raise RunError(f"Cannot match the {len(names)} evaluation images to the {table.shape[0]} rows of {gt_file}: "
                   f"evaluate the whole set, or put sample_index.tsv or AFLW2000-3D.pts68.npy beside it.")


def write_csv(report: EvalReport, path: str | Path) -> Path:
    """Per-image results as CSV (atomic): name, yaw_deg, nme2d, nme3d[, nme2d_reannotated][, dense_nme]."""
    from faceutil.sampleio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["name", "yaw_deg", "nme2d", "nme3d"]
    columns = [report.yaw, report.nme2d, report.nme3d]
    for title, values in (("nme2d_reannotated", report.nme2d_reannotated), ("dense_nme", report.dense)):
        if values is not None:
            header.append(title)
            columns.append(values)
    writer.writerow(header)
    for i, name in enumerate(report.names):
        writer.writerow([name] + [f"{c[i]:.6f}" for c in columns])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    report.csv_path = path
    return path


def write_summary(report: EvalReport, path: str | Path, extra: dict | None = None) -> Path:
    """The summary table values as JSON (atomic)."""
    from faceutil.sampleio import atomic_write_bytes

    data = {"protocol": PROTOCOL, "folder": report.folder, "images": len(report.names),
            "skipped": [list(s) for s in report.skipped], "summary": report.summary, **(extra or {})}
    text = json.dumps(data, indent=2, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
    atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))
    return Path(path)


# --------------------------------------------------------------------------------------------- CLI entry
def run_evaluation(config: Config, checkpoint: str | Path | None = None,
                   factory: Callable[..., nn.Module] | None = None, model: nn.Module | None = None,
                   tag: str | None = None, quiet: bool = False, uv: UVLayout | None = None,
                   bfm: str | None = None) -> EvalReport:
    """-test=True: evaluate ``checkpoint`` (or --loadModelPath, or an in-memory ``model``) on -pd.

    checkpoint: a .pth (an exported .onnx file goes through inference.backends.run_test, which opens it and passes
    it here as ``model``). The face model (landmark pixels, face mask) is ``bfm`` when given, else --bfm when given,
    else the one the checkpoint records. Prints the table, writes <run>/eval-<folder>[-tag].csv and .json (with the
    face model). Returns the report.
    """
    from data.dataset import AFLWEvalSet
    from faceutil.uv import check_face_model, uv_layout
    from model.device import get_device

    checkpoint = checkpoint or config.load_model_path
    if model is None and checkpoint is None:
        raise RunError("Evaluation needs a checkpoint: pass --loadModelPath=PATH.")
    dataset = AFLWEvalSet(config.predict_dir)
    device = get_device(config.device)
    bfm = bfm or resolve_bfm(config.bfm)
    if model is None and Path(checkpoint).suffix.lower() == ".onnx":
        raise RunError(f"{checkpoint} is an ONNX file: evaluate it with torchrun.py -test (inference.backends).")
    if model is None:
        loaded = load_for_inference(checkpoint, config, factory, device)
        model, bfm = loaded.module, loaded.bfm
    layout = uv if uv is not None else uv_layout(bfm)
    kpt_ind, face_mask = layout.kpt_ind, layout.face_mask
    if dataset.kind == "processed":                              # its position maps must be of this UV layout
        note = check_face_model(config.predict_dir, bfm, layout)
        if note and not quiet:
            print(note, file=sys.stderr)
    report = evaluate_model(model, dataset, kpt_ind, face_mask, device, config.batch_size,
                            progress=config.progress and not quiet, folder=str(config.predict_dir),
                            precision=config.precision)
    if config.gt == "reannotated":
        attach_reannotated(report, reannotated_rows(config.gt_file, report.names, report.truth))
    out = Path(config.out) if config.out else (Path(checkpoint).parent if checkpoint else Path("."))
    stem = f"eval-{Path(config.predict_dir).resolve().name}" + (f"-{tag}" if tag else "")
    write_csv(report, out / f"{stem}.csv")
    write_summary(report, out / f"{stem}.json", {"checkpoint": str(checkpoint) if checkpoint else None,
                                                 "face_model": bfm})
    if not quiet:
        print(report.table())
        print(f"per-image results: {report.csv_path}")
    return report
