"""Prediction on arbitrary photos: the ``Predictor`` facade (image + face boxes -> landmarks, head pose, dense mesh).

Owns the detector-box -> crop rule at inference, the posmap -> original-image mapping and the pose fit. The pictures
drawn from the results live in inference/pictures.py, the -predict job (files, folders, videos) in
inference/predict_job.py.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from faceutil.uv import POSMAP_SCALE

CROP_SIZE = 256
POSE_POINT_STEP = 8                        # fit_pose: every 8th dense point
CROP_ENLARGE = 1.5                         # crop side = 1.5 x the landmark box, as in training and evaluation
BOX_KINDS = ("detector", "landmarks")
CONVENTIONS = ("image px: x = column, y = row (pixel centres at integers); z = depth in image-pixel scale, larger = "
               "closer to the camera, up to a per-face constant (deepest predicted face point at about 0); pose = "
               "3DDFA Euler angles in degrees of world = s R v + t with world y up (y_world = H + 1 - row), from a "
               "similarity fit of the predicted face points to the face model's mean shape; .obj vertices are "
               "(x, H + 1 - row, z), y up")


# ============================================================================================ UV geometry
@dataclass(frozen=True)
class UVGeometry:
    """What prediction needs from the face model's UV layout.

    kpt_ind: (2, 68) int64 UV landmark pixels (row 0 column, row 1 row). face_mask: (256, 256) bool.
    mean_points: (F, 3) float64 the model's mean shape (model units, y up) at the F face-mask pixels, row-major.
    triangles: (T, 3) int64 triangulation of the face-mask pixel grid (ids into the F points; counter-clockwise
    seen from the camera when y points up). texture_uv: (F, 2) float64 the points' texture coordinates in the
    UV texture image (u = column / (S - 1), v = 1 - row / (S - 1), as .obj "vt" expects).
    """

    bfm: str
    kpt_ind: np.ndarray
    face_mask: np.ndarray
    mean_points: np.ndarray
    triangles: np.ndarray
    texture_uv: np.ndarray


def grid_triangles(mask: np.ndarray) -> np.ndarray:
    """Triangulate the True pixels of a (H, W) mask: two triangles per full 2x2 block, one per block of three.

    Vertex ids follow row-major order of the True pixels (faceutil.uv.posmap_vertices order). Returns (T, 3) int64,
    counter-clockwise when the rows are flipped to point up.
    """
    mask = np.asarray(mask, dtype=bool)
    idx = np.full(mask.shape, -1, dtype=np.int64)
    idx[mask] = np.arange(int(mask.sum()))
    a, c = idx[:-1, :-1], idx[:-1, 1:]       # (row, col), (row, col + 1)
    b, d = idx[1:, :-1], idx[1:, 1:]         # (row + 1, col), (row + 1, col + 1)
    va, vb, vc, vd = a >= 0, b >= 0, c >= 0, d >= 0
    parts = []
    for tri, keep in (((a, b, c), va & vb & vc),                # upper-left triangle of a block (also: d missing)
                      ((c, b, d), vb & vc & vd),                # lower-right triangle (also: a missing)
                      ((a, d, c), va & vc & vd & ~vb),          # b missing
                      ((a, b, d), va & vb & vd & ~vc)):         # c missing
        parts.append(np.stack([t[keep] for t in tri], axis=1))
    return np.concatenate(parts).astype(np.int64)


@functools.lru_cache(maxsize=4)
def uv_geometry(bfm: str = "synthetic") -> UVGeometry:
    """UV geometry of a face model ("synthetic" or a face3d data/Out folder); cached per process (seconds to build)."""
    from faceutil.facemodel import load_model
    from faceutil.uv import UVRenderer, uv_layout

    model = load_model(bfm)
    layout = uv_layout(bfm, CROP_SIZE)
    mean_map = UVRenderer(model, CROP_SIZE).render(np.asarray(model.mean, dtype=np.float64))
    mask = np.asarray(layout.face_mask, dtype=bool)
    rows, cols = np.nonzero(mask)                                   # row-major: the order of the face points
    texture_uv = np.stack([cols / (CROP_SIZE - 1.0), 1.0 - rows / (CROP_SIZE - 1.0)], axis=1)
    return UVGeometry(bfm=str(bfm), kpt_ind=np.asarray(layout.kpt_ind, dtype=np.int64), face_mask=mask,
                      mean_points=mean_map[mask].astype(np.float64), triangles=grid_triangles(mask),
                      texture_uv=texture_uv)


# ============================================================================================ results
@dataclass
class FaceResult:
    """One face predicted in one image (all coordinates in the original image; see CONVENTIONS).

    box: (4,) float64 [x1, y1, x2, y2] the box the face came from; box_kind: "detector", "landmarks" (a given
    landmark box) or "tracked" (inference.tracking: the crop followed the face from the previous frame; box is then the
    axis-aligned box of the crop's face square, 1 / CROP_ENLARGE of the crop).
    roll: degrees (counter-clockwise as displayed) the face was taken to be turned by: the crop was turned back by
    it, so the network saw the face upright. crop: faceutil.crop.Similarity original image -> 256x256 network crop.
    posmap: (256, 256, 3) float32 predicted position map in crop pixels.
    landmarks: (68, 3) float64 original px (x, y row, z depth). vertices: (F, 3) float64 dense face points, same frame.
    pose: dict yaw / pitch / roll (degrees), scale, rotation (3, 3), translation (3,) of world = s R mean + t.
    """

    box: np.ndarray
    box_kind: str
    crop: object
    posmap: np.ndarray
    landmarks: np.ndarray
    vertices: np.ndarray
    pose: dict = field(default_factory=dict)
    roll: float = 0.0

    @property
    def landmarks_2d(self) -> np.ndarray:
        """(68, 2) float64 x, y in original image pixels."""
        return self.landmarks[:, :2]

    def to_json(self) -> dict:
        """JSON-ready dict (lists of floats)."""
        return {
            "box": [round(float(v), 3) for v in self.box], "box_kind": self.box_kind,
            "crop_roll": round(float(self.roll), 3),
            "crop_matrix": np.round(self.crop.matrix, 8).tolist(),
            "landmarks_2d": np.round(self.landmarks[:, :2], 4).tolist(),
            "landmarks_3d": np.round(self.landmarks, 4).tolist(),
            "pose": {"yaw": self.pose["yaw"], "pitch": self.pose["pitch"], "roll": self.pose["roll"],
                     "units": "degrees", "scale": self.pose["scale"],
                     "rotation": np.round(self.pose["rotation"], 8).tolist(),
                     "translation": np.round(self.pose["translation"], 4).tolist()},
        }


def fit_pose(vertices: np.ndarray, mean_points: np.ndarray, image_height: int) -> dict:
    """Head pose from dense face points: least-squares similarity world ~= s R mean + t, then 3DDFA Euler angles.

    vertices: (F, 3) image coordinates (x column, y row, z depth); mean_points: (F, 3) model space (y up), same
    UV pixels. The image y axis points down, the model's up: world y = H + 1 - row (faceutil.pose.project).
    Every POSE_POINT_STEP-th point is used (a regular subsample of the UV grid, an eighth of the cost, which matters
    per video frame; on benchmarks/video.py's frames the angles moved by at most 0.013 degrees, the scale 0.01 %).
    Returns yaw, pitch, roll (degrees, floats), scale (px per model unit), rotation (3, 3), translation (3,).
    """
    from faceutil.pose import estimate_similarity, matrix2angle

    world = np.array(vertices[::POSE_POINT_STEP], dtype=np.float64)
    world[:, 1] = (image_height + 1) - world[:, 1]
    s, rot, t = estimate_similarity(mean_points[::POSE_POINT_STEP], world)
    pitch, yaw, roll = matrix2angle(rot)
    return {"yaw": math.degrees(yaw), "pitch": math.degrees(pitch), "roll": math.degrees(roll), "scale": float(s),
            "rotation": rot, "translation": t}


def eye_line_roll(landmarks: np.ndarray) -> float:
    """A face's turn in the image (degrees, counter-clockwise as displayed) from its 68 landmarks (image px): the
    five points MTCNN gives (eye centres 36-41 and 42-47, nose tip 30, mouth corners 48 and 54) read by
    faceutil.detect.roll_from_five_points."""
    from faceutil.detect import roll_from_five_points

    p = np.asarray(landmarks, dtype=np.float64)[:, :2]
    five = np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])
    return float(roll_from_five_points(five)[0])


# ============================================================================================ the facade
class Predictor:
    """image + face boxes -> list[FaceResult]: crop each face like the evaluation crop, run the network in batches,
    map the position maps back to the image, fit the head pose.

    source: a checkpoint (.pth / .pt), an exported .onnx file (run with onnxruntime), an nn.Module, or any callable
    mapping (B, 3, 256, 256) float32 arrays in [0, 1] to the network output (posmap / 280) as arrays or tensors.
    device: None (CUDA when available), "cpu", "cuda[:N]". bfm: the face model whose UV layout the network was
    trained on ("synthetic" or a data/Out folder); default: what the checkpoint / ONNX file records, else "auto".
    model: expected model name (a checkpoint of another model is then an error). export: run the network's
    export() twin (plain-torch encoder, same outputs; benchmarks/results/predict.md). batch_size: faces per call.
    precision: "fp32" (default) or "bf16" / "fp16" (CUDA) for torch models (weights cast once, see
    inference.backends.TorchBackend);
    channels_last: NHWC convolutions; compile: torch.compile the network. None of these applies to an .onnx file.
    detector: the face detector used when no boxes are given: a name of inference.detectors.DETECTORS ("mtcnn", the
    default, or "haar"; built on first use, on `device`) or a detector object (``find_faces`` or ``detect``,
    and ``calibration``). any_roll: also run it on the image turned by 90, 180 and 270 degrees (see detect); with
    a canonicalised network (--canonicalize) each face is then cropped again, upright, at the turn its first
    prediction shows (see __call__).
    """

    def __init__(self, source, device=None, bfm: str | None = None, model: str | None = None,
                 model_kwargs: dict | None = None, export: bool = True, batch_size: int = 8, detector=None,
                 precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                 any_roll: bool = False):
        from inference.backends import open_network

        net = open_network(source, device=device, bfm=bfm, model=model, model_kwargs=model_kwargs, export=export,
                           precision=precision, channels_last=channels_last, compile=compile)
        self.backend, self.model_name, self.model_kwargs, self.bfm = net.backend, net.name, net.kwargs, net.bfm
        self.geometry = uv_geometry(self.bfm)
        self.batch_size = max(1, int(batch_size))
        self.any_roll = bool(any_roll)
        self._device = device
        self._detector = "mtcnn" if detector is None else detector

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def detector(self):
        """The face detector object (built from its name on first use: inference.detectors.make_detector)."""
        if isinstance(self._detector, str):
            from inference.detectors import make_detector

            self._detector = make_detector(self._detector, self._device)
        return self._detector

    @property
    def detector_name(self) -> str:
        """The face detector's name ("mtcnn", "haar", ...), without building it."""
        det = self._detector
        return det if isinstance(det, str) else str(getattr(det, "name", type(det).__name__))

    @property
    def box_calibration(self):
        """faceutil.detect.BoxCalibration of the detector's boxes (Haar's for a detector object that names none)."""
        from faceutil.detect import HAAR_CALIBRATION

        return getattr(self.detector, "calibration", HAAR_CALIBRATION)

    @property
    def detector_measures_roll(self) -> bool:
        """Whether the detector reads each face's roll (MTCNN, from its eye line) or reports every face upright
        (the Haar cascade; also a detector object that does not say)."""
        return bool(getattr(self.detector, "measures_roll", False))

    # ---------------------------------------------------------------------------------------- boxes and crops
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes of an RGB image from the Predictor's detector, and each face's roll.

        MTCNN reads each face's roll from its five points (the eye line), so a face tilted up to about 60 degrees
        gets an upright crop; the Haar cascade finds upright faces only and reports roll 0. any_roll (the Predictor's
        setting): the detector also runs on the image turned by 90, 180 and 270 degrees, so faces lying on their side
        or upside down are found with their roll (as they are, the cascade misses them and MTCNN misses them or
        reads their roll wrong; faceutil.detect.detect_any_roll).
        Returns (boxes (N, 4) [x1, y1, x2, y2], rolls (N,) degrees counter-clockwise as displayed).
        """
        from faceutil.detect import detect_any_roll

        det = self.detector
        if self.any_roll:
            return detect_any_roll(det, image)
        if hasattr(det, "find_faces"):
            boxes, rolls, _ = det.find_faces(image)
            return boxes, rolls
        boxes = det.detect(image)
        return boxes, np.zeros(len(boxes))

    @staticmethod
    def crop_for_box(box, box_kind: str = "detector", roll: float = 0.0, calibration=None):
        """The original -> 256x256 crop Similarity for a face box.

        box_kind "landmarks": the box is the tight 68-landmark box; the crop is exactly the evaluation crop
        (square, side 1.5 x max(w, h), same centre). "detector": a face-detector box, first turned into the
        landmark box it corresponds to on average by the detector's calibration (faceutil.detect.BoxCalibration;
        None: the Haar cascade's, side x 0.88, centre moved 0.167 x side towards the chin, which is also how --bbox
        boxes are read), so the crop matches the training-crop statistics. roll: the face's turn in the image
        (degrees, counter-clockwise as displayed); the crop is turned back by it, so the face is upright.
        """
        from faceutil.crop import crop_similarity, rotation_about
        from faceutil.detect import HAAR_CALIBRATION, landmark_box_from_detection

        if box_kind not in BOX_KINDS:
            raise ValueError(f"box_kind must be one of {BOX_KINDS}, got {box_kind!r}")
        b = np.asarray(box, dtype=np.float64).reshape(4)
        if box_kind == "detector":
            b = landmark_box_from_detection(b, roll, calibration or HAAR_CALIBRATION)
        corners = np.array([[b[0], b[1]], [b[2], b[3]]])
        sim = crop_similarity(corners, out_size=CROP_SIZE, enlarge=CROP_ENLARGE)
        if roll:
            sim = sim.compose(rotation_about(((CROP_SIZE - 1) / 2.0, (CROP_SIZE - 1) / 2.0), -float(roll)))
        return sim

    # ---------------------------------------------------------------------------------------- the call
    def run_network(self, crops: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 crops -> (N, 256, 256, 3) float32 position maps in crop pixels (batched)."""
        out = []
        step = self.batch_size if self.backend.max_batch is None else min(self.batch_size, self.backend.max_batch)
        for k in range(0, len(crops), step):
            x = crops[k:k + step].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            y = np.asarray(self.backend(np.ascontiguousarray(x)), dtype=np.float32)
            out.append(y.transpose(0, 2, 3, 1) * POSMAP_SCALE)
        return np.concatenate(out) if out else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.float32)

    def __call__(self, image: np.ndarray, boxes=None, box_kind: str = "detector", rolls=None) -> list[FaceResult]:
        """Predict every face of an (H, W, 3) uint8 RGB image.

        boxes: (N, 4) [x1, y1, x2, y2] original px, or None to detect faces with the Predictor's detector (see
        detect; its boxes are read with its own calibration; given "detector" boxes with the Haar cascade's).
        rolls: (N,) each face's turn in the image (degrees, counter-clockwise as displayed; default 0): its crop is
        turned back so the network sees it upright, and every output is mapped back into the image.
        Returns one FaceResult per box, in box order ([] when there is no face).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        calibration = None
        if boxes is None:
            (boxes, rolls), box_kind = self.detect(image), "detector"
            calibration = self.box_calibration
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        rolls = np.zeros(len(boxes)) if rolls is None else np.asarray(rolls, dtype=np.float64).reshape(-1)
        if len(rolls) != len(boxes):
            raise ValueError(f"{len(rolls)} rolls for {len(boxes)} boxes")
        sims = [self.crop_for_box(b, box_kind, r, calibration) for b, r in zip(boxes, rolls)]
        if self.any_roll and self.model_kwargs.get("canonicalize") and len(sims):
            # a canonicalised network reads a face's turn at any angle (its output is turned back by its estimate),
            # where a detector gives quarter turns (Haar) or reads past 60 degrees wrongly (MTCNN): the face is
            # cropped again from the photo at the turn its first prediction's eye line shows, so the second
            # prediction sees it upright through one resampling of the photo, with no corners turned out of view
            first = self.predict_crops(image, sims, boxes, [box_kind] * len(boxes), rolls)
            rolls = np.array([eye_line_roll(f.landmarks) for f in first])
            sims = [self.crop_for_box(b, box_kind, r, calibration) for b, r in zip(boxes, rolls)]
        return self.predict_crops(image, sims, boxes, [box_kind] * len(boxes), rolls)

    def predict_crops(self, image: np.ndarray, sims: list, boxes, box_kinds: list[str], rolls) -> list[FaceResult]:
        """The faces seen through given crops (faceutil.crop.Similarity original -> 256x256, e.g. a tracker's), in
        one network batch; boxes / box_kinds / rolls are recorded in each FaceResult as given."""
        from faceutil.uv import posmap_landmarks, posmap_vertices

        if not len(sims):
            return []
        crops = np.stack([s.warp_image(image, CROP_SIZE) for s in sims])
        posmaps = self.run_network(crops)
        geo = self.geometry
        results = []
        for box, kind, roll, sim, pm in zip(boxes, box_kinds, rolls, sims, posmaps):
            inv = sim.inverse()
            lms = inv.apply(posmap_landmarks(pm, geo.kpt_ind))
            verts = inv.apply(posmap_vertices(pm, geo.face_mask))
            pose = fit_pose(verts, geo.mean_points, image.shape[0])
            results.append(FaceResult(box=np.asarray(box, dtype=np.float64), box_kind=kind, crop=sim, posmap=pm,
                                      landmarks=lms, vertices=verts, pose=pose, roll=float(roll)))
        return results
