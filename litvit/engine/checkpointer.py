"""The run's checkpoints (:class:`Checkpointer`): the output lock, the run to resume and whether it
may be resumed with these settings, the full training state (every rank's RNG states too) written
atomically, and read back into a fresh run; files are read and written by :mod:`litvit.checkpoint`."""
import dataclasses
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_state_dict_strict, read_training_checkpoint, record_entries, write_checkpoint
from ..errors import CheckpointMismatchError
from ..utils import plain
from .config import TrainConfig
from .distributed import DistInfo, sync_buffers
from .logs import OutputLock
from .plan import RunPlan

__all__ = ["Checkpointer", "TrainState", "TrainingParts", "changed_settings", "LAST", "BEST"]

LAST = "last.pth"
BEST = "best.pth"


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


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


# --- what a resumed run may change ------------------------------------------------------------------------

# Settings a resumed run may change freely: where and how it runs, not what it computes.
_RESUME_FREE = ("output_dir", "resume", "resume_changed", "progress", "verbose", "workers", "threads", "device",
                "val_batch_size", "save_every_steps", "log_every", "eval_every", "max_steps", "grad_checkpointing",
                "sync_bn", "batch_size", "global_batch", "accum_steps", "defaulted", "derived", "log")

# Tasks whose ``--batch-size`` was per process before the run plan (checkpoints without a "plan" record)
_PER_PROCESS_BATCH_TASKS = ("detection", "segmentation")


def _global_batch(ckpt: Mapping) -> Optional[int]:
    """The global batch a checkpoint's run used: its plan's, else its per-process batch x processes x accumulation."""
    if isinstance(ckpt.get("plan"), Mapping) and "global_batch" in ckpt["plan"]:
        return int(ckpt["plan"]["global_batch"])
    old = ckpt.get("config") or {}
    if old.get("batch_size") is None:
        return None
    return int(old["batch_size"]) * int(ckpt.get("world_size", 1)) * int(old.get("accum_steps", 1))


def _batch_change(ckpt: Mapping, cfg: TrainConfig, new_batch: int) -> Optional[str]:
    """How the global batch changed, or None. A dense run written when ``--batch-size`` meant the
    per-process batch and resumed with the same number, now the global batch, is told so."""
    old_batch = _global_batch(ckpt)
    if old_batch is None or old_batch == new_batch:
        return None
    old = ckpt.get("config") or {}
    if ("plan" not in ckpt and ckpt.get("task") in _PER_PROCESS_BATCH_TASKS
            and cfg.global_batch is not None and int(old["batch_size"]) == int(cfg.global_batch)):
        return (f"--batch-size {cfg.global_batch} meant {old['batch_size']} images per process when the checkpoint "
                f"was written (global batch {old_batch} = {old['batch_size']} x {ckpt.get('world_size', 1)} "
                f"process(es) x {old.get('accum_steps', 1)} accumulation) and now means the global batch: "
                f"--batch-size {old_batch} continues it")
    return f"global batch {old_batch} -> {new_batch}"


def _changes(ckpt: Mapping, cfg: TrainConfig, task_config: Mapping, plan: RunPlan) -> List[Tuple[str, str]]:
    """``(setting, "--flag old -> new")`` for every setting that differs; see :func:`changed_settings`.
    The global batch and the precision are compared as the runs used them (their plans)."""
    changes = []
    old_cfg = ckpt.get("config") or {}
    for key, new in dataclasses.asdict(cfg).items():
        if key in _RESUME_FREE or key == "amp" or key not in old_cfg:
            continue
        if plain(old_cfg[key]) != plain(new):
            changes.append((key, f"--{key.replace('_', '-')} {plain(old_cfg[key])} -> {plain(new)}"))
    old_plan = ckpt.get("plan") if isinstance(ckpt.get("plan"), Mapping) else {}
    old_amp = old_plan.get("amp", old_cfg.get("amp"))
    if old_amp is not None and old_amp != plan.amp:
        changes.append(("amp", f"--amp {old_amp} -> {plan.amp}"))
    batch = _batch_change(ckpt, cfg, plan.global_batch)
    if batch is not None:
        changes.append(("batch_size", batch))
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
    plan = RunPlan.resolve(cfg, world_size, "cuda")  # the precision as asked
    return [text for _, text in _changes(ckpt, cfg, task_config, plan)]


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


# --- the state of a run -------------------------------------------------------------------------------------

@dataclass
class TrainingParts:
    """What trains: the model (``train_model``: it, or its DDP wrapper), optimizer, schedule, scaler, EMA."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[Any] = None
    ema: Optional[nn.Module] = None
    train_model: Optional[nn.Module] = None

    def sync_buffers(self, dist: DistInfo) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, of the model and of its EMA."""
        sync_buffers(self.model, dist)
        if self.ema is not None:
            sync_buffers(self.ema.module, dist)


@dataclass
class TrainState:
    """Where a run stands: the epoch and micro-batch to continue from, the optimizer step, the best
    evaluation so far, the epoch records, this rank's loss sums over the current epoch, and whether
    the last saved epoch still waits for its evaluation."""
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: Optional[int] = None
    history: List[dict] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_n: int = 0
    pending_eval: bool = False


class Checkpointer:
    """The output folder's checkpoints for one run.

    Created before anything else (rank 0 takes ``OUTPUT/.lock``, :class:`OutputLock`, and keeps it
    until :meth:`release`); :meth:`find` picks the checkpoint to continue from and reads it,
    :meth:`refuse_changes` compares its settings with this run's, :meth:`restore` loads it into the
    parts and returns the :class:`TrainState`, :meth:`save` writes ``last.pth`` (and ``best.pth``).
    """

    def __init__(self, output_dir: str, rank: Optional[int] = None):
        self.out = Path(output_dir)
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.lock = OutputLock(self.out).acquire() if rank == 0 else None
        self.path: Optional[Path] = None
        self.ckpt: Optional[dict] = None
        self._record: Dict[str, Any] = {}
        self._task: Any = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def find(self, cfg: TrainConfig, task_name: str, say: Callable[[str], None]) -> Optional[dict]:
        """Read the checkpoint to continue from (``cfg.resume``); refuse one of another task."""
        if self.lock is not None and self.lock.stale_owner:
            say(f"note: {self.lock.path} was left by process {self.lock.stale_owner}, which has ended; taking it over")
        self.path = _resume_path(cfg, self.out)
        self.ckpt = read_training_checkpoint(self.path) if self.path is not None else None
        task = self.ckpt.get("task") if self.ckpt is not None else None
        if isinstance(task, str) and task != task_name:
            if self.path == self.out / LAST:
                raise ValueError(f"{self.out} holds a {task} run ({LAST}), not a {task_name} one: pick another "
                                 f"--output for this {task_name} run")
            raise ValueError(f"{self.path} is a {task} checkpoint, not a {task_name} one: --resume "
                             f"continues a {task_name} run")
        return self.ckpt

    def refuse_changes(self, cfg: TrainConfig, task_config: Mapping, plan: RunPlan, say: Callable[[str], None]) -> None:
        """A resumed run must be the same run: changed settings are refused unless ``resume_changed``."""
        if self.ckpt is None:
            return
        changes = _changes(self.ckpt, cfg, task_config, plan)
        if changes and not cfg.resume_changed:
            raise ValueError(f"{self.path} was written with other settings: "
                             f"{_describe_changes(changes, self.ckpt, cfg)}; resume with the checkpoint's settings, "
                             f"add --resume-changed to continue with the new ones, or pick another --output")
        if changes:
            say(f"resuming {self.path} with changed settings (--resume-changed): "
                f"{'; '.join(text for _, text in changes)}")

    def restore(self, parts: TrainingParts, cfg: TrainConfig, plan: RunPlan, dist: DistInfo) -> TrainState:
        """The run's state: fresh (per-rank RNG streams seeded), or the checkpoint's, loaded into ``parts``."""
        if self.ckpt is None:
            _reseed(cfg.seed + dist.rank)  # per-rank dropout / drop path / mixup streams
            return TrainState()
        ckpt, path = self.ckpt, self.path
        if "optimizer" not in ckpt or "model" not in ckpt:
            raise CheckpointMismatchError(f"{path} is not a litvit training checkpoint (nothing to resume)")
        load_state_dict_strict(parts.model, ckpt["model"], str(path))
        try:
            parts.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointMismatchError(f"{path}: optimizer state does not fit: {e}") from None
        if cfg.resume_changed:  # the schedule of the new settings, at the step reached
            parts.scheduler.step_update(ckpt["step"])
        else:
            parts.scheduler.load_state_dict(ckpt["scheduler"])
        if parts.scaler is not None and ckpt.get("scaler"):
            parts.scaler.load_state_dict(ckpt["scaler"])
        if parts.ema is not None and ckpt.get("model_ema") is not None:
            parts.ema.module.load_state_dict(ckpt["model_ema"])
        if ckpt.get("steps_per_epoch") not in (None, plan.steps_per_epoch):
            raise ValueError(f"{path} was trained with {ckpt['steps_per_epoch']} steps per epoch, this run has "
                             f"{plan.steps_per_epoch}: resume with the same global batch, processes and dataset")
        state = TrainState(epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"], step=ckpt["step"],
                           best_score=ckpt.get("best_score", -math.inf), best_epoch=ckpt.get("best_epoch"),
                           history=list(ckpt.get("history", [])), pending_eval=bool(ckpt.get("pending_eval")))
        _restore_epoch_loss(state, ckpt.get("epoch_loss") or [], dist)
        _restore_rngs(ckpt, cfg.seed, state.epoch, dist)
        return state

    def save(self, parts: TrainingParts, state: TrainState, epoch: int, batch_in_epoch: int,
             dist: DistInfo, best: bool = False) -> None:
        """Write ``last.pth`` (and ``best.pth``) on rank 0; collective: every rank takes part."""
        parts.sync_buffers(dist)
        rng = dist.all_gather_object(_rng_state())
        epoch_loss = dist.all_gather_object((state.loss_sum, state.loss_n))
        if dist.is_main:
            s = dict(
                model=parts.model.state_dict(), optimizer=parts.optimizer.state_dict(),
                scheduler=parts.scheduler.state_dict(),
                scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
                model_ema=parts.ema.module.state_dict() if parts.ema is not None else None,
                epoch=epoch, batch_in_epoch=batch_in_epoch, step=state.step, world_size=dist.world_size, rng=rng,
                epoch_loss=epoch_loss, pending_eval=state.pending_eval, best_score=state.best_score,
                best_epoch=state.best_epoch, history=state.history, **self._record,
                **record_entries(self._task.name, self._task.checkpoint_extra()))
            write_checkpoint(s, self.out / LAST)
            if best:
                write_checkpoint(s, self.out / BEST)
        dist.barrier()

    def set_record(self, cfg: TrainConfig, plan: RunPlan, task: Any, task_config: Mapping) -> None:
        """What every checkpoint of the run says beside its state: the settings, the plan, the task's
        settings and its record (``task.checkpoint_extra()``, asked at every save)."""
        self._record = dict(steps_per_epoch=plan.steps_per_epoch, config=dataclasses.asdict(cfg),
                            plan=plan.describe(), task_config=task_config)
        self._task = task


def _resume_path(cfg: TrainConfig, out: Path) -> Optional[Path]:
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


def _restore_epoch_loss(state: TrainState, sums: Sequence, dist: DistInfo) -> None:
    """This rank's loss sums of the epoch a mid-epoch checkpoint was written in."""
    if not (state.batch_in_epoch and sums):
        return
    if len(sums) == dist.world_size:
        state.loss_sum, state.loss_n = float(sums[dist.rank][0]), int(sums[dist.rank][1])
    elif dist.is_main:  # another number of processes: rank 0 carries the epoch's sums so far
        state.loss_sum, state.loss_n = sum(float(a) for a, _ in sums), sum(int(b) for _, b in sums)


def _restore_rngs(ckpt: Mapping, seed: int, epoch: int, dist: DistInfo) -> None:
    """This rank's RNG states as saved; re-seeded when the number of processes changed."""
    saved_world, rngs = ckpt.get("world_size", 1), ckpt.get("rng") or []
    if saved_world == dist.world_size and len(rngs) == dist.world_size:
        _set_rng_state(rngs[dist.rank])
    else:
        warnings.warn(f"checkpoint was written by {saved_world} process(es), this run has {dist.world_size}: "
                      "RNG states are re-seeded, the run continues but will not repeat bit for bit")
        _reseed(seed + 1000 * epoch + dist.rank)
