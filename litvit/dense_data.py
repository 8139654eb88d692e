"""Old import path of the dense-prediction datasets, kept for users: COCO detection
(:mod:`litvit.data.coco`), ADE20K segmentation (:mod:`litvit.data.ade20k`), image files (:mod:`litvit.data.io`)."""
from .data.ade20k import *  # noqa: F401,F403
from .data.ade20k import (IGNORE_INDEX, PhotoMetricDistortion, SegEvalTransform, SegmentationDataset,  # noqa: F401
                          SegTrainTransform, _rgb_to_hsv8, segmentation_collate)
from .data.coco import CocoDetection, detection_collate, pad_extreme_aspect  # noqa: F401
from .data.io import IMG_EXTENSIONS as IMAGE_EXTENSIONS  # noqa: F401
from .data.io import image_to_tensor, palette, read_image  # noqa: F401
