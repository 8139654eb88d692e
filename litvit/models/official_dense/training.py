"""Training targets and losses of RetinaNet and Mask R-CNN as the authors' mmdet 2.11 computes them.

What :meth:`~.models.RetinaNet.forward_train` and :meth:`~.models.MaskRCNN.forward_train` run, one
function per step of mmdet's ``forward_train``, vectorised per image:

* :func:`bbox_overlaps` (``BboxOverlaps2D``: IoU or IoF, union clamped to ``eps = 1e-6``);
* :func:`max_iou_assign` (``MaxIoUAssigner``): negatives below ``neg_iou_thr`` (a float, or a
  ``[lo, hi)`` pair), positives from ``pos_iou_thr``, then each ground truth takes the candidates of
  its highest IoU when that IoU is ``>= min_pos_iou`` (all ties with ``gt_max_assign_all``; a later
  ground truth overwrites an earlier one); candidates whose IoF with an ignored box exceeds
  ``ignore_iof_thr`` get overlaps ``-1`` (neither positive nor negative) before anything else;
* :func:`sample` (``RandomSampler`` / ``PseudoSampler``): ground truths prepended as candidates
  (``add_gt_as_proposals``), ``int(num * pos_fraction)`` positives, ``num - positives`` negatives
  (at most ``neg_pos_ub * max(positives, 1)``), each chosen with ``torch.randperm`` on the global CPU
  generator only when there are more candidates than wanted, the chosen indices sorted;
* :func:`bbox2delta` (``DeltaXYWHBBoxCoder.encode``);
* :func:`dense_head_loss`: anchor targets per image (valid flags from ``pad_shape``, inside flags
  from ``img_shape`` and ``allowed_border``), sigmoid focal loss (RetinaNet) or sigmoid cross entropy
  (RPN) and L1 box loss per FPN level, divided by the number of positives (no sampling) or of
  positives plus negatives (sampling), each image counting at least one;
* :func:`roi_head_loss`: the RPN's proposals (detached, ``train_cfg.rpn_proposal``) assigned and
  sampled per image, softmax cross entropy over the sampled RoIs (divided by their number), L1 on
  the positives' class-specific deltas divided by the number of *all* sampled RoIs (mmdet's
  ``avg_factor=bbox_targets.size(0)``), and the mask loss: targets cropped from the ground-truth
  bitmaps by RoIAlign (``aligned=True``, clipped to the bitmap, ``>= 0.5``) at ``mask_size``,
  binary cross entropy on each positive RoI's class channel, averaged over its pixels.

Per-level losses are summed as mmdet's ``_parse_losses`` sums them. The train settings are
mmdet's ``train_cfg`` dicts (:data:`RETINANET_TRAIN_CFG`, :data:`MASK_RCNN_TRAIN_CFG`: the authors'
configs) and the heads' loss settings (:data:`RETINANET_LOSSES`, :data:`MASK_RCNN_LOSSES`);
:func:`check_train_cfg` refuses what is not implemented, in one ``ValueError``.
"""
import copy
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

__all__ = ["RETINANET_TRAIN_CFG", "MASK_RCNN_TRAIN_CFG", "RETINANET_LOSSES", "MASK_RCNN_LOSSES",
           "train_cfg_with_defaults", "loss_cfg_with_defaults", "check_train_cfg", "bbox_overlaps", "AssignResult",
           "max_iou_assign", "SamplingResult", "sample", "bbox2delta", "bbox2roi", "focal_loss", "anchor_targets",
           "dense_head_loss", "mask_targets", "roi_head_loss"]

# The authors' settings (configs/_base_/models/{retinanet,mask_rcnn}_fpn_lit_*.py).
_RETINA_ASSIGNER = dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1)
RETINANET_TRAIN_CFG: Dict[str, Any] = dict(assigner=_RETINA_ASSIGNER, allowed_border=-1, pos_weight=-1, debug=False)
MASK_RCNN_TRAIN_CFG: Dict[str, Any] = dict(
    rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                           match_low_quality=True, ignore_iof_thr=-1),
             sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
             allowed_border=-1, pos_weight=-1, debug=False),
    rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
    rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                            match_low_quality=True, ignore_iof_thr=-1),
              sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
              mask_size=28, pos_weight=-1, debug=False))
RETINANET_LOSSES: Dict[str, Any] = dict(
    loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
    loss_bbox=dict(type="L1Loss", loss_weight=1.0), reg_decoded_bbox=False)
MASK_RCNN_LOSSES: Dict[str, Any] = dict(
    rpn_loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    rpn_loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0),
    reg_decoded_bbox=False)
# mmdet 2.11's constructor defaults of what the configs may leave out
_ASSIGNER_DEFAULTS = dict(min_pos_iou=0.0, gt_max_assign_all=True, ignore_iof_thr=-1, ignore_wrt_candidates=True,
                          match_low_quality=True, gpu_assign_thr=-1, iou_calculator=dict(type="BboxOverlaps2D"))
_SAMPLER_DEFAULTS = dict(neg_pos_ub=-1, add_gt_as_proposals=True)


def _merge(default: Dict[str, Any], given: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = copy.deepcopy(default)
    for k, v in (given or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _stage(cfg: Dict[str, Any]) -> Dict[str, Any]:
    cfg["assigner"] = dict(_ASSIGNER_DEFAULTS, **cfg.get("assigner", {}))
    if "sampler" in cfg and cfg["sampler"].get("type") == "RandomSampler":
        cfg["sampler"] = dict(_SAMPLER_DEFAULTS, **cfg["sampler"])
    cfg.setdefault("allowed_border", -1)
    cfg.setdefault("pos_weight", -1)
    return cfg


def train_cfg_with_defaults(kind: str, cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A release's ``train_cfg`` (or None) over the authors' values, mmdet's defaults filled in.

    A stage the release gives replaces the default stage's keys it names (the rest stay the
    authors'); the RPN proposal settings' old names (``nms_thr``, ``max_num``), which mmdet 2.11
    still reads, become ``nms.iou_threshold`` and ``max_per_img``.
    """
    if kind == "retinanet":
        return _stage(_merge(RETINANET_TRAIN_CFG, cfg))
    if kind != "mask_rcnn":
        raise ValueError(f"no training settings for {kind!r} (retinanet or mask_rcnn)")
    out = _merge(MASK_RCNN_TRAIN_CFG, {k: v for k, v in (cfg or {}).items() if k != "rpn_proposal"})
    given = dict((cfg or {}).get("rpn_proposal") or {})
    if given:
        proposal = dict(nms_pre=given.get("nms_pre", -1), min_bbox_size=given.get("min_bbox_size", 0))
        if "nms" in given:
            proposal["nms"] = dict(given["nms"])
        elif "nms_thr" in given:
            proposal["nms"] = dict(type="nms", iou_threshold=given["nms_thr"])
        proposal["max_per_img"] = given.get("max_per_img", given.get("max_num", -1))
        out["rpn_proposal"] = proposal
    _stage(out["rpn"])
    _stage(out["rcnn"])
    return out


def loss_cfg_with_defaults(kind: str, heads: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The heads' loss settings (keys of :data:`RETINANET_LOSSES` / :data:`MASK_RCNN_LOSSES`), the
    authors' values for what ``heads`` does not give."""
    default = RETINANET_LOSSES if kind == "retinanet" else MASK_RCNN_LOSSES
    out = copy.deepcopy(default)
    for k, v in (heads or {}).items():
        if v is not None:
            out[k] = copy.deepcopy(v)
    return out


def check_train_cfg(kind: str, train_cfg: Dict[str, Any], loss_cfg: Dict[str, Any]) -> None:
    """Raise one ``ValueError`` listing every setting :meth:`forward_train` does not implement."""
    problems: List[str] = []

    def stage(name: str, cfg: Dict[str, Any], sampler_needed: bool):
        a = cfg.get("assigner", {})
        if a.get("type") != "MaxIoUAssigner":
            problems.append(f"{name}.assigner type {a.get('type')!r} (only MaxIoUAssigner)")
        if (a.get("iou_calculator") or {}).get("type", "BboxOverlaps2D") != "BboxOverlaps2D":
            problems.append(f"{name}.assigner.iou_calculator {a['iou_calculator']!r}")
        neg = a.get("neg_iou_thr")
        if not (isinstance(neg, (int, float)) or (isinstance(neg, (list, tuple)) and len(neg) == 2)):
            problems.append(f"{name}.assigner.neg_iou_thr={neg!r} (a number or a pair)")
        s = cfg.get("sampler")
        if s is not None and s.get("type") not in ("RandomSampler", "PseudoSampler"):
            problems.append(f"{name}.sampler type {s.get('type')!r} (only RandomSampler, PseudoSampler)")
        if s is None and sampler_needed:
            problems.append(f"{name}.sampler missing")

    def loss(name: str, got: Dict[str, Any], want: Dict[str, Any]):
        if got.get("type") != want["type"] or any(got.get(k, want[k]) != want[k] for k in ("use_sigmoid", "use_mask")
                                                  if k in want):
            problems.append(f"{name} {got!r} (only {want!r} with any loss_weight)")
        for k in ("class_weight", "reduction"):
            if got.get(k) not in (None, "mean"):
                problems.append(f"{name}.{k}={got[k]!r}")
        if got.get("type") == "FocalLoss" and got.get("alpha", 0.25) < 0:
            problems.append(f"{name}.alpha={got['alpha']} (a negative alpha is not supported)")

    if loss_cfg.get("reg_decoded_bbox"):
        problems.append("reg_decoded_bbox=True (losses on decoded boxes, e.g. GIoU)")
    if kind == "retinanet":
        stage("train_cfg", train_cfg, False)
        loss("loss_cls", loss_cfg["loss_cls"], dict(type="FocalLoss", use_sigmoid=True))
        loss("loss_bbox", loss_cfg["loss_bbox"], dict(type="L1Loss"))
    else:
        stage("train_cfg.rpn", train_cfg["rpn"], False)
        stage("train_cfg.rcnn", train_cfg["rcnn"], True)
        nms = (train_cfg.get("rpn_proposal") or {}).get("nms") or {}
        if nms.get("type", "nms") != "nms":
            problems.append(f"train_cfg.rpn_proposal.nms type {nms.get('type')!r} (only 'nms')")
        loss("rpn_loss_cls", loss_cfg["rpn_loss_cls"], dict(type="CrossEntropyLoss", use_sigmoid=True))
        loss("rpn_loss_bbox", loss_cfg["rpn_loss_bbox"], dict(type="L1Loss"))
        loss("loss_cls", loss_cfg["loss_cls"], dict(type="CrossEntropyLoss", use_sigmoid=False))
        loss("loss_bbox", loss_cfg["loss_bbox"], dict(type="L1Loss"))
        loss("loss_mask", loss_cfg["loss_mask"], dict(type="CrossEntropyLoss", use_mask=True))
    if problems:
        raise ValueError("training settings not supported: " + "; ".join(problems))


# --- boxes, assigning, sampling -----------------------------------------------------------------

def bbox_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """mmdet's ``bbox_overlaps`` (not aligned).

    Args:
        boxes1 (Tensor[N, 4+]), boxes2 (Tensor[M, 4+]): x1 y1 x2 y2 (a fifth column is ignored).
        mode (str): ``"iou"``, or ``"iof"`` (intersection over the area of ``boxes1``).

    Returns:
        Tensor[N, M]: the overlaps, each union (or area) clamped to at least ``eps``.
    """
    boxes1, boxes2 = boxes1[..., :4], boxes2[..., :4]
    if boxes1.size(0) == 0 or boxes2.size(0) == 0:
        return boxes1.new_zeros(boxes1.size(0), boxes2.size(0))
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)  # N, M, 2
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - overlap if mode == "iou" else area1[:, None]
    return overlap / torch.max(union, union.new_tensor([eps]))


class AssignResult(NamedTuple):
    """What :func:`max_iou_assign` gives each candidate.

    Attributes:
        num_gts (int): number of ground truths.
        gt_inds (Tensor[N] int64): 0 negative, -1 neither (ignored or between thresholds), ``i + 1``
            assigned to ground truth ``i``.
        max_overlaps (Tensor[N]): the candidate's highest IoU (-1 where ignored).
        labels (Tensor[N] int64, optional): the assigned ground truth's label, -1 elsewhere.
    """
    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Optional[Tensor]


def max_iou_assign(
        bboxes: Tensor,
        gt_bboxes: Tensor,
        cfg: Dict[str, Any],
        gt_bboxes_ignore: Optional[Tensor] = None,
        gt_labels: Optional[Tensor] = None,
) -> AssignResult:
    """mmdet 2.11's ``MaxIoUAssigner.assign`` (see the module docstring for the rules).

    Args:
        bboxes (Tensor[N, 4+]): candidates (anchors or proposals).
        gt_bboxes (Tensor[K, 4]): ground truths.
        cfg (dict): the assigner's settings (``pos_iou_thr``, ``neg_iou_thr``, ``min_pos_iou``,
            ``gt_max_assign_all``, ``match_low_quality``, ``ignore_iof_thr``, ``ignore_wrt_candidates``).
        gt_bboxes_ignore (Tensor[G, 4], optional): boxes to ignore.
        gt_labels (Tensor[K], optional): labels, for :attr:`AssignResult.labels`.
    """
    cfg = dict(_ASSIGNER_DEFAULTS, **cfg)
    overlaps = bbox_overlaps(gt_bboxes, bboxes)  # K, N
    ignore_thr = cfg["ignore_iof_thr"]
    if ignore_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0 and bboxes.numel() > 0:
        if cfg["ignore_wrt_candidates"]:
            ignore_max = bbox_overlaps(bboxes, gt_bboxes_ignore, mode="iof").max(dim=1).values
        else:
            ignore_max = bbox_overlaps(gt_bboxes_ignore, bboxes, mode="iof").max(dim=0).values
        overlaps[:, ignore_max > ignore_thr] = -1
    num_gts, num_bboxes = overlaps.shape
    assigned = overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
    if num_gts == 0 or num_bboxes == 0:
        if num_gts == 0:
            assigned[:] = 0
        labels = None if gt_labels is None else overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
        return AssignResult(num_gts, assigned, overlaps.new_zeros(num_bboxes), labels)
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_max, gt_argmax = overlaps.max(dim=1)
    neg = cfg["neg_iou_thr"]
    if isinstance(neg, (list, tuple)):
        assigned[(max_overlaps >= neg[0]) & (max_overlaps < neg[1])] = 0
    else:
        assigned[(max_overlaps >= 0) & (max_overlaps < neg)] = 0
    pos = max_overlaps >= cfg["pos_iou_thr"]
    assigned[pos] = argmax[pos] + 1
    if cfg["match_low_quality"]:
        if cfg["gt_max_assign_all"]:
            hit = overlaps == gt_max[:, None]
        else:
            hit = torch.zeros_like(overlaps, dtype=torch.bool)
            hit[torch.arange(num_gts, device=hit.device), gt_argmax] = True
        hit &= (gt_max >= cfg["min_pos_iou"])[:, None]
        # mmdet loops over the ground truths in order: the last one to claim a candidate keeps it
        last = num_gts - 1 - hit.flip(0).to(torch.uint8).argmax(dim=0)  # argmax: the first maximum
        assigned = torch.where(hit.any(dim=0), last + 1, assigned)
    labels = None
    if gt_labels is not None:
        labels = torch.where(assigned > 0, gt_labels[(assigned - 1).clamp(min=0)],
                             torch.full_like(assigned, -1))
    return AssignResult(num_gts, assigned, max_overlaps, labels)


class SamplingResult(NamedTuple):
    """The sampled candidates of one image (mmdet's ``SamplingResult``).

    Attributes:
        pos_inds, neg_inds (Tensor int64): indices into the candidates (ground truths first when
            they were added), sorted.
        pos_bboxes (Tensor[P, 4]), neg_bboxes (Tensor[Q, 4]): the sampled boxes.
        pos_assigned_gt_inds (Tensor[P]): the ground truth of each positive.
        pos_gt_bboxes (Tensor[P, 4]): its box.
        pos_gt_labels (Tensor[P], optional): its label (when the assigner was given labels).
        pos_is_gt (Tensor[P] bool): positives that are ground truths added as candidates.
    """
    pos_inds: Tensor
    neg_inds: Tensor
    pos_bboxes: Tensor
    neg_bboxes: Tensor
    pos_assigned_gt_inds: Tensor
    pos_gt_bboxes: Tensor
    pos_gt_labels: Optional[Tensor]
    pos_is_gt: Tensor

    @property
    def bboxes(self) -> Tensor:
        """Positives then negatives, (P + Q, 4): the RoIs' order."""
        return torch.cat([self.pos_bboxes, self.neg_bboxes])


def _random_choice(gallery: Tensor, num: int) -> Tensor:
    # mmdet's RandomSampler.random_choice: a permutation drawn on the global CPU generator
    perm = torch.randperm(gallery.numel())[:num].to(device=gallery.device)
    return gallery[perm]


def sample(
        assign: AssignResult,
        bboxes: Tensor,
        gt_bboxes: Tensor,
        cfg: Optional[Dict[str, Any]],
        gt_labels: Optional[Tensor] = None,
) -> SamplingResult:
    """mmdet's ``RandomSampler.sample`` (``cfg`` of type RandomSampler) or ``PseudoSampler.sample``
    (``cfg`` None or of type PseudoSampler: every positive and negative)."""
    bboxes = bboxes[:, :4]
    gt_inds, labels = assign.gt_inds, assign.labels
    is_gt = torch.zeros(bboxes.size(0), dtype=torch.bool, device=bboxes.device)
    random = cfg is not None and cfg.get("type", "RandomSampler") == "RandomSampler"
    if not random:
        pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze(-1).unique()
        neg_inds = torch.nonzero(gt_inds == 0, as_tuple=False).squeeze(-1).unique()
    else:
        cfg = dict(_SAMPLER_DEFAULTS, **cfg)
        if cfg["add_gt_as_proposals"] and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError("gt_labels must be given when add_gt_as_proposals is True")
            bboxes = torch.cat([gt_bboxes, bboxes])
            gt_inds = torch.cat([torch.arange(1, len(gt_bboxes) + 1, dtype=torch.long, device=gt_inds.device),
                                 gt_inds])
            if labels is not None:
                labels = torch.cat([gt_labels, labels])
            is_gt = torch.cat([torch.ones(len(gt_bboxes), dtype=torch.bool, device=is_gt.device), is_gt])
        num_pos = int(cfg["num"] * cfg["pos_fraction"])
        pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze(1)
        if pos_inds.numel() > num_pos:
            pos_inds = _random_choice(pos_inds, num_pos)
        pos_inds = pos_inds.unique()
        num_neg = cfg["num"] - pos_inds.numel()
        if cfg["neg_pos_ub"] >= 0:
            num_neg = min(num_neg, int(cfg["neg_pos_ub"] * max(1, pos_inds.numel())))
        neg_inds = torch.nonzero(gt_inds == 0, as_tuple=False).squeeze(1)
        if neg_inds.numel() > num_neg:
            neg_inds = _random_choice(neg_inds, num_neg)
        neg_inds = neg_inds.unique()
    assigned_gt = gt_inds[pos_inds] - 1
    pos_gt = gt_bboxes.view(-1, 4)[assigned_gt] if gt_bboxes.numel() else gt_bboxes.new_zeros(0, 4)
    return SamplingResult(pos_inds, neg_inds, bboxes[pos_inds], bboxes[neg_inds], assigned_gt, pos_gt,
                          labels[pos_inds] if labels is not None else None, is_gt[pos_inds])


def bbox2delta(proposals: Tensor, gt: Tensor, means: Sequence[float] = (0., 0., 0., 0.),
               stds: Sequence[float] = (1., 1., 1., 1.)) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.encode``: (dx, dy, dw, dh) of ``gt`` relative to ``proposals``
    (both Tensor[N, 4]), normalised by ``means`` / ``stds``; Tensor[N, 4]."""
    px = (proposals[..., 0] + proposals[..., 2]) * 0.5
    py = (proposals[..., 1] + proposals[..., 3]) * 0.5
    pw = proposals[..., 2] - proposals[..., 0]
    ph = proposals[..., 3] - proposals[..., 1]
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def bbox2roi(bbox_list: Sequence[Tensor]) -> Tensor:
    """mmdet's ``bbox2roi``: boxes of each image as (image index, x1, y1, x2, y2) rows, (K, 5)."""
    rois = [torch.cat([b.new_full((b.size(0), 1), i), b[:, :4]], dim=-1) for i, b in enumerate(bbox_list)]
    return torch.cat(rois, 0)


# --- losses -------------------------------------------------------------------------------------

def focal_loss(pred: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """mmdet's ``py_sigmoid_focal_loss`` per element, unreduced, written as mmdet writes it.

    ``torchvision.ops.sigmoid_focal_loss`` is the same function, but forms ``1 - p_t`` as
    ``1 - (1 - p)`` for negatives: for scores near 0 (most anchors) that rounding differs from
    mmdet's ``p`` by up to a few per cent of the (tiny) loss, so the formula is kept as mmdet has it.

    Args:
        pred (Tensor[N, C]): logits.
        target (Tensor[N, C]): 0 / 1 per class.
    """
    p = pred.sigmoid()
    target = target.type_as(pred)
    pt = (1 - p) * target + p * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * weight


def _fp32(x: Tensor) -> Tensor:
    """Half-precision head outputs in float32 for the losses, as mmdet's ``force_fp32`` does."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _unmap(data: Tensor, count: int, inds: Tensor, fill: float = 0) -> Tensor:
    out = data.new_full((count,) + data.shape[1:], fill)
    out[inds] = data
    return out


def anchor_targets(
        anchors: Tensor,
        valid: Tensor,
        gt_bboxes: Tensor,
        gt_bboxes_ignore: Optional[Tensor],
        gt_labels: Optional[Tensor],
        img_shape: Sequence[int],
        cfg: Dict[str, Any],
        num_classes: int,
        sampling: bool,
        coder: Dict[str, Any],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
    """mmdet's ``AnchorHead._get_targets_single``: the targets of one image's anchors.

    Args:
        anchors (Tensor[A, 4]): all levels' anchors, concatenated.
        valid (Tensor[A] bool): the valid flags (from ``pad_shape``).
        gt_labels (Tensor[K], optional): None for the RPN (every positive is class 0).
        img_shape: (h, w, ...) for ``allowed_border``.
        cfg (dict): the head's train_cfg (``assigner``, ``sampler`` when ``sampling``,
            ``allowed_border``, ``pos_weight``).
        sampling (bool): sample with ``cfg['sampler']`` (the assigner then gets no labels) or
            take every positive and negative.

    Returns:
        labels (Tensor[A], ``num_classes`` for background), label weights (Tensor[A]), box targets
        and weights (Tensor[A, 4]), numbers of positives and negatives.
    """
    border = cfg.get("allowed_border", -1)
    inside = valid
    if border >= 0:
        h, w = img_shape[:2]
        inside = valid & (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) & \
            (anchors[:, 2] < w + border) & (anchors[:, 3] < h + border)
    if not inside.any():
        raise ValueError(f"no anchor lies inside the image (img_shape {tuple(img_shape)}, allowed_border {border}): "
                         "mmdet 2.11 fails on such an image")
    inside_inds = torch.nonzero(inside, as_tuple=False).squeeze(1)
    a = anchors[inside_inds]
    assign = max_iou_assign(a, gt_bboxes, cfg["assigner"], gt_bboxes_ignore, None if sampling else gt_labels)
    res = sample(assign, a, gt_bboxes, cfg.get("sampler") if sampling else None)
    n = a.size(0)
    labels = a.new_full((n,), num_classes, dtype=torch.long)
    label_weights = a.new_zeros(n)
    bbox_targets = torch.zeros_like(a)
    bbox_weights = torch.zeros_like(a)
    if len(res.pos_inds) > 0:
        bbox_targets[res.pos_inds] = bbox2delta(res.pos_bboxes, res.pos_gt_bboxes, coder["target_means"],
                                                coder["target_stds"])
        bbox_weights[res.pos_inds] = 1.0
        labels[res.pos_inds] = 0 if gt_labels is None else gt_labels[res.pos_assigned_gt_inds]
        label_weights[res.pos_inds] = 1.0 if cfg.get("pos_weight", -1) <= 0 else cfg["pos_weight"]
    if len(res.neg_inds) > 0:
        label_weights[res.neg_inds] = 1.0
    A = anchors.size(0)
    return (_unmap(labels, A, inside_inds, num_classes), _unmap(label_weights, A, inside_inds),
            _unmap(bbox_targets, A, inside_inds), _unmap(bbox_weights, A, inside_inds),
            len(res.pos_inds), len(res.neg_inds))


def dense_head_loss(
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        anchors: Sequence[Tensor],
        valid_flags: Sequence[Tensor],
        img_metas: Sequence[Dict[str, Any]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Optional[Sequence[Tensor]],
        gt_bboxes_ignore: Optional[Sequence[Optional[Tensor]]],
        cfg: Dict[str, Any],
        loss_cls_cfg: Dict[str, Any],
        loss_bbox_cfg: Dict[str, Any],
        num_classes: int,
        coder: Dict[str, Any],
) -> Tuple[List[Tensor], List[Tensor]]:
    """mmdet's ``AnchorHead.loss`` (RetinaNet: focal loss, no sampling; RPN: ``gt_labels`` None,
    sigmoid cross entropy, sampling).

    Args:
        cls_scores (Sequence[Tensor[B, A*C, H, W]]), bbox_preds (Sequence[Tensor[B, A*4, H, W]]): per level.
        anchors (Sequence[Tensor[H*W*A, 4]]): per level, shared by the images.
        valid_flags (Sequence[Tensor[sum H*W*A] bool]): per image, levels concatenated.

    Returns:
        (list of Tensor, list of Tensor): classification and box losses per level.
    """
    focal = loss_cls_cfg["type"] == "FocalLoss"
    sampling = not focal
    flat_anchors = torch.cat(list(anchors))
    targets = [anchor_targets(flat_anchors, valid_flags[i], gt_bboxes[i],
                              gt_bboxes_ignore[i] if gt_bboxes_ignore is not None else None,
                              gt_labels[i] if gt_labels is not None else None, img_metas[i]["img_shape"], cfg,
                              num_classes, sampling, coder) for i in range(len(img_metas))]
    num_pos = sum(max(t[4], 1) for t in targets)
    num_neg = sum(max(t[5], 1) for t in targets)
    avg = num_pos + num_neg if sampling else num_pos
    labels, label_weights, bbox_targets, bbox_weights = (torch.stack([t[k] for t in targets]) for k in range(4))
    losses_cls, losses_bbox = [], []
    start = 0
    for cls_score, bbox_pred, anc in zip(cls_scores, bbox_preds, anchors):
        cls_score, bbox_pred = _fp32(cls_score), _fp32(bbox_pred)
        end = start + anc.size(0)
        lab = labels[:, start:end].reshape(-1)
        lw = label_weights[:, start:end].reshape(-1)
        num_anchors = anc.size(0) // (cls_score.size(2) * cls_score.size(3))
        C = cls_score.size(1) // num_anchors
        pred = cls_score.permute(0, 2, 3, 1).reshape(-1, C)  # B, A*C, H, W -> B*H*W*A, C
        if focal:
            target = F.one_hot(lab, num_classes=C + 1)[:, :C]
            loss = focal_loss(pred, target, loss_cls_cfg.get("gamma", 2.0), loss_cls_cfg.get("alpha", 0.25))
            loss = (loss * lw.view(-1, 1)).sum() / avg
        else:  # sigmoid cross entropy, one channel per class (the RPN: C = 1)
            target = F.one_hot(lab, num_classes=C + 1)[:, :C].to(pred.dtype)
            loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            loss = (loss * lw.view(-1, 1).expand(-1, C).float()).sum() / avg
        losses_cls.append(loss_cls_cfg.get("loss_weight", 1.0) * loss)
        delta = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)  # B, A*4, H, W -> B*H*W*A, 4
        l1 = (delta - bbox_targets[:, start:end].reshape(-1, 4)).abs() * bbox_weights[:, start:end].reshape(-1, 4)
        losses_bbox.append(loss_bbox_cfg.get("loss_weight", 1.0) * (l1.sum() / avg))
        start = end
    return losses_cls, losses_bbox


def mask_targets(pos_bboxes: Tensor, pos_assigned_gt_inds: Tensor, gt_masks: Tensor, mask_size: int) -> Tensor:
    """mmdet's ``mask_target_single``: the ground-truth bitmap of each positive cropped to its
    proposal (clipped to the bitmap) and resized by RoIAlign (``aligned=True``, sampling ratio 0),
    then ``>= 0.5``.

    Args:
        pos_bboxes (Tensor[P, 4]): the positive proposals.
        pos_assigned_gt_inds (Tensor[P]): their ground truths.
        gt_masks (Tensor[K, H, W]): the image's bitmaps (padded to ``pad_shape``).

    Returns:
        Tensor[P, mask_size, mask_size] float (0 / 1).
    """
    P = pos_bboxes.size(0)
    if P == 0:
        return pos_bboxes.new_zeros(0, mask_size, mask_size)
    H, W = gt_masks.shape[-2:]
    boxes = pos_bboxes.detach().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    rois = torch.cat([torch.arange(P, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    masks = gt_masks[pos_assigned_gt_inds][:, None].to(boxes.dtype)  # P, 1, H, W
    out = torchvision.ops.roi_align(masks, rois, (mask_size, mask_size), 1.0, 0, aligned=True)[:, 0]
    return (out >= 0.5).to(pos_bboxes.dtype)


def roi_head_loss(
        roi_head: nn.Module,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        gt_bboxes_ignore: Optional[Sequence[Optional[Tensor]]],
        gt_masks: Optional[Sequence[Tensor]],
        cfg: Dict[str, Any],
        loss_cfg: Dict[str, Any],
        coder: Dict[str, Any],
        stats: Optional[Dict[str, Tensor]] = None,
) -> Dict[str, Tensor]:
    """mmdet 2.11's ``StandardRoIHead.forward_train``: ``loss_cls``, ``loss_bbox`` and, with a mask
    head, ``loss_mask``; ``stats['acc']`` (when a dict is given): the box head's top-1 accuracy
    over the sampled RoIs in per cent, mmdet's logged ``acc`` (not a loss).

    Args:
        proposals (Sequence[Tensor[K_i, 5]]): the RPN's proposals per image (detached).
        gt_masks (Sequence[Tensor[n_i, H, W]], optional): bitmaps padded to ``pad_shape``.
        cfg (dict): ``train_cfg['rcnn']``.
    """
    results = []
    for i in range(len(proposals)):
        ignore = gt_bboxes_ignore[i] if gt_bboxes_ignore is not None else None
        assign = max_iou_assign(proposals[i], gt_bboxes[i], cfg["assigner"], ignore, gt_labels[i])
        results.append(sample(assign, proposals[i], gt_bboxes[i], cfg["sampler"], gt_labels[i]))
    bbox_head = roi_head.bbox_head
    rois = bbox2roi([r.bboxes for r in results])
    ext = roi_head.bbox_roi_extractor
    cls_score, bbox_pred = (_fp32(t) for t in bbox_head(ext(feats[:ext.num_inputs], rois)))
    num_classes = bbox_head.num_classes
    labels, label_weights, bbox_targets, bbox_weights = [], [], [], []
    pos_weight = 1.0 if cfg.get("pos_weight", -1) <= 0 else float(cfg["pos_weight"])
    for r in results:
        P, Q = r.pos_bboxes.size(0), r.neg_bboxes.size(0)
        lab = r.pos_bboxes.new_full((P + Q,), num_classes, dtype=torch.long)
        lw = r.pos_bboxes.new_zeros(P + Q)
        tgt = r.pos_bboxes.new_zeros(P + Q, 4)
        tw = r.pos_bboxes.new_zeros(P + Q, 4)
        if P > 0:
            lab[:P] = r.pos_gt_labels
            lw[:P] = pos_weight
            tgt[:P] = bbox2delta(r.pos_bboxes, r.pos_gt_bboxes, coder["target_means"], coder["target_stds"])
            tw[:P] = 1
        if Q > 0:
            lw[-Q:] = 1.0
        labels.append(lab)
        label_weights.append(lw)
        bbox_targets.append(tgt)
        bbox_weights.append(tw)
    labels, label_weights = torch.cat(labels), torch.cat(label_weights)
    bbox_targets, bbox_weights = torch.cat(bbox_targets), torch.cat(bbox_weights)
    losses: Dict[str, Tensor] = {}
    if cls_score.numel() > 0:
        avg = max(torch.sum(label_weights > 0).float().item(), 1.)
        ce = F.cross_entropy(cls_score, labels, reduction="none") * label_weights.float()
        losses["loss_cls"] = loss_cfg["loss_cls"].get("loss_weight", 1.0) * (ce.sum() / avg)
        if stats is not None:
            stats["acc"] = (cls_score.detach().argmax(dim=1) == labels).float().sum() * 100.0 / cls_score.size(0)
    pos = (labels >= 0) & (labels < num_classes)
    if pos.any():
        if bbox_pred.size(1) == 4:  # class agnostic
            pos_pred = bbox_pred[pos]
        else:
            pos_pred = bbox_pred.view(bbox_pred.size(0), -1, 4)[pos, labels[pos]]
        l1 = (pos_pred - bbox_targets[pos]).abs() * bbox_weights[pos]
        losses["loss_bbox"] = loss_cfg["loss_bbox"].get("loss_weight", 1.0) * (l1.sum() / bbox_targets.size(0))
    else:
        losses["loss_bbox"] = bbox_pred[pos].sum()
    if roi_head.mask_head is not None:
        if gt_masks is None:
            raise ValueError("Mask R-CNN training needs gt_masks")
        pos_rois = bbox2roi([r.pos_bboxes for r in results])
        ext = roi_head.mask_roi_extractor
        mask_pred = _fp32(roi_head.mask_head(ext(feats[:ext.num_inputs], pos_rois)))
        targets = torch.cat([mask_targets(r.pos_bboxes, r.pos_assigned_gt_inds, m, cfg.get("mask_size", 28))
                             for r, m in zip(results, gt_masks)])
        pos_labels = torch.cat([r.pos_gt_labels for r in results])
        if mask_pred.size(0) == 0:
            loss_mask = mask_pred.sum()
        else:
            channel = torch.zeros_like(pos_labels) if roi_head.mask_head.class_agnostic else pos_labels
            pred = mask_pred[torch.arange(mask_pred.size(0), device=mask_pred.device), channel]
            loss_mask = F.binary_cross_entropy_with_logits(pred, targets, reduction="mean")
        losses["loss_mask"] = loss_cfg["loss_mask"].get("loss_weight", 1.0) * loss_mask
    return losses
