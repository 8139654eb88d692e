"""Object detection and instance segmentation on COCO-format data: ``litvit detect``.

RetinaNet or Mask R-CNN with a LIT backbone (:mod:`litvit.detection`) trained by the shared
engine (:func:`litvit.engine.fit`: torchrun/DDP, AMP, atomic checkpoints, resume) with the
authors' 1x recipes (``--recipe retinanet-1x | mask-rcnn-1x``, :data:`litvit.recipes.DENSE_RECIPES`):
12 epochs, AdamW lr 1e-4 (RetinaNet) / 2e-4 (Mask R-CNN), weight decay 1e-4 (LIT-S: none on
names containing ``norm``, ``relative_position_bias_table``, ``absolute_pos_embed``), linear
warm-up over 500 iterations from lr x 0.001, lr x 0.1 after epochs 8 and 11, single scale
(1333, 800), horizontal flips. Evaluation runs pycocotools: box AP (and mask AP for Mask R-CNN),
in %; "score" is the box AP.

Examples::

    litvit detect params
    litvit detect train --recipe mask-rcnn-1x --backbone lit_s --print-config     # the resolved recipe as JSON
    litvit detect train --arch retinanet --backbone lit_ti --pretrained lit_ti.pth \\
        --train-images coco/train2017 --train-ann coco/annotations/instances_train2017.json \\
        --val-images coco/val2017 --val-ann coco/annotations/instances_val2017.json --output runs/retina_lit_ti
    torchrun --nproc_per_node 8 -m litvit detect train --arch mask_rcnn --backbone lit_s ... --output runs/mrcnn_lit_s
    litvit detect eval --checkpoint runs/retina_lit_ti/best.pth --val-images coco/val2017 --val-ann ...
    litvit detect predict --checkpoint runs/retina_lit_ti/best.pth photo.jpg --output preds/

The authors' released detectors (mmdet 2.11 format, :func:`litvit.load_dense`) run the same way,
given as a file or by name (``retina_lit_ti``, ``retina_lit_s``, ``mask_rcnn_lit_ti``,
``mask_rcnn_lit_s``: downloaded once into the torch hub cache); no flag describes the model::

    litvit detect predict --checkpoint mask_rcnn_lit_s photo.jpg --output preds/
    litvit detect eval --checkpoint retina_lit_ti.pth --val-images coco/val2017 --val-ann ...

``predict`` writes ``OUTPUT/NAME_det.png`` per image and ``OUTPUT/detections.json``: every detection
the model returns under its own test settings (not only those drawn), one record each with
``file_name``, ``label`` (index into the checkpoint's classes), ``category``, ``category_id``,
``bbox`` ``[x, y, w, h]`` in the image's pixels, ``score`` and, for Mask R-CNN, ``segmentation``
(COCO RLE, ``counts`` as str).
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict

import torch

from ..data.io import image_to_tensor
from ..engine import evaluate as engine_evaluate, fit, is_main_process
from ..errors import CLIError
from ..metrics import _STAT_NAMES
from ..models.detectors import DETECTION_DEFAULTS, DETECTORS, RECIPE_OF, parameter_table
from ..tasks.detection import DetectionConfig, DetectionTask, detection_records, draw_detections
from ..utils import atomic_write, count_parameters
from .args import nonneg_int, positive_int, print_config, print_plan, prob_arg
from .dense import (add_backbone_args, add_engine_args, add_eval_args, add_init_args, add_predict_args,
                    backbone_kwargs, backbone_summary, best_score, check_init_checkpoint, check_train_args,
                    checkpoint_task, engine_summary, eval_config, match_init_checkpoint, note_random_backbone,
                    one_line_warnings, optimizer_summary, predict_files, print_parameter_table, resolve_recipe,
                    save_png_atomic, train_config, written_files)

__all__ = ["add_parsers", "resolved_config"]


def _params(args: argparse.Namespace) -> int:
    return print_parameter_table(
        parameter_table(args.num_classes), "detector",
        f"({args.num_classes} classes; the authors' mmdet 2.11 layouts, which their releases load into; backbone = "
        f"LIT without classifier, with the dense-task output norms; LIT-S relative tables learned for 800x800)")


def _require_pycocotools() -> None:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise CLIError("COCO-format data and metrics need pycocotools: pip install 'litvit[detection]'") from None


def _resolve(args: argparse.Namespace) -> Dict[str, Any]:
    """The recipe (``--recipe``, else the one of ``--arch``) for the backbone's family, flags applied."""
    name = args.recipe or RECIPE_OF[args.arch or "retinanet"]
    r = resolve_recipe(args, name)
    if args.arch is not None and args.arch != r["arch"]:
        raise ValueError(f"--arch {args.arch} does not match --recipe {name} (a {r['arch']} recipe); give one of them")
    if max(r["min_size"]) > r["max_size"]:
        raise ValueError(f"--min-size {max(r['min_size'])} is larger than --max-size {r['max_size']}")
    return r


def _task(args: argparse.Namespace, r: Dict[str, Any], **data) -> DetectionTask:
    """The task of the resolved recipe ``r`` and the flags: its :class:`DetectionConfig`."""
    return DetectionTask(DetectionConfig(
        arch=r["arch"], backbone=args.backbone, pretrained=args.pretrained, min_size=r["min_size"],
        max_size=r["max_size"], frozen_stages=args.frozen_stages, norm_eval=args.norm_eval, lr_steps=r["lr_steps"],
        warmup_iters=r["warmup_iters"], warmup_ratio=r["warmup_ratio"], backbone_kwargs=backbone_kwargs(args, r),
        fpn_channels=r["fpn_channels"], no_decay_keys=r["no_decay_keys"], progress=not args.no_progress,
        init_checkpoint=getattr(args, "init_checkpoint", None), **data))


def resolved_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything ``litvit detect train`` would train with, as plain values, without reading any
    data: the detector is built on the meta device (80 classes) for its parameter groups."""
    r = _resolve(args)
    task = _task(args, r, num_classes=80)
    tc = train_config(args, r, r["epochs"])
    with torch.device("meta"):
        model = task.build_model()
    plan = print_plan(tc, task, model)
    return dict(
        command="detect train", recipe=r["recipe"], overridden=r["overridden"],
        model=dict(arch=r["arch"], **backbone_summary(model, args, r), extra_levels=r["extra_levels"],
                   num_classes=None, parameters_80_classes=count_parameters(model),
                   init_checkpoint=args.init_checkpoint),
        data=dict(train_images=args.train_images, train_ann=args.train_ann, val_images=args.val_images,
                  val_ann=args.val_ann, min_size=list(r["min_size"]), max_size=r["max_size"],
                  test_min_size=int(r["min_size"][-1]), size_divisor=r["size_divisor"],
                  mean_rgb_0_255=list(model.pipeline.mean), std_rgb_0_255=list(model.pipeline.std)),
        optimizer=optimizer_summary(task, model, tc, r, plan),
        schedule=dict(type="step", epochs=r["epochs"], lr_steps=list(r["lr_steps"]), lr_gamma=r["lr_gamma"],
                      warmup="linear", warmup_iters=r["warmup_iters"], warmup_ratio=r["warmup_ratio"]),
        augmentation=dict(resize="keep ratio, shorter side min_size, longer <= max_size",
                          multi_scale=len(r["min_size"]) > 1, hflip=r["hflip"]),
        engine=engine_summary(tc, args, plan),
        plan=plan.describe(),
    )


def _train(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(resolved_config(args))
    check_train_args(args, ("--train-images", "--train-ann"))
    check_init_checkpoint(args)
    kind = match_init_checkpoint(args, DETECTORS)
    if kind is not None and args.arch is None and args.recipe is None:
        args.arch = kind
    _require_pycocotools()
    r = _resolve(args)
    task = _task(args, r, train_images=args.train_images, train_ann=args.train_ann, val_images=args.val_images,
                 val_ann=args.val_ann)
    if args.init_checkpoint is None:
        note_random_backbone(args)
    summary = fit(task, train_config(args, r, r["epochs"]))
    if not is_main_process():
        return 0
    if task.last_summary:
        print(task.last_summary.rstrip())
    print(f"done: {summary['epochs_done']} epochs, {summary['steps']} steps in {summary['train_time_s']:.0f} s; "
          f"best box AP {best_score(summary)}; {written_files(summary)}")
    return 0


_DETECTORS = ("retinanet", "mask_rcnn")  # the kinds of the authors' releases ``litvit detect`` takes


def _eval(args: argparse.Namespace) -> int:
    _require_pycocotools()
    task, release = checkpoint_task(DetectionTask, args, _DETECTORS, val_images=args.val_images,
                                    val_ann=args.val_ann, progress=not args.no_progress)
    metrics = engine_evaluate(task, eval_config(args), None if release is not None else args.checkpoint,
                              use_ema=args.ema)
    if not is_main_process():
        return 0
    if task.last_summary:
        print(task.last_summary.rstrip())
    shown = "  ".join(f"{k} {v:.2f} %" for k, v in metrics.items() if k.endswith(_STAT_NAMES[:3]))
    print(f"{args.checkpoint}: {int(metrics['images'])} images in {metrics['eval_time_s']:.1f} s  {shown}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    records = []

    def predict_one(task: DetectionTask, model, path: Path, img, stem: str) -> str:
        image = image_to_tensor(img)
        output = task.predict(model, [image], paste_masks=False)[0]  # masks pasted one box at a time when drawn
        records.extend(detection_records(output, str(path), task.class_names, task.category_ids(), image.shape[-2:],
                                         paste=task.paste_regions))
        drawn, n = draw_detections(image, output, task.class_names, args.score_thresh, paste=task.paste_regions)
        dst = save_png_atomic(drawn, out_dir / f"{stem}_det.png")
        return f"{path}: {len(output['scores'])} detection(s), {n} with score >= {args.score_thresh} drawn -> {dst}"

    def write_records(task: DetectionTask) -> None:
        dst = atomic_write(out_dir / "detections.json", lambda tmp: Path(tmp).write_text(
            json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8"))
        print(f"{len(records)} detection(s) -> {dst}")

    return predict_files(args, DetectionTask, predict_one, kinds=_DETECTORS, done=write_records)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = DETECTION_DEFAULTS
    p = sub.add_parser("detect", help="object detection / instance segmentation (RetinaNet, Mask R-CNN) on COCO-format data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="detect_command", metavar="{train,eval,predict,params}")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = cmds.add_parser("train", help="train a detector (the paper's 1x COCO recipe by default)",
                        description="Train RetinaNet or Mask R-CNN with a LIT backbone on COCO-format data "
                                    "(the authors' 1x recipe by default, see --print-config); resumable, "
                                    "torchrun-ready.")
    t.add_argument("--recipe", default=None, choices=tuple(RECIPE_OF.values()),
                   help="the authors' config (default: the one of --arch; see --print-config)")
    t.add_argument("--arch", default=None, choices=DETECTORS, help="retinanet (default) or mask_rcnn")
    t.add_argument("--train-images", default=None, help="folder of training images (required)")
    t.add_argument("--train-ann", default=None, help="COCO instances JSON of the training images (required)")
    t.add_argument("--val-images", default=None, help="folder of validation images")
    t.add_argument("--val-ann", default=None, help="COCO instances JSON of the validation images")
    t.add_argument("--epochs", type=positive_int, default=None, help=f"(recipe: {d['epochs']}, the 1x schedule)")
    t.add_argument("--lr-steps", type=positive_int, nargs="+", default=None,
                   help="epochs after which lr x 0.1 (recipe: 8 11)")
    t.add_argument("--warmup-iters", type=nonneg_int, default=None,
                   help=f"linear warm-up iterations (recipe: {d['warmup_iters']})")
    t.add_argument("--min-size", type=positive_int, nargs="+", default=None,
                   help="shorter image side (recipe: 800, single scale); several = multi-scale training, e.g. "
                        "640 672 704 736 768 800 (the last one is used for evaluation)")
    t.add_argument("--max-size", type=positive_int, default=None, help=f"longer-side limit (recipe: {d['max_size']})")
    add_backbone_args(t)
    add_init_args(t)
    add_engine_args(t, batch_size=d["batch_size"], lr=d["lr"], weight_decay=d["weight_decay"])
    t.set_defaults(func=one_line_warnings("detect")(_train))

    e = cmds.add_parser("eval", help="box / mask AP of a checkpoint with pycocotools",
                        description="Box AP (and mask AP for Mask R-CNN) of a `litvit detect train` checkpoint "
                                    "or one of the authors' releases on COCO-format data, with pycocotools; "
                                    "torchrun-ready. A release's classes are matched to the annotation file's "
                                    "categories by name: they must be the same set.")
    e.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by `litvit detect train`, or one of the authors' releases: its file "
                        "(mmdet format) or its name (retina_lit_ti, retina_lit_s, mask_rcnn_lit_ti, mask_rcnn_lit_s)")
    e.add_argument("--val-images", required=True, help="folder of the images to evaluate on")
    e.add_argument("--val-ann", required=True, help="COCO instances JSON of those images")
    add_eval_args(e, batch_size=2)
    e.set_defaults(func=one_line_warnings("detect")(_eval))

    r = cmds.add_parser("predict", help="draw a checkpoint's detections on images (PNG)",
                        description="Draw the boxes (and masks) a `litvit detect train` checkpoint or one of the "
                                    "authors' releases finds on images or folders of images: OUTPUT/NAME_det.png "
                                    "per image, and every detection (not only those drawn) in "
                                    "OUTPUT/detections.json: file_name, label, category, category_id, bbox "
                                    "[x, y, w, h], score, segmentation (COCO RLE) for Mask R-CNN.")
    add_predict_args(r)
    r.add_argument("--score-thresh", type=prob_arg, default=0.3, help="draw detections scoring at least this (0.3); detections.json holds all")
    r.set_defaults(func=one_line_warnings("detect")(_predict))

    q = cmds.add_parser("params", help="parameter counts of the paper's detectors beside the paper's",
                        description="Parameter counts of RetinaNet and Mask R-CNN with LIT-Ti and LIT-S "
                                    "backbones, beside the paper's.")
    q.add_argument("--num-classes", type=positive_int, default=80, help="object classes (default 80, COCO)")
    q.set_defaults(func=_params)
