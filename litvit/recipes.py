"""Named training recipes: the paper's ImageNet settings, and a small one for the embedded digits.

A recipe is a flat dict of defaults for ``litvit train``; every key is also a command-line flag
(``lr`` is ``--lr``, ``embed_dims`` is ``--embed-dims``) and the flag wins. The keys and the
values every recipe starts from are in :data:`BASE`.

* ``lit-ti``: the DeiT recipe LIT-Ti was trained with (docs/architecture.md): AdamW, lr 5e-4 x batch/512, weight
  decay 0.05, eps 1e-8, cosine to 1e-5, 5 warm-up epochs from 1e-6, 300 epochs, drop path 0.1,
  RandAugment ``rand-m9-mstd0.5-inc1``, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing
  0.25, repeated augmentation (3), bicubic; global batch 1024 (8 GPUs x 128).
* ``lit-smb``: the Swin recipe of LIT-S/M/B: as above but 20 warm-up epochs from 5e-7, min lr 5e-6,
  gradient clipping 5.0, no repeated augmentation; drop path from the model (0.2 / 0.3 / 0.5).
* ``digits``: a LIT-Ti-shaped model with narrow stages at 32x32 on the embedded digits; about a
  minute on two CPU cores to >= 99% validation top-1 (what ``litvit demo`` runs).

Examples::

    >>> from litvit.recipes import get_recipe
    >>> r = get_recipe("lit-smb")
    >>> r["model"], r["warmup_epochs"], r["clip_grad"], r["repeated_aug"]
    ('lit_s', 20, 5.0, 0)

    litvit train --recipe lit-ti --data /data/imagenet --batch-size 1024 --accum-steps 8
    litvit train --recipe lit-smb --model lit_b --data /data/imagenet --amp bf16
"""
from typing import Dict, Optional

__all__ = ["BASE", "RECIPES", "get_recipe", "default_recipe_for"]

# Every key a recipe may set, with the value used when neither the recipe nor a flag sets it.
BASE: Dict[str, object] = dict(
    # model
    model="lit_ti",
    img_size=224,
    drop_path=None,            # None: the model's own default (0.1 LIT-Ti, 0.2/0.3/0.5 LIT-S/M/B)
    embed_dims=None, depths=None, num_heads=None, mlp_ratios=None,   # None: the model's own
    # schedule and optimizer (batch_size is the global batch per optimizer step)
    epochs=300,
    batch_size=1024,
    lr=5e-4,                   # per 512 images: the optimizer uses lr * batch_size / 512
    min_lr=1e-5,
    warmup_epochs=5,
    warmup_lr=1e-6,
    weight_decay=0.05,
    opt_eps=1e-8,
    clip_grad=None,
    ema_decay=0.0,
    # augmentation
    aa="rand-m9-mstd0.5-inc1",
    scale=(0.08, 1.0),
    hflip=0.5,
    color_jitter=0.4,
    reprob=0.25,
    remode="pixel",
    recount=1,
    mixup=0.8,
    cutmix=1.0,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    smoothing=0.1,
    repeated_aug=3,            # repeats per image (timm RepeatAugSampler); 0 turns it off
    interpolation="bicubic",
    crop_pct=0.875,
)

RECIPES: Dict[str, Dict[str, object]] = {
    "lit-ti": dict(BASE),
    "lit-smb": dict(
        BASE, model="lit_s", warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6, clip_grad=5.0, repeated_aug=0),
    "digits": dict(
        BASE,
        model="lit_ti", img_size=32,
        embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 4, 4),
        drop_path=0.0,
        epochs=20, batch_size=64, lr=1.6e-2, min_lr=1e-5, warmup_epochs=2, warmup_lr=1e-5,
        weight_decay=0.05, clip_grad=5.0,
        aa=None, scale=(0.7, 1.0), hflip=0.0, color_jitter=0.0, reprob=0.0,
        mixup=0.0, cutmix=0.0, smoothing=0.1, repeated_aug=0,
        crop_pct=1.0,
    ),
}


def get_recipe(name: str) -> Dict[str, object]:
    """A copy of the named recipe; ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def default_recipe_for(data: Optional[str], model: Optional[str]) -> str:
    """The recipe used when none is named: ``digits`` on the embedded data, else the paper's recipe
    of the model's family (``lit-smb`` for the Swin-based models, ``lit-ti`` otherwise)."""
    if data in (None, "digits"):
        return "digits"
    if model is not None and model.startswith(("lit_s", "lit_m", "lit_b")):
        return "lit-smb"
    return "lit-ti"
