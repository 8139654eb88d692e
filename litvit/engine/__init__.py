"""The one training / evaluation loop of litvit, shared by every task.

Files: :mod:`.loop` (fit: wires the parts; train_one_epoch, evaluate_model; evaluate a checkpoint),
:mod:`.plan` (RunPlan: batches, steps, lrs, precision resolved once), :mod:`.checkpointer` (lock,
resume and its refusals, the training state, RNG states, atomic saves), :mod:`.loaders` (the seeded,
resumable training batches, evaluation sharding, item checks), :mod:`.task` (the Task interface),
:mod:`.config` (TrainConfig, threads), :mod:`.distributed` (torchrun, DDP), :mod:`.optim`
(parameter groups), :mod:`.logs` (the output folder: lock, logs, curves); checkpoint files are read
and written by :mod:`litvit.checkpoint`.

A task (classification, detection, segmentation) subclasses :class:`Task` and says how to build
its model and datasets, how to compute a training loss from a batch, and how to evaluate;
:func:`fit` does everything else, the same way for every task:

* one process or many: under ``torchrun --nproc_per_node N`` it initialises ``torch.distributed``
  from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; gloo on CPU, NCCL on CUDA), wraps
  the model in ``DistributedDataParallel``, shards the data, reduces metrics across ranks and lets
  only rank 0 write;
* data before model: ``task.setup()`` reads the data first and learns what the model needs (the
  classes; shown in the run's first line), then the model is built, then the run plan
  (:class:`RunPlan`: the global batch split into processes x accumulation micro-batches, steps per
  epoch, total steps, warm-up, the peak lr and each parameter group's, the precision) is resolved
  once and every part reads it, then the optimizer and schedule, then the loop; a run counted
  in iterations (``TrainConfig.iters``, the dense recipes) trains as many epochs as the steps need,
  its schedule spans ``iters`` steps (:meth:`Task.schedule_steps`), and its last, cut epoch is
  evaluated and checkpointed as finished;
* AdamW (:meth:`Task.build_optimizer`, a hook as :meth:`Task.build_scheduler` is) over
  :func:`param_groups` (the authors' rules: no weight decay on 1-D parameters, biases, class tokens
  and relative position tables; DTM offset-predictor weights in a group at ``lr x offset_lr_mult``;
  dense tasks pass mmcv-style ``no_decay_keys``),
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
        def setup(self) -> dict                                             # first: read the data, return
                                                                            # what the model needs (classes)
        def build_model(self) -> nn.Module
        def build_datasets(self) -> tuple[Dataset, Dataset | None]          # (train, val); each may have
                                                                            # scan(progress) / drop(indices)
        def collate_fn(self) -> Callable | None                             # default None
        def train_sampler(self, dataset, dist) -> Sampler | None            # default: shuffled, sharded
        def param_groups(self, model, cfg) -> list[dict]                    # default: engine.param_groups
        def build_optimizer(self, groups, cfg, plan) -> Optimizer           # default: AdamW at the plan's lrs
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
from ..checkpoint import read_training_checkpoint as load_checkpoint  # the old name: read a training checkpoint
from ..checkpoint import write_checkpoint as save_checkpoint_atomic
from ..errors import CheckpointWriteError, OutputLockedError
from .config import AMP_MODES, TrainConfig, auto_threads, per_process_batch_size, set_threads
from .distributed import DistInfo, is_main_process, print_main, setup_distributed, sync_buffers, unwrap_model
from .logs import OutputLock, plot_curves, progress
from .checkpointer import Checkpointer, TrainingParts, TrainState
from .loop import BEST, LAST, autocast, changed_settings, check_datasets, evaluate, evaluate_model, fit, train_one_epoch
from .optim import describe_param_groups, param_groups
from .plan import RunPlan, resolve_amp
from .task import Task

__all__ = [
    "Task", "TrainConfig", "DistInfo", "fit", "evaluate", "param_groups", "describe_param_groups", "save_checkpoint_atomic",
    "CheckpointWriteError", "OutputLock", "OutputLockedError", "check_datasets", "changed_settings", "auto_threads",
    "load_checkpoint", "setup_distributed", "per_process_batch_size", "autocast", "unwrap_model", "sync_buffers",
    "set_threads", "plot_curves", "progress", "is_main_process", "print_main", "LAST", "BEST", "AMP_MODES",
    "RunPlan", "resolve_amp", "Checkpointer", "TrainingParts", "TrainState", "train_one_epoch", "evaluate_model",
]
