"""Old import path of :mod:`litvit.models.semantic_fpn` and of the segmentation metrics
(:mod:`litvit.metrics`), kept for users."""
from .metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics  # noqa: F401
from .models.semantic_fpn import *  # noqa: F401,F403
from .models.semantic_fpn import (PAPER_PARAMS, SEGMENTATION_DEFAULTS, SemanticFPN, SemanticFPNHead,  # noqa: F401
                                  SyncBatchNorm, convert_head_sync_batchnorm, parameter_table, semantic_fpn)
