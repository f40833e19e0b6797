"""The -predict job: an image, a folder of images and videos, or a video -> per-face JSON, .obj meshes, 68-point
landmark files, depth and overlay pictures, an annotated video, and summary.json; a bad item is skipped and reported,
the rest goes on.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.errors import RunError
from inference.pictures import depth_image, overlay_image, render_faces
from inference.predict import CONVENTIONS, FaceResult, Predictor
from faceutil.errors import FaceUtilError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


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
    """Writes one image's results: <name>.json; per face <name>_face<k>.obj (vertex colours and texture
    coordinates), .mtl and _texture.png (the UV texture sampled from the photo, unseen parts black), _kpt.txt; and
    <name>_depth.png, <name>_overlay.jpg."""

    def __init__(self, out_dir, predictor: Predictor):
        from faceutil.mesh import ObjWriter

        self.out_dir = Path(out_dir)
        self.predictor = predictor
        self.obj = ObjWriter(predictor.geometry.triangles, uv=predictor.geometry.texture_uv)

    def write(self, name: str, source: str, image: np.ndarray, faces: list[FaceResult]) -> Path:
        from faceutil.mesh import sample_colors, uv_texture, write_landmarks, write_material
        from faceutil.sampleio import atomic_write_bytes, atomic_write_image

        h, w = image.shape[:2]
        geo = self.predictor.geometry
        tris = geo.triangles
        raster = render_faces(image, faces, tris)              # one z-buffer: faces may hide each other
        files = {}
        face_json = []
        for k, f in enumerate(faces):
            stem = f"{name}_face{k}"
            mesh_path, kpt_path = self.out_dir / f"{stem}.obj", self.out_dir / f"{stem}_kpt.txt"
            texture_path, mtl_path = self.out_dir / f"{stem}_texture.png", self.out_dir / f"{stem}.mtl"
            texture, visible = uv_texture(image, f.vertices, geo.face_mask, tris, depth=raster[2])
            atomic_write_image(texture_path, texture)
            write_material(mtl_path, texture_path.name)
            colors = sample_colors(image, f.vertices[:, :2])
            upright = f.vertices.copy()
            upright[:, 1] = (h + 1) - upright[:, 1]
            self.obj.write(mesh_path, upright, colors, material=mtl_path.name)
            write_landmarks(kpt_path, f.landmarks)
            seen = round(float(visible[geo.face_mask].mean()), 4)     # share of the face texture taken from the photo
            face_json.append({**f.to_json(), "mesh": mesh_path.name, "material": mtl_path.name,
                              "texture": texture_path.name, "texture_visible": seen, "landmarks_file": kpt_path.name})
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

    image = read_image(path, exif_orientation=True)           # landmarks in the orientation the user sees
    faces = predictor(image, boxes)
    if not faces:
        raise FaceUtilError(f"no face was found in {path} (pass --bbox=x1,y1,x2,y2 to give one)")
    json_path = writer.write(name, str(path), image, faces)
    return {"faces": len(faces), "json": str(json_path)}


#: consecutive undecodable frames after which a video is taken to end there
MAX_BAD_FRAMES = 25


def predict_video(predictor: Predictor, path: Path, out_dir: Path, name: str, boxes=None, smooth: float = 0.0,
                  redetect_every: int = 0) -> dict:
    """A video -> <name>_annotated.mp4 (mp4v; every frame with meshes and landmarks) and <name>.json (per-frame
    faces with their track id, landmarks and pose). Frames without a face are copied unannotated.

    redetect_every / smooth: inference.tracking.FaceTracker (0 / 0.0: every frame detected and predicted on its own,
    unsmoothed). A frame that cannot be decoded is skipped and named in the record; a video that ends before the
    frame count its header announces is noted there too; the good frames' outputs are complete either way.
    Returns faces / frames / fps / skipped-frame stats.
    """
    import cv2

    from inference.tracking import FaceTracker
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
    announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    h, w = frame.shape[:2]
    out_path = out_dir / f"{name}_annotated.mp4"
    tmp_path = out_dir / f".{name}_annotated.{time.time_ns()}.tmp.mp4"
    writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        cap.release()
        raise FaceUtilError(f"cannot write the annotated video {out_path} (OpenCV has no mp4v encoder)")
    tracker = FaceTracker(predictor, fps, smooth=smooth, redetect_every=redetect_every, boxes=boxes)
    index, with_face, records, skipped, bad_run = 0, 0, [], [], 0
    start = time.perf_counter()
    tris = predictor.geometry.triangles
    try:
        while True:
            if ok and frame is not None and frame.shape[:2] == (h, w):
                bad_run = 0
                rgb = np.ascontiguousarray(frame[..., ::-1])          # OpenCV decodes BGR
                found = tracker(rgb, index / fps)
                faces = [f for _, f in found]
                with_face += bool(faces)
                annotated = overlay_image(rgb, faces, tris) if faces else rgb
                writer.write(np.ascontiguousarray(annotated[..., ::-1]))
                records.append({"frame": index, "faces": [
                    {"track": ident, "box": [round(float(v), 3) for v in f.box], "crop_roll": round(f.roll, 3),
                     "landmarks_2d": np.round(f.landmarks_2d, 3).tolist(),
                     "landmarks_3d": np.round(f.landmarks, 3).tolist(), "pose": _pose_json(f)} for ident, f in found]})
            elif announced and index < announced and bad_run < MAX_BAD_FRAMES:
                skipped.append({"frame": index, "reason": "cannot be decoded" if not ok or frame is None
                                else f"size {frame.shape[1]}x{frame.shape[0]}, not {w}x{h}"})
                bad_run += 1
            else:
                break
            index += 1
            ok, frame = cap.read()
        seconds = time.perf_counter() - start
    finally:
        cap.release()
        writer.release()
    skipped = [s for s in skipped if s["frame"] < index - bad_run]      # a trailing run of bad frames is the end
    frames = len(records)
    try:
        tmp_path.replace(out_path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise FaceUtilError(f"cannot write the annotated video {out_path}: {err.strerror or err}") from None
    stats = {"frames": frames, "frames_with_face": with_face, "fps_source": fps,
             "fps_processed": frames / seconds if seconds > 0 else None, "skipped_frames": skipped,
             "frames_announced": announced or None,
             "ended_early": bool(announced and frames + len(skipped) < announced),
             "tracking": {"redetect_every": redetect_every, "smooth": smooth, "detector_runs": tracker.stats.detections,
                          "tracks_started": tracker.stats.started, "tracks_lost": tracker.stats.lost}}
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
                 say: Callable[[str], None] = print, smooth: float = 0.0, redetect_every: int = 0) -> PredictSummary:
    """The -predict job: an image, a video or a folder of them -> results in out_dir (+ summary.json).

    A bad item (unreadable, no face, not an image or video) is skipped with one sentence; the others are processed.
    smooth / redetect_every: video tracking and smoothing (predict_video).
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
                entry.update(predict_video(predictor, item, out_dir, name, boxes, smooth, redetect_every))
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
              "detector": "given boxes" if boxes is not None else predictor.detector_name,
              "processed": summary.processed, "skipped": len(summary.skipped), "seconds": round(summary.seconds, 3),
              "items": summary.items}
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return summary


def run_predict(config, checkpoint=None) -> PredictSummary:
    """CLI entry (-predict=PATH [--loadModelPath=CKPT|ONNX] [-o=DIR] [--bbox=...]): prints the summary; raises
    RunError (one sentence, non-zero exit) when nothing could be predicted. Without --loadModelPath the shipped network
    (engine.shipped) predicts; its absence or damage is one sentence too."""
    from inference.detectors import make_detector
    from engine.loading import model_spec
    from faceutil.detect import parse_boxes

    source = checkpoint or config.load_model_path
    if source is None:                              # the network that ships with the repository (engine.shipped)
        from engine.shipped import shipped_path

        source = shipped_path()
    boxes = parse_boxes(config.bbox) if getattr(config, "bbox", None) else None
    given = getattr(config, "given", ())
    name, kwargs = model_spec(config)              # used only for a bare state_dict, which records neither
    out = Path(config.out) if config.out else Path("predictions")
    # the detector is built before any file is read, so a missing package stops the run with one sentence
    detector = make_detector(config.detector, config.device) if boxes is None else config.detector
    predictor = Predictor(source, device=config.device, bfm=config.bfm if "bfm" in given else None,
                          model=name if "model" in given else None, model_kwargs=kwargs, export=config.export,
                          batch_size=config.batch_size, precision=config.precision,
                          channels_last=config.channels_last, compile=config.compile, any_roll=config.any_roll,
                          detector=detector)
    summary = predict_path(predictor, config.predict, out, boxes, progress=config.progress, smooth=config.smooth,
                           redetect_every=config.redetect_every)
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
