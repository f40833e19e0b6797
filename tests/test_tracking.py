"""Video: the One Euro filter (faceutil/smoothing.py), face tracking (inference/tracking.py) and predict_video's
handling of broken videos (issue 15)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.predict import FaceResult, Predictor
from inference.tracking import (MAX_MISSES, FaceTracker, crop_from_params, crop_params, follow_points, reanchored)
from faceutil.crop import landmark_box
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
def _texture(rng, shape) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.uint8), (0, 0), 2.0)


class TexturedScene:
    """A static textured background (480 x 640) and a textured disc (the "face", radius 90 px) moved and turned along
    a known path; 68 "landmarks" lie on the disc (eyes level when upright), so the truth of every frame is exact."""

    def __init__(self, centres, rolls=None, seed=0):
        rng = np.random.default_rng(seed)
        self.centres = np.asarray(centres, dtype=np.float64)
        self.rolls = np.zeros(len(self.centres)) if rolls is None else np.asarray(rolls, dtype=np.float64)
        self.background = np.repeat(_texture(rng, (480, 640))[..., None], 3, axis=2)
        self.disc = np.repeat(_texture(rng, (201, 201))[..., None], 3, axis=2)
        yy, xx = np.mgrid[:201, :201]
        self.mask = ((xx - 100) ** 2 + (yy - 100) ** 2 <= 90 ** 2).astype(np.uint8)
        r, a = np.sqrt(rng.uniform(0, 1, 68)) * 60, rng.uniform(0, 2 * np.pi, 68)
        self.template = np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(-20, 20, 68)], 1)
        self.template[36:42, :2] = [-25, -15]
        self.template[42:48, :2] = [25, -15]
        self.template[:36, :2] *= [1.0, 0.8]

    def placement(self, k: int):
        from faceutil.crop import Similarity, rotation_about

        move = Similarity(np.array([[1.0, 0, self.centres[k, 0] - 100], [0, 1.0, self.centres[k, 1] - 100]]))
        return rotation_about((100.0, 100.0), self.rolls[k]).compose(move)

    def frame(self, k: int) -> np.ndarray:
        import cv2

        m = self.placement(k).matrix[:2]
        disc = cv2.warpAffine(self.disc, m, (640, 480), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(self.mask, m, (640, 480), flags=cv2.INTER_NEAREST)
        return np.where(mask[..., None] > 0, disc, self.background)

    def truth(self, k: int) -> np.ndarray:
        pts = self.template.copy()
        pts[:, :2] = self.placement(k).apply(pts[:, :2] + 100.0)
        return pts


class FakeGeometry:
    mean_points = np.random.default_rng(2).normal(0, 50, (40, 3))


class FakePredictor:
    """Stands in for inference.predict.Predictor over a TexturedScene: its "network" returns the true landmarks (plus
    noise) of the face its crop sees, or a face at the crop centre when the crop misses it; the detector boxes the
    true landmarks (padded as a face detector does); every call is recorded."""

    geometry = FakeGeometry()
    crop_for_box = staticmethod(Predictor.crop_for_box)
    box_calibration = None                         # the Haar cascade's, as Predictor.crop_for_box reads None
    detector_measures_roll = False                 # its boxes come at roll 0, as the Haar cascade's

    def __init__(self, scene: TexturedScene, noise=0.0, seed=0, extra_boxes=None, box_shift=None):
        self.scene, self.noise, self.rng = scene, noise, np.random.default_rng(seed)
        self.extra_boxes, self.box_shift = extra_boxes or {}, box_shift or {}
        self.frame, self.detect_calls, self.calls = 0, [], []

    def detect(self, image):
        self.detect_calls.append(self.frame)
        x1, y1, x2, y2 = landmark_box(self.scene.truth(self.frame))
        dx = self.box_shift.get(self.frame, 0.0) * (x2 - x1)
        boxes = [[x1 - 5 + dx, y1 - 15, x2 + 5 + dx, y2 + 5]] + self.extra_boxes.get(self.frame, [])
        return np.array(boxes, dtype=np.float64), np.zeros(len(boxes))

    def predict_crops(self, image, sims, boxes, kinds, rolls):
        self.calls.append((self.frame, list(kinds), list(sims)))
        out = []
        truth = self.scene.truth(self.frame)
        for sim, box, kind, roll in zip(sims, boxes, kinds, rolls):
            seen = np.linalg.norm(sim.apply(truth[:, :2]).mean(axis=0) - 127.5) < 64
            lms = truth + self.rng.normal(0, self.noise, (68, 3)) * [1, 1, 0] if seen else \
                np.concatenate([sim.inverse().apply(self.scene.template[:, :2] * 1.3 + 127.5), truth[:, 2:]], 1)
            out.append(FaceResult(box=np.asarray(box), box_kind=kind, crop=sim, posmap=None, landmarks=lms,
                                  vertices=lms[:40].copy(), pose={}, roll=float(roll)))
        return out


def _run(scene, frames, fake=None, **kw):
    fake = fake or FakePredictor(scene)
    tracker = FaceTracker(fake, fps=25.0, **kw)
    outputs = []
    for k in range(frames):
        fake.frame = k
        outputs.append(tracker(scene.frame(k)))
    return tracker, fake, outputs


def test_follow_points_recovers_a_known_motion_and_gives_up_on_a_changed_frame():
    import cv2

    from faceutil.crop import Similarity, rotation_about

    rng = np.random.default_rng(5)
    image = _texture(rng, (300, 300))
    motion = rotation_about((150.0, 150.0), 4.0).compose(Similarity(np.array([[1.03, 0, 3.5], [0, 1.03, -2.0]])))
    moved = cv2.warpAffine(image, motion.matrix[:2], (300, 300), flags=cv2.INTER_LINEAR)
    points = rng.uniform(100, 200, (51, 2))
    found = follow_points(image, moved, points)
    assert found is not None
    assert np.abs(found.apply(points) - motion.apply(points)).max() < 0.3
    assert follow_points(image, _texture(np.random.default_rng(6), (300, 300)), points) is None


def test_crop_parameters_round_trip_and_a_detection_keeps_the_tracked_turn_unless_it_reads_roll():
    from faceutil.crop import crop_similarity, rotation_about

    crop = crop_similarity(np.random.default_rng(0).uniform(50, 200, (68, 2))).compose(rotation_about((127.5,) * 2, 30))
    centre, scale, angle = crop_params(crop)
    assert angle == pytest.approx(30.0) and np.allclose(crop_from_params(centre, scale, angle).matrix, crop.matrix)
    detected = crop_from_params(centre + [7.0, -3.0], scale * 1.1, 0.0)
    again = crop_params(reanchored(crop, detected))
    assert np.allclose(again[0], centre + [7.0, -3.0]) and again[1] == pytest.approx(scale * 1.1)
    assert again[2] == pytest.approx(30.0)                      # the upright-only detector's 0 is not taken
    rolled = crop_params(reanchored(crop, crop_from_params(centre + [7.0, -3.0], scale * 1.1, 22.0), keep_turn=False))
    assert np.allclose(rolled[0], centre + [7.0, -3.0]) and rolled[2] == pytest.approx(22.0)   # MTCNN's roll is
    quarter = crop_from_params(centre + [30.0, 0.0], scale, 120.0)           # found at another quarter turn
    assert reanchored(crop, quarter) is crop


def test_tracking_follows_a_moving_turning_face_and_detects_every_n_frames():
    """Between detections each crop moves with the face (the truth keeps its place in the crop within 1 px, roll
    included); a detection re-places the crop but keeps the tracked turn; one track all along."""
    scene = TexturedScene(np.stack([np.linspace(200, 420, 30), np.linspace(240, 260, 30)], 1), np.linspace(0, 40, 30))
    tracker, fake, outputs = _run(scene, 30, redetect_every=10)
    assert fake.detect_calls == [0, 10, 20] and tracker.stats.detections == 3
    assert tracker.stats.started == 1 and tracker.stats.lost == 0
    assert all(len(o) == 1 and o[0][0] == 0 for o in outputs)
    kinds = [c[1][0] for c in fake.calls]
    assert kinds == ["detector" if k in (0, 10, 20) else "tracked" for k in range(30)]
    crops = [c[2][0] for c in fake.calls]
    for k in range(1, 30):
        if kinds[k] == "tracked":
            drift = crops[k].apply(scene.truth(k)[:, :2]) - crops[k - 1].apply(scene.truth(k - 1)[:, :2])
            assert np.abs(drift).max() < 1.0, k
        else:
            assert -crops[k].angle == pytest.approx(scene.rolls[k], abs=1.0)      # the flow's turn, not the 0 detected
        assert outputs[k][0][1].roll == pytest.approx(-crops[k].angle)
    assert -crops[29].angle == pytest.approx(40.0, abs=1.5)


def test_without_tracking_every_frame_is_detected():
    scene = TexturedScene(np.tile([[300.0, 240.0]], (12, 1)))
    tracker, fake, outputs = _run(scene, 12, redetect_every=0)
    assert fake.detect_calls == list(range(12)) and all(c[1] == ["detector"] for c in fake.calls)
    assert [o[0][0] for o in outputs] == list(range(12))


def test_a_face_that_jumps_away_is_lost_and_found_again_by_the_detector():
    scene = TexturedScene(np.array([[180.0, 240.0]] * 8 + [[470.0, 240.0]] * 8))     # the face jumps at frame 8
    tracker, fake, outputs = _run(scene, 16, redetect_every=100)
    assert tracker.stats.lost == 1 and fake.detect_calls == [0, 8]
    assert [o[0][0] for o in outputs] == [0] * 8 + [1] * 8                 # a new track after the jump
    assert np.allclose(outputs[8][0][1].landmarks, scene.truth(8))


def test_a_detection_no_later_detection_confirms_is_dropped():
    """A false box on frame 0 (static background) is followed, then dropped after MAX_MISSES redetections miss it."""
    scene = TexturedScene(np.tile([[200.0, 240.0]], (45, 1)))
    fake = FakePredictor(scene, extra_boxes={0: [[430.0, 150.0, 560.0, 280.0]]})
    tracker, fake, outputs = _run(scene, 45, fake, redetect_every=10)
    ids = [sorted(i for i, _ in o) for o in outputs]
    assert MAX_MISSES == 3
    assert ids[:30] == [[0, 1]] * 30 and ids[30:] == [[0]] * 15 and tracker.stats.lost == 1


def test_a_far_off_or_second_box_on_a_tracked_face_neither_moves_its_crop_nor_starts_a_track():
    """Frame 10: the face's box 35 % of a side off (face-square IoU 0.3-0.5: it confirms the track, the crop stays);
    frame 20: a second, larger box over the face beside the true one (no new track)."""
    scene = TexturedScene(np.tile([[250.0, 240.0]], (30, 1)))
    x1, y1, x2, y2 = landmark_box(scene.truth(0))
    fake = FakePredictor(scene, box_shift={10: 0.35}, extra_boxes={20: [[x1 - 40, y1 - 30, x2 + 30, y2 + 40]]})
    tracker, fake, outputs = _run(scene, 30, fake, redetect_every=10)
    kinds = [c[1] for c in fake.calls]
    assert kinds[10] == ["tracked"] and kinds[20] == ["detector"] and kinds[11] == ["tracked"]
    assert np.allclose(fake.calls[10][2][0].matrix, fake.calls[9][2][0].matrix, atol=0.05)
    assert all(len(o) == 1 and o[0][0] == 0 for o in outputs) and tracker.stats.started == 1


def test_smoothing_cuts_the_jitter_of_a_moving_face():
    """The tracker smooths each track's landmarks: a face drifting at up to 30 px/s with 1.5 px noise per frame."""
    t = np.arange(120)
    centres = np.stack([300 + 30 * np.sin(t / 25.0), 240 + 15 * np.cos(t / 40.0)], 1)
    scene = TexturedScene(centres)
    runs = {}
    for s in (0.0, 0.5):
        _, _, outputs = _run(scene, 120, FakePredictor(scene, noise=1.5), redetect_every=10, smooth=s)
        runs[s] = np.stack([o[0][1].landmarks[:, :2] for o in outputs])
    truth = np.stack([scene.truth(k)[:, :2] for k in range(120)])
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
    detector_measures_roll = False

    def detect(self, image):
        return np.zeros((0, 4)), np.zeros(0)

    def __call__(self, image, boxes=None, box_kind="detector", rolls=None):
        return []

    def predict_crops(self, image, sims, boxes, kinds, rolls):
        return []


def test_a_video_cut_short_keeps_its_good_frames_and_says_so(tmp_path):
    from inference.predict_job import predict_video

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
    from inference.predict_job import predict_video

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
