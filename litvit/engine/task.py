"""The task interface: what a task (classification, detection, segmentation) tells the engine."""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..checkpoint import load_state_dict_strict, read_training_checkpoint
from .config import TrainConfig
from .distributed import DistInfo
from .optim import param_groups
from .plan import RunPlan, warmup_steps

__all__ = ["Task"]


class Task:
    """What a task tells the engine. Subclasses override the methods that raise NotImplementedError.

    Attributes:
        name (str): ``"classification"``, ``"detection"``, ``"segmentation"``, ...
        curve_metrics (Tuple[str, ...]): evaluation metrics drawn in ``curves.png``.
        percent_metrics (Tuple[str, ...]): evaluation metrics given in percent (shown as ``81.25%``).
        find_unused_parameters (bool): passed to DistributedDataParallel.
    """
    name: str = "task"
    curve_metrics: Tuple[str, ...] = ("score",)
    percent_metrics: Tuple[str, ...] = ()
    find_unused_parameters: bool = False

    def setup(self) -> Dict[str, Any]:
        """Read the data before the model is built (:func:`fit` and :func:`evaluate` call it first):
        build what :meth:`build_datasets` returns (tasks keep it) and learn from the data what the
        model needs. Returns that, as plain values (e.g. ``num_classes``, ``class_names``); the task
        keeps it for :meth:`build_model`, and :func:`fit` shows it in the run's first lines and keeps
        it in the run's log (``log.jsonl``'s config record, under ``data``). Default: nothing to learn."""
        return {}

    def build_model(self) -> nn.Module:
        """The model, from the task's settings and what :meth:`setup` learned from the data."""
        raise NotImplementedError

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        """(train, val); val may be None (no evaluation, the last checkpoint is also the best).

        Either may be a stream (an ``IterableDataset``) such as :class:`litvit.data.shards.ShardStream`
        instead of an indexable dataset: a training stream gives ``max_batches(batch_size, world_size,
        workers)``, ``configure(batch_size, seed, rank, world_size, workers, num_batches, collate)``,
        ``set_epoch`` and ``skip_batches`` and yields whole collated batches; an evaluation stream
        gives ``split(rank, world_size)`` and yields items. The sampler below is then not used."""
        raise NotImplementedError

    def collate_fn(self) -> Optional[Callable]:
        return None

    def train_sampler(self, dataset: Dataset, dist: DistInfo) -> Optional[Sampler]:
        """A sampler over *this rank's* share of ``dataset``; None means the engine's default (a
        DistributedSampler, shuffled by ``(seed, epoch)``). It may have ``set_epoch``."""
        return None

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> List[dict]:
        return param_groups(model, cfg.weight_decay, offset_lr_mult=cfg.offset_lr_mult)

    def build_optimizer(self, groups: List[dict], cfg: TrainConfig, plan: RunPlan) -> torch.optim.Optimizer:
        """The optimizer over :meth:`param_groups`, each group at its peak lr from the run plan
        (``plan.group_lr(name)``); default AdamW with ``cfg``'s betas, eps and weight decay (a
        group's own ``weight_decay`` wins). Tasks override it for another optimizer (SGD, ...)."""
        return torch.optim.AdamW(
            [dict({k: v for k, v in g.items() if k != "param_names"}, lr=plan.group_lr(g["name"])) for g in groups],
            lr=plan.peak_lr, betas=tuple(cfg.opt_betas), eps=cfg.opt_eps, weight_decay=cfg.weight_decay)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called with the unwrapped model before each training epoch (0-based); default nothing."""

    @staticmethod
    def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
        """Optimizer steps a schedule spans: ``cfg.iters`` in an iteration-based run, else
        ``cfg.epochs x steps_per_epoch``."""
        return int(cfg.iters) if cfg.iters is not None else cfg.epochs * steps_per_epoch

    def build_scheduler(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """A timm scheduler stepped with ``step_update(optimizer_step)``; default: cosine with linear
        warm-up over :meth:`schedule_steps`. Dense tasks override it (step decay, poly)."""
        from timm.scheduler import CosineLRScheduler
        total, warmup = self.schedule_steps(cfg, steps_per_epoch), warmup_steps(cfg, steps_per_epoch)  # as the plan's
        return CosineLRScheduler(
            optimizer, t_initial=max(1, total - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
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
        ckpt = read_training_checkpoint(path)
        key = "model_ema" if use_ema and ckpt.get("model_ema") is not None else "model"
        if key not in ckpt:
            raise ValueError(f"{path} is not a litvit training checkpoint (no '{key}' entry)")
        load_state_dict_strict(model, ckpt[key], path)
