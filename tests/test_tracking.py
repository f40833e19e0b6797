"""Video: the One Euro filter (faceutil/smoothing.py), face tracking (engine/tracking.py) and predict_video's
handling of broken videos (issue 15)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.predict import FaceResult
from engine.tracking import FaceTracker, eye_line_roll, landmark_box
from faceutil.smoothing import OneEuroFilter


def jitter(track: np.ndarray) -> float:
    """Mean frame-to-frame acceleration |x[t+1] - 2 x[t] + x[t-1]| of (T, N, 2) points, px."""
    return float(np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=-1).mean())


# ------------------------------------------------------------------------------------------------ the filter
def test_filter_range_and_first_value():
    assert OneEuroFilter.from_strength(0.0) is None
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            OneEuroFilter.from_strength(bad)
    f = OneEuroFilter.from_strength(0.5)
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(f(x, 0.0), x)


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_filter_removes_jitter_and_keeps_slow_motion(strength):
    """Points moving on a circle (0.2 Hz, radius 20 px: 25 px/s) plus 2 px white noise, 25 frames/s: the filter cuts
    the jitter by at least 3x while following the motion (error to the clean path below the noise's own).
    (Faster motion costs lag: at 75 px/s the same settings cut the jitter 2.5-2.7x and the error grows above the
    noise's, measured 2026-12-03; benchmarks/video.py measures it on a face.)"""
    rng = np.random.default_rng(0)
    t = np.arange(250) / 25.0
    clean = np.stack([20 * np.cos(2 * math.pi * 0.2 * t), 20 * np.sin(2 * math.pi * 0.2 * t)], -1)[:, None, :]
    clean = clean + np.arange(5)[None, :, None] * 10.0                      # 5 points moving together
    noisy = clean + rng.normal(0, 2.0, clean.shape)
    f = OneEuroFilter.from_strength(strength)
    out = np.stack([f(noisy[i], t[i]) for i in range(len(t))])
    assert jitter(out[25:]) < jitter(noisy[25:]) / 3.0
    err_out = np.linalg.norm(out[25:] - clean[25:], axis=-1).mean()
    err_in = np.linalg.norm(noisy[25:] - clean[25:], axis=-1).mean()
    assert err_out < err_in, (err_out, err_in)


def test_stronger_smoothing_lags_more_and_jitters_less():
    rng = np.random.default_rng(1)
    t = np.arange(200) / 25.0
    clean = np.stack([30 * t, np.zeros_like(t)], -1)[:, None, :]          # 30 px/s straight line
    noisy = clean + rng.normal(0, 1.5, clean.shape)
    lags, jitters = [], []
    for s in (0.2, 0.6, 1.0):
        f = OneEuroFilter.from_strength(s)
        out = np.stack([f(noisy[i], t[i]) for i in range(len(t))])
        lags.append(float((clean[50:, 0, 0] - out[50:, 0, 0]).mean()))     # behind the line, px
        jitters.append(jitter(out[50:]))
    assert lags[0] < lags[1] < lags[2] and jitters[0] > jitters[1] > jitters[2]


# ------------------------------------------------------------------------------------------------ the tracker
class FakeGeometry:
    mean_points = np.random.default_rng(2).normal(0, 50, (40, 3))


class FakePredictor:
    """Stands in for engine.predict.Predictor: faces at known places per frame (landmarks = a template moved along
    a path, plus noise); records every call so the tracking decisions can be checked."""

    geometry = FakeGeometry()

    def __init__(self, centres, rolls=None, noise=0.0, seed=0):
        self.centres = np.asarray(centres, dtype=np.float64)
        self.rolls = np.zeros(len(self.centres)) if rolls is None else np.asarray(rolls, dtype=np.float64)
        self.template = np.random.default_rng(3).uniform(-40, 40, (68, 3))
        self.template[36:42, :2] = [-20, -10]                    # the eyes: an upright face
        self.template[42:48, :2] = [20, -10]
        self.noise, self.rng = noise, np.random.default_rng(seed)
        self.frame, self.detect_calls, self.calls = 0, [], []

    def truth(self, frame: int) -> np.ndarray:
        a = np.radians(self.rolls[frame])
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])   # counter-clockwise as displayed
        pts = self.template.copy()
        pts[:, :2] = pts[:, :2] @ rot.T + self.centres[frame]
        return pts

    def detect(self, image):
        self.detect_calls.append(self.frame)
        lm = landmark_box(self.truth(self.frame))
        return np.array([lm + np.array([-5, -15, 5, 5])]), np.zeros(1)

    def __call__(self, image, boxes, box_kind="detector", rolls=None):
        self.calls.append((self.frame, box_kind, np.array(boxes), np.array(rolls)))
        out = []
        for box in boxes:
            lms = self.truth(self.frame) + self.rng.normal(0, self.noise, (68, 3)) * [1, 1, 0]
            verts = np.tile(lms[:40], (1, 1))
            out.append(FaceResult(box=np.asarray(box), box_kind=box_kind, crop=None, posmap=None, landmarks=lms,
                                  vertices=verts, pose={}, roll=0.0 if rolls is None else float(rolls[0])))
        return out


def _run(predictor, frames, **kw):
    tracker = FaceTracker(predictor, fps=25.0, **kw)
    outputs = []
    image = np.zeros((480, 640, 3), np.uint8)
    for k in range(frames):
        predictor.frame = k
        outputs.append(tracker(image))
    return tracker, outputs


def test_tracking_detects_every_n_frames_and_crops_from_the_previous_landmarks():
    centres = np.stack([np.linspace(200, 400, 30), np.full(30, 240.0)], 1)
    fake = FakePredictor(centres, rolls=np.linspace(0, 60, 30))
    tracker, outputs = _run(fake, 30, redetect_every=10)
    assert fake.detect_calls == [0, 10, 20] and tracker.stats.detections == 3
    assert tracker.stats.started == 1 and tracker.stats.lost == 0
    assert all(len(o) == 1 and o[0][0] == 0 for o in outputs)          # one face, one track all along
    tracked = [c for c in fake.calls if c[1] == "landmarks"]
    assert len(tracked) == 29
    for frame, _, boxes, rolls in tracked:
        previous = fake.truth(frame - 1)
        assert np.allclose(boxes[0], landmark_box(previous))
        assert rolls[0] == pytest.approx(eye_line_roll(previous)) and rolls[0] == pytest.approx(fake.rolls[frame - 1])


def test_without_tracking_every_frame_is_detected():
    fake = FakePredictor(np.tile([[300.0, 240.0]], (12, 1)))
    tracker, _ = _run(fake, 12, redetect_every=0)
    assert fake.detect_calls == list(range(12)) and all(c[1] == "detector" for c in fake.calls)


def test_a_face_that_jumps_away_is_lost_and_found_again_by_the_detector():
    centres = np.array([[150.0, 240.0]] * 8 + [[500.0, 240.0]] * 8)      # the face jumps at frame 8
    fake = FakePredictor(centres)
    tracker, outputs = _run(fake, 16, redetect_every=100)
    assert tracker.stats.lost == 1 and fake.detect_calls == [0, 8]
    assert [o[0][0] for o in outputs] == [0] * 8 + [1] * 8                 # a new track after the jump
    assert np.allclose(outputs[8][0][1].landmarks, fake.truth(8))


def test_smoothing_cuts_the_jitter_of_a_moving_face():
    """The tracker smooths each track's landmarks: a face drifting at up to 30 px/s with 1.5 px noise per frame."""
    centres = np.stack([300 + 30 * np.sin(np.arange(120) / 25.0), 240 + 15 * np.cos(np.arange(120) / 40.0)], 1)
    runs = {}
    for s in (0.0, 0.5):
        fake = FakePredictor(centres, noise=1.5)
        _, outputs = _run(fake, 120, redetect_every=10, smooth=s)
        runs[s] = np.stack([o[0][1].landmarks[:, :2] for o in outputs])
    truth = np.stack([FakePredictor(centres).truth(k)[:, :2] for k in range(120)])
    assert jitter(runs[0.5]) < jitter(runs[0.0]) / 2.5
    err = {s: np.linalg.norm(r - truth, axis=-1).mean() for s, r in runs.items()}
    assert err[0.5] < err[0.0]


# ------------------------------------------------------------------------------------------------ broken videos
def _write_video(path, frames: int, size=(96, 128)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size[1], size[0]))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8))
    writer.release()


class NoFaceGeometry:
    triangles = np.zeros((0, 3), np.int64)
    mean_points = np.zeros((0, 3))


class NoFacePredictor:
    """A predictor that never finds a face (the video plumbing is what is tested)."""

    geometry = NoFaceGeometry()
    model_name, backend_name, bfm = "none", "none", "synthetic"

    def detect(self, image):
        return np.zeros((0, 4)), np.zeros(0)

    def __call__(self, image, boxes=None, box_kind="detector", rolls=None):
        return []


def test_a_video_cut_short_keeps_its_good_frames_and_says_so(tmp_path):
    from engine.predict_job import predict_video

    whole = tmp_path / "whole.avi"
    _write_video(whole, 30)
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])                 # ends mid-stream
    stats = predict_video(NoFacePredictor(), cut, tmp_path, "cut", redetect_every=5, smooth=0.5)
    record = json.loads((tmp_path / "cut.json").read_text())
    assert 0 < stats["frames"] < 30 and len(record["per_frame"]) == stats["frames"]
    assert stats["frames_announced"] == 30 and stats["ended_early"] and record["ended_early"]
    assert (tmp_path / "cut_annotated.mp4").stat().st_size > 0
    full = predict_video(NoFacePredictor(), whole, tmp_path, "whole")
    assert full["frames"] == 30 and not full["ended_early"] and full["skipped_frames"] == []


def test_a_frame_that_cannot_be_decoded_is_skipped_and_named(tmp_path):
    from engine.predict_job import predict_video

    path = tmp_path / "broken.avi"
    _write_video(path, 30)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]   # JPEG frame starts
    assert len(starts) == 30
    data[starts[10]:starts[10] + 600] = bytes(600)                # frame 10 loses its JPEG header
    path.write_bytes(bytes(data))
    stats = predict_video(NoFacePredictor(), path, tmp_path, "broken")
    assert stats["frames"] == 29 and stats["skipped_frames"] == [{"frame": 10, "reason": "cannot be decoded"}]
    record = json.loads((tmp_path / "broken.json").read_text())
    assert [r["frame"] for r in record["per_frame"]] == [k for k in range(30) if k != 10]
