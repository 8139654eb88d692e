"""The settings of a training run (:class:`TrainConfig`) and the CPU thread policy."""
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

__all__ = ["TrainConfig", "AMP_MODES", "LOG_TARGETS", "per_process_batch_size", "auto_threads", "set_threads"]

AMP_MODES = ("none", "bf16", "fp16")
LOG_TARGETS = ("tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Everything :func:`fit` needs besides the task. Defaults follow the paper's DeiT recipe.

    Attributes:
        output_dir (str): checkpoints, logs and curves go here (created by rank 0).
        epochs (int): training epochs.
        batch_size (int, optional): images per process per forward (the global batch per optimizer
            step is then ``batch_size * world_size * accum_steps``); None when ``global_batch`` is given.
        global_batch (int, optional): images per optimizer step over every process (what
            ``--batch-size`` gives for every ``train`` command); the run plan
            (:class:`~litvit.engine.plan.RunPlan`) splits it into ``world_size x accum_steps``
            micro-batches, and ``batch_size`` is then not used.
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
            default; ``"auto"`` picks it from the load average (:func:`auto_threads`).
        val_batch_size (int, optional): per-process evaluation batch; ``batch_size`` when None.
        save_every_steps (int): also checkpoint every N optimizer steps (0: only at epoch ends).
        resume (str, optional): ``"auto"`` (continue from ``output_dir/last.pth`` if present), a
            checkpoint path, or ``"never"`` (start fresh; refuses to overwrite an existing run).
        resume_changed (bool): resume although the settings differ from the checkpoint's (the new
            ones apply, the schedule included); without it such a resume is refused, naming the changes.
        defaulted (Tuple[str, ...]): settings the user did not give (``litvit train``: a recipe's
            values no flag overrode). A refused resume names the changed settings the user gave (and
            the recipe, when it changed) and only counts the changes these follow from them; it names
            them when no given setting changed. Task-config settings by their dotted names, e.g.
            ``"model_kwargs.drop_path_rate"``; the global batch is ``"batch_size"``.
        derived (Tuple[str, ...]): settings computed from others (``litvit train``: a warm-up
            shortened with ``--epochs``, ``amp`` off on the CPU): named last, only when nothing else
            changed (also when the checkpoint's run derived them).
        log_every (int): log the training loss every N optimizer steps.
        log (Tuple[str, ...]): also send every ``log.jsonl`` record (loss, lr of each parameter
            group, metrics, images/s, epoch values) to ``"tensorboard"`` (``output_dir/tb/``) and/or
            ``"wandb"`` (an offline run in ``output_dir/wandb/``); rank 0 only.
        eval_every (int): evaluate every N epochs (and always after the last one).
        max_steps (int, optional): stop after this many optimizer steps in total (checkpointed);
            for benchmarks and time-boxed jobs; the schedule still spans ``epochs``.
        iters (int, optional): an iteration-based run (the dense recipes' 40k / 80k iterations): the
            engine trains ``ceil(iters / steps_per_epoch)`` epochs, stops at step ``iters`` (or
            ``max_steps`` if smaller), and ``epochs`` is ignored.
        device (str): ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        progress (bool): tqdm bars on rank 0.
        verbose (bool): print the run's set-up and one line per epoch on rank 0.
        sync_bn (bool): convert BatchNorm layers to SyncBatchNorm (CUDA with several processes).
    """
    output_dir: str = "runs/train"
    epochs: int = 300
    batch_size: Optional[int] = 128
    global_batch: Optional[int] = None
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
    defaulted: Tuple[str, ...] = ()
    derived: Tuple[str, ...] = ()
    log_every: int = 50
    log: Tuple[str, ...] = ()
    eval_every: int = 1
    max_steps: Optional[int] = None
    iters: Optional[int] = None
    device: str = "auto"
    progress: bool = True
    verbose: bool = True
    sync_bn: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first value that cannot work."""
        batch = dict(global_batch=self.global_batch) if self.global_batch is not None else dict(batch_size=self.batch_size)
        if None in batch.values():
            raise ValueError("batch_size or global_batch must be given, got neither")
        positive = dict(epochs=self.epochs, accum_steps=self.accum_steps, log_every=self.log_every,
                        eval_every=self.eval_every, **batch)
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if isinstance(self.log, str):
            raise ValueError(f"log must be a tuple of names, e.g. ('tensorboard',), got {self.log!r}")
        for name in self.log:
            if name not in LOG_TARGETS:
                raise ValueError(f"log={name!r} is not one of {LOG_TARGETS}")
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
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"iters must be at least 1 (or None), got {self.iters}")
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
    leaves free, at least 1 (why: README, "Threads").

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


