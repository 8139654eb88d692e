"""LIT models, registered in timm's registry on import (``timm.create_model('lit_s')`` works).

* :mod:`.lit`: the LIT model family (and the paper's ablations) as one class, registered with timm;
* :mod:`.litv2`: LITv2 (HiLo attention), registered with timm;
* :mod:`.pos_embed`: resizing position embeddings and relative tables, Swin's relative index;
* :mod:`.convert`: official checkpoint layouts <-> litvit (renaming, :func:`checkpoint_filter_fn`);
* :mod:`.factory`: :func:`create_model` by name, :func:`load_weights` into a model;
* :mod:`.backbone`: multi-scale features + FPN for dense prediction;
* :mod:`.detectors`: RetinaNet and Mask R-CNN on LIT; :mod:`.semantic_fpn`: Semantic FPN on LIT.
"""
from ..errors import CheckpointMismatchError
from .convert import checkpoint_filter_fn
from .factory import MODEL_NAMES, create_model, list_models, load_checkpoint, load_weights
from .lit import LIT, Attention, Block, LITStage, default_cfgs  # noqa: F401  (default_cfgs: re-exported)
from .litv2 import LITv2, HiLo

__all__ = ["LIT", "LITv2", "HiLo", "Attention", "Block", "LITStage", "CheckpointMismatchError", "checkpoint_filter_fn",
           "create_model", "list_models", "load_checkpoint", "load_weights", "MODEL_NAMES"]
