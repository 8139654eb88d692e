"""Semantic FPN with a LIT backbone: the authors' model (mmseg 0.13), for training and inference.

The paper (Pan et al., AAAI 2022, Table 7) evaluates LIT-Ti and LIT-S on ADE20K with Semantic FPN
(Kirillov et al., *Panoptic Feature Pyramid Networks*, CVPR 2019): an FPN with 256 channels over
the four stage maps (strides 4-32); each level passes through ``max(1, log2(s / 4))`` blocks of
3x3 conv (128 channels) + BatchNorm + ReLU, each block but the stride-4 one followed by a 2x bilinear
upsampling, so that all levels arrive at stride 4; they are summed, dropout (0.1) and a 1x1 conv
classify each pixel at stride 4.

:func:`semantic_fpn` builds the very model a release of the authors loads into
(:class:`litvit.models.official_dense.SemanticFPN`: ``backbone`` / ``neck`` / ``decode_head`` under
the release's names, :func:`~litvit.models.official_dense.backbone.dense_backbone` for the backbone),
initialised as mmseg 0.13 initialises it, trained with its loss (``model.forward_train(x, labels)``:
:mod:`litvit.models.official_dense.seg_train`) and run by its whole-image inference (keep-ratio
resize to the 2048x512 scale, logits resized bilinearly to the image). A checkpoint of ``litvit
segment train`` and a release are the same kind of object. The head's BatchNorms become
SyncBatchNorms under DDP (:func:`convert_head_sync_batchnorm`; the authors' ``SyncBN``), the
backbone's DTM BatchNorms stay per-process. Recipe ``semantic-fpn-80k`` of :mod:`litvit.recipes`:
512x512 crops, AdamW lr 1e-4, weight decay 1e-4, poly (power 0.9) to 1e-6 over 80k iterations,
batch 16 (docs/architecture.md).

The metrics (confusion matrix, mIoU) are in :mod:`litvit.metrics`.

Examples::
    >>> import torch
    >>> from litvit.models.semantic_fpn import semantic_fpn
    >>> model = semantic_fpn(backbone='lit_ti', num_classes=150).eval()
    >>> model(torch.randn(1, 3, 256, 320)).shape   # logits at stride 4
    torch.Size([1, 150, 64, 80])
"""
import warnings
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..recipes import DENSE_RECIPES
from ..utils import count_parameters
from .official_dense.backbone import dense_backbone
from .official_dense.heads import FPN, FPNHead
from .official_dense.models import SemanticFPN
from .official_dense.preprocess import TestPipeline
from .official_dense.seg_train import init_semantic_fpn_

__all__ = ["SemanticFPNHead", "SemanticFPN", "semantic_fpn", "resize_argmax", "RESIZE_MAX_ELEMENTS",
           "SEGMENTATION_DEFAULTS", "PAPER_PARAMS", "SyncBatchNorm", "convert_head_sync_batchnorm", "parameter_table"]

# The paper's ADE20K recipe, family-independent values (the whole recipe, family rules included, is
# litvit.recipes.DENSE_RECIPES["semantic-fpn-80k"]).
SEGMENTATION_DEFAULTS = {k: v for k, v in DENSE_RECIPES["semantic-fpn-80k"].items() if k != "by_family"}

# How many logits resize_argmax resizes at once (float32: 64 MiB).
RESIZE_MAX_ELEMENTS = 1 << 24

# Parameter counts the paper reports (ADE20K, 150 classes), millions.
PAPER_PARAMS = {("semantic_fpn", "lit_ti"): 24.0, ("semantic_fpn", "lit_s"): 32.0}

# The head of Semantic FPN: mmseg's FPNHead (the name litvit used before it built the authors' model).
SemanticFPNHead = FPNHead


def resize_argmax(
        logits: Tensor,
        size: Sequence[int],
        dtype: torch.dtype = torch.int64,
        max_elements: Optional[int] = None,
) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear").argmax(1)`` without holding the resized logits.

    The classes are resized a few at a time (as many as fit in ``max_elements`` values, at least
    one) and a running maximum keeps the best class of each pixel: each resize computes the same
    numbers as the whole one, so the labels are the same (ties go to the lower class, as
    ``argmax``'s), while memory holds one group of classes and the running maximum instead of K
    full-size maps (150 classes at 9000x9000 would take 48.6 GB in float32).

    Args:
        logits (Tensor[B, K, h, w]): class scores.
        size (Sequence[int]): (H, W) to resize to.
        dtype (torch.dtype): of the labels (``torch.uint8`` holds up to 256 classes in a quarter of
            the memory of int64).
        max_elements (int, optional): values resized at once (default :data:`RESIZE_MAX_ELEMENTS`,
            2**24: 64 MiB of float32; one class at least).

    Returns:
        Tensor[B, H, W]: class indices.

    Examples::
        >>> resize_argmax(torch.randn(1, 150, 16, 16), (300, 200)).shape
        torch.Size([1, 300, 200])
    """
    B, K = logits.shape[:2]
    H, W = int(size[0]), int(size[1])
    if (H, W) == tuple(logits.shape[-2:]):
        return logits.argmax(1).to(dtype)
    step = max(1, (max_elements or RESIZE_MAX_ELEMENTS) // max(1, B * H * W))
    labels = torch.zeros(B, H, W, dtype=dtype, device=logits.device)
    best = None
    for k in range(0, K, step):
        part = F.interpolate(logits[:, k:k + step], size=(H, W), mode="bilinear", align_corners=False)
        if part.shape[1] == 1:  # large images: one class at a time, no index map to hold
            value, index = part[:, 0], None
        else:
            value, index = part.max(1)  # B, n, H, W -> B, H, W (the first of equal maxima)
        if best is None:
            best = value
            if index is not None:
                labels.copy_(index)
            continue
        better = value > best  # strictly: a tie keeps the lower class
        torch.maximum(best, value, out=best)
        if index is None:
            labels.masked_fill_(better, k)
        else:
            labels.copy_(torch.where(better, index + k, labels))
        del part, value, index, better
    return labels


def semantic_fpn(
        backbone: str = "lit_ti",
        num_classes: int = 150,
        pretrained_backbone: Optional[str] = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        channels: int = 128,
        dropout: float = 0.1,
        backbone_kwargs: Optional[Dict] = None,
        fpn_channels: int = 256,
        class_names: Optional[Sequence[str]] = None,
        palette: Optional[Sequence[Sequence[int]]] = None,
        test_scale: Optional[Sequence[int]] = None,
) -> SemanticFPN:
    """Semantic FPN with a LIT backbone as the authors' config builds it (paper, ADE20K: LIT-Ti 24 M
    params, 41.3 mIoU; LIT-S 32 M, 41.7).

    Args:
        backbone (str): a LIT model name.
        num_classes (int): classes (150 for ADE20K).
        pretrained_backbone (str, optional): ImageNet checkpoint for the backbone (official or litvit).
        frozen_stages (int): see :class:`litvit.models.backbone.LITBackbone`.
        norm_eval (bool): keep the DTM BatchNorms in eval mode while training.
        channels (int): head width (128).
        dropout (float): dropout before the classifier (0.1).
        backbone_kwargs (dict, optional): passed to :func:`litvit.create_model`; LIT-S/M/B default to
            ``img_size=512`` (relative tables learned for 512x512 crops, as the authors').
        fpn_channels (int): FPN width (256 in the paper; smaller only for quick tests).
        class_names (Sequence[str], optional): the classes' names (default ``class_0`` ...).
        palette (Sequence[Sequence[int]], optional): an RGB colour per class.
        test_scale (Sequence[int], optional): the (long, short) keep-ratio scale of the test
            pipeline (the recipe's 2048x512).

    Returns:
        SemanticFPN: :class:`litvit.models.official_dense.SemanticFPN` (``backbone``, ``neck``,
        ``decode_head``), in train mode, with mmseg 0.13's initialisation of the neck and head.

    The backbone follows the authors' segmentation backbones of its family: LIT-S/M/B normalise all
    four stage outputs, LIT-Ti resizes its position embeddings bilinearly.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    if palette is not None and len(palette) != num_classes:
        raise ValueError(f"a palette of {len(palette)} colours for {num_classes} classes")
    body = dense_backbone(backbone, "segmentation", "semantic-fpn-80k", pretrained=pretrained_backbone,
                          frozen_stages=frozen_stages, norm_eval=norm_eval, backbone_kwargs=backbone_kwargs)
    neck = FPN(list(body.channels), fpn_channels, num_outs=4)
    head = FPNHead([fpn_channels] * 4, channels, num_classes, feature_strides=(4, 8, 16, 32), in_index=(0, 1, 2, 3),
                   norm=True, dropout_ratio=dropout, align_corners=False)
    init_semantic_fpn_(neck, head)
    scale = tuple(int(v) for v in (test_scale or SEGMENTATION_DEFAULTS["scale"]))
    pipeline = TestPipeline(img_scale=scale, keep_ratio=True, size_divisor=None)  # the authors' mean / std, RGB
    return SemanticFPN(body, neck, head, dict(mode="whole"), names, pipeline, palette=palette, align_corners=False)


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also synchronises CPU processes (gloo), where torch's refuses.

    On CUDA it is torch's. On the CPU, while training under an initialised process group of
    several processes, the batch statistics are summed over processes with the autograd-aware
    ``torch.distributed.nn.all_reduce`` (the gradient flows through the statistics as in torch's
    implementation) and the running statistics are updated with the unbiased global variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)  # torch's: CUDA, or no synchronisation needed
        # autograd-aware, in every torch we support; imported when first needed (it loads torch's RPC layer)
        from torch.distributed.nn.functional import all_reduce
        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # newer torch prefers a private module
            stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # C sums, C square sums, count
        C = x.shape[1]
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp(min=0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1))
                self.num_batches_tracked.add_(1)
        shape = [1, C] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_head_sync_batchnorm(model: SemanticFPN) -> SemanticFPN:
    """Turn the decode head's BatchNorms into :class:`SyncBatchNorm` (statistics over every process),
    in place; the backbone's BatchNorms (DTM) stay per-process, as in the authors' runs (the FPN has
    none)."""
    head = nn.SyncBatchNorm.convert_sync_batchnorm(model.decode_head)
    for m in head.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = SyncBatchNorm
    model.decode_head = head
    return model


def parameter_table(num_classes: int = 150):
    """(model, backbone, total params, backbone params, paper's millions), counted on the meta device."""
    rows = []
    for (arch, bb), paper in PAPER_PARAMS.items():
        with torch.device("meta"):
            model = semantic_fpn(bb, num_classes=num_classes)
        rows.append((arch, bb, count_parameters(model), count_parameters(model.backbone), paper))
    return tuple(rows)
