"""Command-line plumbing shared by ``litvit detect`` and ``litvit segment``: the engine, backbone,
eval and predict options, recipe resolution, the engine and optimizer parts of ``--print-config``,
image lists checked before a prediction starts, distinct output names, atomic PNG writes."""
import argparse
import functools
import os
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from PIL import Image

from ..data.classification import BAD_IMAGE_MODES
from ..data.io import check_image, find_images, read_image, scan_files
from ..errors import UnreadableImageError
from ..engine import RunPlan, TrainConfig, describe_param_groups, is_main_process
from ..models import MODEL_NAMES
from ..recipes import dense_family, resolve_dense
from ..tasks.records import task_from_checkpoint
from ..utils import atomic_write
from .args import (BATCH_SIZE_HELP, add_log_arg, check_json_object, check_model_kwargs, device_arg, float_arg,
                   int_arg, nonneg_int, positive_int, seed_arg, threads_arg)


def add_engine_args(p: argparse.ArgumentParser, batch_size: int, lr: float, weight_decay: float) -> None:
    """Options every dense ``train`` command passes to :class:`litvit.engine.TrainConfig`; the
    defaults shown are the recipe's (``--recipe``), which ``None`` stands for."""
    g = p.add_argument_group("training engine")
    g.add_argument("--output", default=None, help="run folder: checkpoints (last.pth, best.pth), logs, curves (required)")
    g.add_argument("--batch-size", type=positive_int, default=None, help=f"{BATCH_SIZE_HELP} (recipe: {batch_size})")
    g.add_argument("--accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float_arg(0, lo_open=True), default=None,
                   help=f"AdamW learning rate, not scaled by batch (recipe: {lr:g})")
    g.add_argument("--weight-decay", type=float_arg(0), default=None,
                   help=f"AdamW weight decay (recipe: {weight_decay:g})")
    g.add_argument("--clip-grad", type=float_arg(0, lo_open=True), default=None,
                   help="clip the gradient norm (recipe: none)")
    g.add_argument("--amp", default=None, choices=("none", "bf16", "fp16"),
                   help="mixed precision (recipe: none; fp16 on CUDA for LIT-S Mask R-CNN)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute backbone activations (less memory; on in the recipe of LIT-S Mask R-CNN)")
    g.add_argument("--print-config", action="store_true",
                   help="print the fully resolved configuration as JSON and exit (no data is read)")
    g.add_argument("--workers", type=nonneg_int, default=2, help="data-loader workers per process")
    g.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch CPU threads per process (default auto: fewer when other jobs load the CPU)")
    g.add_argument("--seed", type=seed_arg, default=0, help="seeds initialisation, data order and augmentation")
    g.add_argument("--resume", default="auto", help="'auto' (continue OUTPUT/last.pth if present), a path, or 'never'")
    g.add_argument("--resume-changed", action="store_true",
                   help="resume although settings differ from the checkpoint's (the new ones apply)")
    g.add_argument("--save-every-steps", type=nonneg_int, default=0, help="also checkpoint every N optimizer steps")
    g.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every N epochs")
    g.add_argument("--log-every", type=positive_int, default=20, help="log the loss every N steps")
    add_log_arg(g)
    g.add_argument("--max-steps", type=positive_int, default=None, help="stop after N optimizer steps (resumable)")
    g.add_argument("--device", type=device_arg(), default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """The LIT backbone options every dense ``train`` command takes."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default="lit_ti", choices=MODEL_NAMES, metavar="MODEL",
                   help=f"a LIT model name: {', '.join(MODEL_NAMES)} (default lit_ti)")
    g.add_argument("--pretrained", default=None, help="ImageNet checkpoint for the backbone (official or litvit)")
    g.add_argument("--frozen-stages", type=int_arg(-1, 4), default=-1,
                   help="-1: none; 0: patch embedding; n: also stages 1..n (at most 4)")
    g.add_argument("--norm-eval", action="store_true", help="keep the DTM BatchNorms in eval mode")
    g.add_argument("--drop-path", type=float_arg(0, 1, hi_open=True), default=None,
                   help="backbone stochastic depth (default: the model's, 0.1 LIT-Ti, 0.2 LIT-S, as the authors')")
    g.add_argument("--fpn-channels", type=positive_int, default=None,
                   help="FPN/head width (recipe: 256, as in the paper)")
    g.add_argument("--backbone-kwargs", default=None,
                   help="JSON object of litvit.create_model overrides, e.g. '{\"embed_dims\": [32, 64, 96, 128]}'")


def add_init_args(p: argparse.ArgumentParser) -> None:
    """``--init-checkpoint``: a dense ``train`` starts from a trained model (the authors' release or
    a litvit checkpoint of the same task), :func:`~litvit.models.official_dense.start_from_checkpoint`."""
    from ..models.official_dense import RELEASES
    kinds = sorted(RELEASES)
    p.add_argument("--init-checkpoint", default=None, metavar="FILE|RELEASE",
                   help="fine-tune: start from this model, the authors' release (a file, or a name: "
                        f"{', '.join(kinds)}) or a checkpoint of this command; its architecture comes from its "
                        "weights (--backbone names only its family, for the recipe's rules), a new classifier "
                        "when the classes differ (said in one line)")


def check_init_checkpoint(args: argparse.Namespace) -> None:
    """``--init-checkpoint`` names an existing file or a release (checked before any data is read)."""
    from ..models.official_dense import RELEASES
    spec = getattr(args, "init_checkpoint", None)
    if spec is not None and spec not in RELEASES and not os.path.isfile(spec):
        raise FileNotFoundError(f"--init-checkpoint {spec}: no such file (a file, or a release: {', '.join(RELEASES)})")


def match_init_checkpoint(args: argparse.Namespace, kinds: Sequence[str]) -> Optional[str]:
    """The kind of model ``--init-checkpoint`` holds (one of ``kinds``), checked against
    ``--arch`` (when the command has it and it is given) and ``--backbone``'s family, whose recipe
    rules the run takes; None without ``--init-checkpoint``. The architecture itself comes from
    the checkpoint's weights."""
    from ..models.official_dense.finetune import checkpoint_kind
    spec = getattr(args, "init_checkpoint", None)
    if spec is None:
        return None
    name = os.path.basename(spec)
    given = [flag for flag, attr in (("--fpn-channels", "fpn_channels"), ("--head-channels", "head_channels"),
                                     ("--backbone-kwargs", "backbone_kwargs"), ("--pretrained", "pretrained"))
             if getattr(args, attr, None) is not None]
    if given:
        raise ValueError(f"--init-checkpoint {name}: the model's architecture and weights come from it; leave out "
                         f"{', '.join(given)}")
    kind, family = checkpoint_kind(spec)
    names = dict(retinanet="a RetinaNet", mask_rcnn="a Mask R-CNN", semantic_fpn="a Semantic FPN")
    if kind not in kinds:
        raise ValueError(f"--init-checkpoint {name} holds {names[kind]}, which this command does not train")
    arch = getattr(args, "arch", None)
    if arch is not None and arch != kind:
        raise ValueError(f"--init-checkpoint {name} holds {names[kind]}; give --arch {kind} (or leave --arch out)")
    if dense_family(args.backbone) != family:
        which = "LIT-S (lit_s)" if family == "swin" else "LIT-Ti (lit_ti)"
        raise ValueError(f"--init-checkpoint {name} has a {which} backbone; give --backbone "
                         f"{'lit_s' if family == 'swin' else 'lit_ti'}, whose recipe rules apply")
    return kind


def add_eval_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """Options every dense ``eval`` command passes to :func:`eval_config`."""
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per process (default {batch_size})")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    p.add_argument("--workers", type=nonneg_int, default=2, help="data-loader workers per process")
    p.add_argument("--threads", type=threads_arg, default="auto", help="torch CPU threads (default auto)")
    p.add_argument("--device", type=device_arg(), default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def add_predict_args(p: argparse.ArgumentParser) -> None:
    """Options every dense ``predict`` command takes."""
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by the task's train command, or one of the authors' releases: "
                        "its file (mmdet/mmseg format) or its name (downloaded once into the torch hub cache)")
    p.add_argument("images", nargs="+", help="image files and/or folders of images (searched recursively)")
    p.add_argument("--output", default="predictions", help="folder for the outputs (default: predictions)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights (litvit checkpoints)")
    p.add_argument("--bad-images", default="fail", choices=BAD_IMAGE_MODES,
                   help="every input is checked before the first prediction: an unreadable image stops the "
                        "command before anything is written (fail, default) or is reported and left out (skip)")
    p.add_argument("--no-progress", action="store_true",
                   help="no bars (checking many images, downloading a release)")


def expand_images(inputs: Sequence[str]) -> List[Path]:
    """Image files named on the command line, folders replaced by the images inside (sorted):
    :func:`litvit.data.io.find_images`."""
    return find_images(inputs)


def output_stems(paths: Sequence[Path]) -> List[str]:
    """One output name per input image, distinct even when file names repeat: the file's stem;
    where stems collide, its path below the colliding files' common folder (``a__x``, ``b__x``),
    then with its extension (``x_jpg``), then numbered (the same file given twice).

    Examples::
        >>> output_stems([Path("a/x.jpg"), Path("b/x.jpg"), Path("b/y.png")])
        ['a__x', 'b__x', 'y']
    """
    full = [Path(os.path.abspath(p)) for p in paths]
    names = [p.stem for p in full]
    for rule in ("path", "suffix", "number"):
        counts = Counter(names)
        groups: Dict[str, List[int]] = {}
        for i, n in enumerate(names):
            if counts[n] > 1:
                groups.setdefault(n, []).append(i)
        if not groups:
            break
        for members in groups.values():
            if rule == "path":
                root = Path(os.path.commonpath([str(full[i].parent) for i in members]))
                for i in members:
                    rel = full[i].relative_to(root).with_suffix("")
                    names[i] = "__".join(rel.parts)
            elif rule == "suffix":
                for i in members:
                    names[i] = f"{names[i]}_{full[i].suffix.lstrip('.').lower()}"
            else:
                for k, i in enumerate(members[1:], start=2):
                    names[i] = f"{names[i]}_{k}"
    return names


def resolve_recipe(args: argparse.Namespace, name: str) -> Dict[str, Any]:
    """The dense recipe ``name`` for ``args.backbone``'s family, overridden by the flags given
    (:func:`litvit.recipes.resolve_dense`)."""
    return resolve_dense(name, args.backbone, args)


def check_output(args: argparse.Namespace) -> None:
    if not args.output:
        raise ValueError("--output is required (the run folder)")


def optimizer_summary(task, model, tc: TrainConfig, r: Dict[str, Any], plan: RunPlan) -> Dict[str, Any]:
    """The optimizer section of ``--print-config``: settings and each parameter group at the plan's lr."""
    return dict(type="AdamW", lr=plan.peak_lr, weight_decay=tc.weight_decay, eps=tc.opt_eps, betas=list(tc.opt_betas),
                clip_grad=tc.clip_grad, offset_lr_mult=tc.offset_lr_mult, no_decay_keys=list(r["no_decay_keys"]),
                param_groups=describe_param_groups(task.param_groups(model, tc), plan.peak_lr))


def train_config(args: argparse.Namespace, r: Dict[str, Any], epochs: int, iters: Optional[int] = None) -> TrainConfig:
    """The engine configuration of a dense run from its resolved recipe ``r`` and the run flags: ``epochs``
    long, or ``iters`` optimizer steps (then the engine derives the epochs)."""
    tc = TrainConfig(
        output_dir=args.output or "", epochs=epochs, batch_size=None, global_batch=int(r["batch_size"]),
        accum_steps=args.accum_steps,
        lr=float(r["lr"]), scale_lr=False, min_lr=float(r.get("min_lr", 0.0)), warmup_epochs=0.0,
        weight_decay=float(r["weight_decay"]), opt_eps=float(r["opt_eps"]), offset_lr_mult=float(r["offset_lr_mult"]),
        clip_grad=r["clip_grad"], amp=r["amp"], grad_checkpointing=bool(r["grad_checkpointing"]), seed=args.seed,
        workers=args.workers, save_every_steps=args.save_every_steps, resume=args.resume,
        log_every=args.log_every, log=tuple(args.log), eval_every=args.eval_every,
        max_steps=args.max_steps, iters=iters, resume_changed=args.resume_changed,
        threads=args.threads, device=args.device, progress=not args.no_progress,
        val_batch_size=getattr(args, "val_batch_size", None))
    # a refused resume names the changes of the flags given; the recipe's values and what follows
    # from them (the epochs of an iteration-based run) are only counted; a recipe's fp16 (defaulted)
    # is turned off off CUDA by the run plan
    tc.derived = tuple((["epochs"] if iters is not None else []) + r["derived"])
    tc.defaulted = tuple(k for k in r if k not in r["overridden"] and k not in tc.derived
                         and k not in ("recipe", "backbone_family", "overridden", "derived"))
    return tc


def eval_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(output_dir=tempfile.gettempdir(), batch_size=args.batch_size, amp=args.amp,
                       workers=args.workers, threads=args.threads, device=args.device, progress=not args.no_progress)


def backbone_kwargs(args: argparse.Namespace, r: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``--backbone-kwargs`` (a JSON object of :class:`litvit.models.LIT` arguments, each checked)
    plus the drop-path rate: the resolved recipe's ``r["drop_path"]`` (which ``--drop-path``
    overrides), else ``--drop-path``."""
    kwargs = check_json_object(args.backbone_kwargs, "--backbone-kwargs")
    check_model_kwargs(kwargs, "--backbone-kwargs", args.backbone)
    if args.drop_path is not None:
        kwargs["drop_path_rate"] = args.drop_path
    if r is not None and r.get("drop_path") is not None:
        kwargs["drop_path_rate"] = r["drop_path"]
    return kwargs


def print_parameter_table(rows, first: str, note: str) -> int:
    """The ``--params`` table of a dense command: model, backbone, parameters (and in millions),
    the paper's millions, backbone parameters; ``note`` below it."""
    print(f"{first:<14}{'backbone':<9}{'params':>13}{'(M)':>7}{'paper (M)':>11}{'backbone':>13}")
    for arch, bb, n, n_bb, paper in rows:
        print(f"{arch:<14}{bb:<9}{n:>13,}{n / 1e6:>7.1f}{paper:>11.0f}{n_bb:>13,}")
    print(note)
    return 0


def save_png_atomic(img: Image.Image, path: Path) -> Path:
    """Write a PNG through a temporary file in the same folder, then rename."""
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), fsync=False)


def backbone_summary(model, args: argparse.Namespace, r: Dict[str, Any]) -> Dict[str, Any]:
    """The backbone part of a dense ``--print-config``'s model section, read from the model built
    on the meta device: its grid, stochastic depth, out-norms, position-table interpolation, FPN."""
    from timm.layers import DropPath
    body = getattr(model.backbone, "body", model.backbone)  # the authors' modules: the backbone itself
    if hasattr(model, "neck"):
        fpn_stages = list(range(model.neck.start_level, model.neck.end_level))
    else:
        fpn_stages = list(model.backbone.fpn_stages)
    drop_path = max([m.drop_prob for m in model.modules() if isinstance(m, DropPath)], default=0.0)
    has_abs = any(stage.pos_embed is not None for stage in body.model.stages)
    return dict(backbone=args.backbone, backbone_family=r["backbone_family"],
                backbone_img_size=list(body.model.img_size), drop_path=round(drop_path, 6),
                out_norm_stages=sorted(int(i) for i in body.out_norms),
                pos_embed_interpolation=body.pos_embed_interpolation if has_abs else None,
                fpn_channels=r["fpn_channels"], fpn_stages=fpn_stages,
                frozen_stages=args.frozen_stages, norm_eval=args.norm_eval, pretrained=args.pretrained)


def engine_summary(tc: TrainConfig, args: argparse.Namespace, plan: RunPlan) -> Dict[str, Any]:
    """The engine section of a dense ``--print-config`` (``batch_size``: the global batch)."""
    return dict(batch_size=plan.global_batch, batch_per_process=plan.batch_per_process, accum_steps=tc.accum_steps,
                amp=plan.amp, grad_checkpointing=tc.grad_checkpointing, device=tc.device, seed=tc.seed,
                workers=tc.workers, output=args.output)


def check_train_args(args: argparse.Namespace, required: Sequence[str], what: str = "") -> None:
    """``--output`` and the task's data flags ``required`` (``"--data"``, ...) are given; ``what``
    says what they name."""
    check_output(args)
    if any(not getattr(args, flag.lstrip("-").replace("-", "_")) for flag in required):
        verb = "is" if len(required) == 1 else "are"
        raise ValueError(f"{' and '.join(required)} {verb} required" + (f" ({what})" if what else ""))


def note_random_backbone(args: argparse.Namespace) -> None:
    if args.pretrained is None and is_main_process():
        print("note: no --pretrained ImageNet checkpoint; the backbone starts from random weights")


def best_score(summary: Dict[str, Any]) -> str:
    """The best score of a dense ``train`` (box AP, mIoU: in %) and its epoch, or "-" when none was measured."""
    best = summary["best_score"]
    return "-" if best is None else f"{best:.2f} % (epoch {summary['best_epoch']})"


def written_files(summary: Dict[str, Any]) -> str:
    """The end of a dense ``train``'s last line: the checkpoints and curves :func:`fit` wrote, only
    those that exist (a run stopped by ``--max-steps`` inside its first epoch has no best.pth)."""
    ckpts = [summary[k] for k in ("last_checkpoint", "best_checkpoint") if os.path.isfile(summary[k])]
    text = f"checkpoints {', '.join(ckpts)}" if ckpts else "no checkpoint written"
    return text + (f"; curves {summary['curves']}" if os.path.isfile(summary["curves"]) else "")


def one_line_warnings(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[..., int]]:
    """Wrap a command's function so that the warnings raised while it runs (what the data checks
    repaired, ...) show as one line each, ``litvit <command>: warning: <message>``, instead of
    Python's file, line and source line."""
    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            def show(message, category, filename, lineno, file=None, line=None):
                print(f"litvit {command}: warning: {message}", file=file or sys.stderr)
            with warnings.catch_warnings():  # puts the previous showwarning back
                warnings.showwarning = show
                return func(args)
        return run
    return wrap


def open_release(args: argparse.Namespace, kinds: Sequence[str]):
    """The authors' release that ``--checkpoint`` names (a release name, downloaded on first use,
    or a file in mmcv's format), loaded by :func:`~litvit.models.official_dense.load_dense`; None
    for any other checkpoint (litvit's own). ValueError when the release is not one of ``kinds``
    or a flag does not apply to it."""
    from ..checkpoint import read_checkpoint
    from ..models.official_dense import dense_from_checkpoint, is_release
    from ..models.official_dense.load import checkpoint_file
    ckpt = read_checkpoint(checkpoint_file(args.checkpoint, progress=not args.no_progress))
    if not is_release(ckpt):
        return None
    model = dense_from_checkpoint(ckpt, args.checkpoint)
    if model.kind not in kinds:
        other = "litvit segment" if model.kind == "semantic_fpn" else "litvit detect"
        what = dict(retinanet="RetinaNet", mask_rcnn="Mask R-CNN", semantic_fpn="Semantic FPN")[model.kind]
        raise ValueError(f"{args.checkpoint} is a {what} release: use `{other}`")
    if getattr(args, "ema", False):
        raise ValueError(f"--ema: {args.checkpoint} is one of the authors' releases, which hold no EMA weights")
    if getattr(args, "amp", "none") != "none":
        raise ValueError(f"--amp {args.amp}: a release runs the authors' float32 inference")
    return model


def checkpoint_task(task_cls, args: argparse.Namespace, kinds: Sequence[str] = (), **settings):
    """``(task, release or None)`` of ``--checkpoint``: a release of one of ``kinds`` (see
    :func:`open_release`) with its own task (``task_cls.from_release``), else the task rebuilt from
    the checkpoint's record (:func:`~litvit.tasks.records.task_from_checkpoint`); ``settings`` (data
    paths, ``progress``) go to either."""
    release = open_release(args, kinds) if kinds else None
    if release is not None:
        return task_cls.from_release(release, **settings), release
    return task_from_checkpoint(args.checkpoint, task=task_cls.name, **settings), None


def model_from_checkpoint(task_cls, args: argparse.Namespace, kinds: Sequence[str] = ()):
    """``predict``'s task and model, in eval mode (:func:`checkpoint_task`): a release as loaded,
    else the model rebuilt from ``--checkpoint``'s record, its weights (or EMA weights with
    ``--ema``) loaded."""
    task, release = checkpoint_task(task_cls, args, kinds)
    if release is not None:
        return task, release.eval()
    model = task.build_model()
    task.load_weights(model, args.checkpoint, use_ema=args.ema)
    return task, model.eval()


def predict_files(args: argparse.Namespace, task_cls, predict_one: Callable[..., str], kinds: Sequence[str] = (),
                  done: Optional[Callable[[Any], None]] = None) -> int:
    """The body of a dense ``predict``: the inputs expanded and every one checked (header and end
    marker, :func:`~litvit.data.check_image`) before the model loads or anything is written; under
    ``--bad-images fail`` an unreadable one stops the command with one line naming it (and how many
    more there are), under ``skip`` each is reported on its own line and left out. Then, per image,
    ``predict_one(task, model, path, image, stem)`` writes its outputs and returns the line printed.

    ``kinds``: the kinds of the authors' releases the command also takes (:func:`model_from_checkpoint`);
    ``done(task)`` runs once every image has been predicted.

    Returns:
        the exit code, 0 (skipped images included, as classification's ``predict``).
    """
    files = expand_images(args.images)
    bad = dict(scan_files(files, check_image, progress=not args.no_progress, desc="checking images"))
    if bad and args.bad_images == "fail":
        first = bad[min(bad)]
        raise UnreadableImageError(first + (f" (and {len(bad) - 1} more; --bad-images skip reports them and goes "
                                            f"on)" if len(bad) > 1 else "") + "; nothing was written")
    task, model = model_from_checkpoint(task_cls, args, kinds)
    skipped = 0
    for i, (path, stem) in enumerate(zip(files, output_stems(files))):
        why = bad.get(i)
        if why is None:
            try:
                image = read_image(path)
            except UnreadableImageError as e:  # passed the cheap check, fails to decode
                if args.bad_images == "fail":
                    raise
                why = str(e)
        if why is not None:
            skipped += 1
            print(f"{path}: skipped: {why}")
            continue
        print(predict_one(task, model, path, image, stem))
    if done is not None:
        done(task)
    if skipped:
        print(f"{skipped} of {len(files)} image(s) skipped (unreadable)", file=sys.stderr)
    return 0
