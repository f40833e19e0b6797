"""faceutil.appearance (issue 25, item 3): the switches parse, are seeded, leave the truth alone and each changes
what it should in a render (small renders of the coarse 81 x 81 synthetic model)."""
import numpy as np
import pytest
import scipy.io

from faceutil.appearance import SWITCHES, Appearance
from faceutil.errors import FaceUtilError
from faceutil.pose import project
from faceutil.render import rasterize
from faceutil.synthetic import draw_params, render_sample, synthesize_dataset
from faceutil.synthetic_model import build_synthetic_model

SIZE = 450


@pytest.fixture(scope="module")
def small():
    return build_synthetic_model(seed=0, grid=81)


def _pair(small, switch: str, seed: int = 4, scale: float = 1.0):
    """(plain image, image with one switch, face mask, landmarks): the same face, pose and plain draws; `scale`
    shrinks the face about the image centre (room for the shoulders below it)."""
    rng = np.random.default_rng(seed)
    pose, shape, exp = draw_params(rng, small, "300W_LP", SIZE)
    pose[6] *= scale
    pose[3:5] = pose[3:5] * scale + (1 - scale) * SIZE / 2
    state = rng.bit_generator.state
    plain, lms = render_sample(small, pose, shape, exp, rng, SIZE)
    rng.bit_generator.state = state
    other, lms2 = render_sample(small, pose, shape, exp, rng, SIZE, Appearance.parse(switch))
    np.testing.assert_array_equal(lms, lms2)
    tri_id, _, _ = rasterize(project(small.vertices(shape, exp), pose, SIZE), small.triangles, SIZE, SIZE)
    return plain.astype(np.float64), other.astype(np.float64), tri_id >= 0, lms


def test_parse_names_and_bad_input():
    assert not Appearance.parse("plain") and Appearance.parse(None).name == "plain"
    assert Appearance.parse("full").switches == frozenset(SWITCHES) and Appearance.parse("full").name == "full"
    assert Appearance.parse("full,-hair").name == "full,-hair" and "hair" not in Appearance.parse("full,-hair")
    assert Appearance.parse("camera, hair").name == "hair,camera"             # SWITCHES order, spaces ignored
    for spec in ("plain", "full", "full,-pose", "hair,camera", "background"):
        assert Appearance.parse(Appearance.parse(spec).name) == Appearance.parse(spec)
    with pytest.raises(FaceUtilError, match="unknown appearance switch 'hats'"):
        Appearance.parse("hair,hats")


def test_full_is_seeded_and_keeps_the_truth(small, tmp_path):
    plain = synthesize_dataset(tmp_path / "plain", "300W_LP", 2, seed=3, model=small)
    look = Appearance.parse("full,-pose")
    for folder in ("a", "b"):
        synthesize_dataset(tmp_path / folder, "300W_LP", 2, seed=3, model=small, appearance=look)
    assert (tmp_path / "a" / "appearance.txt").read_text().strip() == "full,-pose"
    for name in plain:
        a, b = (tmp_path / f / f"{name}.jpg" for f in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()                                   # seeded
        assert a.read_bytes() != (tmp_path / "plain" / f"{name}.jpg").read_bytes()
        truth = [scipy.io.loadmat(tmp_path / f / f"{name}.mat") for f in ("plain", "a")]
        for key in ("Pose_Para", "Shape_Para", "Exp_Para", "pt2d"):               # appearance never moves the face
            np.testing.assert_array_equal(truth[0][key], truth[1][key])


def test_a_folder_keeps_one_appearance(small, tmp_path):
    synthesize_dataset(tmp_path, "300W_LP", 1, seed=1, model=small)
    with pytest.raises(FaceUtilError, match="made with appearance 'plain', not 'hair'"):
        synthesize_dataset(tmp_path, "300W_LP", 2, seed=1, model=small, appearance=Appearance.parse("hair"))
    synthesize_dataset(tmp_path, "300W_LP", 2, seed=1, model=small)             # the same appearance goes on


def _diff(a, b, mask):
    return float(np.abs(a - b)[mask].mean())


def test_background_and_body_change_only_what_lies_behind_the_head(small):
    plain, other, face, _ = _pair(small, "background")
    assert _diff(plain, other, ~face) > 20.0 and _diff(plain, other, face) < 3.0
    plain, other, face, lms = _pair(small, "body", scale=0.5)
    below = np.zeros_like(face)
    below[int(lms[:, 1].max()) + 40:, :] = True
    above = np.zeros_like(face)
    above[: int(lms[17:27, 1].min()), :] = True
    assert _diff(plain, other, below & ~face) > 10.0
    assert _diff(plain, other, above & ~face) < 3.0 and _diff(plain, other, face) < 3.0


def test_hair_covers_the_top_of_the_head_and_not_the_mouth(small):
    plain, other, face, lms = _pair(small, "hair")
    top = np.zeros_like(face)                           # above the brows, between the jaw's ends
    brow, width = int(lms[17:27, 1].min()), lms[16, 0] - lms[0, 0]
    top[max(0, int(brow - 0.3 * width)): brow - 5, int(lms[0, 0]): int(lms[16, 0])] = True
    mouth = np.zeros_like(face)
    lo, hi = lms[48:68, :2].min(0).astype(int), lms[48:68, :2].max(0).astype(int)
    mouth[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    changed = np.abs(plain - other).max(axis=2) > 12
    assert changed[top].mean() > 0.3
    assert _diff(plain, other, mouth) < 3.0


def test_skin_and_lighting_change_the_face_not_the_background(small):
    for switch in ("skin", "lighting"):
        diffs = [_pair(small, switch, seed) for seed in range(3)]
        assert max(_diff(p, o, f) for p, o, f, _ in diffs) > 15.0, switch
        assert max(_diff(p, o, ~f) for p, o, f, _ in diffs) < 3.0, switch


def test_occluders_cover_part_of_the_face_only(small):
    changed = []
    for seed in range(6):
        plain, other, face, lms = _pair(small, "occluders", seed)
        lo, hi = lms[:, :2].min(0), lms[:, :2].max(0)
        far = np.zeros_like(face)
        far[:, : max(0, int(lo[0] - 0.8 * (hi[0] - lo[0])))] = True              # well left of the face
        assert _diff(plain, other, far) < 3.0 if far.any() else True
        changed.append(_diff(plain, other, face) > 4.0)
    assert 1 <= sum(changed) <= 5                                               # about half the faces get one


def test_camera_changes_the_whole_image(small):
    diffs = [_pair(small, "camera", seed) for seed in range(3)]
    assert all(_diff(p, o, ~f) > 2.0 and _diff(p, o, f) > 2.0 for p, o, f, _ in diffs)


def test_pose_widens_pitch_and_roll(small):
    rng = np.random.default_rng(0)
    plain = np.degrees([draw_params(rng, small, "300W_LP")[0][[0, 2]] for _ in range(300)])
    rng = np.random.default_rng(0)
    wide = np.degrees([draw_params(rng, small, "300W_LP", appearance=Appearance.parse("pose"))[0][[0, 2]]
                       for _ in range(300)])
    assert (np.abs(plain) > 20).mean(0).max() < 0.06
    assert (np.abs(wide[:, 0]) > 20).mean() > 0.15 and (np.abs(wide[:, 1]) > 20).mean() > 0.12
    assert np.abs(wide).max() <= 45.0 + 1e-9


def test_processor_refuses_a_bad_appearance_in_one_sentence(tmp_path, capsys):
    import processor

    assert processor.main(["--synthesize=300W_LP", f"-o={tmp_path / 'x'}", "--count=1", "--appearance=hats"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("processor.py: unknown appearance switch 'hats'") and "\n" not in err
    assert not any((tmp_path / "x").glob("*.jpg")) if (tmp_path / "x").exists() else True
    assert processor.main([f"-i={tmp_path}", f"-o={tmp_path / 'y'}", "--appearance=full"]) == 2
    assert "--appearance applies to --synthesize only" in capsys.readouterr().err
