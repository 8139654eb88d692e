"""The training and evaluation data as the engine feeds them: a resumable, per-sample seeded
order of training batches, every evaluation item once over the processes, and the check of every
item before the first step (:func:`check_datasets`)."""
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler, default_collate

from ..utils import mix_seed, seeded_rngs
from .config import TrainConfig
from .distributed import DistInfo
from .plan import RunPlan
from .task import Task

__all__ = ["check_datasets", "train_sampler", "train_loader", "eval_loader", "micro_batch_counter", "move_to", "batch_len"]

# --- data: resumable order and per-sample seeded augmentation ------------------------------------------

# one sample's seed, and its RNGs seeded for the block that loads it (shared with litvit.data.shards)
_mix, _seeded_rngs = mix_seed, seeded_rngs


class _SeededDataset(Dataset):
    """Wraps a training dataset: item ``(index, seed)`` loads ``dataset[index]`` with every RNG seeded by ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with _seeded_rngs(seed):
            return self.dataset[index]


class _ResumableBatches(Sampler):
    """Batches of ``(index, sample_seed)`` from a per-rank sampler; can start mid-epoch.

    Order comes from ``sampler`` (after ``set_epoch``); seeds from ``(seed, epoch, rank, position)``.
    ``skip_batches`` (set before iterating) drops the batches a resumed run has already trained on.
    """

    def __init__(self, sampler: Sampler, batch_size: int, seed: int, rank: int, num_batches: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_batches = num_batches
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches - self.skip_batches

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        batch, b = [], 0
        for pos, index in enumerate(self.sampler):
            if b >= skip:
                batch.append((int(index), _mix(self.seed, self.epoch, self.rank, pos)))
            if (pos + 1) % self.batch_size == 0:
                if batch:
                    yield batch
                batch, b = [], b + 1
                if b >= self.num_batches:
                    return


class _ShardSampler(Sampler):
    """Rank r evaluates items r, r + world, r + 2 world, ...: every item exactly once over all ranks."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def check_datasets(datasets: Sequence[Optional[Dataset]], dist: "DistInfo", progress: bool = True) -> None:
    """Check every item of every dataset that will be read, before the first step: rank 0 calls
    each dataset's ``scan(progress)`` (cheap: file headers, sizes, label ranges; see the dataset
    classes), every rank then leaves out what it says cannot be used (``drop(indices)``: skipped
    unreadable images, detection images left without a box). A dataset without ``scan`` is taken
    as it is. A bad item raises, on every rank, the dataset's one-line error."""
    for ds in datasets:
        scan = getattr(ds, "scan", None)
        if scan is None:
            continue
        error, drop = None, []
        if dist.is_main:
            try:
                drop = list(scan(progress=progress))
            except (ValueError, OSError) as e:
                error = str(e) or type(e).__name__
        error, drop = dist.broadcast_object((error, drop))
        if error is not None:
            raise ValueError(error)
        if drop:
            ds.drop(drop)


def train_loader(task: Task, train_set: Dataset, sampler: Optional[Sampler], cfg: TrainConfig, plan: RunPlan,
                 dist: DistInfo) -> Tuple[DataLoader, Any]:
    """``(loader, batches)``: this rank's training batches of ``plan.batch_per_process``; ``batches``
    takes ``set_epoch(epoch)`` and ``skip_batches`` (a resumed epoch starts where it stopped)."""
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps the loader off the global RNG
    pin, num = dist.device.type == "cuda", plan.steps_per_epoch * cfg.accum_steps
    if sampler is None:  # a stream: its workers are started anew each epoch, with the epoch and the batches to skip
        batches = train_set.configure(plan.batch_per_process, cfg.seed, dist.rank, dist.world_size, cfg.workers,
                                      num, collate=task.collate_fn() or default_collate)
        return DataLoader(batches, batch_size=None, num_workers=cfg.workers, pin_memory=pin,
                          generator=loader_gen), batches
    batches = _ResumableBatches(sampler, plan.batch_per_process, cfg.seed, dist.rank, num)
    return DataLoader(_SeededDataset(train_set), batch_sampler=batches, num_workers=cfg.workers,
                      collate_fn=task.collate_fn(), pin_memory=pin, persistent_workers=cfg.workers > 0,
                      generator=loader_gen), batches


def train_sampler(task: Task, train_set: Dataset, cfg: TrainConfig, dist: DistInfo) -> Optional[Sampler]:
    """The task's sampler over this rank's share, else a DistributedSampler shuffled by ``(seed, epoch)``;
    None for a stream (it deals its own shards)."""
    if isinstance(train_set, IterableDataset):
        return None
    sampler = task.train_sampler(train_set, dist)
    if sampler is None:
        sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=False)
    return sampler


def micro_batch_counter(train_set: Dataset, sampler: Optional[Sampler], cfg: TrainConfig, dist: DistInfo):
    """``(count, note)``: micro-batches per process per epoch as a function of the per-process batch
    (for :meth:`RunPlan.resolve`), and the training set in words."""
    if sampler is None:
        count = lambda b: train_set.max_batches(b, dist.world_size, cfg.workers)  # noqa: E731
        return count, f"{len(train_set)} images"
    return (lambda b: len(sampler) // b), f"{len(train_set)} images, {len(sampler)} per process"


def eval_loader(task: Task, val_set: Dataset, batch_size: int, cfg: TrainConfig, dist: DistInfo, persistent: bool = False
                 ) -> DataLoader:
    """Every item of ``val_set`` once over all processes: rank r evaluates items r, r + world, ...
    (a stream of shards splits its shards instead)."""
    pin = dist.device.type == "cuda"
    if isinstance(val_set, IterableDataset):
        return DataLoader(val_set.split(dist.rank, dist.world_size), batch_size=batch_size,
                          num_workers=cfg.workers, collate_fn=task.collate_fn(), pin_memory=pin)
    return DataLoader(val_set, batch_size=batch_size,
                      sampler=_ShardSampler(len(val_set), dist.rank, dist.world_size), num_workers=cfg.workers,
                      collate_fn=task.collate_fn(), pin_memory=pin, persistent_workers=persistent and cfg.workers > 0)


def move_to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


def batch_len(batch: Any) -> int:
    """Images in a collated batch (the first tensor's length)."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_len(next(iter(batch.values())))
    return len(batch) if hasattr(batch, "__len__") else 0
