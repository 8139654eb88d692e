"""Named training recipes: the paper's ImageNet settings, and a small one for the embedded digits.

A recipe is a flat dict of defaults for ``litvit train``; every key is also a command-line flag
(``lr`` is ``--lr``, ``embed_dims`` is ``--embed-dims``) and the flag wins. The keys and the
values every recipe starts from are in :data:`BASE`.

* ``lit-ti``: the DeiT recipe LIT-Ti was trained with (docs/architecture.md): AdamW, lr 5e-4 x batch/512, weight
  decay 0.05, eps 1e-8, cosine to 1e-5, 5 warm-up epochs from 1e-6, 300 epochs, drop path 0.1,
  RandAugment ``rand-m9-mstd0.5-inc1``, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing
  0.25, repeated augmentation (3), bicubic, fp16 AMP on CUDA; global batch 1024 (8 GPUs x 128).
  The offset predictors' weights train at lr x 0.01 in a group of their own (their bias at the
  full lr, without decay). Ablation models other than ``lit_ti`` train without drop path for
  their first 100 epochs (``drop_path_off_epochs``), as the authors' runs.
* ``lit-smb``: the Swin recipe of LIT-S/M/B: as above but 20 warm-up epochs from 5e-7, min lr 5e-6,
  both scaled by batch/512 like the lr, gradient clipping 5.0, no repeated augmentation; drop
  path from the model (0.2 / 0.3 / 0.5).
* ``litv2``: the authors' LITv2 recipe (their ``config.py`` and yaml, the same Swin trainer): the
  ``lit-smb`` settings with ``litv2_s`` (drop path from the model: 0.2 / 0.3 / 0.5 for S/M/B); the
  DTM offset predictors' weights at lr x 0.01 in their own group (their ``optimizer.py``:
  ``MODEL.OFFSET_LR_MULTI``), the offset bias with the other 1-D parameters at the full lr without
  decay.
* ``digits``: a LIT-Ti-shaped model with narrow stages at 32x32 on the embedded digits; about a
  minute on two CPU cores to >= 99% validation top-1 (what ``litvit demo`` runs).

Dense recipes (:data:`DENSE_RECIPES`, the authors' mmdetection 2.11 / mmsegmentation configs):
``retinanet-1x`` and ``mask-rcnn-1x`` for ``litvit detect train``, ``semantic-fpn-80k`` for
``litvit segment train``. Values that depend on the backbone's family (``pvt``: LIT-Ti and the
PVT ablations; ``swin``: LIT-S/M/B) are under ``by_family`` and resolved by
:func:`resolve_dense_recipe`.

Examples::

    >>> from litvit.recipes import get_recipe
    >>> r = get_recipe("lit-smb")
    >>> r["model"], r["warmup_epochs"], r["clip_grad"], r["repeated_aug"]
    ('lit_s', 20, 5.0, 0)

    litvit train --recipe lit-ti --data /data/imagenet --batch-size 1024 --accum-steps 8
    litvit train --recipe lit-smb --model lit_b --data /data/imagenet --amp bf16
    litvit train --recipe litv2 --model litv2_m --data /data/imagenet --print-config
"""
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["BASE", "RECIPES", "DENSE_RECIPES", "FAMILY_RECIPES", "DENSE_RULES_OF_FAMILY", "DENSE_FLAG_KEYS", "get_recipe",
           "default_recipe_for", "dense_family", "resolve_recipe", "resolve_dense", "resolve_dense_recipe"]

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
    scale_warmup_min_lr=False,  # also scale warmup_lr and min_lr by batch_size / 512 (the Swin trainer)
    offset_lr_mult=0.01,       # lr multiplier of the DTM offset predictors' weights (their own group)
    drop_path_off_epochs=None,  # epochs without drop path first; None: 100 for ablation models under lit-ti, else 0
    amp="fp16",                # on CUDA (none on the CPU, where fp16 autocast does not exist)
    sched_on="epoch",          # cosine updated per "epoch" (DeiT's trainer) or per "step" (Swin's)
    warmup_prefix=False,       # False: the cosine spans all epochs, warm-up overwrites its start (both trainers)
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
        BASE, model="lit_s", warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6, scale_warmup_min_lr=True, clip_grad=5.0,
        repeated_aug=0, sched_on="step"),
    "litv2": dict(
        BASE, model="litv2_s", warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6, scale_warmup_min_lr=True,
        clip_grad=5.0, repeated_aug=0, sched_on="step", offset_lr_mult=0.01),
    "digits": dict(
        BASE,
        model="lit_ti", img_size=32,
        embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 4, 4),
        drop_path=0.0,
        epochs=20, batch_size=64, lr=1.6e-2, min_lr=1e-5, warmup_epochs=2, warmup_lr=1e-5,
        weight_decay=0.05, clip_grad=5.0,
        aa=None, scale=(0.7, 1.0), hflip=0.0, color_jitter=0.0, reprob=0.0,
        mixup=0.0, cutmix=0.0, smoothing=0.1, repeated_aug=0,
        crop_pct=1.0, amp="none", sched_on="step", warmup_prefix=True,
    ),
}

# The backbone families of the dense configs: parameters without weight decay (mmcv's
# ``paramwise_cfg.custom_keys``, matched as substrings of the full parameter name).
_SWIN_NO_DECAY_KEYS = ("norm", "relative_position_bias_table", "absolute_pos_embed")

_DETECTION_1X = dict(
    task="detection",
    epochs=12,
    lr_steps=(8, 11),           # lr x lr_gamma after these epochs
    lr_gamma=0.1,
    warmup_iters=500,           # linear warm-up from lr x warmup_ratio
    warmup_ratio=0.001,
    weight_decay=1e-4,
    opt_eps=1e-8,
    clip_grad=None,
    offset_lr_mult=1.0,         # no offset multiplier in any dense config
    batch_size=2,               # per GPU; 8 GPUs x 2 = 16
    min_size=(800,),            # shorter side: single scale (1333, 800); several values = multi-scale training
    max_size=1333,
    test_min_size=800,
    hflip=0.5,
    size_divisor=32,
    fpn_channels=256,
    drop_path=None,             # the model's: 0.1 LIT-Ti, 0.2 LIT-S
    amp="none",
    grad_checkpointing=False,
)

DENSE_RECIPES: Dict[str, Dict[str, object]] = {
    "retinanet-1x": dict(
        _DETECTION_1X, arch="retinanet", lr=1e-4,
        fpn_stages=(1, 2, 3), extra_levels="p6p7_on_input_no_relu",
        by_family=dict(
            pvt=dict(no_decay_keys=(), out_norm_stages=(), pos_embed_interpolation="bilinear"),
            swin=dict(no_decay_keys=_SWIN_NO_DECAY_KEYS, out_norm_stages=(1, 2, 3), pos_embed_interpolation=None),
        )),
    "mask-rcnn-1x": dict(
        _DETECTION_1X, arch="mask_rcnn", lr=2e-4,
        fpn_stages=(0, 1, 2, 3), extra_levels="p6_maxpool",
        by_family=dict(
            pvt=dict(no_decay_keys=(), out_norm_stages=(), pos_embed_interpolation="bilinear"),
            swin=dict(no_decay_keys=_SWIN_NO_DECAY_KEYS, out_norm_stages=(1, 2, 3), pos_embed_interpolation=None,
                      amp="fp16", grad_checkpointing=True),
        )),
    "semantic-fpn-80k": dict(
        task="segmentation",
        iters=80_000,
        lr=1e-4,
        weight_decay=1e-4,
        opt_eps=1e-8,
        clip_grad=None,
        offset_lr_mult=1.0,
        poly_power=0.9,
        min_lr=1e-6,
        batch_size=2,           # per GPU; 8 GPUs x 2 = 16
        crop_size=512,
        scale=(2048, 512),      # (long, short) side limits at ratio 1, and the test scale
        ratio_range=(0.5, 2.0),
        cat_max_ratio=0.75,
        hflip=0.5,
        photometric="mmseg",    # PhotoMetricDistortion: brightness +-32, contrast/saturation 0.5-1.5, hue +-18 (0-180)
        fpn_channels=256,
        fpn_stages=(0, 1, 2, 3),
        head_channels=128,
        head_norm="SyncBN",     # BatchNorm, SyncBatchNorm under DDP
        dropout=0.1,
        drop_path=None,
        amp="none",
        grad_checkpointing=False,
        by_family=dict(
            pvt=dict(no_decay_keys=(), out_norm_stages=(), pos_embed_interpolation="bilinear"),
            swin=dict(no_decay_keys=(), out_norm_stages=(0, 1, 2, 3), pos_embed_interpolation=None),
        )),
}


def get_recipe(name: str) -> Dict[str, object]:
    """A copy of the named recipe; ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def resolve_dense_recipe(name: str, family: str) -> Dict[str, object]:
    """A dense recipe with the values of the backbone's ``family`` (``"pvt"`` or ``"swin"``) merged in.

    Examples::

        >>> resolve_dense_recipe("mask-rcnn-1x", "swin")["no_decay_keys"]
        ('norm', 'relative_position_bias_table', 'absolute_pos_embed')
    """
    if name not in DENSE_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(DENSE_RECIPES)}")
    recipe = dict(DENSE_RECIPES[name])
    by_family = recipe.pop("by_family")
    if family not in by_family:
        raise ValueError(f"unknown backbone family {family!r}; one of {', '.join(by_family)}")
    recipe.update(by_family[family])
    return recipe


# the ImageNet recipe of each model family (the family is in the variant's pretrained cfg:
# litvit.models.factory.model_facts), and the dense configs' rules each family follows (LITv2 has
# Swin's layout: no class token, all four stages from one width schedule)
FAMILY_RECIPES = {"pvt": "lit-ti", "swin": "lit-smb", "litv2": "litv2"}
DENSE_RULES_OF_FAMILY = {"pvt": "pvt", "swin": "swin", "litv2": "swin"}


def _family(model: str) -> str:
    from .models.factory import model_facts  # the model floor, above this one: read on use
    return model_facts(model)["family"]


def default_recipe_for(data: Optional[str], model: Optional[str]) -> str:
    """The recipe used when none is named: ``digits`` on the embedded data, else the paper's recipe
    of the model's family as its pretrained cfg names it (:data:`FAMILY_RECIPES`: ``lit-ti`` for
    the PVT-based models, ``lit-smb`` for the Swin-based ones, ``litv2`` for LITv2; LIT-Ti's when
    no model is named). ValueError for a family without a recipe."""
    if data in (None, "digits"):
        return "digits"
    family = _family(model or "lit_ti")
    if family not in FAMILY_RECIPES:
        raise ValueError(f"{model}: no ImageNet recipe for its family {family!r} (known: {', '.join(FAMILY_RECIPES)}); "
                         f"name one with --recipe")
    return FAMILY_RECIPES[family]


def dense_family(backbone: str) -> str:
    """The rules of the authors' dense configs ``backbone`` follows (``"pvt"`` or ``"swin"``,
    :data:`DENSE_RULES_OF_FAMILY`), from its pretrained cfg's family."""
    family = _family(backbone)
    if family not in DENSE_RULES_OF_FAMILY:
        raise ValueError(f"{backbone}: the dense recipes have no rules for its family {family!r}")
    return DENSE_RULES_OF_FAMILY[family]


def _given(flags: Any, key: str) -> Any:
    """The value of ``key`` among ``flags`` (a mapping, or an object with attributes such as parsed
    arguments); None when not given."""
    if flags is None:
        return None
    if isinstance(flags, Mapping):
        return flags.get(key)
    return getattr(flags, key, None)


def resolve_recipe(flags: Any = None, name: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """The classification recipe ``litvit train`` trains with: the named one (``name``, else
    ``flags.recipe``, else :func:`default_recipe_for` the data and model), the values given in
    ``flags`` on top (every :data:`BASE` key; None means not given), then what follows from them:
    ``aa`` off for ``""``/``none``/``off``, ``clip_grad`` off for <= 0, a warm-up of a tenth of a
    run shorter than the recipe's warm-up, ``drop_path_off_epochs`` of the authors' ablation runs
    (a recipe's fp16 stays: the run plan, :func:`litvit.engine.resolve_amp`, turns it off where the
    device has no fp16 autocast).

    Args:
        flags: a mapping or an object with attributes (parsed command-line arguments).
        name (str, optional): the recipe.

    Returns:
        (the recipe's name, the resolved recipe).

    Raises:
        ValueError: an unknown recipe, or ``scale`` MIN above MAX.

    Examples::

        >>> resolve_recipe(dict(data="/data/imagenet", model="lit_s", epochs=10))[1]["warmup_epochs"]
        1.0
    """
    name = name or _given(flags, "recipe") or default_recipe_for(_given(flags, "data"), _given(flags, "model"))
    recipe = get_recipe(name)
    for key in BASE:
        value = _given(flags, key)
        if value is not None:
            recipe[key] = value
    # 'off' spellings on the command line
    if isinstance(recipe.get("aa"), str) and recipe["aa"].lower() in ("", "none", "off"):
        recipe["aa"] = None
    if recipe.get("clip_grad") is not None and recipe["clip_grad"] <= 0:
        recipe["clip_grad"] = None
    if recipe["scale"][0] > recipe["scale"][1]:
        raise ValueError(f"--scale {recipe['scale'][0]:g} {recipe['scale'][1]:g}: MIN must not exceed MAX")
    if _given(flags, "warmup_epochs") is None and recipe["warmup_epochs"] >= recipe["epochs"]:
        recipe["warmup_epochs"] = recipe["epochs"] / 10  # a short run keeps a proportionate warm-up
    if recipe["drop_path_off_epochs"] is None:  # the authors' runs: ablation models only, under the DeiT recipe
        recipe["drop_path_off_epochs"] = 100 if name == "lit-ti" and recipe["model"] != "lit_ti" else 0
    return name, recipe  # a recipe's fp16 off CUDA: the run plan turns it off (engine.resolve_amp)


# recipe keys a dense ``train`` flag of the same name overrides (``--lr`` -> ``lr``, ...)
DENSE_FLAG_KEYS = ("epochs", "lr_steps", "warmup_iters", "min_size", "max_size", "iters", "crop_size", "scale",
                   "ratio_range", "batch_size", "lr", "weight_decay", "clip_grad", "amp", "drop_path", "fpn_channels",
                   "head_channels")


def resolve_dense(name: str, backbone: str, flags: Any = None) -> Dict[str, Any]:
    """The dense recipe ``name`` for ``backbone``'s family (:func:`dense_family`,
    :func:`resolve_dense_recipe`), the values given in ``flags`` on top (:data:`DENSE_FLAG_KEYS`;
    lists become tuples), plus ``recipe``, ``backbone_family``, ``overridden`` (the keys given) and
    ``derived`` (settings computed from others; a recipe's fp16 is turned off on the CPU by the run
    plan, :func:`litvit.engine.resolve_amp`).

    Examples::

        >>> r = resolve_dense("retinanet-1x", "lit_s", dict(lr=2e-4, device="cpu"))
        >>> r["backbone_family"], r["lr"], r["overridden"], r["no_decay_keys"][0]
        ('swin', 0.0002, ['lr'], 'norm')
    """
    family = dense_family(backbone)
    r = resolve_dense_recipe(name, family)
    r.update(recipe=name, backbone_family=family, overridden=[], derived=[])
    for key in DENSE_FLAG_KEYS:
        value = _given(flags, key)
        if key in r and value is not None:
            r[key] = tuple(value) if isinstance(value, list) else value
            r["overridden"].append(key)
    if _given(flags, "grad_checkpointing"):
        r["grad_checkpointing"] = True
    return r  # a recipe's fp16 off CUDA: the run plan turns it off (engine.resolve_amp)
