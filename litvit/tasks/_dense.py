"""Command-line plumbing shared by ``litvit detect`` and ``litvit segment`` (engine options,
checkpoint metadata, atomic PNG writes)."""
import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from PIL import Image

from ..engine import TrainConfig, load_checkpoint
from ..utils import atomic_write


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the one that prints summaries."""
    return int(os.environ.get("RANK", 0)) == 0


def add_engine_args(p: argparse.ArgumentParser, batch_size: int, lr: float, weight_decay: float) -> None:
    """Options every dense ``train`` command passes to :class:`litvit.engine.TrainConfig`."""
    g = p.add_argument_group("training engine")
    g.add_argument("--output", required=True, help="run folder: checkpoints (last.pth, best.pth), logs, curves")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"images per process (default {batch_size})")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate, not scaled by batch (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help=f"AdamW weight decay (default {weight_decay:g})")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute backbone activations (less memory)")
    g.add_argument("--workers", type=int, default=2, help="data-loader workers per process")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", default="auto", help="'auto' (continue OUTPUT/last.pth if present), a path, or 'never'")
    g.add_argument("--save-every-steps", type=int, default=0, help="also checkpoint every N optimizer steps")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs")
    g.add_argument("--log-every", type=int, default=20, help="log the loss every N steps")
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (resumable)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """The LIT backbone options every dense ``train`` command takes."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default="lit_ti", help="a LIT model name (lit_ti, lit_s, ... or an ablation model)")
    g.add_argument("--pretrained", default=None, help="ImageNet checkpoint for the backbone (official or litvit)")
    g.add_argument("--frozen-stages", type=int, default=-1, help="-1: none; 0: patch embedding; n: also stages 1..n")
    g.add_argument("--norm-eval", action="store_true", help="keep the DTM BatchNorms in eval mode")
    g.add_argument("--drop-path", type=float, default=None,
                   help="backbone stochastic depth (default: the model's, 0.1 LIT-Ti, 0.2 LIT-S, as the authors')")
    g.add_argument("--fpn-channels", type=int, default=256, help="FPN/head width (256 as in the paper)")
    g.add_argument("--backbone-kwargs", default=None, help="JSON object of litvit.create_model overrides")


def add_eval_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """Options every dense ``eval`` command passes to :func:`eval_config`."""
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per process (default {batch_size})")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers per process")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def train_config(args: argparse.Namespace, epochs: int, max_steps: Optional[int] = None) -> TrainConfig:
    return TrainConfig(
        output_dir=args.output, epochs=epochs, batch_size=args.batch_size, accum_steps=args.accum_steps,
        lr=args.lr, scale_lr=False, min_lr=0.0, warmup_epochs=0.0, weight_decay=args.weight_decay,
        clip_grad=args.clip_grad, amp=args.amp, grad_checkpointing=args.grad_checkpointing, seed=args.seed,
        workers=args.workers, save_every_steps=args.save_every_steps, resume=args.resume,
        log_every=args.log_every, eval_every=args.eval_every,
        max_steps=max_steps if max_steps is not None else args.max_steps,
        device=args.device, progress=not args.no_progress, val_batch_size=getattr(args, "val_batch_size", None))


def eval_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(output_dir=tempfile.gettempdir(), batch_size=args.batch_size, amp=args.amp,
                       workers=args.workers, device=args.device, progress=False)


def json_arg(text: Optional[str], what: str) -> Dict[str, Any]:
    """A JSON object given on the command line (e.g. ``--backbone-kwargs '{"drop_path_rate": 0.2}'``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {text!r}")
    return value


def checkpoint_extra(path: str, task: str) -> Dict[str, Any]:
    """The task metadata stored by ``fit`` in a checkpoint, checked to belong to ``task``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("task") != task or not isinstance(ckpt.get("extra"), dict):
        found = ckpt.get("task") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a litvit {task} checkpoint (task: {found!r})")
    return ckpt["extra"]


def save_png_atomic(img: Image.Image, path: Path) -> Path:
    """Write a PNG through a temporary file in the same folder, then rename."""
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), fsync=False)
