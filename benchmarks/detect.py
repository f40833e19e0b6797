"""Benchmark of the face detectors behind -predict: Haar, Haar + --any-roll, MTCNN, MTCNN + --any-roll, on the
genuine photos of ../shared/data and on the public-domain astronaut photo turned every 15 degrees.

Sets. Genuine (36 photos): the 31 AFLW2000-3D samples (ground truth: pt3d_68), the 300W-LP sample (pt2d, 68 points),
eos_image_0010 (its iBUG .pts, 68 points) and three press / author photos with 4 faces whose 68-landmark boxes were
placed by hand by looking at the photo (HAND_BOXES; a few pixels' precision). Turned: skimage.data.astronaut()
turned counter-clockwise by 0, 15, ..., 180 degrees about its centre onto a square canvas that holds the whole photo
(black corners); the truth is a hand-placed landmark box and eye line of the upright photo, turned with it.
Rule: a box is true when its centre, taken back into the face's upright frame, lies inside a ground-truth 68-landmark
box that no earlier box (in the detector's order) has claimed; a box on a face the annotation leaves out (UNANNOTATED)
is counted apart; every other box is false (a second box on one face is false). Per found face: the crop box (the
detector's calibration and roll, faceutil.detect.landmark_box_from_detection) against the true landmark box: centre
error over the true side, side over the true side; and the roll error against the true eye line (68-point eye
centres, faces with |yaw| < 30 deg by their Pose_Para; the hand-placed eye line for the astronaut).
Timing: detection only, each photo through every variant in turn (round-robin, --rounds rounds, the median round
counts), ratios against Haar in the same run. With --checkpoint, also the 68-point 2D NME of the whole -predict path
(Predictor with that detector) over the found faces that have 68 annotated points.
Usage: python benchmarks/detect.py [--rounds 3] [--checkpoint CKPT] [--out benchmarks/results/detect.md]
Writes the .md and a .json beside it (atomically). One torch thread, CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

#: 68-landmark boxes [x1, y1, x2, y2] placed by hand (brows to chin, jaw side to jaw side) on photos without landmarks
HAND_BOXES = {
    "photos/3ddfa_v2_JianzhuGuo.jpg": [(110, 160, 292, 318)],
    "photos/3ddfa_v2_trump_hillary.jpg": [(215, 205, 440, 395), (1045, 238, 1245, 452)],
    "photos/prnet_trump.jpg": [(285, 158, 472, 335)],
}
#: faces in the genuine photos that their annotation leaves out (background people), boxed by hand: a box on one of
#: them is counted apart, neither true nor false, and missing one is no miss
UNANNOTATED = {"aflw2000_samples/image00006.jpg": [(92, 282, 178, 398), (0, 330, 50, 450)]}
#: the astronaut's hand-placed landmark box and eye centres (image-left eye first) in the upright 512 x 512 photo
ASTRONAUT_BOX = (180.0, 88.0, 272.0, 189.0)
ASTRONAUT_EYES = ((203.0, 101.0), (246.4, 103.6))
TURNS = tuple(range(0, 181, 15))
#: the eye line of the annotated points is the face's roll only for faces seen nearly from the front (Pose_Para yaw)
MAX_YAW_FOR_ROLL = 30.0
VARIANTS = (("Haar", "haar", False), ("Haar + any-roll", "haar", True), ("MTCNN", "mtcnn", False),
            ("MTCNN + any-roll", "mtcnn", True))


@dataclass
class Face:
    """One true face: box (4,) its 68-landmark box in its upright frame; to_upright (2, 3) affine image -> that
    frame; landmarks (68, 2) image px or None; roll: degrees counter-clockwise as displayed (None: not known)."""

    box: np.ndarray
    to_upright: np.ndarray
    landmarks: np.ndarray | None = None
    roll: float | None = None


@dataclass
class Item:
    """One photo: name, image (H, W, 3) uint8 RGB, its annotated faces, and boxes (4,) of faces left unannotated."""

    name: str
    image: np.ndarray
    faces: list = field(default_factory=list)
    unannotated: list = field(default_factory=list)


def eye_roll(landmarks: np.ndarray) -> float:
    """Roll (degrees, counter-clockwise as displayed) of the line between the eye centres (ids 36-41 -> 42-47)."""
    d = landmarks[42:48, :2].mean(0) - landmarks[36:42, :2].mean(0)
    return float(np.degrees(np.arctan2(-d[1], d[0])))


def read_pts(path: Path) -> np.ndarray:
    """An iBUG .pts file -> (N, 2) float64 points."""
    text = path.read_text().split("{", 1)[1].split("}", 1)[0]
    return np.array([[float(v) for v in line.split()] for line in text.strip().splitlines()])


def genuine_set() -> list[Item]:
    """The 36 genuine photos with their true faces (see the module docstring)."""
    from faceutil.crop import landmark_box
    from faceutil.sampleio import read_image, read_sample_mat

    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    items = []

    def with_landmarks(name, image, lms, yaw):
        lms = np.asarray(lms, dtype=np.float64)[:, :2]
        roll = eye_roll(lms) if yaw is not None and abs(yaw) < MAX_YAW_FOR_ROLL else None
        others = [np.array(b, dtype=np.float64) for b in UNANNOTATED.get(name, [])]
        items.append(Item(name, image, [Face(np.array(landmark_box(lms)), ident, lms, roll)], others))

    for mat in sorted((SHARED / "aflw2000_samples").glob("*.mat")):
        sample = read_sample_mat(mat)
        with_landmarks(f"aflw2000_samples/{mat.stem}.jpg", read_image(mat.with_suffix(".jpg")), sample.pt3d_68,
                       np.degrees(sample.pose_para[1]))
    for mat in sorted((SHARED / "300wlp_samples").glob("*.mat")):
        sample = read_sample_mat(mat)
        with_landmarks(f"300wlp_samples/{mat.stem}.jpg", read_image(mat.with_suffix(".jpg")), sample.pt2d,
                       np.degrees(sample.pose_para[1]))
    for pts in sorted((SHARED / "photos").glob("*.pts")):
        with_landmarks(f"photos/{pts.with_suffix('.png').name}", read_image(pts.with_suffix(".png")), read_pts(pts),
                       None)
    for name, boxes in HAND_BOXES.items():
        items.append(Item(name, read_image(SHARED / name), [Face(np.array(b, dtype=np.float64), ident)
                                                              for b in boxes]))
    return items


def turned(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned counter-clockwise (as displayed) by `degrees` about its centre onto a square canvas that
    holds all of it (black outside). Returns (canvas (S, S, 3) uint8, (2, 3) affine original px -> canvas px)."""
    import cv2

    h, w = image.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(degrees), 1.0)
    m[:, 2] += ((side - w) / 2.0, (side - h) / 2.0)
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), m


def invert_affine(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.hstack([a, (-a @ m[:, 2])[:, None]])


def astronaut_set() -> list[Item]:
    """skimage's astronaut turned by each of TURNS, with the hand-placed truth turned with it."""
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut())
    eyes = np.asarray(ASTRONAUT_EYES)
    d = eyes[1] - eyes[0]
    upright_roll = float(np.degrees(np.arctan2(-d[1], d[0])))
    items = []
    for deg in TURNS:
        canvas, m = turned(photo, deg)
        roll = ((upright_roll + deg + 180.0) % 360.0) - 180.0
        items.append(Item(f"astronaut turned {deg}", canvas,
                          [Face(np.asarray(ASTRONAUT_BOX), invert_affine(m), None, roll)]))
    return items


def score_item(item: Item, boxes: np.ndarray, rolls: np.ndarray, calibration) -> dict:
    """Match a detector's boxes to the true faces (the rule in the module docstring); per found face its crop-box
    and roll errors. Returns {"found", "false", "unannotated" (boxes on faces the annotation leaves out),
    "centre_err", "side_ratio", "roll_err", "matches"}."""
    from faceutil.detect import landmark_box_from_detection

    claimed, false, elsewhere = set(), 0, 0
    out = {"centre_err": [], "side_ratio": [], "roll_err": [], "matches": []}
    for k, (b, r) in enumerate(zip(boxes, rolls)):
        centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 1.0])
        hit = None
        for j, face in enumerate(item.faces):
            x, y = face.to_upright @ centre
            if j not in claimed and face.box[0] <= x <= face.box[2] and face.box[1] <= y <= face.box[3]:
                hit = j
                break
        if hit is None:
            if any(o[0] <= centre[0] <= o[2] and o[1] <= centre[1] <= o[3] for o in item.unannotated):
                elsewhere += 1
            else:
                false += 1
            continue
        claimed.add(hit)
        face = item.faces[hit]
        est = landmark_box_from_detection(b, float(r), calibration)
        est_centre = np.array([(est[0] + est[2]) / 2, (est[1] + est[3]) / 2, 1.0])
        true_side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
        true_centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        out["centre_err"].append(float(np.linalg.norm(face.to_upright @ est_centre - true_centre) / true_side))
        out["side_ratio"].append(float((est[2] - est[0]) / true_side))
        if face.roll is not None:
            out["roll_err"].append(float(abs(((r - face.roll + 180.0) % 360.0) - 180.0)))
        out["matches"].append((k, hit))
    out.update(found=len(claimed), false=false, unannotated=elsewhere)
    return out


def run_detection(items: list[Item], detectors: dict, rounds: int) -> dict:
    """Every variant on every item, round-robin; the outputs of the first round, the median round's seconds."""
    from faceutil.detect import detect_any_roll

    def call(det, any_roll, image):
        if any_roll:
            return detect_any_roll(det, image)
        boxes, rolls, _ = det.find_faces(image)
        return boxes, rolls

    outputs = {label: [] for label, _, _ in VARIANTS}
    seconds = {label: [0.0] * rounds for label, _, _ in VARIANTS}
    for rnd in range(rounds):
        for item in items:
            for label, name, any_roll in VARIANTS:
                t = time.perf_counter()
                result = call(detectors[name], any_roll, item.image)
                seconds[label][rnd] += time.perf_counter() - t
                if rnd == 0:
                    outputs[label].append(result)
    return {"outputs": outputs, "seconds": {k: float(np.median(v)) for k, v in seconds.items()}}


def summarise(items: list[Item], run: dict, detectors: dict) -> dict:
    rows = {}
    for label, name, _ in VARIANTS:
        scores = [score_item(it, b, r, detectors[name].calibration) for it, (b, r) in zip(items, run["outputs"][label])]
        cat = {k: [v for s in scores for v in s[k]] for k in ("centre_err", "side_ratio", "roll_err")}
        med = {k: (float(np.median(v)) if v else None) for k, v in cat.items()}
        rows[label] = {
            "faces": sum(len(it.faces) for it in items), "found": sum(s["found"] for s in scores),
            "false": sum(s["false"] for s in scores), "unannotated": sum(s["unannotated"] for s in scores),
            "false_in": [it.name for it, s in zip(items, scores) if s["false"]],
            "missed_in": [it.name for it, s in zip(items, scores) if s["found"] < len(it.faces)],
            "centre_err_median": med["centre_err"], "side_ratio_median": med["side_ratio"],
            "roll_err_median": med["roll_err"], "roll_err_max": max(cat["roll_err"]) if cat["roll_err"] else None,
            "ms_per_image": 1000.0 * run["seconds"][label] / len(items),
            "per_item": [{"name": it.name, "found": s["found"], "false": s["false"],
                          "boxes": np.round(b, 1).tolist(), "rolls": np.round(r, 1).tolist()}
                         for it, s, (b, r) in zip(items, scores, run["outputs"][label])],
        }
        rows[label]["speed_vs_haar"] = rows[label]["ms_per_image"] / (1000.0 * run["seconds"]["Haar"] / len(items))
    return rows


def landmark_nme(items: list[Item], checkpoint: str, detectors: dict) -> dict:
    """68-point 2D NME (%) of the -predict path per variant, over found faces with 68 annotated points."""
    from inference.predict import Predictor
    from faceutil.metrics import nme

    out = {}
    for label, name, any_roll in VARIANTS:
        predictor = Predictor(checkpoint, device="cpu", detector=detectors[name], any_roll=any_roll)
        values = []
        for item in items:
            if not any(f.landmarks is not None for f in item.faces):
                continue
            results = predictor(item.image)
            boxes = np.array([r.box for r in results]).reshape(-1, 4)
            rolls = np.array([r.roll for r in results])
            matched = score_item(item, boxes, rolls, detectors[name].calibration)["matches"]
            for k, j in matched:
                face = item.faces[j]
                if face.landmarks is not None:
                    values.append(float(nme(results[k].landmarks[None, :, :2], face.landmarks[None])[0]))
        out[label] = {"faces": len(values), "nme_mean": float(np.mean(values)) if values else None}
    return out


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def table(rows: dict, nme: dict | None) -> list[str]:
    head = ("| variant | faces found | false boxes | boxes on unannotated faces | crop centre error (median, % of "
            "side) | crop side / true side (median) | roll error median / max (deg) | ms per image | time vs Haar |")
    sep = "|---|---|---|---|---|---|---|---|---|"
    if nme is not None:
        head += " 2D NME of -predict (%) |"
        sep += "---|"
    lines = [head, sep]
    for label, r in rows.items():
        centre = None if r["centre_err_median"] is None else 100 * r["centre_err_median"]
        line = (f"| {label} | {r['found']} / {r['faces']} | {r['false']} | {r['unannotated']} | "
                f"{_fmt(centre, '.1f')} | "
                f"{_fmt(r['side_ratio_median'], '.3f')} | {_fmt(r['roll_err_median'], '.1f')} / "
                f"{_fmt(r['roll_err_max'], '.1f')} | {r['ms_per_image']:.1f} | {r['speed_vs_haar']:.2f}x |")
        if nme is not None:
            line += f" {_fmt(nme[label]['nme_mean'], '.2f')} ({nme[label]['faces']} faces) |"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over every set (round-robin)")
    parser.add_argument("--checkpoint", default=None, help="a trained .pth / .onnx: also report the -predict NME")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detect.md"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"the genuine data folder {SHARED} is absent; nothing to measure", file=sys.stderr)
        return 1
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        print(f"the checkpoint {args.checkpoint} given by --checkpoint does not exist", file=sys.stderr)
        return 1

    import torch

    torch.set_num_threads(1)
    from inference.detectors import make_detector
    from faceutil.sampleio import atomic_write_bytes

    detectors = {"haar": make_detector("haar"), "mtcnn": make_detector("mtcnn", "cpu")}
    sets = {"genuine": genuine_set(), "turned": astronaut_set()}
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    results = {}
    for key, items in sets.items():
        run = run_detection(items, detectors, args.rounds)
        results[key] = {"images": len(items), "rows": summarise(items, run, detectors)}
        if args.checkpoint is not None:
            results[key]["nme"] = landmark_nme(items, args.checkpoint, detectors)
    # the astronaut, per turn: which variants found the face, and with what roll
    per_turn = []
    for k, deg in enumerate(TURNS):
        row = {"turn": deg, "true_roll": round(sets["turned"][k].faces[0].roll, 1)}
        for label, r in results["turned"]["rows"].items():
            it = r["per_item"][k]
            row[label] = {"found": it["found"], "false": it["false"], "rolls": it["rolls"]}
        per_turn.append(row)
    record = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in os.getloadavg()], "torch_threads": 1, "rounds": args.rounds,
              "checkpoint": args.checkpoint, "sets": results, "astronaut_per_turn": per_turn}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode("utf-8"))

    lines = ["# Face detectors: Haar against MTCNN", "",
             f"`python benchmarks/detect.py --rounds {args.rounds}` ({record['date']}, {record['cpus']} CPU cores, "
             f"1 torch thread; the machine was shared with background jobs: load average {load_before[0]:.1f} "
             f"before, {record['load_after'][0]:.1f} after, so only the ratios against Haar, measured in the same "
             "run photo by photo, mean anything). Detection only; MTCNN = facenet-pytorch 2.5.3 on the CPU.", "",
             "A box is **true** when its centre, taken back into the face's upright frame, lies inside a ground-truth "
             "68-landmark box no earlier box has claimed; a box on a face the annotation leaves out (two background "
             "faces in image00006, boxed by hand) is counted apart; every other box is **false**. Crop centre error "
             "and side: "
             "the crop box from the detector's calibration and roll against the true landmark box. Roll error: "
             "against the eye line of the annotated points, for the 20 AFLW2000-3D faces with |yaw| < 30 deg (the "
             "eye line of a turned-away face is not its roll) and the astronaut (hand-placed eye line)."]
    if args.checkpoint is None:
        lines += ["", "No `--checkpoint` was given, so the 2D NME of the whole -predict path is not measured here "
                      "(no trained checkpoint was at hand for this run)."]
    else:
        lines += ["", f"2D NME of -predict: the network `{args.checkpoint}` run on each variant's crops, 68 points "
                      "normalised by sqrt(w h) of the true landmark box, mean over the faces that variant found and "
                      "that have 68 annotated points (so each row averages its own faces; the astronaut has none). "
                      "A network trained on synthetic faces only does not yet transfer to real photos (issue 25): "
                      "the column compares the detectors' crops under one network, not the network."]
    n_genuine, n_faces = len(sets["genuine"]), sum(len(it.faces) for it in sets["genuine"])
    titles = {"genuine": f"{n_genuine} genuine photos (31 AFLW2000-3D, 1 300W-LP, eos_image_0010, 3 photos boxed by "
                         f"hand; {n_faces} faces, all about upright)",
              "turned": f"The astronaut turned by 0, 15, ..., 180 degrees ({len(TURNS)} images, one face each)"}
    for key, res in results.items():
        lines += ["", f"## {titles[key]}", ""] + table(res["rows"], res.get("nme"))
        for label, r in res["rows"].items():
            if r["false_in"] or r["missed_in"]:
                lines.append("")
                lines.append(f"- {label}: false boxes in {', '.join(r['false_in']) or 'none'}; faces missed in "
                             f"{', '.join(r['missed_in']) or 'none'}.")
    lines += ["", "## The astronaut, turn by turn (faces found / false boxes, and the rolls reported)", "",
              "| turn (deg) | true roll | " + " | ".join(label for label, _, _ in VARIANTS) + " |",
              "|---|---|" + "---|" * len(VARIANTS)]
    for row in per_turn:
        cells = [f"{row[label]['found']} / {row[label]['false']} ({', '.join(f'{v:g}' for v in row[label]['rolls'])})"
                 for label, _, _ in VARIANTS]
        lines.append(f"| {row['turn']} | {row['true_roll']:g} | " + " | ".join(cells) + " |")
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
