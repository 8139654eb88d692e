"""Old import path of :mod:`litvit.models.detectors` (RetinaNet and Mask R-CNN on LIT), kept for users."""
from .models.detectors import *  # noqa: F401,F403
from .models.detectors import (DETECTION_DEFAULTS, DETECTORS, PAPER_PARAMS, RECIPE_OF,  # noqa: F401
                               build_detector, default_backbone_img_size, mask_rcnn, parameter_table, retinanet)
