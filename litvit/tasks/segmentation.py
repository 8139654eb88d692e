"""Semantic segmentation on ADE20K-format data: ``litvit segment``.

Semantic FPN with a LIT backbone (:mod:`litvit.segmentation`) trained by the shared engine
(:func:`litvit.engine.fit`) with the authors' ADE20K recipe (``--recipe semantic-fpn-80k``,
:data:`litvit.recipes.DENSE_RECIPES`): 512x512 crops (``cat_max_ratio`` 0.75) of images rescaled by
0.5-2.0, flips and mmseg's photometric distortion, AdamW lr 1e-4 with weight decay 1e-4 on every
parameter, poly learning-rate decay (power 0.9) to 1e-6 over 80k iterations, a BatchNorm head
synchronised across processes under DDP, cross-entropy ignoring label 255. Evaluation: whole-image inference at the 2048x512
scale, logits resized to the label's size; mIoU, mean class accuracy and pixel accuracy from a
confusion matrix summed over ranks; "score" is the mIoU (%).

Training is counted in iterations (optimizer steps) as in mmsegmentation: the engine runs
``ceil(iters / steps_per_epoch)`` epochs and stops after ``iters`` steps.

Examples::

    litvit segment params
    litvit segment train --recipe semantic-fpn-80k --backbone lit_s --print-config    # the resolved recipe as JSON
    litvit segment train --data ADEChallengeData2016 --backbone lit_ti --pretrained lit_ti.pth --output runs/fpn_lit_ti
    torchrun --nproc_per_node 8 -m litvit segment train --data ADEChallengeData2016 --backbone lit_s ... --output runs/fpn_lit_s
    litvit segment eval --checkpoint runs/fpn_lit_ti/best.pth --data ADEChallengeData2016
    litvit segment predict --checkpoint runs/fpn_lit_ti/best.pth photo.jpg --output preds/
"""
import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.ade20k import SegEvalTransform, SegmentationDataset, SegTrainTransform, segmentation_collate
from ..data.io import palette, read_image
from ..checkpoint import read_model_record
from ..engine import (DistInfo, Task, TrainConfig, evaluate as engine_evaluate, fit, is_main_process, param_groups,
                      progress)
from ..metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics
from ..models.semantic_fpn import SEGMENTATION_DEFAULTS, convert_head_sync_batchnorm, parameter_table, semantic_fpn
from ..utils import count_parameters
from ..cli.args import float_arg, img_size_arg, int_arg, positive_int
from ._dense import (add_backbone_args, add_engine_args, add_eval_args, add_predict_args, backbone_kwargs,
                     check_output, eval_config, expand_images, optimizer_summary,
                     output_stems, print_parameter_table, resolve_recipe, save_png_atomic, train_config)
from .classification import print_config

__all__ = ["SegmentationTask", "colorize", "add_parsers"]


class SegmentationTask(Task):
    """ADE20K-format semantic segmentation with Semantic FPN, for :func:`litvit.engine.fit`.

    Args:
        backbone (str): a LIT model name.
        data (str, optional): dataset root in ADE20K layout (``images/<split>``, ``annotations/<split>``).
        num_classes (int): K (150 for ADE20K).
        train_split, val_split (str): sub-folder names.
        reduce_zero_label (bool): ADE20K's convention (label 0 ignored, v -> v - 1).
        pretrained (str, optional): ImageNet checkpoint for the backbone.
        iters (int): training length in optimizer steps (poly schedule length).
        crop_size (int), scale (Tuple[int, int]), ratio_range (Tuple[float, float]): augmentation.
        frozen_stages (int), norm_eval (bool): backbone training options.
        backbone_kwargs (dict, optional): ``litvit.create_model`` overrides.
        fpn_channels (int), head_channels (int): widths (256, 128).
        class_names (Sequence[str], optional): names for logs and legends.
        cat_max_ratio (float): crops are re-drawn while one class covers this share (mmseg's RandomCrop).
        no_decay_keys (Sequence[str]): parameters whose names contain one of these get no weight
            decay; all others are decayed (none in the authors' configs).
        sync_bn (bool): under DDP, the head's BatchNorms become SyncBatchNorms (the authors' SyncBN).
    """
    name = "segmentation"
    curve_metrics = ("score", "aAcc")

    def __init__(
            self,
            backbone: str = "lit_ti",
            data: Optional[str] = None,
            num_classes: int = 150,
            train_split: str = "training",
            val_split: str = "validation",
            reduce_zero_label: bool = True,
            pretrained: Optional[str] = None,
            iters: int = SEGMENTATION_DEFAULTS["iters"],
            crop_size: int = SEGMENTATION_DEFAULTS["crop_size"],
            scale: Sequence[int] = SEGMENTATION_DEFAULTS["scale"],
            ratio_range: Sequence[float] = SEGMENTATION_DEFAULTS["ratio_range"],
            frozen_stages: int = -1,
            norm_eval: bool = False,
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            fpn_channels: int = 256,
            head_channels: int = 128,
            class_names: Optional[Sequence[str]] = None,
            cat_max_ratio: float = SEGMENTATION_DEFAULTS["cat_max_ratio"],
            no_decay_keys: Sequence[str] = (),
            sync_bn: bool = True,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.backbone = backbone
        self.data = data
        self.num_classes = int(num_classes)
        self.train_split, self.val_split = train_split, val_split
        self.reduce_zero_label = bool(reduce_zero_label)
        self.pretrained = pretrained
        self.iters = int(iters)
        self.crop_size = int(crop_size)
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.fpn_channels = int(fpn_channels)
        self.head_channels = int(head_channels)
        self.cat_max_ratio = float(cat_max_ratio)
        self.no_decay_keys = tuple(no_decay_keys)
        self.sync_bn = bool(sync_bn)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self._datasets: Optional[Tuple[Any, Optional[SegmentationDataset]]] = None

    def setup(self) -> Dict[str, Any]:
        """The datasets; the classes are given (``num_classes``, ``class_names``): label PNGs hold indices."""
        self.build_datasets()
        return dict(num_classes=self.num_classes, class_names=list(self.class_names))

    def build_model(self) -> nn.Module:
        """Semantic FPN; inside a process group of several processes (``fit`` under torchrun) the
        head's BatchNorms are converted to SyncBatchNorms, the backbone's stay per-process."""
        model = semantic_fpn(self.backbone, num_classes=self.num_classes, pretrained_backbone=self.pretrained,
                             frozen_stages=self.frozen_stages, norm_eval=self.norm_eval, channels=self.head_channels,
                             backbone_kwargs=self.backbone_kwargs, fpn_channels=self.fpn_channels)
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
            val = self._dataset(self.val_split, SegEvalTransform(scale=self.scale))
        if train is None and val is None:
            raise FileNotFoundError(f"no images/{self.train_split} or images/{self.val_split} folder in {self.data}")
        return train if train is not None else [], val

    def collate_fn(self):
        return segmentation_collate

    def build_scheduler(self, optimizer, cfg: TrainConfig, steps_per_epoch: int):
        """Poly decay (power 0.9) from the base lr to ``cfg.min_lr`` over ``iters`` steps."""
        from timm.scheduler import PolyLRScheduler
        return PolyLRScheduler(optimizer, t_initial=max(1, self.iters), power=SEGMENTATION_DEFAULTS["poly_power"],
                               lr_min=cfg.min_lr, t_in_epochs=False)

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Dict[str, float]]:
        images, labels = batch
        if isinstance(images, list):
            raise ValueError("training crops must share one size (SegTrainTransform pads them to crop_size)")
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, dist: DistInfo) -> Dict[str, float]:
        """mIoU / mAcc / aAcc over the whole validation set (confusion matrices summed over ranks)."""
        model.eval()
        cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        for images, labels in progress(loader, dist.is_main, "evaluating"):
            if isinstance(images, Tensor):
                images, labels = list(images), list(labels)
            for image, label in zip(images, labels):
                logits = model(image[None].to(device))
                logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
                cm += confusion_matrix(logits.argmax(1)[0].cpu(), label.cpu(), self.num_classes).double()
        cm = dist.reduce_sum(cm)
        metrics = segmentation_metrics(cm)
        metrics["score"] = metrics["mIoU"]
        self.last_confusion = cm
        return metrics

    def run_config(self) -> dict:
        return dict(backbone=self.backbone, num_classes=self.num_classes, reduce_zero_label=self.reduce_zero_label,
                    iters=self.iters, crop_size=self.crop_size, scale=list(self.scale),
                    ratio_range=list(self.ratio_range), frozen_stages=self.frozen_stages, norm_eval=self.norm_eval,
                    backbone_kwargs=dict(self.backbone_kwargs), fpn_channels=self.fpn_channels,
                    head_channels=self.head_channels)

    def checkpoint_extra(self) -> dict:
        return dict(backbone=self.backbone, num_classes=self.num_classes, reduce_zero_label=self.reduce_zero_label,
                    crop_size=self.crop_size, scale=list(self.scale), backbone_kwargs=dict(self.backbone_kwargs),
                    fpn_channels=self.fpn_channels, head_channels=self.head_channels,
                    class_names=list(self.class_names))

    @classmethod
    def from_checkpoint(cls, path: str, **overrides) -> "SegmentationTask":
        extra = read_model_record(path, cls.name)
        kwargs = dict(backbone=extra["backbone"], num_classes=extra["num_classes"],
                      reduce_zero_label=extra["reduce_zero_label"], crop_size=extra["crop_size"], scale=extra["scale"],
                      backbone_kwargs=extra.get("backbone_kwargs") or {}, fpn_channels=extra["fpn_channels"],
                      head_channels=extra["head_channels"], class_names=extra["class_names"], iters=0)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)


def colorize(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Class map ``[H, W]`` -> colours ``[H, W, 3]`` uint8 (ignored pixels black)."""
    colours = np.concatenate([palette(num_classes), np.zeros((256 - num_classes, 3), np.uint8)]) \
        if num_classes < 256 else palette(num_classes)
    return colours[pred.astype(np.int64).clip(0, len(colours) - 1)]


# --- command line ---------------------------------------------------------------------------------------

def _params(args: argparse.Namespace) -> int:
    return print_parameter_table(
        parameter_table(args.num_classes), "model",
        f"({args.num_classes} classes; LIT-S relative tables learned for 512x512 as the authors')")


def _read_class_names(path: Optional[str]) -> Optional[list]:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class-name file not found: {path}")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _task(args: argparse.Namespace, r: Dict[str, Any], class_names=None) -> SegmentationTask:
    lo, hi = r["ratio_range"]
    if lo > hi:
        raise ValueError(f"--ratio-range {lo:g} {hi:g}: MIN must not exceed MAX")
    return SegmentationTask(
        backbone=args.backbone, data=args.data, num_classes=args.num_classes, reduce_zero_label=not args.no_reduce_zero_label,
        pretrained=args.pretrained, iters=r["iters"], crop_size=r["crop_size"], scale=r["scale"],
        ratio_range=r["ratio_range"], frozen_stages=args.frozen_stages, norm_eval=args.norm_eval,
        backbone_kwargs=backbone_kwargs(args, r), fpn_channels=r["fpn_channels"], head_channels=r["head_channels"],
        class_names=class_names, cat_max_ratio=r["cat_max_ratio"], no_decay_keys=r["no_decay_keys"])


def resolved_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything ``litvit segment train`` would train with, as plain values, without reading any
    data: the model is built on the meta device for its parameter groups."""
    from timm.layers import DropPath
    r = resolve_recipe(args, args.recipe)
    task = _task(args, r)
    tc = train_config(args, r, 1, iters=r["iters"])
    with torch.device("meta"):
        model = task.build_model()
    body = model.backbone.body
    drop_path = max([m.drop_prob for m in model.modules() if isinstance(m, DropPath)], default=0.0)
    has_abs = any(stage.pos_embed is not None for stage in body.model.stages)
    norms = sorted({type(m).__name__ for m in model.head.modules() if isinstance(m, nn.modules.batchnorm._NormBase)})
    return dict(
        command="segment train", recipe=r["recipe"], overridden=r["overridden"],
        model=dict(backbone=args.backbone, backbone_family=r["backbone_family"],
                   backbone_img_size=list(body.model.img_size), drop_path=round(drop_path, 6),
                   out_norm_stages=sorted(int(i) for i in body.out_norms),
                   pos_embed_interpolation=body.pos_embed_interpolation if has_abs else None,
                   fpn_channels=r["fpn_channels"], fpn_stages=list(model.backbone.fpn_stages),
                   head_channels=r["head_channels"], head_norm=r["head_norm"], head_norm_modules=norms,
                   dropout=r["dropout"], num_classes=args.num_classes, frozen_stages=args.frozen_stages,
                   norm_eval=args.norm_eval, pretrained=args.pretrained,
                   parameters=count_parameters(model)),
        data=dict(data=args.data, reduce_zero_label=not args.no_reduce_zero_label, scale=list(r["scale"]),
                  test_scale=list(r["scale"]), test_mode="whole"),
        optimizer=optimizer_summary(task, model, tc, r),
        schedule=dict(type="poly", power=r["poly_power"], iters=r["iters"], min_lr=tc.min_lr),
        augmentation=dict(ratio_range=list(r["ratio_range"]), crop_size=r["crop_size"],
                          cat_max_ratio=r["cat_max_ratio"], hflip=r["hflip"], photometric=r["photometric"]),
        engine=dict(batch_size=tc.batch_size, accum_steps=tc.accum_steps, amp=tc.amp,
                    grad_checkpointing=tc.grad_checkpointing, device=tc.device, seed=tc.seed, workers=tc.workers,
                    output=args.output),
    )


def _train(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(resolved_config(args))
    check_output(args)
    if not args.data:
        raise ValueError("--data is required (a folder in ADE20K layout)")
    r = resolve_recipe(args, args.recipe)
    task = _task(args, r, _read_class_names(args.class_names))
    if args.pretrained is None and is_main_process():
        print("note: no --pretrained ImageNet checkpoint; the backbone starts from random weights")
    summary = fit(task, train_config(args, r, 1, iters=r["iters"]))  # the engine turns iterations into epochs
    if not is_main_process():
        return 0
    best = summary["best_score"]
    print(f"done: {summary['steps']} iterations in {summary['train_time_s']:.0f} s; best mIoU "
          f"{best if best is None else round(best, 2)} (epoch {summary['best_epoch']}); checkpoints "
          f"{summary['last_checkpoint']}, {summary['best_checkpoint']}; curves {summary['curves']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    task = SegmentationTask.from_checkpoint(args.checkpoint, data=args.data, val_split=args.split)
    metrics = engine_evaluate(task, eval_config(args), args.checkpoint, use_ema=args.ema)
    if not is_main_process():
        return 0
    per_class = segmentation_metrics(task.last_confusion, task.class_names)
    pixels = task.last_confusion.sum(1)
    print(f"{'class':<24}{'IoU':>8}{'pixels':>14}")
    for c, name in enumerate(task.class_names):
        iou = per_class[f"IoU/{name}"]
        print(f"{name:<24}{'-' if iou != iou else f'{iou:.2f}':>8}{int(pixels[c]):>14,}")
    print(f"{args.checkpoint}: {int(metrics['images'])} images in {metrics['eval_time_s']:.1f} s  "
          f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from PIL import Image
    files = expand_images(args.images)
    task = SegmentationTask.from_checkpoint(args.checkpoint)
    model = task.build_model()
    task.load_weights(model, args.checkpoint, use_ema=args.ema)
    model.eval()
    tf = SegEvalTransform(scale=task.scale)
    out_dir = Path(args.output)
    for path, stem in zip(files, output_stems(files)):
        img = read_image(path)
        x, _ = tf(img, np.zeros((img.size[1], img.size[0]), np.uint8))
        pred = model.predict(x[None], size=(img.size[1], img.size[0]))[0].numpy().astype(np.uint8)
        colours = colorize(pred, task.num_classes)
        overlay = (0.5 * np.asarray(img, dtype=np.float32) + 0.5 * colours).astype(np.uint8)
        side = np.concatenate([np.asarray(img), overlay, colours], axis=1)  # image | overlay | colour map
        dst = save_png_atomic(Image.fromarray(side), out_dir / f"{stem}_seg.png")
        labels = Image.fromarray(pred, mode="L")
        labels_png = save_png_atomic(labels, out_dir / f"{stem}_labels.png")
        present = np.bincount(pred.ravel(), minlength=task.num_classes)
        top = ", ".join(f"{task.class_names[c]} {100 * present[c] / pred.size:.0f}%" for c in present.argsort()[::-1][:3]
                        if present[c])
        print(f"{path}: {top} -> {dst} (class indices in {labels_png})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = SEGMENTATION_DEFAULTS
    p = sub.add_parser("segment", help="semantic segmentation (Semantic FPN) on ADE20K-format data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="segment_command", metavar="{train,eval,predict,params}")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = cmds.add_parser("train", help="train Semantic FPN (the paper's ADE20K recipe by default)",
                        description="Train Semantic FPN with a LIT backbone on ADE20K-format data (the authors' "
                                    "recipe by default, see --print-config); resumable, torchrun-ready.")
    t.add_argument("--recipe", default="semantic-fpn-80k", choices=("semantic-fpn-80k",),
                   help="the authors' config (see --print-config)")
    t.add_argument("--data", default=None, help="dataset root: images/{training,validation}, annotations/{...} (required)")
    t.add_argument("--num-classes", type=int_arg(1, 255), default=150, help="classes K, at most 255 (default 150)")
    t.add_argument("--class-names", default=None, help="text file with one class name per line (K lines)")
    t.add_argument("--no-reduce-zero-label", action="store_true",
                   help="labels are 0..K-1 with 255 = ignore (default: ADE20K's 0 = ignore, 1..K = classes)")
    t.add_argument("--iters", type=positive_int, default=None, help=f"optimizer steps (recipe: {d['iters']})")
    t.add_argument("--crop-size", type=img_size_arg, default=None,
                   help=f"square training crop, a multiple of 32 (recipe: {d['crop_size']})")
    t.add_argument("--scale", type=positive_int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                   help="resize limits at ratio 1 and for evaluation (recipe: 2048 512)")
    t.add_argument("--ratio-range", type=float_arg(0, lo_open=True), nargs=2, default=None,
                   metavar=("MIN", "MAX"), help="random rescale ratio range (recipe: 0.5 2.0)")
    t.add_argument("--val-batch-size", type=positive_int, default=1, help="evaluation images per process")
    add_backbone_args(t)
    add_engine_args(t, batch_size=d["batch_size"], lr=d["lr"], weight_decay=d["weight_decay"])
    t.set_defaults(func=_train)

    e = cmds.add_parser("eval", help="mIoU / pixel accuracy of a checkpoint",
                        description="mIoU, mean class accuracy, pixel accuracy and per-class IoU of a "
                                    "`litvit segment train` checkpoint on ADE20K-format data; torchrun-ready.")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by `litvit segment train`")
    e.add_argument("--data", required=True, help="dataset root in ADE20K layout")
    e.add_argument("--split", default="validation", help="sub-folder of images/ and annotations/ (default validation)")
    add_eval_args(e, batch_size=1)
    e.set_defaults(func=_eval)

    r = cmds.add_parser("predict", help="colour-coded segmentation of images (PNG)",
                        description="Segment images or folders of images with a `litvit segment train` checkpoint: "
                                    "OUTPUT/NAME_seg.png (image | overlay | colours) and OUTPUT/NAME_labels.png "
                                    "(class indices) per image.")
    add_predict_args(r)
    r.set_defaults(func=_predict)

    q = cmds.add_parser("params", help="parameter counts of the paper's Semantic FPN models beside the paper's",
                        description="Parameter counts of Semantic FPN with LIT-Ti and LIT-S backbones, beside "
                                    "the paper's.")
    q.add_argument("--num-classes", type=positive_int, default=150, help="classes (default 150, ADE20K)")
    q.set_defaults(func=_params)
