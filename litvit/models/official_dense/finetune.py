"""Starting a dense model from a trained one: a release of the authors' or a litvit dense checkpoint.

:func:`start_from_checkpoint` builds the model a checkpoint holds, its architecture read from the
weights as :func:`~litvit.models.official_dense.load_dense` reads a release's (so no flag has to
describe it), loads them, and fits the classifier to another number of classes
(:func:`fit_classes`); :func:`model_from_state_dict` rebuilds a litvit dense checkpoint's model the
same way. :func:`init_from_checkpoint` copies the weights of ``--init-checkpoint`` into a freshly built
RetinaNet, Mask R-CNN or Semantic FPN of :mod:`litvit.models.official_dense` by name. Both kinds of
file hold the same modules under the same names (a release's backbone entries are renamed as
:func:`~litvit.models.official_dense.load_dense` renames them), so everything must fit, except the
classifier when the number of classes differs: those layers (:data:`CLASSIFIERS`) keep their fresh
initialisation and the returned line says so. Anything else that does not fit is a
:class:`~litvit.errors.CheckpointMismatchError` of one line.
"""
import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor, nn

from ...checkpoint import mismatch_message, model_record, read_checkpoint
from ...errors import CheckpointMismatchError
from ..convert import litvit_to_official
from .backbone import backbone_state_dict
from .heads import _init
from .load import build_dense, checkpoint_file, dense_from_checkpoint, is_release, release_kind
from .models import DenseRelease

__all__ = ["init_from_checkpoint", "start_from_checkpoint", "model_from_state_dict", "fit_classes",
           "release_state_dict", "checkpoint_kind", "attention_heads", "adopt_task_settings", "CLASSIFIERS",
           "legacy_layout"]

# The layers whose shape depends on the number of classes, per model: a new one is made when it differs.
CLASSIFIERS: Tuple[str, ...] = ("decode_head.conv_seg", "bbox_head.retina_cls", "roi_head.bbox_head.fc_cls",
                                "roi_head.bbox_head.fc_reg", "roi_head.mask_head.conv_logits")


def legacy_layout(state_dict: Mapping[str, Any]) -> Optional[str]:
    """What a state dict of litvit's earlier dense models (torchvision-style ``backbone.body`` /
    ``backbone.fpn``, Semantic FPN ``head.branches``) is, or None for any other layout."""
    keys = list(state_dict)
    if any(k.startswith(("backbone.body.", "backbone.fpn.")) for k in keys):
        what = "Semantic FPN" if any(k.startswith("head.branches.") for k in keys) else "detector"
        return (f"litvit's earlier {what} definition (backbone.body / backbone.fpn modules), which computed "
                f"other things than the authors' model litvit builds now; its weights are not converted: train "
                f"again with this version")
    return None


def _read(path_or_name: str) -> Tuple[Dict[str, Tensor], Sequence[str], Optional[list], str, str]:
    """(state dict under litvit's names, class names or (), palette or None, kind of file, its path)."""
    path = checkpoint_file(path_or_name, "init checkpoint")
    ckpt = read_checkpoint(path)
    if is_release(ckpt):
        sd = {(k[len("module."):] if k.startswith("module.") else k): v
              for k, v in ckpt["state_dict"].items() if isinstance(v, Tensor)}
        state = {f"backbone.{k}": v for k, v in backbone_state_dict(
            {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}).items()}
        state.update({k: v for k, v in sd.items() if not k.startswith("backbone.")})
        meta = ckpt.get("meta") or {}
        classes = meta.get("CLASSES") or ()
        return (state, [classes] if isinstance(classes, str) else list(classes), meta.get("PALETTE"), "release",
                path)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        record = model_record(ckpt)
        return (dict(ckpt["model"]), list(record.get("class_names") or ()), record.get("palette"),
                f"litvit {record.get('task', 'training')} checkpoint", path)
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return dict(ckpt), (), None, "state dict", path
    raise CheckpointMismatchError(f"{path_or_name} is neither one of the authors' dense releases nor a litvit "
                                  f"dense checkpoint")


def release_state_dict(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A dense model's state dict (litvit's names: ``backbone.model.*``, ``backbone.out_norms.{i}.*``)
    under the authors' names, as their mmdet / mmseg code saves it (the inverse of what
    :func:`~litvit.models.official_dense.load_dense` does to a release's backbone entries)."""
    body = {k[len("backbone.model."):]: v for k, v in state.items() if k.startswith("backbone.model.")}
    layout = "pvt" if any(k.endswith("pos_embed") for k in body) else "swin"  # LIT-Ti's absolute tables
    out = {f"backbone.{k}": v for k, v in litvit_to_official(body, layout).items()
           if not k.endswith("relative_position_index")}  # a buffer their dense LIT-S does not save
    for k, v in state.items():
        m = re.match(r"^backbone\.out_norms\.(\d)\.(.*)$", k)
        if m:
            out[f"backbone.norm{m[1]}.{m[2]}"] = v
        elif not k.startswith("backbone."):
            out[k] = v
    return out


def attention_heads(model: DenseRelease) -> list:
    """The heads of each backbone stage of a dense model (the authors' LIT-Ti values where a stage
    does not attend): what a LIT-Ti's weights do not tell."""
    from .backbone import LIT_TI_HEADS
    heads = list(LIT_TI_HEADS)
    for i, stage in enumerate(model.backbone.model.stages):
        attn = getattr(stage.blocks[0], "attn", None) if len(stage.blocks) else None
        if attn is not None and hasattr(attn, "num_heads"):
            heads[i] = int(attn.num_heads)
    return heads


def model_from_state_dict(state: Mapping[str, Tensor], classes: Sequence[str] = (),
                          palette: Optional[Sequence[Sequence[int]]] = None,
                          backbone_kwargs: Optional[Dict[str, Any]] = None,
                          num_heads: Optional[Sequence[int]] = None) -> DenseRelease:
    """The model of a litvit dense checkpoint's weights, its architecture read from them as a
    release's is (the authors' test and train settings, classes from ``classes``), weights loaded;
    ``backbone_kwargs``: ``drop_path_rate``; ``num_heads``: LIT-Ti's heads when they are not the
    authors' (:func:`attention_heads` of the model that was saved, which its weights do not tell).

    Raises:
        CheckpointMismatchError: weights of litvit's earlier dense models, or of no dense model.
    """
    legacy = legacy_layout(state)
    if legacy:
        raise CheckpointMismatchError(f"the weights were written by {legacy}")
    layout = release_state_dict(state)
    mmseg = any(k.startswith("decode_head.") for k in layout)
    meta: Dict[str, Any] = dict(mmseg_version="0.13.0") if mmseg else dict(mmdet_version="2.11.0")
    if classes:
        meta["CLASSES"] = tuple(classes)
    if palette is not None:
        meta["PALETTE"] = [list(c) for c in palette]
    kwargs = dict(backbone_kwargs or {}, **({"num_heads": list(num_heads)} if num_heads else {}))
    model = build_dense(layout, meta, backbone_kwargs=kwargs)
    problem = mismatch_message(model.state_dict(), state, limit=3)
    if problem:
        raise CheckpointMismatchError(f"the weights do not fit the model built from them: {problem}")
    model.load_state_dict(state)
    return model


def adopt_task_settings(model: DenseRelease, classes: Sequence[str], img_scale: Sequence[int], frozen_stages: int,
                        norm_eval: bool, palette: Optional[Sequence[Sequence[int]]] = None) -> DenseRelease:
    """A model built from a checkpoint's weights given the settings of the task that trains or
    evaluates it: its classes (and palette), the test scale of its pipeline (keep-ratio), the
    backbone's frozen stages and norm-eval (applied at once)."""
    model.classes = tuple(classes)
    model.palette = [list(c) for c in palette] if palette is not None else None
    model.pipeline = dataclasses.replace(model.pipeline, img_scale=tuple(int(s) for s in img_scale), keep_ratio=True)
    model.backbone.frozen_stages, model.backbone.norm_eval = frozen_stages, norm_eval
    model.backbone.train(model.backbone.training)  # freezes the frozen stages
    return model


def fit_classes(model: DenseRelease, num_classes: int) -> Tuple[str, ...]:
    """Give ``model`` a new classifier for ``num_classes`` classes, initialised as the authors'
    heads initialise theirs, when it has another number; the layers replaced (none when it fits).

    RetinaNet: ``bbox_head.retina_cls`` (normal 0.01, bias at the 0.01 prior); Mask R-CNN:
    ``roi_head.bbox_head.fc_cls`` (normal 0.01), ``fc_reg`` (normal 0.001; kept when class-agnostic),
    ``roi_head.mask_head.conv_logits`` (Kaiming; kept when class-agnostic); Semantic FPN:
    ``decode_head.conv_seg`` (normal 0.01)."""
    if model.num_classes == num_classes:
        return ()
    K = int(num_classes)
    if K < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    replaced = []
    if model.kind == "retinanet":
        head = model.bbox_head
        old = head.retina_cls
        head.num_classes, head.cls_out_channels = K, (K if head.use_sigmoid else K + 1)
        head.retina_cls = nn.Conv2d(old.in_channels, head.num_anchors * head.cls_out_channels, 3, padding=1)
        _init(head.retina_cls, "normal", 0.01, bias=float(-np.log((1 - 0.01) / 0.01)))
        replaced.append("bbox_head.retina_cls")
    elif model.kind == "mask_rcnn":
        box = model.roi_head.bbox_head
        box.num_classes = K
        box.fc_cls = nn.Linear(box.fc_cls.in_features, K + 1)
        _init(box.fc_cls, "normal", 0.01)
        replaced.append("roi_head.bbox_head.fc_cls")
        if not box.reg_class_agnostic:
            box.fc_reg = nn.Linear(box.fc_reg.in_features, 4 * K)
            _init(box.fc_reg, "normal", 0.001)
            replaced.append("roi_head.bbox_head.fc_reg")
        mask = model.roi_head.mask_head
        if mask is not None:
            mask.num_classes = K
            if not mask.class_agnostic:
                mask.conv_logits = nn.Conv2d(mask.conv_logits.in_channels, K, 1)
                _init(mask.conv_logits, "kaiming")
                replaced.append("roi_head.mask_head.conv_logits")
    else:
        head = model.decode_head
        head.num_classes = K
        head.conv_seg = nn.Conv2d(head.conv_seg.in_channels, K, 1)
        _init(head.conv_seg, "normal", 0.01)
        replaced.append("decode_head.conv_seg")
    device = next(model.parameters()).device
    model.to(device)
    return tuple(replaced)


def start_from_checkpoint(path_or_name: str, kind: str, num_classes: int,
                          backbone_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[DenseRelease, str]:
    """The model a checkpoint holds (a release of the authors', by file or name, or a litvit dense
    checkpoint), built from its weights with nothing else describing it, weights loaded, and fitted
    to ``num_classes`` classes.

    Args:
        path_or_name (str): the checkpoint.
        kind (str): the model expected (``"retinanet"``, ``"mask_rcnn"``, ``"semantic_fpn"``).
        num_classes (int): the classes of the data to train on.
        backbone_kwargs (dict, optional): ``drop_path_rate`` for the backbone (the recipe's).

    Returns:
        (DenseRelease, str): the model (train mode) and one line saying what was done:
        ``"init-checkpoint retina_lit_ti.pth: 80 classes, the data has 3: new classifier
        (bbox_head.retina_cls)"``, or how many tensors were loaded when the classes are the same.

    Raises:
        FileNotFoundError: no such file or release.
        CheckpointMismatchError: not a dense checkpoint, another kind of model, or weights of
            litvit's earlier dense models (one line each).
    """
    path = checkpoint_file(path_or_name, "init checkpoint")
    name = os.path.basename(str(path))
    ckpt = read_checkpoint(path)
    if is_release(ckpt):
        model = dense_from_checkpoint(ckpt, name, backbone_kwargs=backbone_kwargs)
    elif isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        record = model_record(ckpt)
        try:
            model = model_from_state_dict(ckpt["model"], record.get("class_names") or (), record.get("palette"),
                                          backbone_kwargs, record.get("backbone_heads"))
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"init-checkpoint {name}: {e}") from None
    else:
        raise CheckpointMismatchError(f"init-checkpoint {name} is neither one of the authors' dense releases nor "
                                      f"a litvit dense checkpoint")
    found = "a Mask R-CNN" if model.kind == "mask_rcnn" else ("a RetinaNet" if model.kind == "retinanet"
                                                              else "a Semantic FPN")
    if model.kind != kind:
        raise CheckpointMismatchError(f"init-checkpoint {name} holds {found}, not a {kind.replace('_', ' ')}")
    old = model.num_classes
    tensors = len(model.state_dict())
    replaced = fit_classes(model, num_classes)
    if replaced:
        return model.train(), (f"init-checkpoint {name}: {old} classes, the data has {num_classes}: new classifier "
                               f"({', '.join(replaced)})")
    return model.train(), f"init-checkpoint {name}: {tensors} tensors copied ({num_classes} classes)"


def checkpoint_kind(path_or_name: str) -> Tuple[str, str]:
    """(kind, backbone family) of a dense checkpoint: ``"retinanet"`` / ``"mask_rcnn"`` /
    ``"semantic_fpn"`` and ``"pvt"`` (LIT-Ti) / ``"swin"`` (LIT-S), read from its weights."""
    state, _, _, _, path = _read(path_or_name)
    layout = release_state_dict(state) if any(k.startswith("backbone.model.") for k in state) else state
    try:
        kind = release_kind(layout)
    except CheckpointMismatchError:
        raise CheckpointMismatchError(f"init-checkpoint {os.path.basename(str(path))} holds no dense model "
                                      f"(RetinaNet, Mask R-CNN, Semantic FPN)") from None
    family = "pvt" if "backbone.patch_embed1.proj.weight" in layout else "swin"
    return kind, family


def _classifier(key: str) -> Optional[str]:
    return next((c for c in CLASSIFIERS if key.startswith(c + ".")), None)


def _class_count(layer: str, rows: int, model: nn.Module, model_rows: int) -> int:
    """How many classes a classifier of ``rows`` outputs holds, the model's layer having
    ``model_rows`` for ``model.num_classes`` (anchors or box coordinates per class alike)."""
    if layer == "roi_head.bbox_head.fc_cls":
        return rows - 1  # a background logit
    return rows // max(1, model_rows // max(1, model.num_classes))


def init_from_checkpoint(model: nn.Module, path_or_name: str) -> str:
    """Copy a trained dense model's weights into ``model`` by name, a new classifier where the
    number of classes differs.

    Args:
        model (nn.Module): a :class:`~litvit.models.official_dense.RetinaNet`, ``MaskRCNN`` or
            ``SemanticFPN`` (``num_classes``, ``classes``, ``palette``), freshly built.
        path_or_name (str): a release file (mmdet / mmseg format), a release's name (``sem_fpn_lit_ti``,
            ..., downloaded once), or a checkpoint of litvit's ``detect train`` / ``segment train``.

    Returns:
        str: one line saying what was done: ``"init-checkpoint sem_fpn_lit_ti.pth: 150 classes, the data
        has 19: new classifier (decode_head.conv_seg)"``, or the number of tensors copied when every
        one fits. With the same classes, the checkpoint's class names (and palette) replace the
        model's ``class_0``... placeholders.

    Raises:
        FileNotFoundError: no such file or release.
        CheckpointMismatchError: not such a checkpoint, or weights other than the classifier that do
            not fit (the message names them).
    """
    state, classes, palette, kind, path = _read(path_or_name)
    name = os.path.basename(str(path))  # a release's name: its downloaded file
    legacy = legacy_layout(state)
    if legacy:
        raise CheckpointMismatchError(f"init-checkpoint {name} was written by {legacy}")
    target = model.state_dict()
    new_layers = []
    for key in list(state):
        layer = _classifier(key)
        if layer and key in target and state[key].shape != target[key].shape:
            if layer not in new_layers:
                new_layers.append(layer)
    kept = {k: v for k, v in state.items() if _classifier(k) not in new_layers}
    problem = mismatch_message(target, kept, ignore_missing=tuple(f"{layer}." for layer in new_layers), limit=3)
    if problem:
        raise CheckpointMismatchError(f"init-checkpoint {name} ({kind}) does not fit the model: {problem}")
    model.load_state_dict(kept, strict=False)
    if new_layers:
        first = next(k for k in state if _classifier(k) == new_layers[0] and k.endswith("weight"))
        old = len(classes) or _class_count(new_layers[0], state[first].shape[0], model, target[first].shape[0])
        return (f"init-checkpoint {name}: {old} classes, the data has {model.num_classes}: new classifier "
                f"({', '.join(new_layers)})")
    if classes and len(classes) == model.num_classes and all(c == f"class_{i}" for i, c in enumerate(model.classes)):
        model.classes = tuple(str(c) for c in classes)
        if palette is not None and len(palette) == model.num_classes and getattr(model, "palette", None) is None:
            model.palette = [list(c) for c in palette]
    return f"init-checkpoint {name}: {len(kept)} tensors copied ({model.num_classes} classes)"
