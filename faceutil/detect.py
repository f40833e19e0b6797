"""Face detection: face boxes from the OpenCV Haar cascade bundled in the opencv-python-headless wheel (no download),
and the rule that turns a detector box (Haar's or MTCNN's) into the crop box the network was trained on.

Owns ``detect_faces`` (image -> (N, 4) boxes), each detector's box calibration (pure numbers), the face roll from five
points, and the quarter-turn search. numpy + cv2 only: the MTCNN detector itself needs torch and lives in
inference/detectors.py, which also picks a detector by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceutil.errors import FaceUtilError

#: The cascade file shipped in opencv-python-headless 4.x (cv2/data/); OpenCV 5 wheels no longer ship it.
CASCADE_FILE = "haarcascade_frontalface_default.xml"

# --- detector box -> training-crop statistics ------------------------------------------------------------------
# The network is trained on crops centred on the 68-landmark box with side 1.5 * max(w, h) (faceutil.crop). A Haar
# box is not a landmark box: it is a square from the brows to about the lower lip, so the landmark box (jaw line and
# chin included) is slightly narrower and lies lower. Measured once (2026-11, this cascade, scaleFactor 1.1,
# minNeighbors 5) on the 15 near-frontal (|yaw| < 30 deg) genuine AFLW2000-3D samples in ../shared/data:
#   landmark-box side / Haar side = 0.88 (median; sd 0.07),
#   (landmark-box centre - Haar centre) / Haar side = (+0.015, +0.167) (median; sd 0.07, 0.04).
# The x offset is noise around 0 (faces are left-right symmetric on average) and is set to 0.
# The spread is within the training jitter (centre +-10 % of the side, side x [0.9, 1.1]), so a crop built from
# these constants looks like a training crop. Same idea as PRNet's / 3DDFA's dlib-box rules (side x 1.58, centre
# moved down 0.14 x side), with our own measured numbers for this detector.
DETECTOR_SIDE_TO_LANDMARK_SIDE = 0.88
DETECTOR_CENTRE_SHIFT = (0.0, 0.167)


@dataclass(frozen=True)
class BoxCalibration:
    """How one detector's box relates to the 68-landmark box, in the face's own frame (x right, y towards the chin).

    side_ratio: landmark-box side / detector side (the detector side is max(w, h) of its box). centre_shift: (x, y)
    landmark-box centre minus detector-box centre, over the detector side.
    """

    side_ratio: float
    centre_shift: tuple


HAAR_CALIBRATION = BoxCalibration(DETECTOR_SIDE_TO_LANDMARK_SIDE, DETECTOR_CENTRE_SHIFT)

# MTCNN (facenet-pytorch 2.5.3, its bundled P/R/O-Net weights, thresholds 0.6/0.7/0.7, smallest face 0.08 x the
# shorter image side, faces tilted beyond 10 deg looked at again upright: inference.detectors.MTCNNDetector), measured
# the same way by benchmarks/detect_calibration.py on 2026-12-07 (numbers in benchmarks/results/
# detect_calibration.md), on the 20 genuine AFLW2000-3D samples with |yaw| < 30 deg, all of which MTCNN finds (the
# Haar figures above are its 15 of those 20; the script reproduces them: 0.886, +0.015, +0.168). The shift is taken
# in the face's own frame, turned back by MTCNN's roll (its eye line):
#   landmark-box side / MTCNN side = 0.811 (median; sd 0.065; MTCNN's box is taller than wide, side = its height),
#   (landmark-box centre - MTCNN centre) / MTCNN side = (+0.005, +0.132) (median; sd 0.033, 0.025).
# As for Haar, the x offset is taken as 0 (left-right symmetry). The centre varies less than with Haar (sd 0.033 and
# 0.025 against 0.073 and 0.040), the side as much (0.065 against 0.074): both well within the training jitter.
MTCNN_SIDE_TO_LANDMARK_SIDE = 0.811
MTCNN_CENTRE_SHIFT = (0.0, 0.132)
MTCNN_CALIBRATION = BoxCalibration(MTCNN_SIDE_TO_LANDMARK_SIDE, MTCNN_CENTRE_SHIFT)


def cascade_path() -> Path:
    """Path of the bundled frontal-face Haar cascade; FaceUtilError (one sentence) when the wheel lacks it."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a hard requirement
        raise FaceUtilError("OpenCV (opencv-python-headless) is not installed, so faces cannot be detected") from None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder) / CASCADE_FILE if folder else None
    if path is None or not path.is_file():
        raise FaceUtilError(f"OpenCV {cv2.__version__} ships no {CASCADE_FILE} (cv2.data is empty; OpenCV 5 wheels "
                            "dropped it): install opencv-python-headless 4.x or pass --bbox=x1,y1,x2,y2")
    return path


class FaceDetector:
    """The bundled Haar cascade, loaded once; ``detect(image)`` returns face boxes.

    scale_factor, min_neighbors: cv2.CascadeClassifier.detectMultiScale settings; min_size_frac: smallest face side
    as a fraction of the image's shorter side (at least 24 px). relative_confidence: a box is kept only when its
    cascade confidence (detectMultiScale3 level weight) is at least this fraction of the image's strongest box
    (0, the default, keeps all). The cascade's confidence separates true from false boxes poorly: on the photos in
    ../shared/data (2026-11) a false box over hair and background scored 5.7 beside a true face at 3.1, and lone
    true AFLW2000-3D faces score 2.7-10.5. So by default every box is kept (the 2-person debate photo gives 5
    boxes, 3 false); pass explicit boxes (--bbox) when the Haar cascade is not good enough.
    """

    name = "haar"
    calibration = HAAR_CALIBRATION
    measures_roll = False                    # upright faces only: every box is reported at roll 0

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_frac: float = 0.08,
                 relative_confidence: float = 0.0):
        import cv2

        self._cascade = cv2.CascadeClassifier(str(cascade_path()))
        if self._cascade.empty():
            raise FaceUtilError(f"OpenCV could not load the face cascade {cascade_path()}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size_frac = float(min_size_frac)
        self.relative_confidence = float(relative_confidence)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Faces in an (H, W, 3) uint8 RGB image.

        Returns (N, 4) float64 boxes [x1, y1, x2, y2] in image pixels (pixel centres at integers; x2, y2 = last
        covered pixel), largest first; (0, 4) when no face is found.
        """
        import cv2

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY))
        side = max(24, int(self.min_size_frac * min(img.shape[:2])))
        found, _, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side),
            outputRejectLevels=True)
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, 4), dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(weights) == len(boxes) and self.relative_confidence > 0:
            boxes = boxes[weights >= self.relative_confidence * weights.max()]
        out = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2] - 1, boxes[:, 1] + boxes[:, 3] - 1], 1)
        return out[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")]

    def find_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (N, 4) as detect, rolls (N,) zeros: the cascade finds upright faces only, scores (N,) zeros: its
        confidence separates faces from false boxes poorly, see the class docstring)."""
        boxes = self.detect(image)
        return boxes, np.zeros(len(boxes)), np.zeros(len(boxes))


def detect_faces(image: np.ndarray, detector: FaceDetector | None = None) -> np.ndarray:
    """Convenience: (N, 4) face boxes [x1, y1, x2, y2] of an RGB image with the bundled cascade (largest first)."""
    return (detector or FaceDetector()).detect(image)


def landmark_box_from_detection(box, roll: float = 0.0, calibration: BoxCalibration = HAAR_CALIBRATION) -> np.ndarray:
    """Estimate the 68-landmark box (x1, y1, x2, y2) from a detector box, by that detector's calibration.

    box: (4,) [x1, y1, x2, y2] pixels. roll: the face's in-plane turn in the image (degrees, counter-clockwise as
    displayed; a multiple of 90 for Haar boxes from detect_any_roll, any angle for MTCNN's): the centre shift follows
    the face's own "down". calibration: the detector's BoxCalibration (default Haar's, which --bbox boxes also use).
    Returns (4,) float64, a square of side calibration.side_ratio x the detector's (longer) side, its centre moved by
    calibration.centre_shift x that side in the face's frame.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x2 - x1, y2 - y1)
    a = np.deg2rad(roll)
    dx, dy = calibration.centre_shift[0] * side, calibration.centre_shift[1] * side
    # the face's axes in the image (y down): a counter-clockwise turn maps (x, y) to (x c + y s, -x s + y c)
    cx = (x1 + x2) / 2.0 + dx * np.cos(a) + dy * np.sin(a)
    cy = (y1 + y2) / 2.0 - dx * np.sin(a) + dy * np.cos(a)
    half = calibration.side_ratio * side / 2.0
    return np.array([cx - half, cy - half, cx + half, cy + half])


def roll_from_five_points(points) -> np.ndarray:
    """Each face's in-plane turn from MTCNN's five points (eye, eye, nose tip, mouth corner, mouth corner).

    points: (N, 5, 2) or (5, 2) image px (x column, y row), the eyes and mouth corners in the order the detector gives
    (image-left first for an upright face). The turn is the angle of the eye line, checked against the face's "down"
    (eye midpoint -> mouth midpoint), which is perpendicular to it: when the two disagree by more than 90 degrees (a
    face upside down whose points came out in image order) the eye line is read the other way.
    Returns (N,) float64 degrees, counter-clockwise as displayed, in (-180, 180].
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    eye = p[:, 1] - p[:, 0]
    down = (p[:, 3] + p[:, 4]) / 2 - (p[:, 0] + p[:, 1]) / 2
    by_eyes = np.degrees(np.arctan2(-eye[:, 1], eye[:, 0]))        # upright: eye line (1, 0); turned ccw: (c, -s)
    by_down = np.degrees(np.arctan2(down[:, 0], down[:, 1]))       # upright: down (0, 1); turned ccw: (s, c)
    flip = np.abs((by_eyes - by_down + 180.0) % 360.0 - 180.0) > 90.0
    roll = np.where(flip, by_eyes + 180.0, by_eyes)
    roll = (roll + 180.0) % 360.0 - 180.0
    return np.where(roll == -180.0, 180.0, roll)


#: the order in which detect_any_roll tries the image turns (upright first: its boxes win over duplicates)
ROLLS = (0, 90, 270, 180)


def _box_from_turned(box: np.ndarray, k: int, height: int, width: int) -> np.ndarray:
    """A box found in np.rot90(image, k) (counter-clockwise turns by 90 deg) -> the same box in the image."""
    x1, y1, x2, y2 = box
    k %= 4
    if k == 0:
        return np.array([x1, y1, x2, y2])
    if k == 1:                              # turned[r, c] = image[c, W - 1 - r]
        return np.array([width - 1 - y2, x1, width - 1 - y1, x2])
    if k == 2:                              # turned[r, c] = image[H - 1 - r, W - 1 - c]
        return np.array([width - 1 - x2, height - 1 - y2, width - 1 - x1, height - 1 - y1])
    return np.array([y1, height - 1 - x2, y2, height - 1 - x1])   # k == 3: turned[r, c] = image[H - 1 - c, r]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (pixel-centre convention: side = x2 - x1 + 1)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0.0) * max(h, 0.0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return float(inter / (area(a) + area(b) - inter)) if inter > 0 else 0.0


def _nested(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the centre of either box lies inside the other."""
    def inside(p, r):
        return r[0] <= p[0] <= r[2] and r[1] <= p[1] <= r[3]
    return inside((a[:2] + a[2:]) / 2, b) or inside((b[:2] + b[2:]) / 2, a)


def detect_any_roll(detector, image: np.ndarray, rolls=ROLLS, overlap: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Faces at any in-plane turn: a detector run on the image turned by each of `rolls` degrees.

    detector: an object whose ``find_faces(image)`` gives (boxes (N, 4), rolls (N,), scores (N,)): FaceDetector (Haar,
    upright faces only, rolls and scores 0) or inference.detectors.MTCNNDetector (each face's roll from its five points,
    its O-Net score); one with only ``detect(image)`` -> boxes counts as Haar-like. A face found with roll f in the
    image turned counter-clockwise by r has roll f - r in the image itself. Boxes that overlap (IoU > overlap, or one's
    centre inside the other) are one face, kept from the candidate with the highest score, then the largest box (the
    cascade's false boxes are mostly small patches inside or beside a face), then the turn tried first (ROLLS order).
    MTCNN also fires on faces turned by 90 deg or more, at a lower score and with a roll far from the truth (its five
    points come out as for a face within 45 deg of upright): on the public-domain astronaut photo turned every 15 deg
    (2026-12-07) the highest score always came from the turn that showed the face within 60 deg of upright.
    The result does not depend on how the image itself was turned: its quarter turns give the same candidates. The
    cascade also fires on some non-faces; trying four turns gives it four chances (on the 36 genuine photos of
    ../shared/data, all upright, 2026-12-03: 32 boxes from the upright image alone, 42 with all four turns, and 3.8x
    the detection time), which is why -predict does it on request (--any-roll).
    Returns (boxes (N, 4) detector boxes mapped into the image, face_rolls (N,) degrees counter-clockwise as
    displayed, in (-180, 180]), in the order above (highest score, then largest first).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    find = getattr(detector, "find_faces", None)
    candidates = []                                   # (score, area, order, box, roll)
    for order, r in enumerate(rolls):
        k = int(r) // 90
        turned = np.ascontiguousarray(np.rot90(img, k)) if k % 4 else img
        if find is None:
            found = detector.detect(turned)
            found_rolls, scores = np.zeros(len(found)), np.zeros(len(found))
        else:
            found, found_rolls, scores = find(turned)
        for b, f, score in zip(found, found_rolls, scores):
            box = _box_from_turned(b, k, h, w)
            roll = float(((f - r + 180.0) % 360.0) - 180.0)
            candidates.append((float(score), (box[2] - box[0] + 1) * (box[3] - box[1] + 1), order, box,
                               180.0 if roll == -180.0 else roll))
    candidates.sort(key=lambda c: (-c[0], -c[1], c[2]))
    kept = []
    for _, _, _, box, roll in candidates:
        if all(box_iou(box, other) <= overlap and not _nested(box, other) for other, _ in kept):
            kept.append((box, roll))
    boxes = np.asarray([b for b, _ in kept], dtype=np.float64).reshape(-1, 4)
    return boxes, np.asarray([r for _, r in kept], dtype=np.float64)


def parse_boxes(text: str) -> np.ndarray:
    """--bbox text "x1,y1,x2,y2" (several boxes separated by ';') -> (N, 4) float64.

    Raises FaceUtilError (one sentence) for anything that is not 4 finite numbers per box with x2 > x1, y2 > y1.
    """
    boxes = []
    for part in str(text).split(";"):
        if not part.strip():
            continue
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise FaceUtilError(f"--bbox={text!r} is not of the form x1,y1,x2,y2 (several boxes: separate with ';')")
        if not (values[2] > values[0] and values[3] > values[1]):
            raise FaceUtilError(f"--bbox box {part.strip()!r} is empty: it needs x2 > x1 and y2 > y1")
        boxes.append(values)
    if not boxes:
        raise FaceUtilError(f"--bbox={text!r} holds no box (use x1,y1,x2,y2)")
    return np.asarray(boxes, dtype=np.float64)
