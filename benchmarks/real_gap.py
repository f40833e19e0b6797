"""Where the synthetic-to-real gap is (issue 25, item 1): the mean face, the landmark geometry, the pose
distribution, measured on the genuine AFLW2000-3D data in ../shared/data.

    python -m benchmarks.real_gap [--train FOLDER] [--network LABEL=CHECKPOINT ...]
                                                        # -> results/real_gap.md + .json (summaries only)

Sections (every NME is the protocol's 68-point 2D NME, % of sqrt(w h) of the ground-truth landmark box):
  1. The mean face in the protocol's crop frame (what `-test` scores for a network that outputs its training set's
     mean position map): the synthetic training set's mean on the 31 genuine samples and on the synthetic test set,
     beside the *real* data's own mean (the crop-frame landmarks of the other 1,969 AFLW2000-3D faces) on the same
     31: the floor no mean face can beat.
  2. Landmark geometry alone: each model's mean 68 landmarks turned by the genuine face's annotated pose
     (Pose_Para), projected, and placed on the annotation by the best 2D similarity, per landmark group: the
     synthetic model, the BFM mean (3DDFA's u_shp + u_exp tables, the model the annotations were fitted with) and
     ICT-FaceKit's neutral face (MIT).
  3. The same posed mean, placed by the crop rule only (its landmark box onto the annotation's): what a network
     that reads the pose exactly and nothing else would score.
  4. Pose: |yaw| bins, pitch and roll spread of the synthetic draws against the genuine annotations.
  5. How much faces differ beyond pose and size (identity and expression): the genuine annotations' 3D landmarks
     against the synthetic model's draws, after generalised Procrustes, per landmark group.
  6. (with --network) Trained networks' errors taken apart, on the genuine samples, on the synthetic test set and on
     a synthetic test set drawn with every randomisation of faceutil.appearance (the "full" look):
     the NME as `-test` scores it, what is left after the best 2D similarity (the error that no placement fixes)
     or after box placement, and how far the predicted 68 landmarks are turned in 3D from the annotated ones
     (rotation of their best 3D similarity, degrees): does the network misread the head's rotation, or its place?
Only summaries are written: the per-face figures derive from licensed annotations and stay outside the repository.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "mouth": range(48, 68)}
FRONTAL = 30.0                                  # |yaw| <= this many degrees: the "frontal" subset
YAW_BINS = (0.0, 30.0, 60.0, 90.0)


def align_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`src` (n, 2) moved onto `dst` (n, 2) by the least-squares 2D similarity (rotation, no reflection)."""
    a0, b0 = src - src.mean(0), dst - dst.mean(0)
    u, s, vt = np.linalg.svd(a0.T @ b0)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ d @ vt
    return (np.trace(np.diag(s) @ d) / np.sum(a0 * a0)) * a0 @ rot + dst.mean(0)


def place_by_box(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`src` (n, 2) moved onto `dst` the way the crop rule places a face: box centre onto box centre, the larger
    box side onto the larger box side (faceutil.crop.crop_similarity)."""
    def box(p):
        lo, hi = p.min(0), p.max(0)
        return (lo + hi) / 2.0, float(np.max(hi - lo))
    (ca, sa), (cb, sb) = box(src), box(dst)
    return (src - ca) * (sb / sa) + cb


def point_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(68,) per-landmark 2D error in % of sqrt(w h) of the ground truth's box (their mean is faceutil.metrics.nme)."""
    span = gt.max(0) - gt.min(0)
    return 100.0 * np.linalg.norm(pred - gt, axis=1) / math.sqrt(span[0] * span[1])


def genuine_samples() -> list[dict]:
    """The 31 genuine samples: {"name", "pose" (7,), "gt" (68, 2) original px}."""
    import scipy.io as sio

    from faceutil.pose import angle2matrix, matrix2angle

    out = []
    for mat in sorted((SHARED / "aflw2000_samples").glob("*.mat")):
        d = sio.loadmat(mat)
        pose = d["Pose_Para"].ravel().astype(np.float64)
        pose[:3] = matrix2angle(angle2matrix(*pose[:3]))      # the same rotation, yaw in +-90 (a few are wrapped)
        out.append({"name": mat.stem, "pose": pose, "gt": d["pt3d_68"][:2].T.astype(np.float64)})
    return out


def model_landmarks() -> dict:
    """Mean 68 landmarks (68, 3) of each model, in its own units (+x image right, +y up, +z towards the camera)."""
    from faceutil.facemodel import load_model

    syn = load_model("synthetic")
    bfm = SHARED / "bfm_small" / "3ddfa"
    mean = np.load(bfm / "u_shp.npy") + np.load(bfm / "u_exp.npy")
    ict = np.load(SHARED / "permissive_models" / "ict_facekit" / "ict_face_model_light_face_headneck.npz")
    return {"synthetic model": syn.mean[syn.kpt_ind].astype(np.float64),
            "BFM mean (3DDFA tables)": mean[np.load(bfm / "keypoints_sim.npy")].reshape(68, 3).astype(np.float64),
            "ICT-FaceKit neutral": ict["neutral_vertices"][ict["landmarks_68_vertex_idx"]].astype(np.float64)}


def summary(errors: np.ndarray, frontal: np.ndarray) -> dict:
    """errors (faces, 68) % -> mean, frontal mean, and per landmark group."""
    face = errors.mean(1)
    return {"all": float(face.mean()), "frontal": float(face[frontal].mean()),
            **{g: float(errors[:, list(r)].mean()) for g, r in GROUPS.items()}}


def geometry_rows(samples: list[dict]) -> dict:
    """Sections 2 and 3: each model's mean posed by the annotated rotation, placed by similarity / by box."""
    from faceutil.pose import project

    frontal = np.array([abs(math.degrees(s["pose"][1])) <= FRONTAL for s in samples])
    rows = {}
    for name, lms in model_landmarks().items():
        aligned, boxed = [], []
        for s in samples:
            pose = s["pose"].copy()
            pose[3:6], pose[6] = 0.0, 1.0                       # the rotation only: placement is the test's
            pts = project(lms, pose, 450)[:, :2].astype(np.float64)
            aligned.append(point_errors(align_2d(pts, s["gt"]), s["gt"]))
            boxed.append(point_errors(place_by_box(pts, s["gt"]), s["gt"]))
        rows[name] = {"similarity": summary(np.array(aligned), frontal), "box": summary(np.array(boxed), frontal)}
    return rows


def mean_face_rows(samples: list[dict], train_root: Path, synthetic_test: Path) -> dict:
    """Section 1: the crop-frame mean faces on the genuine samples (and the synthetic one on its own test set)."""
    from faceutil.crop import crop_similarity

    gt_all = np.load(SHARED / "aflw2000_gt" / "AFLW2000-3D.pts68.npy").transpose(0, 2, 1)[..., :2].astype(np.float64)
    with open(SHARED / "aflw2000_gt" / "sample_index.tsv", newline="") as f:
        rows = {r[0]: int(r[1]) for r in csv.reader(f, delimiter="\t") if len(r) == 2 and r[1].isdigit()}
    held = [rows[s["name"]] for s in samples]
    crops = np.stack([crop_similarity(p).apply(np.c_[p, np.zeros(68)])[:, :2] for p in gt_all])
    real_mean = crops[np.setdiff1d(np.arange(len(crops)), held)].mean(0)
    synth_mean = synthetic_mean_crop(train_root)
    frontal = np.array([abs(math.degrees(s["pose"][1])) <= FRONTAL for s in samples])

    def score(mean_crop, faces):
        errs = []
        for gt in faces:
            back = crop_similarity(gt).inverse().apply(np.c_[mean_crop, np.zeros(68)])[:, :2]
            errs.append(point_errors(back, gt))
        return np.array(errs)
    genuine = [s["gt"] for s in samples]
    out = {"synthetic training mean, on the 31 genuine": summary(score(synth_mean, genuine), frontal),
           "real AFLW2000-3D mean (the other 1,969 faces), on the 31 genuine":
               summary(score(real_mean, genuine), frontal)}
    test = synthetic_test_faces(synthetic_test)
    out["synthetic training mean, on the synthetic test set"] = summary(score(synth_mean, test["gt"]), test["frontal"])
    return out


def synthetic_mean_crop(train_root: Path) -> np.ndarray:
    """(68, 2) crop px: the landmarks of the mean position map of a processed training folder (the mean face)."""
    from data.dataset import PosmapDataset, posmap_tensor
    from data.index import read_index
    from faceutil.uv import posmap_landmarks, uv_layout
    from model.head import to_posmaps

    base = PosmapDataset(train_root, read_index(train_root), augment=False)
    maps = to_posmaps(posmap_tensor(base.mean_posmap(limit=len(base), minimum=1))[None])
    return posmap_landmarks(maps, uv_layout("synthetic").kpt_ind)[0][:, :2].astype(np.float64)


def synthetic_test_faces(folder: Path) -> dict:
    import scipy.io as sio

    mats = sorted(folder.glob("*.mat"))
    data = [sio.loadmat(m) for m in mats]
    return {"gt": [d["pt3d_68"][:2].T.astype(np.float64) for d in data],
            "frontal": np.array([abs(math.degrees(d["Pose_Para"].ravel()[1])) <= FRONTAL for d in data])}


def spread(angles: np.ndarray) -> dict:
    """Robust spread (1.4826 x median |angle|, degrees) of pitch and roll, and the share beyond 20 degrees."""
    return {f"{name}_{what}": float(1.4826 * np.median(np.abs(col)) if what == "sd" else np.mean(np.abs(col) > 20))
            for name, col in (("pitch", angles[:, 0]), ("roll", angles[:, 2])) for what in ("sd", "over20")}


def pose_rows(samples: list[dict], draws: int = 2000) -> dict:
    """Section 4: |yaw| bin shares, pitch / roll spread (degrees), synthetic draws against genuine annotations."""
    from faceutil.facemodel import load_model
    from faceutil.synthetic import draw_params

    model = load_model("synthetic")
    yaw_all = np.abs(np.load(SHARED / "aflw2000_gt" / "AFLW2000-3D.pose.npy").astype(np.float64))
    yaw_all = np.minimum(yaw_all % 360.0, 360.0 - yaw_all % 360.0)          # a few stored angles are wrapped

    def bins(yaw):
        return [float(np.mean((yaw >= lo) & (yaw < hi if hi < 90 else yaw <= 180))) for lo, hi in
                zip(YAW_BINS[:-1], YAW_BINS[1:])]
    out = {}
    for kind in ("300W_LP", "AFLW2000"):
        rng = np.random.default_rng(0)
        poses = np.array([draw_params(rng, model, kind)[0] for _ in range(draws)])
        ang = np.degrees(poses[:, :3])
        out[f"synthetic {kind} draws ({draws})"] = {"yaw_bins": bins(np.abs(ang[:, 1])), **spread(ang)}
    ang = np.degrees(np.array([s["pose"][:3] for s in samples]))
    out["genuine AFLW2000-3D (yaw: all 2,000; pitch, roll: the 31)"] = {"yaw_bins": bins(yaw_all), **spread(ang)}
    return out


def align_3d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`src` (n, 3) moved onto `dst` (n, 3) by the least-squares 3D similarity (rotation, no reflection)."""
    a0, b0 = src - src.mean(0), dst - dst.mean(0)
    u, s, vt = np.linalg.svd(a0.T @ b0)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    return (np.trace(np.diag(s) @ d) / np.sum(a0 * a0)) * a0 @ (u @ d @ vt) + dst.mean(0)


def shape_spread(shapes: np.ndarray, rounds: int = 5) -> dict:
    """How much a set of 3D landmark shapes (faces, 68, 3) differ beyond pose and size: each moved onto the set's
    mean by the best 3D similarity (generalised Procrustes, `rounds` rounds), then the mean distance of a landmark
    from the mean shape in % of sqrt(w h) of the mean's 2D box (the NME's scale), per landmark group; and how many
    principal components hold 90 % of the aligned shapes' variance."""
    ref = shapes[0] - shapes[0].mean(0)
    for _ in range(rounds):
        aligned = np.stack([align_3d(x, ref) for x in shapes])
        ref = aligned.mean(0) - aligned.mean(0).mean(0)
    aligned = np.stack([align_3d(x, ref) for x in shapes])
    span = ref[:, :2].max(0) - ref[:, :2].min(0)
    size = math.sqrt(span[0] * span[1])
    dev = 100.0 * np.linalg.norm(aligned - ref, axis=2) / size
    flat = (aligned - ref).reshape(len(shapes), -1)
    var = np.linalg.svd(flat - flat.mean(0), compute_uv=False) ** 2
    return {"all": float(dev.mean()), **{g: float(dev[:, list(r)].mean()) for g, r in GROUPS.items()},
            "dims90": int(np.searchsorted(np.cumsum(var) / var.sum(), 0.9) + 1)}


def spread_rows(draws: int = 2000) -> dict:
    """Section 5: the identity and expression spread of the genuine AFLW2000-3D landmarks (all 2,000 faces' 3D
    pt3d_68, as fitted for the annotation) against the synthetic model's draws (faceutil.synthetic.draw_params)."""
    from faceutil.facemodel import load_model
    from faceutil.synthetic import draw_params

    real = np.load(SHARED / "aflw2000_gt" / "AFLW2000-3D.pts68.npy").transpose(0, 2, 1).astype(np.float64)
    model, rng = load_model("synthetic"), np.random.default_rng(0)
    params = [draw_params(rng, model, "300W_LP")[1:] for _ in range(draws)]
    return {"genuine AFLW2000-3D (2,000 faces)": shape_spread(real),
            f"synthetic draws ({draws}), identity and expression":
                shape_spread(np.array([model.landmarks(sp, ep) for sp, ep in params], dtype=np.float64)),
            f"synthetic draws ({draws}), identity only":
                shape_spread(np.array([model.landmarks(sp, None) for sp, _ in params], dtype=np.float64)),
            f"ICT-FaceKit identities (weights N(0, 1), {draws} draws)": shape_spread(ict_identities(draws))}


def ict_identities(draws: int) -> np.ndarray:
    """(draws, 68, 3) landmarks of ICT-FaceKit faces (MIT): the neutral face plus its 100 identity deltas, each with
    a standard normal weight (how the FaceKit's own code draws a random identity), no expression."""
    ict = np.load(SHARED / "permissive_models" / "ict_facekit" / "ict_face_model_light_face_headneck.npz")
    index = ict["landmarks_68_vertex_idx"]
    neutral, deltas = ict["neutral_vertices"][index].astype(np.float64), ict["identity_deltas"][:, index]
    weights = np.random.default_rng(0).standard_normal((draws, len(deltas)))
    return neutral + np.einsum("ni,ijk->njk", weights, deltas.astype(np.float64))


def rotation_misread(pred: np.ndarray, gt: np.ndarray) -> float:
    """Angle (degrees) of the rotation of the best 3D similarity taking `pred` (n, 3) onto `gt` (n, 3): how far
    the predicted landmarks are turned from the true ones, whatever their place and size."""
    a, b = pred - pred.mean(0), gt - gt.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0]) @ vt
    return math.degrees(math.acos(float(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def decompose(pred: np.ndarray, gt: np.ndarray) -> dict:
    """(faces, 68, 3) predicted and true landmarks (original px) -> mean NME as scored, after the best 2D
    similarity, after box placement, and the mean / median 3D rotation misread (degrees)."""
    turn = [rotation_misread(p, g) for p, g in zip(pred, gt)]
    p2, g2 = pred[..., :2].astype(np.float64), gt[..., :2].astype(np.float64)
    return {"nme": float(np.mean([point_errors(p, g).mean() for p, g in zip(p2, g2)])),
            "similarity": float(np.mean([point_errors(align_2d(p, g), g).mean() for p, g in zip(p2, g2)])),
            "box": float(np.mean([point_errors(place_by_box(p, g), g).mean() for p, g in zip(p2, g2)])),
            "turn_mean": float(np.mean(turn)), "turn_median": float(np.median(turn))}


def full_appearance_test(count: int = 120, seed: int = 1) -> Path:
    """A synthetic AFLW2000-format test set drawn with every randomisation of faceutil.appearance ("full", wider
    pitch and roll included): `count` images, made once under the studies' data folder (the plain study test set's
    count and seed by default)."""
    from benchmarks.study_data import DATA_WORK
    from faceutil.appearance import Appearance
    from faceutil.facemodel import load_model
    from faceutil.synthetic import synthesize_dataset

    folder = DATA_WORK / f"test{count}-seed{seed}-full" / "AFLW2000"
    if len(list(folder.glob("*.mat"))) < count:
        synthesize_dataset(folder, "AFLW2000", count, seed, model=load_model("synthetic"),
                           appearance=Appearance.parse("full"))
    return folder


def network_rows(networks: dict, synthetic_test: Path) -> dict:
    """Section 6: {label: {"genuine": decompose(...), "synthetic": decompose(...)}} for each {label: checkpoint}, and
    the same for the first network's own mean face (the mean-residual head's mean map, residual zeroed)."""
    import torch

    from data.dataset import AFLWEvalSet
    from engine.evaluate import evaluate_model
    from engine.loading import load_network
    from faceutil.uv import uv_layout

    class MeanFace(torch.nn.Module):
        """(B, 3, 256, 256) -> the network's mean position map for every image."""

        def __init__(self, io):
            super().__init__()
            self.io = io

        def forward(self, x):
            return self.io.mean_posmap.expand(x.shape[0], -1, -1, -1)

    sets = {"genuine": AFLWEvalSet(SHARED / "aflw2000_samples"), "synthetic": AFLWEvalSet(synthetic_test),
            "synthetic, full appearance": AFLWEvalSet(full_appearance_test(len(list(synthetic_test.glob("*.mat")))))}
    out = {}
    for i, (label, path) in enumerate(networks.items()):
        net = load_network(path)
        variants = [(label, net.module)]
        if i == 0 and getattr(getattr(net.module, "io", None), "head", None) == "mean-residual":
            variants.append((f"{label}: its mean face", MeanFace(net.module.io)))
        kpt = uv_layout(net.bfm).kpt_ind
        for name, module in variants:
            reports = {k: evaluate_model(module, ds, kpt, None, "cpu", 8) for k, ds in sets.items()}
            out[name] = {k: decompose(r.landmarks, r.truth) for k, r in reports.items()}
    return out


def write_report(record: dict) -> None:
    from faceutil.sampleio import atomic_write_bytes

    groups = list(GROUPS)

    def table(rows: dict, key=None) -> list[str]:
        head = "| | all 31 | \\|yaw\\| ≤ 30° | " + " | ".join(groups) + " |"
        lines = [head, "|" + "---|" * (3 + len(groups))]
        for name, r in rows.items():
            r = r[key] if key else r
            lines.append(f"| {name} | {r['all']:.2f} | {r['frontal']:.2f} | "
                         + " | ".join(f"{r[g]:.2f}" for g in groups) + " |")
        return lines
    md = ["# Where the synthetic-to-real gap is (issue 25)", "",
          f"Generated {record['date']} by `python -m benchmarks.real_gap`; synthetic training set: "
          f"`{record['train']}`. 2D NME (%) on the 31 genuine AFLW2000-3D samples in ../shared/data "
          f"({record['frontal_count']} with |yaw| ≤ 30°), per landmark group the mean point error on the same "
          "scale. Summaries only.", "",
          "## 1. The mean face in the protocol's crop frame", "",
          "What `-test` gives a network that outputs its training set's mean position map, and the same for the "
          "real data's own mean: the crop-frame landmarks of the other 1,969 AFLW2000-3D faces averaged.", ""]
    md += table(record["mean_face"]) + [""]
    md += ["## 2. Landmark geometry alone: the mean landmarks at the annotated pose, best similarity", "",
           "Each model's mean 68 landmarks turned by the face's Pose_Para rotation, projected, and moved onto the "
           "annotation by the least-squares 2D similarity. The BFM mean is the model the annotations were fitted "
           "with: the floor.", ""]
    md += table(record["geometry"], "similarity") + [""]
    md += ["## 3. The same, placed by the crop rule only (a network that reads the pose exactly)", "",
           "The posed mean landmarks' box centred on the annotation's, larger side to larger side.", ""]
    md += table(record["geometry"], "box") + [""]
    md += ["## 4. Pose", "", "Robust spread: 1.4826 × the median |angle| (the sd of a normal law; one genuine face "
           "near profile has pitch and roll near ±120°).", "",
           "| | \\|yaw\\| < 30° | 30–60° | ≥ 60° | pitch spread (°) | \\|pitch\\| > 20° | roll spread (°) | "
           "\\|roll\\| > 20° |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {name} | " + " | ".join(f"{100 * b:.1f} %" for b in r["yaw_bins"]) +
           f" | {r['pitch_sd']:.1f} | {100 * r['pitch_over20']:.0f} % | {r['roll_sd']:.1f} | "
           f"{100 * r['roll_over20']:.0f} % |" for name, r in record["pose"].items()]
    if record.get("spread"):
        md += ["", "## 5. How much faces differ: identity and expression", "",
               "Each set's 3D landmarks moved onto its own mean shape by the best 3D similarity (generalised "
               "Procrustes), then the mean distance of a landmark from that mean in % of the NME's scale, per group; "
               "last column: principal components holding 90 % of the variance. The genuine shapes are the 3D "
               "landmarks the annotation fitted to each photo.", "",
               "| | all | " + " | ".join(groups) + " | components for 90 % |", "|" + "---|" * (3 + len(groups))]
        md += [f"| {name} | {r['all']:.2f} | " + " | ".join(f"{r[g]:.2f}" for g in groups) + f" | {r['dims90']} |"
               for name, r in record["spread"].items()]
    if record.get("networks"):
        md += ["", "## 6. Trained networks, their errors taken apart", "",
               "As `-test` scores it; after the best 2D similarity (what no placement of the predicted landmarks "
               "fixes); placed by the crop rule (box onto box); and the rotation of the best 3D similarity taking the "
               "predicted 68 landmarks onto the annotated ones (how far the network misread the head's turn). The "
               f"checkpoints: {', '.join(f'{k} = `{v}`' for k, v in record['network_paths'].items())}.", "",
               "| network | test set | NME | after similarity | box-placed | rotation misread, mean (median) |",
               "|---|---|---|---|---|---|"]
        md += [f"| {name} | {where} | {r['nme']:.2f} | {r['similarity']:.2f} | {r['box']:.2f} | "
               f"{r['turn_mean']:.1f}° ({r['turn_median']:.1f}°) |"
               for name, sets in record["networks"].items() for where, r in sets.items()]
    md += ["", "## Reading", ""] + record["reading"] + [""]
    atomic_write_bytes(RESULTS_DIR / "real_gap.md", ("\n".join(md) + "\n").encode("utf-8"))
    write_json(RESULTS_DIR / "real_gap.json", record)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default=None, help="a processed synthetic training folder (default: the study set)")
    p.add_argument("--network", action="append", default=[], metavar="LABEL=CHECKPOINT",
                   help="a trained network to take apart in section 5 (repeatable)")
    args = p.parse_args(argv)
    networks = dict(item.split("=", 1) if "=" in item else (Path(item).stem, item) for item in args.network)
    for label, path in networks.items():
        if not Path(path).is_file():
            print(f"real_gap: the checkpoint {path} given for {label!r} does not exist.", file=sys.stderr)
            return 2
    if not (SHARED / "aflw2000_samples").is_dir():
        print(f"real_gap: {SHARED} is missing; this benchmark needs the genuine samples.", file=sys.stderr)
        return 2
    from benchmarks.study_data import study_data

    train_root, test_raw = study_data()
    if args.train:
        train_root = Path(args.train)
    samples = genuine_samples()
    record = {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "train": str(train_root),
              "frontal_count": int(sum(abs(math.degrees(s["pose"][1])) <= FRONTAL for s in samples)),
              "mean_face": mean_face_rows(samples, train_root, test_raw), "geometry": geometry_rows(samples),
              "pose": pose_rows(samples), "spread": spread_rows()}
    if networks:
        record["network_paths"] = networks
        record["networks"] = network_rows(networks, test_raw)
    record["reading"] = reading(record)
    write_report(record)
    print(f"wrote {RESULTS_DIR / 'real_gap.md'}")
    return 0


def spread_reading(spread: dict | None) -> list[str]:
    if not spread:
        return []
    real, both = (next(v for k, v in spread.items() if k.startswith(p)) for p in ("genuine", "synthetic draws"))
    return [f"- **Synthetic faces differ less from one another than the annotated real ones.** Beyond pose and "
            f"size, a genuine landmark lies {real['all']:.2f} % from the genuine mean shape (mouth "
            f"{real['mouth']:.2f}, jaw {real['jaw']:.2f}); a synthetic one {both['all']:.2f} % from the synthetic "
            f"mean (mouth {both['mouth']:.2f}, jaw {both['jaw']:.2f}): {both['all'] / real['all']:.2f} × the genuine "
            f"spread, in {both['dims90']} principal components against {real['dims90']}. (The genuine shapes are "
            "model fits, so their spread holds some fitting error too.) Reasoning, not measured: a network trained "
            "on the synthetic draws sees less of how faces differ than it meets in real photos; the draws' spread "
            "is the next thing to calibrate (issue 25, item 2).",
            ] + [f"- ICT-FaceKit's identities alone (MIT-licensed, no expression) spread {v['all']:.2f} %, the "
                 f"synthetic identities {ident['all']:.2f} %: a licence-free target that points the same way."
                 for k, v in spread.items() if k.startswith("ICT")
                 for ident in [next(x for n, x in spread.items() if n.endswith("identity only"))]]


def reading(r: dict) -> list[str]:
    """The report's conclusions, with the figures taken from the record."""
    mf, geo, pose = r["mean_face"], r["geometry"], r["pose"]
    real = mf["real AFLW2000-3D mean (the other 1,969 faces), on the 31 genuine"]["all"]
    synth = mf["synthetic training mean, on the 31 genuine"]["all"]
    sim = {k: v["similarity"] for k, v in geo.items()}
    box = {k: v["box"] for k, v in geo.items()}
    syn, bfm, ict = "synthetic model", "BFM mean (3DDFA tables)", "ICT-FaceKit neutral"
    gen = pose["genuine AFLW2000-3D (yaw: all 2,000; pitch, roll: the 31)"]
    tr = pose["synthetic 300W_LP draws (2000)"]
    return [
        f"- **The mean face is not the gap, and no mean face can reach the issue's first target.** The real data's "
        f"own crop-frame mean (1,969 genuine AFLW2000-3D faces) scores {real:.2f} % on the 31 samples, the synthetic "
        f"training mean {synth:.2f} %: a single mean map cannot follow the pose, and the samples' poses decide its "
        "figure. The target 'mean face ≤ 10.8 %' (0.6 × the demo's 18.05 %) is out of reach for any mean face, real "
        "or synthetic; the geometry is measured at the true pose instead (sections 2 and 3).",
        f"- **The landmark geometry is within {sim[syn]['all'] - sim[bfm]['all']:.1f} points of the BFM's.** Posed by "
        f"the annotated rotation, the synthetic mean is {sim[syn]['all']:.2f} % from the annotations after the best "
        f"similarity (the BFM mean, which the annotations were fitted with: {sim[bfm]['all']:.2f} %; ICT-FaceKit's "
        f"neutral face {sim[ict]['all']:.2f} %, jaw {sim[ict]['jaw']:.2f} %), and {box[syn]['all']:.2f} % placed by "
        f"the crop rule alone (BFM {box[bfm]['all']:.2f} %). A network that read a real photo's pose exactly and knew "
        f"nothing of the person would score about {box[syn]['all']:.1f} %; the demo network scores 19.28 % (issue "
        "25's table). The gap is in reading the photo (appearance), not in the face model's shape; moving the shape "
        "towards ICT-FaceKit's would make it worse.",
        f"- **The synthetic poses are too narrow in pitch and roll.** {100 * gen['pitch_over20']:.0f} % of the genuine "
        f"faces have |pitch| > 20° and {100 * gen['roll_over20']:.0f} % |roll| > 20°, against "
        f"{100 * tr['pitch_over20']:.0f} % and {100 * tr['roll_over20']:.0f} % of the synthetic training draws; yaw "
        "matches (the AFLW2000 draws were made to).",
    ] + spread_reading(r.get("spread")) + [
        f"- **{name}**: {sets['genuine']['nme']:.2f} % on the genuine samples, {sets['genuine']['similarity']:.2f} % "
         f"after the best similarity, its landmarks turned {sets['genuine']['turn_mean']:.1f}° from the annotated ones "
         f"(median {sets['genuine']['turn_median']:.1f}°); on its synthetic test set {sets['synthetic']['nme']:.2f} %, "
         f"{sets['synthetic']['similarity']:.2f} %, {sets['synthetic']['turn_mean']:.1f}°; on synthetic faces with "
         "every randomisation {nme:.2f} %, {similarity:.2f} %, {turn_mean:.1f}°.".format(
             **sets["synthetic, full appearance"])
         for name, sets in r.get("networks", {}).items()]


if __name__ == "__main__":
    sys.exit(main())
