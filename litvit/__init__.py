"""litvit: LIT vision transformers (Less is More: Pay Less Attention in Vision Transformers).

Importing the package registers every LIT model in timm's registry.

Examples::
    >>> import torch, litvit
    >>> model = litvit.create_model('lit_ti')
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""
from .models import LIT, CheckpointMismatchError, create_model, list_models, load_checkpoint, load_weights
from .models.official_dense import load_dense
from .ops import DeformableTokenMerging, DeformMerge2x2, deform_merge2x2

__version__ = "0.1.0"
__all__ = ["LIT", "CheckpointMismatchError", "create_model", "list_models", "load_checkpoint", "load_weights",
           "load_dense", "DeformableTokenMerging", "DeformMerge2x2", "deform_merge2x2", "__version__"]
