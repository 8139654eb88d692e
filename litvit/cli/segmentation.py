"""Semantic segmentation on ADE20K-format data: ``litvit segment``.

Semantic FPN with a LIT backbone (:mod:`litvit.segmentation`) trained by the shared engine
(:func:`litvit.engine.fit`) with the authors' ADE20K recipe (``--recipe semantic-fpn-80k``,
:data:`litvit.recipes.DENSE_RECIPES`): 512x512 crops (``cat_max_ratio`` 0.75) of images rescaled by
0.5-2.0, flips and mmseg's photometric distortion, AdamW lr 1e-4 with weight decay 1e-4 on every
parameter, poly learning-rate decay (power 0.9) to 1e-6 over 80k iterations, a BatchNorm head
synchronised across processes under DDP, mmseg's cross-entropy (label 255 ignored, the mean over
every pixel). Evaluation: the authors' whole-image inference (keep-ratio resize to the 2048x512
scale with OpenCV's bilinear arithmetic, logits resized to the image); mIoU, mean class accuracy
and pixel accuracy from a confusion matrix summed over ranks; "score" is the mIoU (%).

Training is counted in iterations (optimizer steps) as in mmsegmentation: the engine runs
``ceil(iters / steps_per_epoch)`` epochs and stops after ``iters`` steps.

Examples::

    litvit segment params
    litvit segment train --recipe semantic-fpn-80k --backbone lit_s --print-config    # the resolved recipe as JSON
    litvit segment train --data ADEChallengeData2016 --backbone lit_ti --pretrained lit_ti.pth --output runs/fpn_lit_ti
    torchrun --nproc_per_node 8 -m litvit segment train --data ADEChallengeData2016 --backbone lit_s ... --output runs/fpn_lit_s
    litvit segment eval --checkpoint runs/fpn_lit_ti/best.pth --data ADEChallengeData2016
    litvit segment predict --checkpoint runs/fpn_lit_ti/best.pth photo.jpg --output preds/
    litvit segment train --data cityscapes_ade_layout --num-classes 19 --init-checkpoint sem_fpn_lit_s --output runs/ft

The model is the authors' (mmseg 0.13's Semantic FPN, the class their releases load into), trained
with their loss (cross-entropy of the stride-4 logits resized to the labels, averaged over every
pixel, ignored ones counting 0) and run by their whole-image inference; ``--init-checkpoint``
fine-tunes a release or a ``segment train`` checkpoint (a new classifier when the classes differ).

The authors' released Semantic FPN models (mmseg 0.13 format, :func:`litvit.load_dense`) run the
same way, given as a file or by name (``sem_fpn_lit_ti``, ``sem_fpn_lit_s``: downloaded once into
the torch hub cache), with their own test pipeline, classes, palette and label convention (ADE20K's
``reduce_zero_label``, as their config says)::

    litvit segment predict --checkpoint sem_fpn_lit_s photo.jpg --output preds/
    litvit segment eval --checkpoint sem_fpn_lit_ti.pth --data ADEChallengeData2016
"""
import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from ..engine import evaluate as engine_evaluate, fit, is_main_process
from ..metrics import segmentation_metrics
from ..models.semantic_fpn import SEGMENTATION_DEFAULTS, parameter_table
from ..tasks.segmentation import SegmentationConfig, SegmentationTask, colorize
from ..utils import count_parameters
from .args import float_arg, img_size_arg, int_arg, positive_int, print_config, print_plan
from .dense import (add_backbone_args, add_engine_args, add_eval_args, add_init_args, add_predict_args,
                    backbone_kwargs, backbone_summary, best_score, check_init_checkpoint, check_train_args,
                    checkpoint_task, engine_summary, eval_config, match_init_checkpoint, note_random_backbone,
                    one_line_warnings, optimizer_summary, predict_files, print_parameter_table, resolve_recipe,
                    save_png_atomic, train_config, written_files)

__all__ = ["add_parsers", "resolved_config"]


def _params(args: argparse.Namespace) -> int:
    return print_parameter_table(
        parameter_table(args.num_classes), "model",
        f"({args.num_classes} classes; LIT-S relative tables learned for 512x512 as the authors')")


def _read_class_names(path: Optional[str]) -> Optional[list]:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class-name file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _task(args: argparse.Namespace, r: Dict[str, Any], class_names=None) -> SegmentationTask:
    lo, hi = r["ratio_range"]
    if lo > hi:
        raise ValueError(f"--ratio-range {lo:g} {hi:g}: MIN must not exceed MAX")
    return SegmentationTask(SegmentationConfig(
        backbone=args.backbone, data=args.data, num_classes=args.num_classes, reduce_zero_label=not args.no_reduce_zero_label,
        pretrained=args.pretrained, iters=r["iters"], crop_size=r["crop_size"], scale=r["scale"],
        ratio_range=r["ratio_range"], frozen_stages=args.frozen_stages, norm_eval=args.norm_eval,
        backbone_kwargs=backbone_kwargs(args, r), fpn_channels=r["fpn_channels"], head_channels=r["head_channels"],
        class_names=class_names, cat_max_ratio=r["cat_max_ratio"], no_decay_keys=r["no_decay_keys"],
        progress=not args.no_progress, init_checkpoint=args.init_checkpoint))


def resolved_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything ``litvit segment train`` would train with, as plain values, without reading any
    data: the model is built on the meta device for its parameter groups."""
    r = resolve_recipe(args, args.recipe)
    task = _task(args, r)
    tc = train_config(args, r, 1, iters=r["iters"])
    with torch.device("meta"):
        model = task.build_model()
    plan = print_plan(tc, task, model)
    norms = sorted({type(m).__name__ for m in model.decode_head.modules()
                    if isinstance(m, nn.modules.batchnorm._NormBase)})
    return dict(
        command="segment train", recipe=r["recipe"], overridden=r["overridden"],
        model=dict(**backbone_summary(model, args, r), head_channels=r["head_channels"], head_norm=r["head_norm"],
                   head_norm_modules=norms, dropout=r["dropout"], num_classes=args.num_classes,
                   parameters=count_parameters(model), init_checkpoint=args.init_checkpoint),
        data=dict(data=args.data, reduce_zero_label=not args.no_reduce_zero_label, scale=list(r["scale"]),
                  test_scale=list(r["scale"]), test_mode="whole"),
        optimizer=optimizer_summary(task, model, tc, r, plan),
        schedule=dict(type="poly", power=r["poly_power"], iters=r["iters"], min_lr=tc.min_lr),
        augmentation=dict(ratio_range=list(r["ratio_range"]), crop_size=r["crop_size"],
                          cat_max_ratio=r["cat_max_ratio"], hflip=r["hflip"], photometric=r["photometric"]),
        engine=engine_summary(tc, args, plan),
        plan=plan.describe(),
    )


def _train(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(resolved_config(args))
    check_train_args(args, ("--data",), "a folder in ADE20K layout")
    check_init_checkpoint(args)
    match_init_checkpoint(args, ("semantic_fpn",))
    r = resolve_recipe(args, args.recipe)
    task = _task(args, r, _read_class_names(args.class_names))
    if args.init_checkpoint is None:
        note_random_backbone(args)
    summary = fit(task, train_config(args, r, 1, iters=r["iters"]))  # the engine turns iterations into epochs
    if not is_main_process():
        return 0
    print(f"done: {summary['steps']} iterations in {summary['train_time_s']:.0f} s; best mIoU {best_score(summary)}; "
          f"{written_files(summary)}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    task, release = checkpoint_task(SegmentationTask, args, ("semantic_fpn",), data=args.data,
                                    val_split=args.split, progress=not args.no_progress)
    metrics = engine_evaluate(task, eval_config(args), None if release is not None else args.checkpoint,
                              use_ema=args.ema)
    if not is_main_process():
        return 0
    per_class = segmentation_metrics(task.last_confusion, task.class_names)
    pixels = task.last_confusion.sum(1)
    print(f"{'class':<24}{'IoU (%)':>8}{'pixels':>14}")
    for c, name in enumerate(task.class_names):
        iou = per_class[f"IoU/{name}"]
        print(f"{name:<24}{'-' if iou != iou else f'{iou:.2f}':>8}{int(pixels[c]):>14,}")
    print(f"{args.checkpoint}: {int(metrics['images'])} images in {metrics['eval_time_s']:.1f} s  "
          f"mIoU {metrics['mIoU']:.2f} %  mAcc {metrics['mAcc']:.2f} %  aAcc {metrics['aAcc']:.2f} %")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from PIL import Image
    out_dir = Path(args.output)

    def predict_one(task: SegmentationTask, model, path: Path, img, stem: str) -> str:
        size = (img.size[1], img.size[0])
        # the model's own test pipeline, a release's or a litvit checkpoint's alike
        pred = task.predict_labels(model, torch.from_numpy(np.array(img, dtype=np.uint8)), size, torch.uint8)
        pred = pred[0].cpu().numpy()
        labels = Image.fromarray(pred)  # uint8: mode L
        labels_png = save_png_atomic(labels, out_dir / f"{stem}_labels.png")
        colours = Image.fromarray(colorize(pred, task.num_classes, task.colours()))
        W, H = img.size
        side = Image.new("RGB", (3 * W, H))  # image | overlay (half image, half colour) | colour map
        side.paste(img, (0, 0))
        side.paste(Image.blend(img, colours, 0.5), (W, 0))
        side.paste(colours, (2 * W, 0))
        dst = save_png_atomic(side, out_dir / f"{stem}_seg.png")
        present = np.asarray(labels.histogram()[:task.num_classes], dtype=np.int64)
        top = ", ".join(f"{task.class_names[c]} {100 * present[c] / pred.size:.0f}%" for c in present.argsort()[::-1][:3]
                        if present[c])
        return f"{path}: {top} -> {dst} (class indices in {labels_png})"

    return predict_files(args, SegmentationTask, predict_one, kinds=("semantic_fpn",))


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
    t.add_argument("--head-channels", type=positive_int, default=None,
                   help=f"width of the head's convs (recipe: {d['head_channels']}; smaller only for quick tests)")
    t.add_argument("--val-batch-size", type=positive_int, default=1, help="evaluation images per process")
    add_backbone_args(t)
    add_init_args(t)
    add_engine_args(t, batch_size=d["batch_size"], lr=d["lr"], weight_decay=d["weight_decay"])
    t.set_defaults(func=one_line_warnings("segment")(_train))

    e = cmds.add_parser("eval", help="mIoU / pixel accuracy of a checkpoint",
                        description="mIoU, mean class accuracy, pixel accuracy and per-class IoU of a "
                                    "`litvit segment train` checkpoint or one of the authors' releases on "
                                    "ADE20K-format data; torchrun-ready.")
    e.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by `litvit segment train`, or one of the authors' releases: its file "
                        "(mmseg format) or its name (sem_fpn_lit_ti, sem_fpn_lit_s)")
    e.add_argument("--data", required=True, help="dataset root in ADE20K layout")
    e.add_argument("--split", default="validation", help="sub-folder of images/ and annotations/ (default validation)")
    add_eval_args(e, batch_size=1)
    e.set_defaults(func=one_line_warnings("segment")(_eval))

    r = cmds.add_parser("predict", help="colour-coded segmentation of images (PNG)",
                        description="Segment images or folders of images with a `litvit segment train` checkpoint "
                                    "or one of the authors' releases: OUTPUT/NAME_seg.png (image | overlay | "
                                    "colours, a release's in its palette) and OUTPUT/NAME_labels.png (class "
                                    "indices) per image.")
    add_predict_args(r)
    r.set_defaults(func=one_line_warnings("segment")(_predict))

    q = cmds.add_parser("params", help="parameter counts of the paper's Semantic FPN models beside the paper's",
                        description="Parameter counts of Semantic FPN with LIT-Ti and LIT-S backbones, beside "
                                    "the paper's.")
    q.add_argument("--num-classes", type=positive_int, default=150, help="classes (default 150, ADE20K)")
    q.set_defaults(func=_params)
