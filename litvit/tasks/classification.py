"""Image classification with LIT on the shared engine: :class:`ClassificationTask`.

:class:`ClassificationTask` plugs image classification into :mod:`litvit.engine`: LIT models from
:func:`litvit.create_model`, image folders or the embedded digits (:mod:`litvit.data`), timm's
transforms, RandAugment, random erasing, mixup / cutmix, label smoothing and repeated augmentation,
evaluation by top-1 / top-5 / loss. :func:`validate_checkpoint` evaluates a litvit or official
checkpoint. The commands built on them (``litvit train | validate | predict | demo``) are in
:mod:`litvit.cli.classification`.

Examples::

    >>> from litvit.tasks.classification import ClassificationConfig, ClassificationTask
    >>> task = ClassificationTask(ClassificationConfig(img_size=32, model_kwargs=dict(
    ...     embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))))
    >>> task.setup()["num_classes"]                  # the data first: the embedded digits have 10
    10
    >>> task.build_model().head
    Linear(in_features=64, out_features=10, bias=True)
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import data as D
from ..data.sources import data_source
from .. import engine
from ..checkpoint import read_checkpoint
from ..engine import DistInfo, Task, TrainConfig, print_main
from ..errors import CheckpointMismatchError
from ..metrics import accuracy_counts
from ..models import MODEL_NAMES, create_model, load_weights
from ..models.convert import classifier_classes
from ..models.factory import models_fitting
from ..utils import moved_names, plain, warn_grid_change
from .records import RECORD, record_of, task_from_checkpoint

__all__ = ["ClassificationConfig", "ClassificationTask", "task_for_checkpoint", "validate_checkpoint",
           "accuracy_counts"]


@dataclass
class ClassificationConfig:
    """What the classification task needs besides the engine's :class:`~litvit.engine.TrainConfig`.

    Attributes:
        model (str): a registered LIT model name.
        data (str): ``"digits"`` (embedded), a folder with ``train/`` and ``val/``, or WebDataset tar
            shards (a brace pattern ``shards/train-{000000..000009}.tar``; :mod:`litvit.data.shards`):
            training reads them and validates on the ``val`` shards their ``_info.json`` lists;
            evaluation reads the shards named.
        img_size (int): training resolution (the model's position tables are learned for it).
        model_kwargs (dict): constructor overrides (``embed_dims``, ``depths``, ``num_heads``,
            ``mlp_ratios``, ``drop_path_rate``, ...).
        init_checkpoint (str, optional): weights to start from (an official release or a litvit
            checkpoint; a classifier of another size is re-initialised).
        pretrained (bool): start from the official release (downloaded by timm).
        eval_img_size (int, optional): evaluation resolution; ``img_size`` when None.
        eval_split (str): the folder evaluated (``val``).
        classes (List[str], optional): a fixed class list (from a checkpoint); otherwise the training set's.
        bad_images (str): ``"fail"`` or ``"skip"`` for images that cannot be decoded.
        seed (int): seeds the repeated-augmentation order.
        drop_path_off_epochs (int): train the first epochs without drop path (the authors' ablation runs).
        sched_on (str): cosine schedule updated per ``"epoch"`` (DeiT's trainer) or per ``"step"`` (Swin's).
        warmup_prefix (bool): the cosine starts after the warm-up (True) or spans the whole run with the
            warm-up overwriting its start (False, both official trainers).
        aa ... crop_pct: augmentation and evaluation transform, see :data:`litvit.recipes.BASE`.
        recipe (str, optional): the name of the recipe these settings came from (``litvit train``
            records it; a resume under another recipe names that change first).
    """
    model: str = field(default="lit_ti", metadata=RECORD)
    data: str = field(default=D.DIGITS, metadata=RECORD)
    img_size: int = field(default=224, metadata=RECORD)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Optional[str] = None
    pretrained: bool = False
    eval_img_size: Optional[int] = None
    eval_split: str = "val"
    classes: Optional[List[str]] = None
    bad_images: str = "fail"
    seed: int = 0
    drop_path_off_epochs: int = 0
    sched_on: str = "step"
    warmup_prefix: bool = True
    aa: Optional[str] = None
    scale: Tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.0
    repeated_aug: int = 0
    interpolation: str = field(default="bicubic", metadata=RECORD)
    crop_pct: float = field(default=0.875, metadata=RECORD)
    mean: Tuple[float, float, float] = field(default=(0.485, 0.456, 0.406), metadata=RECORD)
    std: Tuple[float, float, float] = field(default=(0.229, 0.224, 0.225), metadata=RECORD)
    recipe: Optional[str] = None

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


class _SeededRepeatAugSampler(Sampler):
    """timm's RepeatAugSampler (each image ``num_repeats`` times per epoch, the copies on different
    ranks) with the run's seed folded into its per-epoch shuffle."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, num_repeats: int, seed: int):
        from timm.data.distributed_sampler import RepeatAugSampler
        self.inner = RepeatAugSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                      num_repeats=num_repeats)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


class ClassificationTask(Task):
    """Image classification on the shared engine; see :class:`ClassificationConfig`."""

    name = "classification"
    curve_metrics = ("top1", "top5")
    percent_metrics = ("score", "top1", "top5")

    def __init__(self, cfg: ClassificationConfig):
        if cfg.bad_images not in D.BAD_IMAGE_MODES:
            raise ValueError(f"bad_images={cfg.bad_images!r} is not one of {D.BAD_IMAGE_MODES}")
        if cfg.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        self.cfg = cfg
        self._train: Optional[Dataset] = None
        self._val: Optional[Dataset] = None
        self.classes = list(cfg.classes) if cfg.classes is not None else None
        self.mixup_fn = None
        if cfg.mixup_active:
            from timm.data import Mixup
            self.mixup_fn = Mixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                mode="batch", label_smoothing=cfg.smoothing, num_classes=1)  # num_classes set in build_datasets
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        if self.mixup_fn is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    # --- data -----------------------------------------------------------------------------------
    def _transform(self, training: bool):
        c = self.cfg
        if training:
            return D.build_transform(True, c.img_size, auto_augment=c.aa, re_prob=c.reprob, re_mode=c.remode,
                                     re_count=c.recount, color_jitter=c.color_jitter, hflip=c.hflip, scale=c.scale,
                                     interpolation=c.interpolation, mean=c.mean, std=c.std)
        return D.build_transform(False, c.eval_img_size or c.img_size, interpolation=c.interpolation,
                                 crop_pct=c.crop_pct, mean=c.mean, std=c.std)

    def eval_dataset(self, split: Optional[str] = None) -> Dataset:
        """The evaluation split with the evaluation transform (the class list of the checkpoint or
        training set), from the data source ``data`` names (:func:`litvit.data.sources.data_source`)."""
        c = self.cfg
        ds = data_source(c.data).evaluation(c.data, split or c.eval_split, self._transform(False), self.classes,
                                            c.bad_images)
        if self.classes is None:
            self.classes = list(ds.classes)
        return ds

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        if self._train is None:
            c = self.cfg
            source = data_source(c.data)
            if source.streams and c.repeated_aug > 0:
                raise ValueError(f"repeated augmentation (--repeated-aug) needs an image folder: a stream of "
                                 f"{source.name} reads each image once per epoch; use --repeated-aug 0")
            self._train = source.train(c.data, self._transform(True), self.classes, c.bad_images)
            if self.classes is None:
                self.classes = list(self._train.classes)
            self._val = source.paired_val(c.data, c.eval_split, self._transform(False), self.classes, c.bad_images)
            if self.mixup_fn is not None:
                self.mixup_fn.num_classes = len(self.classes)
        return self._train, self._val

    def setup(self) -> Dict[str, Any]:
        """The datasets (the training split only when training), and from them the class list."""
        self.build_datasets()
        return dict(num_classes=len(self.classes), classes=list(self.classes))

    def num_classes(self) -> int:
        """From the class list of the configuration or checkpoint, else from the data (:meth:`setup`,
        which :func:`litvit.engine.fit` runs before it builds the model)."""
        if self.classes is None:
            self.setup()
        return len(self.classes)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """timm's cosine with linear warm-up, as the official trainers: per epoch (DeiT) or per step
        (Swin), toward ``cfg.min_lr`` for every group from the group's own lr."""
        from timm.scheduler import CosineLRScheduler
        c = self.cfg
        if c.sched_on not in ("epoch", "step"):
            raise ValueError(f"sched_on must be 'epoch' or 'step', got {c.sched_on!r}")
        unit = 1 if c.sched_on == "epoch" else steps_per_epoch
        total = cfg.epochs * unit
        warmup = int(round(cfg.warmup_epochs * unit))
        inner = CosineLRScheduler(
            optimizer, t_initial=max(1, total - warmup if c.warmup_prefix else total), lr_min=cfg.min_lr,
            warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, warmup_prefix=c.warmup_prefix,
            t_in_epochs=c.sched_on == "epoch")
        return _PerEpoch(inner, steps_per_epoch) if c.sched_on == "epoch" else inner

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Drop path off for the first ``drop_path_off_epochs`` epochs, then the model's rates (the
        authors' ``reset_drop_path``)."""
        if not self.cfg.drop_path_off_epochs:
            return
        from timm.layers import DropPath
        for m in model.modules():
            if isinstance(m, DropPath):
                if not hasattr(m, "scheduled_drop_prob"):
                    m.scheduled_drop_prob = m.drop_prob
                m.drop_prob = 0.0 if epoch < self.cfg.drop_path_off_epochs else m.scheduled_drop_prob

    def train_sampler(self, dataset: Dataset, dist: DistInfo) -> Optional[Sampler]:
        if self.cfg.repeated_aug > 0:
            return _SeededRepeatAugSampler(dataset, dist.world_size, dist.rank, self.cfg.repeated_aug, self.cfg.seed)
        return None

    # --- model ----------------------------------------------------------------------------------
    def model_kwargs(self) -> Dict[str, Any]:
        kw = dict(self.cfg.model_kwargs)
        kw.update(num_classes=self.num_classes(), img_size=self.cfg.img_size)
        return kw

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model, pretrained=self.cfg.pretrained, **self.model_kwargs())
        if self.cfg.init_checkpoint:
            load_weights(model, self.cfg.init_checkpoint)
        return model

    def load_weights(self, model: nn.Module, path: str, use_ema: bool = False) -> None:
        """A litvit checkpoint or an official release; the classifier must fit the class list."""
        if use_ema:
            ckpt = read_checkpoint(path)
            if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model_ema"), dict)):
                raise ValueError(f"{path} holds no EMA weights (train with --ema-decay to have them)")
        load_weights(model, path, use_ema=use_ema, classifier_mismatch="raise")

    def run_config(self) -> dict:
        """Model, resolution, augmentation and evaluation settings (compared when a run is resumed)."""
        skip = ("data", "classes", "bad_images", "init_checkpoint", "pretrained", "eval_split", "seed")
        return {k: plain(v) for k, v in dataclasses.asdict(self.cfg).items()
                if k not in skip and not (k == "recipe" and v is None)}

    def checkpoint_extra(self) -> dict:
        """The config's ``record`` fields, the constructor arguments (``model_kwargs`` with
        ``num_classes`` and ``img_size``) and the class list."""
        return dict(record_of(self.cfg), model_kwargs=plain(self.model_kwargs()), classes=list(self.classes or []))

    @classmethod
    def from_checkpoint(cls, path: str, **overrides) -> "ClassificationTask":
        """An evaluation task rebuilt from a checkpoint (for validate and predict):
        :func:`~litvit.tasks.records.task_from_checkpoint` with ``task="classification"``;
        ``overrides`` are :meth:`from_record`'s keywords."""
        return task_from_checkpoint(path, task=cls.name, **overrides)

    @classmethod
    def from_record(cls, record: Dict[str, Any], path: str, ckpt: Any = None, model: Optional[str] = None,
                    data: Optional[str] = None, split: str = "val", img_size: Optional[int] = None,
                    crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                    bad_images: str = "fail") -> "ClassificationTask":
        """An evaluation task that rebuilds a checkpoint's model (:func:`task_for_checkpoint`, reached
        through :func:`~litvit.tasks.records.task_from_checkpoint`). ``record``: the checkpoint's
        model record ({} for an official release); ``ckpt``: the checkpoint as read. The task's
        ``checkpoint_record`` is the record ({} for an official release), ``checkpoint_classes``
        the classifier's size."""
        if ckpt is None:
            ckpt = read_checkpoint(path)
        extra = dict(record) if record.get("model") else {}
        if extra:
            if model and model != extra["model"]:
                raise CheckpointMismatchError(f"{path} holds a {extra['model']} model, not {model} (the "
                                              f"checkpoint does not fit {model})")
            kwargs = dict(extra.get("model_kwargs", {}))
            train_size = kwargs.pop("img_size", 224)
            kwargs.pop("num_classes", None)
            cfg = ClassificationConfig(
                model=extra["model"], data=data or extra.get("data") or D.DIGITS, img_size=train_size,
                model_kwargs=kwargs, classes=extra.get("classes") or None, eval_img_size=img_size or train_size,
                crop_pct=crop_pct if crop_pct is not None else extra.get("crop_pct", 0.875),
                interpolation=interpolation or extra.get("interpolation", "bicubic"),
                mean=tuple(extra.get("mean", (0.485, 0.456, 0.406))), std=tuple(extra.get("std", (0.229, 0.224, 0.225))),
                bad_images=bad_images, eval_split=split)
        else:
            if model is None:
                fitting = models_fitting(ckpt)
                if len(fitting) != 1:
                    raise ValueError(
                        f"{path} records no model (an official release or a bare state dict does not record its "
                        f"model) and its weights "
                        f"fit {' and '.join(fitting) if fitting else 'no registered model at its default widths'}: "
                        f"name it with --model (one of {', '.join(MODEL_NAMES)})")
                model = fitting[0]
            cfg = ClassificationConfig(
                model=model, data=data or D.DIGITS, img_size=224, eval_img_size=img_size or 224,
                crop_pct=crop_pct if crop_pct is not None else 0.875, interpolation=interpolation or "bicubic",
                bad_images=bad_images, eval_split=split)
        task = _EvalTask(cfg)
        task.checkpoint_classes = classifier_classes(ckpt)
        task.checkpoint_record = extra
        return task

    # --- steps ----------------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Dict[str, float]]:
        images, targets = batch
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        logits = model(images)
        return self.criterion(logits.float(), targets), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, dist: DistInfo) -> Dict[str, float]:
        model.eval()
        loss_sum, top1, top5, n = 0.0, 0, 0, 0
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            c1, c5 = accuracy_counts(logits, targets, (1, 5))
            top1, top5, n = top1 + c1, top5 + c5, n + len(targets)
        loss_sum, top1, top5, n = dist.reduce_sum([loss_sum, top1, top5, n])
        n = max(n, 1)
        acc1 = 100.0 * top1 / n
        return dict(score=acc1, top1=acc1, top5=100.0 * top5 / n, loss=loss_sum / n, images=n)


class _PerEpoch:
    """A timm scheduler with ``t_in_epochs`` stepped once per epoch from the engine's per-step updates:
    the steps of epoch e train at the schedule's value for e."""

    def __init__(self, scheduler, steps_per_epoch: int):
        self.scheduler = scheduler
        self.steps_per_epoch = steps_per_epoch

    def step_update(self, num_updates: int) -> None:
        self.scheduler.step(num_updates // self.steps_per_epoch)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class _EvalTask(ClassificationTask):
    """Evaluation only: no training set is scanned. ``checkpoint_classes``: the classifier size of
    the checkpoint evaluated (None when it has no state dict)."""

    checkpoint_classes: Optional[int] = None
    checkpoint_record: Dict[str, Any] = {}

    def build_datasets(self) -> Tuple[Optional[Dataset], Optional[Dataset]]:
        return None, self.eval_dataset()


def task_for_checkpoint(
        checkpoint: str,
        model: Optional[str] = None,
        data: Optional[str] = None,
        split: str = "val",
        img_size: Optional[int] = None,
        crop_pct: Optional[float] = None,
        interpolation: Optional[str] = None,
        bad_images: str = "fail",
) -> Tuple[ClassificationTask, dict]:
    """An evaluation task that rebuilds a checkpoint's model. A litvit checkpoint (or a safetensors
    file from ``litvit export``) carries its model, classes, data and transform; an official release
    records nothing: its model is ``model``, else the one registered model its weights fit at the
    default widths (:func:`litvit.models.factory.models_fitting`), and its classes come from the data.

    Returns:
        (task, the checkpoint's ``extra`` dict or {} for an official release).

    Raises:
        ValueError: a record of another model than ``model``; no ``model`` for weights that fit
            no registered model (or several).
    """
    task = task_from_checkpoint(checkpoint, task="classification", model=model, data=data, split=split,
                                img_size=img_size, crop_pct=crop_pct, interpolation=interpolation,
                                bad_images=bad_images)
    return task, task.checkpoint_record


def validate_checkpoint(checkpoint: str, batch_size: int = 128, workers: int = 0, amp: str = "none",
                        device: str = "auto", use_ema: bool = False, quiet: bool = False, threads=None,
                        **task_kwargs) -> Dict[str, float]:
    """``litvit validate`` as a function: top-1 / top-5 (percent), loss, images; DDP-aware under torchrun.

    ``task_kwargs`` go to :func:`task_for_checkpoint` (``model``, ``data``, ``split``, ``img_size``,
    ``crop_pct``, ``interpolation``, ``bad_images``).
    """
    task, extra = task_for_checkpoint(checkpoint, **task_kwargs)
    tc = TrainConfig(batch_size=batch_size, workers=workers, amp=amp, device=device, threads=threads, progress=not quiet)
    tc.check()
    c = task.cfg
    if not quiet:
        print_main(f"validate {checkpoint}{' (EMA weights)' if use_ema else ''}: {c.model} "
               f"{'litvit checkpoint' if extra else 'official layout'} | data {c.data}/{c.eval_split} | "
               f"{c.eval_img_size}px, crop {c.crop_pct}, {c.interpolation}")
        warn_grid_change("validate", c.img_size, c.eval_img_size)
    task.eval_dataset()  # fixes the class list before the model is built
    n = task.checkpoint_classes
    if n and n != len(task.classes):  # said before a model is built; an official release has no class list
        raise CheckpointMismatchError(
            f"{checkpoint}: its classifier has {n} classes but {c.data}"
            f"{'' if c.data == D.DIGITS else '/' + c.eval_split} has {len(task.classes)}; "
            f"validate it on data with the classes it was trained on")
    return engine.evaluate(task, tc, checkpoint, use_ema=use_ema)


# the command-line functions that lived here, now in litvit.cli.classification: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.classification", (
    'add_parsers', 'cmd_train', 'cmd_validate', 'cmd_predict', 'cmd_demo', 'resolved_config', 'run_training',
    'print_config', 'aa_arg', 'INTERPOLATIONS'))
