"""Face detectors by name: ``make_detector("mtcnn" | "haar")`` is the one place that picks one, and ``MTCNNDetector``
wraps facenet-pytorch's MTCNN (boxes, scores and five points -> boxes and each face's roll).

MTCNN runs three small torch networks, so it lives here in engine/ (faceutil/ never imports torch); the pure-number
parts it shares with the Haar cascade (box calibration, roll from five points, the quarter-turn search) are in
faceutil/detect.py. facenet-pytorch is imported when an MTCNNDetector is built, not when this module is imported.
"""
from __future__ import annotations

import numpy as np

from engine.errors import RunError

#: detector names, the default first (config.DETECTORS holds the same names; a test checks)
DETECTORS = ("mtcnn", "haar")
#: the facenet-pytorch release whose wheel carries the MTCNN weights (pnet.pt, rnet.pt, onet.pt; MIT licence)
FACENET_PYTORCH = "facenet-pytorch==2.5.3"
#: MTCNN faces whose roll is beyond this (degrees) are looked at again, turned upright (MTCNNDetector.find_faces)
REFINE_ROLL = 10.0
#: side of the upright view of a face, in units of its detector box side
REFINE_VIEW = 2.0


class MTCNNDetector:
    """MTCNN (Zhang et al. 2016) as packaged by facenet-pytorch 2.5.3, weights from its wheel (no download).

    device: None (CUDA when available, model.device.get_device), "cpu", "cuda[:N]". min_size_frac: smallest face
    side as a fraction of the image's shorter side (at least 20 px; the Haar cascade's rule, so both search the same
    sizes). thresholds: P-, R- and O-Net score thresholds (facenet-pytorch's are 0.6, 0.7, 0.7; the P-Net's 0.5 here
    finds the one genuine face 0.6 missed, AFLW2000-3D image00032, and the astronaut turned by 75 degrees, with no
    false box added on the genuine photos, the turned astronaut or skimage's face-free images, measured
    2026-12-07 on those same images: benchmarks/results/detect.md). min_score: boxes whose final
    (O-Net) score is below this are dropped. refine: look again at each face whose roll is beyond REFINE_ROLL, in a
    view of the image turned so that the face is upright (see find_faces).
    Raises RunError (one sentence naming what to install) when facenet-pytorch or its weight files are missing.
    """

    name = "mtcnn"
    measures_roll = True                     # each face's roll comes from its eye line (find_faces)

    def __init__(self, device=None, min_size_frac: float = 0.08, thresholds=(0.5, 0.7, 0.7), min_score: float = 0.0,
                 refine: bool = True):
        from faceutil.detect import MTCNN_CALIBRATION
        from model.device import get_device

        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            missing = err.name or "facenet_pytorch"
            if missing.split(".")[0] == "facenet_pytorch":
                raise RunError(f"The MTCNN face detector needs the facenet-pytorch package: pip install "
                               f"{FACENET_PYTORCH} (or use --detector=haar).") from None
            raise RunError(f"The MTCNN face detector's package facenet-pytorch needs {missing}, which is not "
                           f"installed: pip install -r requirements.txt (or use --detector=haar).") from None
        self.device = get_device(device)
        try:
            self._net = MTCNN(keep_all=True, device=self.device, thresholds=list(thresholds), select_largest=True)
        except (OSError, RuntimeError) as err:              # pnet.pt / rnet.pt / onet.pt missing or unreadable
            raise RunError(f"The MTCNN weights of facenet-pytorch cannot be loaded ({type(err).__name__}); reinstall "
                           f"them with pip install --force-reinstall --no-deps {FACENET_PYTORCH} (or use "
                           f"--detector=haar).") from None
        self._net.eval()
        self.calibration = MTCNN_CALIBRATION
        self.min_size_frac = float(min_size_frac)
        self.min_score = float(min_score)
        self.refine = bool(refine)

    def detect_all(self, image: np.ndarray, min_face: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an (H, W, 3) uint8 RGB image.

        Returns boxes (N, 4) float64 [x1, y1, x2, y2] image px (MTCNN's own box, taller than wide for an upright
        face), scores (N,) float64 in [0, 1], points (N, 5, 2) float64 image px (eye, eye, nose tip, mouth corner,
        mouth corner); largest box first; N = 0 when no face is found. min_face: smallest face side in px (default:
        the detector's min_size_frac rule).
        """
        import torch

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        self._net.min_face_size = min_face or max(20, int(self.min_size_frac * min(img.shape[:2])))
        with torch.inference_mode():
            boxes, scores, points = self._net.detect(np.ascontiguousarray(img), landmarks=True)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
        keep = scores >= self.min_score
        return boxes[keep], scores[keep], points[keep]

    def find_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces with their roll: (boxes (N, 4) [x1, y1, x2, y2] px, rolls (N,) degrees counter-clockwise as
        displayed, scores (N,) in [0, 1]), largest box first.

        The roll comes from the five points (faceutil.detect.roll_from_five_points). MTCNN's points lag behind a
        strongly tilted face (the astronaut photo turned by 60 deg read as 43), so with `refine` each face whose
        roll is beyond REFINE_ROLL is looked at again in a view of side REFINE_VIEW x its box, turned so that the
        face is upright by the first reading; the face found there (nearest the view's centre) adds its own small
        roll, and its box, which is then the box of the upright face as the calibration was measured on, is placed
        back at its centre in the image: for such a face the box is the face-frame box (width and height in the
        face's frame), centred where the face is, not the axis-aligned hull of a tilted box.
        """
        from faceutil.detect import roll_from_five_points

        boxes, scores, points = self.detect_all(image)
        rolls = roll_from_five_points(points)
        if self.refine:
            for k in np.nonzero(np.abs(rolls) > REFINE_ROLL)[0]:
                better = self._upright_look(image, boxes[k], float(rolls[k]))
                if better is not None:
                    boxes[k], rolls[k] = better
        return boxes, rolls, scores

    def _upright_look(self, image: np.ndarray, box: np.ndarray, roll: float):
        """The face in `box` (4,) seen again in a view turned by -roll about its centre: (box (4,), roll) in the
        image, or None when MTCNN finds no face near the view's centre."""
        from faceutil.crop import Similarity, rotation_about
        from faceutil.detect import roll_from_five_points

        centre = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
        side = max(box[2] - box[0], box[3] - box[1])
        size = max(48, int(round(REFINE_VIEW * side)))
        m = rotation_about(centre, -roll).matrix.copy()
        m[:2, 2] += (size - 1) / 2.0 - centre                     # the face's centre -> the view's centre
        view_map = Similarity(m)
        view = view_map.warp_image(image, size)
        found, _, points = self.detect_all(view, min_face=max(20, int(0.5 * side)))
        if not len(found):
            return None
        centres = (found[:, :2] + found[:, 2:]) / 2.0
        k = int(np.argmin(np.linalg.norm(centres - (size - 1) / 2.0, axis=1)))
        if np.linalg.norm(centres[k] - (size - 1) / 2.0) > side / 2.0:
            return None
        back = view_map.inverse().apply(centres[k][None])[0]
        half = (found[k, 2:] - found[k, :2]) / 2.0
        turn = float(roll_from_five_points(points[k])[0])
        total = ((roll + turn + 180.0) % 360.0) - 180.0
        return np.concatenate([back - half, back + half]), (180.0 if total == -180.0 else total)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) float64 face boxes [x1, y1, x2, y2] image px, largest first (as FaceDetector.detect)."""
        return self.detect_all(image)[0]


def make_detector(name: str = "mtcnn", device=None):
    """The face detector called `name` (DETECTORS): "mtcnn" -> MTCNNDetector(device), "haar" -> the bundled OpenCV
    cascade (faceutil.detect.FaceDetector, CPU). Both have ``detect(image)`` -> (N, 4) boxes,
    ``find_faces(image)`` -> (boxes, rolls, scores), ``calibration`` (faceutil.detect.BoxCalibration) and ``name``.

    Raises RunError (one sentence) for an unknown name or a missing package; the Haar cascade's own problems raise
    FaceUtilError as before.
    """
    if name == "mtcnn":
        return MTCNNDetector(device=device)
    if name == "haar":
        from faceutil.detect import FaceDetector

        return FaceDetector()
    raise RunError(f"Unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}.")
