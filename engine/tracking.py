"""Faces across video frames: tracking (each face's next crop placed from its landmarks in the previous frame, the
detector run again only every N frames or when a face is lost) and causal smoothing of landmarks, dense points and
pose (faceutil.smoothing.OneEuroFilter, strength --smooth).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.predict import FaceResult, Predictor, fit_pose
from faceutil.smoothing import OneEuroFilter

#: a track is lost when its new landmark box is this much larger / smaller than the previous one, or when its centre
#: moved more than this fraction of the previous box side (the crop spans 1.5 sides, so the face left the crop)
LOST_SCALE = 1.6
LOST_SHIFT = 0.6
#: detections overlapping a track's landmark-box estimate by more than this IoU are that track, not a new face
MATCH_IOU = 0.3
SUBJECT_RIGHT_EYE, SUBJECT_LEFT_EYE = slice(36, 42), slice(42, 48)   # iBUG 68: image left / right when upright


def eye_line_roll(landmarks: np.ndarray) -> float:
    """The face's in-plane turn in the image from its 68 landmarks: the angle of the line from the subject's right
    eye (points 36-41) to the left eye (42-47), degrees counter-clockwise as displayed (0 for an upright face)."""
    d = landmarks[SUBJECT_LEFT_EYE, :2].mean(axis=0) - landmarks[SUBJECT_RIGHT_EYE, :2].mean(axis=0)
    return float(np.degrees(np.arctan2(-d[1], d[0])))


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    lo, hi = landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)
    return np.concatenate([lo, hi])


@dataclass
class Track:
    """One face followed over frames: its last raw (unsmoothed) landmarks place the next crop."""

    ident: int
    landmarks: np.ndarray
    roll: float
    filters: dict = field(default_factory=dict)
    frames: int = 0


@dataclass
class TrackStats:
    frames: int = 0
    detections: int = 0                      # frames on which the detector ran
    lost: int = 0                            # tracks dropped because their face left the crop
    started: int = 0                         # tracks started from a detection


class FaceTracker:
    """Per-frame faces of a video with tracking and smoothing, behind the same Predictor.

    redetect_every: run the detector on the first frame, then every N-th frame and whenever no face is tracked
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

    # ------------------------------------------------------------------------------------------ detection
    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.stats.detections += 1
        if self.boxes is not None:
            return self.boxes, np.zeros(len(self.boxes))
        return self.predictor.detect(image)

    def _new_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detections that are not already tracked faces."""
        from faceutil.detect import box_iou, landmark_box_from_detection

        boxes, rolls = self._detect(image)
        keep = []
        for i, (b, r) in enumerate(zip(boxes, rolls)):
            guess = landmark_box_from_detection(b, r)
            if all(box_iou(guess, landmark_box(t.landmarks)) <= MATCH_IOU for t in self.tracks):
                keep.append(i)
        return boxes[keep], rolls[keep]

    # ------------------------------------------------------------------------------------------ one frame
    def __call__(self, image: np.ndarray, t: float | None = None) -> list[tuple[int, FaceResult]]:
        """The faces of the next frame (RGB uint8) as (track id, FaceResult), smoothed when asked; t: the frame's
        time in seconds (default: frame number / fps)."""
        t = self.stats.frames / self.fps if t is None else float(t)
        self.stats.frames += 1
        detect = self.redetect_every == 0 or not self.tracks or self._since_detection >= self.redetect_every
        if self.redetect_every == 0:
            self.tracks = []                                     # no tracking: every frame starts afresh
        results: list[tuple[Track, FaceResult]] = []
        if self.tracks:
            boxes = np.stack([landmark_box(tr.landmarks) for tr in self.tracks])
            faces = self.predictor(image, boxes, box_kind="landmarks", rolls=[tr.roll for tr in self.tracks])
            alive = []
            for tr, face in zip(self.tracks, faces):
                if self._still_there(tr, face, image.shape):
                    alive.append(tr)
                    results.append((tr, face))
                else:
                    self.stats.lost += 1
            self.tracks = alive
            detect = detect or len(alive) < len(boxes)
        self._since_detection += 1
        if detect:
            self._since_detection = 1
            boxes, rolls = self._new_faces(image)
            if len(boxes):
                for face in self.predictor(image, boxes, box_kind="detector", rolls=rolls):
                    tr = Track(self._next_id, face.landmarks, face.roll)
                    self._next_id += 1
                    self.stats.started += 1
                    self.tracks.append(tr)
                    results.append((tr, face))
        out = []
        for tr, face in results:
            tr.landmarks, tr.roll, tr.frames = face.landmarks, eye_line_roll(face.landmarks), tr.frames + 1
            out.append((tr.ident, self._smoothed(tr, face, t, image.shape[0])))
        return out

    @staticmethod
    def _still_there(track: Track, face: FaceResult, shape) -> bool:
        old, new = landmark_box(track.landmarks), landmark_box(face.landmarks)
        side_old = max(old[2] - old[0], old[3] - old[1], 1e-6)
        side_new = max(new[2] - new[0], new[3] - new[1])
        shift = np.linalg.norm((new[:2] + new[2:]) / 2 - (old[:2] + old[2:]) / 2) / side_old
        inside = new[2] > 0 and new[3] > 0 and new[0] < shape[1] - 1 and new[1] < shape[0] - 1
        return bool(np.all(np.isfinite(face.landmarks)) and inside and shift < LOST_SHIFT
                    and 1.0 / LOST_SCALE < side_new / side_old < LOST_SCALE)

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
