"""Process groups for DistributedDataParallel: one node spawned with --gpu=N, or PyTorch's torchrun launcher.

NCCL on CUDA devices, gloo on CPU. Device choice itself goes through model.device.get_device only.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from engine.errors import RunError

_USER_ERRORS: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank (global), world_size, local_rank (on this node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when PyTorch's launcher (or our spawner) has set RANK / WORLD_SIZE for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def info_from_env() -> DistInfo:
    """DistInfo from RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0))))


def process_device(prefer: str | None, info: DistInfo) -> torch.device:
    """This process's device: model.device.get_device(prefer); with several processes on CUDA, cuda:<local_rank>."""
    from model.device import get_device

    device = get_device(prefer)
    if info.distributed and device.type == "cuda":
        device = get_device(f"cuda:{info.local_rank}")
    return device


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo otherwise); no-op for a single process."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; returned); identity for a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable objects); identity for a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(local_rank: int, fn: Callable, args: tuple, nprocs: int, port: int, errors) -> None:
    """Child-process entry: set the rendezvous environment, run fn(*args); user errors go back as one sentence."""
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from config import ConfigError
    from faceutil.errors import FaceUtilError

    try:
        fn(*args)
    except (RunError, ConfigError, FaceUtilError) as err:
        errors.put((local_rank, str(err)))
        destroy_process_group()
        sys.exit(3)


def spawn(fn: Callable, args: tuple, nprocs: int) -> None:
    """Run fn(*args) in ``nprocs`` fresh processes on this node (torch.multiprocessing spawn) as one DDP group.

    A RunError / ConfigError / FaceUtilError in a child is raised here as RunError with the child's sentence.
    """
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_spawn_entry, args=(fn, args, nprocs, free_port(), errors), nprocs=nprocs, join=True)
    except mp.ProcessExitedException as err:
        messages = []
        while not errors.empty():
            messages.append(errors.get())
        if messages:
            raise RunError(sorted(messages)[0][1]) from None
        raise RunError(f"A training process stopped unexpectedly ({err}).") from None
    except mp.ProcessRaisedException as err:
        text = str(err).strip().splitlines()
        raise RunError(f"A training process failed: {text[-1] if text else err}.") from None
