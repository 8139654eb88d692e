"""RetinaNet and Mask R-CNN with a LIT backbone, on torchvision's detection models.

The paper (Pan et al., AAAI 2022, Table 6) trains RetinaNet and Mask R-CNN with LIT-Ti and LIT-S
backbones on COCO with the 1x schedule (12 epochs, lr x0.1 after epochs 8 and 11), AdamW lr 1e-4
(RetinaNet) / 2e-4 (Mask R-CNN), weight decay 1e-4, images resized to (1333, 800) (the recipes
``retinanet-1x`` and ``mask-rcnn-1x`` of :mod:`litvit.recipes`). The authors used forked
mmdetection 2.11 trees; here the same architectures are assembled from ``torchvision.models.detection``:

* RetinaNet: an FPN over stages 2-4 (strides 8-32, P3-P5) plus P6/P7 from stride-2 3x3 convs on
  the *input* of the last level (C5), as mmdetection's ``add_extra_convs='on_input'``, without a
  ReLU before P7 (mmdetection 2.11's ``relu_before_extra_convs=False``; torchvision's
  ``LastLevelP6P7`` has one); 9 anchors per location (3 octave scales x 3 ratios, sizes 32-512);
  focal loss.
* Mask R-CNN: an FPN over all four stages (P2-P5) plus a max-pooled P6 for the RPN; RoIAlign
  7x7 box head (two 1024-d FC layers) and 14x14 mask head (four convs + deconv).

Labels follow torchvision: object classes are 1..K and 0 is background, so both detectors are
built with ``num_classes + 1`` outputs. For RetinaNet the extra logit (never a positive target)
costs 9 x (256 x 9 + 1) = 20,745 parameters beside mmdetection's count.

Examples::
    >>> import torch
    >>> from litvit.models.detectors import retinanet
    >>> model = retinanet(backbone='lit_ti', num_classes=80).eval()
    >>> out = model([torch.rand(3, 480, 640)])
    >>> sorted(out[0])
    ['boxes', 'labels', 'scores']
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..recipes import DENSE_RECIPES
from ..utils import count_parameters
from .backbone import LITFPN, build_backbone, default_backbone_img_size, dense_backbone_kwargs
from .factory import create_model

__all__ = ["retinanet", "mask_rcnn", "build_detector", "DETECTORS", "DETECTION_DEFAULTS", "PAPER_PARAMS",
           "LastLevelP6P7OnInput", "detector_backbone", "default_backbone_img_size"]

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


class LastLevelP6P7OnInput(LastLevelP6P7):
    """RetinaNet's P6 and P7 as mmdetection 2.11 builds them (``add_extra_convs='on_input'``,
    ``relu_before_extra_convs=False``): P6 = conv3x3/2(C5), P7 = conv3x3/2(P6), no ReLU between.
    Parameters are torchvision's ``p6`` / ``p7``."""

    def forward(self, p: List[Tensor], c: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        p6 = self.p6(c[-1])
        p7 = self.p7(p6)
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


def detector_backbone(
        backbone: str,
        fpn_stages: Sequence[int],
        extra_blocks: nn.Module,
        pretrained_backbone: Optional[str] = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        backbone_kwargs: Optional[Dict] = None,
        fpn_channels: int = 256,
) -> LITFPN:
    """A LIT backbone with an FPN over ``fpn_stages`` and the given extra levels; output norms and
    position-embedding resizing as the authors' detection backbones of the model's family."""
    kwargs = dense_backbone_kwargs(backbone, "detection", "retinanet-1x", backbone_kwargs)
    body = build_backbone(backbone, pretrained=pretrained_backbone, out_indices=tuple(sorted(fpn_stages)),
                          frozen_stages=frozen_stages, norm_eval=norm_eval, **kwargs)
    return LITFPN(body, fpn_stages=fpn_stages, out_channels=fpn_channels, extra_blocks=extra_blocks)


def _transform_kwargs(min_size: Union[int, Sequence[int]], max_size: int) -> Dict:
    min_size = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    return dict(min_size=min_size, max_size=max_size, image_mean=list(IMAGENET_DEFAULT_MEAN),
                image_std=list(IMAGENET_DEFAULT_STD))


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
        **kwargs,
) -> RetinaNet:
    """RetinaNet with a LIT backbone (paper: LIT-Ti 30 M params, 41.6 box AP; LIT-S 39 M, 41.6).

    Args:
        backbone (str): a LIT model name (``lit_ti``, ``lit_s``, ... or an ablation model).
        num_classes (int): object classes K (labels 1..K; the model has K + 1 outputs).
        pretrained_backbone (str, optional): ImageNet checkpoint for the backbone (official or litvit).
        min_size (int | Sequence[int]): shorter image side; several values = multi-scale training
            (one drawn per batch), the last one is used at test time.
        max_size (int): longer side limit.
        frozen_stages (int): see :class:`litvit.models.backbone.LITBackbone`.
        norm_eval (bool): keep the DTM BatchNorms in eval mode while training.
        backbone_kwargs (dict, optional): passed to :func:`litvit.create_model` (``img_size``,
            ``drop_path_rate``, widths for tiny test models, ...).
        fpn_channels (int): FPN and head width (256 in the paper; smaller only for quick tests).
        **kwargs: passed to ``torchvision.models.detection.RetinaNet`` (``score_thresh``,
            ``nms_thresh``, ``detections_per_img``, ``anchor_generator``, ...).

    Returns:
        torchvision's RetinaNet: ``model(images, targets)`` returns the loss dict when training
        and a list of ``{'boxes', 'scores', 'labels'}`` in input-image coordinates in eval mode.
    """
    bb = detector_backbone(backbone, (1, 2, 3), LastLevelP6P7OnInput(_c5(backbone, backbone_kwargs), fpn_channels),
                           pretrained_backbone, frozen_stages, norm_eval, backbone_kwargs, fpn_channels)
    kwargs.setdefault("detections_per_img", 100)  # mmdetection's max_per_img
    return RetinaNet(bb, num_classes=num_classes + 1, **_transform_kwargs(min_size, max_size), **kwargs)


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
        **kwargs,
) -> MaskRCNN:
    """Mask R-CNN with a LIT backbone (paper: LIT-Ti 40 M params, 42.0 box / 39.1 mask AP; LIT-S
    48 M, 42.9 / 39.6). Arguments as :func:`retinanet`; ``**kwargs`` go to torchvision's MaskRCNN.

    Returns:
        torchvision's MaskRCNN: losses when training; ``{'boxes', 'scores', 'labels', 'masks'}``
        (masks ``[N, 1, H, W]`` probabilities) in eval mode.
    """
    bb = detector_backbone(backbone, (0, 1, 2, 3), LastLevelMaxPool(), pretrained_backbone, frozen_stages,
                           norm_eval, backbone_kwargs, fpn_channels)
    if fpn_channels != 256 and "mask_head" not in kwargs:
        # torchvision's default mask head is 256 wide whatever the FPN; narrow FPNs get a narrow mask head
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        kwargs.update(mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
                      mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
                      box_predictor=FastRCNNPredictor(1024, num_classes + 1))
        return MaskRCNN(bb, num_classes=None, **_transform_kwargs(min_size, max_size), **kwargs)
    return MaskRCNN(bb, num_classes=num_classes + 1, **_transform_kwargs(min_size, max_size), **kwargs)


def _c5(backbone: str, backbone_kwargs: Optional[Dict]) -> int:
    """Channels of stage 4 (the input of RetinaNet's P6 conv)."""
    if backbone_kwargs and "embed_dims" in backbone_kwargs:
        return int(backbone_kwargs["embed_dims"][3])
    with torch.device("meta"):
        return create_model(backbone, num_classes=0).embed_dims[3]


def build_detector(arch: str, **kwargs) -> nn.Module:
    """``retinanet(**kwargs)`` or ``mask_rcnn(**kwargs)`` by name."""
    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    return (retinanet if arch == "retinanet" else mask_rcnn)(**kwargs)


def parameter_table(num_classes: int = 80) -> Tuple[Tuple[str, str, int, int, Optional[float]], ...]:
    """(detector, backbone, total params, backbone+FPN params, paper's millions) for the paper's four
    models, counted on the meta device."""
    rows = []
    for (arch, bb), paper in PAPER_PARAMS.items():
        with torch.device("meta"):
            model = build_detector(arch, backbone=bb, num_classes=num_classes)
        rows.append((arch, bb, count_parameters(model), count_parameters(model.backbone.body), paper))
    return tuple(rows)
