"""Necks, heads and box arithmetic of the authors' mmdet 2.11 / mmseg 0.13 dense models.

Each module keeps the submodule names of the authors' state dicts (``neck.lateral_convs.0.conv``,
``bbox_head.retina_cls``, ``roi_head.bbox_head.shared_fcs.0``, ``decode_head.scale_heads.1.0.bn``
...), so a release loads without renaming, and computes what the authors' module computes:

* :class:`FPN`: 1x1 laterals, nearest top-down upsampling to the finer map's size, 3x3 outputs,
  extra levels by a stride-2 conv (``add_extra_convs``) or a 1x1 stride-2 max pool;
* :class:`RetinaHead` with :func:`anchor_grid` (mmdet's ``AnchorGenerator``: centre offset 0,
  ratio-major anchors, no rounding) and :func:`delta2bbox` (``DeltaXYWHBBoxCoder``);
* :class:`RPNHead`, :class:`RoIExtractor` (``SingleRoIExtractor``: level
  ``floor(log2(sqrt(wh) / 56 + 1e-6))``, torchvision's ``roi_align`` with ``aligned=True``),
  :class:`ConvFCBBoxHead` (``Shared2FCBBoxHead``), :class:`FCNMaskHead` and :func:`paste_masks`
  (mmdet's CPU paste: ``grid_sample`` over the box's pixel range, threshold ``>= 0.5``);
* :func:`batched_nms` / :func:`multiclass_nms`: mmcv's (class-offset trick below 10000 boxes, one
  NMS per class above) on ``torchvision.ops.nms``;
* :class:`FPNHead`: mmseg's Semantic FPN head.
"""
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

__all__ = ["ConvModule", "FPN", "RetinaHead", "RPNHead", "ConvFCBBoxHead", "FCNMaskHead", "FPNHead",
           "RoIExtractor", "base_anchors", "anchor_grid", "delta2bbox", "batched_nms", "multiclass_nms",
           "paste_masks", "paste_mask_regions"]


def _init(module: nn.Module, kind: str, std: float = 0.01, bias: float = 0.) -> None:
    """mmcv 1.x's initialisers: ``"normal"`` (``normal_init``, ``std``), ``"xavier"`` (uniform,
    gain 1), ``"kaiming"`` (``kaiming_init``: normal, fan_out, ReLU); the bias set to ``bias``."""
    if kind == "normal":
        nn.init.normal_(module.weight, 0., std)
    elif kind == "xavier":
        nn.init.xavier_uniform_(module.weight)
    else:
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


class ConvModule(nn.Module):
    """mmcv's ConvModule as the authors' configs use it: conv (bias only without a norm), then an
    optional BatchNorm (``bn``; mmseg's SyncBN is a BatchNorm in eval), then an optional ReLU."""

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int,
            stride: int = 1,
            padding: int = 0,
            norm: bool = False,
            act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.activate = nn.ReLU() if act else None

    def init_weights(self) -> None:
        """What mmcv's ConvModule does when it is built: kaiming (fan_out, ReLU) conv, BN 1 / 0."""
        _init(self.conv, "kaiming")
        if self.bn is not None:
            nn.init.constant_(self.bn.weight, 1)
            nn.init.constant_(self.bn.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class FPN(nn.Module):
    """mmdet's / mmseg's FPN (no norms, no activations, the authors' settings).

    Args:
        in_channels (Sequence[int]): widths of the backbone maps.
        out_channels (int): FPN width.
        num_outs (int): output levels.
        start_level (int): first backbone map used.
        end_level (int): one past the last backbone map used (-1: all).
        add_extra_convs (bool | str): extra levels by stride-2 3x3 convs on ``"on_input"`` (the last
            backbone map used), ``"on_lateral"`` or ``"on_output"``; ``False``: max pooling.
        relu_before_extra_convs (bool): ReLU before the second and later extra convs.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            out_channels: int,
            num_outs: int,
            start_level: int = 0,
            end_level: int = -1,
            add_extra_convs: Union[bool, str] = False,
            relu_before_extra_convs: bool = False,
    ):
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_outs = num_outs
        self.start_level = start_level
        self.end_level = len(self.in_channels) if end_level == -1 else end_level
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, "on_input", "on_lateral", "on_output"):
            raise ValueError(f"add_extra_convs={add_extra_convs!r} is not one of False, 'on_input', "
                             f"'on_lateral', 'on_output'")
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList([
            ConvModule(self.in_channels[i], out_channels, 1, act=False) for i in range(start_level, self.end_level)])
        self.fpn_convs = nn.ModuleList([
            ConvModule(out_channels, out_channels, 3, padding=1, act=False)
            for _ in range(start_level, self.end_level)])
        extra = num_outs - (self.end_level - start_level)
        if add_extra_convs and extra > 0:
            for i in range(extra):
                c = self.in_channels[self.end_level - 1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.fpn_convs.append(ConvModule(c, out_channels, 3, stride=2, padding=1, act=False))

    def init_weights(self) -> None:
        """mmdet 2.11's FPN: every conv xavier-uniform, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init(m, "xavier")

    def forward(self, inputs: Sequence[Tensor]) -> List[Tensor]:
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[self.end_level - 1], "on_lateral": laterals[-1],
                          "on_output": outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    outs.append(self.fpn_convs[i](F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return outs


# --- anchors, box coder, NMS --------------------------------------------------------------------

def base_anchors(
        base_size: float,
        scales: Sequence[float],
        ratios: Sequence[float],
        center_offset: float = 0.,
) -> Tensor:
    """mmdet's base anchors of one level, ratio-major (``scale_major=True``), float32.

    Returns:
        Tensor[len(ratios) * len(scales), 4]: (x1, y1, x2, y2) around ``center_offset * base_size``.
    """
    scales_t = torch.tensor(np.asarray(scales, dtype=np.float64), dtype=torch.float32)
    ratios_t = torch.tensor(list(ratios), dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (base_size * h_ratios[:, None] * scales_t[None, :]).view(-1)
    c = center_offset * base_size
    return torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)


def anchor_grid(base: Tensor, featmap_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """All anchors of one level: ``base`` shifted to every map position, row-major, anchors innermost.

    Returns:
        Tensor[H * W * A, 4].
    """
    H, W = featmap_size
    shift_x = torch.arange(0, W, device=base.device) * stride[0]
    shift_y = torch.arange(0, H, device=base.device) * stride[1]
    xx = shift_x.repeat(H)
    yy = shift_y.view(-1, 1).repeat(1, W).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).type_as(base)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)  # H*W, A, 4 -> H*W*A, 4


def delta2bbox(
        rois: Tensor,
        deltas: Tensor,
        means: Sequence[float] = (0., 0., 0., 0.),
        stds: Sequence[float] = (1., 1., 1., 1.),
        max_shape: Optional[Tuple[int, int]] = None,
        wh_ratio_clip: float = 16 / 1000,
        clip_border: bool = True,
) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode``.

    Args:
        rois (Tensor[..., N, 4]): reference boxes (x1, y1, x2, y2).
        deltas (Tensor[..., N, 4 * K]): (dx, dy, dw, dh) per box and class.
        max_shape (Tuple[int, int], optional): (h, w) to clamp x to [0, w] and y to [0, h].

    Returns:
        Tensor[..., N, 4 * K].
    """
    k = deltas.size(-1) // 4
    means_t = deltas.new_tensor(means).view(1, -1).repeat(1, k)
    stds_t = deltas.new_tensor(stds).view(1, -1).repeat(1, k)
    d = deltas * stds_t + means_t
    dx, dy, dw, dh = d[..., 0::4], d[..., 1::4], d[..., 2::4], d[..., 3::4]
    max_ratio = np.abs(np.log(wh_ratio_clip))
    dw = dw.clamp(min=-max_ratio, max=max_ratio)
    dh = dh.clamp(min=-max_ratio, max=max_ratio)
    x1, y1, x2, y2 = rois[..., 0], rois[..., 1], rois[..., 2], rois[..., 3]
    px = ((x1 + x2) * 0.5).unsqueeze(-1).expand_as(dx)
    py = ((y1 + y2) * 0.5).unsqueeze(-1).expand_as(dy)
    pw = (x2 - x1).unsqueeze(-1).expand_as(dw)
    ph = (y2 - y1).unsqueeze(-1).expand_as(dh)
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    gx = px + pw * dx
    gy = py + ph * dy
    boxes = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1).view(deltas.size())
    if clip_border and max_shape is not None:
        h, w = float(max_shape[0]), float(max_shape[1])
        max_xy = boxes.new_tensor([w, h] * (deltas.size(-1) // 2))
        zero = boxes.new_tensor(0)
        boxes = torch.where(boxes < zero, zero, boxes)
        boxes = torch.where(boxes > max_xy, max_xy, boxes)
    return boxes


def batched_nms(
        boxes: Tensor,
        scores: Tensor,
        idxs: Tensor,
        iou_threshold: float,
        class_agnostic: bool = False,
        split_thr: int = 10000,
) -> Tuple[Tensor, Tensor]:
    """mmcv's ``batched_nms``: NMS within each ``idxs`` group.

    Below ``split_thr`` boxes the groups are separated by offsetting each box by
    ``idx * (max coordinate + 1)`` and one NMS runs (what the authors' results are computed with;
    the offset changes float32 rounding, so it is kept); above, one NMS per group, then all kept
    boxes sorted by score.

    Returns:
        (Tensor[K, 5], Tensor[K]): kept boxes with their scores, highest first, and their indices.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5), boxes.new_zeros(0, dtype=torch.long)
    if class_agnostic:
        boxes_for_nms = boxes
    else:
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        boxes_for_nms = boxes + offsets[:, None]
    if boxes_for_nms.shape[0] < split_thr:
        keep = torchvision.ops.nms(boxes_for_nms, scores, float(iou_threshold))
        kept_scores = scores[keep]
    else:
        total = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        after = scores.new_zeros(scores.shape)
        for i in torch.unique(idxs):
            mask = (idxs == i).nonzero(as_tuple=False).view(-1)
            k = torchvision.ops.nms(boxes_for_nms[mask], scores[mask], float(iou_threshold))
            total[mask[k]] = True
            after[mask[k]] = scores[mask[k]]
        keep = total.nonzero(as_tuple=False).view(-1)
        kept_scores, order = after[keep].sort(descending=True)
        keep = keep[order]
    return torch.cat([boxes[keep], kept_scores[:, None]], -1), keep


def multiclass_nms(
        multi_bboxes: Tensor,
        multi_scores: Tensor,
        score_thr: float,
        iou_threshold: float,
        max_num: int = -1,
) -> Tuple[Tensor, Tensor]:
    """mmdet's ``multiclass_nms``.

    Args:
        multi_bboxes (Tensor[N, 4] | Tensor[N, 4 * C]): boxes shared by the classes, or one per class.
        multi_scores (Tensor[N, C + 1]): class scores, the last column (background) ignored.
        score_thr (float): keep (box, class) pairs with a score above this.
        iou_threshold (float): NMS IoU, per class.
        max_num (int): keep at most this many (highest scores); -1: all.

    Returns:
        (Tensor[K, 5], Tensor[K]): (x1, y1, x2, y2, score) and class index, highest score first.
    """
    num_classes = multi_scores.size(1) - 1
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.view(multi_scores.size(0), -1, 4)
    else:
        bboxes = multi_bboxes[:, None].expand(multi_scores.size(0), num_classes, 4)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    if bboxes.numel() == 0:
        return bboxes.new_zeros(0, 5), labels
    dets, keep = batched_nms(bboxes, scores, labels, iou_threshold)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep]


# --- RetinaNet ----------------------------------------------------------------------------------

class RetinaHead(nn.Module):
    """mmdet's RetinaHead: ``stacked_convs`` 3x3 conv+ReLU towers for classes and boxes, then
    ``retina_cls`` (``A * C`` sigmoid logits, or ``A * (C + 1)`` softmax logits) and ``retina_reg``
    (``A * 4`` deltas) per level."""

    def __init__(
            self,
            num_classes: int,
            in_channels: int,
            feat_channels: int = 256,
            stacked_convs: int = 4,
            num_anchors: int = 9,
            use_sigmoid: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.use_sigmoid = use_sigmoid
        self.cls_out_channels = num_classes if use_sigmoid else num_classes + 1
        self.cls_convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1)
            for i in range(stacked_convs)])
        self.reg_convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1)
            for i in range(stacked_convs)])
        self.retina_cls = nn.Conv2d(feat_channels, num_anchors * self.cls_out_channels, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)

    def init_weights(self) -> None:
        """mmdet 2.11's RetinaHead: every conv normal (std 0.01), bias 0, except ``retina_cls``'s
        bias, the prior ``-log((1 - 0.01) / 0.01)`` (scores start at 0.01)."""
        for m in list(self.cls_convs) + list(self.reg_convs):
            _init(m.conv, "normal", 0.01)
        _init(self.retina_cls, "normal", 0.01, bias=float(-np.log((1 - 0.01) / 0.01)))
        _init(self.retina_reg, "normal", 0.01)

    def forward_single(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        outs = [self.forward_single(x) for x in feats]
        return [o[0] for o in outs], [o[1] for o in outs]


# --- Mask R-CNN ---------------------------------------------------------------------------------

class RPNHead(nn.Module):
    """mmdet's RPNHead: 3x3 conv + ReLU, then 1x1 ``rpn_cls`` (``A`` sigmoid logits) and ``rpn_reg``."""

    def __init__(self, in_channels: int, feat_channels: int = 256, num_anchors: int = 3):
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

    def init_weights(self) -> None:
        """mmdet 2.11's RPNHead: the three convs normal (std 0.01), bias 0."""
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            _init(m, "normal", 0.01)

    def forward_single(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = F.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        outs = [self.forward_single(x) for x in feats]
        return [o[0] for o in outs], [o[1] for o in outs]


class RoIExtractor(nn.Module):
    """mmdet's SingleRoIExtractor with mmcv's RoIAlign (avg pooling).

    A RoI of size ``s = sqrt(w * h)`` is pooled from level ``floor(log2(s / finest_scale + 1e-6))``
    (clamped to the levels there are), with ``torchvision.ops.roi_align(..., aligned=aligned)``.
    """

    def __init__(
            self,
            output_size: int,
            featmap_strides: Sequence[int],
            sampling_ratio: int = 0,
            aligned: bool = True,
            finest_scale: int = 56,
    ):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.featmap_strides = list(featmap_strides)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor, num_levels: int) -> Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=num_levels - 1).long()

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """
        Args:
            feats (Sequence[Tensor[B, C, H_l, W_l]]): the first ``num_inputs`` FPN maps.
            rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2).

        Returns:
            Tensor[K, C, out_h, out_w].
        """
        feats = feats[:self.num_inputs]
        out = feats[0].new_zeros(rois.size(0), feats[0].size(1), *self.output_size)
        if rois.size(0) == 0:
            return out
        levels = self.map_roi_levels(rois, len(feats)) if len(feats) > 1 else rois.new_zeros(len(rois)).long()
        for i, feat in enumerate(feats):
            inds = (levels == i).nonzero(as_tuple=False).squeeze(1)
            if inds.numel():
                out[inds] = torchvision.ops.roi_align(
                    feat, rois[inds].to(feat.dtype), self.output_size, spatial_scale=1.0 / self.featmap_strides[i],
                    sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        return out


class ConvFCBBoxHead(nn.Module):
    """mmdet's ``Shared2FCBBoxHead`` (``ConvFCBBoxHead`` with shared fully connected layers only):
    flatten, ``shared_fcs`` (Linear + ReLU), then ``fc_cls`` (C + 1 softmax logits, background
    last) and ``fc_reg`` (4 deltas per class, or 4 when class agnostic)."""

    def __init__(
            self,
            num_classes: int,
            in_channels: int,
            roi_feat_size: int = 7,
            fc_out_channels: int = 1024,
            num_shared_fcs: int = 2,
            reg_class_agnostic: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        dims = [in_channels * roi_feat_size * roi_feat_size] + [fc_out_channels] * num_shared_fcs
        self.shared_fcs = nn.ModuleList([nn.Linear(dims[i], dims[i + 1]) for i in range(num_shared_fcs)])
        self.fc_cls = nn.Linear(dims[-1], num_classes + 1)
        self.fc_reg = nn.Linear(dims[-1], 4 if reg_class_agnostic else 4 * num_classes)

    def init_weights(self) -> None:
        """mmdet 2.11's ConvFCBBoxHead: ``fc_cls`` normal (std 0.01), ``fc_reg`` normal (std 0.001),
        then the shared fcs xavier-uniform; biases 0."""
        _init(self.fc_cls, "normal", 0.01)
        _init(self.fc_reg, "normal", 0.001)
        for fc in self.shared_fcs:
            _init(fc, "xavier")

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(1)  # K, C, 7, 7 -> K, C*49
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """mmdet's FCNMaskHead: ``num_convs`` 3x3 conv+ReLU, a 2x2 stride-2 transposed conv + ReLU
    (``upsample``), then 1x1 ``conv_logits`` (one sigmoid map per class, or one)."""

    def __init__(
            self,
            num_classes: int,
            in_channels: int,
            conv_out_channels: int = 256,
            num_convs: int = 4,
            conv_kernel_size: int = 3,
            scale_factor: int = 2,
            class_agnostic: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.convs = nn.ModuleList([
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, conv_kernel_size,
                       padding=(conv_kernel_size - 1) // 2) for i in range(num_convs)])
        c = conv_out_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(c, c, scale_factor, stride=scale_factor)
        self.conv_logits = nn.Conv2d(c, 1 if class_agnostic else num_classes, 1)

    def init_weights(self) -> None:
        """mmdet 2.11's FCNMaskHead: ``upsample`` and ``conv_logits`` kaiming-normal (fan_out,
        ReLU), bias 0; the convs as mmcv's ConvModule initialises them when built (the same)."""
        for m in (self.upsample, self.conv_logits):
            _init(m, "kaiming")
        for conv in self.convs:
            conv.init_weights()

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


def paste_mask_regions(masks: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold: float = 0.5
                       ) -> Iterator[Optional[Tuple[Tuple[slice, slice], Tensor]]]:
    """Each box's mask pasted over its own pixel range only, as mmdet 2.11 pastes it on the CPU:
    ``[floor(x1) - 1, ceil(x2) + 1)`` (clamped to the image), the mask sampled bilinearly
    (``grid_sample``, ``align_corners=False``) at pixel centres, then ``>= threshold``. One box at a
    time: no full-size map is held.

    Args:
        masks (Tensor[N, h, w]): probabilities of each box's class.
        boxes (Tensor[N, 4]): boxes in image pixels.
        img_h, img_w (int): the image's size.
        threshold (float): a pixel is in the mask when its probability is ``>= threshold``.

    Yields:
        per box, ``((rows, columns), Tensor[h', w'] bool)``: where in the image and which pixels;
        None when its range holds no pixel of the image.
    """
    for n in range(len(masks)):
        box = boxes[n:n + 1]
        x0_int, y0_int = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32).tolist()
        x1_int = int(torch.clamp(box[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32))
        y1_int = int(torch.clamp(box[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32))
        if x1_int <= x0_int or y1_int <= y0_int:
            yield None
            continue
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)  # 1, 1 each
        img_y = torch.arange(y0_int, y1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # 1, h'
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # 1, w'
        img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
        img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)  # 1, h', w', 2
        pasted = F.grid_sample(masks[n:n + 1, None].float(), grid, align_corners=False)[0, 0]
        yield (slice(y0_int, y1_int), slice(x0_int, x1_int)), pasted >= threshold


def paste_masks(masks: Tensor, boxes: Tensor, img_h: int, img_w: int, threshold: float = 0.5) -> Tensor:
    """Paste per-box mask probabilities into the image, as mmdet 2.11 does on the CPU
    (:func:`paste_mask_regions`, each into a full-size map).

    Args:
        masks (Tensor[N, h, w]): probabilities of each box's class.
        boxes (Tensor[N, 4]): boxes in image pixels.
        threshold (float): a pixel is in the mask when its probability is ``>= threshold``.

    Returns:
        Tensor[N, img_h, img_w] (bool).
    """
    out = torch.zeros(len(masks), img_h, img_w, dtype=torch.bool, device=masks.device)
    for n, region in enumerate(paste_mask_regions(masks, boxes, img_h, img_w, threshold)):
        if region is not None:
            (rows, cols), pixels = region
            out[n, rows, cols] = pixels
    return out


# --- Semantic FPN -------------------------------------------------------------------------------

class FPNHead(nn.Module):
    """mmseg's FPNHead (Semantic FPN): per FPN level ``max(1, log2(stride / stride_0))`` 3x3
    conv+BN+ReLU, each but level 0's followed by a 2x bilinear upsampling; the levels are resized to
    level 0's size and summed; dropout then 1x1 ``conv_seg``."""

    def __init__(
            self,
            in_channels: Sequence[int],
            channels: int,
            num_classes: int,
            feature_strides: Sequence[int] = (4, 8, 16, 32),
            in_index: Sequence[int] = (0, 1, 2, 3),
            norm: bool = True,
            dropout_ratio: float = 0.1,
            align_corners: bool = False,
    ):
        super().__init__()
        if len(feature_strides) != len(in_channels) or min(feature_strides) != feature_strides[0]:
            raise ValueError(f"feature_strides {tuple(feature_strides)} do not fit in_channels {tuple(in_channels)}")
        self.in_index = list(in_index)
        self.align_corners = align_corners
        self.num_classes = num_classes
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(feature_strides):
            length = max(1, int(np.log2(stride) - np.log2(feature_strides[0])))
            layers: List[nn.Module] = []
            for k in range(length):
                layers.append(ConvModule(in_channels[i] if k == 0 else channels, channels, 3, padding=1, norm=norm))
                if stride != feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x = [inputs[i] for i in self.in_index]
        out = self.scale_heads[0](x[0])
        for i in range(1, len(self.scale_heads)):
            out = out + F.interpolate(self.scale_heads[i](x[i]), size=out.shape[2:], mode="bilinear",
                                      align_corners=self.align_corners)
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv_seg(out)

