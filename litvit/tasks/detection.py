"""Object detection and instance segmentation on COCO-format data: :class:`DetectionTask`.

RetinaNet or Mask R-CNN with a LIT backbone (:mod:`litvit.models.detectors`) for the shared engine
(:func:`litvit.engine.fit`, :func:`litvit.engine.evaluate`): the authors' 1x schedule (step decay
after epochs 8 and 11, linear warm-up in iterations), multi-scale resizing, pycocotools box (and
mask) AP in %, "score" being the box AP. :func:`draw_detections` draws a model's output. The
command line built on them, ``litvit detect``, is :mod:`litvit.cli.detection`.

Examples::

    >>> task = DetectionTask("retinanet", "lit_ti", train_images="coco/train2017",
    ...                      train_ann="coco/annotations/instances_train2017.json")   # doctest: +SKIP
    >>> task.setup()["num_classes"]             # the categories of the annotation file   # doctest: +SKIP
    80
    >>> model = task.build_model()                                                         # doctest: +SKIP
"""
import contextlib
import dataclasses
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import read_training_checkpoint
from ..data.coco import CocoDetection, detection_collate, pad_extreme_aspect
from ..data.io import palette
from ..engine import DistInfo, Task, TrainConfig, is_main_process, param_groups, progress
from ..metrics import COCO_STATS, coco_evaluate, coco_results  # noqa: F401  (re-exported: their old place)
from ..metrics import COCO_CATEGORY_IDS, COCO_CLASSES, rle_encode
from ..models.official_dense import DenseRelease
from ..models.official_dense.finetune import (adopt_task_settings, attention_heads, model_from_state_dict,
                                              start_from_checkpoint)
from ..models.official_dense.heads import paste_mask_regions
from ..models.official_dense.preprocess import TestPipeline, preprocess
from ..models.detectors import DETECTION_DEFAULTS, DETECTORS, build_detector
from ..utils import moved_names
from .records import (RECORD, RUN, RUN_RECORD, config_argument, config_from_record, delegate_config_fields,
                      record_of, run_settings, task_from_checkpoint)

if TYPE_CHECKING:
    from PIL import Image

# The checkpoint record's mark of the detectors' definition: the authors' mmdet 2.11 modules
# (litvit.models.detectors); records without it were written by litvit's earlier torchvision-based detectors.
DEFINITION = "mmdet-2.11"

__all__ = ["DetectionConfig", "DetectionTask", "ReleaseDetectionTask", "coco_results", "coco_evaluate",
           "detection_records", "draw_detections", "float32_heads", "mask_regions"]


class _AutocastBody(nn.Module):
    """Runs a detector's backbone under autocast and hands float32 maps to the neck and heads."""

    def __init__(self, body: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.body, self.device_type, self.dtype = body, device_type, dtype

    def forward(self, x: Tensor) -> List[Tensor]:
        with torch.autocast(self.device_type, dtype=self.dtype):
            feats = self.body(x)
        return [f.float() for f in feats]


@contextlib.contextmanager
def float32_heads(model: nn.Module, device: torch.device):
    """Under an active autocast, keep it for the backbone only: the FPN, the heads, box decoding, NMS
    and mask pasting run in float32 (bf16 has 8 bits of mantissa, about 4 px at x = 1000, too
    coarse for AP)."""
    if not torch.is_autocast_enabled(device.type):
        yield
        return
    dtype = torch.get_autocast_dtype(device.type)
    body = model.backbone
    model.backbone = _AutocastBody(body, device.type, dtype)
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        model.backbone = body


@dataclass
class DetectionConfig:
    """What the detection task needs besides the engine's :class:`~litvit.engine.TrainConfig`; the
    fields marked ``run`` define a run (compared on resume), those marked ``record`` are the
    checkpoint's record (:mod:`litvit.tasks.records`).

    Attributes:
        arch (str): ``"retinanet"`` or ``"mask_rcnn"``.
        backbone (str): a LIT model name.
        train_images, train_ann (str, optional): training images and COCO JSON.
        val_images, val_ann (str, optional): validation images and COCO JSON.
        num_classes (int, optional): K; read from the annotation file's categories when None.
        class_names, cat_ids (List, optional): category names and ids (from a checkpoint).
        pretrained (str, optional): ImageNet checkpoint for the backbone.
        min_size (List[int]), max_size (int): image resizing (multi-scale when several min sizes).
        frozen_stages (int), norm_eval (bool): backbone training options.
        lr_steps (List[int]): epochs after which the lr is multiplied by 0.1.
        warmup_iters (int), warmup_ratio (float): linear warm-up from ``lr x warmup_ratio``.
        backbone_kwargs (dict): ``litvit.create_model`` overrides (``drop_path_rate``, ...).
        fpn_channels (int): FPN/head width (256).
        no_decay_keys (Tuple[str, ...]): parameters whose names contain one of these get no weight
            decay; all others are decayed (mmdetection's ``paramwise_cfg``; none for LIT-Ti).
        progress (bool): a progress bar while evaluating (on the first process).
        init_checkpoint (str, optional): start from this release (file or name: ``retina_lit_ti``,
            ...) or litvit detection checkpoint
            (:func:`~litvit.models.official_dense.start_from_checkpoint`: weights by name, a new
            classifier when the classes differ, said in one line); recorded: a checkpoint of a
            run so started is rebuilt from its own weights.
        backbone_heads (List[int], optional): the backbone's heads, set when the model is built
            (recorded: LIT-Ti's weights do not tell them).
    """
    arch: str = field(default="retinanet", metadata=RUN_RECORD)
    backbone: str = field(default="lit_ti", metadata=RUN_RECORD)
    train_images: Optional[str] = None
    train_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    num_classes: Optional[int] = field(default=None, metadata=RECORD)
    class_names: Optional[List[str]] = field(default=None, metadata=RECORD)
    cat_ids: Optional[List[int]] = field(default=None, metadata=RECORD)
    pretrained: Optional[str] = None
    min_size: List[int] = field(default_factory=lambda: list(DETECTION_DEFAULTS["min_size"]), metadata=RUN_RECORD)
    max_size: int = field(default=DETECTION_DEFAULTS["max_size"], metadata=RUN_RECORD)
    frozen_stages: int = field(default=-1, metadata=RUN)
    norm_eval: bool = field(default=False, metadata=RUN)
    lr_steps: List[int] = field(default_factory=lambda: list(DETECTION_DEFAULTS["lr_steps"]), metadata=RUN)
    warmup_iters: int = field(default=DETECTION_DEFAULTS["warmup_iters"], metadata=RUN)
    warmup_ratio: float = field(default=DETECTION_DEFAULTS["warmup_ratio"], metadata=RUN)
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict, metadata=dict(run=True, record="optional"))
    fpn_channels: int = field(default=256, metadata=dict(run=True, record="optional"))
    no_decay_keys: Tuple[str, ...] = ()
    progress: bool = True
    init_checkpoint: Optional[str] = field(default=None, metadata=dict(run="if set", record="optional"))
    backbone_heads: Optional[List[int]] = field(default=None, metadata=dict(record="optional"))

    def __post_init__(self):
        if self.arch not in DETECTORS:
            raise ValueError(f"unknown detector {self.arch!r}; choose one of {', '.join(DETECTORS)}")
        sizes = self.min_size
        self.min_size = [int(s) for s in (sizes if isinstance(sizes, (list, tuple)) else [sizes])]
        self.max_size = int(self.max_size)
        self.lr_steps = [int(s) for s in self.lr_steps]
        self.warmup_iters = int(self.warmup_iters)
        self.warmup_ratio = float(self.warmup_ratio)
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.fpn_channels = int(self.fpn_channels)
        self.no_decay_keys = tuple(self.no_decay_keys)
        self.progress = bool(self.progress)
        self.class_names = list(self.class_names) if self.class_names is not None else None
        self.cat_ids = [int(c) for c in self.cat_ids] if self.cat_ids is not None else None
        if self.num_classes is None and self.cat_ids is not None:
            self.num_classes = len(self.cat_ids)
        self.num_classes = int(self.num_classes) if self.num_classes is not None else None


@delegate_config_fields(DetectionConfig)
class DetectionTask(Task):
    """COCO-format detection with RetinaNet or Mask R-CNN, for :func:`litvit.engine.fit`.

    Built from a :class:`DetectionConfig` (``DetectionTask(cfg)``) or from its fields
    (``DetectionTask("retinanet", "lit_ti", train_images=..., ...)``); each field reads as an
    attribute of the task (``task.min_size`` is ``task.cfg.min_size``).
    """
    name = "detection"
    curve_metrics = ("score", "bbox_AP50")
    percent_metrics = ("score",) + tuple(f"{t}_{n}" for t in ("bbox", "segm") for n in COCO_STATS)

    def __init__(self, *args, **kwargs):
        self.cfg = cfg = config_argument(DetectionConfig, "DetectionTask", args, kwargs)
        self.init_message: Optional[str] = None
        self.rebuild_from: Optional[str] = None  # set by from_record: the model comes from its weights
        self.find_unused_parameters = cfg.arch == "mask_rcnn"  # a batch without boxes leaves the mask head idle
        self._train_set: Optional[CocoDetection] = None
        self._val_set: Optional[CocoDetection] = None
        self.last_summary = ""
        if cfg.num_classes is None and cfg.train_ann is None and cfg.val_ann is None:
            raise ValueError("num_classes is unknown: give an annotation file or num_classes")
        if cfg.num_classes is not None:  # else read from the annotation file by setup()
            self._set_classes(cfg.num_classes, cfg.cat_ids, cfg.class_names)

    def _set_classes(self, num_classes: int, cat_ids: Optional[Sequence[int]], class_names: Optional[Sequence[str]]):
        self.num_classes = num_classes
        self.cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, num_classes + 1))
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in self.cat_ids]

    # --- data and model ---------------------------------------------------------------------------
    def setup(self) -> Dict[str, Any]:
        """Read the annotation files (the categories, unless given) and build the datasets."""
        if self.num_classes is None:
            first = "train" if self.train_ann is not None else "val"
            ds = self._dataset(getattr(self, f"{first}_images"), getattr(self, f"{first}_ann"), train=first == "train")
            setattr(self, f"_{first}_set", ds)
            self._set_classes(ds.num_classes, ds.cat_ids, ds.class_names)
        self.build_datasets()
        return dict(num_classes=self.num_classes, class_names=list(self.class_names), cat_ids=list(self.cat_ids))

    def build_model(self) -> nn.Module:
        """The detector; its classes come from :meth:`setup` (run here if it has not run) or were
        given; started from ``init_checkpoint`` when given (its one line printed on the first process)."""
        if self.num_classes is None:
            self.setup()
        if self.rebuild_from is not None:  # a checkpoint's model: its architecture is in its weights
            model = model_from_state_dict(read_training_checkpoint(self.rebuild_from)["model"], self.class_names,
                                          num_heads=self.backbone_heads)
        elif self.init_checkpoint and torch.empty(0).device.type != "meta":  # not --print-config's meta build
            drop = {k: v for k, v in self.backbone_kwargs.items() if k == "drop_path_rate"}
            model, self.init_message = start_from_checkpoint(self.init_checkpoint, self.arch, self.num_classes, drop)
            self.backbone_heads = attention_heads(model)
            if is_main_process():
                print(self.init_message)
        else:
            model = build_detector(
                self.arch, backbone=self.backbone, num_classes=self.num_classes, pretrained_backbone=self.pretrained,
                min_size=tuple(self.min_size), max_size=self.max_size, frozen_stages=self.frozen_stages,
                norm_eval=self.norm_eval, backbone_kwargs=self.backbone_kwargs, fpn_channels=self.fpn_channels,
                class_names=self.class_names)
            self.backbone_heads = attention_heads(model)
            return model
        return adopt_task_settings(model, self.class_names, (self.max_size, self.min_size[-1]), self.frozen_stages,
                                   self.norm_eval)

    def _dataset(self, images: Optional[str], ann: str, train: bool) -> CocoDetection:
        if images is None:
            raise ValueError(f"an image folder is needed with the annotation file {ann}")
        return CocoDetection(images, ann, train=train, with_masks=self.arch == "mask_rcnn")

    def _check_categories(self, ds: CocoDetection) -> None:
        if list(ds.cat_ids) != list(self.cat_ids):
            raise ValueError(f"{ds.ann_file} declares categories {ds.cat_ids[:10]}{'...' if ds.num_classes > 10 else ''} "
                             f"({ds.num_classes}), the model was built for {self.cat_ids[:10]}"
                             f"{'...' if len(self.cat_ids) > 10 else ''} ({self.num_classes})")

    def build_datasets(self):
        train, val = self._train_set, self._val_set
        if train is None and self.train_ann is not None:
            train = self._dataset(self.train_images, self.train_ann, train=True)
        if val is None and self.val_ann is not None:
            val = self._dataset(self.val_images, self.val_ann, train=False)
        for ds in (train, val):
            if ds is not None:
                self._check_categories(ds)
        if train is None and val is None:
            raise ValueError("no dataset: give --train-ann/--train-images and/or --val-ann/--val-images")
        self._train_set, self._val_set = train, val
        return train if train is not None else [], val

    def collate_fn(self):
        return detection_collate

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> List[dict]:
        """mmdetection's rules: everything decayed but names containing ``no_decay_keys``; the offset
        predictors at ``cfg.offset_lr_mult`` (1.0 in the authors' configs)."""
        return param_groups(model, cfg.weight_decay, offset_lr_mult=cfg.offset_lr_mult, no_decay_keys=self.no_decay_keys)

    def build_scheduler(self, optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """The 1x schedule: linear warm-up over ``warmup_iters`` from ``lr x warmup_ratio``, then lr
        x 0.1 after each epoch in ``lr_steps``."""
        from timm.scheduler import MultiStepLRScheduler
        base = optimizer.param_groups[0]["lr"]
        return MultiStepLRScheduler(
            optimizer, decay_t=[s * steps_per_epoch for s in self.lr_steps], decay_rate=DETECTION_DEFAULTS["lr_gamma"],
            warmup_t=self.warmup_iters, warmup_lr_init=base * self.warmup_ratio, warmup_prefix=False,
            t_in_epochs=False)

    # --- steps ------------------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Dict[str, float]]:
        """mmdet 2.11's ``forward_train`` on a batch of the train pipeline (:meth:`train_inputs`);
        the loss is the sum of the entries named ``loss*`` (mmdet's ``_parse_losses``)."""
        img, metas, boxes, labels, masks = self.train_inputs(model, *batch, device=device)
        if masks is None:
            losses = model.forward_train(img, metas, boxes, labels)
        else:
            losses = model.forward_train(img, metas, boxes, labels, masks)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        return loss, {k: float(v.detach()) for k, v in losses.items()}

    def train_inputs(self, model: nn.Module, images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]],
                     device: torch.device = torch.device("cpu")):
        """The authors' train pipeline after loading and flipping (:class:`CocoDetection` flips):
        per image a scale drawn from ``(max_size, s)`` for ``s`` in ``min_size`` (mmdet's
        ``multiscale_mode='value'``), the keep-ratio resize of the test pipeline (OpenCV's bilinear
        filter, the model's mean/std), padding to 32; boxes scaled by the resize and clipped to the
        resized image, labels 0..K-1, masks resized nearest; the batch padded to its largest image.

        Returns:
            (Tensor[B, 3, H, W], img_metas, gt_bboxes, gt_labels, gt_masks or None), on ``device``.
        """
        base = model.pipeline
        imgs, metas, boxes, labels, masks = [], [], [], [], []
        for image, target in zip(images, targets):
            image, target = pad_extreme_aspect(image, self.max_size, target)
            scale = (self.max_size, random.choice(self.min_size))  # mmdet's multiscale_mode='value'
            pipeline = dataclasses.replace(base, img_scale=scale, keep_ratio=True)
            x, meta = preprocess(_to_pixels(image), pipeline)
            h, w = meta["img_shape"][:2]
            b = target["boxes"].float() * torch.from_numpy(meta["scale_factor"])
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            imgs.append(x[0])
            metas.append(meta)
            boxes.append(b.to(device))
            labels.append((target["labels"] - 1).to(device))
            if "masks" in target:
                m = target["masks"]
                if m.shape[0]:
                    m = F.interpolate(m[:, None].float(), size=(h, w), mode="nearest")[:, 0].to(torch.uint8)
                else:
                    m = m.new_zeros(0, h, w)
                ph, pw = meta["pad_shape"][:2]
                masks.append(F.pad(m, (0, pw - w, 0, ph - h)).to(device))
        H = max(x.shape[-2] for x in imgs)
        W = max(x.shape[-1] for x in imgs)
        batch = torch.stack([F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2])) for x in imgs]).to(device)
        for meta in metas:
            meta["batch_input_shape"] = (H, W)
        return batch, metas, boxes, labels, (masks if masks else None)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, dist: DistInfo) -> Dict[str, float]:
        """Box (and mask) AP with pycocotools over the whole validation set: every rank predicts its
        shard, rank 0 gathers and evaluates, the numbers are broadcast."""
        ds = loader.dataset
        if not isinstance(ds, CocoDetection):
            raise ValueError("detection evaluation needs a CocoDetection validation set")
        model.eval()
        label_to_cat = [0] + list(self.cat_ids)
        results, image_ids = [], []
        for images, targets in progress(loader, dist.is_main and self.progress, "evaluating"):
            with float32_heads(model, device):
                outputs = self.predict(model, [im.to(device) for im in images])
            ids = [int(t["image_id"]) for t in targets]
            results += coco_results(outputs, ids, label_to_cat)
            image_ids += ids
        gathered = dist.all_gather_object((results, image_ids))
        metrics: Dict[str, float] = {}
        if dist.is_main:
            all_results = [r for res, _ in gathered for r in res]
            all_ids = [i for _, ids in gathered for i in ids]
            types = ("bbox", "segm") if self.arch == "mask_rcnn" else ("bbox",)
            metrics, self.last_summary = coco_evaluate(ds.coco, all_results, all_ids, types)
            metrics["detections"] = float(len(all_results))
        metrics = dist.broadcast_object(metrics)
        metrics["score"] = metrics["bbox_AP"]
        return metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Sequence[Tensor], paste_masks: bool = True) -> List[Dict[str, Tensor]]:
        """The detections of an eval-mode ``model`` (litvit's or a release: the same inference, the
        authors' test pipeline and ``test_cfg``) on RGB images in [0, 1] (``Tensor[3, H, W]``, as
        :func:`~litvit.data.io.image_to_tensor` makes them from 8-bit pixels, which are recovered
        exactly).

        An image of extreme aspect ratio is padded as :func:`~litvit.data.coco.pad_extreme_aspect`
        says (a 4000x20 image keeps 32 px on its short side through the resize; other images are
        untouched: their detections are the model's own), and the outputs of a padded image are cut
        back to it: boxes clipped (those left without area, wholly in the padding, dropped), masks
        cropped to its size.

        Args:
            model (nn.Module): a detector of :func:`~litvit.models.detectors.build_detector` or
                :func:`~litvit.load_dense`.
            images (Sequence[Tensor[3, H, W]]): RGB in [0, 1].
            paste_masks (bool): Mask R-CNN's masks pasted into full-size maps (``masks``, what
                pycocotools evaluates), or left at the mask head's M x M (``mask_probs`` with the
                ``mask_boxes`` they belong in, which :meth:`paste_regions` pastes one box at a time):
                N full-size maps hold N x H x W bytes, the unpasted ones N x 28 x 28 floats.

        Returns:
            one dict per image: ``boxes`` (Tensor[N, 4]), ``scores``, ``labels`` (1..K) and, for Mask
            R-CNN, ``masks`` (Tensor[N, 1, H, W] bool) or ``mask_probs`` (Tensor[N, 1, M, M]) and
            ``mask_boxes`` (Tensor[N, 4]), in the image's pixels, ordered by class, then score.
        """
        outputs = []
        for image in images:
            padded, _ = pad_extreme_aspect(image, self.max_size)
            if model.kind == "mask_rcnn" and model.with_mask:
                out = model.predict(_to_pixels(padded), paste_masks=paste_masks)
            else:
                out = model.predict(_to_pixels(padded))
            out["labels"] = out["labels"] + 1
            for key in ("masks", "mask_probs"):
                if key in out:
                    out[key] = out[key][:, None]  # N, H, W -> N, 1, H, W
            outputs.append(out if padded.shape == image.shape else _crop_to_image(out, image.shape[-2:]))
        return outputs

    def run_config(self) -> dict:
        return dict(definition=DEFINITION, **run_settings(self.cfg))

    def checkpoint_extra(self) -> dict:
        return dict(definition=DEFINITION, **record_of(self.cfg))

    @classmethod
    def from_record(cls, record: Dict[str, Any], path: str, ckpt: Any = None, **overrides) -> "DetectionTask":
        """The task of a detection checkpoint's record (:func:`~litvit.tasks.records.task_from_checkpoint`
        calls it); ``overrides`` that are not None win (data paths, ``progress``)."""
        if record.get("definition") != DEFINITION:
            raise ValueError(f"{path} holds a detector of litvit's earlier definition (torchvision's detection "
                             f"models), which litvit no longer builds: train it again, or fine-tune the authors' "
                             f"release (--init-checkpoint)")
        task = cls(config_from_record(DetectionConfig, record, path, **overrides))
        if record.get("init_checkpoint"):  # its architecture came from that checkpoint's weights, as it is in these
            task.rebuild_from = str(path)
        return task

    @classmethod
    def from_checkpoint(cls, path: str, **overrides) -> "DetectionTask":
        """A task rebuilt from a detection checkpoint's record (for eval and predict):
        :func:`~litvit.tasks.records.task_from_checkpoint` with ``task="detection"``."""
        return task_from_checkpoint(path, task=cls.name, **overrides)

    @classmethod
    def from_release(cls, model: DenseRelease, **kwargs) -> "ReleaseDetectionTask":
        """The task of one of the authors' detector releases (:func:`litvit.load_dense`)."""
        return ReleaseDetectionTask(model, **kwargs)

    def category_ids(self) -> List[Optional[int]]:
        """The category id of each class (index into ``class_names``), as in the annotation file
        the checkpoint was trained on."""
        return list(self.cat_ids)

    def paste_regions(self, mask_probs: Tensor, mask_boxes: Tensor, size: Sequence[int], threshold: float = 0.5
                      ) -> Iterator[Optional[Tuple[Tuple[slice, slice], Tensor]]]:
        """The unpasted masks of :meth:`predict` (``paste_masks=False``) pasted one box at a time
        into an image of ``size`` (H, W), as the model pastes them: :func:`mask_regions`."""
        return mask_regions(mask_probs, mask_boxes, size, threshold)


class ReleaseDetectionTask(DetectionTask):
    """One of the authors' RetinaNet / Mask R-CNN releases (loaded by :func:`litvit.load_dense`) for
    :func:`litvit.engine.evaluate` and ``detect predict``: its own inference, its classes.

    :meth:`predict` gives its detections in :class:`DetectionTask`'s convention (labels 1..K, masks
    ``Tensor[N, 1, H, W]``). On a COCO-format set the release's classes are matched to the
    annotation file's categories by name (the releases hold COCO's 80 names, in order).

    Args:
        model (DenseRelease): a detector release, weights loaded.
        val_images, val_ann (str, optional): COCO-format evaluation data.
        progress (bool): a progress bar while evaluating.
    """

    def __init__(
            self,
            model: DenseRelease,
            val_images: Optional[str] = None,
            val_ann: Optional[str] = None,
            progress: bool = True,
    ):
        if model.kind not in ("retinanet", "mask_rcnn"):
            raise ValueError(f"a {model.kind} release is not a detector")
        arch = "mask_rcnn" if model.kind == "mask_rcnn" and model.with_mask else "retinanet"
        scale = model.pipeline.img_scale
        super().__init__(arch=arch, val_images=val_images, val_ann=val_ann, num_classes=len(model.classes),
                         class_names=model.classes, cat_ids=range(1, len(model.classes) + 1),
                         min_size=(min(scale),), max_size=max(scale), progress=progress)
        self.release = model
        self.find_unused_parameters = False

    def setup(self) -> Dict[str, Any]:
        """The evaluation set, whose categories must be the release's classes (matched by name)."""
        if self._val_set is None and self.val_ann is not None:
            self._val_set = self._dataset(self.val_images, self.val_ann, train=False)
        if self._val_set is not None:
            self.cat_ids = self._match_categories(self._val_set)
        return dict(num_classes=self.num_classes, class_names=list(self.class_names), cat_ids=list(self.cat_ids))

    def _match_categories(self, ds: CocoDetection) -> List[int]:
        """The category id of each of the release's classes in ``ds``, whose category names must be
        those classes (any order, any ids); ValueError naming what differs."""
        by_name = dict(zip(ds.class_names, ds.cat_ids))
        missing = [c for c in self.class_names if c not in by_name]
        extra = [c for c in ds.class_names if c not in self.class_names]
        if missing or extra or len(by_name) != len(ds.cat_ids):
            said = "; ".join(p for p in (
                f"{len(missing)} of its classes are not categories there ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''})" if missing else "",
                f"{len(extra)} categories there are not among its classes ({', '.join(extra[:3])}"
                f"{', ...' if len(extra) > 3 else ''})" if extra else "",
                "category names repeat there" if len(by_name) != len(ds.cat_ids) else "") if p)
            raise ValueError(f"{ds.ann_file} does not hold the release's {self.num_classes} classes: {said}")
        return [int(by_name[c]) for c in self.class_names]

    def _check_categories(self, ds: CocoDetection) -> None:
        self._match_categories(ds)

    def build_model(self) -> nn.Module:
        return self.release

    def load_weights(self, model: nn.Module, path: str, use_ema: bool = False) -> None:
        """The release's weights are in the model already."""

    def paste_regions(self, mask_probs: Tensor, mask_boxes: Tensor, size: Sequence[int], threshold: float = 0.5
                      ) -> Iterator[Optional[Tuple[Tuple[slice, slice], Tensor]]]:
        """The release's unpasted masks pasted one box at a time as mmdet 2.11 pastes them
        (:func:`~litvit.models.official_dense.heads.paste_mask_regions`, its ``mask_thr_binary``)."""
        return mask_regions(mask_probs, mask_boxes, size, self.release.test_cfg["rcnn"]["mask_thr_binary"])

    def category_ids(self) -> List[Optional[int]]:
        """COCO's id of each class when every class is one of COCO's 80 names (the releases), else None."""
        ids = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))
        return [ids[c] for c in self.class_names] if all(c in ids for c in self.class_names) \
            else [None] * len(self.class_names)


def detection_records(output: Dict[str, Tensor], file_name: str, class_names: Sequence[str],
                      category_ids: Sequence[Optional[int]], size: Sequence[int],
                      paste: Optional[Callable[..., Iterator]] = None) -> List[Dict[str, Any]]:
    """One JSON record per detection of :meth:`DetectionTask.predict` on an image of ``size`` (H, W):
    ``file_name``, ``label`` (index into ``class_names``), ``category``, ``category_id``, ``bbox``
    ``[x, y, w, h]`` in the image's pixels, ``score`` and, with masks, ``segmentation`` (COCO RLE,
    ``counts`` as str). Unpasted masks are encoded from their box's region, without a full-size map:
    ``paste(mask_probs, mask_boxes, size)`` yields the regions (default :func:`mask_regions`; the
    task's :meth:`~DetectionTask.paste_regions`)."""
    paste = paste or mask_regions
    H, W = int(size[0]), int(size[1])
    boxes = output["boxes"].float().cpu()
    labels = (output["labels"].cpu() - 1).tolist()
    scores = output["scores"].float().cpu().tolist()
    segmentations: List[Optional[Dict[str, Any]]] = [None] * len(labels)
    if "masks" in output:
        segmentations = [rle_encode(m[0].numpy() > 0.5) for m in output["masks"].cpu()]
    elif "mask_probs" in output:
        empty = np.zeros((0, 0), bool)
        segmentations = [rle_encode(empty, (H, W)) if region is None else
                         rle_encode(region[1].numpy(), (H, W), (region[0][0].start, region[0][1].start))
                         for region in paste(output["mask_probs"].cpu(), output["mask_boxes"].cpu(), (H, W))]
    records = []
    for (x1, y1, x2, y2), label, score, seg in zip(boxes.tolist(), labels, scores, segmentations):
        record = dict(file_name=file_name, label=int(label), category=class_names[label],
                      category_id=category_ids[label], bbox=[x1, y1, x2 - x1, y2 - y1], score=score)
        if seg is not None:
            record["segmentation"] = seg
        records.append(record)
    return records


def mask_regions(mask_probs: Tensor, mask_boxes: Tensor, size: Sequence[int], threshold: float = 0.5
                 ) -> Iterator[Optional[Tuple[Tuple[slice, slice], Tensor]]]:
    """Each unpasted mask pasted into its box only, as the authors' code pastes it into a whole
    image of ``size`` (H, W) (:func:`~litvit.models.official_dense.heads.paste_mask_regions`), then
    thresholded.

    Args:
        mask_probs (Tensor[N, 1, M, M]): mask head probabilities.
        mask_boxes (Tensor[N, 4]): x1, y1, x2, y2 in image pixels.
        size (Sequence[int]): the image's (H, W).
        threshold (float): ``mask_thr_binary``.

    Yields:
        per mask, ``((rows, columns), Tensor[h, w] bool)``: where in the image and which pixels;
        None for a box wholly outside the image.
    """
    return paste_mask_regions(mask_probs[:, 0], mask_boxes, int(size[0]), int(size[1]), threshold)


def _to_pixels(image: Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image in [0, 1] (``Tensor[3, H, W]``); 8-bit pixels come back exactly."""
    pixels = (image.detach().cpu() * 255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()  # 3, H, W -> H, W, 3


def _crop_to_image(output: Dict[str, Tensor], size: Sequence[int]) -> Dict[str, Tensor]:
    """Detections on a padded image cut back to the image of ``size`` (H, W): boxes clipped, those
    left without area dropped, masks cropped (``mask_boxes``, where unpasted masks go, stay as the
    model pastes them; :func:`mask_regions` clips their regions)."""
    H, W = int(size[0]), int(size[1])
    boxes = output["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = {k: v[keep] for k, v in output.items() if k != "boxes"}
    out["boxes"] = boxes[keep]
    if "masks" in out:
        out["masks"] = out["masks"][..., :H, :W]
    return out


# --- drawing ------------------------------------------------------------------------------------------

def draw_detections(image: Tensor, output: Dict[str, Tensor], class_names: Sequence[str], score_thresh: float = 0.3,
                    paste: Optional[Callable[..., Iterator]] = None) -> Tuple["Image.Image", int]:
    """Boxes (and masks) with scores >= ``score_thresh`` drawn on ``image`` (``Tensor[3, H, W]`` in [0, 1]).

    The masks are ``output["masks"]`` (full size) or ``output["mask_probs"]`` / ``["mask_boxes"]``
    (:meth:`DetectionTask.predict` with ``paste_masks=False``), pasted one box at a time by
    ``paste(mask_probs, mask_boxes, size)`` (default :func:`mask_regions`; the task's
    :meth:`~DetectionTask.paste_regions`): the same picture, without holding a full-size map per
    detection.

    Returns:
        (PIL image, number of detections drawn).
    """
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    keep = output["scores"] >= score_thresh
    labels = output["labels"][keep].tolist()
    colours = palette(len(class_names) + 1)
    colour_list = [tuple(int(c) for c in colours[l]) for l in labels]
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
    if "masks" in output and keep.any():
        masks = output["masks"][keep][:, 0].cpu() > 0.5
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colour_list)
    elif "mask_probs" in output and keep.any():
        canvas = _draw_mask_regions(canvas, output["mask_probs"][keep].cpu(), output["mask_boxes"][keep].cpu(),
                                    colour_list, alpha=0.45, paste=paste or mask_regions)
    if keep.any():
        names = [f"{class_names[l - 1] if 0 < l <= len(class_names) else l} {s:.2f}"
                 for l, s in zip(labels, output["scores"][keep].tolist())]
        canvas = draw_bounding_boxes(canvas, output["boxes"][keep].cpu(), labels=names, colors=colour_list,
                                     width=max(1, round(max(image.shape[-2:]) / 300)))
    return Image.fromarray(canvas.permute(1, 2, 0).numpy()), int(keep.sum())  # 3, H, W -> H, W, 3


def _draw_mask_regions(canvas: Tensor, mask_probs: Tensor, mask_boxes: Tensor, colours: Sequence[Tuple[int, ...]],
                       alpha: float, paste: Callable[..., Iterator]) -> Tensor:
    """torchvision's ``draw_segmentation_masks(canvas, pasted masks > 0.5, alpha, colours)`` pixel for
    pixel, each mask pasted into its box only (:func:`mask_regions`): later masks paint over earlier
    ones, pixels under two or more masks go black, then the colours are blended in, a band of rows
    at a time. Memory: the canvas three times over, not one full-size map per mask."""
    H, W = canvas.shape[-2:]
    painted = canvas.clone()
    covered = torch.zeros(H, W, dtype=torch.uint8)  # masks over each pixel, counted up to 2
    for region, colour in zip(paste(mask_probs, mask_boxes, (H, W)), colours):
        if region is None:
            continue
        (rows, cols), pixels = region
        painted[:, rows, cols][:, pixels] = torch.tensor(colour, dtype=torch.uint8)[:, None]
        count = covered[rows, cols]
        count[pixels] = (count[pixels] + 1).clamp_(max=2)
    painted[:, covered > 1] = 0
    band = max(1, (1 << 22) // max(1, W))
    for r in range(0, H, band):
        rows = slice(r, r + band)
        painted[:, rows] = (canvas[:, rows] * (1 - alpha) + painted[:, rows] * alpha).to(torch.uint8)
    return painted


# the command-line functions that lived here, now in litvit.cli.detection: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.detection", ('add_parsers', 'resolved_config'))
