"""Building LIT models by name, loading weights into them, and naming the model a bare
checkpoint holds."""
import functools
from typing import Dict, List, Mapping, Optional, Tuple, Union

import timm
import torch

from ..errors import CheckpointMismatchError
from .convert import load_weights, official_to_litvit, unwrap_state_dict
from .lit import LIT, default_cfgs
from .litv2 import LITv2, default_cfgs as _litv2_cfgs

__all__ = ["MODEL_NAMES", "FAMILIES", "list_models", "create_model", "model_facts", "load_weights", "load_checkpoint",
           "models_fitting"]

MODEL_NAMES = tuple(sorted({name.split(".")[0] for name in (*default_cfgs, *_litv2_cfgs)}))


# the families a variant's pretrained cfg may name (LITPretrainedCfg.family)
FAMILIES = ("pvt", "swin", "litv2")


def model_facts(name: str) -> Dict[str, object]:
    """What the registered variant ``name`` is, read from its pretrained cfg without building it:
    ``family`` (one of :data:`FAMILIES`), ``stage_channels`` (each stage's width) and
    ``dense_img_size`` (``{"detection": 800, "segmentation": 512}`` for relative position tables,
    else None). ValueError for an unknown name or a cfg without a known family.

    Examples::

        >>> model_facts("lit_s")["family"], model_facts("lit_ti")["stage_channels"]
        ('swin', (64, 128, 320, 512))
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    cfg = timm.models.get_pretrained_cfg(name)
    family = getattr(cfg, "family", None)
    if family not in FAMILIES:
        raise ValueError(f"the pretrained cfg of {name} names no known family ({family!r}; one of {', '.join(FAMILIES)})")
    dense = getattr(cfg, "dense_img_size", None)
    return dict(family=family, stage_channels=tuple(cfg.stage_channels), dense_img_size=dict(dense) if dense else None)


def list_models() -> tuple:
    """Names of every LIT and LITv2 model and ablation model litvit registers."""
    return MODEL_NAMES


# the name of litvit <= 0.1 (``litvit.load_checkpoint(model, path)``: weights into a model); not
# ``litvit.engine.load_checkpoint``, the old name of litvit.checkpoint.read_training_checkpoint (a dict)
load_checkpoint = load_weights


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        **overrides,
) -> Union[LIT, LITv2]:
    """Build a LIT model by name.

    Args:
        name (str): one of :func:`list_models` (``lit_ti``, ``lit_s``, ``lit_m``, ``lit_b``, ablations,
            ``litv2_s``, ``litv2_m``, ``litv2_b``, ``litv2_b_384``).
        pretrained (bool): load the official ImageNet-1K release (downloaded once by timm's hub
            machinery; ``pretrained_cfg_overlay=dict(file=...)`` points it at a local copy,
            ``dict(url=...)`` at another address). The file is read by litvit's one reader, as
            ``checkpoint_path`` is.
        checkpoint_path (str, optional): a checkpoint file to load after building: an official
            release in any form the authors' trainers wrote (a bare state dict, ``{'model': ...,
            'args': Namespace}`` of the DeiT/PVT trainer, ``{'model': ..., 'config': CfgNode}`` of
            the Swin trainer), a litvit training checkpoint, or a safetensors file.
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


@functools.lru_cache(maxsize=None)
def _default_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}


def _same_but_size(key: str, a: Tuple[int, ...], b: Tuple[int, ...]) -> bool:
    """Shapes equal up to what the image size sets: the token count of an absolute position
    embedding (1, N, C), the row count of a relative table (L, heads)."""
    if key.endswith("pos_embed") and len(a) == len(b) == 3:
        return a[0] == b[0] and a[2] == b[2]
    if key.endswith("relative_position_bias_table") and len(a) == len(b) == 2:
        return a[1] == b[1]
    return a == b


def models_fitting(checkpoint: Mapping) -> List[str]:
    """The registered models whose default architecture (widths, depths, heads; any image size
    and number of classes) a checkpoint's weights fit: how an official release, which records no
    model name, is recognised. Usually one name; none for a checkpoint of other widths.

    Examples::
        >>> import litvit
        >>> from litvit.models.factory import models_fitting
        >>> models_fitting(litvit.create_model('lit_s', num_classes=10, img_size=96, device='meta').state_dict())
        ['lit_s']
    """
    try:
        sd = official_to_litvit(unwrap_state_dict(checkpoint))
    except CheckpointMismatchError:
        return []
    body = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("head.")}
    fitting = []
    for name in MODEL_NAMES:
        target = {k: v for k, v in _default_shapes(name).items() if not k.startswith("head.")}
        if target.keys() == body.keys() and all(_same_but_size(k, body[k], target[k]) for k in body):
            fitting.append(name)
    return fitting
