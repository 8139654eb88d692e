"""Official LIT checkpoints <-> litvit state dicts.

The released checkpoints come in two key layouts (see ``tests/data/lit_*.txt``):

* PVT family (``lit_ti.pth``, a bare state dict): ``patch_embed1`` (stem), ``patch_embed{2,3,4}``
  (DTM before stages 2-4), ``pos_embed{1..4}``, ``cls_token``, ``block{1..4}.{j}``, ``norm``, ``head``.
  The ablation models (``pvt_full_msa.pth``, PVT-S w/ MSA) merge with a plain conv instead:
  ``patch_embed{2,3,4}.proj`` (Conv2d k2 s2) and ``patch_embed{2,3,4}.norm`` (LayerNorm).
* Swin family (``lit_{s,m,b}.pth``, ``{'model': state_dict, ...}``): ``patch_embed``,
  ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample`` (DTM *after* stage i), ``norm``, ``head``,
  plus ``relative_position_index`` buffers that carry no information.

litvit keeps one layout for both: ``patch_embed``, ``stages.{i}.downsample.dtm`` (merging *into*
stage i; ``stages.{i}.downsample.{proj,norm}`` for a plain conv merge), ``stages.{i}.pos_embed``, ``stages.3.cls_token``, ``stages.{i}.blocks.{j}``, ``norm``, ``head``.
"""
import collections
import contextlib
import re
from typing import Dict, Mapping

import torch
from torch import Tensor

__all__ = [
    "CheckpointMismatchError", "detect_layout", "unwrap_state_dict", "official_to_litvit", "litvit_to_official",
    "checkpoint_filter_fn", "load_checkpoint", "load_state_dict_file",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into (other model, other size)."""


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, Tensor]:
    """The state dict inside a checkpoint: a bare state dict, or under 'model' / 'state_dict' /
    'model_ema' (EMA weights are used only if nothing else is there). A 'module.' prefix (DDP) is removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"checkpoint is a {type(checkpoint).__name__}, not a state dict")
    for key in ("model", "state_dict", "model_ema"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    sd = {}
    for k, v in checkpoint.items():
        if not isinstance(v, Tensor):
            continue
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    if not sd:
        raise CheckpointMismatchError("checkpoint holds no tensors")
    return sd


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """'pvt' (official LIT-Ti layout), 'swin' (official LIT-S/M/B layout) or 'litvit'."""
    keys = state_dict.keys()
    if any(k.startswith("stages.") for k in keys):
        return "litvit"
    if any(re.match(r"(patch_embed\d|block\d|pos_embed\d)", k) for k in keys):
        return "pvt"
    if any(k.startswith("layers.") for k in keys):
        return "swin"
    return "litvit"


_PVT_RULES = [
    (re.compile(r"^patch_embed1\.(.*)$"), lambda m: f"patch_embed.{m[1]}"),
    (re.compile(r"^patch_embed([234])\.((?:proj|norm)\..*)$"), lambda m: f"stages.{int(m[1]) - 1}.downsample.{m[2]}"),
    (re.compile(r"^patch_embed([234])\.(.*)$"), lambda m: f"stages.{int(m[1]) - 1}.downsample.dtm.{m[2]}"),
    (re.compile(r"^pos_embed([1234])$"), lambda m: f"stages.{int(m[1]) - 1}.pos_embed"),
    (re.compile(r"^cls_token$"), lambda m: "stages.3.cls_token"),
    (re.compile(r"^block([1234])\.(\d+)\.(.*)$"), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3]}"),
]
_SWIN_RULES = [
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$"), lambda m: f"stages.{m[1]}.blocks.{m[2]}.{m[3]}"),
    (re.compile(r"^layers\.(\d+)\.downsample\.(.*)$"), lambda m: f"stages.{int(m[1]) + 1}.downsample.dtm.{m[2]}"),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        m = pattern.match(key)
        if m:
            return repl(m)
    return key


def official_to_litvit(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename an official checkpoint's keys to litvit's and drop ``relative_position_index`` buffers.
    A litvit state dict passes through unchanged."""
    layout = detect_layout(state_dict)
    if layout == "litvit":
        return dict(state_dict)
    rules = _PVT_RULES if layout == "pvt" else _SWIN_RULES
    return {_rename(k, rules): v for k, v in state_dict.items() if not k.endswith("relative_position_index")}


_INV_PVT_RULES = [
    (re.compile(r"^patch_embed\.(.*)$"), lambda m: f"patch_embed1.{m[1]}"),
    (re.compile(r"^stages\.(\d)\.downsample\.dtm\.(.*)$"), lambda m: f"patch_embed{int(m[1]) + 1}.{m[2]}"),
    (re.compile(r"^stages\.(\d)\.downsample\.((?:proj|norm)\..*)$"), lambda m: f"patch_embed{int(m[1]) + 1}.{m[2]}"),
    (re.compile(r"^stages\.(\d)\.pos_embed$"), lambda m: f"pos_embed{int(m[1]) + 1}"),
    (re.compile(r"^stages\.3\.cls_token$"), lambda m: "cls_token"),
    (re.compile(r"^stages\.(\d)\.blocks\.(\d+)\.(.*)$"), lambda m: f"block{int(m[1]) + 1}.{m[2]}.{m[3]}"),
]
_INV_SWIN_RULES = [
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$"), lambda m: f"layers.{m[1]}.blocks.{m[2]}.{m[3]}"),
    (re.compile(r"^stages\.(\d+)\.downsample\.dtm\.(.*)$"), lambda m: f"layers.{int(m[1]) - 1}.downsample.{m[2]}"),
]


def litvit_to_official(state_dict: Mapping[str, Tensor], layout: str) -> Dict[str, Tensor]:
    """Rename a litvit state dict to the official ``layout`` ('pvt' or 'swin'); for 'swin' the
    ``relative_position_index`` buffers of the official code are added back."""
    if layout not in ("pvt", "swin"):
        raise ValueError(f"layout must be 'pvt' or 'swin', got {layout!r}")
    rules = _INV_PVT_RULES if layout == "pvt" else _INV_SWIN_RULES
    out = {}
    for k, v in state_dict.items():
        new = _rename(k, rules)
        out[new] = v
        if layout == "swin" and new.endswith("attn.relative_position_bias_table"):
            from .lit import relative_position_index  # local import: lit.py imports this module
            L = v.shape[0]
            side = int(round((L ** 0.5 + 1) / 2))  # square maps: (2H-1)^2 = L
            out[new.replace("relative_position_bias_table", "relative_position_index")] = \
                relative_position_index(side, side)
    return out


def _square_side(n: int, what: str) -> int:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise CheckpointMismatchError(f"cannot resize {what}: {n} positions is not a square grid")
    return side


def _fit_position_tables(sd: Dict[str, Tensor], model) -> None:
    """Resize absolute embeddings and relative tables learned for another image size, in place."""
    from .lit import resize_abs_pos_embed, resize_rel_pos_table  # local import: lit.py imports this module
    target = model.state_dict()
    for k, v in list(sd.items()):
        if k not in target or v.shape == target[k].shape:
            continue
        if k.endswith("pos_embed") and v.dim() == 3 and v.shape[-1] == target[k].shape[-1]:
            stage = model.get_submodule(k.rsplit(".", 1)[0])
            prefix = stage.num_prefix_tokens
            side = _square_side(v.shape[1] - prefix, k)
            sd[k] = resize_abs_pos_embed(v, (side, side), stage.grid_size, prefix)
        elif k.endswith("relative_position_bias_table") and v.dim() == 2 and v.shape[1] == target[k].shape[1]:
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            side = (_square_side(v.shape[0], k) + 1) // 2
            sd[k] = resize_rel_pos_table(v, (side, side), attn.rel_pos_size)


def _describe(keys, limit: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def checkpoint_filter_fn(state_dict: Mapping, model) -> Dict[str, Tensor]:
    """Turn a checkpoint (official release in either layout, or litvit's own, bare or wrapped) into
    a state dict for ``model``.

    Keys are renamed, ``relative_position_index`` buffers dropped, position embeddings and
    relative tables learned at another image size resized bicubically. A classifier of another
    size is dropped (the caller re-initialises it). Anything else that does not fit raises
    :class:`CheckpointMismatchError` naming the first missing, unexpected and mis-shaped keys.
    """
    sd = official_to_litvit(unwrap_state_dict(state_dict))
    _fit_position_tables(sd, model)
    target = model.state_dict()
    head_keys = [k for k in ("head.weight", "head.bias") if k in sd]
    if any(k not in target or sd[k].shape != target[k].shape for k in head_keys):
        for k in head_keys:
            del sd[k]
    missing = [k for k in target if k not in sd and not k.startswith("head.")]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        if shapes:
            parts.append(f"mis-shaped keys: {_describe(shapes, 3)}")
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointMismatchError(f"checkpoint does not fit {name}: " + "; ".join(parts))
    return sd


class _ConfigAsDict:
    """Stands in for a pickled config object (the Swin trainer's ``yacs.config.CfgNode``, a dict
    subclass): the unpickler builds a plain OrderedDict of its items; no code of the class runs."""

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


def _checkpoint_globals() -> list:
    """The only non-tensor objects a checkpoint may hold, beyond what ``weights_only=True`` reads:
    ``argparse.Namespace`` (the DeiT/PVT trainers save their arguments), numpy scalars and dtypes
    (metrics saved as numpy numbers), and yacs configs (the Swin trainer), read as plain dicts."""
    import argparse
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", object)) if n.endswith("DType")]
    return [argparse.Namespace, core.multiarray.scalar, np.dtype, *dtypes, (_ConfigAsDict, "yacs.config.CfgNode")]


def load_state_dict_file(path) -> Mapping:
    """Read a checkpoint file on the CPU without running code from it: ``torch.load(weights_only=True)``
    with exactly the extra objects official releases and training scripts pickle allowed (see
    :func:`_checkpoint_globals`); nothing else is ever unpickled.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file is not a PyTorch checkpoint, is truncated, or pickles
            other objects (the message names them and the file).
    """
    import os
    import pickle
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch's zip format, or its legacy pickle
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                                      f"(neither torch.save's zip format nor a pickle)")
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = []
        with contextlib.suppress(Exception):
            allowed = {f"{g[1]}" if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                       for g in _checkpoint_globals()}
            foreign = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        if foreign:
            raise CheckpointMismatchError(
                f"{path} pickles objects litvit does not load ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): a checkpoint may hold tensors, plain values, "
                f"argparse.Namespace and yacs configs only") from None
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                                      f"({_first_line(e)})") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's messages run to several lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    return first.split(". ")[0].rstrip(".") if len(first) > 100 else first


def load_checkpoint(model, path, use_ema: bool = False) -> Dict[str, list]:
    """Load a checkpoint file (official or litvit, any wrapping) into ``model``.

    Args:
        model (LIT): the model.
        path (str | Path): checkpoint file.
        use_ema (bool): take ``model_ema`` weights from a litvit training checkpoint when present.

    Returns:
        dict with ``missing`` keys left at their initialisation (only the classifier, when the
        checkpoint's number of classes differs).
    """
    import logging
    ckpt = load_state_dict_file(path)
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
        logging.getLogger(__name__).warning(
            "classifier not loaded from %s (another number of classes); it keeps its initialisation", path)
    return {"missing": list(result.missing_keys)}
