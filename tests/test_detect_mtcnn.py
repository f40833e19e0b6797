"""The MTCNN face detector (inference/detectors.py) and what it shares with the Haar cascade (faceutil/detect.py): the
roll from five points, boxes and rolls on the public-domain astronaut photo at known turns (hand-placed truth), no box
on face-free photos, the box calibration against the annotated landmarks of the genuine AFLW2000-3D samples (upright
and turned), --detector / --any-roll wiring, and one-sentence errors for an unknown name or a missing package."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.errors import RunError

#: the astronaut's 68-landmark box and eye centres (image-left eye first), placed by hand by looking at
#: skimage.data.astronaut() (512 x 512): brows to chin, jaw side to jaw side; a few pixels' precision
ASTRONAUT_BOX = np.array([180.0, 88.0, 272.0, 189.0])
ASTRONAUT_EYES = np.array([[203.0, 101.0], [246.4, 103.6]])
#: the training crop's jitter (faceutil.crop.crop_similarity): centre +-10 % of the crop side per axis, crop side
#: x U(0.9, 1.1), so the landmark box is 256 / 1.5 / U px wide in the 256 crop
CENTRE_JITTER = 0.1
SIDE_RANGE = (1 / 1.1, 1 / 0.9)


@pytest.fixture(scope="module")
def mtcnn(one_torch_thread):
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch (the MTCNN detector) is not installed")
    from inference.detectors import make_detector

    return make_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _turned(image: np.ndarray, degrees: float):
    """image turned counter-clockwise (as displayed) by `degrees` about its centre onto a square canvas holding all
    of it; returns (canvas, (2, 3) affine original px -> canvas px)."""
    import cv2

    h, w = image.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(degrees), 1.0)
    m[:, 2] += ((side - w) / 2.0, (side - h) / 2.0)
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR), m


def _eye_roll(left: np.ndarray, right: np.ndarray) -> float:
    d = right - left
    return float(np.degrees(np.arctan2(-d[1], d[0])))


def _angle_diff(a: float, b: float) -> float:
    return abs(((a - b + 180.0) % 360.0) - 180.0)


# ------------------------------------------------------------------------------------------------- names and errors
def test_detector_names_agree_and_mtcnn_is_the_default():
    import config
    from inference.detectors import DETECTORS

    assert config.DETECTORS == DETECTORS and DETECTORS[0] == "mtcnn"
    assert config.Config().detector == "mtcnn"
    assert config.parse_config(["-predict=p.jpg", "--detector=haar"], check=False).detector == "haar"


def test_only_mtcnn_says_it_reads_the_roll(mtcnn):
    """The tracker keeps a crop's tracked turn for a detector that reports every face upright (the Haar cascade)."""
    from faceutil.detect import FaceDetector

    assert mtcnn.measures_roll is True and FaceDetector.measures_roll is False


def test_unknown_detector_name_is_one_sentence(tmp_path, capsys):
    import torchrun
    from config import ConfigError, parse_config
    from inference.detectors import make_detector

    with pytest.raises(ConfigError) as err:
        parse_config(["-predict=p.jpg", "--detector=dlib"])
    assert "--detector='dlib'" in str(err.value) and "mtcnn, haar" in str(err.value)
    with pytest.raises(RunError, match="Unknown face detector 'dlib'"):
        make_detector("dlib")
    code = torchrun.main(["-predict=p.jpg", "--detector=dlib", f"-o={tmp_path}"])
    stderr = capsys.readouterr().err.strip()
    assert code != 0 and len(stderr.splitlines()) == 1 and "dlib" in stderr and "Traceback" not in stderr


def test_missing_facenet_pytorch_is_one_sentence_naming_the_package(monkeypatch, astronaut, tmp_path, capsys):
    """The package is made unimportable (sys.modules entry None): the detector, and -predict before it reads any
    checkpoint or photo, stop with one sentence that says what to install."""
    import torchrun
    from inference.detectors import MTCNNDetector
    from faceutil.sampleio import atomic_write_image

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(RunError) as err:
        MTCNNDetector(device="cpu")
    message = str(err.value)
    assert "pip install facenet-pytorch==2.5.3" in message and "\n" not in message
    photo, checkpoint = tmp_path / "a.png", tmp_path / "not_read.pth"
    atomic_write_image(photo, astronaut)
    checkpoint.write_bytes(b"not a checkpoint")
    code = torchrun.main([f"-predict={photo}", f"--loadModelPath={checkpoint}", f"-o={tmp_path / 'out'}",
                          "--device=cpu"])
    stderr = capsys.readouterr().err.strip()
    assert code != 0 and len(stderr.splitlines()) == 1 and "facenet-pytorch" in stderr, stderr
    # --detector=haar needs no facenet-pytorch: the run gets past the detector and stops at the bad checkpoint
    code = torchrun.main([f"-predict={photo}", f"--loadModelPath={checkpoint}", f"-o={tmp_path / 'out'}",
                          "--device=cpu", "--detector=haar"])
    stderr = capsys.readouterr().err.strip()
    assert code != 0 and "facenet-pytorch" not in stderr and "not_read.pth" in stderr, stderr


def test_a_missing_dependency_of_facenet_pytorch_is_named(monkeypatch):
    """facenet-pytorch 2.5.3 imports requests when it is imported (for its face-recognition weights' download, which
    MTCNN never uses), so a machine without requests cannot build the detector: the sentence names requests."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is not installed")
    from inference.detectors import MTCNNDetector

    for name in [m for m in sys.modules if m == "facenet_pytorch" or m.startswith("facenet_pytorch.")]:
        monkeypatch.delitem(sys.modules, name)              # imported afresh below, restored afterwards
    monkeypatch.setitem(sys.modules, "requests", None)
    with pytest.raises(RunError) as err:
        MTCNNDetector(device="cpu")
    assert "needs requests" in str(err.value) and "\n" not in str(err.value)


def test_missing_mtcnn_weights_is_one_sentence(monkeypatch):
    facenet_pytorch = pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is not installed")
    from inference.detectors import MTCNNDetector

    def no_weights(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "facenet_pytorch/data/pnet.pt")

    monkeypatch.setattr(facenet_pytorch, "MTCNN", no_weights)
    with pytest.raises(RunError) as err:
        MTCNNDetector(device="cpu")
    assert "--force-reinstall" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- roll from points
@pytest.mark.parametrize("turn", [-170.0, -95.0, -30.0, 0.0, 12.5, 60.0, 90.0, 135.0, 180.0])
def test_roll_from_five_points_reads_a_known_turn(turn):
    from faceutil.crop import rotation_about
    from faceutil.detect import roll_from_five_points

    upright = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]])
    points = rotation_about((60.0, 70.0), turn).apply(upright)
    assert roll_from_five_points(points)[0] == pytest.approx(turn, abs=1e-9)
    # eyes and mouth corners each swapped (points in image order for an upside-down face, as a detector trained on
    # upright faces may give them): the eye line reads 180 deg off, the "down" vector still says which way is down
    swapped = points[[1, 0, 2, 4, 3]]
    assert _angle_diff(roll_from_five_points(swapped)[0], turn) < 1e-6


# ------------------------------------------------------------------------------------------------- the astronaut
@pytest.mark.parametrize("turn", [-60, -30, 0, 30, 60])
def test_mtcnn_finds_the_turned_astronaut_with_her_roll(mtcnn, astronaut, turn):
    """One box, the roll of the hand-placed eye line within 3 deg (measured 2026-12-07: at most 1.6 deg from -60 to
    60), and the crop box from the calibration centred on the hand-placed landmark box within the training jitter.
    The crop box's side came out 0.87-0.91 x the hand-placed box's (the hand box may be a little large)."""
    from faceutil.detect import MTCNN_CALIBRATION, landmark_box_from_detection

    canvas, m = _turned(astronaut, turn)
    boxes, rolls, scores = mtcnn.find_faces(canvas)
    assert len(boxes) == 1
    eyes = ASTRONAUT_EYES @ m[:, :2].T + m[:, 2]
    assert _angle_diff(rolls[0], _eye_roll(*eyes)) < 3.0
    est = landmark_box_from_detection(boxes[0], rolls[0], MTCNN_CALIBRATION)
    side = ASTRONAUT_BOX[3] - ASTRONAUT_BOX[1]
    centre = m[:, :2] @ ((ASTRONAUT_BOX[:2] + ASTRONAUT_BOX[2:]) / 2) + m[:, 2]
    offset = ((est[:2] + est[2:]) / 2 - centre) / (1.5 * side)           # in units of the crop side
    assert np.abs(offset).max() < CENTRE_JITTER
    assert 0.8 < (est[2] - est[0]) / side < 1.1


@pytest.mark.parametrize("turn", [90, 135, 180, -90])
def test_any_roll_finds_the_astronaut_lying_on_her_side_or_upside_down(mtcnn, astronaut, turn):
    """At these turns MTCNN alone misses the face or reads its roll wrong (at 90 deg: roll 5 deg, score 0.75); the
    quarter-turn search finds it, keeps the best-scored candidate and gets the roll within 3 deg (measured: 0.4)."""
    from faceutil.detect import detect_any_roll

    canvas, m = _turned(astronaut, turn)
    boxes, rolls = detect_any_roll(mtcnn, canvas)
    eyes = ASTRONAUT_EYES @ m[:, :2].T + m[:, 2]
    assert len(boxes) == 1
    assert _angle_diff(rolls[0], _eye_roll(*eyes)) < 3.0
    centre = m[:, :2] @ ((ASTRONAUT_BOX[:2] + ASTRONAUT_BOX[2:]) / 2) + m[:, 2]
    assert np.linalg.norm((boxes[0, :2] + boxes[0, 2:]) / 2 - centre) < 0.3 * (ASTRONAUT_BOX[3] - ASTRONAUT_BOX[1])


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "coins", "moon", "brick"])
def test_mtcnn_finds_no_face_on_face_free_photos(mtcnn, name):
    """skimage's coffee cup, cat, rocket, coins, moon and brick wall hold no human face (the Haar cascade gives 3
    false boxes on coins and 1 on the moon, 2026-12-07)."""
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    boxes, rolls, scores = mtcnn.find_faces(np.ascontiguousarray(image[..., :3].astype(np.uint8)))
    assert len(boxes) == 0 and len(rolls) == 0 and len(scores) == 0


def test_the_predictor_uses_mtcnn_by_default_and_its_roll(astronaut):
    """Predictor.detect with no detector named: MTCNN, each face's own roll (the astronaut turned by 30 deg reads
    about 26.6 deg), and its calibration for the crop; --detector=haar gives the cascade and Haar's calibration."""
    from inference.predict import Predictor
    from faceutil.detect import HAAR_CALIBRATION, MTCNN_CALIBRATION, FaceDetector

    def network(x):                                       # never called: only detection is exercised
        raise AssertionError("the network should not run")

    predictor = Predictor(network, device="cpu", bfm="synthetic")
    assert predictor.detector_name == "mtcnn"
    canvas, m = _turned(astronaut, 30)
    boxes, rolls = predictor.detect(canvas)
    eyes = ASTRONAUT_EYES @ m[:, :2].T + m[:, 2]
    assert len(boxes) == 1 and _angle_diff(rolls[0], _eye_roll(*eyes)) < 3.0
    assert predictor.box_calibration == MTCNN_CALIBRATION
    haar = Predictor(network, device="cpu", bfm="synthetic", detector="haar")
    assert isinstance(haar.detector, FaceDetector) and haar.box_calibration == HAAR_CALIBRATION


# ------------------------------------------------------------------------------------------------- genuine samples
def _near_frontal(shared_data):
    from faceutil.sampleio import read_image, read_sample_mat

    out = []
    for mat in sorted((shared_data / "aflw2000_samples").glob("*.mat")):
        sample = read_sample_mat(mat)
        if abs(np.degrees(sample.pose_para[1])) < 30:
            out.append((mat.stem, read_image(mat.with_suffix(".jpg")), sample.pt3d_68[:, :2].astype(np.float64)))
    return out


def _crop_stats(mtcnn, image, landmarks):
    """The MTCNN crop of the face nearest the landmarks: (centre offset (2,) of the landmark box from the crop centre
    over the crop side, its side over the training side 256 / 1.5, eye line in the crop (deg), roll error (deg)),
    or None when no box lies on the face."""
    from inference.predict import Predictor
    from faceutil.crop import landmark_box
    from faceutil.detect import MTCNN_CALIBRATION

    boxes, rolls, _ = mtcnn.find_faces(image)
    truth = np.array(landmark_box(landmarks))
    if not len(boxes):
        return None
    k = int(np.argmin(np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (truth[:2] + truth[2:]) / 2, axis=1)))
    crop = Predictor.crop_for_box(boxes[k], "detector", rolls[k], MTCNN_CALIBRATION)
    p = crop.apply(landmarks)
    b = np.array(landmark_box(p))
    if not (b[0] < 127.5 < b[2] and b[1] < 127.5 < b[3]):
        return None
    in_crop = _eye_roll(p[36:42].mean(0), p[42:48].mean(0))
    roll_err = _angle_diff(rolls[k], _eye_roll(landmarks[36:42].mean(0), landmarks[42:48].mean(0)))
    return ((b[:2] + b[2:]) / 2 - 127.5) / 256, (b[2:] - b[:2]).max() / (256 / 1.5), in_crop, roll_err


def test_mtcnn_calibration_reproduces_the_training_crop_on_genuine_samples(mtcnn, shared_data):
    """The 20 near-frontal (|yaw| < 30 deg) genuine AFLW2000-3D samples, upright: MTCNN finds every face, and the
    crop built from its box with the calibration places the annotated landmark box as a training crop does: every
    centre within the training jitter, the median within 3 % of the crop side (measured 2026-12-07: 2.0 / 1.7 %),
    the median side within 3 % of the training side, every side within 0.8-1.25 of it (measured 0.89-1.22) and
    two thirds within the training scale jitter (measured 14 of 20; the side varies by 8 % (sd) from face to face,
    as with the Haar cascade)."""
    stats = [_crop_stats(mtcnn, image, lms) for _, image, lms in _near_frontal(shared_data)]
    assert len(stats) == 20 and all(s is not None for s in stats)
    centres = np.array([s[0] for s in stats])
    sides = np.array([s[1] for s in stats])
    assert np.abs(centres).max() < CENTRE_JITTER
    assert np.all(np.median(np.abs(centres), axis=0) < 0.03)
    assert abs(np.median(sides) - 1.0) < 0.03
    assert np.all((sides > 0.8) & (sides < 1.25))
    assert np.mean((sides > SIDE_RANGE[0]) & (sides < SIDE_RANGE[1])) >= 2 / 3
    assert max(s[3] for s in stats) < 8.0                       # MTCNN's roll against the annotated eye line


def test_tilted_genuine_faces_get_an_upright_crop(mtcnn, shared_data):
    """The same 20 samples turned by +35 and -35 deg in turn (new views, not the calibration's): MTCNN finds at least
    18, reads the roll of the annotated eye line within 8 deg (measured 2026-12-07: at most 6.8, median under 3), so
    the eye line in the crop is level within 8 deg, and the landmark box sits in the crop as in a training crop
    (median centre within 4 % of the crop side)."""
    stats = []
    for k, (_, image, lms) in enumerate(_near_frontal(shared_data)):
        turn = 35.0 if k % 2 else -35.0
        canvas, m = _turned(image, turn)
        stats.append(_crop_stats(mtcnn, canvas, lms @ m[:, :2].T + m[:, 2]))
    found = [s for s in stats if s is not None]
    assert len(found) >= 18
    assert max(abs(s[2]) for s in found) < 8.0 and np.median([s[3] for s in found]) < 3.0
    centres = np.array([s[0] for s in found])
    assert np.all(np.median(np.abs(centres), axis=0) < 0.04)
