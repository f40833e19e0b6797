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


class MTCNNDetector:
    """MTCNN (Zhang et al. 2016) as packaged by facenet-pytorch 2.5.3, weights from its wheel (no download).

    device: None (CUDA when available, model.device.get_device), "cpu", "cuda[:N]". min_size_frac: smallest face
    side as a fraction of the image's shorter side (at least 20 px; the Haar cascade's rule, so both search the same
    sizes). thresholds: P-, R- and O-Net score thresholds (facenet-pytorch's defaults). min_score: boxes whose final
    (O-Net) score is below this are dropped.
    Raises RunError (one sentence naming what to install) when facenet-pytorch or its weight files are missing.
    """

    name = "mtcnn"

    def __init__(self, device=None, min_size_frac: float = 0.08, thresholds=(0.6, 0.7, 0.7), min_score: float = 0.0):
        from faceutil.detect import MTCNN_CALIBRATION
        from model.device import get_device

        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise RunError(f"The MTCNN face detector needs the facenet-pytorch package: pip install "
                           f"{FACENET_PYTORCH} (or use --detector=haar).") from None
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

    def detect_all(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an (H, W, 3) uint8 RGB image.

        Returns boxes (N, 4) float64 [x1, y1, x2, y2] image px (MTCNN's own box, taller than wide for an upright
        face), scores (N,) float64 in [0, 1], points (N, 5, 2) float64 image px (eye, eye, nose tip, mouth corner,
        mouth corner); largest box first; N = 0 when no face is found.
        """
        import torch

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        self._net.min_face_size = max(20, int(self.min_size_frac * min(img.shape[:2])))
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
        """(boxes (N, 4) [x1, y1, x2, y2] px, rolls (N,) degrees counter-clockwise as displayed from the five points
        (faceutil.detect.roll_from_five_points), scores (N,) in [0, 1]), largest box first."""
        from faceutil.detect import roll_from_five_points

        boxes, scores, points = self.detect_all(image)
        return boxes, roll_from_five_points(points), scores

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
