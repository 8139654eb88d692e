"""Operators that are LIT's own."""
from .dtm import DTM_IMPLS, DeformableTokenMerging, DeformMerge2x2, deform_merge2x2

__all__ = ["DTM_IMPLS", "DeformableTokenMerging", "DeformMerge2x2", "deform_merge2x2"]
