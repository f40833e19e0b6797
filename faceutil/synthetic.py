"""Synthetic data: 300W-LP / AFLW2000-3D-style samples (image + .mat in the genuine format) drawn from a morphable
model (by default the procedural one, faceutil.synthetic_model), with known truth for tests and benchmarks.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from faceutil.appearance import PLAIN, Appearance, wide_pitch_roll
from faceutil.errors import FaceUtilError
from faceutil.morphable import MorphableModel
from faceutil.synthetic_model import EYE_CLOSE_MODES, JAW_OPEN, build_synthetic_model, smoothstep

KINDS = ("300W_LP", "AFLW2000")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise FaceUtilError(f"unknown synthetic dataset kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def _draw_yaw(rng, kind):
    if kind == "AFLW2000":
        # AFLW2000-3D: 1312 / 383 / 305 of 2000 images with |yaw| <= 30, 30..60, > 60 degrees
        lo, hi = [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)][rng.choice(3, p=[0.656, 0.1915, 0.1525])]
        return math.radians(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)
    # 300W-LP: the near-frontal 300-W faces plus their profiled copies rotated out to +-90 degrees
    if rng.random() < 0.3:
        return math.radians(float(np.clip(rng.normal(0.0, 12.0), -90.0, 90.0)))
    return math.radians(rng.uniform(-90.0, 90.0))


def draw_params(rng: np.random.Generator, model: MorphableModel, kind: str = "300W_LP", image_size: int = 450,
                appearance: Appearance = PLAIN):
    """Draw one sample's parameters like the genuine 300W-LP / AFLW2000-3D annotations.

    Pose: yaw up to +-90 degrees (300W-LP: 30 % near-frontal N(0, 12 deg), else uniform; AFLW2000: its |yaw| bins
    65.6 / 19.2 / 15.3 %), pitch N(0, 10 deg) and roll N(0, 8 deg) clipped to +-30 deg, scale U(1.0e-3, 1.6e-3)
    (face ~150-230 px wide on 450 px), tz U(-100, -20); tx, ty put the 68 landmarks' box where the genuine crops
    have it (centre x ~ (0.505 + 0.1 sin yaw) W, row ~ 0.618 H, a few px of jitter, >= 8 px inside the image),
    so tx ~ 110-340 and ty ~ 120-270 px as in the genuine files.
    Shape_Para ~ N(0, shape_ev) (entries ~1e5); Exp_Para ~ N(0, exp_ev) clipped to +-3.5, with the jaw-open
    coefficient made non-negative and eye closing >= -1 (no lips through lips, no staring eyes).
    With the appearance switch "pose", pitch and roll are drawn wider (faceutil.appearance.wide_pitch_roll).

    Args:
        rng: numpy Generator; model: the MorphableModel; kind: "300W_LP" or "AFLW2000"; image_size: pixels;
        appearance: faceutil.appearance.Appearance (only its "pose" switch acts here).
    Returns:
        pose_para (7,) float64 [pitch, yaw, roll, tx, ty, tz, s]; shape_para (K,) float64; exp_para (E,) float64.
    """
    from faceutil.pose import project

    _check_kind(kind)
    yaw = _draw_yaw(rng, kind)
    pitch_sd = 10.0 if kind == "300W_LP" else 12.0
    pitch = math.radians(float(np.clip(rng.normal(0.0, pitch_sd), -30.0, 30.0)))
    roll = math.radians(float(np.clip(rng.normal(0.0, 8.0), -30.0, 30.0)))
    if "pose" in appearance:
        pitch, roll = wide_pitch_roll(rng)
    scale = rng.uniform(1.0e-3, 1.6e-3)
    tz = rng.uniform(-100.0, -20.0)
    shape_para = rng.standard_normal(model.n_shape) * model.shape_ev.astype(np.float64)
    exp_para = np.clip(rng.standard_normal(model.n_exp) * model.exp_ev.astype(np.float64), -3.5, 3.5)
    if model.n_exp > JAW_OPEN:  # half the faces keep the mouth (nearly) closed
        exp_para[JAW_OPEN] = abs(exp_para[JAW_OPEN]) * (1.0 if rng.random() < 0.5 else 0.15)
    for k in EYE_CLOSE_MODES:
        if k < model.n_exp:
            exp_para[k] = max(exp_para[k], -1.0)
    # place the landmark box where the genuine crops have it (32 files in ../shared/data): its centre sits at
    # x ~ W (0.505 + 0.1 sin yaw) (the crop is centred on the head, not on the face), row ~ 0.618 H; then
    # keep every landmark >= 8 px inside the image
    pose = np.array([pitch, yaw, roll, 0.0, 0.0, tz, scale])
    pts = project(model.landmarks(shape_para, exp_para), pose, image_size)[:, :2].astype(np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = image_size * np.array([0.505 + 0.1 * math.sin(yaw) + rng.normal(0.0, 0.02),
                                    0.618 + rng.normal(0.0, 0.015)])
    margin = 8.0
    half = (hi - lo) / 2.0
    centre = np.clip(centre, margin + half, np.maximum(image_size - 1.0 - margin - half, margin + half))
    offset = centre - (lo + hi) / 2.0  # in image x / row
    pose[3] = offset[0]
    pose[4] = -offset[1]  # row = H + 1 - world_y: a row shift of +d needs ty -= d
    return pose, shape_para, exp_para


def _smooth_background(rng, size):
    """(size, size, 3) float in [0, 1]: a random colour gradient plus smooth blotches."""
    k = int(rng.integers(3, 7))
    ctrl = rng.uniform(0.05, 0.95, size=(k, k, 3))
    ctrl = 0.35 * ctrl + 0.65 * rng.uniform(0.1, 0.9, size=(1, 1, 3))
    ctrl = 0.6 * ctrl + 0.4 * ctrl.mean(axis=2, keepdims=True)  # tone the colours down
    pos = np.linspace(0.0, k - 1.0, size)
    i0 = np.minimum(np.floor(pos).astype(int), k - 2)
    f = smoothstep(pos - i0)
    rows = ctrl[i0] * (1 - f)[:, None, None] + ctrl[i0 + 1] * f[:, None, None]  # (size, k, 3)
    img = rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]
    return np.clip(img, 0.0, 1.0)


def render_sample(model: MorphableModel, pose_para, shape_para, exp_para, rng: np.random.Generator,
                  image_size: int = 450, appearance: Appearance = PLAIN):
    """Render a shaded, textured face over a random background, as a 300W-LP / AFLW2000-3D-like photo.

    The albedo gets a random texture coefficient draw (N(0, tex_ev)), the light a random direction (from the
    camera side, tilted up to ~40 degrees), ambient U(0.25, 0.5) and exposure; the background is a smooth random
    colour field; mild pixel noise is added. The switches of `appearance` (faceutil.appearance) add clutter, a
    body, hair, skin tones and detail, wider lighting, occluders and camera effects; with none (PLAIN) the image
    is the plain renderer's, byte for byte.

    Args:
        model: MorphableModel; pose_para (7,); shape_para (K,); exp_para (E,); rng: numpy Generator.
        image_size: H = W in pixels; appearance: faceutil.appearance.Appearance.
    Returns:
        image: (H, W, 3) uint8 RGB.
        landmarks: (68, 3) float32 image coordinates (x column, y row, z depth) of the model's 68 landmarks.
    """
    from faceutil import appearance as look
    from faceutil.pose import project
    from faceutil.render import render_shaded

    size = int(image_size)
    model_verts = model.vertices(shape_para, exp_para)
    verts = project(model_verts, pose_para, size)
    tex_para = rng.standard_normal(model.tex_pc.shape[1]) * model.tex_ev.astype(np.float64)
    colours = model.texture(tex_para).astype(np.float64)
    exposure = rng.uniform(0.72, 0.9)
    tint = 1.0 + rng.uniform(-0.04, 0.04, size=3)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.3), 1.0])  # image coords: -y = from above
    ambient = rng.uniform(0.25, 0.5)
    background = _smooth_background(rng, size)
    albedo = np.clip(colours * exposure * tint, 0.0, 1.0)
    triangles, shading = model.triangles, {}
    model_lms = model.landmarks(shape_para, exp_para)
    if "background" in appearance:
        background = look.clutter(rng, background)
    if "body" in appearance:
        background = look.draw_body(rng, background, model_lms, pose_para)
    if "skin" in appearance:
        albedo = look.skin_albedo(rng, albedo)
    if "lighting" in appearance:
        lit = look.lighting(rng)
        light, ambient = lit["light"], lit["ambient"]
        albedo = np.clip(albedo * lit["gain"][None, :], 0.0, 1.0)
        shading = {"specular": lit["specular"], "shininess": lit["shininess"]}
    if "hair" in appearance:
        hair_v, hair_t, hair_c, hair_colour = look.hair_mesh(rng, model_lms, model_verts)
        gain = lit["gain"] if "lighting" in appearance else np.ones(3)
        albedo = look.painted_hair(albedo, model.tex_mu, np.clip(hair_colour * gain, 0.0, 1.0))
        verts = np.concatenate([verts, project(hair_v, pose_para, size)])
        triangles = np.concatenate([triangles, hair_t + model.n_vertices])
        albedo = np.concatenate([albedo, np.clip(hair_c * gain[None, :], 0.0, 1.0)])
    img, tri_id = render_shaded(verts, triangles, albedo, size, size, light_dir=light, ambient=ambient,
                                background=background, return_ids=True, **shading)
    landmarks = project(model_lms, pose_para, size)
    if "skin" in appearance:
        img = look.skin_detail(rng, img, (tri_id >= 0) & (tri_id < len(model.triangles)))
    if "occluders" in appearance:
        img = look.occlude(rng, img, landmarks)
    if "camera" in appearance:
        return look.camera(rng, img), landmarks
    img = img + rng.normal(0.0, 1.5 / 255.0, size=img.shape)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, landmarks


APPEARANCE_FILE = "appearance.txt"


def _stamp_appearance(folder: Path, appearance: Appearance) -> None:
    """Refuse to add samples of one appearance to a folder holding another's; record a non-plain one in the folder
    (a folder of samples without the file holds plain ones)."""
    from faceutil.sampleio import atomic_write_bytes

    stamp = folder / APPEARANCE_FILE
    held = stamp.read_text().strip() if stamp.is_file() else ("plain" if any(folder.glob("*.mat")) else None)
    if held is not None and held != appearance.name:
        raise FaceUtilError(f"{folder} holds synthetic samples made with appearance {held!r}, not "
                            f"{appearance.name!r}; synthesise into another folder")
    if appearance and held is None:
        atomic_write_bytes(stamp, (appearance.name + "\n").encode("utf-8"))


def synthesize_dataset(out_dir, kind: str, count: int, seed: int, model: MorphableModel | None = None,
                       image_size: int = 450, appearance: Appearance = PLAIN) -> list[str]:
    """Write `count` synthetic samples as `<name>.jpg` + `<name>.mat` in the genuine dataset format.

    Names are synth_000001, synth_000002, ...; sample i draws from a Generator seeded by (seed, i), so the same
    seed gives identical images and parameters and any subset can be regenerated alone. The .mat holds Pose_Para
    (1, 7), Shape_Para (K, 1), Exp_Para (E, 1), roi (1, 4) int16 (landmark box enlarged 1.2x), plus pt2d (2, 68)
    image pixels for "300W_LP" or pt3d_68 (3, 68) image pixels (x, y, z) for "AFLW2000". Files are written
    atomically by faceutil.sampleio (whose .mat header carries no creation time), so reruns are byte-identical.

    Args:
        out_dir: folder (created if missing); kind: "300W_LP" or "AFLW2000"; count >= 0; seed: int;
        model: the MorphableModel (None = build_synthetic_model(0)); image_size: pixels (genuine: 450);
        appearance: the renderer's randomisations (faceutil.appearance; PLAIN: none).
    Returns:
        list of the sample names written, in order.
    """
    from faceutil.sampleio import atomic_save_mat, atomic_write_image

    _check_kind(kind)
    if count < 0:
        raise FaceUtilError(f"the number of synthetic samples must be >= 0, got {count}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FaceUtilError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    if model is None:
        model = build_synthetic_model(0)
    _stamp_appearance(out, appearance)
    names = []
    for index in range(1, count + 1):
        name = f"synth_{index:06d}"
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), index]))
        pose, shape_para, exp_para = draw_params(rng, model, kind, image_size, appearance)
        image, lms = render_sample(model, pose, shape_para, exp_para, rng, image_size, appearance)
        lo, hi = lms[:, :2].min(axis=0), lms[:, :2].max(axis=0)
        centre, half = (lo + hi) / 2.0, 0.6 * (hi - lo)
        roi = np.rint(np.concatenate([centre - half, centre + half])).astype(np.int16).reshape(1, 4)
        data = {"Pose_Para": pose.reshape(1, 7), "Shape_Para": shape_para.reshape(-1, 1),
                "Exp_Para": exp_para.reshape(-1, 1), "roi": roi}
        if kind == "300W_LP":
            data["pt2d"] = lms[:, :2].astype(np.float64).T.copy()
        else:
            data["pt3d_68"] = lms.astype(np.float64).T.copy()
        atomic_write_image(out / f"{name}.jpg", image, quality=95)
        atomic_save_mat(out / f"{name}.mat", data)
        names.append(name)
    return names
