"""LIT models, registered in timm's registry on import (``timm.create_model('lit_s')`` works)."""
from typing import Optional

import timm

from .convert import CheckpointMismatchError, checkpoint_filter_fn, load_checkpoint
from .lit import LIT, Attention, Block, LITStage, default_cfgs

__all__ = ["LIT", "Attention", "Block", "LITStage", "CheckpointMismatchError", "checkpoint_filter_fn",
           "create_model", "list_models", "load_checkpoint", "MODEL_NAMES"]

MODEL_NAMES = tuple(sorted({name.split(".")[0] for name in default_cfgs}))


def list_models() -> tuple:
    """Names of every LIT model and ablation model litvit registers."""
    return MODEL_NAMES


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        **overrides,
) -> LIT:
    """Build a LIT model by name.

    Args:
        name (str): one of :func:`list_models` (``lit_ti``, ``lit_s``, ``lit_m``, ``lit_b``, ablations).
        pretrained (bool): load the official ImageNet-1K release (downloaded once by timm's hub
            machinery; ``pretrained_cfg_overlay=dict(file=...)`` points it at a local copy).
        checkpoint_path (str, optional): a checkpoint file to load after building: an official
            release (bare or ``{'model': ...}``) or a litvit training checkpoint.
        **overrides: constructor arguments, e.g. ``img_size``, ``in_chans``, ``num_classes``,
            ``embed_dims``, ``depths``, ``num_heads``, ``mlp_ratios``, ``drop_path_rate``,
            ``fused_attn``, ``dtm_impl``, ``features_only``, ``out_indices``.

    Examples::
        >>> import torch, litvit
        >>> m = litvit.create_model('lit_ti', num_classes=10, img_size=64)
        >>> m(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    model = timm.create_model(name, pretrained=pretrained, **overrides)
    if checkpoint_path is not None:
        target = getattr(model, "model", model)  # features_only wraps the model
        load_checkpoint(target, checkpoint_path)
    return model
