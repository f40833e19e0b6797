"""Dataset processing: raw 300W-LP / AFLW2000-3D samples (jpg + mat) -> 256x256 crops and UV position maps.

Owns the per-sample pipeline (read, build mesh, crop, render the position map, write) and the resumable,
multi-process, shardable batch job over a folder; processor.py is a thin command line over `process_dataset`.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from faceutil import crop, pose, sampleio
from faceutil.errors import FaceUtilError, SampleError
from faceutil.progress import progress as progress_bar

CROP_SIZE = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INDEX_HEADER = "name\tstatus\treason\n"
#: samples per worker task: their vertices are computed with one matrix product (the basis is read once per chunk)
CHUNK = 16


@dataclass(frozen=True)
class ProcessOptions:
    """What to write per sample and how to crop.

    full: also write the dense mesh (.obj with colours sampled from the image) and the 68 landmarks (.txt).
    visualize: also write a picture of the crop with the landmarks read back from the position map.
    old_kpt: crop from the annotated `pt3d_68` (AFLW2000-3D) and keep it in bbox_info for evaluation.
    seed: training-crop jitter is drawn from a generator seeded by (seed, sample name): reruns are identical.
    """

    bfm: str = "synthetic"
    full: bool = False
    visualize: bool = False
    old_kpt: bool = False
    seed: int = 0


@dataclass
class ProcessSummary:
    """Outcome of one `process_dataset` run; `skipped` holds (name, one-line reason) pairs."""

    processed: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"processed {self.processed}, already done {self.already_done}, skipped {len(self.skipped)} "
            f"in {self.seconds:.1f} s"
        ]
        out += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return out


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """Where the processor writes each file of sample `name` (DESIGN.md §3)."""
    d = Path(out_dir) / name
    return {
        "dir": d,
        "image": d / f"{name}_cropped.jpg",
        "posmap": d / f"{name}_cropped_uv_posmap.npy",
        "bbox_info": d / f"{name}_bbox_info.mat",
        "mesh": d / f"{name}_mesh.obj",
        "kpt": d / f"{name}_kpt.txt",
        "vis": d / f"{name}_vis.jpg",
    }


def find_samples(input_dir: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Image files under `input_dir` (recursively), each a sample named by its stem, sorted by name.

    Returns (samples, rejected): samples as (name, image path); rejected as (path relative to `input_dir`,
    reason) for a second image with an already-used name (its outputs would overwrite the first's) and for
    names holding a tab or line break (they would break index.tsv).
    """
    found: dict[str, Path] = {}
    rejected: list[tuple[str, str]] = []
    paths = sorted(p for p in Path(input_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for p in paths:
        rel = p.relative_to(input_dir).as_posix()
        if any(c in p.stem for c in "\t\n\r"):
            rejected.append((rel.encode("unicode_escape").decode(), "the file name holds a tab or line break"))
        elif p.stem in found:
            rejected.append((rel, f"duplicate sample name: {p} and {found[p.stem]} would share one output folder"))
        else:
            found[p.stem] = p
    return sorted(found.items()), rejected


def is_done(paths: dict[str, Path], options: ProcessOptions) -> bool:
    """A sample is finished when every file it needs exists (each is renamed into place only when complete)."""
    need = ["image", "posmap", "bbox_info"] + (["mesh", "kpt"] if options.full else []) + (
        ["vis"] if options.visualize else [])
    return all(paths[k].is_file() for k in need)


class SampleProcessor:
    """Holds the morphable model and its UV renderer (built once per process) and processes samples."""

    def __init__(self, options: ProcessOptions):
        from faceutil.facemodel import load_model
        from faceutil.uv import UVRenderer, uv_layout

        self.options = options
        self.model = load_model(options.bfm, seed=0)
        self.layout = uv_layout(options.bfm, CROP_SIZE)
        self.uv = UVRenderer(self.model, CROP_SIZE)
        self._obj = None
        #: seconds spent per stage, accumulated when set to a dict (benchmarks/processor.py); None = not timed
        self.timings: dict[str, float] | None = None

    @contextmanager
    def _stage(self, name: str):
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # -- reading -------------------------------------------------------------------------------------------------
    def _read(self, name: str, image_path: Path):
        mat_path = image_path.with_suffix(".mat")
        if not mat_path.is_file():
            raise SampleError(f"{mat_path} is missing (every image needs its .mat beside it)")
        sample = sampleio.read_sample_mat(mat_path, n_shape=self.model.n_shape, n_exp=self.model.n_exp)
        image = sampleio.read_image(image_path)
        return sample, image

    # -- the pipeline --------------------------------------------------------------------------------------------
    def process_chunk(self, items: list[tuple[str, Path]], out_dir: Path) -> list[tuple[str, str, str]]:
        """Process samples; returns (name, status, reason) per item, status "ok" or "skipped"."""
        results: list[tuple[str, str, str]] = []
        loaded = []
        for name, image_path in items:
            try:
                with self._stage("load"):
                    loaded.append((name, *self._read(name, image_path)))
            except FaceUtilError as err:
                results.append((name, "skipped", str(err)))
        if not loaded:
            return results
        with self._stage("mesh"):
            # always CHUNK rows (zero-padded): BLAS rounds a lone matrix-vector product differently from a matrix
            # product, and a sample's bytes must not depend on which chunk a resumed run puts it in. One BLAS
            # thread for the same reason: OpenBLAS rounds this product differently with 1 and 2 threads, so the
            # bytes would depend on --thread (workers run one BLAS thread) and on the machine's core count.
            rows = max(CHUNK, len(loaded))
            shapes = np.zeros((rows, self.model.n_shape), np.float32)
            exps = np.zeros((rows, self.model.n_exp), np.float32)
            for k, (_, smp, _) in enumerate(loaded):
                shapes[k, : smp.shape_para.size] = smp.shape_para
                exps[k, : smp.exp_para.size] = smp.exp_para
            with threadpool_limits(1, user_api="blas"):
                verts = self.model.vertices_batch(shapes, exps)
        for (name, sample, image), v in zip(loaded, verts):
            try:
                self._process_one(name, sample, image, v, out_dir)
                results.append((name, "ok", ""))
            except FaceUtilError as err:
                results.append((name, "skipped", str(err)))
        return results

    def _process_one(self, name, sample, image, model_vertices, out_dir: Path) -> None:
        opts = self.options
        h, w = image.shape[:2]
        with self._stage("mesh"):
            verts = pose.project(model_vertices, sample.pose_para, h)  # (n, 3) original image px
            kpt = verts[self.model.kpt_ind]
        inside = (kpt[:, 0] >= 0) & (kpt[:, 0] <= w - 1) & (kpt[:, 1] >= 0) & (kpt[:, 1] <= h - 1)
        if inside.mean() < 0.5:
            raise SampleError(f"{name}: the face lies outside the {w}x{h} image ({int(inside.sum())}/68 landmarks inside)")
        annotated = sample.pt3d_68 is not None
        box_points = sample.pt3d_68 if (opts.old_kpt and annotated) else kpt
        # Evaluation-style samples (AFLW2000-3D, which carry pt3d_68) are never jittered.
        rng = None if annotated else np.random.default_rng([opts.seed, zlib.crc32(name.encode())])
        with self._stage("crop+warp"):
            sim = crop.crop_similarity(box_points[:, :2], out_size=CROP_SIZE, rng=rng)
            crop_verts = sim.apply(verts)
            z_shift = float(crop_verts[:, 2].min())
            crop_verts[:, 2] -= z_shift
            cropped = sim.warp_image(image, CROP_SIZE)
        with self._stage("uv render"):
            posmap = self.uv.posmap(crop_verts)

        paths = output_paths(out_dir, name)
        paths["dir"].mkdir(parents=True, exist_ok=True)
        info = {"matrix": sim.matrix, "scale": sim.scale, "z_shift": z_shift, "image_size": np.array([h, w]),
                "pose_para": sample.pose_para, "kpt": kpt}
        if annotated:
            info["pt3d_68"] = sample.pt3d_68
        if opts.full:
            with self._stage("mesh export (-f)"):
                self._write_full(paths, image, verts, kpt, h)
        if opts.visualize:
            with self._stage("visualisation (-v)"):
                sampleio.atomic_write_image(paths["vis"], visualize(cropped, posmap, self.layout.kpt_ind))
        with self._stage("write"):
            sampleio.atomic_write_image(paths["image"], cropped)
            sampleio.atomic_save_npy(paths["posmap"], posmap)
            sampleio.write_bbox_info(paths["bbox_info"], info)  # written last: its presence marks the sample done

    def _write_full(self, paths, image, verts, kpt, height: int) -> None:
        """The dense mesh (.obj, y up so viewers show it upright: y_obj = H + 1 - row) and the 68 landmarks
        (.txt, original image px: x, row, z)."""
        from faceutil import mesh

        if self._obj is None:
            self._obj = mesh.ObjWriter(self.model.triangles)
        colors = mesh.sample_colors(image, verts[:, :2])
        upright = verts.copy()
        upright[:, 1] = height + 1 - upright[:, 1]
        self._obj.write(paths["mesh"], upright, colors)
        mesh.write_landmarks(paths["kpt"], kpt)


def visualize(cropped: np.ndarray, posmap: np.ndarray, kpt_ind: np.ndarray) -> np.ndarray:
    """Crop with the 68 landmarks read back from the position map, beside the map's depth channel.

    Returns (256, 512, 3) uint8 RGB.
    """
    import cv2

    from faceutil.uv import posmap_landmarks

    canvas = np.ascontiguousarray(cropped.copy())
    for x, y, _ in posmap_landmarks(posmap, kpt_ind):
        cv2.circle(canvas, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    depth = posmap[..., 2]
    depth = (255 * depth / max(float(depth.max()), 1e-6)).astype(np.uint8)
    return np.concatenate([canvas, np.repeat(depth[..., None], 3, axis=2)], axis=1)


# -- the batch job ---------------------------------------------------------------------------------------------------
_WORKER: SampleProcessor | None = None


def _init_worker(options: ProcessOptions) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if _WORKER is None or _WORKER.options != options:
        _WORKER = SampleProcessor(options)


def _run_chunk(args) -> list[tuple[str, str, str]]:
    items, out_dir = args
    return _WORKER.process_chunk(items, out_dir)


def _index_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    """index.tsv, or one index per shard so machines sharing an output folder never overwrite each other's."""
    i, n = shard
    return out_dir / ("index.tsv" if n == 1 else f"index.shard{i}of{n}.tsv")


def _write_index(out_dir: Path, shard: tuple[int, int], rows: dict[str, tuple[str, str]]) -> Path:
    path = _index_path(out_dir, shard)
    text = INDEX_HEADER + "".join(f"{k}\t{s}\t{r}\n" for k, (s, r) in sorted(rows.items()))
    sampleio.atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _read_index_rows(path: Path) -> dict[str, tuple[str, str]]:
    rows = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) == 3:
                rows[parts[0]] = (parts[1], parts[2])
    return rows


def process_dataset(input_dir, output_dir, *, bfm: str = "synthetic", full: bool = False, visualize: bool = False,
                    old_kpt: bool = False, threads: int = 1, shard: tuple[int, int] = (0, 1), seed: int = 0,
                    progress: bool = True) -> ProcessSummary:
    """Process every sample under `input_dir` into `output_dir`; resumable, never stops on a bad sample.

    Finished samples (all outputs present) are skipped, so a rerun after an interruption completes the rest.
    With `shard=(i, n)` only every n-th sample from the i-th (in name order) is processed, so n machines can
    split one dataset. Raises FaceUtilError (one sentence) when the whole run cannot proceed: missing or empty
    input folder, unwritable output folder, unusable morphable model.
    """
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FaceUtilError(f"input folder {input_dir} does not exist")
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise FaceUtilError(f"shard {i}/{n} is not valid: use i/n with 0 <= i < n")
    samples, rejected = find_samples(input_dir)
    if not samples:
        raise FaceUtilError(f"input folder {input_dir} holds no images (.jpg, .jpeg, .png)")
    samples = samples[i::n]
    options = ProcessOptions(bfm=bfm, full=full, visualize=visualize, old_kpt=old_kpt, seed=seed)
    _init_worker(options)  # load the face model first: a bad --bfm fails before anything is written
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FaceUtilError(f"output folder {output_dir} is not writable ({err.strerror})") from None
    from faceutil.uv import write_face_model_record

    write_face_model_record(output_dir, bfm, _WORKER.layout)    # refuses a folder of another UV layout

    rejected = rejected if i == 0 else []  # reported once, by the first shard
    summary = ProcessSummary(skipped=list(rejected))
    rows = {k: v for k, v in _read_index_rows(_index_path(output_dir, shard)).items() if v[0] == "ok"}
    rows.update({name: ("skipped", reason) for name, reason in rejected})
    todo = []
    for name, image_path in samples:
        if is_done(output_paths(output_dir, name), options):
            summary.already_done += 1
            rows[name] = ("ok", "")
        else:
            todo.append((name, image_path))
    # a hard kill can leave hidden temp files (never partial outputs); clear those of unfinished samples
    stale = [p for name, _ in todo for p in output_paths(output_dir, name)["dir"].glob(".*.tmp")]
    for p in stale + list(output_dir.glob(".index*.tmp")):
        p.unlink(missing_ok=True)
    chunks = [(todo[k:k + CHUNK], output_dir) for k in range(0, len(todo), CHUNK)]

    def collect(results):
        for name, status, reason in results:
            rows[name] = (status, reason)
            if status == "ok":
                summary.processed += 1
            else:
                summary.skipped.append((name, reason))

    bar = progress_bar(total=len(todo), desc="processing", unit="img", enabled=progress)
    try:
        if threads <= 1 or len(chunks) <= 1:
            for c in chunks:
                res = _run_chunk(c)
                collect(res)
                bar.update(len(res))
        else:
            # forked workers share the model built above copy-on-write; spawned ones build their own
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(threads, initializer=_init_worker, initargs=(options,)) as pool:
                for res in pool.imap_unordered(_run_chunk, chunks):
                    collect(res)
                    bar.update(len(res))
    finally:
        bar.close()
        _write_index(output_dir, shard, rows)
    summary.seconds = time.perf_counter() - start
    return summary
