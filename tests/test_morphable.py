"""faceutil.morphable: coefficient evaluation, face3d BFM.mat / BFM_UV.mat I/O, load_model, generate.m replacement.

Synthetic tiny models with known contents for the file formats; the genuine BFM-derived tables in ../shared/data for
the conventions (mean = shapeMU + expMU, 1-based ids, landmark and UV indices, generate.m's correction ids).
"""
import os

import numpy as np
import pytest
import scipy.io

from faceutil import facemodel, morphable
from faceutil.errors import FaceUtilError
from faceutil.facemodel import load_model
from faceutil.morphable import MorphableModel, generate_bfm, load_bfm, save_bfm

FIELDS = ("mean", "shape_pc", "shape_ev", "exp_pc", "exp_ev", "tex_mu", "tex_pc", "tex_ev", "triangles",
          "mouth_triangles", "kpt_ind", "uv")


def _tiny_model(rng, n=300, k=6, e=4, t=3) -> MorphableModel:
    return MorphableModel(
        mean=(rng.normal(size=(n, 3)) * 5e4).astype(np.float32),
        shape_pc=rng.normal(size=(3 * n, k)).astype(np.float32),
        shape_ev=rng.uniform(1e3, 1e5, k).astype(np.float32),
        exp_pc=rng.normal(size=(3 * n, e)).astype(np.float32),
        exp_ev=rng.uniform(0.1, 3, e).astype(np.float32),
        tex_mu=rng.uniform(0, 255, 3 * n).astype(np.float32),
        tex_pc=rng.normal(size=(3 * n, t)).astype(np.float32),
        tex_ev=rng.uniform(1, 10, t).astype(np.float32),
        triangles=rng.integers(0, n, (2 * n, 3)).astype(np.int32),
        mouth_triangles=rng.integers(0, n, (5, 3)).astype(np.int32),
        kpt_ind=rng.choice(n, 68, replace=False).astype(np.int64),
        uv=rng.uniform(0, 1, (n, 2)),
    )


def _assert_same_model(a: MorphableModel, b: MorphableModel):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        np.testing.assert_array_equal(x, y, err_msg=f)


# ------------------------------------------------------------------------------------------------ evaluation


def test_vertices_landmarks_and_batch_agree():
    rng = np.random.default_rng(0)
    m = _tiny_model(rng)
    shp, exp = rng.normal(size=6) * 1e3, rng.normal(size=4)
    v = m.vertices(shp, exp)
    expected = m.mean.astype(np.float64) + (m.shape_pc.astype(np.float64) @ shp
                                            + m.exp_pc.astype(np.float64) @ exp).reshape(-1, 3)
    assert v.shape == (300, 3) and v.dtype == np.float32
    np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-2)
    np.testing.assert_allclose(m.landmarks(shp, exp), v[m.kpt_ind], rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(m.vertices(), m.mean)
    # a shorter coefficient vector means the leading components
    np.testing.assert_allclose(m.vertices(shp[:2]), m.vertices(np.r_[shp[:2], np.zeros(4)]), atol=1e-2)
    with pytest.raises(ValueError):
        m.vertices(np.zeros(7))
    shps, exps = rng.normal(size=(3, 6)) * 1e3, rng.normal(size=(3, 2))
    batch = m.vertices_batch(shps, exps)
    assert batch.shape == (3, 300, 3) and batch.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(batch[i], m.vertices(shps[i], exps[i]), rtol=1e-5, atol=0.05)


def test_texture_in_unit_range():
    m = _tiny_model(np.random.default_rng(1))
    tex = m.texture(np.full(3, 1e3))
    assert tex.shape == (300, 3) and tex.dtype == np.float32
    assert tex.min() >= 0 and tex.max() <= 1
    np.testing.assert_allclose(m.texture(), m.tex_mu.reshape(-1, 3) / 255, atol=1e-6)


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_is_exact(tmp_path):
    m = _tiny_model(np.random.default_rng(2))
    out = save_bfm(m, tmp_path / "Out")
    assert sorted(os.listdir(out)) == ["BFM.mat", "BFM_UV.mat"]  # no temp files left behind
    _assert_same_model(load_bfm(out / "BFM.mat", out / "BFM_UV.mat"), m)
    _assert_same_model(load_model(str(out)), m)


def test_saved_files_have_face3d_layout(tmp_path):
    m = _tiny_model(np.random.default_rng(3))
    save_bfm(m, tmp_path)
    rec = scipy.io.loadmat(tmp_path / "BFM.mat")["model"][0, 0]
    n3 = 900
    shapes = {"shapeMU": (n3, 1), "shapePC": (n3, 6), "shapeEV": (6, 1), "expMU": (n3, 1), "expPC": (n3, 4),
              "expEV": (4, 1), "texMU": (n3, 1), "texPC": (n3, 3), "texEV": (3, 1), "tri": (3, 600),
              "tri_mouth": (3, 5), "kpt_ind": (1, 68)}
    assert set(rec.dtype.names) == set(shapes)
    for name, shape in shapes.items():
        assert rec[name].shape == shape, name
    # xyz-interleaved mean, 1-based ids, mean = shapeMU + expMU
    np.testing.assert_array_equal((rec["shapeMU"] + rec["expMU"]).reshape(-1, 3), m.mean)
    np.testing.assert_array_equal(rec["tri"].T, m.triangles + 1)
    np.testing.assert_array_equal(rec["tri_mouth"].T, m.mouth_triangles + 1)
    np.testing.assert_array_equal(rec["kpt_ind"][0], m.kpt_ind + 1)
    np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / "BFM_UV.mat")["UV"], m.uv)


def test_failed_save_leaves_previous_files_intact(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    first = _tiny_model(rng)
    save_bfm(first, tmp_path)
    before = (tmp_path / "BFM.mat").read_bytes()

    def broken(fh, *args, **kwargs):
        fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scipy.io, "savemat", broken)
    with pytest.raises(FaceUtilError, match="No space left"):
        save_bfm(_tiny_model(rng), tmp_path)
    assert (tmp_path / "BFM.mat").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["BFM.mat", "BFM_UV.mat"]


def _write_struct(path, **fields):
    scipy.io.savemat(path, {"model": fields}, do_compression=False)


def test_load_bfm_reports_bad_files_by_name(tmp_path):
    m = _tiny_model(np.random.default_rng(5))
    save_bfm(m, tmp_path)
    bfm, uv = tmp_path / "BFM.mat", tmp_path / "BFM_UV.mat"
    good = {k: v for k, v in zip(scipy.io.loadmat(bfm)["model"].dtype.names, scipy.io.loadmat(bfm)["model"][0, 0])}

    with pytest.raises(FaceUtilError, match="nowhere.mat does not exist"):
        load_bfm(tmp_path / "nowhere.mat", uv)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(FaceUtilError, match="garbage.mat is not a readable"):
        load_bfm(garbage, uv)

    cases = {
        "no_tri.mat": ({k: v for k, v in good.items() if k != "tri"}, "no 'tri'"),
        "zero_based.mat": ({**good, "tri": good["tri"] - 1}, "1-based"),
        "short_ev.mat": ({**good, "shapeEV": good["shapeEV"][:3]}, "'shapeEV' has 3 entries"),
        "bad_pc.mat": ({**good, "expPC": good["expPC"][:10]}, "'expPC' has shape"),
        "few_kpt.mat": ({**good, "kpt_ind": good["kpt_ind"][:, :5]}, "expected 68"),
        "nan_mu.mat": ({**good, "shapeMU": np.full_like(good["shapeMU"], np.nan)}, "NaN"),
    }
    for name, (fields, message) in cases.items():
        _write_struct(tmp_path / name, **fields)
        with pytest.raises(FaceUtilError, match=message) as err:
            load_bfm(tmp_path / name, uv)
        assert name in str(err.value)

    scipy.io.savemat(tmp_path / "uv_bad.mat", {"UV": m.uv[:10]})
    with pytest.raises(FaceUtilError, match="uv_bad.mat: 'UV' has shape"):
        load_bfm(bfm, tmp_path / "uv_bad.mat")
    scipy.io.savemat(tmp_path / "uv_key.mat", {"uv": m.uv})
    with pytest.raises(FaceUtilError, match="uv_key.mat has no 'UV'"):
        load_bfm(bfm, tmp_path / "uv_key.mat")


def test_load_model_dispatch(tmp_path, monkeypatch):
    tiny = _tiny_model(np.random.default_rng(6))
    seen = []
    monkeypatch.setattr(facemodel, "build_synthetic_model", lambda seed=0: seen.append(seed) or tiny)
    facemodel._synthetic_model.cache_clear()
    try:
        assert load_model() is tiny and load_model("synthetic", seed=3) is tiny
        assert load_model() is tiny and seen == [0, 3]  # built once per seed, then shared
    finally:
        facemodel._synthetic_model.cache_clear()  # do not leak the stand-in to other tests

    save_bfm(tiny, tmp_path / "Out")
    _assert_same_model(load_model(tmp_path / "Out"), tiny)
    _assert_same_model(load_model(str(tmp_path / "Out" / "BFM.mat")), tiny)
    with pytest.raises(FaceUtilError, match="neither 'synthetic' nor a folder"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "Out" / "BFM_UV.mat").unlink()
    with pytest.raises(FaceUtilError, match="BFM_UV.mat is missing"):
        load_model(tmp_path / "Out")


# ------------------------------------------------------------------------------------------------ generate.m


def _raw_inputs(tmp_path, rng, n_raw, n, n_shape=5, n_exp=4, uv_trimmed=False):
    """Small files in the formats of the Basel / 3DDFA / STN downloads; returns their paths and contents."""
    trim = np.sort(rng.choice(n_raw, n, replace=False)) + 1  # 1-based raw vertex ids, (n, 1) in model_info
    raw = {"shapeMU": rng.normal(size=(3 * n_raw, 1)).astype(np.float32) * 5e4,
           "shapePC": rng.normal(size=(3 * n_raw, n_shape)).astype(np.float32),
           "shapeEV": rng.uniform(1e3, 1e5, (n_shape, 1)).astype(np.float32),
           "texMU": rng.uniform(0, 255, (3 * n_raw, 1)).astype(np.float32),
           "texPC": rng.normal(size=(3 * n_raw, n_shape)).astype(np.float32),
           "texEV": rng.uniform(1, 10, (n_shape, 1)).astype(np.float32),
           "tl": rng.integers(1, n_raw + 1, (50, 3)).astype(np.float64)}
    info = {"trimIndex": trim.reshape(-1, 1).astype(np.float64),
            "tri": rng.integers(1, n + 1, (3, 80)).astype(np.float64),
            "keypoints": rng.choice(np.arange(1, n + 1), 68, replace=False).reshape(1, 68).astype(np.float64)}
    expr = {"mu_exp": rng.normal(size=(3 * n, 1)).astype(np.float32) * 1e3,
            "w_exp": rng.normal(size=(3 * n, n_exp)).astype(np.float32),
            "sigma_exp": rng.uniform(0.1, 3, (n_exp, 1)).astype(np.float32)}
    mouth = {"tri_mouth": rng.integers(1, n + 1, (3, 114)).astype(np.float64)}
    uv = {"UV": rng.uniform(0, 1, (n if uv_trimmed else n_raw, 2))}
    paths = {}
    for name, data in (("raw", raw), ("info", info), ("expr", expr), ("mouth", mouth), ("uv", uv)):
        paths[name] = tmp_path / f"{name}.mat"
        scipy.io.savemat(paths[name], data, do_compression=False)
    return paths, raw, info, expr, mouth, uv


def test_generate_bfm_builds_face3d_layout(tmp_path):
    rng = np.random.default_rng(7)
    n_raw, n = 11100, 11000  # >= 10,916 trimmed vertices, so face3d's id-based fixes apply
    paths, raw, info, expr, mouth, uv = _raw_inputs(tmp_path, rng, n_raw, n)
    out = generate_bfm(paths["raw"], paths["info"], paths["expr"], paths["mouth"], paths["uv"], tmp_path / "Out")
    rec = scipy.io.loadmat(out / "BFM.mat")["model"][0, 0]
    keep = info["trimIndex"].ravel().astype(int) - 1
    for name in ("shapeMU", "shapePC", "texMU", "texPC"):  # vertex-wise selection of the interleaved rows
        expected = raw[name].reshape(n_raw, 3, -1)[keep].reshape(3 * n, -1)
        np.testing.assert_array_equal(rec[name], expected, err_msg=name)
        assert rec[name].dtype == raw[name].dtype
    np.testing.assert_array_equal(rec["shapeEV"], raw["shapeEV"])
    np.testing.assert_array_equal(rec["texEV"], raw["texEV"])
    np.testing.assert_array_equal(rec["tri"], info["tri"])
    np.testing.assert_array_equal(rec["kpt_ind"], info["keypoints"])
    np.testing.assert_array_equal(rec["expMU"], expr["mu_exp"])
    np.testing.assert_array_equal(rec["expPC"], expr["w_exp"])
    np.testing.assert_array_equal(rec["expEV"], expr["sigma_exp"])
    extra = np.array([[6420, 6542, 6664], [6420, 6294, 6167], [6167, 6297, 6420], [6167, 6297, 6296],
                      [6167, 6296, 6295], [6167, 6295, 6039], [6168, 6295, 6039]])
    np.testing.assert_array_equal(rec["tri_mouth"], np.concatenate([mouth["tri_mouth"], extra.T], axis=1))
    got_uv = scipy.io.loadmat(out / "BFM_UV.mat")["UV"]
    want_uv = uv["UV"][keep]
    fixes = {10032: [10033, 10158], 10155: [10534, 10157, 10661], 10280: [10916, 10286]}
    for bad, around in fixes.items():
        want_uv[bad - 1] = want_uv[np.array(around) - 1].mean(0)
    np.testing.assert_array_equal(got_uv, want_uv)

    model = load_model(out)
    assert model.n_vertices == n and model.n_shape == 5 and model.n_exp == 4
    np.testing.assert_array_equal(
        model.mean, (expected_mu := raw["shapeMU"].reshape(n_raw, 3)[keep] + expr["mu_exp"].reshape(n, 3)))
    assert expected_mu.dtype == np.float32
    np.testing.assert_array_equal(model.kpt_ind, info["keypoints"].ravel().astype(int) - 1)
    np.testing.assert_array_equal(model.triangles, info["tri"].T.astype(int) - 1)


def test_generate_bfm_without_fixes_and_with_trimmed_uv(tmp_path):
    rng = np.random.default_rng(8)
    paths, raw, info, expr, mouth, uv = _raw_inputs(tmp_path, rng, 120, 100, uv_trimmed=True)
    with pytest.raises(FaceUtilError, match="face3d_fixes=False"):
        generate_bfm(paths["raw"], paths["info"], paths["expr"], paths["mouth"], paths["uv"], tmp_path / "Out")
    out = generate_bfm(paths["raw"], paths["info"], paths["expr"], paths["mouth"], paths["uv"], tmp_path / "Out",
                       face3d_fixes=False)
    np.testing.assert_array_equal(scipy.io.loadmat(out / "BFM_UV.mat")["UV"], uv["UV"])
    model = load_model(out)
    np.testing.assert_array_equal(model.mouth_triangles, mouth["tri_mouth"].T.astype(int) - 1)


def test_generate_bfm_reports_bad_inputs(tmp_path):
    rng = np.random.default_rng(9)
    paths, raw, info, expr, mouth, uv = _raw_inputs(tmp_path, rng, 120, 100)
    args = [paths[k] for k in ("raw", "info", "expr", "mouth", "uv")]
    with pytest.raises(FaceUtilError, match="Model_Expression file .*absent.mat does not exist"):
        generate_bfm(args[0], args[1], tmp_path / "absent.mat", *args[3:], tmp_path / "Out", face3d_fixes=False)
    # an expression basis over the raw (untrimmed) vertex set is a wrong input: 3DDFA's is over the trimmed set
    scipy.io.savemat(paths["expr"], {**expr, "w_exp": rng.normal(size=(360, 4))})
    with pytest.raises(FaceUtilError, match="expr.mat: 'w_exp' has shape"):
        generate_bfm(*args, tmp_path / "Out", face3d_fixes=False)
    scipy.io.savemat(paths["info"], {**info, "trimIndex": info["trimIndex"] + 1000})
    with pytest.raises(FaceUtilError, match="info.mat: 'trimIndex' has vertex ids outside"):
        generate_bfm(*args, tmp_path / "Out", face3d_fixes=False)
    assert not (tmp_path / "Out" / "BFM.mat").exists()


# ------------------------------------------------------------------------------------------------ genuine data


def _genuine_mean(shared_data):
    d = shared_data / "bfm_small" / "3ddfa"
    u_shp = np.load(d / "u_shp.npy").ravel().astype(np.float64)
    u_exp = np.load(d / "u_exp.npy").ravel().astype(np.float64)
    return u_shp, u_exp, np.load(d / "keypoints_sim.npy")


def test_mean_face_is_shape_plus_expression_mean(shared_data):
    """3DDFA's 68-point mean u_base is (u_shp + u_exp)[keypoints]; leaving out u_exp misplaces the AFLW2000-3D
    landmarks (measured NME 5.5 % vs 0.78 %, 9.7 px in y)."""
    u_shp, u_exp, kpt = _genuine_mean(shared_data)
    base = shared_data / "bfm_small" / "3ddfa" / "cpp_weights"
    u_base = np.loadtxt(base / "u_base.txt")
    np.testing.assert_allclose(u_base, (u_shp + u_exp)[kpt], atol=1e-3)  # 5e-7 measured
    assert np.abs(u_base - u_shp[kpt]).max() > 5e3  # u_exp is not small: up to 8.4e3 at the landmarks

    from faceutil.pose import project

    w_shp, w_exp = np.loadtxt(base / "w_shp_base.txt"), np.loadtxt(base / "w_exp_base.txt")
    errors = {"sum": [], "shape_only": []}
    for f in sorted((shared_data / "aflw2000_samples").glob("*.mat"))[:10]:
        m = scipy.io.loadmat(f)
        gt = m["pt3d_68"].T[:, :2].astype(np.float64)
        offs = w_shp @ m["Shape_Para"].ravel()[:40] + w_exp @ m["Exp_Para"].ravel()[:10]
        norm = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
        for key, mu in (("sum", u_base), ("shape_only", u_shp[kpt])):
            pred = project((mu + offs).reshape(68, 3), m["Pose_Para"].ravel(), 450)[:, :2]
            errors[key].append(100 * np.linalg.norm(pred - gt, axis=1).mean() / norm)
    assert np.mean(errors["sum"]) < 1.0
    assert np.mean(errors["shape_only"]) > 4.0


def _genuine_topology_model(shared_data) -> MorphableModel:
    """A MorphableModel with the genuine BFM mean, topology, UV and landmark ids (bases are zero: not shipped)."""
    u_shp, u_exp, kpt = _genuine_mean(shared_data)
    n = u_shp.size // 3
    tri = scipy.io.loadmat(shared_data / "bfm_small" / "3ddfa" / "tri.mat")["tri"]
    uv = scipy.io.loadmat(shared_data / "bfm_small" / "3ddfa_v2" / "BFM_UV.mat")["UV"]
    zeros = lambda *s: np.zeros(s, dtype=np.float32)  # noqa: E731
    return MorphableModel(
        mean=(u_shp + u_exp).astype(np.float32).reshape(n, 3), shape_pc=zeros(3 * n, 1), shape_ev=zeros(1),
        exp_pc=zeros(3 * n, 1), exp_ev=zeros(1), tex_mu=zeros(3 * n), tex_pc=zeros(3 * n, 1), tex_ev=zeros(1),
        triangles=(tri.T.astype(np.int32) - 1), mouth_triangles=np.array([[0, 1, 2]], dtype=np.int32),
        kpt_ind=(kpt[0::3] // 3).astype(np.int64), uv=uv)


def test_genuine_topology_round_trip_and_landmark_ids(shared_data, tmp_path):
    model = _genuine_topology_model(shared_data)
    assert model.n_vertices == 53215 and model.triangles.shape == (105840, 3)
    save_bfm(model, tmp_path)
    loaded = load_model(tmp_path)
    _assert_same_model(loaded, model)
    # kpt_ind as vertex ids: their UV pixels (x = u*255, y = 255 - v*255, rounded) are PRNet's uv_kpt_ind exactly
    uv_kpt = np.loadtxt(shared_data / "uv_data" / "uv_kpt_ind.txt")
    u, v = loaded.uv[loaded.kpt_ind].T
    np.testing.assert_array_equal(np.round(u * 255), uv_kpt[0])
    np.testing.assert_array_equal(np.round(255 - v * 255), uv_kpt[1])
    np.testing.assert_allclose(loaded.landmarks().ravel(), np.loadtxt(
        shared_data / "bfm_small" / "3ddfa" / "cpp_weights" / "u_base.txt"), atol=0.01)


def test_face3d_correction_ids_match_genuine_bfm(shared_data):
    """generate.m's hard-coded ids (1-based, trimmed BFM) agree with the genuine files: the three corrected UV
    coordinates in BFM_UV.mat are exactly their neighbours' mean, and the seven added mouth triangles use vertices
    within 6 mm of the inner-lip landmarks and are not in the face triangle list."""
    model = _genuine_topology_model(shared_data)
    for bad, around in morphable._UV_FIXES:
        np.testing.assert_allclose(model.uv[bad - 1], model.uv[np.array(around) - 1].mean(0), atol=1e-12)
    extra = morphable._EXTRA_MOUTH_TRIANGLES - 1
    inner_lips = model.mean[model.kpt_ind[60:68]]
    dist = np.linalg.norm(model.mean[np.unique(extra)][:, None] - inner_lips[None], axis=2).min(1)
    assert dist.max() < 8000  # micrometres; 5.7 mm measured
    face = {tuple(t) for t in np.sort(model.triangles, axis=1)}
    assert not any(tuple(t) in face for t in np.sort(extra, axis=1))
