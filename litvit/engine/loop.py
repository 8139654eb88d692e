"""The training loop (:func:`fit`: wires the parts), one epoch of training (:func:`train_one_epoch`),
the evaluation of an epoch (:func:`evaluate_model`), and evaluation of a checkpoint alone
(:func:`evaluate`); see :mod:`litvit.engine`."""
import contextlib
import dataclasses
import math
import random
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils import count_parameters, plain, preserved_global_state
from .checkpointer import BEST, LAST, Checkpointer, TrainingParts, TrainState, changed_settings
from .config import AMP_MODES, TrainConfig, set_threads
from .distributed import DistInfo, setup_distributed
from .loaders import (batch_len, check_datasets, eval_loader, micro_batch_counter, move_to, train_loader,
                      train_sampler)
from .logs import _RunLog, plot_curves
from .plan import RunPlan
from .task import Task

__all__ = ["fit", "train_one_epoch", "evaluate_model", "evaluate", "check_datasets", "changed_settings", "autocast",
           "LAST", "BEST", "AMP_MODES"]


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (``"none"`` gives a null context)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on the CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@preserved_global_state()  # reseeded and re-threaded for the run, as the caller had them after it
def fit(task: Task, cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``task`` as ``cfg`` says; see the module docstring. Returns a summary on every rank:
    ``best_score``, ``best_epoch``, ``final`` (last evaluation), ``epochs_done``, ``steps``,
    ``last_checkpoint``, ``best_checkpoint``, ``log``, ``csv``, ``curves``, ``train_time_s``, ``plan``.

    Rank 0 holds ``output_dir/.lock`` (:class:`OutputLock`) for the whole run: a second writer to
    the same folder is refused."""
    cfg.check()
    checkpointer = Checkpointer(cfg.output_dir)
    try:
        threads = set_threads(cfg.threads)
        dist = setup_distributed(cfg.device)
        try:
            with contextlib.ExitStack() as closing:  # the run's log writers, closed also on an error
                return _train(task, cfg, dist, threads, checkpointer, closing)
        finally:
            if dist.initialized_here and torch_dist.is_initialized():
                torch_dist.destroy_process_group()
    finally:
        checkpointer.release()


@dataclasses.dataclass
class _Run:
    """What every part of one run reads: the task, its settings and plan, the world, the parts that
    train, the checkpoints, the log, and the run's printer (rank 0, when verbose)."""
    task: Task
    cfg: TrainConfig
    plan: RunPlan
    dist: DistInfo
    parts: TrainingParts
    checkpointer: Checkpointer
    log: _RunLog
    say: Callable[[str], None]


def _train(task: Task, cfg: TrainConfig, dist: DistInfo, threads: str, checkpointer: Checkpointer,
           closing: contextlib.ExitStack) -> Dict[str, Any]:
    """data -> model -> plan -> optimizer and schedule -> state -> loop -> summary."""
    say = _printer(cfg, dist)
    checkpointer.find(cfg, task.name, say)
    learned = task.setup()  # 1. data first: what the model needs (classes, ...) comes from it
    train_set, val_set = _read_datasets(task, cfg, dist)
    sampler = train_sampler(task, train_set, cfg, dist)
    model = _build_model(task, cfg, dist)  # 2. model: identical initialisation on every rank
    groups = task.param_groups(model, cfg)
    count, data_note = micro_batch_counter(train_set, sampler, cfg, dist)
    plan = RunPlan.resolve(cfg, dist.world_size, dist.device.type, count, groups, task.schedule_steps, data_note)
    if cfg.iters is not None:  # the epochs and the stop follow from the iterations
        cfg = dataclasses.replace(cfg, epochs=plan.epochs, max_steps=plan.stop_step)
        say(f"{cfg.iters} iterations = {plan.epochs} epoch(s) of {plan.steps_per_epoch} steps ({len(train_set)} "
            f"images, batch {plan.global_batch})")
    task_config = plain(task.run_config())
    checkpointer.refuse_changes(cfg, task_config, plan, say)  # a resumed run must be the same run
    parts = _build_parts(task, model, groups, cfg, plan)  # 3. optimizer and schedule
    state = checkpointer.restore(parts, cfg, plan, dist)  # 4. state: fresh, or the checkpoint's
    if checkpointer.ckpt is not None:
        say(f"resumed from {checkpointer.path}: epoch {state.epoch}, batch {state.batch_in_epoch}, step {state.step}")
    checkpointer.set_record(cfg, plan, task, task_config)
    out = checkpointer.out
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    log = closing.enter_context(_RunLog(
        out, dist.is_main, state.step if checkpointer.ckpt is not None else None, loggers=cfg.log,
        config=dict(dataclasses.asdict(cfg), task=task.name, task_config=task_config, plan=plan.describe(),
                    data=plain(learned or {}))))
    parts.train_model = _wrap(model, task, dist)
    run = _Run(task, cfg, plan, dist, parts, checkpointer, log, say)
    say(_header(run, threads, learned, len(train_set), len(val_set) if val_set is not None else 0))
    loader, batches = train_loader(task, train_set, sampler, cfg, plan, dist)
    val_loader = None
    if val_set is not None and len(val_set):
        val_loader = eval_loader(task, val_set, cfg.val_batch_size or plan.batch_per_process, cfg, dist,
                                 persistent=True)
    t_start = time.perf_counter()
    final = _run_epochs(run, state, loader, batches, val_loader)  # 5. the loop
    return _summary(run, state, final, time.perf_counter() - t_start)


def _printer(cfg: TrainConfig, dist: DistInfo) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if cfg.verbose and dist.is_main:
            print(msg, flush=True)
    return say


def _read_datasets(task: Task, cfg: TrainConfig, dist: DistInfo) -> Tuple[Dataset, Optional[Dataset]]:
    """The task's datasets, every item of every split checked before anything is built or trained."""
    train_set, val_set = task.build_datasets()
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    check_datasets([train_set, val_set], dist, progress=cfg.progress)
    if len(train_set) == 0:
        raise ValueError("no image of the training set can be read")
    return train_set, val_set


def _build_model(task: Task, cfg: TrainConfig, dist: DistInfo) -> nn.Module:
    """The task's model, seeded by ``cfg.seed`` (the same on every rank), on the run's device."""
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
    if cfg.sync_bn and dist.distributed and dist.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(dist.device)


def _build_parts(task: Task, model: nn.Module, groups: list, cfg: TrainConfig, plan: RunPlan) -> TrainingParts:
    """The optimizer (:meth:`Task.build_optimizer`), schedule (:meth:`Task.build_scheduler`), the
    fp16 loss scaler and the EMA of the weights."""
    optimizer = task.build_optimizer(groups, cfg, plan)
    scheduler = task.build_scheduler(optimizer, cfg, plan.steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if plan.amp == "fp16" else None
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    return TrainingParts(model, optimizer, scheduler, scaler, ema, train_model=model)


def _wrap(model: nn.Module, task: Task, dist: DistInfo) -> nn.Module:
    """The model the loop trains: wrapped in DistributedDataParallel under several processes."""
    if not dist.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
        find_unused_parameters=task.find_unused_parameters)


def _header(run: _Run, threads: str, learned: Optional[Dict[str, Any]], n_train: int, n_val: int) -> str:
    """The run's first line: task, model, world, plan, data, output."""
    model, dist = run.parts.model, run.dist
    offset_params = sum(p.numel() for n, p in model.named_parameters() if "conv_offset" in n)  # DTM's offset predictors
    offsets = f" ({offset_params:,} in DTM offset predictors)" if offset_params else ""
    cpu = f" x {threads or torch.get_num_threads()} thread(s)" if dist.device.type == "cpu" else ""
    facts = [f"{k} {v}" for k, v in (learned or {}).items() if isinstance(v, (int, float, str))]
    return (f"{run.task.name}: {type(model).__name__} {count_parameters(model):,} parameters{offsets} | "
            f"device {dist.device} x {dist.world_size} process(es){cpu}, {run.plan.header(n_train, n_val)}"
            f"{' | data: ' + ', '.join(facts) if facts else ''} | output {run.checkpointer.out}")


def _run_epochs(run: _Run, state: TrainState, loader: DataLoader, batches: Any,
                val_loader: Optional[DataLoader]) -> Dict[str, float]:
    """Train epoch after epoch from ``state``; returns the last epoch's record."""
    plan, say, out = run.plan, run.say, run.checkpointer.out
    final: Dict[str, float] = dict(state.history[-1]) if state.history else {}
    start_epoch, start_batch = state.epoch, state.batch_in_epoch
    if state.pending_eval and state.history:  # killed while evaluating: the epoch was saved, its evaluation was not
        say(f"evaluating epoch {start_epoch}, which was saved but not evaluated")
        final = _finish_epoch(run, state, val_loader, start_epoch, state.history[-1])
    if run.checkpointer.ckpt is not None and start_epoch >= plan.epochs:
        say(f"nothing to do: the run in {out} already finished {start_epoch} epochs")
    for epoch in range(start_epoch, plan.epochs):
        batches.set_epoch(epoch)
        run.task.on_epoch_start(run.parts.model, epoch)
        first = start_batch if epoch == start_epoch else 0
        batches.skip_batches = first
        if epoch != start_epoch or not first:
            state.loss_sum, state.loss_n = 0.0, 0
        t_epoch = time.perf_counter()
        at_epoch_end, stop, images = train_one_epoch(run, state, loader, epoch, first)
        if stop and not at_epoch_end:
            say(f"stopped at step {state.step} (max_steps); resume continues from {out / LAST}")
            break
        dt = time.perf_counter() - t_epoch
        tot = run.dist.reduce_sum([state.loss_sum, state.loss_n, images])
        record = dict(epoch=epoch + 1, step=state.step, lr=run.parts.optimizer.param_groups[0]["lr"],
                      train_loss=tot[0] / max(tot[1], 1), img_per_s=tot[2] / dt, epoch_time_s=dt)
        state.history.append(record)
        if val_loader is not None and ((epoch + 1) % run.cfg.eval_every == 0 or epoch + 1 == plan.epochs):
            state.pending_eval = True
            run.checkpointer.save(run.parts, state, epoch + 1, 0, run.dist)  # kept whatever its evaluation does
        final = _finish_epoch(run, state, val_loader, epoch + 1, record)
        if stop:
            break
    return final


def train_one_epoch(run: _Run, state: TrainState, loader: DataLoader, epoch: int, first: int = 0
                    ) -> Tuple[bool, bool, int]:
    """Train epoch ``epoch`` (0-based) from its micro-batch ``first``: forward and backward per
    micro-batch, an optimizer step (clipping, scaler, schedule, EMA) every ``accum_steps``, the
    step's loss logged every ``log_every`` steps, checkpoints every ``save_every_steps`` steps and
    at a stop. Returns ``(at_epoch_end, stopped, images)``: whether the epoch ended (an
    iteration-based run ends at step ``iters``, inside its last epoch), whether the run stops at
    ``plan.stop_step``, and this rank's images."""
    plan, cfg, parts, dist = run.plan, run.cfg, run.parts, run.dist
    per_epoch = plan.steps_per_epoch * plan.accum_steps
    micro, images, step_loss, at_epoch_end, stop = first, 0, 0.0, False, False
    bar = _progress_bar(run, epoch, first)
    parts.train_model.train()
    parts.optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        batch = move_to(batch, dist.device)
        last_micro = (micro + 1) % plan.accum_steps == 0
        loss, metrics = _forward_backward(run, batch, last_micro, epoch, state.step)
        micro, images = micro + 1, images + batch_len(batch)
        state.loss_sum, state.loss_n, step_loss = state.loss_sum + loss, state.loss_n + 1, step_loss + loss
        if not last_micro:
            continue
        _optimizer_step(parts, cfg, state)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss / plan.accum_steps:.4f}", lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}")
        if state.step % cfg.log_every == 0:  # the step's loss: the mean over its micro-batches and processes
            loss_mean = dist.reduce_sum([step_loss / plan.accum_steps])[0] / dist.world_size
            run.log.write(dict(event="train", epoch=epoch + 1, epoch_f=epoch + micro / per_epoch, step=state.step,
                               loss=loss_mean, lr=parts.optimizer.param_groups[0]["lr"],
                               **_group_lrs(parts.optimizer), **{k: float(v) for k, v in metrics.items()}))
        step_loss = 0.0
        run_done = cfg.iters is not None and state.step >= cfg.iters  # the last epoch of an iteration-based run
        at_epoch_end = micro == per_epoch or run_done
        stop = plan.stop_step is not None and state.step >= plan.stop_step
        if not at_epoch_end and (stop or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0)):
            run.checkpointer.save(parts, state, epoch, micro, dist)
        if stop:
            break
    if bar is not None:
        bar.close()
    return at_epoch_end, stop, images


def _progress_bar(run: _Run, epoch: int, first: int):
    if not (run.dist.is_main and run.cfg.progress):
        return None
    from tqdm import tqdm
    return tqdm(total=run.plan.steps_per_epoch, initial=first // run.plan.accum_steps,
                desc=f"epoch {epoch + 1}/{run.plan.epochs}", dynamic_ncols=True, leave=False, file=sys.stderr)


def _forward_backward(run: _Run, batch: Any, last_micro: bool, epoch: int, step: int) -> Tuple[float, dict]:
    """One micro-batch: the loss (under autocast), its backward pass divided by the accumulation
    steps (gradients synchronised across processes on the step's last micro-batch only)."""
    model, dist, plan = run.parts.train_model, run.dist, run.plan
    sync = contextlib.nullcontext() if (last_micro or not dist.distributed) else model.no_sync()
    with sync:
        with autocast(dist.device, plan.amp):
            loss, metrics = run.task.train_step(model, batch, dist.device)
        if not torch.isfinite(loss.detach()):
            last = run.checkpointer.out / LAST
            saved = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written before it"
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; {saved}")
        scaled = loss / plan.accum_steps
        (run.parts.scaler.scale(scaled) if run.parts.scaler is not None else scaled).backward()
    return loss.item(), metrics


def _optimizer_step(parts: TrainingParts, cfg: TrainConfig, state: TrainState) -> None:
    """Unscale, clip, step (through the scaler under fp16), zero the gradients, advance the schedule and the EMA."""
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.clip_grad)
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    parts.scheduler.step_update(state.step)
    if parts.ema is not None:
        parts.ema.update(parts.model, step=state.step)


def evaluate_model(task: Task, model: nn.Module, loader: DataLoader, dist: DistInfo, amp: str) -> Dict[str, float]:
    """``task.evaluate`` of ``model`` in eval mode under autocast, as floats (reduced across ranks)."""
    was_training = model.training
    model.eval()
    with autocast(dist.device, amp):
        metrics = task.evaluate(model, loader, dist.device, dist)
    model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def _finish_epoch(run: _Run, state: TrainState, val_loader: Optional[DataLoader], epoch: int, record: dict) -> dict:
    """Evaluate epoch ``epoch`` (1-based) when due, log it and checkpoint it; the epoch's training
    is already in ``last.pth`` (``pending_eval``) when the evaluation starts."""
    parts, dist = run.parts, run.dist
    is_best = False
    if state.pending_eval:
        parts.sync_buffers(dist)
        metrics = evaluate_model(run.task, parts.model, val_loader, dist, run.plan.amp)
        record.update({f"val_{k}": v for k, v in metrics.items()})
        if parts.ema is not None:
            ema_metrics = evaluate_model(run.task, parts.ema.module, val_loader, dist, run.plan.amp)
            record.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        if metrics["score"] > state.best_score:
            state.best_score, state.best_epoch, is_best = metrics["score"], epoch, True
    elif val_loader is None:
        state.best_epoch, is_best = epoch, True
    state.pending_eval = False
    run.log.write(dict(event="epoch", **record))
    run.log.write_csv(state.history)
    run.checkpointer.save(parts, state, epoch, 0, dist, best=is_best)
    shown = "  ".join(_shown(k, v, run.task.percent_metrics) for k, v in record.items() if k not in ("epoch", "step"))
    run.say(f"epoch {epoch}/{run.plan.epochs}  {shown}")
    return record


def _summary(run: _Run, state: TrainState, final: Dict[str, float], train_time: float) -> Dict[str, Any]:
    """The run's summary (every rank), after ``curves.png`` is drawn on rank 0."""
    out, log, dist = run.checkpointer.out, run.log, run.dist
    curves = out / "curves.png"
    if dist.is_main and log.jsonl.exists() and log.records():
        plot_curves(log.jsonl, curves, getattr(run.task, "curve_metrics", ("score",)))
    dist.barrier()
    return dict(
        best_score=state.best_score if state.best_epoch is not None and math.isfinite(state.best_score) else None,
        best_epoch=state.best_epoch, final=final, epochs_done=len(state.history), steps=state.step,
        last_checkpoint=str(out / LAST), best_checkpoint=str(out / BEST), log=str(log.jsonl), csv=str(log.csv),
        curves=str(curves), train_time_s=train_time, world_size=dist.world_size, plan=run.plan.describe(),
    )


def _shown(key: str, value: float, percent: Sequence[str]) -> str:
    """One value of the epoch line: a metric the task gives in percent as ``val_mIoU 41.27%``."""
    name = key.split("_", 1)[1] if key.startswith(("val_", "ema_")) else None
    return f"{key} {value:.2f}%" if name in percent else f"{key} {value:.4g}"


def _group_lrs(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """``{"lr_decay": ..., "lr_no_decay": ..., "lr_offset": ...}``: the lr of each parameter group
    (by its ``name``, else its index) when there are several."""
    groups = optimizer.param_groups
    if len(groups) < 2:
        return {}
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(groups)}


def _eval_batch(cfg: TrainConfig, dist: DistInfo) -> int:
    """Images per process per evaluation batch: ``val_batch_size``, else the training micro-batch."""
    if cfg.val_batch_size:
        return int(cfg.val_batch_size)
    return RunPlan.resolve(cfg, dist.world_size, dist.device.type).batch_per_process


# --- evaluation only -----------------------------------------------------------------------------------------

@preserved_global_state()
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
        task.setup()
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
        loader = eval_loader(task, val_set, _eval_batch(cfg, dist), cfg, dist)
        t0 = time.perf_counter()
        with autocast(dist.device, cfg.amp):
            metrics = task.evaluate(model, loader, dist.device, dist)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(images=float(len(val_set)), eval_time_s=time.perf_counter() - t0)
        return metrics
    finally:
        if dist.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
