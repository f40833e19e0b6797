"""Face detection: face boxes from the OpenCV Haar cascade bundled in the opencv-python-headless wheel (no download),
and the rule that turns a detector box into the crop box the network was trained on.

Owns ``detect_faces`` (image -> (N, 4) boxes) and the detector-box calibration constants. numpy + cv2 only.
"""
from __future__ import annotations

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


def detect_faces(image: np.ndarray, detector: FaceDetector | None = None) -> np.ndarray:
    """Convenience: (N, 4) face boxes [x1, y1, x2, y2] of an RGB image with the bundled cascade (largest first)."""
    return (detector or FaceDetector()).detect(image)


def landmark_box_from_detection(box, roll: float = 0.0) -> np.ndarray:
    """Estimate the 68-landmark box (x1, y1, x2, y2) from a detector box, by the calibration constants above.

    box: (4,) [x1, y1, x2, y2] pixels. roll: the face's in-plane turn in the image (degrees, counter-clockwise as
    displayed; a multiple of 90 for boxes from detect_any_roll): the centre shift follows the face's own "down".
    Returns (4,) float64, a square of side 0.88 x the detector's (longer) side, its centre moved by
    DETECTOR_CENTRE_SHIFT x that side in the face's frame.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x2 - x1, y2 - y1)
    a = np.deg2rad(roll)
    dx, dy = DETECTOR_CENTRE_SHIFT[0] * side, DETECTOR_CENTRE_SHIFT[1] * side
    # the face's axes in the image (y down): a counter-clockwise turn maps (x, y) to (x c + y s, -x s + y c)
    cx = (x1 + x2) / 2.0 + dx * np.cos(a) + dy * np.sin(a)
    cy = (y1 + y2) / 2.0 - dx * np.sin(a) + dy * np.cos(a)
    half = DETECTOR_SIDE_TO_LANDMARK_SIDE * side / 2.0
    return np.array([cx - half, cy - half, cx + half, cy + half])


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


def detect_any_roll(detector: "FaceDetector", image: np.ndarray, rolls=ROLLS,
                    overlap: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Faces at any in-plane turn: the upright-only cascade run on the image turned by each of `rolls` degrees.

    A face found in the image turned counter-clockwise by r is turned by -r in the image itself. Boxes that overlap
    (IoU > overlap, or one's centre inside the other) are one face: the largest box keeps it (the cascade's false
    boxes are mostly small patches inside or beside a face), ties going to the turn tried first (ROLLS order). The
    result does not depend on how the image itself was turned: its quarter turns give the same candidates. The cascade also fires on some non-faces; trying four turns gives it four chances (on the 36
    genuine photos of ../shared/data, all upright, 2026-12-03: 32 boxes from the upright image alone, 42 with all
    four turns, and 3.8x the detection time), which is why -predict does it on request (--any-roll), not by default.
    Returns (boxes (N, 4) detector boxes mapped into the image, largest first, face_rolls (N,) degrees
    counter-clockwise as displayed, in (-180, 180]).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    candidates = []                                   # (area, order, box, roll)
    for order, r in enumerate(rolls):
        k = int(r) // 90
        turned = np.ascontiguousarray(np.rot90(img, k)) if k % 4 else img
        roll = float(((-r + 180) % 360) - 180) if r % 360 else 0.0
        for b in detector.detect(turned):
            box = _box_from_turned(b, k, h, w)
            candidates.append(((box[2] - box[0] + 1) * (box[3] - box[1] + 1), order, box,
                               180.0 if roll == -180.0 else roll))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    kept = []
    for _, _, box, roll in candidates:
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
