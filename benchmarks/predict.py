"""Benchmark of prediction on CPU: per-image network latency at batch 1 for torch eager (equivariant encoder), torch
with the export twin (plain encoder, BatchNorm folded), the export twin with bf16 weights (-predict --precision=bf16),
onnxruntime fp32 (-export=onnx) and onnxruntime int8 (-export=onnx-int8), for E2TKFace and PRNet; frames per second
of the -predict video path; optionally (--checkpoint, --test-dir, --calibration-dir) how far bf16 and int8 move the
landmarks of a trained checkpoint.

Randomly initialised full-size models (latency does not depend on the weights; the int8 graphs are calibrated on 4
random images, which sets their ranges but not their speed). Each variant: warm-up calls, then the median of
--repeats timed calls on the same (1, 3, 256, 256) input, round-robin; torch and onnxruntime get the same thread
count. The video: --frames frames of the public-domain astronaut photo (../shared/data) moved a few pixels per frame,
Haar detection on every frame, through inference.predict_job.predict_video (crop, network, geometry, overlay, mp4v
writing).
Usage: python benchmarks/predict.py [--repeats 10] [--threads 2,1] [--frames 16] [--out benchmarks/results/predict.md]
                                  [--checkpoint CKPT --test-dir AFLW2000_FOLDER --calibration-dir TRAIN_FOLDER]
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
    """BatchNorm running statistics from one random batch, so a random-init net gives O(1) outputs (otherwise
    BatchNorm's initial statistics shrink every layer to ~1e-7 and any torch-vs-onnx agreement would be vacuous).
    Returns the net in eval mode."""
    import torch
    from torch.optim.swa_utils import update_bn

    with torch.no_grad():
        update_bn([torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(7))], net)
    return net.eval()


def random_crops(count: int) -> list[np.ndarray]:
    """``count`` random (3, 256, 256) float32 images in [0, 1] (calibration for the speed runs' int8 graphs)."""
    rng = np.random.default_rng(3)
    return [rng.random((3, 256, 256), dtype=np.float32) for _ in range(count)]


def latency_rows(repeats: int, threads: int, work: Path) -> list[dict]:
    import onnxruntime as ort
    import torch

    from inference.export import export_onnx
    from inference.backends import TorchBackend
    from model import build_model, summary

    torch.set_num_threads(threads)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in ("e2tkface", "prnet"):
        torch.manual_seed(0)
        net = calibrated(build_model(name))
        exported = net.export().eval()
        low = TorchBackend(exported, "cpu", "bf16", channels_last=True)     # -predict --precision=bf16
        path, path8 = work / f"{name}.onnx", work / f"{name}-int8.onnx"
        if path.is_file():                             # same seed-0 network, exported for an earlier thread count
            meta = dict(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map)
        else:
            meta = export_onnx(net, path, name, {}, bfm="synthetic")
            export_onnx(net, path8, name, {}, bfm="synthetic", calibration=random_crops(4))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        session8 = ort.InferenceSession(str(path8), sess_options=options, providers=["CPUExecutionProvider"])
        xn = x.numpy()

        def eager():
            with torch.inference_mode():
                net(x)

        def plain():
            with torch.inference_mode():
                exported(x)

        def run_onnx():
            session.run(None, {"image": xn})

        def run_int8():
            session8.run(None, {"image": xn})

        def run_bf16():
            low(xn)

        with torch.inference_mode():
            diff = float(np.abs(session.run(None, {"image": xn})[0] - net(x).numpy()).max())
        load = os.getloadavg()[0]
        med = _interleaved_medians({"eager": eager, "plain": plain, "bf16": run_bf16, "onnx": run_onnx,
                                    "int8": run_int8}, repeats)
        rows.append({"model": name, **med, "exported": med["plain"], "batch": meta["batch"], "diff": diff,
                     "load": (load + os.getloadavg()[0]) / 2, "gmac": summary(net).macs / 1e9})
        print(f"{name}: eager {med['eager'] * 1e3:.1f} ms, export twin {med['plain'] * 1e3:.1f} ms, bf16 weights "
              f"{med['bf16'] * 1e3:.1f} ms, onnxruntime {med['onnx'] * 1e3:.1f} ms, onnxruntime int8 "
              f"{med['int8'] * 1e3:.1f} ms (max |onnx - torch| {diff:.2e})", flush=True)
    return rows


def video_rows(frames: int, threads: int, work: Path, checkpoint: Path | None = None,
               calibration_dir: Path | None = None, rounds: int = 2) -> list[dict]:
    """Frames per second of predict_video for the fp32 and int8 ONNX files and the torch export twin of the
    --checkpoint network when given (int8 calibrated on calibration_dir), else of a random full-size E2TKFace. The
    overlay rasterises the predicted mesh, so its cost depends on the output: a random network's int8 twin (a
    different chaotic mesh of huge triangles) rendered 40x slower than its fp32 twin in a 2026-11-25 trial."""
    import cv2
    import torch

    from inference.export import calibration_crops, export_onnx
    from engine.loading import load_network
    from inference.predict import Predictor
    from inference.predict_job import predict_video
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
    if checkpoint is not None:         # a trained network: a random one's chaotic mesh makes the overlays slow
        loaded = load_network(checkpoint)
        net, name, kwargs = loaded.module, loaded.name, loaded.kwargs
        crops = calibration_crops(calibration_dir) if calibration_dir is not None else random_crops(4)
        onnx_path, int8_path = work / "video.onnx", work / "video-int8.onnx"
        export_onnx(net, onnx_path, name, kwargs)
        export_onnx(net, int8_path, name, kwargs, calibration=crops)
    else:
        torch.manual_seed(0)
        net = calibrated(build_model("e2tkface"))
        onnx_path, int8_path = work / "e2tkface.onnx", work / "e2tkface-int8.onnx"   # latency_rows' files
        if not onnx_path.is_file():
            export_onnx(net, onnx_path, "e2tkface", {}, bfm="synthetic")
            export_onnx(net, int8_path, "e2tkface", {}, bfm="synthetic", calibration=random_crops(4))
    # the Haar cascade, as when the committed figures were measured (the detector's cost is the same in every row)
    predictors = {"onnxruntime": Predictor(onnx_path, device="cpu", bfm="synthetic", detector="haar"),
                  "onnxruntime int8": Predictor(int8_path, device="cpu", bfm="synthetic", detector="haar"),
                  "torch export twin": Predictor(net, device="cpu", bfm="synthetic", detector="haar")}
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


def precision_rows(checkpoint: Path, test_dir: Path, calibration_dir: Path | None, threads: int, work: Path) -> dict:
    """fp32 against bf16 (-predict --precision=bf16) and, given calibration_dir, against the int8 onnxruntime graph
    (-export=onnx-int8 calibrated on that folder) for a trained checkpoint over an AFLW2000-format folder: 68-point
    2D NME against the truth for each, and how far each moves the landmarks (px, and in % of the NME normaliser)."""
    import torch

    from data.dataset import AFLWEvalSet
    from inference.backends import BackendModule
    from engine.evaluate import evaluate_model
    from inference.export import calibration_crops, export_onnx
    from engine.loading import load_network
    from inference.predict import Predictor

    torch.set_num_threads(threads)
    ref = Predictor(checkpoint, device="cpu")
    variants = {"fp32": ref, "bf16": Predictor(checkpoint, device="cpu", precision="bf16", channels_last=True)}
    if calibration_dir is not None:
        path = work / "checkpoint-int8.onnx"
        loaded = load_network(checkpoint)
        export_onnx(loaded.module, path, loaded.name, loaded.kwargs, calibration=calibration_crops(calibration_dir))
        variants["int8"] = Predictor(path, device="cpu")
    data = AFLWEvalSet(test_dir)
    kpt = ref.geometry.kpt_ind
    reports = {k: evaluate_model(BackendModule(p.backend), data, kpt, None, batch_size=1) for k, p in variants.items()}
    pred = {k: r.landmarks[..., :2] for k, r in reports.items()}
    gt = reports["fp32"].truth[..., :2]
    norm = np.sqrt(np.prod(np.ptp(gt, axis=1), axis=-1))                     # the NME normaliser per image
    a = pred["fp32"]
    rows = []
    for key in variants:
        b = pred[key]
        move = np.linalg.norm(a - b, axis=-1)                               # (N, 68) px
        per_image = 100.0 * move.mean(axis=1) / norm
        rows.append({"variant": key, "nme": float(reports[key].nme2d.mean()),
                     "move_median_px": float(np.median(move)), "move_p95_px": float(np.percentile(move, 95)),
                     "move_max_px": float(move.max()), "move_nme_median": float(np.median(per_image)),
                     "move_nme_p95": float(np.percentile(per_image, 95)), "move_nme_max": float(per_image.max())})
    return {"checkpoint": str(checkpoint), "test_dir": str(test_dir), "images": len(gt),
            "calibration_dir": str(calibration_dir) if calibration_dir else None,
            "model": f"{ref.model_name} {ref.model_kwargs}", "rows": rows}


def write_markdown(path: Path, lat: list[dict], vid: list[dict], args, started: str, loads,
                   prec: dict | None = None) -> None:
    import onnxruntime
    import torch

    lines = ["# Prediction speed (CPU)", "",
             f"Command: `python benchmarks/predict.py {' '.join(sys.argv[1:])}` (from the repository root)",
             f"Machine: {platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores visible; torch "
             f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; the same number of threads for torch and "
             f"onnxruntime in every row.",
             f"Date: {started} to {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC. "
             f"1-min load average {loads[0]:.1f} at start, {loads[1]:.1f} at end (this benchmark itself adds up to "
             f"the thread count); the host is a shared VM, so absolute times scatter from run to run; ratios within "
             "a row were measured back to back.",
             "", "Randomly initialised full-size networks (speed does not depend on the weights; BatchNorm statistics "
             "set from one random batch so outputs are O(1) and the ONNX difference is meaningful). Median of "
             f"{args.repeats} calls after 2 warm-up calls, the five variants timed round-robin, batch 1, input "
             "(1, 3, 256, 256). Export twin = model.export() (E2TKFace: encoder as plain convolutions; both: "
             "BatchNorm folded into the convolutions). bf16 = the export twin with its weights cast to bfloat16 once, "
             "channels_last, as `-predict --precision=bf16` runs it. onnxruntime = the -export=onnx file (that twin, "
             "stride-1 transposed convolutions as convolutions); onnxruntime int8 = the -export=onnx-int8 file "
             "(Conv, MatMul and the ReLUs between them int8 except in the last six decoder layers; calibrated here "
             "on 4 random images, which sets its ranges, not its speed).", "",
             "## Network latency per image, batch 1", "",
             "| model | threads | torch eager (equivariant encoder) | torch export twin | torch export twin, bf16 | "
             "onnxruntime | onnxruntime int8 | speed-up vs eager: onnxruntime | onnxruntime int8 | bf16 | "
             "ONNX batch axis | max abs diff onnx vs eager (posmap / 280) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in lat:
        lines.append(f"| {r['model']} | {r['threads']} | {r['eager'] * 1e3:.1f} ms | {r['exported'] * 1e3:.1f} ms | "
                     f"{r['bf16'] * 1e3:.1f} ms | {r['onnx'] * 1e3:.1f} ms | {r['int8'] * 1e3:.1f} ms | "
                     f"{r['eager'] / r['onnx']:.2f}x | {r['eager'] / r['int8']:.2f}x | {r['eager'] / r['bf16']:.2f}x | "
                     f"{r['batch']} | {r['diff']:.1e} |")
    lines += ["", "Arithmetic rate of each run (2 x multiply-accumulates of the network per image / latency, GFLOP/s; "
              "for int8, operations per second of the same count): a precision's ceiling shows as torch and "
              "onnxruntime landing at about the same rate.", "",
              "| model | threads | GMAC/image | eager | export twin | bf16 | onnxruntime | onnxruntime int8 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lat:
        rate = [f"{2 * r['gmac'] / r[k]:.0f}" for k in ("eager", "exported", "bf16", "onnx", "int8")]
        lines.append(f"| {r['model']} | {r['threads']} | {r['gmac']:.2f} | " + " | ".join(rate) + " |")
    lines += ["", "PRNet has no equivariant part: its eager and export-twin columns differ only by the folded "
              "BatchNorms.", ""]
    if prec:
        fp32 = prec["rows"][0]["nme"]
        lines += ["## Reduced precision on a trained checkpoint", "",
                  f"`{prec['model']}` from `{prec['checkpoint']}`, {prec['images']} images of `{prec['test_dir']}`, "
                  "each crop run through the fp32 torch predictor and each reduced-precision one, landmarks read from "
                  "the position map and mapped back to the image; shifts are against fp32."
                  + (f" int8 = -export=onnx-int8 calibrated on `{prec['calibration_dir']}`."
                     if prec["calibration_dir"] else "")
                  + (f" This checkpoint is far from converged (fp32 NME {fp32:.1f} %), so these shifts only bound "
                     "what a converged model would see; re-run with one." if fp32 > 10 else ""), "",
                  "| variant | 2D NME | landmark shift vs fp32: median | 95th percentile | max | per-image mean "
                  "shift / NME normaliser: median | 95th percentile | max |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in prec["rows"]:
            lines.append(f"| {r['variant']} | {r['nme']:.3f} % | {r['move_median_px']:.2f} px | "
                         f"{r['move_p95_px']:.2f} px | {r['move_max_px']:.1f} px | {r['move_nme_median']:.3f} % | "
                         f"{r['move_nme_p95']:.3f} % | {r['move_nme_max']:.2f} % |")
        lines.append("")
    lines += [
              "## Video path (-predict on a video)", "",
              f"{vid[0]['frames'] if vid else 0} frames of the astronaut photo ({vid[0]['size'] if vid else ''}), "
              "Haar detection on every frame, E2TKFace crop -> network -> landmarks, pose fit, shaded-mesh overlay, "
              "mp4v encoding (inference.predict_job.predict_video); median of 2 runs per variant, alternating. "
              "Network: "
              + (f"the --checkpoint one (`{args.checkpoint}`)" if args.checkpoint else "random full-size E2TKFace")
              + ".", "",
              "| network runs on | threads | frames/s | frames with a face |", "|---|---:|---:|---:|"]
    for r in vid:
        lines.append(f"| {r['variant']} | {r['threads']} | {r['fps']:.2f} | {r['with_face']}/{r['frames']} |")
    lines += ["", "## Reading (from the numbers above)", ""]
    for r in (r for r in lat if r["model"] == "e2tkface"):
        speed, speed8 = r["eager"] / r["onnx"], r["eager"] / r["int8"]
        lines.append(f"- E2TKFace, {r['threads']} thread(s): onnxruntime fp32 {speed:.2f}x eager (target 2x: "
                     f"{'met' if speed >= 2 else 'not met'}); onnxruntime int8 {speed8:.2f}x ("
                     f"{'reaches' if speed8 >= 2 else 'below'} 2x, with the accuracy cost below); the bf16 torch "
                     f"export twin {r['eager'] / r['bf16']:.2f}x; onnxruntime fp32 vs the fp32 torch export twin "
                     f"{r['exported'] / r['onnx']:.2f}x.")
    for r in (prec["rows"][1:] if prec else []):
        lines.append(f"- {r['variant']} on the trained checkpoint: landmarks {r['move_median_px']:.2f} px from fp32's "
                     f"(median; {r['move_nme_median']:.2f} % of the NME normaliser per image), 2D NME "
                     f"{prec['rows'][0]['nme']:.2f} -> {r['nme']:.2f} %.")
    if prec:
        lines.append("- On this weak checkpoint these shifts hardly change the NME (its own error is far larger); on a "
                     "converged model a shift of that size would be of the order of the differences papers report. "
                     "Judge a reduced-precision path on a converged checkpoint before quoting NME from it.")
    lines += ["- fp32 onnxruntime runs the same arithmetic as the torch export twin and lands near the same GFLOP/s "
              "(table above): beyond what the export twin already gains (no e2cnn wrappers, folded BatchNorm, "
              "stride-1 transposed convolutions as convolutions) a further 2x needs lower precision. onnxruntime has "
              "no bf16 convolutions on CPU; its int8 kernels (QLinearConv, VNNI) cover ordinary convolutions only, "
              "which is why the int8 export rewrites the transposed convolutions (model.decoder.TransposedAsConv).",
              "- ONNX batch axis: inference.export checks with onnxruntime that a batch of 2 gives the two batch-1 "
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
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint for the reduced-precision section")
    parser.add_argument("--test-dir", type=Path, help="AFLW2000-format folder for --checkpoint")
    parser.add_argument("--calibration-dir", type=Path, help="processor output folder (the checkpoint's training "
                                                             "set) to calibrate the int8 export of --checkpoint on")
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
            vid += [dict(r, threads=n) for r in video_rows(args.frames, n, Path(tmp), args.checkpoint,
                                                            args.calibration_dir)]
        prec = None
        if args.checkpoint and args.test_dir:
            prec = precision_rows(args.checkpoint, args.test_dir, args.calibration_dir, threads[0], Path(tmp))
            for r in prec["rows"]:
                print(f"{r['variant']} on {args.checkpoint}: NME {r['nme']:.3f} %, landmarks move "
                      f"{r['move_median_px']:.2f} px (median), {r['move_max_px']:.1f} px (max)", flush=True)
    write_markdown(args.out, lat, vid, args, started, (load0, os.getloadavg()[0]), prec)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
