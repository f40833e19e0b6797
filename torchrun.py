"""Command line for training, evaluation, the demo, prediction and export (original PRNet/E2TKFace flags and readable
long names).

Thin layer: parse flags into config.Config, then call engine.train / engine.demo (training) or inference.backends /
inference.export / inference.predict_job (saved networks). Every error a user can cause ends as one sentence on
stderr with a non-zero exit code.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad flags, 1 failed run)."""
    from config import ConfigError, parse_config

    try:
        config = parse_config(argv)
    except ConfigError as err:
        print(f"torchrun.py: error: {err}", file=sys.stderr)
        return 2
    if config.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.visible_devices.replace(" ", "")

    from engine.errors import RunError
    from faceutil.errors import FaceUtilError

    try:
        if config.demo:
            from engine.demo import run_demo

            return 0 if run_demo(config)["learned"] else 1
        checkpoint = None
        if config.train:
            from engine.train import run_training

            result = run_training(config)
            checkpoint = result.best_path if result.best_path.is_file() else result.last_path
            config = config.replace(out=str(result.out))
        from engine.distributed import info_from_env

        if not info_from_env().is_main:         # under PyTorch's launcher only rank 0 goes on after training
            return 0
        if config.test:
            from inference.backends import run_test

            run_test(config, checkpoint=checkpoint or config.load_model_path)
        if config.export_format:
            from inference.export import run_export

            run_export(config, checkpoint=checkpoint)
        if config.predict:
            from inference.predict_job import run_predict

            run_predict(config, checkpoint=checkpoint)
    except (ConfigError, RunError, FaceUtilError) as err:
        text = str(err).strip()
        print(f"torchrun.py: error: {text[0].upper() + text[1:] if text else type(err).__name__}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("torchrun.py: interrupted; continue with --resume (last.pth holds the last finished epoch).",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
