"""Command line: a raw 300W-LP / AFLW2000-3D folder -> 256x256 crops + UV position maps (faceutil.process).

Also synthesises raw datasets in the real format with the project's synthetic face model (--synthesize).
Original flags work verbatim (-i -o -f=True -v=True --isOldKpt=True --thread=16); --help lists the long names.
"""
from __future__ import annotations

import os
import re
import sys

from config import ConfigError, add_flag, make_parser
from faceutil.errors import FaceUtilError  # stdlib only: numpy is not loaded yet

EXAMPLES = """examples:
  python processor.py -i=data/images/AFLW2000 -o=data/images/AFLW2000-crop -f=True -v=True --isOldKpt=True
  python processor.py -i=data/images/300W_LP -o=data/images/300W_LP-crop --thread=16
  python processor.py -i=data/images/300W_LP -o=OUT --thread=16 --shard=0/4      # machine 1 of 4
  python processor.py --synthesize=300W_LP --count=1000 --seed=0 -o=data/images/synth_300W_LP
Exit status: 0 when every sample was processed, 1 when some were skipped (listed), 2 on a usage error."""


def build_parser():
    p = make_parser(prog="processor.py", description=__doc__.splitlines()[0], epilog=EXAMPLES)
    add_flag(p, ("-i", "--input"), "input", "raw dataset folder: images (.jpg) with their .mat beside them, "
             "searched recursively")
    add_flag(p, ("-o", "--output"), "output", "output folder (one sub-folder per sample, plus index.tsv)")
    add_flag(p, ("-f", "--full"), "full", "also write the dense mesh (.obj with colours) and the 68 landmarks",
             kind="bool", default=False)
    add_flag(p, ("-v", "--visualize"), "visualize", "also write a picture of each crop with its landmarks",
             kind="bool", default=False)
    add_flag(p, ("--isOldKpt", "--old-kpt"), "old_kpt", "crop from the annotated pt3d_68 (AFLW2000-3D) and keep it "
             "for evaluation", kind="bool", default=False)
    add_flag(p, ("--thread", "--threads"), "threads", "worker processes", kind=int, default=1)
    add_flag(p, ("--shard",), "shard", "process only shard i of n (i/n, 0-based), to split a dataset over machines",
             default="0/1")
    add_flag(p, ("--bfm",), "bfm", "face model: a folder with face3d's BFM.mat + BFM_UV.mat, or 'synthetic'",
             default="synthetic")
    add_flag(p, ("--seed",), "seed", "seed of the training-crop jitter (and of --synthesize)", kind=int, default=0)
    add_flag(p, ("--synthesize",), "synthesize", "instead of processing, write a synthetic raw dataset in the "
             "format of 300W_LP or AFLW2000 to -o", choices=("300W_LP", "AFLW2000"))
    add_flag(p, ("--count",), "count", "images to synthesise", kind=int, default=100)
    add_flag(p, ("--appearance",), "appearance", "randomisations of the synthetic images: plain (default), full, a "
             "comma list of pose, background, body, hair, skin, lighting, occluders, camera, or full,-NAME")
    add_flag(p, ("--progress",), "progress", "show a progress bar", kind="bool", default=True)
    return p


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard={text!r} is not i/n with 0 <= i < n (for example 0/4).")
    return int(m.group(1)), int(m.group(2))


def main(argv=None) -> int:
    try:
        args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
        if args.get("threads", 1) > 1:
            # one BLAS/OpenMP thread per worker process (takes effect when numpy is first loaded, just below)
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")
        if "output" not in args:
            raise ConfigError("Give the output folder with -o=DIR.")
        if args.get("threads", 1) < 1:
            raise ConfigError(f"--thread must be at least 1, not {args['threads']}.")
        if "appearance" in args and "synthesize" not in args:
            raise ConfigError("--appearance applies to --synthesize only (processing keeps the images as they are).")
        if "synthesize" in args:
            from faceutil.appearance import Appearance
            from faceutil.facemodel import load_model
            from faceutil.synthetic import synthesize_dataset

            if args.get("count", 100) < 1:
                raise ConfigError(f"--count must be at least 1, not {args['count']}.")
            look = Appearance.parse(args.get("appearance", "plain"))
            model = load_model(args.get("bfm", "synthetic"))
            names = synthesize_dataset(args["output"], args["synthesize"], args.get("count", 100),
                                       seed=args.get("seed", 0), model=model, appearance=look)
            print(f"wrote {len(names)} {args['synthesize']}-format samples to {args['output']}")
            return 0
        if "input" not in args:
            raise ConfigError("Give the raw dataset folder with -i=DIR (or --synthesize=300W_LP|AFLW2000).")
        from faceutil.process import process_dataset

        summary = process_dataset(
            args["input"], args["output"], bfm=args.get("bfm", "synthetic"), full=args.get("full", False),
            visualize=args.get("visualize", False), old_kpt=args.get("old_kpt", False),
            threads=args.get("threads", 1), shard=_shard(args.get("shard", "0/1")), seed=args.get("seed", 0),
            progress=args.get("progress", True))
    except (ConfigError, FaceUtilError) as err:
        print(f"processor.py: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("processor.py: interrupted; rerun the same command to finish the remaining samples.", file=sys.stderr)
        return 130
    print("\n".join(summary.lines()))
    return 1 if summary.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
