"""Semantic segmentation on ADE20K-format data: :class:`SegmentationTask`.

Semantic FPN with a LIT backbone (:mod:`litvit.models.semantic_fpn`: the authors' model, the class
their releases load into) for the shared engine (:func:`litvit.engine.fit`,
:func:`litvit.engine.evaluate`): mmsegmentation's ADE20K pipeline (random rescale, ``cat_max_ratio``
crops, flips, photometric distortion), mmseg 0.13's loss (``forward_train``), poly learning-rate
decay over a length in iterations (``TrainConfig.iters``), the authors' whole-image inference
(the model's own test pipeline on the image's 8-bit pixels) into a confusion matrix summed over
ranks; "score" is the mIoU (%). A litvit checkpoint and one of the authors' releases
(:class:`ReleaseSegmentationTask`) are evaluated and run alike; ``init_checkpoint`` starts a run
from either (:func:`~litvit.models.official_dense.finetune.start_from_checkpoint`). :func:`colorize` turns
class maps into colours. The command line built on them, ``litvit segment``, is
:mod:`litvit.cli.segmentation`.

Examples::

    >>> task = SegmentationTask("lit_ti", data="ADEChallengeData2016", iters=80000)   # doctest: +SKIP
    >>> model = task.build_model()           # 150 classes: given, not read from the data   # doctest: +SKIP
"""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import read_training_checkpoint
from ..data.ade20k import SegmentationDataset, SegTrainTransform, segmentation_collate
from ..data.io import palette
from ..engine import DistInfo, Task, TrainConfig, is_main_process, param_groups, progress
from ..errors import CheckpointMismatchError
from ..metrics import confusion_matrix, segmentation_metrics
from ..models.official_dense import DenseRelease, segmentation_loss
from ..models.official_dense.finetune import (adopt_task_settings, attention_heads, legacy_layout,
                                              model_from_state_dict, start_from_checkpoint)
from ..models.semantic_fpn import SEGMENTATION_DEFAULTS, convert_head_sync_batchnorm, resize_argmax, semantic_fpn
from ..utils import moved_names
from .records import (RECORD, RUN, RUN_RECORD, config_argument, config_from_record, delegate_config_fields,
                      record_of, run_settings, task_from_checkpoint)

__all__ = ["SegmentationConfig", "SegmentationTask", "ReleaseSegmentationTask", "ImagePixels", "colorize",
           "release_reduce_zero_label"]


@dataclass
class SegmentationConfig:
    """What the segmentation task needs besides the engine's :class:`~litvit.engine.TrainConfig`; the
    fields marked ``run`` define a run (compared on resume), those marked ``record`` are the
    checkpoint's record (:mod:`litvit.tasks.records`).

    Attributes:
        backbone (str): a LIT model name.
        data (str, optional): dataset root in ADE20K layout (``images/<split>``, ``annotations/<split>``).
        num_classes (int): K (150 for ADE20K).
        train_split, val_split (str): sub-folder names.
        reduce_zero_label (bool): ADE20K's convention (label 0 ignored, v -> v - 1).
        pretrained (str, optional): ImageNet checkpoint for the backbone.
        iters (int): training length in optimizer steps, as the run records it; 0 (rebuilt from a
            checkpoint for evaluation) reads no training data. The schedule's length is the run
            plan's (``TrainConfig.iters``), not this.
        crop_size (int), scale (Tuple[int, int]), ratio_range (Tuple[float, float]): augmentation.
        frozen_stages (int), norm_eval (bool): backbone training options.
        backbone_kwargs (dict): ``litvit.create_model`` overrides.
        fpn_channels (int), head_channels (int): widths (256, 128).
        class_names (List[str], optional): names for logs and legends (``class_i`` when None).
        cat_max_ratio (float): crops are re-drawn while one class covers this share (mmseg's RandomCrop).
        no_decay_keys (Tuple[str, ...]): parameters whose names contain one of these get no weight
            decay; all others are decayed (none in the authors' configs).
        sync_bn (bool): under DDP, the head's BatchNorms become SyncBatchNorms (the authors' SyncBN).
        progress (bool): a progress bar while evaluating (on the first process).
        palette (List[List[int]], optional): an RGB colour per class.
        init_checkpoint (str, optional): start from this release (file or name) or litvit
            segmentation checkpoint (:func:`~litvit.models.official_dense.start_from_checkpoint`: a new
            classifier when its classes differ, said in one line); recorded: a checkpoint of a run so
            started is rebuilt from its own weights.
        backbone_heads (List[int], optional): the backbone's heads, set when the model is built
            (recorded: LIT-Ti's weights do not tell them).
    """
    backbone: str = field(default="lit_ti", metadata=RUN_RECORD)
    data: Optional[str] = None
    num_classes: int = field(default=150, metadata=RUN_RECORD)
    train_split: str = "training"
    val_split: str = "validation"
    reduce_zero_label: bool = field(default=True, metadata=RUN_RECORD)
    pretrained: Optional[str] = None
    iters: int = field(default=SEGMENTATION_DEFAULTS["iters"], metadata=RUN)
    crop_size: int = field(default=SEGMENTATION_DEFAULTS["crop_size"], metadata=RUN_RECORD)
    scale: Tuple[int, int] = field(default=tuple(SEGMENTATION_DEFAULTS["scale"]), metadata=RUN_RECORD)
    ratio_range: Tuple[float, float] = field(default=tuple(SEGMENTATION_DEFAULTS["ratio_range"]), metadata=RUN)
    frozen_stages: int = field(default=-1, metadata=RUN)
    norm_eval: bool = field(default=False, metadata=RUN)
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict, metadata=dict(run=True, record="optional"))
    fpn_channels: int = field(default=256, metadata=RUN_RECORD)
    head_channels: int = field(default=128, metadata=RUN_RECORD)
    class_names: Optional[List[str]] = field(default=None, metadata=RECORD)
    cat_max_ratio: float = SEGMENTATION_DEFAULTS["cat_max_ratio"]
    no_decay_keys: Tuple[str, ...] = ()
    sync_bn: bool = True
    progress: bool = True
    palette: Optional[List[List[int]]] = field(default=None, metadata=dict(record="optional"))
    init_checkpoint: Optional[str] = field(default=None, metadata=dict(run="if set", record="optional"))
    backbone_heads: Optional[List[int]] = field(default=None, metadata=dict(record="optional"))

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        self.reduce_zero_label = bool(self.reduce_zero_label)
        self.iters = int(self.iters)
        self.crop_size = int(self.crop_size)
        self.scale = tuple(int(s) for s in self.scale)
        self.ratio_range = tuple(float(r) for r in self.ratio_range)
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.fpn_channels = int(self.fpn_channels)
        self.head_channels = int(self.head_channels)
        self.cat_max_ratio = float(self.cat_max_ratio)
        self.no_decay_keys = tuple(self.no_decay_keys)
        self.sync_bn = bool(self.sync_bn)
        self.progress = bool(self.progress)
        self.class_names = list(self.class_names) if self.class_names is not None else \
            [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self.palette = [list(c) for c in self.palette] if self.palette is not None else None
        if self.palette is not None and len(self.palette) != self.num_classes:
            raise ValueError(f"a palette of {len(self.palette)} colours for {self.num_classes} classes")


@delegate_config_fields(SegmentationConfig)
class SegmentationTask(Task):
    """ADE20K-format semantic segmentation with Semantic FPN, for :func:`litvit.engine.fit`.

    Built from a :class:`SegmentationConfig` (``SegmentationTask(cfg)``) or from its fields
    (``SegmentationTask("lit_ti", data=..., iters=...)``); each field reads as an attribute of the
    task (``task.crop_size`` is ``task.cfg.crop_size``).
    """
    name = "segmentation"
    curve_metrics = ("score", "aAcc")
    percent_metrics = ("score", "mIoU", "mAcc", "aAcc")

    def __init__(self, *args, **kwargs):
        self.cfg = cfg = config_argument(SegmentationConfig, "SegmentationTask", args, kwargs)
        self.init_message: Optional[str] = None
        self.rebuild_from: Optional[str] = None  # set by from_record: the model comes from its weights
        self._datasets: Optional[Tuple[Any, Optional[SegmentationDataset]]] = None

    def setup(self) -> Dict[str, Any]:
        """The datasets; the classes are given (``num_classes``, ``class_names``): label PNGs hold indices."""
        self.build_datasets()
        return dict(num_classes=self.num_classes, class_names=list(self.class_names))

    def build_model(self) -> nn.Module:
        """The authors' Semantic FPN (:func:`~litvit.models.semantic_fpn.semantic_fpn`), started from
        ``init_checkpoint`` when given (its one line printed on the first process; the checkpoint's
        class names and palette adopted when the classes are the same and none were given); inside a
        process group of several processes (``fit`` under torchrun) the head's BatchNorms are
        converted to SyncBatchNorms, the backbone's stay per-process."""
        if self.rebuild_from is not None:  # a checkpoint's model: its architecture is in its weights
            model = model_from_state_dict(read_training_checkpoint(self.rebuild_from)["model"], self.class_names,
                                          self.palette, num_heads=self.backbone_heads)
        elif self.init_checkpoint and torch.empty(0).device.type != "meta":  # not --print-config's meta build
            drop = {k: v for k, v in self.backbone_kwargs.items() if k == "drop_path_rate"}
            model, self.init_message = start_from_checkpoint(self.init_checkpoint, "semantic_fpn", self.num_classes,
                                                             drop)
            self.backbone_heads = attention_heads(model)
            if all(c == f"class_{i}" for i, c in enumerate(self.class_names)) and \
                    model.num_classes == len(model.classes) and not model.classes[0].startswith("class_"):
                self.class_names = list(model.classes)  # the same classes: the checkpoint's names and palette
                self.palette = self.palette or model.palette
            if is_main_process():
                print(self.init_message)
        else:
            model = semantic_fpn(self.backbone, num_classes=self.num_classes, pretrained_backbone=self.pretrained,
                                 frozen_stages=self.frozen_stages, norm_eval=self.norm_eval,
                                 channels=self.head_channels, backbone_kwargs=self.backbone_kwargs,
                                 fpn_channels=self.fpn_channels, class_names=self.class_names, palette=self.palette,
                                 test_scale=self.scale)
            self.backbone_heads = attention_heads(model)
        if self.rebuild_from is not None or self.init_checkpoint:
            if next(model.parameters()).device.type != "meta":
                adopt_task_settings(model, self.class_names, self.scale, self.frozen_stages, self.norm_eval,
                                    self.palette)
        import torch.distributed as dist
        if self.sync_bn and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            convert_head_sync_batchnorm(model)
        return model

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> List[dict]:
        """mmsegmentation's default: every parameter decayed (but names containing ``no_decay_keys``),
        the offset predictors at ``cfg.offset_lr_mult`` (1.0 in the authors' configs)."""
        return param_groups(model, cfg.weight_decay, offset_lr_mult=cfg.offset_lr_mult, no_decay_keys=self.no_decay_keys)

    def _dataset(self, split: str, transform) -> SegmentationDataset:
        if self.data is None:
            raise ValueError("no dataset: give --data (a folder in ADE20K layout)")
        return SegmentationDataset(self.data, split, self.num_classes, transform, self.reduce_zero_label)

    def build_datasets(self):
        """(train, val) from ``data``; the training set only when ``iters > 0`` (not for eval)."""
        if self._datasets is None:
            self._datasets = self._build_datasets()
        return self._datasets

    def _build_datasets(self):
        if self.data is None:
            raise ValueError("no dataset: give --data (a folder in ADE20K layout)")

        def present(split: str) -> bool:
            return os.path.isdir(os.path.join(self.data, "images", split))
        train = val = None
        if self.iters > 0 and present(self.train_split):
            train = self._dataset(self.train_split, SegTrainTransform(
                crop_size=self.crop_size, scale=self.scale, ratio_range=self.ratio_range,
                cat_max_ratio=self.cat_max_ratio))
        if present(self.val_split):
            val = self._dataset(self.val_split, ImagePixels())  # the model's own test pipeline resizes them
        if train is None and val is None:
            raise FileNotFoundError(f"no images/{self.train_split} or images/{self.val_split} folder in {self.data}")
        return train if train is not None else [], val

    def collate_fn(self):
        return segmentation_collate

    def build_scheduler(self, optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """Poly decay (power 0.9) from the base lr to ``cfg.min_lr`` over the run's length
        (:meth:`~litvit.engine.Task.schedule_steps`: ``cfg.iters``, the plan's total steps)."""
        from timm.scheduler import PolyLRScheduler
        steps = self.schedule_steps(cfg, steps_per_epoch)
        return PolyLRScheduler(optimizer, t_initial=max(1, steps), power=SEGMENTATION_DEFAULTS["poly_power"],
                               lr_min=cfg.min_lr, t_in_epochs=False)

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Dict[str, float]]:
        """mmseg 0.13's loss (:meth:`~litvit.models.official_dense.SemanticFPN.forward_train`): the
        stride-4 logits resized to the labels, cross-entropy averaged over every pixel (ignored ones
        count 0); ``acc_seg`` (%) for the logs. The forward goes through ``model`` (DDP's wrapper)."""
        images, labels = batch
        if isinstance(images, list):
            raise ValueError("training crops must share one size (SegTrainTransform pads them to crop_size)")
        core = getattr(model, "module", model)
        out = segmentation_loss(model(images), labels, ignore_index=core.ignore_index, loss_weight=core.loss_weight,
                                align_corners=core.align_corners)
        return out["loss_seg"], {"acc_seg": float(out["acc_seg"])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, dist: DistInfo) -> Dict[str, float]:
        """mIoU / mAcc / aAcc over the whole validation set (confusion matrices summed over ranks)."""
        model.eval()
        cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        for images, labels in progress(loader, dist.is_main and self.progress, "evaluating"):
            if isinstance(images, Tensor):
                images, labels = list(images), list(labels)
            for image, label in zip(images, labels):
                pred = self.predict_labels(model, image.to(device), label.shape[-2:], label_dtype)
                cm += confusion_matrix(pred[0].cpu(), label.cpu(), self.num_classes).double()
        cm = dist.reduce_sum(cm)
        metrics = segmentation_metrics(cm)
        metrics["score"] = metrics["mIoU"]
        self.last_confusion = cm
        return metrics

    @torch.no_grad()
    def predict_labels(self, model: nn.Module, image: Tensor, size: Sequence[int], dtype: torch.dtype) -> Tensor:
        """The label map (Tensor[1, H, W]) of 8-bit pixels ``image`` (Tensor[H, W, 3] uint8) as the
        authors' ``inference_segmentor`` gives it: the model's test pipeline, whole-image logits,
        resized bilinearly to the network input and then to the image; the last resize runs a few
        classes at a time (:func:`~litvit.models.semantic_fpn.resize_argmax`: the labels of their
        softmax over full-size maps, memory bounded on large images)."""
        x, meta = model.preprocess(image.cpu().numpy())
        if tuple(meta["ori_shape"][:2]) != tuple(size):
            raise ValueError(f"image of {tuple(meta['ori_shape'][:2])} pixels, label of {tuple(size)}")
        if model.align_corners:
            return model.inference(x, meta).argmax(dim=1).to(dtype)
        return resize_argmax(model.encode_decode(x).float(), size, dtype=dtype)

    def load_weights(self, model: nn.Module, path: str, use_ema: bool = False) -> None:
        """A ``segment train`` checkpoint's weights, strictly; one of litvit's earlier definition is
        refused in one line (:func:`~litvit.models.official_dense.finetune.legacy_layout`)."""
        ckpt = read_training_checkpoint(path)
        state = ckpt.get("model_ema" if use_ema and ckpt.get("model_ema") is not None else "model")
        legacy = legacy_layout(state) if isinstance(state, dict) else None
        if legacy:
            raise CheckpointMismatchError(f"{path} was written by {legacy}")
        super().load_weights(model, path, use_ema=use_ema)

    def run_config(self) -> dict:
        return run_settings(self.cfg)

    def checkpoint_extra(self) -> dict:
        return record_of(self.cfg)

    @classmethod
    def from_record(cls, record: Dict[str, Any], path: str, ckpt: Any = None, **overrides) -> "SegmentationTask":
        """The task of a segmentation checkpoint's record, for evaluation (``iters`` 0)
        (:func:`~litvit.tasks.records.task_from_checkpoint` calls it); ``overrides`` that are not
        None win (``data``, ``val_split``, ``progress``)."""
        task = cls(config_from_record(SegmentationConfig, record, path, **{"iters": 0, **overrides}))
        if record.get("init_checkpoint"):  # its architecture came from that checkpoint's weights, as it is in these
            task.rebuild_from = str(path)
        return task

    @classmethod
    def from_release(cls, model: DenseRelease, **kwargs) -> "ReleaseSegmentationTask":
        """The task of one of the authors' Semantic FPN releases (:func:`litvit.load_dense`)."""
        return ReleaseSegmentationTask(model, **kwargs)

    def colours(self) -> np.ndarray:
        """The RGB colour of each class, uint8 [K, 3]: the palette (a release's ``meta['PALETTE']``,
        the one an init checkpoint brought), else :func:`~litvit.data.io.palette`'s."""
        if self.palette is None:
            return palette(self.num_classes)
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    @classmethod
    def from_checkpoint(cls, path: str, **overrides) -> "SegmentationTask":
        """A task rebuilt from a segmentation checkpoint's record (for eval and predict):
        :func:`~litvit.tasks.records.task_from_checkpoint` with ``task="segmentation"``."""
        return task_from_checkpoint(path, task=cls.name, **overrides)


class ImagePixels:
    """The evaluation transform: the image's 8-bit pixels (Tensor[H, W, 3] uint8), which the model's
    own test pipeline resizes and normalises (a release's and a litvit model's alike); the label
    left at full size (Tensor[H, W] int64)."""

    def __call__(self, img, label: np.ndarray) -> Tuple[Tensor, Tensor]:
        return torch.from_numpy(np.array(img, dtype=np.uint8)), torch.from_numpy(np.array(label, dtype=np.int64))


def release_reduce_zero_label(config: Dict[str, Any]) -> bool:
    """Whether a Semantic FPN release's labels follow ADE20K's convention (0 = ignore, v -> v - 1),
    as its config says: the test (or validation) set's ``reduce_zero_label``, else True for an
    ``ADE20KDataset`` (mmseg 0.13 sets it there), else the training pipeline's ``LoadAnnotations``;
    a release without a config is one of the authors' ADE20K models (True)."""
    data = config.get("data") or {}
    sets = [data.get(k) or {} for k in ("test", "val", "train")]
    for ds in sets[:2]:
        if "reduce_zero_label" in ds:
            return bool(ds["reduce_zero_label"])
    for ds in sets:
        if ds.get("type") == "ADE20KDataset":
            return True
        for step in ds.get("pipeline") or []:
            if isinstance(step, dict) and step.get("type") == "LoadAnnotations" and "reduce_zero_label" in step:
                return bool(step["reduce_zero_label"])
    return True


class ReleaseSegmentationTask(SegmentationTask):
    """One of the authors' Semantic FPN releases (loaded by :func:`litvit.load_dense`) for
    :func:`litvit.engine.evaluate` and ``segment predict``: the model as loaded (a litvit model is
    the same class, run the same way), its classes, palette and the label convention its config
    names (:func:`release_reduce_zero_label`).

    Args:
        model (DenseRelease): a Semantic FPN release, weights loaded.
        data (str, optional): an ADE20K-format dataset root.
        val_split (str): its sub-folder to evaluate.
        progress (bool): a progress bar while evaluating.
    """

    def __init__(
            self,
            model: DenseRelease,
            data: Optional[str] = None,
            val_split: str = "validation",
            progress: bool = True,
    ):
        if model.kind != "semantic_fpn":
            raise ValueError(f"a {model.kind} release is not a segmentation model")
        super().__init__(data=data, num_classes=len(model.classes), val_split=val_split,
                         reduce_zero_label=release_reduce_zero_label(model.config), iters=0,
                         class_names=model.classes, progress=progress, palette=model.palette)
        self.release = model

    def build_model(self) -> nn.Module:
        return self.release

    def load_weights(self, model: nn.Module, path: str, use_ema: bool = False) -> None:
        """The release's weights are in the model already."""


def colorize(pred: np.ndarray, num_classes: int, colours: Optional[np.ndarray] = None) -> np.ndarray:
    """Class map ``[H, W]`` -> colours ``[H, W, 3]`` uint8 (ignored pixels black); ``colours``
    ([K, 3] uint8) default to :func:`~litvit.data.io.palette`'s.

    A uint8 map is coloured through a PIL palette image: 3 bytes a pixel besides the map, where
    numpy's indexing would first copy the map into 8-byte indices.
    """
    colours = palette(num_classes) if colours is None else np.asarray(colours, dtype=np.uint8)[:num_classes]
    if num_classes < 256:
        colours = np.concatenate([colours, np.zeros((256 - num_classes, 3), np.uint8)])
    if pred.dtype == np.uint8 and pred.ndim == 2 and len(colours) == 256:
        from PIL import Image
        img = Image.fromarray(pred)  # mode L; a palette makes it P
        img.putpalette(colours.tobytes())
        return np.asarray(img.convert("RGB"))
    return colours[pred.astype(np.int64).clip(0, len(colours) - 1)]


# the command-line functions that lived here, now in litvit.cli.segmentation: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.segmentation", ('add_parsers', 'resolved_config'))
