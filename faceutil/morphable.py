"""Morphable face model: the BFM-layout tables (mean, shape/expression/texture bases, topology, UV, landmarks).

Owns the in-memory model and turning coefficients into vertices; reading/writing face3d's files lives here too.

Files (face3d ``examples/Data/BFM/Out``): ``BFM.mat`` holds one MATLAB struct ``model`` with shapeMU (3n,1)
xyz-interleaved, shapePC (3n,K), shapeEV (K,1), expMU (3n,1), expPC (3n,E), expEV (E,1), texMU (3n,1), texPC (3n,T),
texEV (T,1), tri (3,m) and tri_mouth (3,k) 1-based vertex ids, kpt_ind (1,68) 1-based vertex ids; ``BFM_UV.mat``
holds ``UV`` (n,2) in [0,1]. :func:`generate_bfm` builds both from the raw Basel and 3DDFA downloads, like face3d's
MATLAB ``generate.m``.

Mean face = shapeMU + expMU (face3d's ``load_BFM`` folds expMU into shapeMU when it loads the file, so its
``generate_vertices``, which reads shapeMU only, uses this sum too). Checked on the genuine 3DDFA tables: its 68-point
mean ``u_base`` equals (u_shp + u_exp)[keypoints] to 5e-7, and rebuilding the AFLW2000-3D landmarks without u_exp
lands 9.7 px too high (NME 5.5 % instead of 0.78 %; tests/test_morphable.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceutil.errors import FaceUtilError
from faceutil.sampleio import atomic_save_mat

@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear 3D morphable model in face3d's BFM layout, with 0-based indices.

    Attributes (n vertices, K shape / E expression / T texture components, m triangles):
        mean: (n, 3) float32, model units (BFM: micrometres, +y up, +z towards the camera); shapeMU + expMU.
        shape_pc: (3n, K) float32, xyz-interleaved rows (row 3i+c is coordinate c of vertex i).
        shape_ev: (K,) float32, standard deviations of the shape coefficients.
        exp_pc: (3n, E) float32; exp_ev: (E,) float32.
        tex_mu: (3n,) float32, mean albedo in [0, 255] (face3d); tex_pc: (3n, T); tex_ev: (T,).
        triangles: (m, 3) int32 vertex ids; mouth_triangles: (k, 3) int32.
        kpt_ind: (68,) int64 vertex ids of the 68 landmarks (iBUG order).
        uv: (n, 2) float64 texture coordinates in [0, 1].
    """

    mean: np.ndarray
    shape_pc: np.ndarray
    shape_ev: np.ndarray
    exp_pc: np.ndarray
    exp_ev: np.ndarray
    tex_mu: np.ndarray
    tex_pc: np.ndarray
    tex_ev: np.ndarray
    triangles: np.ndarray
    mouth_triangles: np.ndarray
    kpt_ind: np.ndarray
    uv: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_pc.shape[1])

    @property
    def n_exp(self) -> int:
        return int(self.exp_pc.shape[1])

    def vertices(self, shape_para=None, exp_para=None) -> np.ndarray:
        """Vertices for the given coefficients. Returns (n, 3) float32, model units."""
        batch = [None if p is None else np.asarray(p).reshape(1, -1) for p in (shape_para, exp_para)]
        return self.vertices_batch(*batch)[0]

    def vertices_batch(self, shape_paras=None, exp_paras=None) -> np.ndarray:
        """Vertices of B faces with one matrix product per basis.

        Args:
            shape_paras: (B, K') coefficients (K' <= K leading PCs) or None; exp_paras: (B, E') or None.
        Returns:
            (B, n, 3) float32, model units. B comes from whichever argument is given (1 when both are None).
        """
        batch = [np.asarray(p).reshape(np.asarray(p).shape[0], -1) for p in (shape_paras, exp_paras) if p is not None]
        b = batch[0].shape[0] if batch else 1
        if any(p.shape[0] != b for p in batch):
            raise ValueError("shape_paras and exp_paras must have the same batch size")
        offs = np.zeros((3 * self.n_vertices, b), dtype=np.float32)
        for pc, para in ((self.shape_pc, shape_paras), (self.exp_pc, exp_paras)):
            if para is None:
                continue
            p = np.asarray(para, dtype=np.float32).reshape(b, -1)
            if p.shape[1] > pc.shape[1]:
                raise ValueError(f"{p.shape[1]} coefficients given for a basis of {pc.shape[1]} components")
            # float32 product: offsets are ~1e4 model units, float32 rounding (~1e-3) is far below a pixel.
            offs += pc[:, : p.shape[1]] @ p.T
        out = offs.T.reshape(b, self.n_vertices, 3)
        out += self.mean[None].astype(np.float32)
        return out

    def landmarks(self, shape_para=None, exp_para=None) -> np.ndarray:
        """The 68 landmark vertices only (cheap: touches 204 basis rows). Returns (68, 3) float32, model units."""
        rows = (3 * self.kpt_ind[:, None] + np.arange(3)[None, :]).reshape(-1)
        offs = np.zeros(rows.size, dtype=np.float32)
        for pc, para in ((self.shape_pc, shape_para), (self.exp_pc, exp_para)):
            if para is not None:
                p = np.asarray(para, dtype=np.float32).reshape(-1)
                if p.size > pc.shape[1]:
                    raise ValueError(f"{p.size} coefficients given for a basis of {pc.shape[1]} components")
                offs += pc[rows, : p.size] @ p
        return self.mean[self.kpt_ind].astype(np.float32) + offs.reshape(-1, 3)

    def texture(self, tex_para=None) -> np.ndarray:
        """Per-vertex albedo. Returns (n, 3) float32 in [0, 1]."""
        tex = self.tex_mu.astype(np.float64)
        if tex_para is not None:
            p = np.asarray(tex_para, dtype=np.float64).reshape(-1)
            tex = tex + self.tex_pc[:, : p.size].astype(np.float64) @ p
        return np.clip(tex.reshape(-1, 3) / 255.0, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# face3d file layout
# ---------------------------------------------------------------------------------------------------------------------

BFM_FILE = "BFM.mat"
UV_FILE = "BFM_UV.mat"

# face3d's generate.m corrections, as 1-based vertex ids of the trimmed 53,215-vertex BFM (facts read from generate.m):
# three vertices whose STN UV coordinates are wrong get the mean UV of their neighbours ...
_UV_FIXES = ((10032, (10033, 10158)), (10155, (10534, 10157, 10661)), (10280, (10916, 10286)))
# ... and seven inner-mouth triangles are appended to 3DDFA's tri_mouth. (generate.m also means to drop column 38
# of tri_mouth, but it passes the vertex list above to setdiff instead, so nothing is dropped; we write what it writes.)
_EXTRA_MOUTH_TRIANGLES = np.array(
    [[6420, 6542, 6664], [6420, 6294, 6167], [6167, 6297, 6420], [6167, 6297, 6296],
     [6167, 6296, 6295], [6167, 6295, 6039], [6168, 6295, 6039]], dtype=np.int64)


def _read_mat(path, what: str) -> dict:
    """scipy.io.loadmat with one-sentence FaceUtilErrors for the things a user gets wrong."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FaceUtilError(f"the {what} file {path} does not exist")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise FaceUtilError(f"{path} is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7') in MATLAB") from None
    except Exception as err:  # scipy raises ValueError/TypeError/OSError/... for corrupt or foreign files
        raise FaceUtilError(f"{path} is not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None


def _struct_fields(data: dict, key: str) -> dict:
    """Fields of the MATLAB struct ``data[key]`` as a dict (or the top-level variables when there is no struct)."""
    if key not in data:
        return {k: v for k, v in data.items() if not k.startswith("__")}
    rec = data[key]
    if rec.dtype.names is None or rec.size != 1:
        return {}
    rec = rec.reshape(-1)[0]
    return {name: rec[name] for name in rec.dtype.names}


def _field(fields: dict, name: str, path) -> np.ndarray:
    if name not in fields:
        raise FaceUtilError(f"{path} has no '{name}' (expected face3d's BFM layout)")
    arr = np.asarray(fields[name])
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise FaceUtilError(f"{path}: '{name}' is not a numeric array")
    return arr


def _index_table(arr: np.ndarray, name: str, path, n: int, width: int | None = None) -> np.ndarray:
    """1-based index array from a file -> 0-based int64, checked to be integral and within [1, n]."""
    a = np.asarray(arr)
    if a.size and not np.all(np.isfinite(a.astype(np.float64))):
        raise FaceUtilError(f"{path}: '{name}' contains NaN or inf")
    ai = a.astype(np.int64)
    if a.size and np.any(ai != a):
        raise FaceUtilError(f"{path}: '{name}' holds non-integer vertex ids")
    if a.size and (ai.min() < 1 or ai.max() > n):
        raise FaceUtilError(f"{path}: '{name}' has vertex ids outside 1..{n} (the file must use 1-based ids)")
    if width is not None:
        if ai.ndim != 2 or 3 not in ai.shape:
            raise FaceUtilError(f"{path}: '{name}' has shape {a.shape}, expected (3, m)")
        ai = ai if ai.shape[0] == 3 else ai.T  # face3d writes (3, m); accept (m, 3) too
        return np.ascontiguousarray(ai.T) - 1
    return ai.reshape(-1) - 1


def _column(arr: np.ndarray, name: str, path, size: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise FaceUtilError(f"{path}: '{name}' has shape {a.shape}, expected a column vector")
    a = a.reshape(-1)
    if size is not None and a.size != size:
        raise FaceUtilError(f"{path}: '{name}' has {a.size} entries, expected {size}")
    if not np.all(np.isfinite(a)):
        raise FaceUtilError(f"{path}: '{name}' contains NaN or inf")
    return a


def _basis(arr: np.ndarray, name: str, path, rows: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[0] != rows:
        raise FaceUtilError(f"{path}: '{name}' has shape {a.shape}, expected ({rows}, components)")
    return np.ascontiguousarray(a, dtype=np.float32)


def load_bfm(bfm_mat_path, uv_mat_path) -> MorphableModel:
    """Read face3d's ``BFM.mat`` + ``BFM_UV.mat`` into a :class:`MorphableModel` (0-based indices, float32 bases).

    Args:
        bfm_mat_path: struct ``model`` with shapeMU/PC/EV, expMU/PC/EV, texMU/PC/EV, tri, tri_mouth, kpt_ind.
        uv_mat_path: ``UV`` (n, 2) texture coordinates in [0, 1].
    Raises:
        FaceUtilError: a file is missing, unreadable, or does not hold that layout (the message names the file).
    """
    fields = _struct_fields(_read_mat(bfm_mat_path, "morphable model"), "model")
    path = bfm_mat_path
    shape_mu = _column(_field(fields, "shapeMU", path), "shapeMU", path)
    if shape_mu.size == 0 or shape_mu.size % 3:
        raise FaceUtilError(f"{path}: 'shapeMU' has {shape_mu.size} entries, not a positive multiple of 3")
    n3 = shape_mu.size
    n = n3 // 3
    exp_mu = _column(_field(fields, "expMU", path), "expMU", path, n3)
    shape_pc = _basis(_field(fields, "shapePC", path), "shapePC", path, n3)
    exp_pc = _basis(_field(fields, "expPC", path), "expPC", path, n3)
    tex_pc = _basis(_field(fields, "texPC", path), "texPC", path, n3)
    model = MorphableModel(
        mean=(shape_mu.astype(np.float64) + exp_mu.astype(np.float64)).astype(np.float32).reshape(n, 3),
        shape_pc=shape_pc,
        shape_ev=_column(_field(fields, "shapeEV", path), "shapeEV", path, shape_pc.shape[1]).astype(np.float32),
        exp_pc=exp_pc,
        exp_ev=_column(_field(fields, "expEV", path), "expEV", path, exp_pc.shape[1]).astype(np.float32),
        tex_mu=_column(_field(fields, "texMU", path), "texMU", path, n3).astype(np.float32),
        tex_pc=tex_pc,
        tex_ev=_column(_field(fields, "texEV", path), "texEV", path, tex_pc.shape[1]).astype(np.float32),
        triangles=_index_table(_field(fields, "tri", path), "tri", path, n, 3).astype(np.int32),
        mouth_triangles=_index_table(_field(fields, "tri_mouth", path), "tri_mouth", path, n, 3).astype(np.int32),
        kpt_ind=_index_table(_field(fields, "kpt_ind", path), "kpt_ind", path, n),
        uv=_read_uv(uv_mat_path, n),
    )
    if model.kpt_ind.size != 68:
        raise FaceUtilError(f"{path}: 'kpt_ind' has {model.kpt_ind.size} entries, expected 68")
    if not (np.isfinite(shape_pc).all() and np.isfinite(exp_pc).all() and np.isfinite(tex_pc).all()):
        raise FaceUtilError(f"{path}: a shape, expression or texture basis contains NaN or inf")
    return model


def _read_uv(uv_mat_path, n: int) -> np.ndarray:
    data = _read_mat(uv_mat_path, "UV coordinates")
    if "UV" not in data:
        raise FaceUtilError(f"{uv_mat_path} has no 'UV' variable (expected (n, 2) texture coordinates)")
    uv = np.asarray(data["UV"])
    if uv.ndim != 2 or uv.shape != (n, 2) or not np.issubdtype(uv.dtype, np.number):
        raise FaceUtilError(f"{uv_mat_path}: 'UV' has shape {uv.shape}, expected ({n}, 2) for this model")
    if not np.all(np.isfinite(uv)):
        raise FaceUtilError(f"{uv_mat_path}: 'UV' contains NaN or inf")
    return np.ascontiguousarray(uv, dtype=np.float64)


def _model_struct(model: MorphableModel) -> dict:
    """The face3d ``model`` struct of a MorphableModel (expMU written as zeros: the model stores the summed mean)."""
    n3 = 3 * model.n_vertices
    col = lambda a: np.asarray(a, dtype=np.float32).reshape(-1, 1)  # noqa: E731
    return {
        "shapeMU": col(model.mean),
        "shapePC": np.asarray(model.shape_pc, dtype=np.float32),
        "shapeEV": col(model.shape_ev),
        "texMU": col(model.tex_mu),
        "texPC": np.asarray(model.tex_pc, dtype=np.float32),
        "texEV": col(model.tex_ev),
        "tri": (np.asarray(model.triangles, dtype=np.int32) + 1).T,
        "kpt_ind": (np.asarray(model.kpt_ind, dtype=np.int32) + 1).reshape(1, -1),
        "expMU": np.zeros((n3, 1), dtype=np.float32),
        "expPC": np.asarray(model.exp_pc, dtype=np.float32),
        "expEV": col(model.exp_ev),
        "tri_mouth": (np.asarray(model.mouth_triangles, dtype=np.int32) + 1).reshape(-1, 3).T,
    }


def _write_bfm_files(out_dir, struct: dict, uv: np.ndarray) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_mat(out / BFM_FILE, {"model": struct}, do_compression=False, oned_as="column")
        atomic_save_mat(out / UV_FILE, {"UV": np.asarray(uv, dtype=np.float64)}, do_compression=False)
    except OSError as err:
        raise FaceUtilError(f"cannot write the morphable model to {out} ({err.strerror or err})") from None
    return out


def save_bfm(model: MorphableModel, out_dir) -> Path:
    """Write ``out_dir/BFM.mat`` and ``out_dir/BFM_UV.mat`` in face3d's layout (1-based ids; each file atomic).

    ``load_bfm`` of the result gives back an identical model. shapeMU holds the model's (summed) mean and expMU is
    zero, so readers that add the two (face3d, ours) see the same mean face. Returns the folder.
    """
    return _write_bfm_files(out_dir, _model_struct(model), model.uv)


# ---------------------------------------------------------------------------------------------------------------------
# generate.m replacement
# ---------------------------------------------------------------------------------------------------------------------

def generate_bfm(raw_bfm_path, model_info_path, expression_path, tri_mouth_path, uv_path, out_dir,
                 *, face3d_fixes: bool = True) -> Path:
    """Build face3d's ``Out/BFM.mat`` + ``Out/BFM_UV.mat`` from the original downloads (Python ``generate.m``).

    Inputs (face3d ``examples/Data/BFM`` names; all vertex ids in the files are 1-based):
        raw_bfm_path: ``raw/01_MorphableModel.mat`` (Basel): shapeMU (3N,1), shapePC (3N,199), shapeEV, texMU,
            texPC, texEV over the full N = 53,490-vertex mesh (its own triangle list ``tl`` is not used).
        model_info_path: 3DDFA ``3ddfa/model_info.mat``: trimIndex (n,1) raw vertex ids kept (n = 53,215; the
            neck/ears trimmed), tri (3,m) over the trimmed vertices, keypoints (1,68) trimmed vertex ids.
        expression_path: 3DDFA ``3ddfa/Model_Expression.mat``: mu_exp (3n,1), w_exp (3n,29), sigma_exp (29,1),
            already over the trimmed vertices (no remapping).
        tri_mouth_path: 3DDFA ``3ddfa/Model_tri_mouth.mat``: tri_mouth (3,k).
        uv_path: ``stn/BFM_UV.mat`` (3DMMasSTN): UV (N,2) over the raw vertices (a file already trimmed to (n,2) is
            accepted as is).
        out_dir: folder that receives BFM.mat and BFM_UV.mat (written atomically).
        face3d_fixes: apply generate.m's corrections for the real BFM (three UV coordinates replaced by the mean of
            their neighbours, seven inner-mouth triangles appended); needs n >= 10,916.
    What it does: the shape and texture means and bases keep the rows 3*(trimIndex-1) + {0,1,2} (xyz-interleaved);
    the EVs are copied; tri and kpt_ind come from model_info; the expression model is copied; arrays keep the dtype
    they had in the inputs.
    Returns the output folder. Raises FaceUtilError naming the input at fault.
    """
    raw = _read_mat(raw_bfm_path, "raw Basel model (01_MorphableModel.mat)")
    info = _read_mat(model_info_path, "3DDFA model_info")
    expr = _read_mat(expression_path, "3DDFA Model_Expression")
    mouth = _read_mat(tri_mouth_path, "3DDFA Model_tri_mouth")
    uv_data = _read_mat(uv_path, "STN BFM_UV")

    raw_mu = _column(_field(raw, "shapeMU", raw_bfm_path), "shapeMU", raw_bfm_path)
    if raw_mu.size == 0 or raw_mu.size % 3:
        raise FaceUtilError(f"{raw_bfm_path}: 'shapeMU' has {raw_mu.size} entries, not a positive multiple of 3")
    n_raw = raw_mu.size // 3
    trim = _index_table(_field(info, "trimIndex", model_info_path), "trimIndex", model_info_path, n_raw)
    n = trim.size
    rows = (3 * trim[:, None] + np.arange(3)[None, :]).reshape(-1)  # xyz-interleaved rows of the kept vertices

    def take_rows(name: str) -> np.ndarray:
        a = _field(raw, name, raw_bfm_path)
        if a.ndim != 2 or a.shape[0] != 3 * n_raw:
            raise FaceUtilError(f"{raw_bfm_path}: '{name}' has shape {a.shape}, expected ({3 * n_raw}, ...)")
        return np.ascontiguousarray(a[rows])

    def ev(data: dict, name: str, path, count: int) -> np.ndarray:
        return _column(_field(data, name, path), name, path, count).reshape(-1, 1)

    struct = {}
    struct["shapeMU"] = take_rows("shapeMU")
    struct["shapePC"] = take_rows("shapePC")
    struct["shapeEV"] = ev(raw, "shapeEV", raw_bfm_path, struct["shapePC"].shape[1])
    struct["texMU"] = take_rows("texMU")
    struct["texPC"] = take_rows("texPC")
    struct["texEV"] = ev(raw, "texEV", raw_bfm_path, struct["texPC"].shape[1])
    tri = _field(info, "tri", model_info_path)
    _index_table(tri, "tri", model_info_path, n, 3)  # validation only: written as in the input
    struct["tri"] = tri if tri.shape[0] == 3 else tri.T
    kpt = _field(info, "keypoints", model_info_path)
    if _index_table(kpt, "keypoints", model_info_path, n).size != 68:
        raise FaceUtilError(f"{model_info_path}: 'keypoints' must hold 68 vertex ids")
    struct["kpt_ind"] = kpt.reshape(1, -1)
    exp_mu = _column(_field(expr, "mu_exp", expression_path), "mu_exp", expression_path, 3 * n)
    struct["expMU"] = exp_mu.reshape(-1, 1)
    w_exp = _field(expr, "w_exp", expression_path)
    if w_exp.ndim != 2 or w_exp.shape[0] != 3 * n:
        raise FaceUtilError(f"{expression_path}: 'w_exp' has shape {w_exp.shape}, expected ({3 * n}, components) "
                            f"for the {n} trimmed vertices")
    struct["expPC"] = w_exp
    struct["expEV"] = ev(expr, "sigma_exp", expression_path, w_exp.shape[1])

    tri_mouth = _field(mouth, "tri_mouth", tri_mouth_path)
    _index_table(tri_mouth, "tri_mouth", tri_mouth_path, n, 3)
    tri_mouth = tri_mouth if tri_mouth.shape[0] == 3 else tri_mouth.T

    if "UV" not in uv_data:
        raise FaceUtilError(f"{uv_path} has no 'UV' variable")
    uv_all = np.asarray(uv_data["UV"], dtype=np.float64)
    if uv_all.ndim != 2 or uv_all.shape[1] != 2 or uv_all.shape[0] not in (n_raw, n):
        raise FaceUtilError(f"{uv_path}: 'UV' has shape {uv_all.shape}, expected ({n_raw}, 2) or ({n}, 2)")
    uv = uv_all[trim] if uv_all.shape[0] == n_raw else uv_all.copy()

    if face3d_fixes:
        need = max(max(b, *r) for b, r in _UV_FIXES)
        if n < need:
            raise FaceUtilError(f"{model_info_path}: only {n} trimmed vertices, face3d's fixes need the real BFM "
                                f"(>= {need}); pass face3d_fixes=False for other models")
        for bad, around in _UV_FIXES:
            uv[bad - 1] = uv[np.asarray(around) - 1].mean(axis=0)
        tri_mouth = np.concatenate([tri_mouth, _EXTRA_MOUTH_TRIANGLES.T.astype(tri_mouth.dtype)], axis=1)
    struct["tri_mouth"] = tri_mouth
    return _write_bfm_files(out_dir, struct, uv)


def generate_bfm_from_folder(bfm_dir, out_dir=None, *, face3d_fixes: bool = True) -> Path:
    """:func:`generate_bfm` on face3d's ``examples/Data/BFM`` layout: raw/, 3ddfa/, stn/ -> ``out_dir`` (default
    ``bfm_dir/Out``)."""
    d = Path(bfm_dir)
    return generate_bfm(d / "raw" / "01_MorphableModel.mat", d / "3ddfa" / "model_info.mat",
                        d / "3ddfa" / "Model_Expression.mat", d / "3ddfa" / "Model_tri_mouth.mat",
                        d / "stn" / "BFM_UV.mat", d / "Out" if out_dir is None else out_dir,
                        face3d_fixes=face3d_fixes)
