"""Benchmark of prediction on CPU: per-image network latency at batch 1 for torch eager (equivariant encoder), torch
with the exported encoder, and onnxruntime, for E2TKFace and PRNet; and frames per second of the -predict video path.

Randomly initialised full-size models (latency does not depend on the weights). Each variant: warm-up calls, then the
median of --repeats timed calls on the same (1, 3, 256, 256) input; torch and onnxruntime get the same thread count.
The video: --frames frames of the public-domain astronaut photo (../shared/data) moved a few pixels per frame,
Haar detection on every frame, through engine.predict.predict_video (crop, network, geometry, overlay, mp4v writing).
Usage: python benchmarks/predict.py [--repeats 10] [--threads 2,1] [--frames 16] [--out benchmarks/results/predict.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ASTRONAUT = ROOT.parent / "shared" / "data" / "photos" / "skimage_astronaut.png"


def _interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each function, timed round-robin (one call of each per round) so that the load of
    a shared machine, which drifts over minutes, weighs on every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def calibrated(net):
    """BatchNorm running statistics from one random batch, so a random-init net gives O(1) outputs (otherwise they
    are ~1e-7 and the onnx-vs-torch difference below would mean nothing). Returns the net in eval mode."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(7)))
    return net.eval()


def latency_rows(repeats: int, threads: int, work: Path) -> list[dict]:
    import onnxruntime as ort
    import torch

    from engine.export import export_onnx
    from model import build_model

    torch.set_num_threads(threads)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in ("e2tkface", "prnet"):
        torch.manual_seed(0)
        net = calibrated(build_model(name))
        exported = net.export().eval()
        path = work / f"{name}.onnx"
        if path.is_file():                             # same seed-0 network, exported for an earlier thread count
            meta = dict(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map)
        else:
            meta = export_onnx(net, path, name, {}, bfm="synthetic")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        xn = x.numpy()

        def eager():
            with torch.inference_mode():
                net(x)

        def plain():
            with torch.inference_mode():
                exported(x)

        def run_onnx():
            session.run(None, {"image": xn})

        with torch.inference_mode():
            diff = float(np.abs(session.run(None, {"image": xn})[0] - net(x).numpy()).max())
        load = os.getloadavg()[0]
        med = _interleaved_medians({"eager": eager, "plain": plain, "onnx": run_onnx}, repeats)
        t_eager, t_plain, t_onnx = med["eager"], med["plain"], med["onnx"]
        rows.append({"model": name, "eager": t_eager, "exported": t_plain, "onnx": t_onnx, "batch": meta["batch"],
                     "diff": diff, "load": (load + os.getloadavg()[0]) / 2})
        print(f"{name}: eager {t_eager * 1e3:.1f} ms, exported {t_plain * 1e3:.1f} ms, onnxruntime "
              f"{t_onnx * 1e3:.1f} ms (max |onnx - torch| {diff:.2e})", flush=True)
    return rows


def video_rows(frames: int, threads: int, work: Path, rounds: int = 2) -> list[dict]:
    import cv2
    import torch

    from engine.export import export_onnx
    from engine.predict import Predictor, predict_video
    from faceutil.sampleio import read_image
    from model import build_model

    torch.set_num_threads(threads)
    image = read_image(ASTRONAUT)
    video = work / "astronaut.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (image.shape[1], image.shape[0]))
    for k in range(frames):
        shifted = np.roll(image, (2 * (k % 5), 3 * (k % 7)), axis=(0, 1))
        writer.write(np.ascontiguousarray(shifted[..., ::-1]))
    writer.release()
    rows = []
    torch.manual_seed(0)
    net = calibrated(build_model("e2tkface"))
    onnx_path = work / "e2tkface.onnx"                  # the same seed-0 network, if latency_rows exported it
    if not onnx_path.is_file():
        export_onnx(net, onnx_path, "e2tkface", {}, bfm="synthetic")
    predictors = {"onnxruntime": Predictor(onnx_path, device="cpu", bfm="synthetic"),
                  "torch exported encoder": Predictor(net, device="cpu", bfm="synthetic")}
    fps = {k: [] for k in predictors}
    for k, predictor in predictors.items():
        predict_video(predictor, video, work, "warm", None)             # caches, numba, first-call costs
    for round_ in range(rounds):                                         # alternate: shared-machine load drifts
        for k, predictor in predictors.items():
            t = time.perf_counter()
            stats = predict_video(predictor, video, work, f"clip_{round_}", None)
            fps[k].append(stats["frames"] / (time.perf_counter() - t))
    for k in predictors:
        rows.append({"variant": k, "frames": stats["frames"], "with_face": stats["frames_with_face"],
                     "fps": float(np.median(fps[k])), "size": f"{image.shape[1]}x{image.shape[0]}", "rounds": rounds})
        print(f"video {k}: {rows[-1]['fps']:.2f} frames/s (median of {rounds} runs; {stats['frames_with_face']}/"
              f"{stats['frames']} frames with a face)", flush=True)
    return rows


def write_markdown(path: Path, lat: list[dict], vid: list[dict], args, started: str, loads) -> None:
    import onnxruntime
    import torch

    lines = ["# Prediction speed (CPU)", "",
             f"Command: `python benchmarks/predict.py --repeats {args.repeats} --threads {args.threads} "
             f"--frames {args.frames}` (from the repository root)",
             f"Machine: {platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores visible; torch "
             f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; the same number of threads for torch and "
             f"onnxruntime in every row.",
             f"Date: {started} to {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC. "
             f"1-min load average {loads[0]:.1f} at start, {loads[1]:.1f} at end: the machine was shared with other "
             "jobs, so absolute times are inflated and noisy; ratios within a row were measured back to back.",
             "", "Randomly initialised full-size networks (speed does not depend on the weights; BatchNorm statistics "
             "set from one random batch so outputs are O(1) and the ONNX difference is meaningful). Median of "
             f"{args.repeats} calls after 2 warm-up calls, the three variants timed round-robin, batch 1, input "
             "(1, 3, 256, 256).", "",
             "## Network latency per image, batch 1", "",
             "| model | threads | torch eager (equivariant encoder) | torch, exported encoder | onnxruntime | "
             "onnxruntime speed-up vs eager | ONNX batch axis | max abs diff onnx vs eager (posmap / 280) |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in lat:
        lines.append(f"| {r['model']} | {r['threads']} | {r['eager'] * 1e3:.1f} ms | {r['exported'] * 1e3:.1f} ms | "
                     f"{r['onnx'] * 1e3:.1f} ms | {r['eager'] / r['onnx']:.2f}x | {r['batch']} | {r['diff']:.1e} |")
    lines += ["", "PRNet has no equivariant part: its eager and exported rows are the same network.", "",
              "## Video path (-predict on a video)", "",
              f"{vid[0]['frames'] if vid else 0} frames of the astronaut photo ({vid[0]['size'] if vid else ''}), "
              "Haar detection on every frame, E2TKFace crop -> network -> landmarks, pose fit, shaded-mesh overlay, "
              "mp4v encoding (engine.predict.predict_video); median of 2 runs per variant, alternating.", "",
              "| network runs on | threads | frames/s | frames with a face |", "|---|---:|---:|---:|"]
    for r in vid:
        lines.append(f"| {r['variant']} | {r['threads']} | {r['fps']:.2f} | {r['with_face']}/{r['frames']} |")
    lines += ["", "## Reading", "",
              "- Equivariant vs exported encoder: in eval mode the e2cnn encoder caches its expanded filters, so eager "
              "E2TKFace already runs plain convolutions; export() removes the e2cnn wrappers but gains little at "
              "batch 1 (compare the two torch columns).",
              "- torch vs onnxruntime (2026-11-25 runs on this machine): with one thread each they were within "
              "about 10 % (both run the convolutions with optimised CPU kernels). With two threads on a machine whose other jobs keep both cores busy, "
              "torch's OpenMP thread pool slows down many times over (its threads wait for each other at every "
              "layer) while onnxruntime's degrades gently; that, not faster arithmetic, is where a large "
              "onnxruntime speed-up in a multi-thread row comes from. On a busy machine run torch with "
              "torch.set_num_threads(1), or use the .onnx file.",
              "- The 2x target for onnxruntime over eager E2TKFace is met only in the contended multi-thread rows; "
              "like for like (one thread) it is not: a further 2x would need e.g. int8 quantisation of the "
              "(transposed) convolutions, not measured here.",
              "- ONNX batch axis: engine.export checks with onnxruntime that a batch of 2 gives the two batch-1 "
              "results; a graph with a baked-in batch size would be saved with a fixed batch of 1 (\"1\" above) and "
              "fed one face at a time."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=str, default="2,1",
                        help="comma-separated thread counts (each gives latency and video rows)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.md")
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    load0 = os.getloadavg()[0]
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    lat = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in threads:
            lat += [dict(r, threads=n) for r in latency_rows(args.repeats, n, Path(tmp))]
        vid = []
        for n in threads if ASTRONAUT.is_file() else []:
            vid += [dict(r, threads=n) for r in video_rows(args.frames, n, Path(tmp))]
    write_markdown(args.out, lat, vid, args, started, (load0, os.getloadavg()[0]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
