"""Faces across video frames: tracking and causal smoothing.

Each tracked face keeps its crop (faceutil.crop.Similarity original -> 256x256). From one frame to the next the crop
moves with the face: the face's inner landmarks of the previous frame (brows, eyes, nose, mouth: points 17-67) are
followed into the new frame by pyramidal Lucas-Kanade optical flow, a similarity is fitted to their motion (RANSAC),
and the crop moves, turns and scales by it. The crop is not rebuilt from the network's own landmark box: a network
whose output leans towards the mean face of its crop (every briefly trained one does; measured on the --demo
network, a crop shifted down 15 px moved its landmarks down 18 px, a crop 25 % larger made its face 22-25 % larger)
would then drag the crop along with its bias, frame after frame, and drift away (2D NME 2 % -> 20 % in ten frames on
benchmarks/video.py's synthetic video). The flow follows the image, not the network.

The detector runs on the first frame, every N-th frame and whenever a face was lost. A detection that matches a track
confirms it and re-places its crop's centre and scale (the detector is the reference that does not drift; the track
keeps its id and filters; the turn is the detection's when the detector reads roll, see reanchored); a track that no
detection confirms MAX_MISSES times in a row is dropped. Landmarks, dense points and pose are smoothed by
faceutil.smoothing.OneEuroFilter (strength --smooth). Measured on benchmarks/video.py's video with the --demo network
and MTCNN (2026-12-07, benchmarks/results/video.md): with the defaults (detector every 5 frames, --smooth 0.5) 2D NME
7.93 % against 7.41 % for per-frame detection, jitter 3.30 px against 14.88 px, 3 frames of lag.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.predict import CROP_ENLARGE, CROP_SIZE, FaceResult, Predictor, fit_pose
from faceutil.crop import Similarity
from faceutil.smoothing import OneEuroFilter

#: a track is lost when its face's landmark box, seen in its crop, sits further than this fraction of the crop side
#: from the crop centre, or is this factor larger / smaller than the face square the crop was made for
LOST_SHIFT = 0.25
LOST_SCALE = 1.6
#: a detection re-places its track's crop (keeping the track's turn) unless their turns differ by more than this
#: many degrees
REANCHOR_TURN = 45.0
#: a detection whose face square overlaps a track's by more than this IoU is that track's face (it confirms the track;
#: another box that overlaps a track as much starts no new one), and re-places the track's crop only from this IoU on
#: (a flow-followed crop drifts slowly; a box that would move it further is more often the cascade's false box)
MATCH_IOU = 0.3
REANCHOR_IOU = 0.5
#: redetections in a row that find no face on a track before it is dropped (a false detection is not kept for ever)
MAX_MISSES = 3
#: optical flow: points whose forward-backward error exceeds this (px) are not used; fewer usable than this: lost
FLOW_FB_ERROR = 1.0
MIN_FLOW_POINTS = 10
INNER = slice(17, 68)                           # iBUG 68 points without the jaw line (which lies on the silhouette)


def face_square(crop: Similarity) -> np.ndarray:
    """(4,) [x1, y1, x2, y2]: the original-image axis-aligned box of the crop's face square (the centred square of
    side CROP_SIZE / CROP_ENLARGE, where the landmark box of a well-placed face lies)."""
    c, h = (CROP_SIZE - 1) / 2.0, CROP_SIZE / CROP_ENLARGE / 2.0
    corners = crop.inverse().apply(np.array([[c - h, c - h], [c + h, c - h], [c + h, c + h], [c - h, c + h]]))
    return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def follow_points(previous: np.ndarray, current: np.ndarray, points: np.ndarray) -> Similarity | None:
    """The similarity that moves `points` (N, 2) of the greyscale frame `previous` onto where they are in `current`
    (pyramidal Lucas-Kanade with a forward-backward check, then a RANSAC similarity fit), or None when fewer than
    MIN_FLOW_POINTS points can be followed (the face left, was covered, or the frame changed too much)."""
    import cv2

    p0 = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 1, 2)
    if not np.all(np.isfinite(p0)):
        return None
    kw = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(previous, current, p0, None, **kw)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(current, previous, p1, None, **kw)
    good = (ok1[:, 0] == 1) & (ok2[:, 0] == 1) & (np.linalg.norm(back - p0, axis=2)[:, 0] < FLOW_FB_ERROR)
    if good.sum() < MIN_FLOW_POINTS:
        return None
    m, inliers = cv2.estimateAffinePartial2D(p0[good], p1[good], method=cv2.RANSAC, ransacReprojThreshold=2.0)
    if m is None or inliers is None or int(inliers.sum()) < MIN_FLOW_POINTS:
        return None
    return Similarity(m)


def crop_params(crop: Similarity) -> tuple[np.ndarray, float, float]:
    """(image point at the crop centre (2,), crop px per image px, angle in degrees) of an original -> crop map."""
    c = (CROP_SIZE - 1) / 2.0
    return crop.inverse().apply(np.array([c, c])), crop.scale, crop.angle


def crop_from_params(centre: np.ndarray, scale: float, angle: float) -> Similarity:
    """The original -> crop similarity that puts `centre` at the crop centre, scaled by `scale` and turned by `angle`
    degrees (counter-clockwise as displayed): the inverse of crop_params."""
    a = np.radians(angle)
    lin = scale * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    c = (CROP_SIZE - 1) / 2.0
    return Similarity(np.hstack([lin, (c - lin @ np.asarray(centre, dtype=np.float64))[:, None]]))


def reanchored(tracked: Similarity, detected: Similarity, keep_turn: bool = True) -> Similarity:
    """A tracked crop re-placed by its detection: the detection's centre and scale, and, when `keep_turn`, the
    track's turn (an upright-only detector such as the Haar cascade says 0 for a face rolled by 20 degrees; the flow
    knows better), else the detection's (MTCNN reads the roll from the eye line, and the flow's turn lags: measured
    on benchmarks/video.py, keeping the track's turn with MTCNN made tracking 10.1 % 2D NME against 8.6 %, detector
    every 10 frames, P-Net threshold 0.6). A
    detection at a turn more than REANCHOR_TURN degrees from the track's (--any-roll: the detector also fired on the
    image turned by a quarter) leaves the tracked crop as it is."""
    (_, _, turn), (centre, scale, det_turn) = crop_params(tracked), crop_params(detected)
    if abs((det_turn - turn + 180.0) % 360.0 - 180.0) > REANCHOR_TURN:
        return tracked
    return crop_from_params(centre, scale, turn if keep_turn else det_turn)


@dataclass
class Track:
    """One face followed over frames: its crop, how the crop was placed this frame, its last raw (unsmoothed)
    landmarks (the points the optical flow follows) and its filters."""

    ident: int
    crop: Similarity
    kind: str                                # "detector" (placed by a detection this frame) or "tracked"
    landmarks: np.ndarray | None = None
    filters: dict = field(default_factory=dict)
    frames: int = 0
    misses: int = 0                          # redetections in a row that did not find this face


@dataclass
class TrackStats:
    frames: int = 0
    detections: int = 0                      # detector runs
    started: int = 0                         # tracks started from a detection
    lost: int = 0                            # tracks dropped (flow failed, face left its crop, or unconfirmed)


class FaceTracker:
    """Per-frame faces of a video with tracking and smoothing, behind the same Predictor.

    redetect_every: run the detector on the first frame, then every N-th frame and whenever a face was lost
    (0 = on every frame: no tracking, each frame's faces come from its own detection). smooth: --smooth strength in
    [0, 1] (0 = off: each frame's raw output). boxes: fixed detector boxes (--bbox) used instead of the detector.
    fps: frame rate of the video (the filter works in seconds).
    """

    def __init__(self, predictor: Predictor, fps: float, smooth: float = 0.0, redetect_every: int = 10,
                 boxes: np.ndarray | None = None):
        if redetect_every < 0:
            raise ValueError(f"redetect_every must be >= 0, got {redetect_every}")
        OneEuroFilter.from_strength(smooth)                      # range check
        self.predictor, self.fps, self.smooth = predictor, float(fps), float(smooth)
        self.redetect_every = int(redetect_every)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.tracks: list[Track] = []
        self.stats = TrackStats()
        self._next_id = 0
        self._since_detection = 0
        self._gray: np.ndarray | None = None
        self._lost = False

    # ------------------------------------------------------------------------------------------ one frame
    def __call__(self, image: np.ndarray, t: float | None = None) -> list[tuple[int, FaceResult]]:
        """The faces of the next frame (RGB uint8) as (track id, FaceResult), smoothed when asked; t: the frame's
        time in seconds (default: frame number / fps)."""
        import cv2

        t = self.stats.frames / self.fps if t is None else float(t)
        self.stats.frames += 1
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if self.redetect_every == 0:
            self.tracks = []                                     # no tracking: every frame starts afresh
        else:
            self._follow(gray)
        detect = (self.redetect_every == 0 or not self.tracks or self._lost
                  or self._since_detection >= self.redetect_every)
        self._lost = False
        if detect:
            self._detect(image, reanchor=True)
        self._since_detection += 1
        results = self._predict(image, self.tracks)
        if self._lost and not detect:                            # a face left its crop: look for faces now
            self._lost = False
            results += self._predict(image, self._detect(image, reanchor=False))
        self._gray = gray
        out = []
        for tr, face in results:
            tr.landmarks, tr.kind, tr.frames = face.landmarks, "tracked", tr.frames + 1
            out.append((tr.ident, self._smoothed(tr, face, t, image.shape[0])))
        return out

    def _follow(self, gray: np.ndarray) -> None:
        """Move every track's crop by the optical flow of its previous landmarks; drop those that cannot be followed."""
        alive = []
        for tr in self.tracks:
            motion = None
            if self._gray is not None and self._gray.shape == gray.shape and tr.landmarks is not None:
                motion = follow_points(self._gray, gray, tr.landmarks[INNER, :2])
            if motion is None:
                self.stats.lost += 1
                self._lost = True
                continue
            tr.crop = motion.inverse().compose(tr.crop)
            alive.append(tr)
        self.tracks = alive

    def _detect(self, image: np.ndarray, reanchor: bool) -> list[Track]:
        """Run the detector: a detection matching a track confirms it and, when `reanchor`, gives it its crop (the
        track keeps its id and filters); the others start tracks (returned). Tracks unconfirmed MAX_MISSES times in a
        row are dropped."""
        from faceutil.detect import box_iou

        self.stats.detections += 1
        self._since_detection = 0
        if self.boxes is not None:
            boxes, rolls, calibration = self.boxes, np.zeros(len(self.boxes)), None      # --bbox: read as Haar's
            keep_turn = True
        else:
            boxes, rolls = self.predictor.detect(image)
            calibration = self.predictor.box_calibration if len(boxes) else None
            keep_turn = not self.predictor.detector_measures_roll
        crops = [self.predictor.crop_for_box(b, "detector", r, calibration) for b, r in zip(boxes, rolls)]
        squares = [face_square(c) for c in crops]
        pairs = sorted(((box_iou(sq, face_square(tr.crop)), i, j) for i, sq in enumerate(squares)
                        for j, tr in enumerate(self.tracks)), reverse=True)
        used_det, matched, overlapping = set(), {}, set()
        for iou, i, j in pairs:
            if iou > MATCH_IOU:
                overlapping.add(i)
                if i not in used_det and j not in matched:
                    used_det.add(i)
                    matched[j] = (i, iou)
        kept = []
        for j, tr in enumerate(self.tracks):
            if j in matched:
                tr.misses = 0
                i, iou = matched[j]
                if reanchor and iou >= REANCHOR_IOU:
                    tr.crop, tr.kind = reanchored(tr.crop, crops[i], keep_turn), "detector"
            else:
                tr.misses += 1
                if tr.misses >= MAX_MISSES:
                    self.stats.lost += 1
                    continue
            kept.append(tr)
        new = []
        for i, crop in enumerate(crops):
            if i not in overlapping:                             # a second box on a tracked face is not a face
                new.append(Track(self._next_id, crop, "detector"))
                self._next_id += 1
                self.stats.started += 1
        self.tracks = kept + new
        return new

    def _predict(self, image: np.ndarray, tracks: list[Track]) -> list[tuple[Track, FaceResult]]:
        """One network batch over the tracks' crops; a tracked face that left its crop drops its track."""
        tracks = list(tracks)
        faces = self.predictor.predict_crops(image, [tr.crop for tr in tracks],
                                             [face_square(tr.crop) for tr in tracks], [tr.kind for tr in tracks],
                                             [-tr.crop.angle for tr in tracks])
        results = []
        for tr, face in zip(tracks, faces):
            if tr.kind == "tracked" and not self._in_crop(tr.crop, face.landmarks, image.shape):
                self.tracks.remove(tr)
                self.stats.lost += 1
                self._lost = True
                continue
            results.append((tr, face))
        return results

    @staticmethod
    def _in_crop(crop: Similarity, landmarks: np.ndarray, shape) -> bool:
        """Whether a face's landmarks lie where its crop expects a face (and inside the image)."""
        if not np.all(np.isfinite(landmarks)):
            return False
        p = crop.apply(landmarks[:, :2])
        lo, hi = p.min(axis=0), p.max(axis=0)
        shift = np.linalg.norm((lo + hi) / 2 - (CROP_SIZE - 1) / 2.0) / CROP_SIZE
        side = max(hi - lo) / (CROP_SIZE / CROP_ENLARGE)
        img = landmarks[:, :2]
        inside = img[:, 0].max() > 0 and img[:, 1].max() > 0 and img[:, 0].min() < shape[1] - 1 \
            and img[:, 1].min() < shape[0] - 1
        return bool(inside and shift < LOST_SHIFT and 1.0 / LOST_SCALE < side < LOST_SCALE)

    def _smoothed(self, track: Track, face: FaceResult, t: float, height: int) -> FaceResult:
        if self.smooth == 0.0:
            return face
        f = track.filters
        for key in ("landmarks", "vertices"):
            if key not in f:
                f[key] = OneEuroFilter.from_strength(self.smooth)
        landmarks = f["landmarks"](face.landmarks, t)
        vertices = f["vertices"](face.vertices, t)
        pose = fit_pose(vertices, self.predictor.geometry.mean_points, height)
        return FaceResult(box=face.box, box_kind=face.box_kind, crop=face.crop, posmap=face.posmap,
                          landmarks=landmarks, vertices=vertices, pose=pose, roll=face.roll)
