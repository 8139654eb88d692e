"""RetinaNet and Mask R-CNN with a LIT backbone: the authors' mmdetection 2.11 models, built by name.

The paper (Pan et al., AAAI 2022, Table 6) trains RetinaNet and Mask R-CNN with LIT-Ti and LIT-S
backbones on COCO with the 1x schedule (12 epochs, lr x0.1 after epochs 8 and 11), AdamW lr 1e-4
(RetinaNet) / 2e-4 (Mask R-CNN), weight decay 1e-4, images resized to (1333, 800) (the recipes
``retinanet-1x`` and ``mask-rcnn-1x`` of :mod:`litvit.recipes`). The authors used forked
mmdetection 2.11 trees. litvit has one definition of these detectors: the classes their released
models load into (:mod:`litvit.models.official_dense`, :func:`litvit.load_dense`), here built from
a LIT model name instead of a release file, so that a model trained by litvit and one of the
authors' releases are the same kind of object (same modules, same names, same inference, same
training losses):

* backbone: :func:`~litvit.models.official_dense.backbone.dense_backbone` (the authors' dense LIT:
  LIT-S's relative tables for 800x800, output LayerNorms on stages 2-4, LIT-Ti's position
  embeddings resized bilinearly);
* RetinaNet: FPN over stages 2-4 plus P6/P7 convolved from stage 4's output
  (``add_extra_convs='on_input'``, no ReLU before P7), RetinaHead (4 stacked convs, 9 anchors,
  ``num_classes`` sigmoid logits per anchor: no background logit), focal loss and L1 box loss;
* Mask R-CNN: FPN over all four stages plus a max-pooled P6, RPN (3 anchors), RoIAlign
  (``aligned=True``, adaptive sampling) 7x7 into two 1024-d FCs (softmax classes, background
  last, class-specific deltas) and 14x14 into the FCN mask head (4 convs, deconv, 28x28 masks).

Training settings (assigners, samplers, losses, initialisation) are mmdet 2.11's
(``model.train_cfg``, ``model.init_weights()``); inference is the authors' test pipeline and
``test_cfg`` (``model.predict(image)``).

Examples::
    >>> import numpy as np
    >>> from litvit.models.detectors import retinanet
    >>> model = retinanet(backbone='lit_ti', num_classes=80).eval()
    >>> out = model.predict(np.zeros((480, 640, 3), np.uint8))
    >>> sorted(out)
    ['boxes', 'labels', 'scores']
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..recipes import DENSE_RECIPES
from ..utils import count_parameters
from .backbone import default_backbone_img_size
from .official_dense.backbone import dense_backbone
from .official_dense.heads import FPN, ConvFCBBoxHead, FCNMaskHead, RetinaHead, RoIExtractor, RPNHead
from .official_dense.load import (CODER, DET_PIPELINE, RCNN_CODER, RETINA_ANCHORS, RPN_ANCHORS,
                                  mask_rcnn_test_settings, retina_test_settings)
from .official_dense.models import AnchorGenerator, DenseRelease, MaskRCNN, RetinaNet, StandardRoIHead
from .official_dense.preprocess import TestPipeline

__all__ = ["retinanet", "mask_rcnn", "build_detector", "DETECTORS", "DETECTION_DEFAULTS", "PAPER_PARAMS",
           "RECIPE_OF", "default_backbone_img_size", "parameter_table", "class_names_or_indices"]

DETECTORS = ("retinanet", "mask_rcnn")
RECIPE_OF = {"retinanet": "retinanet-1x", "mask_rcnn": "mask-rcnn-1x"}

# The paper's COCO recipe (1x schedule, single scale (1333, 800)), family-independent values; the
# whole recipe, family rules included, is litvit.recipes.DENSE_RECIPES["retinanet-1x" | "mask-rcnn-1x"].
DETECTION_DEFAULTS = {k: v for k, v in DENSE_RECIPES["retinanet-1x"].items() if k != "by_family"}

# Parameter counts the paper reports (COCO, 80 classes), millions.
PAPER_PARAMS = {
    ("retinanet", "lit_ti"): 30.0, ("retinanet", "lit_s"): 39.0,
    ("mask_rcnn", "lit_ti"): 40.0, ("mask_rcnn", "lit_s"): 48.0,
}


def class_names_or_indices(num_classes: int, class_names: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """``class_names`` (checked to be ``num_classes`` long), or ``class_0`` ... as a release without names."""
    if class_names is None:
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return tuple(str(c) for c in class_names)


def _pipeline(min_size: Union[int, Sequence[int]], max_size: int) -> TestPipeline:
    """The test pipeline of the authors' configs at litvit's sizes: keep-ratio resize to
    (``max_size``, last ``min_size``), their mean/std (RGB, 0-255), padding to 32."""
    test_min = min_size if isinstance(min_size, int) else list(min_size)[-1]
    return TestPipeline(img_scale=(int(max_size), int(test_min)), keep_ratio=True, mean=DET_PIPELINE.mean,
                        std=DET_PIPELINE.std, to_rgb=True, size_divisor=DET_PIPELINE.size_divisor)


def _backbone(backbone: str, arch: str, pretrained_backbone: Optional[str], frozen_stages: int, norm_eval: bool,
              backbone_kwargs: Optional[Dict]) -> nn.Module:
    return dense_backbone(backbone, "detection", RECIPE_OF[arch], pretrained=pretrained_backbone,
                          frozen_stages=frozen_stages, norm_eval=norm_eval, backbone_kwargs=backbone_kwargs)


def _finish(model: DenseRelease, arch: str, backbone: str) -> DenseRelease:
    model.init_weights()
    model.meta = dict(mmdet_version="2.11.0", CLASSES=model.classes, litvit=dict(arch=arch, backbone=backbone))
    return model


def retinanet(
        backbone: str = "lit_ti",
        num_classes: int = 80,
        pretrained_backbone: Optional[str] = None,
        min_size: Union[int, Sequence[int]] = DETECTION_DEFAULTS["min_size"],
        max_size: int = DETECTION_DEFAULTS["max_size"],
        frozen_stages: int = -1,
        norm_eval: bool = False,
        backbone_kwargs: Optional[Dict] = None,
        fpn_channels: int = 256,
        class_names: Optional[Sequence[str]] = None,
) -> RetinaNet:
    """RetinaNet with a LIT backbone (paper: LIT-Ti 30 M params, 41.6 box AP; LIT-S 39 M, 41.6).

    Args:
        backbone (str): a LIT model name (``lit_ti``, ``lit_s``, ... or an ablation model).
        num_classes (int): object classes K (sigmoid logits 0..K-1, no background logit).
        pretrained_backbone (str, optional): ImageNet checkpoint for the backbone (official or litvit).
        min_size (int | Sequence[int]): shorter side of the test scale (the last value; several
            values are the training scales of multi-scale training).
        max_size (int): longer side of the scale (mmdet's ``img_scale=(max_size, min_size)``).
        frozen_stages (int): see :class:`litvit.models.backbone.LITBackbone`.
        norm_eval (bool): keep the DTM BatchNorms in eval mode while training.
        backbone_kwargs (dict, optional): passed to :func:`litvit.create_model` (``img_size``,
            ``drop_path_rate``, widths for tiny test models, ...).
        fpn_channels (int): FPN and head width (256 in the paper; smaller only for quick tests).
        class_names (Sequence[str], optional): the classes' names (``model.classes``).

    Returns:
        :class:`~litvit.models.official_dense.RetinaNet`: ``model.predict(image)`` runs the test
        pipeline and ``test_cfg`` on an RGB image; ``model.forward_train(...)`` gives mmdet's losses.
    """
    body = _backbone(backbone, "retinanet", pretrained_backbone, frozen_stages, norm_eval, backbone_kwargs)
    neck = FPN(list(body.channels), fpn_channels, 5, start_level=1, add_extra_convs="on_input")
    anchors = AnchorGenerator(**RETINA_ANCHORS)
    head = RetinaHead(num_classes, fpn_channels, feat_channels=fpn_channels, stacked_convs=4,
                      num_anchors=anchors.num_anchors)
    model = RetinaNet(body, neck, head, anchors, dict(CODER), retina_test_settings(),
                      class_names_or_indices(num_classes, class_names), _pipeline(min_size, max_size))
    return _finish(model, "retinanet", backbone)


def mask_rcnn(
        backbone: str = "lit_ti",
        num_classes: int = 80,
        pretrained_backbone: Optional[str] = None,
        min_size: Union[int, Sequence[int]] = DETECTION_DEFAULTS["min_size"],
        max_size: int = DETECTION_DEFAULTS["max_size"],
        frozen_stages: int = -1,
        norm_eval: bool = False,
        backbone_kwargs: Optional[Dict] = None,
        fpn_channels: int = 256,
        class_names: Optional[Sequence[str]] = None,
) -> MaskRCNN:
    """Mask R-CNN with a LIT backbone (paper: LIT-Ti 40 M params, 42.0 box / 39.1 mask AP; LIT-S
    48 M, 42.9 / 39.6). Arguments as :func:`retinanet`; the RPN, the FCN mask head's convs and the
    RoI features are ``fpn_channels`` wide, the box head's FCs 1024.

    Returns:
        :class:`~litvit.models.official_dense.MaskRCNN`.
    """
    body = _backbone(backbone, "mask_rcnn", pretrained_backbone, frozen_stages, norm_eval, backbone_kwargs)
    neck = FPN(list(body.channels), fpn_channels, 5)
    anchors = AnchorGenerator(**RPN_ANCHORS)
    rpn = RPNHead(fpn_channels, fpn_channels, anchors.num_anchors)
    strides = [4, 8, 16, 32]
    roi_head = StandardRoIHead(RoIExtractor(7, strides), ConvFCBBoxHead(num_classes, fpn_channels, 7, 1024, 2),
                               RoIExtractor(14, strides), FCNMaskHead(num_classes, fpn_channels, fpn_channels, 4))
    model = MaskRCNN(body, neck, rpn, roi_head, anchors, dict(CODER), dict(RCNN_CODER), mask_rcnn_test_settings(),
                     class_names_or_indices(num_classes, class_names), _pipeline(min_size, max_size))
    return _finish(model, "mask_rcnn", backbone)


def build_detector(arch: str, **kwargs) -> DenseRelease:
    """``retinanet(**kwargs)`` or ``mask_rcnn(**kwargs)`` by name."""
    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    return (retinanet if arch == "retinanet" else mask_rcnn)(**kwargs)


def parameter_table(num_classes: int = 80) -> Tuple[Tuple[str, str, int, int, Optional[float]], ...]:
    """(detector, backbone, total params, backbone params, paper's millions) for the paper's four
    models, counted on the meta device."""
    rows = []
    for (arch, bb), paper in PAPER_PARAMS.items():
        with torch.device("meta"):
            model = build_detector(arch, backbone=bb, num_classes=num_classes)
        rows.append((arch, bb, count_parameters(model), count_parameters(model.backbone), paper))
    return tuple(rows)
