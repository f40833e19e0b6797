"""Run configuration: the one ``Config`` dataclass (every default), command-line flag parsing and validation.

Owns the original PRNet/E2TKFace flag names (``-train=True``, ``--batchSize=16`` ...) beside readable long names,
the reusable boolean-flag machinery (``parse_bool``, ``make_parser``, ``add_flag``) and the run's JSON record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

MODELS = ("e2tkface", "prnet")
ENCODERS = ("aligned", "faithful", "cnn")
GROUND_TRUTHS = ("original", "reannotated")
PRECISIONS = ("fp32", "bf16", "fp16")          # the same names as model.device.PRECISIONS (a test checks)
HEADS = ("published", "mean-residual")         # the same names as model.head.HEADS (a test checks)
INPUT_SIZES = (64, 128, 256)                   # the same sizes as model.head.INPUT_SIZES
LR_SCHEDULES = ("exp", "cosine")               # the same names as engine.optim.SCHEDULES
OPTIMIZERS = ("adam", "adamw", "radam")         # the same names as engine.optim.OPTIMIZERS
DETECTORS = ("mtcnn", "haar")                  # the same names as inference.detectors.DETECTORS
DEFAULT_BFM_DIR = "data/Out"

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


class ConfigError(Exception):
    """A flag value or path a user gave is wrong; ``str(err)`` is one sentence naming the flag."""


class FlagParser(argparse.ArgumentParser):
    """argparse parser whose errors raise ConfigError (one sentence) instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D102 - argparse hook
        message = message.strip()
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            message = f"unknown flag(s) {match.group(1)} (see --help for the list)"
        raise ConfigError(message[0].upper() + message[1:] + ("" if message.endswith(".") else "."))


def parse_bool(text: str | bool) -> bool:
    """Parse a boolean flag value: True/False, true/false, 1/0, yes/no, on/off (case-insensitive).

    The published code used ``type=bool``-style parsing where any non-empty string (even "False") was true;
    here "False" is False. Raises argparse.ArgumentTypeError (-> ConfigError through FlagParser) otherwise.
    """
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use True/False, true/false or 1/0)")


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def make_parser(prog: str | None = None, description: str | None = None, epilog: str | None = None) -> FlagParser:
    """A parser for original-style flags: no prefix abbreviation, errors raise ConfigError, defaults suppressed.

    Only flags the user gave appear in the parsed namespace (argparse.SUPPRESS), so callers can tell an explicit
    value from a default.
    """
    return FlagParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                      argument_default=argparse.SUPPRESS,
                      formatter_class=argparse.RawDescriptionHelpFormatter)


def add_flag(parser: argparse.ArgumentParser, names: Sequence[str], dest: str, help: str, *,
             kind: Callable[[str], Any] | str = str, default: Any = None, choices: Sequence[str] | None = None,
             metavar: str | None = None, const: Any = None) -> None:
    """Register one flag under several names (original spelling first, then readable long names).

    kind="bool" makes a boolean flag: ``-flag=True``, ``-flag False``, ``--flag`` alone (= True), ``--flag=0``.
    ``const`` (non-bool flags) lets the flag appear without a value, meaning ``const``.
    ``default`` is only shown in the help text (the parser suppresses defaults).
    """
    shown = "" if default is None else f" (default: {default})"
    if kind == "bool":
        parser.add_argument(*names, dest=dest, nargs="?", const=True, type=parse_bool, metavar="BOOL",
                            help=help + shown)
        return
    extra = {} if const is None else {"nargs": "?", "const": const}
    parser.add_argument(*names, dest=dest, type=kind, choices=choices, metavar=metavar, help=help + shown, **extra)


def _resume_value(text: str) -> str | None:
    """--resume: bare flag or True -> "auto" (the run folder's last.pth); False -> None; else a checkpoint path."""
    try:
        flag = parse_bool(text)
    except argparse.ArgumentTypeError:
        return text
    return "auto" if flag else None


def _model_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object such as '{{\"width_mult\": 0.5}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object such as '{{\"width_mult\": 0.5}}'")
    return value


@dataclass
class Config:
    """Everything a run needs; saved as ``config.json`` in the run folder so the run can be reproduced."""

    # what to do
    train: bool = True
    test: bool = False
    demo: bool = False
    # data
    train_dir: str = "data/images/300W_LP-crop"
    val_dir: str | None = None
    predict_dir: str = "data/images/AFLW2000"
    val_fraction: float = 0.02
    pre_read: bool = False
    num_workers: int = 4
    augment: bool = True
    augment_rotation: bool = True
    shuffle: bool = True
    bfm: str = "auto"
    # model
    model: str = "e2tkface"
    encoder: str = "aligned"
    model_kwargs: dict = field(default_factory=dict)
    head: str = "mean-residual"
    input_size: int = 256
    canonicalize: bool = False
    angle_weight: float = 1.0
    load_model_path: str | None = None
    # optimisation
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 2e-4
    lr_decay: float = 0.8
    lr_schedule: str = "exp"
    warmup_steps: int = 500
    decay_norm_bias: bool = True
    optimizer: str = "adamw"
    seed: int = 0
    time_limit: float = 0.0
    # hardware
    device: str | None = None
    gpus: int = 1
    visible_devices: str | None = None
    sync_bn: bool = True
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    # run folder, resuming, output
    out: str | None = None
    resume: str | None = None
    progress: bool = True
    # evaluation
    gt: str = "original"
    gt_file: str | None = None
    export: bool = True
    # inference jobs (inference.predict / inference.export)
    predict: str | None = None
    bbox: str | None = None
    detector: str = "mtcnn"
    any_roll: bool = False
    smooth: float = 0.5
    redetect_every: int = 5
    export_format: str | None = None
    # demo sizes
    demo_train_count: int = 600
    demo_test_count: int = 200
    appearance: str = "plain"     # the synthetic training images' randomisations (faceutil.appearance)
    # flags the user gave explicitly (not saved; lets a checkpoint's model name win over a default)
    given: tuple = field(default=(), compare=False, repr=False)

    # ------------------------------------------------------------------ JSON record
    def to_dict(self) -> dict:
        """JSON-ready dict of every setting (without ``given``)."""
        data = dataclasses.asdict(self)
        data.pop("given")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Config from a dict written by ``to_dict``; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)} - {"given"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"Unknown configuration keys {unknown} in the saved configuration.")
        return cls(**data)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the resolved configuration as JSON atomically (temp file + rename). Returns the path."""
        from faceutil.sampleio import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "Config":
        """Read a configuration written by ``save_json``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"Cannot read the configuration file {path}: {err}.") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# (names, dest, kind, help). Original spellings first, exactly as published, then readable long names.
_FLAGS: list[tuple[tuple[str, ...], str, Any, str]] = [
    (("-train", "--train"), "train", "bool", "train a model on -td"),
    (("-test", "--test"), "test", "bool", "evaluate on -pd (AFLW2000-3D protocol) with --loadModelPath "
                                          "(or the checkpoint this run just trained)"),
    (("--demo",), "demo", "bool", "synthesise a small dataset, train E2TKFace on CPU for a few minutes, "
                                  "evaluate before/after (other flags such as --epochs still apply)"),
    (("-td", "--train-dir"), "train_dir", str, "training set: processor output folder (300W-LP-crop)"),
    (("-vd", "--val-dir"), "val_dir", str, "validation set (processor output) that picks best.pth; default: "
                                           "a held-out fraction of -td. Using the test set here inflates results"),
    (("-pd", "--predict-dir"), "predict_dir", str, "evaluation set: raw AFLW2000-3D folder (jpg+mat) or "
                                                   "processor output with pt3d_68"),
    (("--val-fraction",), "val_fraction", _float, "fraction of -td held out for validation when -vd is not given"),
    (("--isPreRead", "--pre-read"), "pre_read", "bool", "load all position maps into memory before training"),
    (("--numWorker", "--num-workers"), "num_workers", _int, "data-loading worker processes per process"),
    (("--augment",), "augment", "bool", "rotation / erasing / colour augmentation of training samples"),
    (("--augment-rotation",), "augment_rotation", "bool", "include the in-plane rotation (+-90 deg, p 0.5) in "
                                                          "--augment"),
    (("--shuffle",), "shuffle", "bool", "shuffle the training order each epoch"),
    (("--bfm",), "bfm", str, "face model for the UV layout: a folder with BFM.mat + BFM_UV.mat, 'synthetic', "
                             f"or 'auto' ({DEFAULT_BFM_DIR} when present, else synthetic)"),
    (("--model",), "model", str, "network: e2tkface | prnet"),
    (("--encoder",), "encoder", str, "E2TKFace encoder: aligned (exactly 90-degree equivariant at 256) | faithful "
                                     "(published stride-2 layout) | cnn (plain-CNN ablation)"),
    (("--model-kwargs",), "model_kwargs", _model_kwargs, "extra model constructor arguments as JSON, "
                                                         "e.g. '{\"width_mult\": 0.5}'"),
    (("--head",), "head", str, "output head: mean-residual (the training set's mean position map plus a learned "
                               "residual that starts at zero) | published (BatchNorm + tanh, as PRNet/E2TKFace)"),
    (("--input-size",), "input_size", _int, "size the network runs at inside the 256 crop: 64 | 128 | 256 (data, "
                                            "loss, evaluation and exports stay at 256)"),
    (("--canonicalize",), "canonicalize", "bool", "wrap the position-map network in a steerable angle estimator that "
                                                  "turns each crop upright and the output back (issue 23; exact "
                                                  "at quarter turns, learned in between)"),
    (("--angle-weight",), "angle_weight", _float, "--canonicalize: weight of the angle loss (1 - cos of the error "
                                                  "against each face's roll read from its target) beside the "
                                                  "position-map loss"),
    (("--loadModelPath", "--load-model-path"), "load_model_path", str,
     "checkpoint to evaluate, or to start training from"),
    (("--epoch", "--epochs"), "epochs", _int, "number of training epochs"),
    (("--batchSize", "--batch-size"), "batch_size", _int,
     "images per batch per process (global batch = this x processes)"),
    (("--learningRate", "--lr"), "lr", _float, "peak learning rate"),
    (("--weight-decay",), "weight_decay", _float, "weight decay (see --optimizer)"),
    (("--lr-decay",), "lr_decay", _float, "learning-rate factor per epoch for --lr-schedule=exp"),
    (("--lr-schedule",), "lr_schedule", str, "per-step learning rate after the warm-up: exp (x --lr-decay per epoch, "
                                             "as published) | cosine (to zero at the last epoch)"),
    (("--warmup", "--warmup-steps"), "warmup_steps", _int, "optimiser steps of linear learning-rate warm-up"),
    (("--decay-norm-bias",), "decay_norm_bias", "bool", "apply --weight-decay to biases and norm scales/shifts too "
                                                        "(as published); False decays weights only"),
    (("--optimizer",), "optimizer", str, "adamw (decoupled weight decay, default) | adam (weight decay added to "
                                         "the gradient, as published) | radam (rectified Adam, decay as adam)"),
    (("--seed",), "seed", _int, "seed of every random draw (initialisation, order, augmentation)"),
    (("--time-limit",), "time_limit", _float, "stop training after this many minutes (the epoch in progress ends "
                                              "early and is saved); 0 = no limit"),
    (("--device",), "device", str, "cpu, cuda or cuda:N; default: CUDA when available"),
    (("--gpu", "--gpus"), "gpus", _int, "processes to start on this node (DDP; one per GPU, or CPU "
                                                 "processes with gloo when --device=cpu)"),
    (("--visibleDevice", "--visible-devices"), "visible_devices", str,
     "comma-separated GPU ids to use (sets CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3"),
    (("--sync-bn",), "sync_bn", "bool", "use SyncBatchNorm when training on several GPUs"),
    (("--precision",), "precision", str, "arithmetic: fp32 | bf16 (CPU or CUDA: autocast in training and evaluation, "
                                         "bf16 weights for -predict) | fp16 (CUDA only, autocast + loss scaling)"),
    (("--channels-last",), "channels_last", "bool", "run the convolutions in NHWC (channels_last) memory layout"),
    (("--compile",), "compile", "bool", "torch.compile the inference network of -predict / -test: a one-off compile "
                                        "(about a minute on 2 CPU cores the first time, cached after), then faster "
                                        "calls"),
    (("--out", "-o", "--output"), "out", str, "run folder for config.json, checkpoints, TensorBoard logs and "
                                             "results (default: savedmodel/<model>-<time>); for -predict the "
                                             "results folder, for -export the file"),
    (("--resume",), "resume", _resume_value, "continue an interrupted run: bare flag = <--out>/last.pth, "
                                             "or a path to a last.pth"),
    (("--progress",), "progress", "bool", "show progress: a bar on a terminal, plain lines in a log file"),
    (("--gt",), "gt", str, "evaluation ground truth: original (pt3d_68) | reannotated (also report against "
                           "--gt-file)"),
    (("--gt-file",), "gt_file", str, "re-annotated landmarks (N,2,68) .npy, rows in sorted image-name order "
                                     "(3DDFA's AFLW2000-3D-Reannotated.pts68.npy)"),
    (("--exported-encoder",), "export", "bool", "run inference (evaluation, -predict) with the exported plain-torch "
                                                "encoder where the model has one"),
    (("-predict", "--predict"), "predict", str, "predict faces in an image, a video or a folder of them with "
                                                "--loadModelPath (a .pth checkpoint or an exported .onnx); "
                                                "results go to -o"),
    (("--bbox",), "bbox", str, "face boxes for -predict as 'x1,y1,x2,y2' (several separated by ';'); default: "
                               "detect faces"),
    (("--detector",), "detector", str, "-predict: face detector when --bbox is not given: mtcnn (facenet-pytorch's "
                                       "MTCNN; reads each face's roll from its eyes, so tilted faces get upright "
                                       "crops) | haar (OpenCV's bundled cascade, upright faces only)"),
    (("--any-roll",), "any_roll", "bool", "-predict: also look for faces turned by 90, 180 and 270 degrees (for "
                                          "faces the detector misses as they are, e.g. lying on their side; four "
                                          "detector passes)"),
    (("--smooth",), "smooth", _float, "-predict on video: strength 0..1 of the temporal smoothing of landmarks, "
                                      "mesh and pose (One Euro filter; 0 = each frame's own output)"),
    (("--redetect-every",), "redetect_every", _int, "-predict on video: run the face detector every N frames and "
                                                    "track faces from their landmarks in between (0 = detect "
                                                    "on every frame, no tracking)"),
    (("-export", "--export-format"), "export_format", str, "export --loadModelPath to a deployable file: onnx, "
                                                           "or onnx-int8 (calibrated on crops of -td, default: the "
                                                           "checkpoint's training folder); written to -o"),
    (("--demo-train-count",), "demo_train_count", _int, "synthetic training images made by --demo"),
    (("--demo-test-count",), "demo_test_count", _int, "synthetic AFLW2000-format images made by --demo"),
    (("--appearance",), "appearance", str, "randomisations of --demo's synthetic training images: plain, full, a "
     "comma list of pose, background, body, hair, skin, lighting, occluders, camera, or full,-NAME (its test images "
     "stay plain)"),
]

_EXAMPLES = """examples:
  python torchrun.py -train=True -test=False --batchSize=16 -td=data/images/300W_LP-crop -vd=DIR --numWorker=4
  python torchrun.py -train=True ... --gpu=4 --visibleDevice=0,1,2,3
  python torchrun.py -train=False -test=True -pd=data/images/AFLW2000 --loadModelPath=savedmodel/RUN/best.pth
  python torchrun.py --demo
Boolean flags accept True/False, true/false, 1/0 (and a bare --flag means True)."""


_METAVARS = {"train_dir": "DIR", "val_dir": "DIR", "predict_dir": "DIR", "bfm": "DIR", "out": "DIR",
             "load_model_path": "PATH", "resume": "PATH", "gt_file": "PATH", "model_kwargs": "JSON",
             "num_workers": "N", "gpus": "N", "epochs": "N", "batch_size": "N", "seed": "N", "demo_train_count": "N",
             "demo_test_count": "N", "val_fraction": "F", "lr": "F", "weight_decay": "F", "lr_decay": "F",
             "head": "NAME", "input_size": "N", "lr_schedule": "NAME", "optimizer": "NAME", "warmup_steps": "N",
             "time_limit": "MIN", "visible_devices": "IDS", "model": "NAME", "encoder": "NAME", "gt": "NAME",
             "device": "DEV", "predict": "PATH", "bbox": "BOXES", "detector": "NAME", "export_format": "FORMAT",
             "smooth": "S", "redetect_every": "N", "appearance": "SPEC"}


def build_parser() -> FlagParser:
    """The torchrun.py parser (original + long flag names)."""
    parser = make_parser(prog="torchrun.py",
                         description="Train and evaluate E2TKFace / PRNet UV position-map regressors.",
                         epilog=_EXAMPLES)
    defaults = Config()
    for names, dest, kind, help_text in _FLAGS:
        add_flag(parser, names, dest, help_text, kind=kind, default=getattr(defaults, dest),
                 const="auto" if dest == "resume" else None, metavar=_METAVARS.get(dest))
    return parser


def parse_config(argv: Sequence[str] | None = None, *, check: bool = True) -> Config:
    """Parse command-line flags into a Config (and validate it unless check=False). Raises ConfigError."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    values = dict(vars(args))
    given = tuple(sorted(values))
    if ("predict" in values or "export_format" in values) and "train" not in values:
        values["train"] = False            # an inference job alone does not also start the default training
    config = Config(**values, given=given)
    if check:
        validate(config)
    return config


def _known_models() -> list[str]:
    try:
        from model.registry import list_models
    except ImportError:
        return list(MODELS)
    return sorted(set(list_models()))


def _require_dir(path: str | None, flag: str, what: str) -> None:
    if path is None or not Path(path).is_dir():
        raise ConfigError(f"The {what} folder {path!r} given by {flag} does not exist.")


def validate(config: Config, known_models: Sequence[str] | None = None) -> Config:
    """Check values and paths; raise ConfigError with one sentence naming the flag. Returns the config."""
    if not (config.train or config.test or config.demo or config.predict or config.export_format):
        raise ConfigError("Nothing to do: give -train=True, -test=True, -predict=PATH, -export=onnx or --demo.")
    positive = (("batch_size", "--batchSize/--batch-size"), ("epochs", "--epochs"), ("gpus", "--gpu/--gpus"),
                ("demo_train_count", "--demo-train-count"), ("demo_test_count", "--demo-test-count"))
    for name, flag in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{flag} must be at least 1, not {getattr(config, name)}.")
    if config.num_workers < 0:
        raise ConfigError(f"--numWorker/--num-workers must be 0 or more, not {config.num_workers}.")
    if config.seed < 0:
        raise ConfigError(f"--seed must be 0 or more, not {config.seed}.")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive, not {config.lr}.")
    if config.time_limit < 0:
        raise ConfigError(f"--time-limit must be 0 (none) or more minutes, not {config.time_limit}.")
    if config.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be 0 or more, not {config.weight_decay}.")
    if not 0 < config.lr_decay <= 1:
        raise ConfigError(f"--lr-decay must be in (0, 1], not {config.lr_decay}.")
    if config.warmup_steps < 0:
        raise ConfigError(f"--warmup must be 0 or more steps, not {config.warmup_steps}.")
    if not (config.angle_weight >= 0 and math.isfinite(config.angle_weight)):
        raise ConfigError(f"--angle-weight must be a finite number of 0 or more, not {config.angle_weight}.")
    if not 0.0 <= config.smooth <= 1.0:
        raise ConfigError(f"--smooth must lie between 0 (off) and 1, not {config.smooth}.")
    if config.redetect_every < 0:
        raise ConfigError(f"--redetect-every must be 0 (detect on every frame) or more frames, not "
                          f"{config.redetect_every}.")
    from faceutil.appearance import Appearance
    from faceutil.errors import FaceUtilError

    try:
        Appearance.parse(config.appearance)
    except FaceUtilError as err:
        raise ConfigError(f"--appearance: {err}.") from None
    if Appearance.parse(config.appearance) and not config.demo:
        raise ConfigError("--appearance shapes the images --demo synthesises; for a training set of your own, "
                          "synthesise it with processor.py --synthesize --appearance.")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown --optimizer={config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"Unknown --lr-schedule={config.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
    if config.head not in HEADS:
        raise ConfigError(f"Unknown --head={config.head!r}; choose one of {', '.join(HEADS)}.")
    if config.input_size not in INPUT_SIZES:
        raise ConfigError(f"--input-size must be one of {', '.join(map(str, INPUT_SIZES))}, not {config.input_size}.")
    if not 0 < config.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, not {config.val_fraction}.")
    if config.encoder not in ENCODERS:
        raise ConfigError(f"Unknown --encoder={config.encoder!r}; choose one of {', '.join(ENCODERS)}.")
    if config.gt not in GROUND_TRUTHS:
        raise ConfigError(f"Unknown --gt={config.gt!r}; choose one of {', '.join(GROUND_TRUTHS)}.")
    if config.detector not in DETECTORS:
        raise ConfigError(f"Unknown --detector={config.detector!r}; choose one of {', '.join(DETECTORS)}.")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"Unknown --precision={config.precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if config.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", config.device):
        raise ConfigError(f"Unknown --device={config.device!r}; use cpu, cuda or cuda:N.")
    if config.visible_devices is not None and not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", config.visible_devices):
        raise ConfigError(f"--visibleDevice={config.visible_devices!r} is not a comma-separated list of GPU ids.")
    if config.bfm not in ("auto", "synthetic") and not Path(config.bfm).is_dir():
        raise ConfigError(f"The face-model folder {config.bfm!r} given by --bfm does not exist.")
    if not config.demo:
        _check_paths(config)
    models = list(known_models) if known_models is not None else _known_models()   # imports torch: last
    if config.model not in models:
        raise ConfigError(f"Unknown --model={config.model!r}; choose one of {', '.join(models)}.")
    return config


def _check_paths(config: Config) -> None:
    if config.train:
        _require_dir(config.train_dir, "-td/--train-dir", "training")
        if config.val_dir is not None:
            _require_dir(config.val_dir, "-vd/--val-dir", "validation")
    if config.test:
        _require_dir(config.predict_dir, "-pd/--predict-dir", "evaluation")
        if not config.train and config.load_model_path is None:
            raise ConfigError("-test=True without training needs --loadModelPath=PATH to a checkpoint.")
    if config.load_model_path is not None and not Path(config.load_model_path).is_file():
        raise ConfigError(f"The checkpoint {config.load_model_path!r} given by --loadModelPath does not exist.")
    if config.resume not in (None, "auto") and not Path(config.resume).is_file():
        raise ConfigError(f"The checkpoint {config.resume!r} given by --resume does not exist.")
    if config.resume == "auto" and config.out is None:
        raise ConfigError("--resume without a path needs --out=RUN_FOLDER (the run to continue).")
    if config.gt == "reannotated":
        if config.gt_file is None:
            raise ConfigError("--gt=reannotated needs --gt-file=PATH to the re-annotated landmarks (.npy).")
        if not Path(config.gt_file).is_file():
            raise ConfigError(f"The landmark file {config.gt_file!r} given by --gt-file does not exist.")


def resolve_bfm(spec: str) -> str:
    """'auto' -> DEFAULT_BFM_DIR when it holds BFM.mat, else 'synthetic'; other values unchanged."""
    if spec != "auto":
        return spec
    return DEFAULT_BFM_DIR if (Path(DEFAULT_BFM_DIR) / "BFM.mat").is_file() else "synthetic"
