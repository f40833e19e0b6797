"""Calibration of face-detector boxes against the training crop: how a detector's box relates to the 68-landmark box
the network's crops are built from, measured on the genuine near-frontal AFLW2000-3D samples (pt3d_68 landmarks).

For each sample with |yaw| < --max-yaw degrees (Pose_Para), each detector (Haar, to check the method against the
constants measured before, and MTCNN) is run on the photo; the box whose centre is nearest the landmark-box centre
(and lies inside it) is the face's. Per face: landmark-box side / detector side (side = max(x2 - x1, y2 - y1), as
faceutil.detect.landmark_box_from_detection reads it) and (landmark-box centre - detector centre) / detector side in
the face's own frame (turned back by the roll the detector reports: 0 for Haar, the eye line for MTCNN). The medians
are the constants of faceutil.detect; the spread says how far a single face lies from them. Also reported: MTCNN's
roll against the eye line of the annotated landmarks (centres of points 36-41 and 42-47).

Usage: python benchmarks/detect_calibration.py [--max-yaw 30] [--out benchmarks/results/detect_calibration.md]
                                              [--per-face /tmp/faces.json]
Writes the .md and a .json of summaries beside it (atomically). Needs ../shared/data; one torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def eye_line_roll(landmarks: np.ndarray) -> float:
    """Roll (degrees, counter-clockwise as displayed) of the line from the image-left eye centre (68-point ids 36-41)
    to the other (42-47); landmarks (68, 2+) image px."""
    left, right = landmarks[36:42, :2].mean(0), landmarks[42:48, :2].mean(0)
    d = right - left
    return float(np.degrees(np.arctan2(-d[1], d[0])))


def measure_face(box: np.ndarray, roll: float, truth_box: np.ndarray) -> tuple[float, float, float]:
    """(side ratio, x shift, y shift) of one detector box (4,) against the landmark box (4,), shift in the face frame
    turned by `roll` degrees (the inverse of landmark_box_from_detection's mapping)."""
    side = max(box[2] - box[0], box[3] - box[1])
    t_side = max(truth_box[2] - truth_box[0], truth_box[3] - truth_box[1])
    d = (truth_box[:2] + truth_box[2:]) / 2 - (box[:2] + box[2:]) / 2          # image frame, y down
    a = np.deg2rad(roll)
    # image offset = (dx c + dy s, -dx s + dy c) for a face offset (dx, dy); invert that rotation
    dx = d[0] * np.cos(a) - d[1] * np.sin(a)
    dy = d[0] * np.sin(a) + d[1] * np.cos(a)
    return t_side / side, dx / side, dy / side


def pick_face(boxes: np.ndarray, truth_box: np.ndarray) -> int | None:
    """Index of the box whose centre is nearest the landmark-box centre, if that centre lies inside the landmark box."""
    if not len(boxes):
        return None
    centre = (truth_box[:2] + truth_box[2:]) / 2
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    k = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
    c = centres[k]
    inside = truth_box[0] <= c[0] <= truth_box[2] and truth_box[1] <= c[1] <= truth_box[3]
    return k if inside else None


def summarise(rows: list) -> dict:
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if not len(a):
        return {"faces": 0}
    med, sd = np.median(a, axis=0), a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(3)
    return {"faces": len(a), "side_ratio_median": round(float(med[0]), 4), "side_ratio_sd": round(float(sd[0]), 4),
            "shift_x_median": round(float(med[1]), 4), "shift_x_sd": round(float(sd[1]), 4),
            "shift_y_median": round(float(med[2]), 4), "shift_y_sd": round(float(sd[2]), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-yaw", type=float, default=30.0, help="near-frontal: |yaw| below this (degrees)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detect_calibration.md"))
    parser.add_argument("--per-face", default=None, help="also write each face's numbers (yaw, annotated eye line, "
                        "box, ratios) to this JSON file; keep it outside the repository (they derive from the "
                        "licensed annotations)")
    args = parser.parse_args(argv)
    folder = SHARED / "aflw2000_samples"
    if not folder.is_dir():
        print(f"the genuine samples folder {folder} is absent; nothing to measure", file=sys.stderr)
        return 1

    import torch

    torch.set_num_threads(1)
    from inference.detectors import make_detector
    from faceutil.crop import landmark_box
    from faceutil.sampleio import atomic_write_bytes, read_image, read_sample_mat

    detectors = {name: make_detector(name, "cpu") for name in ("haar", "mtcnn")}
    per_face, rows = [], {name: [] for name in detectors}
    roll_errors = []
    names = sorted(p.stem for p in folder.glob("*.mat"))
    used = 0
    for name in names:
        sample = read_sample_mat(folder / f"{name}.mat")
        yaw = float(np.degrees(sample.pose_para[1]))
        if abs(yaw) >= args.max_yaw:
            continue
        used += 1
        image = read_image(folder / f"{name}.jpg")
        truth = np.asarray(landmark_box(sample.pt3d_68), dtype=np.float64)
        record = {"name": name, "yaw": round(yaw, 2), "eye_roll": round(eye_line_roll(sample.pt3d_68), 2)}
        for det_name, det in detectors.items():
            boxes, rolls, _ = det.find_faces(image)
            k = pick_face(boxes, truth)
            if k is None:
                record[det_name] = None
                continue
            ratio, sx, sy = measure_face(boxes[k], float(rolls[k]), truth)
            rows[det_name].append((ratio, sx, sy))
            record[det_name] = {"box": np.round(boxes[k], 2).tolist(), "roll": round(float(rolls[k]), 2),
                                "side_ratio": round(ratio, 4), "shift": [round(sx, 4), round(sy, 4)]}
            if det_name == "mtcnn":
                roll_errors.append(((rolls[k] - record["eye_roll"] + 180.0) % 360.0) - 180.0)
        per_face.append(record)

    summary = {name: summarise(r) for name, r in rows.items()}
    roll_err = np.abs(np.asarray(roll_errors))
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "max_yaw": args.max_yaw,
              "samples": used, "summary": summary,
              "mtcnn_roll_minus_eye_line": {"median_abs": round(float(np.median(roll_err)), 2),
                                            "max_abs": round(float(roll_err.max()), 2)} if len(roll_err) else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode("utf-8"))
    if args.per_face:
        atomic_write_bytes(Path(args.per_face), (json.dumps(per_face, indent=1) + "\n").encode("utf-8"))

    lines = [
        "# Detector box calibration",
        "",
        f"`python benchmarks/detect_calibration.py` ({result['date']}; 1 torch thread; CPU). {used} genuine "
        f"AFLW2000-3D samples with |yaw| < {args.max_yaw:g} deg from ../shared/data; ground truth = the box of "
        "pt3d_68 (x, y). Per face: landmark-box side / detector side (side = max(x2 - x1, y2 - y1)), and (landmark-box "
        "centre - detector centre) / detector side in the face's frame (turned back by the detector's roll: 0 for "
        "Haar, the five-point eye line for MTCNN). MTCNN: facenet-pytorch 2.5.3, thresholds 0.6/0.7/0.7, smallest "
        "face 0.08 x the shorter side, faces tilted beyond 10 deg looked at again upright (inference.detectors).",
        "",
        "| detector | faces | side ratio median (sd) | centre shift x median (sd) | centre shift y median (sd) |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        if not s["faces"]:
            lines.append(f"| {name} | 0 | | | |")
            continue
        lines.append(f"| {name} | {s['faces']} | {s['side_ratio_median']:.3f} ({s['side_ratio_sd']:.3f}) | "
                     f"{s['shift_x_median']:+.3f} ({s['shift_x_sd']:.3f}) | "
                     f"{s['shift_y_median']:+.3f} ({s['shift_y_sd']:.3f}) |")
    if result["mtcnn_roll_minus_eye_line"]:
        r = result["mtcnn_roll_minus_eye_line"]
        lines += ["", f"MTCNN roll (its five-point eye line; a face tilted beyond 10 deg looked at again upright) "
                      f"against the eye line of the annotated landmarks: "
                      f"median |difference| {r['median_abs']:.2f} deg, largest {r['max_abs']:.2f} deg."]
    lines += ["", "Only these summaries are kept here: each face's numbers derive from the licensed annotations "
                  "(`--per-face PATH` writes them to a file outside the repository)."]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
