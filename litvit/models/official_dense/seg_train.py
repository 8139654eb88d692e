"""Training semantics of the authors' Semantic FPN (mmseg 0.13 with mmcv 1.x): initialisation and loss.

Read from their code (``tests/data/official_dense/generate_seg_train.py`` records both from it):

* **initialisation** (:func:`init_semantic_fpn_`): mmseg 0.13's ``EncoderDecoder.init_weights``
  calls the backbone's and the decode head's ``init_weights`` but *not* the neck's, so the FPN's
  xavier-uniform ``init_weights`` never runs: every ``ConvModule`` (FPN laterals and outputs, head
  convs) keeps what mmcv's ``ConvModule.__init__`` gives it, kaiming-normal with ``mode='fan_out'``,
  ``nonlinearity='relu'`` and bias 0, its BatchNorm weight 1 and bias 0; the classifier
  ``conv_seg`` gets ``normal(0, 0.01)`` and bias 0 (``BaseDecodeHead.init_weights``);
* **loss** (:func:`segmentation_loss`): ``BaseDecodeHead.losses`` resizes the head's logits
  (stride 4) bilinearly (``align_corners`` of the head, False) to the label size, and
  ``CrossEntropyLoss`` computes ``F.cross_entropy(..., reduction='none', ignore_index=255)`` then
  ``weight_reduce_loss(..., reduction='mean')``: the *mean over every pixel*, ignored ones counting
  0 (not the mean over the labelled pixels), times ``loss_weight`` (1.0); ``acc_seg`` is the share
  of all pixels (ignored ones included, never correct) whose arg-max is the label, in %.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["init_semantic_fpn_", "segmentation_loss", "IGNORE_INDEX"]

IGNORE_INDEX = 255  # mmseg's ignore_index (BaseDecodeHead's default, the authors' configs)


def init_semantic_fpn_(neck: nn.Module, decode_head: nn.Module) -> None:
    """The authors' initialisation of a Semantic FPN's neck and head, in place (see the module's
    docstring); the backbone keeps its own (LIT's, or the ImageNet weights loaded into it)."""
    for module in (neck, decode_head):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    nn.init.normal_(decode_head.conv_seg.weight, mean=0.0, std=0.01)
    nn.init.zeros_(decode_head.conv_seg.bias)


def segmentation_loss(
        logits: Tensor,
        labels: Tensor,
        ignore_index: int = IGNORE_INDEX,
        loss_weight: float = 1.0,
        align_corners: bool = False,
) -> Dict[str, Tensor]:
    """mmseg 0.13's ``decode_head.losses``: cross-entropy over every pixel, ignored ones counting 0.

    Args:
        logits (Tensor[B, K, h, w]): the head's logits (stride 4).
        labels (Tensor[B, H, W] | Tensor[B, 1, H, W]): class indices, ``ignore_index`` ignored.
        ignore_index (int): the label of pixels without a class (255).
        loss_weight (float): the loss's weight (1.0 in the authors' configs).
        align_corners (bool): of the bilinear resize to the labels (the head's, False).

    Returns:
        dict: ``loss_seg`` (scalar, float32, differentiable) and ``acc_seg`` (scalar, %, no gradient).

    Examples::
        >>> out = segmentation_loss(torch.zeros(2, 3, 4, 4), torch.full((2, 16, 16), 255))
        >>> float(out['loss_seg']), float(out['acc_seg'])
        (0.0, 0.0)
    """
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]  # B, 1, H, W -> B, H, W
    if logits.dim() != 4 or labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits (B, K, h, w) and labels (B, H, W), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    # mmseg computes the loss in float32 (force_fp32 on the logits)
    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    labels = labels.long()
    per_pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)  # B, H, W
    loss = loss_weight * per_pixel.mean()
    with torch.no_grad():
        acc = (logits.argmax(1) == labels).sum() * (100.0 / labels.numel())
    return dict(loss_seg=loss, acc_seg=acc)
