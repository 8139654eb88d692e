"""``litvit train``, ``litvit validate``, ``litvit predict``, ``litvit demo``: image classification
from the command line, over :class:`litvit.tasks.classification.ClassificationTask` and the engine.

Run from a shell (``python -m litvit`` works as ``litvit``)::

    litvit demo                                                  # digits, >= 99% top-1 (times: README, Performance)
    litvit train --output runs/digits                            # the embedded digits, 'digits' recipe
    litvit train --recipe lit-ti --data /data/imagenet --output runs/lit_ti --batch-size 1024 --accum-steps 8
    litvit train --recipe lit-smb --model lit_m --data /data/imagenet --print-config   # the resolved recipe as JSON
    torchrun --nproc_per_node 2 -m litvit train --output runs/digits2 # same global batch, two processes (gloo on CPU)
    litvit train --output runs/digits                            # again: continues from runs/digits/last.pth
    litvit validate --checkpoint runs/digits/best.pth            # top-1 / top-5 / loss on the run's own data
    litvit validate --model lit_ti --checkpoint lit_ti.pth --data /data/imagenet --img-size 224 --crop-pct 0.875
    litvit predict --checkpoint runs/digits/best.pth some/folder --topk 3 --output predictions.csv

:func:`resolved_config` and :func:`run_training` are ``--print-config`` and ``litvit train`` as
functions of the parsed arguments.
"""
import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch.utils.data import DataLoader

from .. import data as D
from .. import engine
from ..engine import TrainConfig, print_main
from ..models import MODEL_NAMES, create_model
from ..recipes import BASE, RECIPES, get_recipe, resolve_recipe
from ..tasks.classification import ClassificationConfig, ClassificationTask, task_for_checkpoint, validate_checkpoint
from ..utils import atomic_path, count_parameters, plain, warn_grid_change
from .args import (BATCH_SIZE_HELP, add_log_arg, device_arg, float_arg, img_size_arg, nonneg_int, positive_int, print_config,
                   print_plan, prob_arg, seed_arg, threads_arg)

__all__ = ["add_parsers", "resolved_config", "run_training", "cmd_train", "cmd_validate", "cmd_predict", "cmd_demo"]

# the architecture flags (--embed-dims ...) a recipe may set, passed to create_model
ARCH_KEYS = ("embed_dims", "depths", "num_heads", "mlp_ratios")


def _resolve_recipe(args: argparse.Namespace) -> Tuple[str, Dict[str, Any]]:
    """:func:`litvit.recipes.resolve_recipe` of the parsed arguments."""
    return resolve_recipe(args)


def _setting_origins(args: argparse.Namespace, name: str, r: Dict[str, Any]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """``(defaulted, derived)`` for :class:`~litvit.engine.TrainConfig`: the settings no flag gave
    (the recipe's values), and those :func:`_resolve_recipe` and :func:`_train_config` computed from
    others; a refused resume names the changes of the settings given, and only counts these."""
    recipe = get_recipe(name)
    derived = []
    if args.warmup_epochs is None and r["warmup_epochs"] != recipe["warmup_epochs"]:
        derived.append("warmup_epochs")  # shortened with --epochs
    if getattr(args, "drop_path_off_epochs", None) is None and recipe["drop_path_off_epochs"] is None:
        derived.append("drop_path_off_epochs")  # from the recipe and the model
    if r["scale_warmup_min_lr"]:  # scaled with the batch size
        derived += [k for k in ("min_lr", "warmup_lr") if getattr(args, k, None) is None]
    key = dict({k: f"model_kwargs.{k}" for k in ARCH_KEYS}, drop_path="model_kwargs.drop_path_rate")
    defaulted = [key.get(k, k) for k in BASE if getattr(args, k, None) is None and key.get(k, k) not in derived]
    return tuple(defaulted), tuple(derived)


def _class_config(r: Dict[str, Any], args: argparse.Namespace) -> ClassificationConfig:
    model_kwargs = {k: tuple(r[k]) for k in ARCH_KEYS if r.get(k) is not None}
    if r.get("drop_path") is not None:
        model_kwargs["drop_path_rate"] = float(r["drop_path"])
    return ClassificationConfig(
        model=r["model"], data=args.data or D.DIGITS, img_size=int(r["img_size"]), model_kwargs=model_kwargs,
        init_checkpoint=args.init_checkpoint, pretrained=args.pretrained, bad_images=args.bad_images,
        seed=args.seed, drop_path_off_epochs=int(r["drop_path_off_epochs"]), sched_on=r["sched_on"],
        warmup_prefix=bool(r["warmup_prefix"]), aa=r["aa"], scale=tuple(r["scale"]), hflip=float(r["hflip"]),
        color_jitter=float(r["color_jitter"]), reprob=float(r["reprob"]), remode=r["remode"], recount=int(r["recount"]),
        mixup=float(r["mixup"]), cutmix=float(r["cutmix"]), mixup_prob=float(r["mixup_prob"]),
        mixup_switch_prob=float(r["mixup_switch_prob"]), smoothing=float(r["smoothing"]),
        repeated_aug=int(r["repeated_aug"]), interpolation=r["interpolation"], crop_pct=float(r["crop_pct"]))


def _train_config(r: Dict[str, Any], args: argparse.Namespace) -> TrainConfig:
    """The engine's settings; ``--batch-size`` is the global batch (the run plan splits it)."""
    per_process = engine.per_process_batch_size(int(r["batch_size"]), args.accum_steps)  # a check only
    if (r["mixup"] > 0 or r["cutmix"] > 0) and r["mixup_prob"] > 0 and per_process % 2:
        raise ValueError(f"mixup/cutmix need an even batch per process; batch size {r['batch_size']} gives "
                         f"{per_process} per process and accumulation step")
    scale = int(r["batch_size"]) / 512 if r["scale_warmup_min_lr"] else 1.0  # the Swin trainer scales all three
    return TrainConfig(
        output_dir=args.output, epochs=int(r["epochs"]), batch_size=None, global_batch=int(r["batch_size"]),
        accum_steps=args.accum_steps,
        lr=float(r["lr"]), min_lr=float(r["min_lr"]) * scale, warmup_epochs=float(r["warmup_epochs"]),
        warmup_lr=float(r["warmup_lr"]) * scale, weight_decay=float(r["weight_decay"]), opt_eps=float(r["opt_eps"]),
        clip_grad=r["clip_grad"], offset_lr_mult=float(r["offset_lr_mult"]), amp=r["amp"], ema_decay=float(r["ema_decay"]),
        grad_checkpointing=args.grad_checkpointing, seed=args.seed, workers=args.workers, threads=args.threads,
        val_batch_size=args.val_batch_size, save_every_steps=args.save_every_steps, resume=args.resume,
        resume_changed=args.resume_changed,
        log_every=args.log_every, log=tuple(args.log), eval_every=args.eval_every, max_steps=args.max_steps,
        device=args.device, progress=not args.no_progress, sync_bn=args.sync_bn)


def resolved_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything ``litvit train`` would train with, as plain values, without reading any data: the
    model is built on the meta device for its parameter groups (the class count comes from the
    data: 10 for the digits, else shown as null and built with 1000)."""
    name, r = _resolve_recipe(args)
    cfg = _class_config(r, args)
    tc = _train_config(r, args)
    tc.defaulted, tc.derived = _setting_origins(args, name, r)
    task = ClassificationTask(cfg)
    digits = cfg.data == D.DIGITS
    with torch.device("meta"):
        model = create_model(cfg.model, num_classes=10 if digits else 1000, img_size=cfg.img_size, **cfg.model_kwargs)
    from timm.layers import DropPath
    drop_path = max([m.drop_prob for m in model.modules() if isinstance(m, DropPath)], default=0.0)
    plan = print_plan(tc, task, model)
    overridden = sorted(k for k in BASE if getattr(args, k, None) is not None)
    return plain(dict(
        command="train", recipe=name, overridden=overridden,
        model=dict(name=cfg.model, img_size=cfg.img_size, num_classes=10 if digits else None,
                   drop_path=round(drop_path, 6), drop_path_off_epochs=cfg.drop_path_off_epochs,
                   kwargs=dict(cfg.model_kwargs), pretrained=cfg.pretrained, init_checkpoint=cfg.init_checkpoint,
                   parameters=count_parameters(model)),
        data=dict(data=str(cfg.data), train_split="train", eval_split=cfg.eval_split, bad_images=cfg.bad_images,
                  eval_img_size=cfg.eval_img_size or cfg.img_size, crop_pct=cfg.crop_pct,
                  interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std),
        optimizer=dict(type="AdamW", lr_per_512=tc.lr, lr=plan.peak_lr, weight_decay=tc.weight_decay, eps=tc.opt_eps,
                       betas=tc.opt_betas, clip_grad=tc.clip_grad, offset_lr_mult=tc.offset_lr_mult,
                       param_groups=engine.describe_param_groups(task.param_groups(model, tc), plan.peak_lr)),
        schedule=dict(type="cosine", sched_on=cfg.sched_on, epochs=tc.epochs, warmup_epochs=tc.warmup_epochs,
                      warmup_prefix=cfg.warmup_prefix, warmup_lr=tc.warmup_lr, min_lr=tc.min_lr,
                      scale_warmup_min_lr=bool(r["scale_warmup_min_lr"])),
        augmentation=dict(aa=cfg.aa, scale=cfg.scale, hflip=cfg.hflip, color_jitter=cfg.color_jitter,
                          reprob=cfg.reprob, remode=cfg.remode, recount=cfg.recount, mixup=cfg.mixup,
                          cutmix=cfg.cutmix, mixup_prob=cfg.mixup_prob, mixup_switch_prob=cfg.mixup_switch_prob,
                          smoothing=cfg.smoothing, repeated_aug=cfg.repeated_aug, interpolation=cfg.interpolation),
        engine=dict(batch_size=plan.global_batch, batch_per_process=plan.batch_per_process, accum_steps=tc.accum_steps,
                    amp=plan.amp, ema_decay=tc.ema_decay, grad_checkpointing=tc.grad_checkpointing,
                    sync_bn=tc.sync_bn, device=tc.device, seed=tc.seed, workers=tc.workers, output=tc.output_dir,
                    log=list(tc.log)),
        plan=plan.describe(),
    ))


def run_training(args: argparse.Namespace) -> Dict[str, Any]:
    """``litvit train`` as a function: resolve the recipe, build the task, call :func:`litvit.engine.fit`."""
    name, r = _resolve_recipe(args)
    task = ClassificationTask(dataclasses.replace(_class_config(r, args), recipe=name))
    tc = _train_config(r, args)
    tc.defaulted, tc.derived = _setting_origins(args, name, r)
    overridden = sorted(k for k in BASE if getattr(args, k, None) is not None)
    print_main(f"recipe {name}" + (f" (overridden: {', '.join(overridden)})" if overridden else "") +
           f" | model {r['model']} at {r['img_size']}px | data {task.cfg.data}")
    summary = engine.fit(task, tc)
    summary["recipe"] = name
    return summary


def _report(summary: Dict[str, Any]) -> None:
    final = summary.get("final") or {}
    if "val_top1" in final:
        print_main(f"done: {summary['epochs_done']} epochs, {summary['steps']} steps in {summary['train_time_s']:.0f} s | "
               f"val top-1 {final['val_top1']:.2f}%  top-5 {final['val_top5']:.2f}%  loss {final['val_loss']:.4f} | "
               f"best top-1 {summary['best_score']:.2f}% (epoch {summary['best_epoch']})")
    print_main(f"checkpoints: {summary['best_checkpoint']} (best), {summary['last_checkpoint']} (last)\n"
           f"logs: {summary['log']}, {summary['csv']} | curves: {summary['curves']}")


def cmd_train(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(resolved_config(args))
    _report(run_training(args))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    m = validate_checkpoint(
        args.checkpoint, batch_size=args.batch_size, workers=args.workers, amp=args.amp, device=args.device,
        use_ema=args.ema, threads=args.threads, model=args.model, data=args.data, split=args.split, img_size=args.img_size,
        crop_pct=args.crop_pct, interpolation=args.interpolation, bad_images=args.bad_images)
    print_main(f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  "
           f"({int(m['images'])} images, {m['eval_time_s']:.1f} s)")
    return 0


def _collate_predict(batch):
    good = [(x, i) for x, i, _ in batch if x is not None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], [(i, why) for x, i, why in batch if x is None]


def cmd_predict(args: argparse.Namespace) -> int:
    files = D.find_images(args.images)
    task, extra = task_for_checkpoint(args.checkpoint, model=args.model, img_size=args.img_size,
                                      crop_pct=args.crop_pct, interpolation=args.interpolation,
                                      bad_images=args.bad_images)
    engine.set_threads(args.threads)
    if args.bad_images == "fail":  # every file checked (cheaply) before the model runs
        bad = D.scan_files(files, D.check_image, desc="checking images")
        if bad:
            raise D.UnreadableImageError(bad[0][1] + (f" (and {len(bad) - 1} more; --bad-images skip reports them "
                                                      f"and goes on)" if len(bad) > 1 else ""))
    if task.classes is None:  # an official release: its classifier's size unless --num-classes says otherwise
        n = args.num_classes or task.checkpoint_classes or 1000
        task.classes = _imagenet_names() if n == 1000 else [str(i) for i in range(n)]
    model = task.build_model()
    task.load_weights(model, args.checkpoint)
    model.eval()
    warn_grid_change("predict", task.cfg.img_size, task.cfg.eval_img_size)
    ds = D.ImageList(files, task._transform(False), with_reasons=True)  # a skipped file keeps its own row
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate_predict)
    k = min(args.topk, len(task.classes))
    rows: Dict[int, Any] = {}
    from tqdm import tqdm
    with torch.inference_mode():
        for images, idx, skipped in tqdm(loader, desc="predict", disable=len(files) <= args.batch_size, file=sys.stderr):
            for i, why in skipped:
                if args.bad_images == "fail":
                    raise D.UnreadableImageError(why)
                rows[i] = why
            if images is None:
                continue
            prob = model(images).float().softmax(dim=1)
            p, c = prob.topk(k, dim=1)
            for i, pi, ci in zip(idx, p.tolist(), c.tolist()):
                rows[i] = [(task.classes[j], q) for j, q in zip(ci, pi)]
    n_skipped = sum(isinstance(rows[i], str) for i in range(len(files)))
    if args.output:  # the file first (UTF-8 whatever the console's encoding): nothing is lost if printing fails
        out = Path(args.output)
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            skip_column = ["skipped"] if args.bad_images == "skip" else []  # why a file has no prediction
            w.writerow(["image"] + [h for r in range(1, k + 1) for h in (f"class{r}", f"prob{r}")] + skip_column)
            for i, path in enumerate(files):
                preds = rows[i]
                if isinstance(preds, str):
                    w.writerow([str(path)] + [""] * (2 * k) + [preds])
                else:
                    w.writerow([str(path)] + [v for name, q in preds for v in (name, f"{q:.6f}")] + [""] * len(skip_column))
    for i, path in enumerate(files):
        preds = rows[i]
        if isinstance(preds, str):
            print(f"{path}\tskipped: {preds}")
        else:
            print(f"{path}\t" + "  ".join(f"{name} {q:.3f}" for name, q in preds))
    if n_skipped:
        print(f"{n_skipped} of {len(files)} image(s) skipped (unreadable)", file=sys.stderr)
    if args.output:
        print(f"{len(files) - n_skipped} predictions ({n_skipped} skipped) written to {args.output}", file=sys.stderr)
    return 0


def _imagenet_names() -> List[str]:
    try:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    except Exception:  # an older timm without the label tables
        return [str(i) for i in range(1000)]


def cmd_demo(args: argparse.Namespace) -> int:
    """``litvit train`` with the digits recipe into ``runs/demo``, then the best checkpoint
    re-evaluated through ``validate``'s code path; exit 1 if it is below 99% top-1."""
    if args.print_config:
        return print_config(resolved_config(args))
    t0 = time.perf_counter()
    summary = run_training(args)
    _report(summary)
    best = str(Path(summary["best_checkpoint"]).resolve())
    m = validate_checkpoint(best, batch_size=256, quiet=True)
    ok = m["top1"] >= 99.0
    print_main(f"\nLIT on the embedded digits: validation top-1 {m['top1']:.2f}% on {int(m['images'])} images "
           f"(target >= 99%: {'reached' if ok else 'NOT reached'}), {time.perf_counter() - t0:.0f} s in all\n"
           f"  checkpoint  {best}\n  curves      {Path(summary['curves']).resolve()}\n"
           f"  logs        {Path(summary['log']).resolve()}, {Path(summary['csv']).resolve()}")
    return 0 if ok else 1


# --- argument parsers --------------------------------------------------------------------------------

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")


def aa_arg(text: str) -> str:
    """``--aa``: a timm auto-augment policy string (checked by building it) or none/off."""
    if text.lower() in ("", "none", "off"):
        return text
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    build = (rand_augment_transform if text.startswith("rand") else
             augment_and_mix_transform if text.startswith("augmix") else auto_augment_transform)
    try:
        build(text, hparams)
    except Exception:  # timm asserts or raises on unknown policies and sections
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a timm auto-augment policy (e.g. rand-m9-mstd0.5-inc1, augmix-m5-w3, original, "
            f"v0; 'none' turns it off)") from None
    return text


aa_arg.__name__ = "policy"


def _add_train_args(p: argparse.ArgumentParser, output: str = "runs/train") -> None:
    g = p.add_argument_group("recipe and data")
    g.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help=f"named defaults: {', '.join(RECIPES)} (default: digits on the embedded data, "
                        "else the paper's recipe of the model's family)")
    g.add_argument("--data", default=None,
                   help="'digits' (embedded, default), a folder with train/<class>/ and val/<class>/, or tar shards "
                        "of one (litvit shards): 'OUT/train-{000000..000099}.tar', validated on the val shards "
                        "listed beside them")
    g.add_argument("--output", default=output, help=f"checkpoints, logs and curves (default: {output})")
    g.add_argument("--bad-images", default="fail", choices=D.BAD_IMAGE_MODES,
                   help="an unreadable image stops the run before training starts, naming it (fail), or is "
                        "left out with a warning (skip)")
    g = p.add_argument_group("model (recipe values unless given)")
    g.add_argument("--model", default=None, choices=MODEL_NAMES, metavar="MODEL", help=f"one of {', '.join(MODEL_NAMES)}")
    g.add_argument("--img-size", type=img_size_arg, default=None, help="training resolution, a multiple of 32")
    g.add_argument("--drop-path", type=float_arg(0, 1, hi_open=True), default=None, help="stochastic depth rate, [0, 1)")
    g.add_argument("--embed-dims", type=positive_int, nargs=4, default=None, metavar=("C1", "C2", "C3", "C4"),
                   help="stage widths")
    g.add_argument("--depths", type=positive_int, nargs=4, default=None, metavar=("D1", "D2", "D3", "D4"),
                   help="blocks per stage")
    g.add_argument("--num-heads", type=positive_int, nargs=4, default=None, metavar=("H1", "H2", "H3", "H4"),
                   help="attention heads per stage (each must divide its width)")
    g.add_argument("--mlp-ratios", type=float_arg(0, lo_open=True), nargs=4, default=None,
                   metavar=("R1", "R2", "R3", "R4"), help="MLP expansion per stage")
    g.add_argument("--pretrained", action="store_true", help="start from the official release")
    g.add_argument("--init-checkpoint", default=None, help="start from these weights (official or litvit)")
    g = p.add_argument_group("optimisation (recipe values unless given)")
    g.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    g.add_argument("--batch-size", type=positive_int, default=None, help=BATCH_SIZE_HELP)
    g.add_argument("--accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=float_arg(0, lo_open=True), default=None,
                   help="peak lr per 512 images (scaled by batch/512)")
    g.add_argument("--min-lr", type=float_arg(0), default=None, help="end of the cosine schedule")
    g.add_argument("--warmup-epochs", type=float_arg(0), default=None, help="linear warm-up length in epochs")
    g.add_argument("--warmup-lr", type=float_arg(0), default=None, help="lr at the first step of the warm-up")
    g.add_argument("--weight-decay", type=float_arg(0), default=None, help="AdamW weight decay")
    g.add_argument("--opt-eps", type=float_arg(0, lo_open=True), default=None, help="AdamW epsilon")
    g.add_argument("--clip-grad", type=float_arg(0), default=None, help="max gradient norm (0: off)")
    g.add_argument("--ema-decay", type=float_arg(0, 1, hi_open=True), default=None, help="EMA of the weights (0: off)")
    g.add_argument("--offset-lr-mult", type=float_arg(0), default=None,
                   help="lr multiplier of the DTM offset predictors' weights (recipe: 0.01)")
    g.add_argument("--drop-path-off-epochs", type=nonneg_int, default=None,
                   help="first epochs without drop path (recipe: 100 for ablation models under lit-ti, else 0)")
    g = p.add_argument_group("augmentation (recipe values unless given)")
    g.add_argument("--aa", type=aa_arg, default=None, help="RandAugment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)")
    g.add_argument("--scale", type=float_arg(0, 1, lo_open=True), nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random-resized-crop area range, 0 < MIN <= MAX <= 1")
    g.add_argument("--hflip", type=prob_arg, default=None, help="horizontal flip probability")
    g.add_argument("--color-jitter", type=float_arg(0), default=None, help="colour jitter strength (without --aa)")
    g.add_argument("--reprob", type=prob_arg, default=None, help="random erasing probability")
    g.add_argument("--remode", default=None, choices=("pixel", "rand", "const"), help="random erasing fill")
    g.add_argument("--recount", type=positive_int, default=None, help="random erasing boxes per image")
    g.add_argument("--mixup", type=float_arg(0), default=None, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float_arg(0), default=None, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=prob_arg, default=None, help="probability of mixing a batch")
    g.add_argument("--mixup-switch-prob", type=prob_arg, default=None, help="probability of cutmix instead of mixup")
    g.add_argument("--smoothing", type=float_arg(0, 1, hi_open=True), default=None, help="label smoothing")
    g.add_argument("--repeated-aug", type=nonneg_int, default=None, help="repeats per image (0: off)")
    g.add_argument("--interpolation", default=None, choices=INTERPOLATIONS, help="resize filter (recipes: bicubic)")
    g.add_argument("--crop-pct", type=float_arg(0, 1, lo_open=True), default=None,
                   help="evaluation: resize to img_size / crop_pct, centre crop")
    g = p.add_argument_group("run")
    g.add_argument("--resume", default="auto",
                   help="auto (continue from OUTPUT/last.pth if there), never (refuse to overwrite), or a checkpoint")
    g.add_argument("--resume-changed", action="store_true",
                   help="resume although settings differ from the checkpoint's (the new ones apply)")
    g.add_argument("--seed", type=seed_arg, default=0, help="seeds initialisation, data order and augmentation")
    g.add_argument("--amp", default=None, choices=engine.AMP_MODES,
                   help="none, bf16 (CPU or CUDA), fp16 (CUDA); default: the recipe's (fp16 on CUDA for the paper's)")
    g.add_argument("--print-config", action="store_true",
                   help="print the fully resolved configuration as JSON and exit (no data is read)")
    g.add_argument("--device", type=device_arg(), default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--workers", type=nonneg_int, default=0, help="data-loader processes per rank")
    g.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch CPU threads per process; auto (default): torch's default on an idle machine, "
                        "fewer when the load average shows other jobs (see README, 'Threads')")
    g.add_argument("--val-batch-size", type=positive_int, default=None, help="evaluation batch per process")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    g.add_argument("--save-every-steps", type=nonneg_int, default=0, help="also checkpoint every N steps (0: epoch ends)")
    g.add_argument("--log-every", type=positive_int, default=10, help="log the loss every N steps")
    add_log_arg(g)
    g.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every N epochs")
    g.add_argument("--max-steps", type=positive_int, default=None, help="stop (checkpointed) after N steps")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def _add_eval_args(p: argparse.ArgumentParser, predict: bool = False) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a litvit checkpoint or safetensors export (model and classes inside) or an official release")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, metavar="MODEL",
                   help="model of an official checkpoint (default: the registered model its weights fit; "
                        "a litvit one names its own)")
    if not predict:
        p.add_argument("--data", default=None,
                       help="'digits', a dataset folder or tar shards ('OUT/val-{000000..000009}.tar', evaluated "
                            "whatever --split says) (default: the checkpoint's)")
        p.add_argument("--split", default="val", help="sub-folder to evaluate (default: val)")
    else:
        p.add_argument("--num-classes", type=positive_int, default=None,
                       help="classes of an official checkpoint (default: its classifier's; "
                            "1000 are named as ImageNet's)")
        p.add_argument("--topk", type=positive_int, default=5, help="classes printed per image (default 5)")
        p.add_argument("--output", default=None,
                       help="write predictions to this CSV (UTF-8; a row per file, a skipped one with the reason)")
    p.add_argument("--img-size", type=img_size_arg, default=None, help="evaluation resolution (multiple of 32)")
    p.add_argument("--crop-pct", type=float_arg(0, 1, lo_open=True), default=None,
                   help="resize to img_size / crop_pct, centre crop")
    p.add_argument("--interpolation", default=None, choices=INTERPOLATIONS, help="resize filter (default: the checkpoint's)")
    if not predict:
        p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    p.add_argument("--workers", type=nonneg_int, default=0, help="data-loader processes")
    p.add_argument("--threads", type=threads_arg, default="auto", help="torch CPU threads (default auto, as for train)")
    p.add_argument("--bad-images", default="fail", choices=D.BAD_IMAGE_MODES,
                   help="an unreadable image stops the command (fail) or is reported and left out (skip)")
    if not predict:
        p.add_argument("--amp", default="none", choices=engine.AMP_MODES, help="mixed precision")
        p.add_argument("--device", type=device_arg(), default="auto", help="auto, cpu, cuda, cuda:N")


_HELP = dict(  # plain text; argparse %-formats help= strings, so "%" is doubled where they are used as such
    train="train a LIT classifier (the embedded digits by default; torchrun for several processes)",
    validate="top-1 / top-5 / loss of a checkpoint (litvit or official) on a dataset",
    predict="classify the images of a folder with a checkpoint",
    demo="train LIT on the embedded digits to >= 99% validation top-1 and say where the results are",
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=_HELP["train"], description=_HELP["train"])
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("validate", help=_HELP["validate"], description=_HELP["validate"])
    _add_eval_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("predict", help=_HELP["predict"], description=_HELP["predict"])
    p.add_argument("images", help="an image file or a folder of images")
    _add_eval_args(p, predict=True)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("demo", help=_HELP["demo"].replace("%", "%%"),
                       description=_HELP["demo"] + " (runs/demo); every `litvit train` flag works")
    _add_train_args(p, output="runs/demo")
    # one thread: the demo's model is small (README, "Threads")
    p.set_defaults(func=cmd_demo, recipe="digits", threads=1)


# the parser and config builders of ``litvit train`` by public names (scripts and tests build a run as
# the command does; the recipe itself is :func:`litvit.recipes.resolve_recipe`)
add_train_args = _add_train_args
class_config = _class_config
train_config = _train_config
