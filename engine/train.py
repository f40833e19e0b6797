"""The training loop: data, model, Adam with a per-step learning-rate schedule (engine.optim), weighted position-map
loss, validation, checkpoints.

Single process, one node of N spawned processes (--gpu=N), or PyTorch's torchrun launcher (RANK/WORLD_SIZE set).
Every epoch writes last.pth (and best.pth when the validation loss improves) atomically; --resume continues
bit-for-bit (model, optimiser, epoch, step, RNG and data-order states; the learning rate is a function of the step).
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from config import Config, ConfigError
from data.dataset import MEAN_POSMAP_LIMIT
from engine import distributed as D
from engine.collapse import CollapseWatch
from engine.checkpoint import (capture_rng_state, copy_checkpoint, load_checkpoint, make_checkpoint,
                               restore_rng_state, save_checkpoint, unwrap)
from engine.errors import RunError
from engine.loading import (default_factory, face_model_for, is_canonicalized, load_network, model_spec,
                            needs_mean_posmap, recorded_bfm)
from engine.monitor import Monitor, landmark_panel, posmap_panel
from engine.optim import lr_factor, make_optimizer, parameter_groups
from faceutil.errors import FaceUtilError
from faceutil.uv import POSMAP_SCALE, UVLayout, check_face_model, uv_layout
from model.device import autocast_context, grad_scaler, to_channels_last
from model.head import to_posmaps

ModelFactory = Callable[..., nn.Module]
# The collapse watch (engine.collapse) gives its verdict this many steps after the warm-up has ended.
COLLAPSE_CHECK_AFTER_WARMUP = 300


@dataclass
class TrainResult:
    """Where a finished training run left its files, and its per-epoch history."""

    out: Path
    best_path: Path
    last_path: Path
    history: list = field(default_factory=list)
    model: nn.Module | None = None          # the trained network (unwrapped; None after a spawned run)


# ------------------------------------------------------------------------------------------------ small helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_run_folder(config: Config) -> Config:
    """Fill in --out: the resumed checkpoint's folder, or savedmodel/<model>-<YYYYmmdd-HHMMSS>."""
    if config.out is not None:
        return config
    if config.resume not in (None, "auto"):
        return config.replace(out=str(Path(config.resume).parent))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config.replace(out=str(Path("savedmodel") / f"{config.model}-{stamp}"))


def resume_path(config: Config) -> Path | None:
    if config.resume is None:
        return None
    path = Path(config.out) / "last.pth" if config.resume == "auto" else Path(config.resume)
    if not path.is_file():
        raise RunError(f"Cannot resume: {path} does not exist.")
    return path


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def is_test_like(val_dir: str, predict_dir: str | None) -> bool:
    """Whether -vd looks like the evaluation set: same folder as -pd, AFLW2000 in its name, or pt3d_68 inside."""
    vd = Path(val_dir).resolve()
    if predict_dir is not None and Path(predict_dir).exists() and vd == Path(predict_dir).resolve():
        return True
    if "aflw2000" in vd.name.lower():
        return True
    try:
        from data.index import BBOX_SUFFIX, read_index
        from faceutil.sampleio import read_bbox_info

        first = read_index(vd)[0]
        return "pt3d_68" in read_bbox_info(vd / first / (first + BBOX_SUFFIX))
    except Exception:  # noqa: BLE001 - a heuristic only; the dataset itself reports real problems
        return False


def _say(info: D.DistInfo, text: str) -> None:
    if info.is_main:
        print(text, file=sys.stderr if text.startswith("warning") else sys.stdout, flush=True)


# ------------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validate(model: nn.Module, dataset, loss_fn: nn.Module, kpt_ind: np.ndarray, device: torch.device,
             batch_size: int, precision: str = "fp32") -> dict:
    """Mean validation loss and landmark NME (2D, %, crop coordinates) over ``dataset`` (PosmapDataset items);
    the forward pass runs under model.device.autocast_context(device, precision).

    Returns {"loss": float, "nme2d": float, "count": int, "sample": (image uint8, true posmap, pred posmap)}.
    """
    from faceutil.metrics import nme
    from faceutil.uv import posmap_landmarks

    was_training = model.training
    model.eval()
    total, count, nmes, sample = 0.0, 0, [], None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["posmap"].to(device)
        with autocast_context(device, precision):
            out = model(x)
        out = out.float()
        total += float(loss_fn(out, y)) * x.shape[0]
        count += x.shape[0]
        pred, true = to_posmaps(out), to_posmaps(y)
        nmes.append(nme(posmap_landmarks(pred, kpt_ind)[..., :2], posmap_landmarks(true, kpt_ind)[..., :2]))
        if sample is None:
            sample = (to_uint8_images(x[:1])[0], true[0], pred[0])
    model.train(was_training)
    values = np.concatenate(nmes) if nmes else np.array([np.nan])
    return {"loss": total / max(count, 1), "nme2d": float(np.nanmean(values)), "count": count, "sample": sample}


def log_sample(monitor: Monitor, sample, kpt_ind: np.ndarray, step: int, prefix: str = "val") -> None:
    """TensorBoard images: crop with true (green) / predicted (red) landmarks; posmap channels truth/prediction."""
    if sample is None or not monitor.enabled:
        return
    from faceutil.uv import posmap_landmarks

    image, true, pred = sample
    panel = landmark_panel(image, posmap_landmarks(true, kpt_ind), posmap_landmarks(pred, kpt_ind))
    monitor.image(f"{prefix}/landmarks", panel, step)
    monitor.image(f"{prefix}/posmap_xyz", posmap_panel(true, pred), step)


# ------------------------------------------------------------------------------------------------ entry points
EpochCallback = Callable[[nn.Module, dict], None]


def run_training(config: Config, model_factory: ModelFactory | None = None, uv: UVLayout | None = None,
                 on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train as the config says: one process, --gpu=N spawned processes, or one rank under torchrun.

    model_factory(name, **kwargs) -> nn.Module (default model.registry.build_model); uv: the faceutil.uv.UVLayout
    to train against (default: the face model's, faceutil.uv.uv_layout). on_epoch(model, record): called in a
    single-process run after every epoch's checkpoint is written, with the (unwrapped, training-mode) network and
    the epoch's history record (e.g. to evaluate a learning curve; its time is not counted in its train_seconds).
    """
    if on_epoch is not None and (D.launched_by_torchrun() or config.gpus > 1):
        raise ConfigError("An epoch callback runs in single-process training only.")
    if D.launched_by_torchrun():
        return train_worker(config, D.info_from_env(), model_factory, uv)
    if config.gpus > 1:
        if config.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < config.gpus:
            raise ConfigError(f"--gpu={config.gpus} asks for more GPUs than the {torch.cuda.device_count()} "
                              f"visible ones.")
        if config.device is None and not torch.cuda.is_available():
            _say(D.DistInfo(), f"warning: no CUDA device; --gpu={config.gpus} starts {config.gpus} CPU processes "
                               f"(gloo).")
        config = resolve_run_folder(config)
        D.spawn(_spawned_worker, (config, model_factory, uv), config.gpus)
        out = Path(config.out)
        history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
        return TrainResult(out, out / "best.pth", out / "last.pth", history)
    return train_worker(config, D.DistInfo(), model_factory, uv, on_epoch)


def _spawned_worker(config: Config, model_factory: ModelFactory | None, uv: UVLayout | None) -> None:
    train_worker(config, D.info_from_env(), model_factory, uv)


def train_worker(config: Config, info: D.DistInfo, model_factory: ModelFactory | None = None,
                 uv: UVLayout | None = None, on_epoch: EpochCallback | None = None) -> TrainResult:
    """One training process (rank ``info.rank`` of ``info.world_size``)."""
    device = D.process_device(config.device, info)
    if info.distributed and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))   # no oversubscription of the cores
    D.init_process_group(info, device)
    try:
        result = _train(config, info, device, model_factory or default_factory, uv, on_epoch)
        D.barrier()                       # nobody tears the group down while a peer still receives
        return result
    finally:
        D.destroy_process_group()


def _build_data(config: Config, info: D.DistInfo):
    from data.dataset import PosmapDataset
    from data.index import read_index, split_names
    from data.loader import build_loader

    names = read_index(config.train_dir)
    if config.val_dir is None:
        train_names, val_names = split_names(names, val_fraction=config.val_fraction, seed=config.seed)
        val_root = config.train_dir
        if not val_names:
            _say(info, f"warning: -td holds only {len(names)} samples, too few to hold out "
                       f"{config.val_fraction:.0%} for validation; best.pth follows the training loss.")
    else:
        if any(Path(config.val_dir).glob("*.mat")):
            raise RunError(f"-vd={config.val_dir} is a raw AFLW2000-format folder; validation needs position "
                           f"maps, so run processor.py on it first and pass its output folder.")
        train_names, val_names, val_root = names, read_index(config.val_dir), config.val_dir
        if is_test_like(config.val_dir, config.predict_dir):
            _say(info, f"warning: -vd={config.val_dir} looks like the AFLW2000-3D test set; picking best.pth on "
                       f"test data inflates the reported result (leave -vd out to hold out "
                       f"{config.val_fraction:.0%} of -td instead).")
    train_set = PosmapDataset(config.train_dir, train_names, augment=config.augment, seed=config.seed,
                              pre_read=config.pre_read, rotation=config.augment_rotation)
    val_set = PosmapDataset(val_root, val_names, augment=False) if val_names else None
    global_batch = config.batch_size * info.world_size
    loader = build_loader(train_set, batch_size=config.batch_size, workers=config.num_workers,
                          shuffle=config.shuffle, seed=config.seed, rank=info.rank, world_size=info.world_size,
                          drop_last=len(train_set) >= global_batch, device=None)
    return train_set, val_set, loader


@dataclass
class AngleTarget:
    """What the canonicaliser's angle loss needs (model.canonical): each training face's roll is the 2D Procrustes
    angle from the upright mean position map to its target map over the face region, weighted by --angle-weight."""

    reference: torch.Tensor                # (1, 3, 256, 256) the mean position map / 280
    mask: torch.Tensor                     # (256, 256) bool, the face region (the loss's weight mask > 0)
    weight: float

    def loss(self, vector: torch.Tensor, target_posmaps: torch.Tensor) -> torch.Tensor:
        """vector: (B, 2) the estimator's last output; target_posmaps: (B, 3, 256, 256) -> the angle loss, mean of
        1 - cos of the error (unweighted: the training adds ``weight`` times it)."""
        from model.canonical import angle_loss, roll_of_posmaps

        with torch.no_grad():
            roll = roll_of_posmaps(target_posmaps.float(), self.reference, self.mask)
        return angle_loss(vector, roll)


@dataclass
class _TrainState:
    """Everything one training process carries from epoch to epoch."""

    config: Config
    info: D.DistInfo
    device: torch.device
    name: str
    kwargs: dict
    bfm: str
    model: nn.Module                       # the plain network (checkpoints, callbacks)
    net: nn.Module                         # what runs the forward pass (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scaler: object
    loss_fn: nn.Module
    kpt_ind: np.ndarray
    train_set: object
    val_set: object
    loader: object
    schedule: Callable[[int], float]       # optimiser step -> learning rate / base learning rate
    monitor: Monitor
    step: int = 0
    start_epoch: int = 0
    best_loss: float = math.inf
    history: list = field(default_factory=list)
    deadline: float | None = None
    watch: CollapseWatch | None = None     # is the network still predicting one face for every image?
    angle: AngleTarget | None = None       # --canonicalize: the angle estimator's target and its loss weight

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _train(config: Config, info: D.DistInfo, device: torch.device, factory: ModelFactory,
           uv: UVLayout | None, on_epoch: EpochCallback | None = None) -> TrainResult:
    state = _setup(config, info, device, factory, uv)
    config = state.config
    if info.is_main:
        n_val = 0 if state.val_set is None else len(state.val_set)
        print(f"training {state.name} on {len(state.train_set)} samples ({n_val} validation), {info.world_size} "
              f"process(es) on {device}, batch {config.batch_size} per process, epochs "
              f"{state.start_epoch + 1}..{config.epochs}; run folder {state.out}", flush=True)
    try:
        for epoch in range(state.start_epoch, config.epochs):
            record, stop_early = _train_epoch(state, epoch)
            _end_epoch(state, epoch, record, on_epoch)
            if stop_early:
                _say(info, f"--time-limit of {config.time_limit:g} min reached: stopped after epoch {epoch + 1}")
                break
    finally:
        state.monitor.close()
    history = D.broadcast_object(state.history if info.is_main else None)
    return TrainResult(state.out, state.out / "best.pth", state.out / "last.pth", history, state.model)


def _setup(config: Config, info: D.DistInfo, device: torch.device, factory: ModelFactory,
           uv: UVLayout | None) -> _TrainState:
    """Run folder, face model, data, network (fresh or from a checkpoint), optimiser, and the resumed state."""
    from model.loss import WeightedPosmapLoss

    autocast_context(device, config.precision)                  # fp16 without CUDA: one sentence, before any work
    seed_everything(config.seed)
    config = D.broadcast_object(resolve_run_folder(config) if info.is_main else None)
    out = Path(config.out)
    ckpt_resume = resume_path(config)
    source = ckpt_resume or (Path(config.load_model_path) if config.load_model_path else None)
    source_ckpt = load_checkpoint(source) if source is not None else None
    # the face model: --bfm when given, else the one the checkpoint trained on; stored resolved, so what a
    # checkpoint means never depends on the working directory
    bfm = face_model_for(config.bfm if "bfm" in config.given else None,
                         recorded_bfm(source_ckpt) if source_ckpt is not None else config.bfm)
    config = config.replace(bfm=bfm)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save_json(out / "config.json")
    layout = uv if uv is not None else uv_layout(bfm)
    for folder in dict.fromkeys(f for f in (config.train_dir, config.val_dir) if f is not None):
        try:
            note = check_face_model(folder, bfm, layout)      # a folder of another UV layout: one sentence
        except FaceUtilError as err:
            raise RunError(f"{err}.") from None
        if note:
            _say(info, note)
    train_set, val_set, loader = _build_data(config, info)

    name, kwargs = model_spec(config)
    torch.manual_seed(config.seed)
    if source_ckpt is not None:                                   # the mean position map comes with the weights
        loaded = load_network(source, model=name if "model" in config.given else None, model_kwargs=kwargs,
                              train=True, factory=factory, checkpoint=source_ckpt)
        model, name, kwargs = loaded.module.to(device), loaded.name, loaded.kwargs
    else:
        model = factory(name, **kwargs).to(device)
    mean_map = None
    if (source_ckpt is None and needs_mean_posmap(model)) or is_canonicalized(model):
        try:
            mean_map = train_set.mean_posmap()
        except FaceUtilError as err:
            raise RunError(str(err)) from None
    if source_ckpt is None and needs_mean_posmap(model):
        model.io.set_mean_posmap(mean_map)
        _say(info, f"mean-residual head: mean position map of {min(len(train_set), MEAN_POSMAP_LIMIT)} "
                   f"training samples")
    angle = None
    if is_canonicalized(model):
        reference = torch.as_tensor(mean_map).permute(2, 0, 1).unsqueeze(0).to(device) / POSMAP_SCALE
        angle = AngleTarget(reference, torch.as_tensor(layout.weight_mask > 0).to(device), config.angle_weight)
        _say(info, f"canonicaliser: angle loss x {config.angle_weight:g}, each face's roll read from its target map")
    if config.channels_last:
        to_channels_last(model)
    if info.distributed and device.type == "cuda" and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(config.optimizer, parameter_groups(model, config.weight_decay, config.decay_norm_bias),
                               config.lr)
    steps_per_epoch = len(loader)
    if config.warmup_steps >= config.epochs * steps_per_epoch > 0:
        raise RunError(f"--warmup={config.warmup_steps} steps is as long as the whole run or longer "
                       f"({config.epochs} epochs of {steps_per_epoch} batches = {config.epochs * steps_per_epoch} "
                       f"steps): the learning rate would never reach --lr; use a shorter --warmup or more --epochs.")
    schedule = functools.partial(lr_factor, warmup_steps=config.warmup_steps, steps_per_epoch=steps_per_epoch,
                                 total_steps=config.epochs * steps_per_epoch, schedule=config.lr_schedule,
                                 decay=config.lr_decay)
    state = _TrainState(config=config, info=info, device=device, name=name, kwargs=kwargs, bfm=bfm, model=model,
                        net=net, optimizer=optimizer, scaler=grad_scaler(device, config.precision),
                        loss_fn=WeightedPosmapLoss(layout.weight_mask).to(device), kpt_ind=layout.kpt_ind,
                        train_set=train_set, val_set=val_set, loader=loader, schedule=schedule,
                        monitor=Monitor(out / "tensorboard", enabled=info.is_main),
                        deadline=time.monotonic() + 60.0 * config.time_limit if config.time_limit > 0 else None,
                        watch=CollapseWatch(torch.as_tensor(layout.weight_mask) > 0,
                                            config.warmup_steps + COLLAPSE_CHECK_AFTER_WARMUP), angle=angle)
    if ckpt_resume is not None:
        _resume(state, source_ckpt, ckpt_resume)
    return state


def _resume(state: _TrainState, ck: dict, path: Path) -> None:
    """Optimiser, scaler, epoch, step, history, RNG and data-order state of a --resume checkpoint."""
    if "optimizer" not in ck:
        raise RunError(f"{path} holds weights only (no optimiser state); use --loadModelPath to start from it "
                       f"instead of --resume.")
    state.optimizer.load_state_dict(ck["optimizer"])
    if state.scaler.is_enabled() and ck.get("scaler"):
        state.scaler.load_state_dict(ck["scaler"])
    state.start_epoch, state.best_loss = int(ck["epoch"]), float(ck["best_val_loss"])
    state.step = int(ck.get("step", state.start_epoch * len(state.loader)))
    state.history = list(ck.get("history", []))
    state.watch.load_state_dict(ck.get("collapse_watch"))
    states, info = ck["rng"], state.info
    restore_rng_state(states[info.rank] if len(states) == info.world_size else states[0])
    gen = ck.get("data_state", {}).get("generator")
    if gen is not None and getattr(state.loader, "generator", None) is not None:
        state.loader.generator.set_state(gen)
    _say(info, f"resuming {path} after epoch {state.start_epoch}")


def _train_epoch(state: _TrainState, epoch: int) -> tuple[dict, bool]:
    """One pass over the training loader. Returns (history record: epoch, train_loss, lr (the last step's),
    step, train_seconds[, stopped_early]), whether --time-limit stopped it)."""
    config, info, device = state.config, state.info, state.device
    state.loader.sampler.set_epoch(epoch)
    state.net.train()
    epoch_start = time.perf_counter()
    lr = config.lr * state.schedule(state.step)
    epoch_sum, epoch_count, stop_early = 0.0, 0, False
    angle_sum = 0.0                                              # --canonicalize: the angle loss (unweighted)
    bar = _progress(state.loader, info, config, f"epoch {epoch + 1}/{config.epochs}")
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["posmap"].to(device, non_blocking=True)
        state.optimizer.zero_grad(set_to_none=True)
        lr = config.lr * state.schedule(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        with autocast_context(device, config.precision):
            pred = state.net(x)
        posmap_loss = loss = state.loss_fn(pred.float(), y)        # train_loss and best.pth: the position map's
        if state.angle is not None:
            angle_loss = state.angle.loss(state.model.last_vector, y)
            angle_value = float(angle_loss.detach())
            state.monitor.scalar("train/angle_loss", angle_value, state.step)
            angle_sum += angle_value * x.shape[0]
            loss = loss + state.angle.weight * angle_loss
        time_up = state.deadline is not None and info.is_main and time.monotonic() > state.deadline
        stats = torch.tensor([posmap_loss.detach().double().item() * x.shape[0], x.shape[0],
                              0.0 if torch.isfinite(loss).item() else 1.0, float(time_up)], dtype=torch.float64)
        if info.distributed:
            stats = D.all_reduce_sum(stats.to(device)).cpu()
        if stats[2] > 0:
            raise _nan_error(epoch, state.step, state.out / "last.pth")
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.step += 1
        stop_early = bool(stats[3] > 0)
        epoch_sum += float(stats[0])
        epoch_count += int(stats[1])
        batch_loss = float(stats[0] / stats[1])
        state.monitor.scalar("train/loss", batch_loss, state.step)
        if info.is_main:
            spread = state.watch.update(pred, y)
            if spread is not None:
                state.monitor.scalar("train/spread_ratio", spread, state.step)
            warning = state.watch.verdict(state.step)
            if warning:
                _say(info, warning)
        bar.set_postfix(loss=f"{batch_loss:.5f}", refresh=False)
        if stop_early:
            break
    record = {"epoch": epoch + 1, "train_loss": epoch_sum / max(epoch_count, 1), "lr": lr, "step": state.step,
              "train_seconds": round(time.perf_counter() - epoch_start, 2)}
    if info.is_main and state.watch.value is not None:
        record["spread_ratio"] = round(state.watch.value, 4)
    if state.angle is not None:                                   # this process's batches (1 - cos of the error)
        record["angle_loss"] = round(angle_sum * max(1, info.world_size) / max(epoch_count, 1), 6)
    if stop_early:
        record["stopped_early"] = True
    return record, stop_early


def _end_epoch(state: _TrainState, epoch: int, record: dict, on_epoch: EpochCallback | None) -> None:
    """Validate (rank 0), keep the history, write last.pth (and best.pth when the validation -- else training --
    loss improved), log, call on_epoch."""
    config, info, step = state.config, state.info, state.step
    if info.is_main:
        if state.val_set is not None:
            val = validate(unwrap(state.net), state.val_set, state.loss_fn, state.kpt_ind, state.device,
                           config.batch_size, config.precision)
            record.update(val_loss=val["loss"], val_nme2d=val["nme2d"])
            state.monitor.scalar("val/loss", val["loss"], step)
            state.monitor.scalar("val/nme2d", val["nme2d"], step)
            log_sample(state.monitor, val["sample"], state.kpt_ind, step)
            select = val["loss"]
        else:
            select = record["train_loss"]
        if math.isfinite(select):
            state.monitor.scalar("train/epoch_loss", record["train_loss"], step)
            state.monitor.scalar("train/lr", record["lr"], step)
        else:
            record = None
    else:
        record, select = {}, 0.0
    if not D.broadcast_object(record is not None):
        raise _nan_error(epoch, step, state.out / "last.pth", where="validation")
    rng_states = _gather_rng(info)
    if info.is_main:
        improved = select < state.best_loss
        state.best_loss = min(state.best_loss, select)
        state.history.append(record)
        loader = state.loader
        ck = make_checkpoint(
            state.model, state.name, state.kwargs, optimizer=state.optimizer.state_dict(),
            epoch=epoch + 1, best_val_loss=state.best_loss, val_loss=select, rng=rng_states,
            data_state={"epoch": epoch + 1, "seed": config.seed,
                        "generator": loader.generator.get_state() if loader.generator is not None else None},
            history=state.history, config=config.to_dict(), bfm=state.bfm, world_size=info.world_size, step=step,
            collapse_watch=state.watch.state_dict(),
            **({"scaler": state.scaler.state_dict()} if state.scaler.is_enabled() else {}))
        last = save_checkpoint(state.out / "last.pth", ck)
        if improved:                                  # the same bytes: linked, not serialised and written twice
            copy_checkpoint(last, state.out / "best.pth")
        _write_history(state.out / "history.json", state.history)
        state.monitor.flush()
        text = ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        print(text + (" (best)" if improved else ""), flush=True)
        if on_epoch is not None:
            on_epoch(state.model, record)
    D.barrier()


def _progress(loader, info: D.DistInfo, config: Config, desc: str):
    """A bar over the epoch's batches on a terminal; in a log file nothing (the epoch's own line follows)."""
    from faceutil.progress import progress

    return progress(loader, desc=desc, unit="batch", enabled=info.is_main and config.progress, lines=False,
                    leave=False)


def _nan_error(epoch: int, step: int, last_path: Path, where: str = "training") -> RunError:
    kept = f"the last good checkpoint is {last_path}" if last_path.is_file() else "no checkpoint had been written yet"
    return RunError(f"Training stopped: the {where} loss became NaN or infinite in epoch {epoch + 1} "
                    f"(step {step + 1}); {kept} (try a lower --lr).")


def _gather_rng(info: D.DistInfo) -> list:
    """Every rank's RNG state, in rank order (gathered to all ranks; only rank 0 saves them)."""
    state = capture_rng_state()
    if not info.distributed:
        return [state]
    import torch.distributed as dist

    box: list = [None] * info.world_size
    dist.all_gather_object(box, state)
    return box


def _write_history(path: Path, history: list) -> None:
    from faceutil.sampleio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(history, indent=1) + "\n").encode("utf-8"))
