"""Domain randomisation for the synthetic renderer (issue 25, item 3): what a photo has that a plain render lacks.

Each switch adds one kind of variation to faceutil.synthetic.render_sample / draw_params, and each can be turned on
alone, so that its effect on transfer to real photos can be measured (the ablation in results/real_transfer.md):

  pose        pitch and roll drawn wider (genuine AFLW2000-3D: 29 % of faces beyond 20 deg of pitch, 16 % of roll;
              the plain draws 4 % and 1 %, benchmarks/results/real_gap.md)
  background  clutter over the smooth colour field: shapes, lines, stripes and noise textures, some out of focus
  body        shoulders and clothing below the neck, behind the head
  hair        a hair shell over the skull (short to shoulder-long, fringe height, volume, colour), rendered with
              the face in one z-buffer so that the face stays in front of it and it covers the head's top
  skin        skin tone from very dark to very light, fine detail (pores, blotches, a few moles) on the face
  lighting    light from any side up to grazing, dark to bright ambient, coloured light, a specular highlight
  occluders   glasses, a hand, or an object over part of the face (the landmarks stay the geometric truth)
  camera      colour and gamma shifts, focus or motion blur, sensor noise, JPEG compression, sometimes grey

`Appearance.parse("plain")` (no switch: the renderer as before, byte for byte), `"full"` (all), a comma list
(`"hair,camera"`), or `"full,-hair"` (all but hair: the ablation's leave-one-out). Every random draw comes from the
sample's own Generator after the plain renderer's draws, so a switched-off effect draws nothing and a sample is the
same whatever other samples exist. Torch-free (numpy + OpenCV).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from faceutil.errors import FaceUtilError

SWITCHES = ("pose", "background", "body", "hair", "skin", "lighting", "occluders", "camera")


@dataclass(frozen=True)
class Appearance:
    """Which randomisations the synthetic renderer applies (a set of SWITCHES names)."""

    switches: frozenset = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> "Appearance":
        """'plain' | 'full' | 'a,b,...' | 'full,-a,...' -> Appearance; an unknown name is a FaceUtilError."""
        on: set[str] = set()
        for token in (t.strip().lower() for t in str(text or "plain").split(",")):
            if token in ("", "plain"):
                continue
            if token == "full":
                on |= set(SWITCHES)
                continue
            name = token[1:] if token.startswith("-") else token
            if name not in SWITCHES:
                raise FaceUtilError(f"unknown appearance switch {name!r}: use plain, full or a comma list of "
                                    f"{', '.join(SWITCHES)} (a leading '-' removes one, e.g. full,-hair)")
            (on.discard if token.startswith("-") else on.add)(name)
        return cls(frozenset(on))

    def __contains__(self, name: str) -> bool:
        return name in self.switches

    def __bool__(self) -> bool:
        return bool(self.switches)

    @property
    def name(self) -> str:
        """The canonical spelling: 'plain', 'full', 'full,-x' when one is missing, else the names in SWITCHES order."""
        if not self.switches:
            return "plain"
        if self.switches == frozenset(SWITCHES):
            return "full"
        missing = [s for s in SWITCHES if s not in self.switches]
        if len(missing) == 1:
            return "full,-" + missing[0]
        return ",".join(s for s in SWITCHES if s in self.switches)


PLAIN = Appearance()


# -- pose ------------------------------------------------------------------------------------------------------------
def wide_pitch_roll(rng: np.random.Generator) -> tuple[float, float]:
    """(pitch, roll) radians: 70 % near upright (N(0, 10 deg) / N(0, 8 deg)), 30 % uniform in +-45 / +-40 deg."""
    pitch = rng.normal(0.0, 10.0) if rng.random() < 0.7 else rng.uniform(-45.0, 45.0)
    roll = rng.normal(0.0, 8.0) if rng.random() < 0.7 else rng.uniform(-40.0, 40.0)
    return math.radians(float(np.clip(pitch, -45.0, 45.0))), math.radians(float(np.clip(roll, -40.0, 40.0)))


# -- background and body (drawn into the background, behind everything the renderer draws) ---------------------------
def _random_colour(rng) -> tuple:
    return tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))


def _stripes(rng, size: int) -> np.ndarray:
    """(size, size) in [0, 1]: a sine grating of random period and direction, sometimes squared into bars."""
    angle, period = rng.uniform(0.0, math.pi), rng.uniform(4.0, 40.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period))
    return (wave > 0.5).astype(np.float32) if rng.random() < 0.5 else wave


def _noise_texture(rng, size: int) -> np.ndarray:
    """(size, size, 3) in [0, 1]: coloured noise, blurred at a random scale (fine grain to large blotches)."""
    small = max(2, int(size / rng.uniform(2.0, 60.0)))
    tex = rng.uniform(0.0, 1.0, (small, small, 3)).astype(np.float32)
    return cv2.resize(tex, (size, size), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def clutter(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """The smooth background (H, W, 3) float in [0, 1] with 4-14 random shapes, lines and textured patches drawn
    over it, then sometimes defocused. Returns a new float32 array."""
    size = background.shape[0]
    img = np.ascontiguousarray(background, dtype=np.float32).copy()
    if rng.random() < 0.3:                                       # a textured wall instead of the smooth field
        img = 0.5 * img + 0.5 * _noise_texture(rng, size)
    for _ in range(int(rng.integers(4, 15))):
        kind = rng.choice(["rect", "ellipse", "poly", "line", "stripes", "noise"])
        mask = np.zeros((size, size), np.float32)
        c = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.45) * size
        if kind == "rect":
            cv2.rectangle(mask, (int(c[0] - r), int(c[1] - r * rng.uniform(0.2, 1.5))),
                          (int(c[0] + r), int(c[1] + r * rng.uniform(0.2, 1.5))), 1.0, -1)
        elif kind == "ellipse":
            cv2.ellipse(mask, (int(c[0]), int(c[1])), (int(r), int(r * rng.uniform(0.2, 1.0))),
                        float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        elif kind == "line":
            end = c + rng.normal(0, size * 0.5, 2)
            cv2.line(mask, (int(c[0]), int(c[1])), (int(end[0]), int(end[1])), 1.0, int(rng.integers(1, 12)))
        else:
            pts = (c + rng.normal(0, r, (int(rng.integers(3, 8)), 2))).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1.0)
        if kind == "stripes":
            fill = _stripes(rng, size)[..., None] * np.array(_random_colour(rng), np.float32) \
                + (1 - _stripes(rng, size)[..., None]) * np.array(_random_colour(rng), np.float32)
        elif kind == "noise":
            fill = _noise_texture(rng, size)
        else:
            fill = np.broadcast_to(np.array(_random_colour(rng), np.float32), img.shape)
        alpha = mask[..., None] * rng.uniform(0.6, 1.0)
        img = img * (1 - alpha) + fill * alpha
    if rng.random() < 0.5:
        sigma = rng.uniform(0.5, 4.0)
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def draw_body(rng: np.random.Generator, background: np.ndarray, model_landmarks: np.ndarray, pose_para) -> np.ndarray:
    """Shoulders and clothing below the neck, projected with the face's pose and drawn into the background (the
    renderer then draws the head and neck over them). model_landmarks: (68, 3) model units (+y up). Returns a new
    float32 image."""
    from faceutil.pose import project

    size = background.shape[0]
    lm = np.asarray(model_landmarks, dtype=np.float64)
    face_h = lm[27, 1] - lm[8, 1]                                # nose bridge to chin, model units
    chin_y = lm[8, 1]
    drop = rng.uniform(0.55, 0.85) * face_h
    half = rng.uniform(1.6, 2.2) * face_h
    neck = rng.uniform(0.35, 0.5) * face_h
    ys = chin_y - drop
    outline = np.array([[-half, ys - 6 * face_h], [-half, ys - 0.3 * face_h], [-0.8 * half, ys - 0.05 * face_h],
                        [-neck, ys + 0.1 * face_h], [neck, ys + 0.1 * face_h], [0.8 * half, ys - 0.05 * face_h],
                        [half, ys - 0.3 * face_h], [half, ys - 6 * face_h]])
    pts3 = np.c_[outline, np.full(len(outline), -0.3 * face_h)]
    pts = project(pts3, pose_para, size)[:, :2].astype(np.int32)
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [pts], 1.0)
    colour = np.array(_random_colour(rng), np.float32) * rng.uniform(0.3, 1.0)
    cloth = np.broadcast_to(colour, background.shape).astype(np.float32)
    if rng.random() < 0.5:
        s = _stripes(rng, size)[..., None]
        cloth = cloth * (0.6 + 0.4 * s)
    shade = np.linspace(1.0, rng.uniform(0.5, 0.9), size, dtype=np.float32)[:, None, None]
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    return (background * (1 - mask) + cloth * shade * mask).astype(np.float32)


# -- hair: a shell over the skull, rendered with the face ---------------------------------------------------------------
HAIR_COLOURS = np.array([[0.05, 0.04, 0.035], [0.16, 0.10, 0.07], [0.30, 0.19, 0.11], [0.55, 0.40, 0.24],
                         [0.80, 0.66, 0.42], [0.45, 0.17, 0.08], [0.60, 0.60, 0.58], [0.88, 0.86, 0.82]])
HAIR_SHARES = np.array([0.3, 0.22, 0.15, 0.1, 0.08, 0.05, 0.06, 0.04])


def hair_mesh(rng: np.random.Generator, model_landmarks: np.ndarray, head_vertices: np.ndarray | None = None,
              grid: int = 72):
    """A hair shell in model space around the head above its hairline.

    The shell is an ellipsoid about the skull (its size from the landmarks: face width from the jaw ends, height from
    brows to chin), pushed out wherever the head's own vertices (head_vertices (n, 3), model units) would reach
    through it, cut at the front by a hairline above the brows (low for a fringe), down to the ears at the sides
    for short hair or hanging to the shoulders for long hair, with a ragged lower edge; its colour comes from a
    palette of natural shades, streaked along the strands.

    Returns: vertices (k, 3) float64 model units, triangles (m, 3) int32 (local ids), colours (k, 3) in [0, 1],
    and the hair's base colour (3,) (see painted_hair).
    """
    lm = np.asarray(model_landmarks, dtype=np.float64)
    width = np.linalg.norm(lm[16, [0, 2]] - lm[0, [0, 2]])            # jaw end to jaw end
    brow_y = lm[17:27, 1].mean()
    face_h = brow_y - lm[8, 1]
    front_z = lm[27:31, 2].max()
    volume = rng.uniform(1.02, 1.25)
    rx = 0.62 * width * volume
    rz = 0.75 * width * volume
    ry = 0.80 * face_h * volume
    cy = brow_y - 0.05 * face_h
    cz = front_z - 0.80 * width
    fringe = brow_y + rng.uniform(0.08, 0.32) * face_h                 # hairline height at the front
    long_hair = rng.random() < 0.45
    side_bottom = lm[8, 1] - rng.uniform(0.0, 0.9) * face_h if long_hair else lm[36:46, 1].mean() - \
        rng.uniform(0.0, 0.25) * face_h
    az = np.linspace(-math.pi, math.pi, grid)
    t = np.linspace(0.0, 1.0, grid)                                     # 0 = top of the head, 1 = lower edge
    ragged = 0.06 * face_h * np.interp(az, np.linspace(-math.pi, math.pi, 13), rng.normal(0, 1, 13))
    deg = np.degrees(np.abs(az))                                        # 1 over the face (|az| <= 55 deg), 0 beside it
    front = 1.0 - np.clip((deg - 55.0) / 25.0, 0.0, 1.0) ** 2 * (3.0 - 2.0 * np.clip((deg - 55.0) / 25.0, 0.0, 1.0))
    bottom = front * fringe + (1 - front) * side_bottom + ragged       # (grid,) lower edge height per azimuth
    A, T = np.meshgrid(az, t)
    Y = cy + ry - T * (cy + ry - bottom[None, :])
    rel = np.clip((Y - cy) / ry, -1.0, 1.0)
    ring = np.where(Y >= cy, np.sqrt(np.maximum(1 - rel ** 2, 0.0)), 1.0)   # below the equator the hair hangs
    scale = np.ones_like(Y)
    if head_vertices is not None:                       # no part of the head may stick out through the hair
        scale = np.maximum(scale, _enclosing_scale(np.asarray(head_vertices, np.float64), A, Y, ring, rx, rz, cz,
                                                   margin=0.03 * width))
    X = rx * ring * scale * np.sin(A)
    Z = cz + rz * ring * scale * np.cos(A)
    verts = np.stack([X, Y, Z], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(grid - 1), np.arange(grid - 1), indexing="ij")
    a = (i * grid + j).ravel()
    tris = np.concatenate([np.stack([a, a + 1, a + grid], 1), np.stack([a + 1, a + grid + 1, a + grid], 1)])
    base = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_SHARES)] * rng.uniform(0.8, 1.2)
    streak = np.interp(A.ravel(), np.linspace(-math.pi, math.pi, 181), rng.normal(0, 1, 181))
    colours = base[None, :] * (1.0 + 0.25 * streak[:, None]) * (1.0 - 0.25 * T.ravel()[:, None])
    return verts, tris.astype(np.int32), np.clip(colours, 0.0, 1.0), np.clip(base, 0.0, 1.0)


PAINTED_HAIR = np.array([58.0, 42.0, 34.0])      # the synthetic model's mean albedo of hair, 0-255


def painted_hair(albedo: np.ndarray, tex_mu: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The face mesh's own painted hair recoloured to the hair shell's colour, so that the hair under the
    fringe and behind the ears matches it. albedo (n, 3) in [0, 1]; tex_mu: the model's mean albedo (3n,) 0-255."""
    distance = np.linalg.norm(np.asarray(tex_mu, np.float64).reshape(-1, 3) - PAINTED_HAIR, axis=1)
    weight = np.clip((18.0 - distance) / 10.0, 0.0, 1.0)[:, None]    # not the brows (26 away) or the mouth (19)
    return albedo * (1 - weight) + np.asarray(colour)[None, :] * weight


def _enclosing_scale(head: np.ndarray, A, Y, ring, rx, rz, cz, margin: float, bins: int = 36) -> np.ndarray:
    """Per shell vertex, the factor (>= 1) by which its horizontal radius must grow to pass `margin` outside every
    head vertex at about its height and azimuth (the head binned into `bins` azimuths x 24 heights)."""
    az = np.arctan2(head[:, 0] / rx, (head[:, 2] - cz) / rz)
    reach = np.hypot(head[:, 0] / rx, (head[:, 2] - cz) / rz)          # 1 = on the unscaled ellipse
    y_lo, y_hi = float(Y.min()), float(Y.max())
    rows = np.clip(((head[:, 1] - y_lo) / max(y_hi - y_lo, 1e-9) * 24).astype(int), 0, 23)
    cols = np.clip(((az + math.pi) / (2 * math.pi) * bins).astype(int), 0, bins - 1)
    inside = (head[:, 1] >= y_lo) & (head[:, 1] <= y_hi)
    need = np.zeros((24, bins))
    np.maximum.at(need, (rows[inside], cols[inside]), reach[inside])
    r = np.clip(((Y - y_lo) / max(y_hi - y_lo, 1e-9) * 24).astype(int), 0, 23)
    c = np.clip(((A + math.pi) / (2 * math.pi) * bins).astype(int), 0, bins - 1)
    grow = margin / min(rx, rz)
    return np.where(need[r, c] > 0, (need[r, c] + grow) / np.maximum(ring, 1e-3), 1.0)


# -- skin, lighting ---------------------------------------------------------------------------------------------------
SKIN_TONES = np.array([[1.00, 0.86, 0.76], [0.96, 0.78, 0.64], [0.88, 0.66, 0.50], [0.74, 0.52, 0.38],
                       [0.56, 0.38, 0.27], [0.40, 0.26, 0.18], [0.28, 0.18, 0.13]])


def skin_albedo(rng: np.random.Generator, albedo: np.ndarray) -> np.ndarray:
    """Per-vertex albedo (n, 3) in [0, 1] moved to a random skin tone: the plain model's skin colour
    (0.87, 0.69, 0.57) maps onto the tone, darker features keep their contrast."""
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, 3)
    gain = tone / np.array([0.87, 0.69, 0.57])
    return np.clip(albedo * gain[None, :], 0.0, 1.0)


def skin_detail(rng: np.random.Generator, image: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Fine multiplicative grain, soft blotches and a few moles on the face pixels (face: (H, W) bool)."""
    h, w = face.shape
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.5, 1.2))
    blotch = cv2.resize(rng.normal(0.0, 1.0, (12, 12)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    gain = 1.0 + rng.uniform(0.02, 0.07) * grain + rng.uniform(0.0, 0.05) * blotch
    out = image.copy()
    out[face] *= gain[face][:, None]
    ys, xs = np.nonzero(face)
    for k in rng.choice(len(ys), size=min(len(ys), int(rng.integers(0, 6))), replace=False):
        cv2.circle(out, (int(xs[k]), int(ys[k])), int(rng.integers(1, 3)), tuple(float(v) for v in
                   out[ys[k], xs[k]] * 0.55), -1)
    return np.clip(out, 0.0, 1.0)


def lighting(rng: np.random.Generator) -> dict:
    """Light direction (any side, up to grazing), ambient, colour gain and a specular highlight."""
    az, el = rng.uniform(-math.pi, math.pi), rng.uniform(0.15, 1.45)  # elevation above the image plane
    light = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    colour = np.array([1.0, 1.0, 1.0]) + rng.normal(0.0, 0.08, 3)
    return {"light": light, "ambient": float(rng.uniform(0.08, 0.6)), "gain": colour * rng.uniform(0.7, 1.25),
            "specular": float(rng.uniform(0.0, 0.35)), "shininess": float(rng.uniform(6.0, 40.0))}


# -- occluders and camera (after rendering) -------------------------------------------------------------------------
def occlude(rng: np.random.Generator, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """With probability 0.5 one occluder over part of the face: glasses, a hand or an object. image (H, W, 3) float
    in [0, 1]; landmarks (68, 2+) image px. Returns a new array."""
    out = image.copy()
    if rng.random() >= 0.5:
        return out
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    side = float(np.max(lm.max(0) - lm.min(0)))
    kind = rng.choice(["glasses", "hand", "object"], p=[0.45, 0.3, 0.25])
    if kind == "glasses":
        colour = tuple(float(c) for c in rng.uniform(0.0, 0.4, 3))
        thick = max(1, int(side * rng.uniform(0.01, 0.03)))
        centres = [lm[36:42].mean(0), lm[42:48].mean(0)]
        rx = side * rng.uniform(0.11, 0.16)
        ry = rx * rng.uniform(0.55, 0.85)
        tilt = math.degrees(math.atan2(centres[1][1] - centres[0][1], centres[1][0] - centres[0][0]))
        if rng.random() < 0.4:                                    # tinted lenses
            lens = np.zeros(out.shape[:2], np.float32)
            for c in centres:
                cv2.ellipse(lens, (int(c[0]), int(c[1])), (int(rx), int(ry)), tilt, 0, 360, 1.0, -1)
            out *= (1.0 - rng.uniform(0.2, 0.7) * lens)[..., None]
        for c in centres:
            cv2.ellipse(out, (int(c[0]), int(c[1])), (int(rx), int(ry)), tilt, 0, 360, colour, thick)
        cv2.line(out, tuple(int(v) for v in lm[39]), tuple(int(v) for v in lm[42]), colour, thick)
        for eye, ear in ((36, 0), (45, 16)):
            cv2.line(out, tuple(int(v) for v in lm[eye]), tuple(int(v) for v in lm[ear]), colour, thick)
    else:
        target = lm[rng.integers(68)]
        centre = target + rng.normal(0.0, 0.15 * side, 2)
        if kind == "hand":
            colour = SKIN_TONES[rng.integers(len(SKIN_TONES))] * 0.8
            r = side * rng.uniform(0.15, 0.3)
            angle = rng.uniform(0, 180)
            cv2.ellipse(out, (int(centre[0]), int(centre[1])), (int(r), int(r * 0.7)), angle, 0, 360,
                        tuple(float(c) for c in colour), -1)
            direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
            for f in range(4):                                    # fingers
                base = centre + direction * r * 0.6 + np.array([-direction[1], direction[0]]) * r * (f - 1.5) * 0.45
                tip = base + direction * r * rng.uniform(0.8, 1.3)
                cv2.line(out, tuple(int(v) for v in base), tuple(int(v) for v in tip),
                         tuple(float(c) * rng.uniform(0.9, 1.1) for c in colour), max(2, int(r * 0.3)))
        else:
            pts = (centre + rng.normal(0, side * 0.15, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(out, [pts], _random_colour(rng))
    return np.clip(out, 0.0, 1.0)


def camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Colour/gamma/contrast shifts, focus or motion blur, noise, JPEG compression, 8 % grey. image (H, W, 3) float
    in [0, 1] -> (H, W, 3) uint8."""
    img = image.astype(np.float32)
    img = np.clip(img * rng.uniform(0.85, 1.15, 3).astype(np.float32), 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.7, 1.3) + mean
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * (0.0 if rng.random() < 0.08 else rng.uniform(0.5, 1.3))
    blur = rng.random()
    if blur < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 2.0))
    elif blur < 0.55:
        length = int(rng.integers(3, 12))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out
