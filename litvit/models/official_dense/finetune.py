"""Starting a dense model from a trained one: a release of the authors' or a litvit dense checkpoint.

:func:`init_from_checkpoint` copies the weights of ``--init-checkpoint`` into a freshly built
RetinaNet, Mask R-CNN or Semantic FPN of :mod:`litvit.models.official_dense` by name. Both kinds of
file hold the same modules under the same names (a release's backbone entries are renamed as
:func:`~litvit.models.official_dense.load_dense` renames them), so everything must fit, except the
classifier when the number of classes differs: those layers (:data:`CLASSIFIERS`) keep their fresh
initialisation and the returned line says so. Anything else that does not fit is a
:class:`~litvit.errors.CheckpointMismatchError` of one line.
"""
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from ...checkpoint import mismatch_message, model_record, read_checkpoint
from ...errors import CheckpointMismatchError
from .backbone import backbone_state_dict
from .load import RELEASES, is_release, release_file

__all__ = ["init_from_checkpoint", "CLASSIFIERS", "legacy_layout"]

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
    path = path_or_name
    if path in RELEASES and not os.path.exists(path):
        path = release_file(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"init checkpoint not found: {path_or_name} (a file, or a release: "
                                f"{', '.join(RELEASES)})")
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
