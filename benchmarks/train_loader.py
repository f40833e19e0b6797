"""Benchmark of the training data loader alone: samples/s with 0, 1, 2 workers, memory-mapped vs pre-read
position maps, peak memory (RSS and PSS over the main process and its workers) for a 122,450-sample index.

The 122,450 sample folders are real processor-layout folders (index.tsv, <name>/<name>_cropped.jpg,
<name>/<name>_cropped_uv_posmap.npy) whose files are hard links to --distinct real files, so the dataset does
its real per-sample bookkeeping (names, paths, sampler permutations) while the disk holds only a few MB; the
figures therefore measure CPU cost (JPEG decode, posmap copy, augmentation, collation) from the page cache, not
disk throughput. Pre-read keeps every map in RAM (768 KiB each in float32), so it is measured on a subset
(--pre-read-samples) and its 122k footprint is extrapolated. Baseline in the same run: the same loader with
non-persistent workers (re-forked every epoch, as the published loader did), time to first batch of epoch 2.
Usage: python benchmarks/train_loader.py [--samples 122450] [--batches 40] [--out benchmarks/results/train_loader.md]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.dataset import PosmapDataset  # noqa: E402
from data.index import read_index  # noqa: E402
from data.loader import build_loader  # noqa: E402
from faceutil.sampleio import atomic_write_image  # noqa: E402

S = 256
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- memory sampling from /proc (no psutil) ----------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process; PSS splits shared pages between the processes that map them."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class MemorySampler:
    """Polls main + worker processes every `period` s; keeps the peaks of main RSS, largest worker RSS,
    total RSS (double-counts shared pages) and total PSS (does not)."""

    def __init__(self, period: float = 0.05):
        self.period = period
        self.peak = dict(main_rss=0, worker_rss=0, total_rss=0, total_pss=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self):
        me = os.getpid()
        main_rss, main_pss = _rss_pss(me)
        kids = [_rss_pss(p) for p in _children(me)]
        p = self.peak
        p["main_rss"] = max(p["main_rss"], main_rss)
        p["worker_rss"] = max([p["worker_rss"]] + [r for r, _ in kids])
        p["total_rss"] = max(p["total_rss"], main_rss + sum(r for r, _ in kids))
        p["total_pss"] = max(p["total_pss"], main_pss + sum(s for _, s in kids))

    def _run(self):
        while not self._stop.is_set():
            self._poll()
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()


# -- synthetic index ---------------------------------------------------------------------------------------------
def build_folder(root: Path, n: int, distinct: int, seed: int = 0) -> float:
    """Write `distinct` real samples, hard-link them into n processor-layout folders; returns seconds taken."""
    from skimage.data import astronaut

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    photo = astronaut()  # public-domain photo shipped with scikit-image: realistic JPEG content
    src = root / "_distinct"
    src.mkdir(parents=True)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    for k in range(distinct):
        y0, x0 = rng.integers(0, photo.shape[0] - S, 2)
        atomic_write_image(src / f"{k}.jpg", photo[y0:y0 + S, x0:x0 + S])
        posmap = np.stack([xx + rng.normal(0, 5), yy + rng.normal(0, 5), rng.uniform(0, 200, (S, S))], -1)
        np.save(src / f"{k}.npy", posmap.astype(np.float32))
    lines = ["name\tstatus\treason\n"]
    for i in range(n):
        name = f"HELEN_{i // 10:07d}_1_{i % 10}"
        d = root / name
        d.mkdir()
        os.link(src / f"{i % distinct}.jpg", d / f"{name}_cropped.jpg")
        os.link(src / f"{i % distinct}.npy", d / f"{name}_cropped_uv_posmap.npy")
        lines.append(f"{name}\tok\t\n")
    lines.append("HELEN_broken_1_0\tskipped\timage is empty\n")
    (root / "index.tsv").write_text("".join(lines), encoding="utf-8")
    return time.perf_counter() - t0


# -- one configuration -------------------------------------------------------------------------------------------
def run_config(root: Path, names, workers: int, pre_read: bool, batches: int, batch_size: int,
               dtype: str = "float32") -> dict:
    gc.collect()
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        ds = PosmapDataset(root, names=names, augment=True, seed=0, pre_read=pre_read, pre_read_dtype=dtype)
        t_init = time.perf_counter() - t0
        loader = build_loader(ds, batch_size=batch_size, workers=workers, shuffle=True, seed=0, drop_last=True,
                              device="cpu")
        loader.sampler.set_epoch(0)
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)  # includes starting the workers
        first = time.perf_counter() - t0
        rates = []  # three windows: on a shared machine the median and best say more than one mean
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(max(1, batches // 3)):
                next(it)
            rates.append(max(1, batches // 3) * batch_size / (time.perf_counter() - t0))
        del it, loader
        gc.collect()
    return dict(workers=workers, pre_read=pre_read, dtype=dtype, n=len(ds), init_s=t_init, first_batch_s=first,
                samples_per_s=float(np.median(rates)), best_samples_per_s=max(rates), **mem.peak)


def stage_medians(root: Path, names, reps: int = 100) -> dict[str, float]:
    """Median milliseconds of each step of one training item, in this process (medians resist other jobs)."""
    from data.augment import augment, colour_scale, random_erase, rotate
    from data.dataset import image_tensor, posmap_tensor
    from faceutil.sampleio import read_image

    ds = PosmapDataset(root, names=names[:8], augment=True, seed=0)
    plain = PosmapDataset(root, names=names[:8], augment=False)
    image = read_image(ds.image_path(0))
    posmap = np.array(ds.posmap_array(0), dtype=np.float32)
    rng = np.random.default_rng(0)
    steps = {
        "read_image (JPEG decode, faceutil.sampleio)": lambda: read_image(ds.image_path(0)),
        "position map: memmap + copy": lambda: np.array(ds.posmap_array(0), dtype=np.float32),
        "rotation (image warp + posmap values)": lambda: rotate(image, posmap, 33.0),
        "random erasing": lambda: random_erase(image, rng),
        "colour channel scale": lambda: colour_scale(image, np.array([0.7, 1.0, 1.3])),
        "augment (random mix, as in training)": lambda: augment(image, posmap, rng),
        "to CHW float tensors": lambda: (image_tensor(image), posmap_tensor(posmap)),
        "whole item, no augmentation": lambda: plain[1],
        "whole item, training augmentation": lambda: ds[(0, int(rng.integers(0, 8)))],
    }
    out = {}
    for label, fn in steps.items():
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[label] = float(np.median(times)) * 1e3
    return out


def epoch_restart(root: Path, names, workers: int, batch_size: int, persistent: bool) -> float:
    """Seconds from the start of epoch 2 to its first batch, after a complete epoch 1 (4 batches per epoch).

    persistent=False is the baseline (workers re-forked every epoch, as the published loader did); True is
    build_loader's setting.
    """
    ds = PosmapDataset(root, names=names[:4 * batch_size], augment=True, seed=0)
    if persistent:
        loader = build_loader(ds, batch_size=batch_size, workers=workers, shuffle=True, seed=0, device="cpu")
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             persistent_workers=False)
    for _ in loader:
        pass
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    dt = time.perf_counter() - t0
    for _ in it:
        pass
    del it, loader
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=122450)
    ap.add_argument("--distinct", type=int, default=64, help="real files behind the hard links")
    ap.add_argument("--pre-read-samples", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per configuration (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="parent folder for the synthetic index (default /dev/shm: 245k links are created and "
                         "removed in seconds there, minutes on a busy ext4 disk; the files are read through the "
                         "page cache either way)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train_loader.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="loader_bench_", dir=args.tmp))
    try:
        build_s = build_folder(tmp, args.samples, args.distinct)
        t0 = time.perf_counter()
        names = read_index(tmp)
        index_s = time.perf_counter() - t0
        print(f"built {len(names)} sample folders in {build_s:.1f} s; read_index {index_s:.2f} s", flush=True)
        load_before = os.getloadavg()
        rows = []
        subset = names[:args.pre_read_samples]
        for w in args.workers:
            rows.append(("memmap", len(names), run_config(tmp, names, w, False, args.batches, args.batch_size)))
            print(rows[-1], flush=True)
        for w in args.workers:
            rows.append(("memmap", len(subset), run_config(tmp, subset, w, False, args.batches, args.batch_size)))
            print(rows[-1], flush=True)
        for dtype in ("float32", "float16"):
            for w in args.workers:
                rows.append((f"pre-read {dtype}", len(subset),
                             run_config(tmp, subset, w, True, args.batches, args.batch_size, dtype)))
                print(rows[-1], flush=True)
        stages = stage_medians(tmp, names)
        refork = {w: (epoch_restart(tmp, names, w, args.batch_size, False),
                      epoch_restart(tmp, names, w, args.batch_size, True)) for w in args.workers if w > 0}
        load_after = os.getloadavg()
        ru_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        write_report(Path(args.out), args, rows, stages, refork, build_s, index_s, load_before, load_after, ru_max)
    finally:
        print(f"removing {tmp} ...", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(out: Path, args, rows, stages, refork, build_s, index_s, load_before, load_after, ru_max) -> None:
    gib = 1024 ** 3
    mib = 1024 ** 2
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem_total = os.sysconf("SC_PHYS_PAGES") * PAGE
    lines = [
        "# Training data loader benchmark",
        "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs, {mem_total / gib:.0f} GiB RAM, {platform.platform()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
        f"- Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        f"(the machine was shared with other jobs: absolute samples/s are noisy; compare rows of this run)",
        f"- Command: `python benchmarks/train_loader.py --samples {args.samples} --batches {args.batches} "
        f"--batch-size {args.batch_size} --pre-read-samples {args.pre_read_samples}`",
        f"- Data: {args.samples:,} processor-layout sample folders (index.tsv + one jpg and one .npy each, hard links "
        f"to {args.distinct} real 256x256 JPEGs cut from scikit-image's astronaut photo and {args.distinct} "
        f"float32 position maps). Built in {build_s:.0f} s; `read_index` of the {args.samples:,}-row index: "
        f"{index_s:.2f} s. Folder under {args.tmp or tempfile.gettempdir()}; files come from memory (page cache / "
        "tmpfs), so this measures CPU cost, not disk.",
        "- Each configuration: `PosmapDataset(augment=True)` (training augmentation on) + `build_loader(batch "
        f"{args.batch_size}, shuffle, drop_last)`; the first batch (worker start included) is timed "
        f"separately, the next {args.batches} batches, in three windows, give samples/s (median and best window). "
        "Memory sampled every 50 ms over "
        "the whole configuration (dataset construction included) from /proc/<pid>/smaps_rollup of the main "
        "process and its loader workers: RSS counts pages shared by several processes once per process, PSS "
        "divides them, so total PSS is the machine's real cost.",
        "",
        "| position maps | samples in index | workers | samples/s (median / best window) "
        "| 1st batch incl. worker start (s) | dataset init (s) "
        "| peak RSS main (MiB) | peak RSS per worker (MiB) | peak total RSS (MiB) | peak total PSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, n, r in rows:
        lines.append(f"| {mode} | {n:,} | {r['workers']} | {r['samples_per_s']:.0f} / {r['best_samples_per_s']:.0f} | "
                     f"{r['first_batch_s']:.3f} | {r['init_s']:.2f} | {r['main_rss'] / mib:.0f} | "
                     f"{r['worker_rss'] / mib:.0f} | {r['total_rss'] / mib:.0f} | {r['total_pss'] / mib:.0f} |")
    lines += ["", "Per-item cost in one process (median of 100 calls, ms; the loader's ceiling per worker is "
              "1000 / 'whole item' samples/s):", "", "| step | ms |", "|---|---:|"]
    lines += [f"| {label} | {ms:.2f} |" for label, ms in stages.items()]
    def main0(n):
        return next((r["main_rss"] for m, k, r in rows if m == "memmap" and k == n and r["workers"] == 0),
                    float("nan"))

    big = [r for mode, n, r in rows if mode == "memmap" and n == args.samples]
    peak_big = max(r["total_pss"] for r in big) if big else float("nan")
    peak_big_rss = max(r["total_rss"] for r in big) if big else float("nan")
    lines += [
        "",
        "## Findings",
        "",
        f"- Memory-mapped, {args.samples:,} samples: peak total PSS {peak_big / gib:.2f} GiB, peak total RSS "
        f"{peak_big_rss / gib:.2f} GiB (target < 4 GB). Peak main-process RSS, 0 workers: "
        f"{main0(args.samples) / mib:.0f} MiB with {args.samples:,} samples vs {main0(args.pre_read_samples) / mib:.0f}"
        f" MiB with {args.pre_read_samples:,}: the per-sample bookkeeping (one fixed-width numpy array of names, "
        "read_index's list, the sampler's permutation) is the only part that grows with the index; most of the "
        "rest is torch itself.",
        f"- Pre-read needs 768 KiB per sample in float32 and 384 KiB in float16, held once (one shared array): "
        f"for {args.samples:,} samples that is {args.samples * 768 / 1024 ** 2:.0f} GiB (float32) or "
        f"{args.samples * 384 / 1024 ** 2:.0f} GiB (float16) on top of the figures above, so `--isPreRead` only "
        "makes sense for small sets or machines with that much RAM; it was measured on the subset. float16 "
        "rounding error: <= 0.0625 px for |value| < 256, <= 0.125 px below 512 (tested).",
    ]
    if refork:
        lines.append("- Start of each epoch (first batch of epoch 2 after a complete epoch 1, 64-sample subset): "
                     "baseline with non-persistent workers, re-forked every epoch as in the published loader, vs "
                     "build_loader's persistent workers: "
                     + "; ".join(f"{w} worker(s): {refork[w][0]:.3f} s re-forked vs {refork[w][1]:.3f} s persistent"
                                 for w in sorted(refork))
                     + ". The re-fork cost grows with the parent process's size (page tables, copy-on-write).")
    lines.append(f"- Peak RSS of the benchmark process over the whole run (getrusage): {ru_max / gib:.2f} GiB.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
