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

Every file is read by :func:`litvit.checkpoint.read_checkpoint` (one trust policy; safetensors
too) and fitted by :func:`checkpoint_filter_fn`: :func:`load_weights` does both, for
``create_model(checkpoint_path=...)`` and for timm's pretrained path (``LIT.load_pretrained``).
"""
import logging
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

from timm.models import adapt_input_conv
from torch import Tensor, nn

from ..checkpoint import mismatch_message, read_checkpoint
from ..checkpoint import read_checkpoint as load_state_dict_file  # the old name of the one reader
from ..errors import CheckpointMismatchError
from .pos_embed import relative_position_index, resize_abs_pos_embed, resize_rel_pos_table

__all__ = [
    "CheckpointMismatchError", "detect_layout", "unwrap_state_dict", "official_to_litvit", "litvit_to_official",
    "checkpoint_filter_fn", "classifier_classes", "load_weights", "load_state_dict_file",
]

_logger = logging.getLogger(__name__)


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


def _fit_input_conv(sd: Dict[str, Tensor], model) -> None:
    """A stem learned on another number of input channels (RGB weights for a grey or 4-channel
    model), adapted in place as timm adapts its models' first convolutions."""
    key = "patch_embed.proj.weight"
    target = model.state_dict().get(key)
    if key in sd and target is not None and sd[key].dim() == 4 and sd[key].shape != target.shape \
            and sd[key].shape[0] == target.shape[0] and sd[key].shape[2:] == target.shape[2:]:
        sd[key] = adapt_input_conv(target.shape[1], sd[key])


def checkpoint_filter_fn(state_dict: Mapping, model) -> Dict[str, Tensor]:
    """Turn a checkpoint (official release in either layout, or litvit's own, bare or wrapped) into
    a state dict for ``model``.

    Keys are renamed, ``relative_position_index`` buffers dropped, position embeddings and
    relative tables learned at another image size resized bicubically, a stem learned on another
    number of input channels adapted (timm's ``adapt_input_conv``). A classifier of another size
    is dropped (the caller re-initialises it). Anything else that does not fit raises
    :class:`CheckpointMismatchError` naming the first missing, unexpected and mis-shaped keys.
    """
    sd = official_to_litvit(unwrap_state_dict(state_dict))
    _fit_position_tables(sd, model)
    _fit_input_conv(sd, model)
    target = model.state_dict()
    head_keys = [k for k in ("head.weight", "head.bias") if k in sd]
    if any(k not in target or sd[k].shape != target[k].shape for k in head_keys):
        for k in head_keys:
            del sd[k]
    problem = mismatch_message(target, sd, ignore_missing=("head.",))
    if problem:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointMismatchError(f"checkpoint does not fit {name}: {problem}")
    return sd


def classifier_classes(checkpoint: Mapping) -> Optional[int]:
    """The number of classes of a checkpoint's classifier (any layout or wrapping), 0 for one saved
    without a classifier, None when it holds no state dict."""
    try:
        sd = official_to_litvit(unwrap_state_dict(checkpoint))
    except CheckpointMismatchError:
        return None
    return int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0


CLASSIFIER_MISMATCH = ("warn", "quiet", "raise")


def load_weights(
        model: nn.Module,
        path: Union[str, Path],
        use_ema: bool = False,
        classifier_mismatch: str = "warn",
) -> Dict[str, list]:
    """Load a checkpoint file (official or litvit, any wrapping, pickled or safetensors) into a LIT
    model: read by :func:`litvit.checkpoint.read_checkpoint`, fitted by :func:`checkpoint_filter_fn`.

    Args:
        model (LIT): the model.
        path (str | Path): checkpoint file.
        use_ema (bool): take ``model_ema`` weights from a litvit training checkpoint when present.
        classifier_mismatch (str): a classifier for another number of classes is left at its
            initialisation with a warning (``"warn"``), with an info log line (``"quiet"``: timm's
            pretrained path, where a new head is the point), or refused (``"raise"``:
            :class:`CheckpointMismatchError` naming both class counts).

    Returns:
        dict with ``missing`` keys left at their initialisation (only the classifier, when the
        checkpoint's number of classes differs).
    """
    if classifier_mismatch not in CLASSIFIER_MISMATCH:
        raise ValueError(f"classifier_mismatch must be one of {CLASSIFIER_MISMATCH}, got {classifier_mismatch!r}")
    ckpt = read_checkpoint(path)
    if use_ema and isinstance(ckpt, Mapping) and isinstance(ckpt.get("model_ema"), Mapping):
        ckpt = ckpt["model_ema"]
    try:
        sd = checkpoint_filter_fn(ckpt, model)
    except CheckpointMismatchError as e:
        if str(path) in str(e):
            raise
        raise CheckpointMismatchError(f"{path}: {e}") from None
    if any(k not in sd for k in model.state_dict()):  # the filter dropped a classifier of another size
        n = classifier_classes(ckpt)
        why = (f"its classifier has {n} classes, the model {getattr(model, 'num_classes', '?')}" if n else
               "it holds no classifier")
        if classifier_mismatch == "raise":
            raise CheckpointMismatchError(f"{path}: {why}")
        log = _logger.warning if classifier_mismatch == "warn" else _logger.info
        log("classifier not loaded from %s (%s); it keeps its initialisation", path, why)
    result = model.load_state_dict(sd, strict=False)
    return {"missing": list(result.missing_keys)}
