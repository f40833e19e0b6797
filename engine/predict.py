"""Prediction on arbitrary photos and videos: the ``Predictor`` facade (image + face boxes -> landmarks, head pose,
dense mesh) and the ``-predict`` job (image / folder / video -> JSON, .obj, depth and overlay pictures, video).

Owns the detector-box -> crop rule at inference, the posmap -> original-image mapping, the pose fit, and the writers.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.errors import RunError
from faceutil.errors import FaceUtilError
from faceutil.uv import POSMAP_SCALE

CROP_SIZE = 256
CROP_ENLARGE = 1.5                         # crop side = 1.5 x the landmark box, as in training and evaluation
BOX_KINDS = ("detector", "landmarks")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
CONVENTIONS = ("image px: x = column, y = row (pixel centres at integers); z = depth in image-pixel scale, larger = "
               "closer to the camera, up to a per-face constant (deepest predicted face point at about 0); pose = "
               "3DDFA Euler angles in degrees of world = s R v + t with world y up (y_world = H + 1 - row), from a "
               "similarity fit of the predicted face points to the face model's mean shape; .obj vertices are "
               "(x, H + 1 - row, z), y up")


# ============================================================================================ UV geometry
@dataclass(frozen=True)
class UVGeometry:
    """What prediction needs from the face model's UV layout.

    kpt_ind: (2, 68) int64 UV landmark pixels (row 0 column, row 1 row). face_mask: (256, 256) bool.
    mean_points: (F, 3) float64 the model's mean shape (model units, y up) at the F face-mask pixels, row-major.
    triangles: (T, 3) int64 triangulation of the face-mask pixel grid (ids into the F points; counter-clockwise
    seen from the camera when y points up).
    """

    bfm: str
    kpt_ind: np.ndarray
    face_mask: np.ndarray
    mean_points: np.ndarray
    triangles: np.ndarray


def grid_triangles(mask: np.ndarray) -> np.ndarray:
    """Triangulate the True pixels of a (H, W) mask: two triangles per full 2x2 block, one per block of three.

    Vertex ids follow row-major order of the True pixels (faceutil.uv.posmap_vertices order). Returns (T, 3) int64,
    counter-clockwise when the rows are flipped to point up.
    """
    mask = np.asarray(mask, dtype=bool)
    idx = np.full(mask.shape, -1, dtype=np.int64)
    idx[mask] = np.arange(int(mask.sum()))
    a, c = idx[:-1, :-1], idx[:-1, 1:]       # (row, col), (row, col + 1)
    b, d = idx[1:, :-1], idx[1:, 1:]         # (row + 1, col), (row + 1, col + 1)
    va, vb, vc, vd = a >= 0, b >= 0, c >= 0, d >= 0
    parts = []
    for tri, keep in (((a, b, c), va & vb & vc),                # upper-left triangle of a block (also: d missing)
                      ((c, b, d), vb & vc & vd),                # lower-right triangle (also: a missing)
                      ((a, d, c), va & vc & vd & ~vb),          # b missing
                      ((a, b, d), va & vb & vd & ~vc)):         # c missing
        parts.append(np.stack([t[keep] for t in tri], axis=1))
    return np.concatenate(parts).astype(np.int64)


@functools.lru_cache(maxsize=4)
def uv_geometry(bfm: str = "synthetic") -> UVGeometry:
    """UV geometry of a face model ("synthetic" or a face3d data/Out folder); cached per process (seconds to build)."""
    from faceutil.morphable import load_model
    from faceutil.uv import UVRenderer, build_uv_layout

    model = load_model(bfm)
    layout = build_uv_layout(model, CROP_SIZE)
    mean_map = UVRenderer(model, CROP_SIZE).render(np.asarray(model.mean, dtype=np.float64))
    mask = np.asarray(layout.face_mask, dtype=bool)
    return UVGeometry(bfm=str(bfm), kpt_ind=np.asarray(layout.kpt_ind, dtype=np.int64), face_mask=mask,
                      mean_points=mean_map[mask].astype(np.float64), triangles=grid_triangles(mask))


def resolve_bfm_spec(spec: str | None) -> str:
    """None / "auto" -> data/Out when it holds BFM.mat, else "synthetic" (config.resolve_bfm); others unchanged."""
    from config import resolve_bfm

    return resolve_bfm(spec or "auto")


# ============================================================================================ results
@dataclass
class FaceResult:
    """One face predicted in one image (all coordinates in the original image; see CONVENTIONS).

    box: (4,) float64 [x1, y1, x2, y2] the box the face came from; box_kind: "detector" or "landmarks".
    crop: faceutil.crop.Similarity original image -> 256x256 network crop.
    posmap: (256, 256, 3) float32 predicted position map in crop pixels.
    landmarks: (68, 3) float64 original px (x, y row, z depth). vertices: (F, 3) float64 dense face points, same frame.
    pose: dict yaw / pitch / roll (degrees), scale, rotation (3, 3), translation (3,) of world = s R mean + t.
    """

    box: np.ndarray
    box_kind: str
    crop: object
    posmap: np.ndarray
    landmarks: np.ndarray
    vertices: np.ndarray
    pose: dict = field(default_factory=dict)

    @property
    def landmarks_2d(self) -> np.ndarray:
        """(68, 2) float64 x, y in original image pixels."""
        return self.landmarks[:, :2]

    def to_json(self) -> dict:
        """JSON-ready dict (lists of floats)."""
        return {
            "box": [round(float(v), 3) for v in self.box], "box_kind": self.box_kind,
            "crop_matrix": np.round(self.crop.matrix, 8).tolist(),
            "landmarks_2d": np.round(self.landmarks[:, :2], 4).tolist(),
            "landmarks_3d": np.round(self.landmarks, 4).tolist(),
            "pose": {"yaw": self.pose["yaw"], "pitch": self.pose["pitch"], "roll": self.pose["roll"],
                     "units": "degrees", "scale": self.pose["scale"],
                     "rotation": np.round(self.pose["rotation"], 8).tolist(),
                     "translation": np.round(self.pose["translation"], 4).tolist()},
        }


def fit_pose(vertices: np.ndarray, mean_points: np.ndarray, image_height: int) -> dict:
    """Head pose from dense face points: least-squares similarity world ~= s R mean + t, then 3DDFA Euler angles.

    vertices: (F, 3) image coordinates (x column, y row, z depth); mean_points: (F, 3) model space (y up), same
    UV pixels. The image y axis points down, the model's up: world y = H + 1 - row (faceutil.pose.project).
    Returns yaw, pitch, roll (degrees, floats), scale (px per model unit), rotation (3, 3), translation (3,).
    """
    from faceutil.pose import estimate_similarity, matrix2angle

    world = np.array(vertices, dtype=np.float64)
    world[:, 1] = (image_height + 1) - world[:, 1]
    s, rot, t = estimate_similarity(mean_points, world)
    pitch, yaw, roll = matrix2angle(rot)
    return {"yaw": math.degrees(yaw), "pitch": math.degrees(pitch), "roll": math.degrees(roll), "scale": float(s),
            "rotation": rot, "translation": t}


# ============================================================================================ backends
class TorchBackend:
    """Runs an nn.Module (or any callable on (B, 3, 256, 256) float tensors) on a torch device.

    precision "bf16" / "fp16" (fp16: CUDA only): an nn.Module's weights are cast once and the inputs with them (no
    per-call casting as under autocast); another callable runs under autocast. channels_last: NHWC convolutions.
    compile: wrap an nn.Module in torch.compile (the first call of each batch size compiles).
    """

    name = "torch"

    def __init__(self, module, device=None, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False):
        import torch

        from model.device import autocast_context, get_device, to_channels_last

        self.device = get_device(device) if not isinstance(device, torch.device) else device
        autocast_context(self.device, precision)           # unknown precision, fp16 without CUDA: one sentence
        self.precision, self.dtype = precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module
        if isinstance(module, torch.nn.Module):
            if channels_last or self.dtype is not None:
                module = copy.deepcopy(module)              # casting and re-laying out are in place: not the caller's
            self.module = module.to(self.device).eval()
            if channels_last:
                to_channels_last(self.module)
            if self.dtype is not None:
                self.module = self.module.to(self.dtype)
            if compile:
                self.module = torch.compile(self.module)
        # weights already in self.dtype: feed inputs in it; a plain callable gets autocast instead
        self.weights_cast = self.dtype is not None and isinstance(module, torch.nn.Module)
        self.max_batch = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """batch (B, 3, 256, 256) float32 in [0, 1] -> (B, 3, 256, 256) float32 network output (posmap / 280)."""
        import torch

        from model.device import autocast_context

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast_context(self.device, "fp32" if self.weights_cast else self.precision):
            out = self.module(x.to(self.dtype) if self.weights_cast else x)
        if isinstance(out, torch.Tensor):
            return out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


def load_torch_model(path, model: str | None = None, model_kwargs: dict | None = None, export: bool = True):
    """Model from a checkpoint (weights_only loading, never unpickles code), in eval mode.

    The checkpoint's recorded model name / kwargs win; an explicit different ``model`` is a RunError (one sentence),
    as is any unreadable, truncated or foreign file. export=True swaps in the plain-torch encoder (model.export()).
    Returns (module, model_name, model_kwargs, checkpoint dict).
    """
    from engine.checkpoint import check_model_identity, load_checkpoint, load_weights
    from model.registry import build_model

    ck = load_checkpoint(path)
    name = model or "e2tkface"
    kwargs = dict(model_kwargs or {})
    check_model_identity(ck, path, name, model is not None)
    if ck.get("model_name") is not None:
        name, kwargs = ck["model_name"], dict(ck.get("model_kwargs") or {})
    try:
        net = build_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise RunError(f"The checkpoint {path} names a model ({name}, {kwargs}) this code cannot build: {err}.") \
            from None
    load_weights(net, ck, path)
    net.eval()
    if export and hasattr(net, "export"):
        net = net.export()
    return net.eval(), name, kwargs, ck


# ============================================================================================ the facade
class Predictor:
    """image + face boxes -> list[FaceResult]: crop each face like the evaluation crop, run the network in batches,
    map the position maps back to the image, fit the head pose.

    source: a checkpoint (.pth / .pt), an exported .onnx file (run with onnxruntime), an nn.Module, or any callable
    mapping (B, 3, 256, 256) float32 arrays in [0, 1] to the network output (posmap / 280) as arrays or tensors.
    device: None (CUDA when available), "cpu", "cuda[:N]". bfm: the face model whose UV layout the network was
    trained on ("synthetic" or a data/Out folder); default: what the checkpoint / ONNX file records, else "auto".
    model: expected model name (a checkpoint of another model is then an error). export: run the network's
    export() twin (plain-torch encoder, same outputs; benchmarks/results/predict.md). batch_size: faces per call.
    precision: "fp32" (default) or "bf16" / "fp16" (CUDA) for torch models (weights cast once, see TorchBackend);
    channels_last: NHWC convolutions; compile: torch.compile the network. None of these applies to an .onnx file.
    """

    def __init__(self, source, device=None, bfm: str | None = None, model: str | None = None,
                 model_kwargs: dict | None = None, export: bool = True, batch_size: int = 8, detector=None,
                 precision: str = "fp32", channels_last: bool = False, compile: bool = False):
        import torch

        self.model_name = model
        self.model_kwargs = dict(model_kwargs or {})
        recorded_bfm = None
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise RunError(f"The model file {path} does not exist.")
            if path.suffix.lower() == ".onnx":
                from engine.export import OnnxBackend

                if precision != "fp32" or channels_last or compile:
                    raise RunError(f"--precision, --channels-last and --compile apply to torch checkpoints; the "
                                   f"ONNX file {path} runs as exported (drop those flags).")
                # the same thread count as torch (its default follows the cores this process may use)
                self.backend = OnnxBackend(path, device=device, threads=torch.get_num_threads())
                meta = self.backend.metadata
                if model is not None and meta.get("model_name") not in (None, model):
                    raise RunError(f"The ONNX file {path} holds a {meta.get('model_name')!r} model, not "
                                   f"--model={model!r}; drop --model or pass --model={meta.get('model_name')}.")
                self.model_name = meta.get("model_name", model)
                self.model_kwargs = json.loads(meta.get("model_kwargs", "{}"))
                recorded_bfm = meta.get("bfm")
            else:
                net, self.model_name, self.model_kwargs, ck = load_torch_model(path, model, model_kwargs, export)
                recorded_bfm = (ck.get("config") or {}).get("bfm") if isinstance(ck.get("config"), dict) else None
                self.backend = TorchBackend(net, device, precision, channels_last, compile)
        elif isinstance(source, torch.nn.Module):
            net = source.eval()
            if export and hasattr(net, "export"):
                net = net.export()
            self.backend = TorchBackend(net, device, precision, channels_last, compile)
        elif callable(source):
            self.backend = TorchBackend(source, device, precision, channels_last, compile)
        else:
            raise TypeError(f"Predictor needs a checkpoint / .onnx path, an nn.Module or a callable, "
                            f"got {type(source)}")
        self.bfm = resolve_bfm_spec(bfm if bfm is not None else recorded_bfm)
        self.geometry = uv_geometry(self.bfm)
        self.batch_size = max(1, int(batch_size))
        self._detector = detector

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # ---------------------------------------------------------------------------------------- boxes and crops
    def detect(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) face boxes of an RGB image from the bundled Haar cascade (largest first)."""
        from faceutil.detect import FaceDetector

        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector.detect(image)

    @staticmethod
    def crop_for_box(box, box_kind: str = "detector"):
        """The original -> 256x256 crop Similarity for a face box.

        box_kind "landmarks": the box is the tight 68-landmark box; the crop is exactly the evaluation crop
        (square, side 1.5 x max(w, h), same centre). "detector": a face-detector box, first turned into the
        landmark box it corresponds to on average (faceutil.detect calibration: side x 0.88, centre moved down
        0.167 x side), so the crop matches the training-crop statistics.
        """
        from faceutil.crop import crop_similarity
        from faceutil.detect import landmark_box_from_detection

        if box_kind not in BOX_KINDS:
            raise ValueError(f"box_kind must be one of {BOX_KINDS}, got {box_kind!r}")
        b = np.asarray(box, dtype=np.float64).reshape(4)
        if box_kind == "detector":
            b = landmark_box_from_detection(b)
        corners = np.array([[b[0], b[1]], [b[2], b[3]]])
        return crop_similarity(corners, out_size=CROP_SIZE, enlarge=CROP_ENLARGE)

    # ---------------------------------------------------------------------------------------- the call
    def run_network(self, crops: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 crops -> (N, 256, 256, 3) float32 position maps in crop pixels (batched)."""
        out = []
        step = self.batch_size if self.backend.max_batch is None else min(self.batch_size, self.backend.max_batch)
        for k in range(0, len(crops), step):
            x = crops[k:k + step].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            y = np.asarray(self.backend(np.ascontiguousarray(x)), dtype=np.float32)
            out.append(y.transpose(0, 2, 3, 1) * POSMAP_SCALE)
        return np.concatenate(out) if out else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.float32)

    def __call__(self, image: np.ndarray, boxes=None, box_kind: str = "detector") -> list[FaceResult]:
        """Predict every face of an (H, W, 3) uint8 RGB image.

        boxes: (N, 4) [x1, y1, x2, y2] original px, or None to detect faces with the Haar cascade.
        Returns one FaceResult per box, in box order ([] when there is no face).
        """
        from faceutil.uv import posmap_landmarks, posmap_vertices

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        if boxes is None:
            boxes, box_kind = self.detect(image), "detector"
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        sims = [self.crop_for_box(b, box_kind) for b in boxes]
        crops = np.stack([s.warp_image(image, CROP_SIZE) for s in sims])
        posmaps = self.run_network(crops)
        geo = self.geometry
        results = []
        for box, sim, pm in zip(boxes, sims, posmaps):
            inv = sim.inverse()
            lms = inv.apply(posmap_landmarks(pm, geo.kpt_ind))
            verts = inv.apply(posmap_vertices(pm, geo.face_mask))
            pose = fit_pose(verts, geo.mean_points, image.shape[0])
            results.append(FaceResult(box=box, box_kind=box_kind, crop=sim, posmap=pm, landmarks=lms,
                                      vertices=verts, pose=pose))
        return results


# ============================================================================================ pictures
def _render(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray):
    """Rasterise all faces' meshes over the image once: (tri_id, bary, depth, vertices, triangles)."""
    from faceutil.render import rasterize

    h, w = image.shape[:2]
    n = len(faces[0].vertices) if faces else 0
    verts = np.concatenate([f.vertices for f in faces]) if faces else np.zeros((0, 3))
    tris = np.concatenate([triangles + k * n for k in range(len(faces))]) if faces else np.zeros((0, 3), np.int64)
    tri_id, bary, depth = rasterize(verts, tris, h, w)
    return tri_id, bary, depth, verts, tris


def depth_image(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray, raster=None) -> np.ndarray:
    """(H, W) uint8 depth picture: the predicted face surfaces, nearest = 255, farthest face point = 1, background 0."""
    tri_id, _, depth, _, _ = raster if raster is not None else _render(image, faces, triangles)
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    covered = tri_id >= 0
    if covered.any():
        z = depth[covered].astype(np.float64)
        lo, hi = float(z.min()), float(z.max())
        out[covered] = np.clip(1 + 254 * (z - lo) / max(hi - lo, 1e-6), 1, 255).astype(np.uint8)
    return out


def overlay_image(image: np.ndarray, faces: Sequence[FaceResult], triangles: np.ndarray, raster=None,
                  alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: the shaded predicted meshes blended over the image, boxes, and the 68 landmarks (green)."""
    import cv2

    from faceutil.render import interpolate, vertex_normals

    out = np.array(image, dtype=np.uint8, copy=True)
    if faces:
        tri_id, bary, _, verts, tris = raster if raster is not None else _render(image, faces, triangles)
        covered = tri_id >= 0
        if covered.any():
            normals = interpolate(tri_id, bary, tris, vertex_normals(verts, tris))
            length = np.linalg.norm(normals, axis=-1)
            shade = 0.25 + 0.75 * np.abs(normals[..., 2]) / np.maximum(length, 1e-12)   # light from the camera
            grey = (np.array([200.0, 205.0, 215.0]) * shade[..., None])[covered]
            out[covered] = np.clip((1 - alpha) * out[covered] + alpha * grey, 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    r = max(1, int(round(min(h, w) / 250)))
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 200, 0), max(1, r // 2), lineType=cv2.LINE_AA)
        for x, y in f.landmarks_2d:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(out, (int(round(x)), int(round(y))), r + 1, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    return out


# ============================================================================================ the -predict job
@dataclass
class PredictSummary:
    """Outcome of a -predict run: per input item (path, status ok|skipped, reason, faces, json path)."""

    items: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return sum(1 for it in self.items if it["status"] == "ok")

    @property
    def skipped(self) -> list:
        return [it for it in self.items if it["status"] != "ok"]

    def lines(self) -> list[str]:
        out = [f"predicted {self.processed} item(s), skipped {len(self.skipped)} in {self.seconds:.1f} s"]
        out += [f"  skipped {Path(it['input']).name}: {it['reason']}" for it in self.skipped]
        return out


class ResultWriter:
    """Writes one image's results: <name>.json, <name>_face<k>.obj / _kpt.txt, <name>_depth.png, <name>_overlay.jpg."""

    def __init__(self, out_dir, predictor: Predictor):
        from faceutil.mesh import ObjWriter

        self.out_dir = Path(out_dir)
        self.predictor = predictor
        self.obj = ObjWriter(predictor.geometry.triangles)

    def write(self, name: str, source: str, image: np.ndarray, faces: list[FaceResult]) -> Path:
        from faceutil.mesh import sample_colors, write_landmarks
        from faceutil.sampleio import atomic_write_bytes, atomic_write_image

        h, w = image.shape[:2]
        tris = self.predictor.geometry.triangles
        files = {}
        face_json = []
        for k, f in enumerate(faces):
            mesh_path = self.out_dir / f"{name}_face{k}.obj"
            kpt_path = self.out_dir / f"{name}_face{k}_kpt.txt"
            colors = sample_colors(image, f.vertices[:, :2])
            upright = f.vertices.copy()
            upright[:, 1] = (h + 1) - upright[:, 1]
            self.obj.write(mesh_path, upright, colors)
            write_landmarks(kpt_path, f.landmarks)
            face_json.append({**f.to_json(), "mesh": mesh_path.name, "landmarks_file": kpt_path.name})
        raster = _render(image, faces, tris)
        files["depth"] = self.out_dir / f"{name}_depth.png"
        files["overlay"] = self.out_dir / f"{name}_overlay.jpg"
        atomic_write_image(files["depth"], depth_image(image, faces, tris, raster))
        atomic_write_image(files["overlay"], overlay_image(image, faces, tris, raster), quality=92)
        record = {"input": source, "width": w, "height": h, "model": self.predictor.model_name,
                  "backend": self.predictor.backend_name, "bfm": self.predictor.bfm, "conventions": CONVENTIONS,
                  "depth": files["depth"].name, "overlay": files["overlay"].name, "faces": face_json}
        json_path = self.out_dir / f"{name}.json"
        atomic_write_bytes(json_path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        return json_path


def _pose_json(f: FaceResult) -> dict:
    return {"yaw": f.pose["yaw"], "pitch": f.pose["pitch"], "roll": f.pose["roll"]}


def predict_image(predictor: Predictor, path: Path, writer: ResultWriter, name: str, boxes=None) -> dict:
    """One image file -> its result files; raises FaceUtilError / RunError (one sentence) when it cannot be done."""
    from faceutil.sampleio import read_image

    image = read_image(path)
    faces = predictor(image, boxes)
    if not faces:
        raise FaceUtilError(f"no face was found in {path} (pass --bbox=x1,y1,x2,y2 to give one)")
    json_path = writer.write(name, str(path), image, faces)
    return {"faces": len(faces), "json": str(json_path)}


def predict_video(predictor: Predictor, path: Path, out_dir: Path, name: str, boxes=None) -> dict:
    """A video -> <name>_annotated.mp4 (mp4v; every frame with meshes and landmarks) and <name>.json (per-frame
    landmarks and pose). Frames without a face are copied unannotated. Returns faces / frames / fps stats."""
    import cv2

    from faceutil.sampleio import atomic_write_bytes

    if not path.is_file() or path.stat().st_size == 0:
        raise FaceUtilError(f"video {path} is empty or missing")
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok or frame is None:
        cap.release()
        raise FaceUtilError(f"video {path} cannot be read (not a video OpenCV can decode)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0
    h, w = frame.shape[:2]
    out_path = out_dir / f"{name}_annotated.mp4"
    tmp_path = out_dir / f".{name}_annotated.{time.time_ns()}.tmp.mp4"
    writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        cap.release()
        raise FaceUtilError(f"cannot write the annotated video {out_path} (OpenCV has no mp4v encoder)")
    frames, with_face, records = 0, 0, []
    start = time.perf_counter()
    tris = predictor.geometry.triangles
    try:
        while ok:
            rgb = np.ascontiguousarray(frame[..., ::-1])          # OpenCV decodes BGR
            faces = predictor(rgb, boxes)
            with_face += bool(faces)
            annotated = overlay_image(rgb, faces, tris) if faces else rgb
            writer.write(np.ascontiguousarray(annotated[..., ::-1]))
            records.append({"frame": frames, "faces": [{"box": [round(float(v), 3) for v in f.box],
                                                        "landmarks_2d": np.round(f.landmarks_2d, 3).tolist(),
                                                        "landmarks_3d": np.round(f.landmarks, 3).tolist(),
                                                        "pose": _pose_json(f)} for f in faces]})
            frames += 1
            ok, frame = cap.read()
        seconds = time.perf_counter() - start
    finally:
        cap.release()
        writer.release()
    try:
        tmp_path.replace(out_path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise FaceUtilError(f"cannot write the annotated video {out_path}: {err.strerror or err}") from None
    stats = {"frames": frames, "frames_with_face": with_face, "fps_source": fps,
             "fps_processed": frames / seconds if seconds > 0 else None}
    record = {"input": str(path), "width": w, "height": h, "model": predictor.model_name,
              "backend": predictor.backend_name, "bfm": predictor.bfm, "conventions": CONVENTIONS,
              "video": out_path.name, **stats, "per_frame": records}
    json_path = out_dir / f"{name}.json"
    atomic_write_bytes(json_path, (json.dumps(record) + "\n").encode("utf-8"))
    return {"faces": with_face, "json": str(json_path), **stats}


def _inputs(path: Path) -> list[Path]:
    """The items of -predict=PATH: the file itself, or the regular, non-hidden files directly inside a folder."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if path.exists():
        return [path]
    raise RunError(f"The input {path} given by -predict does not exist.")


def _unique_name(path: Path, used: set) -> str:
    name = path.stem or path.name
    if name in used:
        name = f"{name}_{path.suffix.lstrip('.').lower()}"
    k = 1
    base = name
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def predict_path(predictor: Predictor, path, out_dir, boxes=None, progress: bool = True,
                 say: Callable[[str], None] = print) -> PredictSummary:
    """The -predict job: an image, a video or a folder of them -> results in out_dir (+ summary.json).

    A bad item (unreadable, no face, not an image or video) is skipped with one sentence; the others are processed.
    """
    from faceutil.sampleio import atomic_write_bytes

    start = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    items = _inputs(path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"The output folder {out_dir} cannot be created ({err.strerror}).") from None
    writer = ResultWriter(out_dir, predictor)
    summary = PredictSummary()
    used: set = {"summary"}                   # summary.json is the run's own file
    for item in items:
        name = _unique_name(item, used)
        suffix = item.suffix.lower()
        entry = {"input": str(item), "name": name}
        try:
            if suffix in VIDEO_SUFFIXES:
                entry.update(predict_video(predictor, item, out_dir, name, boxes))
            elif suffix in IMAGE_SUFFIXES or not path.is_dir():
                entry.update(predict_image(predictor, item, writer, name, boxes))
            else:
                raise FaceUtilError(f"{item} is not an image or video file (suffix {suffix or 'none'!r})")
            entry.update(status="ok", reason="")
            if progress:
                say(f"{item.name}: {entry['faces']} face(s) -> {Path(entry['json']).name}")
        except (FaceUtilError, RunError) as err:
            entry.update(status="skipped", reason=str(err))
        summary.items.append(entry)
    summary.seconds = time.perf_counter() - start
    record = {"input": str(path), "model": predictor.model_name, "backend": predictor.backend_name,
              "processed": summary.processed, "skipped": len(summary.skipped), "seconds": round(summary.seconds, 3),
              "items": summary.items}
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return summary


def run_predict(config, checkpoint=None) -> PredictSummary:
    """CLI entry (-predict=PATH --loadModelPath=CKPT|ONNX [-o=DIR] [--bbox=...]): prints the summary; raises RunError
    (one sentence, non-zero exit) when nothing could be predicted."""
    from faceutil.detect import parse_boxes

    source = checkpoint or config.load_model_path
    if source is None:
        raise RunError("-predict needs --loadModelPath=PATH to a checkpoint (.pth) or an exported .onnx file.")
    boxes = parse_boxes(config.bbox) if getattr(config, "bbox", None) else None
    given = getattr(config, "given", ())
    model = config.model if "model" in given else None
    kwargs = dict(config.model_kwargs)
    if model == "e2tkface" or (model is None and "encoder" in given):
        kwargs.setdefault("encoder", config.encoder)
    bfm = config.bfm if "bfm" in given else None
    out = Path(config.out) if config.out else Path("predictions")
    predictor = Predictor(source, device=config.device, bfm=bfm, model=model, model_kwargs=kwargs,
                          export=config.export, batch_size=config.batch_size, precision=config.precision,
                          channels_last=config.channels_last, compile=config.compile)
    summary = predict_path(predictor, config.predict, out, boxes, progress=config.progress)
    for line in summary.lines():
        print(line)
    if summary.processed == 0:
        if len(summary.items) == 1:
            raise RunError(summary.items[0]["reason"])
        first = summary.skipped[0]["reason"] if summary.skipped else "it holds no files"
        raise RunError(f"Nothing was predicted from {config.predict} ({len(summary.skipped)} item(s) skipped; "
                       f"first: {first}).")
    print(f"results in {out}")
    return summary
