"""The training loop (:func:`fit`) and evaluation (:func:`evaluate`); see :mod:`litvit.engine`."""
import contextlib
import dataclasses
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler, default_collate

from ..checkpoint import load_state_dict_strict, read_training_checkpoint, record_entries, write_checkpoint
from ..errors import CheckpointMismatchError
from ..utils import count_parameters, mix_seed, plain, preserved_global_state, seeded_rngs
from .config import TrainConfig, set_threads
from .distributed import DistInfo, setup_distributed, sync_buffers
from .logs import OutputLock, _RunLog, plot_curves
from .task import Task

__all__ = ["fit", "evaluate", "check_datasets", "changed_settings", "autocast", "LAST", "BEST"]

LAST = "last.pth"
BEST = "best.pth"
AMP_MODES = ("none", "bf16", "fp16")


# --- RNG states -----------------------------------------------------------------------------------------------

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


# --- precision -----------------------------------------------------------------------------------------

def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (``"none"`` gives a null context)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on the CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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
                "sync_bn", "batch_size", "accum_steps", "defaulted", "derived", "log")


def _changes(ckpt: Mapping, cfg: TrainConfig, task_config: Mapping, world_size: int) -> List[Tuple[str, str]]:
    """``(setting, "--flag old -> new")`` for every setting that differs; see :func:`changed_settings`."""
    changes = []
    old_cfg = ckpt.get("config") or {}
    new_cfg = dataclasses.asdict(cfg)
    for key, new in new_cfg.items():
        if key in _RESUME_FREE or key not in old_cfg:
            continue
        if plain(old_cfg[key]) != plain(new):
            changes.append((key, f"--{key.replace('_', '-')} {plain(old_cfg[key])} -> {plain(new)}"))
    if "batch_size" in old_cfg:
        old_batch = old_cfg["batch_size"] * ckpt.get("world_size", 1) * old_cfg.get("accum_steps", 1)
        new_batch = cfg.batch_size * world_size * cfg.accum_steps
        if old_batch != new_batch:
            changes.append(("batch_size", f"global batch {old_batch} -> {new_batch}"))
    old_task, new_task = _flat(ckpt.get("task_config") or {}), _flat(task_config)
    seen = {key for key, _ in changes}  # a setting both configs hold (a dense run's iters) is named once
    for key, new in new_task.items():
        if key in old_task and old_task[key] != new and key not in seen:
            changes.append((key, f"{key} {old_task[key]} -> {new}"))
    for key in old_task.keys() - new_task.keys():
        changes.append((key, f"{key} {old_task[key]} -> (unset)"))
    return changes


def changed_settings(ckpt: Mapping, cfg: TrainConfig, task_config: Mapping, world_size: int) -> List[str]:
    """What differs between a checkpoint's recorded settings and this run's, as ``"--flag old -> new"``
    (settings in :data:`_RESUME_FREE` and ones the checkpoint did not record are not compared; the
    global batch is compared instead of the per-process batch)."""
    return [text for _, text in _changes(ckpt, cfg, task_config, world_size)]


def _describe_changes(changes: Sequence[Tuple[str, str]], ckpt: Mapping, cfg: TrainConfig) -> str:
    """The changes a refused resume names: those of the settings the user gave; failing any, those
    of settings left at their defaults (``TrainConfig.defaulted``); failing any, the derived ones
    (``TrainConfig.derived``, in this run or the checkpoint's). The changes of the later kinds,
    which follow from the named ones, are counted."""
    old_derived = (ckpt.get("config") or {}).get("derived") or ()
    derived, defaulted = set(cfg.derived) | set(old_derived), set(cfg.defaulted)

    def kind(key: str) -> int:
        return 2 if key in derived else 1 if key in defaulted else 0

    first = min(kind(key) for key, _ in changes)
    named = [text for key, text in changes if kind(key) == first]
    follow = len(changes) - len(named)
    return "; ".join(named) + (f" (and {follow} value{'s' if follow > 1 else ''} that follow"
                               f"{'' if follow > 1 else 's'} from {'these' if len(named) > 1 else 'it'})"
                               if follow else "")


def _flat(d: Mapping, prefix: str = "") -> Dict[str, Any]:
    """Nested settings as ``{"model_kwargs.embed_dims": [...], ...}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = plain(v)
    return out


@preserved_global_state()  # reseeded and re-threaded for the run, as the caller had them after it
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
            with contextlib.ExitStack() as closing:  # the run's log writers, closed also on an error
                return _fit(task, cfg, dist, threads, lock, closing)
        finally:
            if dist.initialized_here and torch_dist.is_initialized():
                torch_dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.release()


def _fit(task: Task, cfg: TrainConfig, dist: DistInfo, threads: str = "", lock: Optional[OutputLock] = None,
         closing: Optional[contextlib.ExitStack] = None) -> Dict[str, Any]:
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
    ckpt = read_training_checkpoint(resume_path) if resume_path is not None else None
    if ckpt is not None and isinstance(ckpt.get("task"), str) and ckpt["task"] != task.name:
        if resume_path == out / LAST:
            raise ValueError(f"{out} holds a {ckpt['task']} run ({LAST}), not a {task.name} one: pick another "
                             f"--output for this {task.name} run")
        raise ValueError(f"{resume_path} is a {ckpt['task']} checkpoint, not a {task.name} one: --resume "
                         f"continues a {task.name} run")

    # 1. data first: what the model needs (classes, ...) comes from it; every item of every split is
    # checked before anything is built or trained
    task.setup()
    train_set, val_set = task.build_datasets()
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    check_datasets([train_set, val_set], dist, progress=cfg.progress)
    if len(train_set) == 0:
        raise ValueError("no image of the training set can be read")
    # a stream (tar shards, litvit.data.shards) deals its own shards and batches to processes and workers
    streaming = isinstance(train_set, IterableDataset)
    if streaming:
        micro_per_epoch = train_set.max_batches(cfg.batch_size, dist.world_size, cfg.workers)
        per_process = micro_per_epoch * cfg.batch_size
    else:
        sampler = task.train_sampler(train_set, dist)
        if sampler is None:
            sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                         shuffle=True, seed=cfg.seed, drop_last=False)
        micro_per_epoch, per_process = len(sampler) // cfg.batch_size, len(sampler)
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        global_batch = cfg.batch_size * dist.world_size * cfg.accum_steps
        raise ValueError(f"global batch {global_batch} is larger than the training set "
                         f"({len(train_set)} images, {per_process} per process)")
    if cfg.iters is not None:  # an iteration-based schedule: as many epochs as its iterations need
        epochs = math.ceil(cfg.iters / steps_per_epoch)
        cfg = dataclasses.replace(cfg, epochs=epochs, max_steps=min(cfg.max_steps or cfg.iters, cfg.iters))
        say(f"{cfg.iters} iterations = {epochs} epoch(s) of {steps_per_epoch} steps ({len(train_set)} images, "
            f"batch {cfg.batch_size * dist.world_size * cfg.accum_steps})")
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps the loader off the global RNG
    if streaming:  # its workers are started anew each epoch: they take the epoch and the batches to skip along
        batches = train_set.configure(cfg.batch_size, cfg.seed, dist.rank, dist.world_size, cfg.workers,
                                      steps_per_epoch * cfg.accum_steps, collate=task.collate_fn() or default_collate)
        train_loader = DataLoader(batches, batch_size=None, num_workers=cfg.workers,
                                  pin_memory=device.type == "cuda", generator=loader_gen)
    else:
        batches = _ResumableBatches(sampler, cfg.batch_size, cfg.seed, dist.rank, steps_per_epoch * cfg.accum_steps)
        train_loader = DataLoader(_SeededDataset(train_set), batch_sampler=batches, num_workers=cfg.workers,
                                  collate_fn=task.collate_fn(), pin_memory=device.type == "cuda",
                                  persistent_workers=cfg.workers > 0, generator=loader_gen)
    val_loader = None
    if val_set is not None and len(val_set):
        val_loader = _eval_loader(task, val_set, cfg, dist, persistent=True)

    # a resumed run must be the same run: refuse changed settings unless told otherwise
    task_config = plain(task.run_config())
    if ckpt is not None:
        changes = _changes(ckpt, cfg, task_config, dist.world_size)
        if changes and not cfg.resume_changed:
            raise ValueError(f"{resume_path} was written with other settings: "
                             f"{_describe_changes(changes, ckpt, cfg)}; resume with the checkpoint's settings, "
                             f"add --resume-changed to continue with the new ones, or pick another --output")
        if changes:
            say(f"resuming {resume_path} with changed settings (--resume-changed): "
                f"{'; '.join(text for _, text in changes)}")

    # 2. model: identical initialisation on every rank
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

    # 3. optimizer and schedule
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

    # 4. state: fresh, or the checkpoint's
    start_epoch, start_batch, step, best_score, best_epoch = 0, 0, 0, -math.inf, None
    history: List[dict] = []
    loss_sum, loss_n = 0.0, 0  # this rank's training loss over the current epoch (kept across a resume)
    pending_eval = False
    if ckpt is not None:
        if "optimizer" not in ckpt or "model" not in ckpt:
            raise CheckpointMismatchError(f"{resume_path} is not a litvit training checkpoint (nothing to resume)")
        load_state_dict_strict(model, ckpt["model"], str(resume_path))
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
    log = _RunLog(out, dist.is_main, step if ckpt is not None else None, loggers=cfg.log,
                  config=dict(dataclasses.asdict(cfg), task=task.name, task_config=task_config))
    if closing is not None:
        closing.enter_context(log)

    train_model: nn.Module = model
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)

    n_params = count_parameters(model)
    offset_params = sum(p.numel() for n, p in model.named_parameters() if "conv_offset" in n)  # DTM's offset predictors
    offsets = f" ({offset_params:,} in DTM offset predictors)" if offset_params else ""
    lr_how = f"{cfg.lr:g} x global batch {global_batch} / 512" if cfg.scale_lr else "as given, not scaled by the batch"
    say(f"{task.name}: {type(model).__name__} {n_params:,} parameters{offsets} | "
        f"device {device} x {dist.world_size} process(es)"
        f"{f' x {threads or torch.get_num_threads()} thread(s)' if device.type == 'cpu' else ''}, amp {cfg.amp} | "
        f"global batch {global_batch} = {cfg.batch_size} x {dist.world_size} x {cfg.accum_steps} accum | "
        f"lr {peak_lr:.3g} ({lr_how}) | "
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
            task_config=task_config, **record_entries(task.name, task.checkpoint_extra()),
        )

    def save(epoch: int, batch_in_epoch: int, best: bool = False) -> None:
        sync_buffers(model, dist)
        if ema is not None:
            sync_buffers(ema.module, dist)
        s = state(epoch, batch_in_epoch)  # collective: every rank takes part
        if dist.is_main:
            write_checkpoint(s, out / LAST)
            if best:
                write_checkpoint(s, out / BEST)
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
        shown = "  ".join(_shown(k, v, task.percent_metrics) for k, v in record.items() if k not in ("epoch", "step"))
        say(f"epoch {epoch}/{cfg.epochs}  {shown}")
        return record

    # 5. the loop
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
        at_epoch_end = False
        t_epoch, images = time.perf_counter(), 0
        bar = None
        if dist.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps_per_epoch, initial=first // cfg.accum_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0  # this rank's loss summed over the micro-batches of the current step
        for batch in train_loader:
            batch = _move(batch, device)
            last_micro = (micro + 1) % cfg.accum_steps == 0
            sync = contextlib.nullcontext() if (last_micro or not dist.distributed) else train_model.no_sync()
            with sync:
                with autocast(device, cfg.amp):
                    loss, metrics = task.train_step(train_model, batch, device)
                if not torch.isfinite(loss.detach()):
                    saved = (f"the last good checkpoint is {out / LAST}" if (out / LAST).is_file()
                             else "no checkpoint was written before it")
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; {saved}")
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            micro += 1
            loss_sum += loss.item()
            step_loss += loss.item()
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
                bar.set_postfix(loss=f"{step_loss / cfg.accum_steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if step % cfg.log_every == 0:  # the step's loss: the mean over its micro-batches and processes
                lval = dist.reduce_sum([step_loss / cfg.accum_steps])[0] / dist.world_size
                log.write(dict(event="train", epoch=epoch + 1, epoch_f=epoch + micro / batches.num_batches,
                               step=step, loss=lval, lr=optimizer.param_groups[0]["lr"], **_group_lrs(optimizer),
                               **{k: float(v) for k, v in metrics.items()}))
            step_loss = 0.0
            # an iteration-based run ends at step ``iters``, inside its last epoch: that epoch is then
            # done (recorded, evaluated, checkpointed as finished); a stop at max_steps is a pause
            run_done = cfg.iters is not None and step >= cfg.iters
            at_epoch_end = micro == batches.num_batches or run_done
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop = True
            if not at_epoch_end and (stop or (cfg.save_every_steps and step % cfg.save_every_steps == 0)):
                save(epoch, micro)
            if stop:
                break
        if bar is not None:
            bar.close()
        if stop and not at_epoch_end:
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


def _eval_loader(task: Task, val_set: Dataset, cfg: TrainConfig, dist: DistInfo, persistent: bool = False
                 ) -> DataLoader:
    """Every item of ``val_set`` once over all processes: rank r evaluates items r, r + world, ...
    (a stream of shards splits its shards instead)."""
    pin = dist.device.type == "cuda"
    if isinstance(val_set, IterableDataset):
        return DataLoader(val_set.split(dist.rank, dist.world_size), batch_size=cfg.val_batch_size or cfg.batch_size,
                          num_workers=cfg.workers, collate_fn=task.collate_fn(), pin_memory=pin)
    return DataLoader(val_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                      sampler=_ShardSampler(len(val_set), dist.rank, dist.world_size), num_workers=cfg.workers,
                      collate_fn=task.collate_fn(), pin_memory=pin, persistent_workers=persistent and cfg.workers > 0)


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
        loader = _eval_loader(task, val_set, cfg, dist)
        t0 = time.perf_counter()
        with autocast(dist.device, cfg.amp):
            metrics = task.evaluate(model, loader, dist.device, dist)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(images=float(len(val_set)), eval_time_s=time.perf_counter() - t0)
        return metrics
    finally:
        if dist.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
