"""The one training / evaluation loop of litvit, shared by every task.

A task (classification, detection, segmentation) subclasses :class:`Task` and says how to build
its model and datasets, how to compute a training loss from a batch, and how to evaluate;
:func:`fit` does everything else, the same way for every task:

* one process or many: under ``torchrun --nproc_per_node N`` it initialises ``torch.distributed``
  from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; gloo on CPU, NCCL on CUDA), wraps
  the model in ``DistributedDataParallel``, shards the data, reduces metrics across ranks and lets
  only rank 0 write;
* AdamW over :func:`param_groups` (the authors' rules: no weight decay on 1-D parameters, biases,
  class tokens and relative position tables; DTM offset-predictor weights in a group at
  ``lr x offset_lr_mult``; dense tasks pass mmcv-style ``no_decay_keys``),
  timm's cosine schedule with linear warm-up updated every optimizer step, gradient accumulation,
  gradient clipping, optional EMA of the weights (timm ``ModelEmaV3``), gradient checkpointing;
* mixed precision: bf16 autocast on CPU, fp16 with a ``GradScaler`` or bf16 on CUDA;
* nothing lost: every item of every split is checked (cheaply) before the first step
  (:func:`check_datasets`); a checkpoint with the full state (model, optimizer, scheduler, scaler,
  EMA, epoch, step, position inside the epoch and the epoch's loss sums so far, every rank's RNG
  states, config, task settings and extras) written atomically (temporary file, fsync,
  ``os.replace``) at the end of every epoch, *before* that epoch is evaluated, and every
  ``save_every_steps`` optimizer steps; ``last.pth`` and ``best.pth`` kept; ``resume="auto"``
  continues from ``output_dir/last.pth``, and refuses changed settings unless ``resume_changed``;
  a full disk stops the run with one line and the previous checkpoint in place;
* one writer per output folder: ``output_dir/.lock`` (:class:`OutputLock`);
* reproducible resume: the data order is a function of ``(seed, epoch)`` and every sample is
  augmented under RNGs seeded from ``(seed, epoch, rank, position)``, whatever the number of
  loader workers; a run killed mid-epoch and resumed sees the same batches with the same
  augmentations and continues with the same model/mixup RNG state as an uninterrupted run;
* logs: ``log.jsonl`` (every ``log_every`` steps and every epoch), ``metrics.csv`` (one row per
  epoch), a tqdm bar per epoch on rank 0, ``curves.png`` (loss, metrics, learning rate) at the end.

The task interface::

    class Task:
        name: str
        def build_model(self) -> nn.Module
        def build_datasets(self) -> tuple[Dataset, Dataset | None]          # (train, val); each may have
                                                                            # scan(progress) / drop(indices)
        def collate_fn(self) -> Callable | None                             # default None
        def train_sampler(self, dataset, dist) -> Sampler | None            # default: shuffled, sharded
        def param_groups(self, model, cfg) -> list[dict]                    # default: engine.param_groups
        def on_epoch_start(self, model, epoch)                              # default: nothing
        def build_scheduler(self, optimizer, cfg, steps_per_epoch)          # default: cosine + warm-up
        def train_step(self, model, batch, device) -> tuple[Tensor, dict]   # loss, metrics to log
        def evaluate(self, model, loader, device, dist) -> dict             # reduced across ranks; "score"
        def run_config(self) -> dict                                        # compared on resume
        def checkpoint_extra(self) -> dict                                  # stored in every checkpoint
        def load_weights(self, model, path, use_ema=False)                  # for evaluate()

Examples::

    >>> import torch
    >>> from torch import nn
    >>> from litvit.engine import Task, TrainConfig, fit
    >>> class Toy(Task):
    ...     name = "toy"
    ...     def build_model(self): return nn.Linear(4, 2)
    ...     def build_datasets(self):
    ...         x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
    ...         ds = torch.utils.data.TensorDataset(x, y)
    ...         return ds, ds
    ...     def train_step(self, model, batch, device):
    ...         x, y = (t.to(device) for t in batch)
    ...         return nn.functional.cross_entropy(model(x), y), {}
    ...     def evaluate(self, model, loader, device, dist):
    ...         correct = total = 0
    ...         for x, y in loader:
    ...             correct += (model(x).argmax(1) == y).sum().item(); total += len(y)
    ...         correct, total = dist.reduce_sum([correct, total])
    ...         return {"score": correct / total}
    >>> import tempfile
    >>> summary = fit(Toy(), TrainConfig(output_dir=tempfile.mkdtemp(), epochs=2, batch_size=16, lr=1e-2,
    ...                                  warmup_epochs=0, progress=False, verbose=False))
    >>> sorted(summary)[:3]
    ['best_checkpoint', 'best_epoch', 'best_score']

From the shell, every task's ``train`` command is a thin layer over :func:`fit`::

    litvit train --recipe digits --output runs/digits                       # one process
    torchrun --nproc_per_node 2 -m litvit train --recipe digits --output runs/digits2
"""
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .utils import atomic_path, atomic_write

__all__ = [
    "Task", "TrainConfig", "DistInfo", "fit", "evaluate", "param_groups", "describe_param_groups", "save_checkpoint_atomic",
    "CheckpointWriteError", "OutputLock", "OutputLockedError", "check_datasets", "changed_settings", "auto_threads",
    "load_checkpoint", "setup_distributed", "per_process_batch_size", "autocast", "unwrap_model", "sync_buffers",
    "LAST", "BEST", "AMP_MODES",
]

LAST = "last.pth"
BEST = "best.pth"
AMP_MODES = ("none", "bf16", "fp16")


# --- configuration ------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything :func:`fit` needs besides the task. Defaults follow the paper's DeiT recipe.

    Attributes:
        output_dir (str): checkpoints, logs and curves go here (created by rank 0).
        epochs (int): training epochs.
        batch_size (int): images per process per forward (the global batch per optimizer step is
            ``batch_size * world_size * accum_steps``; see :func:`per_process_batch_size`).
        accum_steps (int): micro-batches accumulated per optimizer step.
        lr (float): peak learning rate *per 512 images*; the optimizer uses
            ``lr * global_batch / 512`` when ``scale_lr`` (the paper's rule), ``lr`` otherwise.
        scale_lr (bool): apply the batch/512 scaling to ``lr``.
        min_lr (float): end of the cosine schedule (not scaled).
        warmup_epochs (float): linear warm-up length, from ``warmup_lr`` (not scaled).
        warmup_lr (float): learning rate at step 0.
        weight_decay (float): AdamW weight decay (only on the decayed group).
        opt_eps (float): AdamW epsilon.
        opt_betas (Tuple[float, float]): AdamW betas.
        clip_grad (float, optional): clip the global gradient norm to this value.
        offset_lr_mult (float): learning-rate multiplier of the DTM offset predictors.
        amp (str): ``"none"``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a GradScaler).
        ema_decay (float): EMA of the weights with this decay; 0 turns it off.
        grad_checkpointing (bool): recompute activations in the backward pass.
        seed (int): seeds model initialisation, data order, augmentation and dropout.
        workers (int): data-loader worker processes per rank.
        threads (int | str, optional): ``torch.set_num_threads`` for this process; None keeps torch's
            default; ``"auto"`` picks it from the load average (:func:`auto_threads`). On a CPU shared
            with other jobs, 1 avoids OpenMP threads spinning while they wait for each other (many
            times slower than one thread when the cores are busy).
        val_batch_size (int, optional): per-process evaluation batch; ``batch_size`` when None.
        save_every_steps (int): also checkpoint every N optimizer steps (0: only at epoch ends).
        resume (str, optional): ``"auto"`` (continue from ``output_dir/last.pth`` if present), a
            checkpoint path, or ``"never"`` (start fresh; refuses to overwrite an existing run).
        resume_changed (bool): resume although the settings differ from the checkpoint's (the new
            ones apply, the schedule included); without it such a resume is refused, naming the changes.
        log_every (int): log the training loss every N optimizer steps.
        eval_every (int): evaluate every N epochs (and always after the last one).
        max_steps (int, optional): stop after this many optimizer steps in total (checkpointed);
            for benchmarks and time-boxed jobs; the schedule still spans ``epochs``.
        device (str): ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        progress (bool): tqdm bars on rank 0.
        verbose (bool): print the run's set-up and one line per epoch on rank 0.
        sync_bn (bool): convert BatchNorm layers to SyncBatchNorm (CUDA with several processes).
    """
    output_dir: str = "runs/train"
    epochs: int = 300
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 5e-4
    scale_lr: bool = True
    min_lr: float = 1e-5
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    clip_grad: Optional[float] = None
    offset_lr_mult: float = 0.01
    amp: str = "none"
    ema_decay: float = 0.0
    grad_checkpointing: bool = False
    seed: int = 0
    workers: int = 0
    threads: Optional[Union[int, str]] = None
    val_batch_size: Optional[int] = None
    save_every_steps: int = 0
    resume: Optional[str] = "auto"
    resume_changed: bool = False
    log_every: int = 50
    eval_every: int = 1
    max_steps: Optional[int] = None
    device: str = "auto"
    progress: bool = True
    verbose: bool = True
    sync_bn: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first value that cannot work."""
        positive = dict(epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                        log_every=self.log_every, eval_every=self.eval_every)
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r} is not one of {AMP_MODES}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must lie in [0, epochs={self.epochs}]")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive (or None), got {self.clip_grad}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.threads is not None and self.threads != "auto" and int(self.threads) < 1:
            raise ValueError(f"threads must be at least 1, 'auto' or None, got {self.threads}")
        if self.workers < 0 or self.save_every_steps < 0:
            raise ValueError("workers and save_every_steps must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (or None), got {self.max_steps}")


def per_process_batch_size(global_batch: int, accum_steps: int = 1, world_size: Optional[int] = None) -> int:
    """Images per process per forward for a global batch per optimizer step.

    ``world_size`` defaults to ``$WORLD_SIZE`` (set by torchrun) or 1. Raises ValueError when the
    global batch does not divide into processes x accumulation steps.

    Examples::
        >>> per_process_batch_size(256, accum_steps=2, world_size=4)
        32
    """
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    parts = world * accum_steps
    if global_batch < 1 or global_batch % parts:
        raise ValueError(f"batch size {global_batch} does not divide into {world} process(es) x "
                         f"{accum_steps} accumulation step(s); use a multiple of {parts}")
    return global_batch // parts


def auto_threads() -> Optional[int]:
    """CPU threads for one process: None (torch's default, every core) when ``OMP_NUM_THREADS`` is
    set (torchrun sets it to 1) or the machine is idle, else the cores the 1-minute load average
    leaves free, at least 1. On a CPU busy with other jobs, OpenMP threads that wait for each other
    make N threads many times slower than the free cores alone.

    Examples::
        >>> auto_threads() is None or auto_threads() >= 1
        True
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        return None
    if busy <= 0:
        return None
    return max(1, min(cores, torch.get_num_threads()) - busy)


def set_threads(threads: Optional[Union[int, str]]) -> str:
    """Apply ``TrainConfig.threads`` and say what was chosen (for the run's header)."""
    if threads == "auto":
        chosen = auto_threads()
        if chosen is not None:
            torch.set_num_threads(chosen)
            return f"{chosen} (auto: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        return f"{torch.get_num_threads()} (auto)"
    if threads is not None:
        torch.set_num_threads(int(threads))
    return str(torch.get_num_threads())


# --- distributed ----------------------------------------------------------------------------------

@dataclass
class DistInfo:
    """Where this process stands: rank, world size, device, and reductions that are no-ops alone.

    Attributes:
        rank (int): global rank (0 alone).
        world_size (int): number of processes.
        local_rank (int): rank on this machine (picks the CUDA device).
        device (torch.device): the device this process trains on.
        initialized_here (bool): :func:`setup_distributed` created the process group (and tears it down).
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def reduce_sum(self, values: Union[Tensor, Sequence[float]]) -> Union[Tensor, List[float]]:
        """Sum over ranks. A tensor comes back as a tensor, a list of numbers as a list of floats
        (in float64, so counts stay exact)."""
        as_list = not isinstance(values, Tensor)
        t = torch.as_tensor(values, dtype=torch.float64) if as_list else values
        if self.distributed:
            backend = torch_dist.get_backend()
            on = self.device if backend == "nccl" else torch.device("cpu")
            t_dev = t.to(on).clone()
            torch_dist.all_reduce(t_dev, op=torch_dist.ReduceOp.SUM)
            t = t_dev.to(t.device)
        return t.tolist() if as_list else t

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``env://``), or run alone when ``WORLD_SIZE`` is unset/1.

    Backend: NCCL when training on CUDA, gloo on CPU. ``device`` is ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if use_cuda:
        dev = torch.device(device if device.startswith("cuda:") else f"cuda:{local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                      timeout=timedelta(minutes=30))
        info.initialized_here = True
    return info


def sync_buffers(module: nn.Module, dist: DistInfo) -> None:
    """Make every rank's buffers equal: floating ones (BatchNorm running statistics) averaged over
    ranks, integer ones (``num_batches_tracked``) taken from rank 0. Called before evaluating and
    checkpointing, so that what rank 0 saves is what every rank evaluated."""
    if not dist.distributed:
        return
    for b in module.buffers():
        t = b.data if torch_dist.get_backend() == "nccl" or b.device.type == "cpu" else b.data.cpu()
        if b.is_floating_point():
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
            t /= dist.world_size
        else:
            torch_dist.broadcast(t, src=0)
        if t is not b.data:
            b.data.copy_(t)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --- the task interface ---------------------------------------------------------------------------

class Task:
    """What a task tells the engine. Subclasses override the methods that raise NotImplementedError.

    Attributes:
        name (str): ``"classification"``, ``"detection"``, ``"segmentation"``, ...
        curve_metrics (Tuple[str, ...]): evaluation metrics drawn in ``curves.png``.
        find_unused_parameters (bool): passed to DistributedDataParallel.
    """
    name: str = "task"
    curve_metrics: Tuple[str, ...] = ("score",)
    find_unused_parameters: bool = False

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        """(train, val); val may be None (no evaluation, the last checkpoint is also the best)."""
        raise NotImplementedError

    def collate_fn(self) -> Optional[Callable]:
        return None

    def train_sampler(self, dataset: Dataset, dist: DistInfo) -> Optional[Sampler]:
        """A sampler over *this rank's* share of ``dataset``; None means the engine's default (a
        DistributedSampler, shuffled by ``(seed, epoch)``). It may have ``set_epoch``."""
        return None

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> List[dict]:
        return param_groups(model, cfg.weight_decay, offset_lr_mult=cfg.offset_lr_mult)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called with the unwrapped model before each training epoch (0-based); default nothing."""

    def build_scheduler(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """A timm scheduler stepped with ``step_update(optimizer_step)``; default: cosine with linear
        warm-up over ``cfg.epochs``. Dense tasks override it (step decay, poly)."""
        from timm.scheduler import CosineLRScheduler
        total_steps = cfg.epochs * steps_per_epoch
        warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        return CosineLRScheduler(
            optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=cfg.min_lr, warmup_t=warmup_steps,
            warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Dict[str, float]]:
        """Loss of one (micro-)batch (autocast is already on) and scalar metrics to log."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, dist: DistInfo) -> Dict[str, float]:
        """Metrics over this rank's shard, reduced across ranks (``dist.reduce_sum``); key
        ``"score"`` (higher is better) picks the best checkpoint."""
        raise NotImplementedError

    def run_config(self) -> dict:
        """The task's settings that define a run (plain values), saved in every checkpoint; a resume
        with other values is refused unless ``TrainConfig.resume_changed``. Data paths are left out
        (a dataset may move between a run and its resume)."""
        return {}

    def checkpoint_extra(self) -> dict:
        """Plain values (str, numbers, lists, dicts) saved in every checkpoint under ``"extra"``,
        e.g. what is needed to rebuild the model without the command line."""
        return {}

    def load_weights(self, model: nn.Module, path: str, use_ema: bool = False) -> None:
        """Load a checkpoint's weights for :func:`evaluate`: by default a litvit training checkpoint,
        strictly. Tasks that accept other layouts (official releases) override it."""
        ckpt = load_checkpoint(path)
        key = "model_ema" if use_ema and ckpt.get("model_ema") is not None else "model"
        if key not in ckpt:
            raise ValueError(f"{path} is not a litvit training checkpoint (no '{key}' entry)")
        _load_state_dict_strict(model, ckpt[key], path)


def _load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], path: str) -> None:
    from .models.convert import CheckpointMismatchError
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [k for k in state_dict if k in target and state_dict[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"{what}: {few(keys)}" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)) if keys]
        raise CheckpointMismatchError(f"checkpoint {path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict)


# --- parameter groups -------------------------------------------------------------------------------

def _no_weight_decay_names(model: nn.Module) -> set:
    """Full parameter names listed by ``no_weight_decay()`` of the model and of every submodule."""
    names = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            for n in fn():
                names.add(f"{prefix}.{n}" if prefix else n)
    return names


def param_groups(
        model: nn.Module,
        weight_decay: float,
        lr: Optional[float] = None,
        offset_lr_mult: float = 0.01,
        no_decay_keys: Optional[Sequence[str]] = None,
) -> List[dict]:
    """AdamW parameter groups with the authors' rules.

    ImageNet rules (``no_decay_keys=None``; the ``set_weight_decay`` of both official codebases):

    * no weight decay: parameters with ``ndim <= 1`` (norms, biases), names ending in ``.bias``,
      and every name returned by ``no_weight_decay()`` of the model or any submodule (prefixed
      with the submodule's path; a backbone inside a detector keeps its rules): LIT-Ti's class
      token, LIT-S/M/B's relative position tables (LIT-Ti's position embeddings *are* decayed);
    * the DTM offset predictors' *weights* (names containing ``conv_offset``, not exempt from
      decay) form their own decayed group ``offset`` at ``lr x offset_lr_mult``; their bias stays
      in ``no_decay`` at the full lr. With ``offset_lr_mult == 1`` there is no such group.

    Dense rules (``no_decay_keys`` a sequence, possibly empty; mmcv's ``paramwise_cfg.custom_keys``
    with ``decay_mult=0``): every parameter is decayed except those whose name contains one of
    the keys; offsets as above (``offset_lr_mult`` is 1.0 in every dense config).

    A group's lr is ``lr_mult`` times the peak lr, set as the group's own ``lr``: timm's
    schedulers then decay each group from its own base toward the one shared minimum, as the
    authors' runs did (a ``lr_scale`` would scale the minimum too).

    Args:
        model (nn.Module): the (unwrapped) model; frozen parameters are skipped.
        weight_decay (float): decay of the decayed groups.
        lr (float, optional): if given, each group's ``lr`` is set to ``lr * lr_mult``.
        offset_lr_mult (float): the offset predictors' multiplier (0.01 in both ImageNet codebases).
        no_decay_keys (Sequence[str], optional): dense rules, see above.

    Returns:
        Up to three groups ``decay``, ``no_decay``, ``offset``, each with ``name``, ``params``,
        ``param_names``, ``weight_decay`` and ``lr_mult``; empty groups are left out.

    Examples::
        >>> import litvit
        >>> m = litvit.create_model('lit_ti', img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
        ...                         num_heads=(1, 1, 2, 4))
        >>> [(g['name'], g['lr_mult'], g['weight_decay']) for g in param_groups(m, 0.05)]
        [('decay', 1.0, 0.05), ('no_decay', 1.0, 0.0), ('offset', 0.01, 0.05)]
    """
    if no_decay_keys is None:
        nwd = _no_weight_decay_names(model)
        nwd_leaves = {n.rsplit(".", 1)[-1] for n in nwd}

        def exempt(name: str, p: Tensor) -> bool:
            return (p.ndim <= 1 or name.endswith(".bias") or name in nwd
                    or any(name.endswith("." + leaf) for leaf in nwd_leaves))
    else:
        keys = tuple(no_decay_keys)

        def exempt(name: str, p: Tensor) -> bool:
            return any(k in name for k in keys)
    groups: Dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = exempt(name, p)
        if no_decay:
            key = "no_decay"
        elif "conv_offset" in name and offset_lr_mult != 1.0:
            key = "offset"
        else:
            key = "decay"
        g = groups.setdefault(key, dict(name=key, params=[], param_names=[],
                                        weight_decay=0.0 if no_decay else weight_decay,
                                        lr_mult=offset_lr_mult if key == "offset" else 1.0))
        g["params"].append(p)
        g["param_names"].append(name)
    out = [groups[k] for k in ("decay", "no_decay", "offset") if k in groups]
    if lr is not None:
        for g in out:
            g["lr"] = lr * g["lr_mult"]
    return out


def describe_param_groups(groups: Sequence[dict], peak_lr: Optional[float] = None) -> List[dict]:
    """Plain values of :func:`param_groups` for printing: name, lr multiplier (and lr), weight
    decay, numbers of tensors and parameters, the first few names."""
    out = []
    for g in groups:
        d = dict(name=g["name"], lr_mult=g["lr_mult"], weight_decay=g["weight_decay"],
                 tensors=len(g["params"]), parameters=int(sum(p.numel() for p in g["params"])),
                 examples=list(g["param_names"][:4]))
        if peak_lr is not None:
            d["lr"] = peak_lr * g["lr_mult"]
        out.append(d)
    return out


# --- checkpoints ---------------------------------------------------------------------------------------

class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions); the message says whether
    the previous checkpoint at that path is kept."""


def save_checkpoint_atomic(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: the file
    at ``path`` is always either the previous complete checkpoint or the new complete one.

    Raises:
        CheckpointWriteError: the write failed (the message names the reason and says that the
            previous checkpoint is kept, or that there was none).
    """
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)  # through a file object, so the OSError of a failed write is kept
    except (OSError, RuntimeError) as e:
        cause, seen = e, set()
        while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept = f"the previous {path.name} is kept" if existed else f"no {path.name} was written"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {cause.strerror or cause}; {kept}") from None


LOCK = ".lock"


class OutputLockedError(OSError):
    """Another process is writing to the same output folder."""


class OutputLock:
    """``OUTPUT/.lock``: one writer per output folder.

    The file holds the owner's pid and host; it is locked with ``fcntl.flock`` for as long as the
    run lives, so the kernel releases it when the process dies, even by SIGKILL: a lock file left
    behind by a dead process is stale and taken over (with a note), a live one refuses the second
    writer. Released (and the file removed) by :meth:`release`; a folder the lock created and
    nothing else filled is removed too.

    Examples::
        >>> import tempfile
        >>> lock = OutputLock(tempfile.mkdtemp()).acquire()
        >>> lock.release()
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: Optional[int] = None
        self.stale_owner: Optional[str] = None
        self._created = False

    def acquire(self) -> "OutputLock":
        import fcntl
        import socket
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"output folder {self.folder} is a file")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 200).decode(errors="replace").split() or ["unknown"]
                os.close(fd)
                raise OutputLockedError(
                    f"{self.folder} is in use by another litvit process (pid {owner[0]}"
                    f"{' on ' + owner[1] if len(owner) > 1 else ''}; lock file {self.path}): wait for it to end "
                    f"or pick another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous owner removed while we opened it
                break
            os.close(fd)
        else:
            raise OutputLockedError(f"cannot lock {self.path}: it keeps being replaced by another process")
        previous = os.read(fd, 200).decode(errors="replace").strip()
        self.stale_owner = previous.split()[0] if previous else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: the run failed before writing anything


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), fsync=False)


def load_checkpoint(path: Union[str, Path]) -> dict:
    """Read a litvit training checkpoint on the CPU (tensors and plain values only, through the one
    reader :func:`litvit.models.convert.load_state_dict_file`).

    Raises FileNotFoundError for a missing file and CheckpointMismatchError (a ValueError) for a
    file that is not a readable checkpoint.
    """
    from .models.convert import CheckpointMismatchError, load_state_dict_file
    ckpt = load_state_dict_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), cached=float(np_state[4])),
        python=random.getstate(),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- data: resumable order and per-sample seeded augmentation ------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 32-bit seed from integers (splitmix64 steps); used to seed one sample's augmentation."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & 0xFFFFFFFF


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python RNGs for a block, then put the previous states back."""
    gen = torch.default_generator
    py, np_state, th = random.getstate(), np.random.get_state(legacy=False), gen.get_state()
    random.seed(seed)
    np.random.seed(seed)
    gen.manual_seed(seed)  # not torch.manual_seed: that one also seeds every accelerator, 25x slower
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        gen.set_state(th)


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


# --- precision -----------------------------------------------------------------------------------------

def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (``"none"`` gives a null context)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on the CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# --- logs and curves -------------------------------------------------------------------------------------

class _RunLog:
    """``log.jsonl`` (append) and ``metrics.csv`` (rewritten each epoch) in the output folder; rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: Optional[int]):
        self.jsonl = out / "log.jsonl"
        self.csv = out / "metrics.csv"
        self.enabled = enabled
        if enabled and self.jsonl.exists():
            # keep only what the checkpoint we continue from had seen; a fresh run starts a new log
            keep = []
            if resume_step is not None:
                for line in self.jsonl.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        rec = json.loads(line)
                        if rec.get("step", 0) <= resume_step:
                            keep.append(line)
            _write_text_atomic(self.jsonl, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_csv(self, history: List[dict]) -> None:
        if not self.enabled or not history:
            return
        keys = list(dict.fromkeys(k for rec in history for k in rec))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        _write_text_atomic(self.csv, buf.getvalue())

    def records(self) -> List[dict]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def plot_curves(log_path: Union[str, Path], out_path: Union[str, Path], metrics: Sequence[str] = ("score",)) -> Path:
    """Draw training loss, evaluation metrics and learning rate from a ``log.jsonl`` into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(l) for l in Path(log_path).read_text().splitlines() if l.strip()]
    steps = [r for r in recs if r.get("event") == "train"]
    epochs = [r for r in recs if r.get("event") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if steps:
        ax.plot([r["epoch_f"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6, label="train (steps)")
    ep_train = [r for r in epochs if "train_loss" in r]
    if ep_train:
        ax.plot([r["epoch"] for r in ep_train], [r["train_loss"] for r in ep_train], "o-", label="train (epoch)")
    ep_val = [r for r in epochs if "val_loss" in r]
    if ep_val:
        ax.plot([r["epoch"] for r in ep_val], [r["val_loss"] for r in ep_val], "s-", label="val")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    ax = axes[1]
    for m in metrics:
        for prefix, style in (("val_", "o-"), ("ema_", "x--")):
            pts = [r for r in epochs if prefix + m in r]
            if pts:
                ax.plot([r["epoch"] for r in pts], [r[prefix + m] for r in pts], style, label=prefix + m)
    ax.set(xlabel="epoch", title="evaluation")
    if ax.lines:
        ax.legend()
    ax = axes[2]
    if steps:
        ax.plot([r["epoch_f"] for r in steps], [r["lr"] for r in steps])
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    try:
        return atomic_write(out_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


# --- the loop ---------------------------------------------------------------------------------------------

def _resolve_resume(cfg: TrainConfig, out: Path) -> Optional[Path]:
    """The checkpoint to continue from: ``out/last.pth`` for "auto" when it exists, an explicit
    path, or none ("never"/None; an existing run in ``out`` is then refused, never overwritten)."""
    last = out / LAST
    if cfg.resume == "auto":
        return last if last.is_file() else None
    if cfg.resume in (None, "never", "none"):
        if last.is_file():
            raise ValueError(f"{out} already holds a run ({LAST}); resume it (--resume auto) "
                             "or pick another output folder")
        return None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume not found: {path}")
    return path


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


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


# Settings a resumed run may change freely: where and how it runs, not what it computes.
_RESUME_FREE = ("output_dir", "resume", "resume_changed", "progress", "verbose", "workers", "threads", "device",
                "val_batch_size", "save_every_steps", "log_every", "eval_every", "max_steps", "grad_checkpointing",
                "sync_bn", "batch_size", "accum_steps")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def changed_settings(ckpt: Mapping, cfg: TrainConfig, task_config: Mapping, world_size: int) -> List[str]:
    """What differs between a checkpoint's recorded settings and this run's, as ``"--flag old -> new"``
    (settings in :data:`_RESUME_FREE` and ones the checkpoint did not record are not compared; the
    global batch is compared instead of the per-process batch)."""
    changes = []
    old_cfg = ckpt.get("config") or {}
    new_cfg = dataclasses.asdict(cfg)
    for key, new in new_cfg.items():
        if key in _RESUME_FREE or key not in old_cfg:
            continue
        if _plain(old_cfg[key]) != _plain(new):
            changes.append(f"--{key.replace('_', '-')} {_plain(old_cfg[key])} -> {_plain(new)}")
    if "batch_size" in old_cfg:
        old_batch = old_cfg["batch_size"] * ckpt.get("world_size", 1) * old_cfg.get("accum_steps", 1)
        new_batch = cfg.batch_size * world_size * cfg.accum_steps
        if old_batch != new_batch:
            changes.append(f"global batch {old_batch} -> {new_batch}")
    old_task, new_task = _flat(ckpt.get("task_config") or {}), _flat(task_config)
    for key, new in new_task.items():
        if key in old_task and old_task[key] != new:
            changes.append(f"{key} {old_task[key]} -> {new}")
    for key in old_task.keys() - new_task.keys():
        changes.append(f"{key} {old_task[key]} -> (unset)")
    return changes


def _flat(d: Mapping, prefix: str = "") -> Dict[str, Any]:
    """Nested settings as ``{"model_kwargs.embed_dims": [...], ...}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _plain(v)
    return out


def fit(task: Task, cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``task`` as ``cfg`` says; see the module docstring. Returns a summary on every rank:
    ``best_score``, ``best_epoch``, ``final`` (last evaluation), ``epochs_done``, ``steps``,
    ``last_checkpoint``, ``best_checkpoint``, ``log``, ``csv``, ``curves``, ``train_time_s``.

    Rank 0 holds ``output_dir/.lock`` (:class:`OutputLock`) for the whole run: a second writer to
    the same folder is refused."""
    cfg.check()
    lock = OutputLock(cfg.output_dir).acquire() if int(os.environ.get("RANK", 0)) == 0 else None
    try:
        threads = set_threads(cfg.threads)
        dist = setup_distributed(cfg.device)
        try:
            return _fit(task, cfg, dist, threads, lock)
        finally:
            if dist.initialized_here and torch_dist.is_initialized():
                torch_dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.release()


def _fit(task: Task, cfg: TrainConfig, dist: DistInfo, threads: str = "", lock: Optional[OutputLock] = None
         ) -> Dict[str, Any]:
    device = dist.device

    def say(msg: str) -> None:
        if cfg.verbose and dist.is_main:
            print(msg, flush=True)

    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use --amp bf16 on the CPU")
    out = Path(cfg.output_dir)
    if lock is not None and lock.stale_owner:
        say(f"note: {lock.path} was left by process {lock.stale_owner}, which has ended; taking it over")
    resume_path = _resolve_resume(cfg, out)
    ckpt = load_checkpoint(resume_path) if resume_path is not None else None

    # data: every item of every split checked before anything is built or trained
    train_set, val_set = task.build_datasets()
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    check_datasets([train_set, val_set], dist, progress=cfg.progress)
    if len(train_set) == 0:
        raise ValueError("no image of the training set can be read")
    sampler = task.train_sampler(train_set, dist)
    if sampler is None:
        sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=False)
    micro_per_epoch = len(sampler) // cfg.batch_size
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        global_batch = cfg.batch_size * dist.world_size * cfg.accum_steps
        raise ValueError(f"global batch {global_batch} is larger than the training set "
                         f"({len(train_set)} images, {len(sampler)} per process)")
    batches = _ResumableBatches(sampler, cfg.batch_size, cfg.seed, dist.rank, steps_per_epoch * cfg.accum_steps)
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps the loader off the global RNG
    train_loader = DataLoader(_SeededDataset(train_set), batch_sampler=batches, num_workers=cfg.workers,
                              collate_fn=task.collate_fn(), pin_memory=device.type == "cuda",
                              persistent_workers=cfg.workers > 0, generator=loader_gen)
    val_loader = None
    if val_set is not None and len(val_set):
        val_loader = DataLoader(val_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                                sampler=_ShardSampler(len(val_set), dist.rank, dist.world_size),
                                num_workers=cfg.workers, collate_fn=task.collate_fn(),
                                pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)

    # a resumed run must be the same run: refuse changed settings unless told otherwise
    task_config = _plain(task.run_config())
    if ckpt is not None:
        changes = changed_settings(ckpt, cfg, task_config, dist.world_size)
        if changes and not cfg.resume_changed:
            raise ValueError(f"{resume_path} was written with other settings: {'; '.join(changes)}; resume with "
                             f"the checkpoint's settings, add --resume-changed to continue with the new ones, "
                             f"or pick another --output")
        if changes:
            say(f"resuming {resume_path} with changed settings (--resume-changed): {'; '.join(changes)}")

    # model: identical initialisation on every rank
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = task.build_model()
    if cfg.grad_checkpointing:
        hooks = [m for m in model.modules() if hasattr(m, "set_grad_checkpointing")]
        if not hooks:
            raise ValueError(f"grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing()")
        for m in hooks:
            m.set_grad_checkpointing(True)
    if cfg.sync_bn and dist.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)

    # optimisation
    global_batch = cfg.batch_size * dist.world_size * cfg.accum_steps
    peak_lr = cfg.lr * global_batch / 512 if cfg.scale_lr else cfg.lr
    groups = task.param_groups(model, cfg)
    optimizer = torch.optim.AdamW(
        [dict({k: v for k, v in g.items() if k != "param_names"}, lr=peak_lr * g["lr_mult"]) for g in groups],
        lr=peak_lr, betas=tuple(cfg.opt_betas), eps=cfg.opt_eps, weight_decay=cfg.weight_decay)
    scheduler = task.build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay)

    # state
    start_epoch, start_batch, step, best_score, best_epoch = 0, 0, 0, -math.inf, None
    history: List[dict] = []
    loss_sum, loss_n = 0.0, 0  # this rank's training loss over the current epoch (kept across a resume)
    pending_eval = False
    if ckpt is not None:
        from .models.convert import CheckpointMismatchError
        if "optimizer" not in ckpt or "model" not in ckpt:
            raise CheckpointMismatchError(f"{resume_path} is not a litvit training checkpoint (nothing to resume)")
        _load_state_dict_strict(model, ckpt["model"], str(resume_path))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointMismatchError(f"{resume_path}: optimizer state does not fit: {e}") from None
        if cfg.resume_changed:  # the schedule of the new settings, at the step reached
            scheduler.step_update(ckpt["step"])
        else:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("model_ema") is not None:
            ema.module.load_state_dict(ckpt["model_ema"])
        start_epoch, start_batch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        best_score = ckpt.get("best_score", -math.inf)
        best_epoch = ckpt.get("best_epoch")
        history = list(ckpt.get("history", []))
        pending_eval = bool(ckpt.get("pending_eval"))
        saved_world = ckpt.get("world_size", 1)
        if ckpt.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(f"{resume_path} was trained with {ckpt['steps_per_epoch']} steps per epoch, this run has "
                             f"{steps_per_epoch}: resume with the same global batch, processes and dataset")
        sums = ckpt.get("epoch_loss") or []
        if start_batch and sums:
            if len(sums) == dist.world_size:
                loss_sum, loss_n = float(sums[dist.rank][0]), int(sums[dist.rank][1])
            elif dist.is_main:  # another number of processes: rank 0 carries the epoch's sums so far
                loss_sum, loss_n = sum(float(a) for a, _ in sums), sum(int(b) for _, b in sums)
        rngs = ckpt.get("rng") or []
        if saved_world == dist.world_size and len(rngs) == dist.world_size:
            _set_rng_state(rngs[dist.rank])
        else:
            warnings.warn(f"checkpoint was written by {saved_world} process(es), this run has {dist.world_size}: "
                          "RNG states are re-seeded, the run continues but will not repeat bit for bit")
            _reseed(cfg.seed + 1000 * start_epoch + dist.rank)
        say(f"resumed from {resume_path}: epoch {start_epoch}, batch {start_batch}, step {step}")
    else:
        _reseed(cfg.seed + dist.rank)  # per-rank dropout / drop path / mixup streams

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    log = _RunLog(out, dist.is_main, step if ckpt is not None else None)

    train_model: nn.Module = model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)

    n_params = _count(model)
    offset_params = sum(p.numel() for g in groups if g["name"].startswith("offset") for p in g["params"])
    say(f"{task.name}: {type(model).__name__} {n_params:,} parameters ({offset_params:,} offset-predictor) | "
        f"device {device} x {dist.world_size} process(es)"
        f"{f' x {threads or torch.get_num_threads()} thread(s)' if device.type == 'cpu' else ''}, amp {cfg.amp} | "
        f"global batch {global_batch} = {cfg.batch_size} x {dist.world_size} x {cfg.accum_steps} accum | "
        f"lr {peak_lr:.3g} ({cfg.lr:g} x {global_batch}/512{'' if cfg.scale_lr else ', unscaled'}) | "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps | {len(train_set)} train / "
        f"{len(val_set) if val_set is not None else 0} val | output {out}")

    def state(epoch: int, batch_in_epoch: int) -> dict:
        rng = dist.all_gather_object(_rng_state())
        epoch_loss = dist.all_gather_object((loss_sum, loss_n))
        return dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            model_ema=ema.module.state_dict() if ema is not None else None,
            epoch=epoch, batch_in_epoch=batch_in_epoch, step=step, steps_per_epoch=steps_per_epoch,
            world_size=dist.world_size, rng=rng, epoch_loss=epoch_loss, pending_eval=pending_eval,
            best_score=best_score, best_epoch=best_epoch, history=history, config=dataclasses.asdict(cfg),
            task=task.name, task_config=task_config, extra=task.checkpoint_extra(),
        )

    def save(epoch: int, batch_in_epoch: int, best: bool = False) -> None:
        sync_buffers(model, dist)
        if ema is not None:
            sync_buffers(ema.module, dist)
        s = state(epoch, batch_in_epoch)  # collective: every rank takes part
        if dist.is_main:
            save_checkpoint_atomic(s, out / LAST)
            if best:
                save_checkpoint_atomic(s, out / BEST)
        dist.barrier()

    def finish_epoch(epoch: int, record: dict) -> dict:
        """Evaluate epoch ``epoch`` (1-based) when due, log it and checkpoint it; the epoch's training
        is already in ``last.pth`` (``pending_eval``) when the evaluation starts."""
        nonlocal best_score, best_epoch, pending_eval
        is_best = False
        if pending_eval:
            sync_buffers(model, dist)
            if ema is not None:
                sync_buffers(ema.module, dist)
            model.eval()
            with autocast(device, cfg.amp):
                metrics = task.evaluate(model, val_loader, device, dist)
            model.train()
            record.update({f"val_{k}": float(v) for k, v in metrics.items()})
            if ema is not None:
                with autocast(device, cfg.amp):
                    ema_metrics = task.evaluate(ema.module, val_loader, device, dist)
                record.update({f"ema_{k}": float(v) for k, v in ema_metrics.items()})
            score = float(metrics["score"])
            if score > best_score:
                best_score, best_epoch, is_best = score, epoch, True
        elif val_loader is None:
            best_epoch, is_best = epoch, True
        pending_eval = False
        log.write(dict(event="epoch", **record))
        log.write_csv(history)
        save(epoch, 0, best=is_best)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step"))
        say(f"epoch {epoch}/{cfg.epochs}  {shown}")
        return record

    t_start = time.perf_counter()
    final: Dict[str, float] = dict(history[-1]) if history else {}
    stop = False
    if pending_eval and history:  # killed while evaluating: the epoch was saved, its evaluation was not
        say(f"evaluating epoch {start_epoch}, which was saved but not evaluated")
        final = finish_epoch(start_epoch, history[-1])
    if ckpt is not None and start_epoch >= cfg.epochs:
        say(f"nothing to do: the run in {out} already finished {start_epoch} epochs")
    for epoch in range(start_epoch, cfg.epochs):
        batches.set_epoch(epoch)
        task.on_epoch_start(model, epoch)
        first = start_batch if epoch == start_epoch else 0
        batches.skip_batches = first
        train_model.train()
        if epoch != start_epoch or not first:
            loss_sum, loss_n = 0.0, 0
        micro = first
        t_epoch, images = time.perf_counter(), 0
        bar = None
        if dist.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps_per_epoch, initial=first // cfg.accum_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        optimizer.zero_grad(set_to_none=True)
        for batch in train_loader:
            batch = _move(batch, device)
            last_micro = (micro + 1) % cfg.accum_steps == 0
            sync = contextlib.nullcontext() if (last_micro or not dist.distributed) else train_model.no_sync()
            with sync:
                with autocast(device, cfg.amp):
                    loss, metrics = task.train_step(train_model, batch, device)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; "
                                             f"the last good checkpoint is {out / LAST}")
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            micro += 1
            loss_sum += loss.item()
            loss_n += 1
            images += _batch_len(batch)
            if not last_micro:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(model, step=step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if step % cfg.log_every == 0:
                lval = dist.reduce_sum([loss.item()])[0] / dist.world_size
                log.write(dict(event="train", epoch=epoch + 1, epoch_f=epoch + micro / batches.num_batches,
                               step=step, loss=lval, lr=optimizer.param_groups[0]["lr"],
                               **{k: float(v) for k, v in metrics.items()}))
            at_epoch_end = micro == batches.num_batches
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop = True
            if not at_epoch_end and (stop or (cfg.save_every_steps and step % cfg.save_every_steps == 0)):
                save(epoch, micro)
            if stop:
                break
        if bar is not None:
            bar.close()
        if stop and micro < batches.num_batches:
            say(f"stopped at step {step} (max_steps); resume continues from {out / LAST}")
            break
        dt = time.perf_counter() - t_epoch
        tot = dist.reduce_sum([loss_sum, loss_n, images])
        record = dict(epoch=epoch + 1, step=step, lr=optimizer.param_groups[0]["lr"],
                      train_loss=tot[0] / max(tot[1], 1), img_per_s=tot[2] / dt, epoch_time_s=dt)
        history.append(record)
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            pending_eval = True
            save(epoch + 1, 0)  # the epoch's training is kept whatever happens in its evaluation
        final = finish_epoch(epoch + 1, record)
        if stop:
            break
    train_time = time.perf_counter() - t_start

    curves = out / "curves.png"
    if dist.is_main and log.jsonl.exists() and log.records():
        plot_curves(log.jsonl, curves, getattr(task, "curve_metrics", ("score",)))
    dist.barrier()
    summary = dict(
        best_score=best_score if best_epoch is not None and math.isfinite(best_score) else None,
        best_epoch=best_epoch, final=final,
        epochs_done=len(history), steps=step, last_checkpoint=str(out / LAST), best_checkpoint=str(out / BEST),
        log=str(log.jsonl), csv=str(log.csv), curves=str(curves), train_time_s=train_time,
        world_size=dist.world_size,
    )
    return summary


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_len(next(iter(batch.values())))
    return len(batch) if hasattr(batch, "__len__") else 0


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


# --- evaluation only -----------------------------------------------------------------------------------------

def evaluate(
        task: Task,
        cfg: TrainConfig,
        checkpoint: Optional[str] = None,
        use_ema: bool = False,
) -> Dict[str, float]:
    """Build the task's model, load ``checkpoint`` through ``task.load_weights`` (none: as built),
    and run ``task.evaluate`` on its validation set, sharded over torchrun's processes.

    Uses ``cfg.device``, ``cfg.amp``, ``cfg.val_batch_size or cfg.batch_size`` and ``cfg.workers``.
    Returns the reduced metrics (the same on every rank) plus ``images`` and ``eval_time_s``.
    """
    set_threads(cfg.threads)
    dist = setup_distributed(cfg.device)
    try:
        _, val_set = task.build_datasets()
        if val_set is None or len(val_set) == 0:
            raise ValueError("the task has no validation set to evaluate on")
        check_datasets([val_set], dist, progress=cfg.progress)
        if len(val_set) == 0:
            raise ValueError("no item of the validation set can be read")
        model = task.build_model()
        if checkpoint is not None:
            task.load_weights(model, checkpoint, use_ema=use_ema)
        model.to(dist.device).eval()
        loader = DataLoader(val_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                            sampler=_ShardSampler(len(val_set), dist.rank, dist.world_size),
                            num_workers=cfg.workers, collate_fn=task.collate_fn())
        t0 = time.perf_counter()
        with autocast(dist.device, cfg.amp):
            metrics = task.evaluate(model, loader, dist.device, dist)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(images=float(len(val_set)), eval_time_s=time.perf_counter() - t0)
        return metrics
    finally:
        if dist.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
