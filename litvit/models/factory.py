"""Building LIT models by name and loading weights into them."""
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import timm
from torch import nn

from ..checkpoint import read_checkpoint
from ..errors import CheckpointMismatchError
from .convert import checkpoint_filter_fn
from .lit import LIT, default_cfgs

__all__ = ["MODEL_NAMES", "list_models", "create_model", "load_weights", "load_checkpoint"]

MODEL_NAMES = tuple(sorted({name.split(".")[0] for name in default_cfgs}))

_logger = logging.getLogger(__name__)


def list_models() -> tuple:
    """Names of every LIT model and ablation model litvit registers."""
    return MODEL_NAMES


def load_weights(model: nn.Module, path: Union[str, Path], use_ema: bool = False) -> Dict[str, list]:
    """Load a checkpoint file (official or litvit, any wrapping) into a LIT model: read by
    :func:`litvit.checkpoint.read_checkpoint`, fitted by :func:`checkpoint_filter_fn`.

    Args:
        model (LIT): the model.
        path (str | Path): checkpoint file.
        use_ema (bool): take ``model_ema`` weights from a litvit training checkpoint when present.

    Returns:
        dict with ``missing`` keys left at their initialisation (only the classifier, when the
        checkpoint's number of classes differs).
    """
    ckpt = read_checkpoint(path)
    if use_ema and isinstance(ckpt, Mapping) and isinstance(ckpt.get("model_ema"), Mapping):
        ckpt = ckpt["model_ema"]
    try:
        sd = checkpoint_filter_fn(ckpt, model)
    except CheckpointMismatchError as e:
        if str(path) in str(e):
            raise
        raise CheckpointMismatchError(f"{path}: {e}") from None
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys:
        _logger.warning("classifier not loaded from %s (another number of classes); it keeps its initialisation", path)
    return {"missing": list(result.missing_keys)}


load_checkpoint = load_weights  # the name of litvit <= 0.1 (``litvit.load_checkpoint(model, path)``)


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
        load_weights(target, checkpoint_path)
    return model
