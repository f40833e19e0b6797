"""The DataLoader for training and evaluation: epoch-tagged (distributed) sampling, persistent workers, pinning.

One builder, build_loader; the sampler it installs is a DistributedSampler (one replica when not distributed).
"""
from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class EpochSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch: yields (epoch, index) for datasets that accept it.

    Persistent loader workers hold their own copy of the dataset, so an epoch set on the main process's dataset
    never reaches them; tagging each index with the epoch does. For a dataset with `accepts_epoch_tag` and
    `set_epoch` (PosmapDataset) the dataset's epoch is the one source of truth: `sampler.set_epoch(e)` sets it,
    and `dataset.set_epoch(e)` alone also changes both the shuffle and the augmentation. Other datasets get plain
    indices. Shuffling is torch's DistributedSampler permutation seeded by seed + epoch (the same for every rank);
    with num_replicas=1 it needs no process group.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        self._tagged = bool(getattr(dataset, "accepts_epoch_tag", False)) and hasattr(dataset, "set_epoch")
        self._ready = False  # DistributedSampler.__init__ assigns epoch = 0: keep that off the dataset
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self._ready = True

    @property
    def epoch(self) -> int:
        return int(self.dataset.epoch) if self._tagged else self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        if self._tagged and self._ready:
            self.dataset.set_epoch(int(value))

    def __iter__(self):
        epoch = self.epoch
        indices = super().__iter__()
        if not self._tagged:
            return indices
        return ((epoch, i) for i in indices)


def _pin_memory(device) -> bool:
    """Pin host memory only when batches go to a CUDA device (model.device decides when it exists)."""
    if device is None:
        try:
            from model.device import get_device
        except ImportError:
            return torch.cuda.is_available()
        device = get_device()
    return torch.device(device).type == "cuda"


def _init_worker(worker_id: int, *, threads: int = 1) -> None:
    """Loader worker start: one torch thread each, so workers x threads never oversubscribe the cores (OpenCV's
    single thread is inherited from the parent, see build_loader).

    No randomness is seeded here: augmentation draws come from (seed, epoch, index) alone (PosmapDataset), and
    torch seeds each worker's torch/random generators from the loader's seeded generator.
    """
    torch.set_num_threads(threads)


def build_loader(dataset: Dataset, batch_size: int, workers: int = 0, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False, device=None,
                 prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over `dataset` for one process of a (possibly distributed) run.

    batch_size: per process. workers: loader worker processes (0 = load in this process); when > 0 they are
    persistent (started once, reused every epoch, not re-forked). shuffle: a new permutation per epoch, seeded
    by seed + epoch. rank / world_size: this process's share (a DistributedSampler over world_size replicas;
    rank r gets indices r, r + world_size, ... of the epoch's order, padded by repetition to equal length
    unless drop_last). drop_last: also drop the last incomplete batch. device: where batches go (pin_memory
    only for CUDA); None asks model.device.get_device(), or torch.cuda.is_available() without it.
    Call `loader.sampler.set_epoch(epoch)` (or `dataset.set_epoch(epoch)`) before each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                           drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(seed * 1000003 + rank)
    extra = {}
    if workers > 0:
        # OpenCV's thread pool (pthreads) is not fork-safe: cv2.setNumThreads in a forked worker hangs for ever once
        # the parent has used the pool (measured 2026-12-07: a 2000-px warpAffine in the parent, then the call in
        # each worker). So the parent's OpenCV goes single-threaded here, before the workers are forked, and they
        # inherit it: workers x OpenCV threads never oversubscribe the cores either.
        import cv2

        cv2.setNumThreads(1)
        extra = dict(persistent_workers=True, prefetch_factor=prefetch_factor,
                     worker_init_fn=functools.partial(_init_worker, threads=1))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=_pin_memory(device), drop_last=drop_last, generator=generator, **extra)
