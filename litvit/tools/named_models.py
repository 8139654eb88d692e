"""Any litvit or timm model by name, built for a given input size where its constructor takes one.

Commands that take model names (``litvit bench --models``, ``litvit flops``) accept every litvit
model and every timm model. Some architectures are built for one input size (position tables,
window masks: ViT, DeiT, Swin, MLP-Mixer, ...) and take ``img_size``; others run on any size and
have no such argument (ResNet, ConvNeXt, PVT v2, ...): passing it to them is a ``TypeError``.
:func:`takes_img_size` tells them apart and :func:`size_kwargs` gives the keyword to pass.

Examples::

    >>> from litvit.tools.named_models import create_named_model, size_kwargs
    >>> size_kwargs("resnet18", 64), size_kwargs("deit_tiny_patch16_224", 64)
    ({}, {'img_size': 64})
    >>> create_named_model("deit_tiny_patch16_224", img_size=64).patch_embed.img_size
    (64, 64)
"""
import functools
import warnings
from typing import Dict, Optional

import torch
from torch import nn

from ..models import MODEL_NAMES, create_model

__all__ = ["is_known_model", "takes_img_size", "size_kwargs", "create_named_model"]


def is_known_model(name: str) -> bool:
    """A registered litvit model or a timm model name."""
    if name in MODEL_NAMES:
        return True
    import timm
    return timm.is_model(name)


@functools.lru_cache(maxsize=None)
def takes_img_size(name: str) -> bool:
    """Whether the constructor of the model called ``name`` accepts ``img_size``.

    litvit models do. A timm model is asked directly: its builder is called on the meta device
    (shapes only, no memory, no weights) with ``img_size`` set to its own default input size; an
    ``unexpected keyword argument 'img_size'`` means no. When a constructor cannot run on the meta
    device at all, timm's configuration decides (``fixed_input_size``: the model is built for one
    size, and those models take ``img_size``).

    Raises:
        ValueError: ``name`` is neither a litvit nor a timm model.
    """
    if name in MODEL_NAMES:
        return True
    import timm
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: neither a litvit model ({', '.join(MODEL_NAMES)}) "
                         f"nor a timm model")
    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
    fixed = bool(cfg is not None and getattr(cfg, "fixed_input_size", False))
    default_size = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timm.create_model(name, pretrained=False, img_size=default_size)
    except TypeError as e:
        return "img_size" not in str(e) and fixed
    except Exception:  # the constructor reads tensor values, which the meta device has not
        return fixed
    return True


def size_kwargs(name: str, img_size: Optional[int]) -> Dict[str, int]:
    """``{"img_size": img_size}`` for a model whose constructor takes it (:func:`takes_img_size`),
    else ``{}`` (and ``{}`` when ``img_size`` is None)."""
    if img_size is None or not takes_img_size(name):
        return {}
    return {"img_size": int(img_size)}


def create_named_model(name: str, img_size: Optional[int] = None, **kwargs) -> nn.Module:
    """A litvit model (:func:`litvit.create_model`) or a timm model (random initialisation, nothing
    downloaded), built for ``img_size`` when its constructor takes one; ``kwargs`` go to the
    constructor and win over ``img_size``.

    Raises:
        ValueError: ``name`` is neither a litvit nor a timm model.
    """
    kwargs = dict(size_kwargs(name, img_size), **kwargs)
    if name in MODEL_NAMES:
        return create_model(name, **kwargs)
    import timm
    return timm.create_model(name, pretrained=False, **kwargs)
