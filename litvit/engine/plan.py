"""The run plan (:class:`RunPlan`): batches, steps, learning rates and precision, resolved once.

A :class:`~litvit.engine.TrainConfig` says what was asked; the plan says what the run does with
it in this world (processes, accumulation, device) and on this training set. :func:`litvit.engine.fit`
resolves it once, after the data is read and the model's parameter groups are known, and every
part of the engine reads it; nothing downstream multiplies a batch back or recomputes an lr. The
``--print-config`` of every ``train`` command shows the same object (resolved without the data:
the step counts are then null).

Batch sizes: ``TrainConfig.global_batch`` (images per optimizer step over every process; what
``--batch-size`` gives for every command) is split into ``processes x accum_steps`` micro-batches
here, and only here; without it ``TrainConfig.batch_size`` is the per-process micro-batch (the
Python API's meaning, kept) and the global batch is its product.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .config import TrainConfig, per_process_batch_size

__all__ = ["RunPlan", "resolve_amp", "warmup_steps"]


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the linear warm-up: ``warmup_epochs`` epochs, rounded (the default schedule's)."""
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def resolve_amp(amp: str, device_type: str, from_recipe: bool = False) -> Tuple[str, str]:
    """``(amp, note)``: the precision a run uses on ``device_type``, and why it differs from ``amp``.

    fp16 autocast needs CUDA (the CPU has bf16 autocast only): a recipe's fp16 (``from_recipe``)
    turns off on another device, with the reason as the note; an fp16 asked for raises ValueError.
    The one place the rule lives (:meth:`RunPlan.resolve` calls it, for ``fit`` and ``--print-config``).

    Examples::
        >>> resolve_amp("fp16", "cpu", from_recipe=True)
        ('none', "the recipe's fp16 needs CUDA; the CPU has no fp16 autocast")
    """
    if amp != "fp16" or device_type == "cuda":
        return amp, ""
    if from_recipe:
        return "none", "the recipe's fp16 needs CUDA; the CPU has no fp16 autocast"
    raise ValueError("amp='fp16' needs CUDA; use --amp bf16 on the CPU")


@dataclass(frozen=True)
class RunPlan:
    """What a run does, resolved once from the task, its :class:`TrainConfig` and the world.

    Attributes:
        world_size (int): processes.
        accum_steps (int): micro-batches per optimizer step.
        global_batch (int): images per optimizer step over every process.
        batch_per_process (int): images per process per forward (the micro-batch).
        batch_given (str): ``"global"`` (``TrainConfig.global_batch`` was split) or ``"per_process"``.
        micro_batches_per_epoch (int, optional): micro-batches per process per epoch (null without data).
        steps_per_epoch (int, optional): optimizer steps per epoch.
        epochs (int, optional): epochs trained (an iteration-based run: as many as its steps need).
        total_steps (int, optional): optimizer steps the schedule spans (:meth:`Task.schedule_steps`).
        stop_step (int, optional): the step the run stops at (``iters`` or ``max_steps``; null: the end).
        warmup_steps (int, optional): linear warm-up steps of the default schedule (``warmup_epochs``).
        lr_rule (str): how the peak lr follows from ``TrainConfig.lr``.
        peak_lr (float): the optimizer's peak learning rate.
        group_lrs (Tuple[Tuple[str, float], ...]): each parameter group's peak lr (``peak_lr x lr_mult``).
        amp (str): the precision used: ``TrainConfig.amp``, except a recipe's fp16 (``"amp"`` in
            ``TrainConfig.defaulted``) off a CUDA device, which is ``"none"`` (:func:`resolve_amp`).
        amp_note (str): why ``amp`` differs from the configuration's (empty when it does not).
    """
    world_size: int
    accum_steps: int
    global_batch: int
    batch_per_process: int
    batch_given: str
    micro_batches_per_epoch: Optional[int]
    steps_per_epoch: Optional[int]
    epochs: Optional[int]
    total_steps: Optional[int]
    stop_step: Optional[int]
    warmup_steps: Optional[int]
    lr_rule: str
    peak_lr: float
    group_lrs: Tuple[Tuple[str, float], ...]
    amp: str
    amp_note: str

    @classmethod
    def resolve(
            cls,
            cfg: TrainConfig,
            world_size: int = 1,
            device_type: str = "cpu",
            count_micro_batches: Optional[Callable[[int], int]] = None,
            groups: Sequence[dict] = (),
            schedule_steps: Optional[Callable[[TrainConfig, int], int]] = None,
            data_note: str = "",
    ) -> "RunPlan":
        """Resolve the plan.

        Args:
            cfg (TrainConfig): the run's settings.
            world_size (int): processes.
            device_type (str): ``"cpu"`` or ``"cuda"`` (precision).
            count_micro_batches (Callable[[int], int], optional): micro-batches per process per epoch
                for a per-process batch (from the training set); None: no data, no step counts.
            groups (Sequence[dict]): the parameter groups (``name``, ``lr_mult``) whose lrs to resolve.
            schedule_steps (Callable, optional): the task's :meth:`Task.schedule_steps`.
            data_note (str): the training set in words (``"40 images, 20 per process"``), named when
                the global batch does not fit in it.

        Examples::
            >>> plan = RunPlan.resolve(TrainConfig(global_batch=64, batch_size=None, accum_steps=4, lr=5e-4,
            ...                                    warmup_epochs=1, epochs=3), world_size=2,
            ...                        count_micro_batches=lambda b: 400 // b)
            >>> plan.batch_per_process, plan.steps_per_epoch, plan.total_steps, plan.peak_lr
            (8, 12, 36, 6.25e-05)
        """
        if cfg.global_batch is not None:
            per_process, given = per_process_batch_size(int(cfg.global_batch), cfg.accum_steps, world_size), "global"
        else:
            per_process, given = int(cfg.batch_size), "per_process"
        global_batch = per_process * world_size * cfg.accum_steps
        if cfg.scale_lr:
            peak, rule = cfg.lr * global_batch / 512, f"{cfg.lr:g} x global batch {global_batch} / 512"
        else:
            peak, rule = cfg.lr, "as given, not scaled by the batch"
        amp, note = resolve_amp(cfg.amp, device_type, from_recipe="amp" in cfg.defaulted)
        steps = _steps(cfg, global_batch, per_process, count_micro_batches, schedule_steps, data_note)
        return cls(world_size=world_size, accum_steps=cfg.accum_steps, global_batch=global_batch,
                   batch_per_process=per_process, batch_given=given, lr_rule=rule, peak_lr=peak,
                   group_lrs=tuple((str(g["name"]), peak * float(g["lr_mult"])) for g in groups),
                   amp=amp, amp_note=note, **steps)

    def group_lr(self, name: str) -> float:
        """The peak lr of parameter group ``name``."""
        return dict(self.group_lrs)[name]

    def describe(self) -> Dict[str, Any]:
        """Plain values for ``--print-config``, the run's log and its checkpoints."""
        d = dataclasses.asdict(self)
        d["group_lrs"] = dict(self.group_lrs)
        return d

    def header(self, train_size: int, val_size: int) -> str:
        """The plan's part of the run's first line."""
        return (f"amp {self.amp}{f' ({self.amp_note})' if self.amp_note else ''} | global batch {self.global_batch} = "
                f"{self.batch_per_process} x {self.world_size} x {self.accum_steps} accum | lr {self.peak_lr:.3g} "
                f"({self.lr_rule}) | {self.epochs} epochs x {self.steps_per_epoch} steps | {train_size} train / "
                f"{val_size} val")


def _steps(cfg: TrainConfig, global_batch: int, per_process: int, count: Optional[Callable[[int], int]],
           schedule_steps: Optional[Callable[[TrainConfig, int], int]], data_note: str) -> Dict[str, Any]:
    """The step counts of :class:`RunPlan` (all None without a training set to count)."""
    if count is None:
        return dict(micro_batches_per_epoch=None, steps_per_epoch=None, epochs=None, total_steps=None,
                    stop_step=cfg.max_steps if cfg.iters is None else min(cfg.max_steps or cfg.iters, cfg.iters),
                    warmup_steps=None)
    micro = int(count(per_process))
    per_epoch = micro // cfg.accum_steps
    if per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the training set ({data_note})")
    if cfg.iters is not None:  # an iteration-based schedule: as many epochs as its iterations need
        epochs, stop = math.ceil(cfg.iters / per_epoch), min(cfg.max_steps or cfg.iters, cfg.iters)
    else:
        epochs, stop = cfg.epochs, cfg.max_steps
    span = schedule_steps(cfg, per_epoch) if schedule_steps is not None else (cfg.iters or epochs * per_epoch)
    return dict(micro_batches_per_epoch=micro, steps_per_epoch=per_epoch, epochs=epochs, total_steps=int(span),
                stop_step=stop, warmup_steps=warmup_steps(cfg, per_epoch))
