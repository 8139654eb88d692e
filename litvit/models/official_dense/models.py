"""RetinaNet, Mask R-CNN and Semantic FPN as the authors' mmdet 2.11 / mmseg 0.13 test code runs them.

Each model holds the release's modules under the release's names (``backbone``, ``neck``,
``bbox_head`` / ``rpn_head`` + ``roi_head`` / ``decode_head``) and reproduces the authors'
``inference_detector`` / ``inference_segmentor`` on one image:

* :meth:`RetinaNet.simple_test`: per level sigmoid scores, the ``nms_pre`` anchors of highest
  class score, DeltaXYWH decoding clamped to the resized image, rescaling to the original image,
  class-wise NMS (``score_thr``, IoU, ``max_per_img``);
* :meth:`MaskRCNN.simple_test`: RPN (per level the ``nms_pre`` best anchors, decoding, NMS per
  level, ``max_per_img`` proposals), RoIAlign 7x7 from the level of each RoI's size, softmax
  classes and class-specific boxes, class-wise NMS; masks from 14x14 RoIAlign on the detections
  (scaled back to the resized image), the detected class's 28x28 map pasted at ``>= 0.5``;
* :meth:`SemanticFPN.inference`: whole-image logits resized (bilinear) to the network input and
  then to the original image, softmax.

Two quirks of mmdet 2.11 are kept: a proposal whose ``y2`` is exactly 0 gets zero class logits and
deltas (the code meant to mark padding proposals tests the last box coordinate), and a detection
whose box ends at ``y = 0`` gets no mask (the authors' per-class mask list then lacks it; here its
mask is empty).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import (FPN, ConvFCBBoxHead, FCNMaskHead, FPNHead, RetinaHead, RoIExtractor, RPNHead, anchor_grid,
                    base_anchors, batched_nms, delta2bbox, multiclass_nms, paste_masks)
from .preprocess import TestPipeline, preprocess
from .training import (_fp32, check_train_cfg, dense_head_loss, loss_cfg_with_defaults, roi_head_loss,
                       train_cfg_with_defaults)
from .seg_train import segmentation_loss

__all__ = ["DenseRelease", "RetinaNet", "MaskRCNN", "SemanticFPN", "StandardRoIHead", "AnchorGenerator"]


class AnchorGenerator:
    """mmdet's AnchorGenerator (no parameters): base anchors per level shifted over each map.

    Args:
        strides (Sequence[int]): stride of each level (also its base size unless ``base_sizes``).
        ratios (Sequence[float]): height / width ratios.
        scales (Sequence[float], optional): anchor scales (times the base size).
        octave_base_scale (float, optional), scales_per_octave (int, optional): scales
            ``octave_base_scale * 2 ** (i / scales_per_octave)`` instead of ``scales``.
        base_sizes (Sequence[int], optional): base size per level.
        center_offset (float): anchor centre within the stride cell (0: its corner).
    """

    def __init__(
            self,
            strides: Sequence[int],
            ratios: Sequence[float],
            scales: Optional[Sequence[float]] = None,
            octave_base_scale: Optional[float] = None,
            scales_per_octave: Optional[int] = None,
            base_sizes: Optional[Sequence[int]] = None,
            center_offset: float = 0.,
    ):
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ValueError("give either scales or octave_base_scale with scales_per_octave")
        if scales is None:
            scales = [2 ** (i / scales_per_octave) * octave_base_scale for i in range(scales_per_octave)]
        self.strides = [(s, s) if isinstance(s, (int, float)) else tuple(s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else [min(s) for s in self.strides]
        self.base = [base_anchors(b, scales, ratios, center_offset) for b in self.base_sizes]

    @property
    def num_anchors(self) -> int:
        return self.base[0].size(0)

    def grid_anchors(self, featmap_sizes: Sequence[Tuple[int, int]], device: torch.device) -> List[Tensor]:
        return [anchor_grid(b.to(device), size, stride) for b, size, stride in zip(self.base, featmap_sizes,
                                                                                   self.strides)]

    def valid_flags(self, featmap_sizes: Sequence[Tuple[int, int]], pad_shape: Sequence[int],
                    device: torch.device) -> List[Tensor]:
        """mmdet's valid flags of one image, per level (Tensor[H * W * A] bool, the order of
        :meth:`grid_anchors`): positions within ``ceil(pad_shape / stride)`` of the map's origin."""
        h, w = int(pad_shape[0]), int(pad_shape[1])
        flags = []
        for (feat_h, feat_w), (stride_w, stride_h) in zip(featmap_sizes, self.strides):
            valid_h = min(int(np.ceil(h / stride_h)), int(feat_h))
            valid_w = min(int(np.ceil(w / stride_w)), int(feat_w))
            ys = torch.arange(int(feat_h), device=device) < valid_h
            xs = torch.arange(int(feat_w), device=device) < valid_w
            valid = (ys[:, None] & xs[None, :]).reshape(-1)  # H, W -> H*W, row-major as the anchors
            flags.append(valid[:, None].expand(-1, self.num_anchors).reshape(-1))
        return flags


class DenseRelease(nn.Module):
    """What the three models share: the release's classes, palette, test pipeline and settings.

    Attributes:
        classes (Tuple[str, ...]): class names (the release's ``meta['CLASSES']``).
        palette (List[List[int]], optional): RGB colour per class (mmseg releases).
        pipeline (TestPipeline): the test-time preprocessing.
        test_cfg (dict): the test settings, defaults filled in.
        meta (dict): the release's ``meta`` without its config text.
        config (dict): the parsed config (empty when the release has none).
    """
    kind = ""

    def __init__(
            self,
            classes: Sequence[str],
            pipeline: TestPipeline,
            test_cfg: Dict[str, Any],
            palette: Optional[Sequence[Sequence[int]]] = None,
    ):
        super().__init__()
        self.classes = tuple(classes)
        self.palette = [list(c) for c in palette] if palette is not None else None
        self.pipeline = pipeline
        self.test_cfg = test_cfg
        self.meta: Dict[str, Any] = {}
        self.config: Dict[str, Any] = {}

    def preprocess(self, image: Any) -> Tuple[Tensor, Dict[str, Any]]:
        """The network input of an (H, W, 3) uint8 RGB image (array or PIL) and its metas."""
        x, meta = preprocess(image, self.pipeline)
        return x.to(next(self.parameters()).device), meta

    def extract_feat(self, x: Tensor) -> List[Tensor]:
        return self.neck(self.backbone(x))

    def check_train_cfg(self) -> None:
        """Raise one ``ValueError`` naming every setting of ``train_cfg`` / ``loss_cfg`` that
        ``forward_train`` does not implement (it calls this first)."""
        check_train_cfg(self.kind, self.train_cfg, self.loss_cfg)

    def _check_batch(self, img: Tensor, img_metas: Sequence[Dict[str, Any]], gt_bboxes: Sequence[Tensor],
                     gt_labels: Sequence[Tensor], num_classes: int) -> None:
        if img.dim() != 4 or img.size(1) != 3:
            raise ValueError(f"img must be a (B, 3, H, W) batch, got shape {tuple(img.shape)}")
        B = img.size(0)
        if not len(img_metas) == len(gt_bboxes) == len(gt_labels) == B:
            raise ValueError(f"{B} images but {len(img_metas)} img_metas, {len(gt_bboxes)} gt_bboxes and "
                             f"{len(gt_labels)} gt_labels")
        for i, (meta, boxes, labels) in enumerate(zip(img_metas, gt_bboxes, gt_labels)):
            for key in ("img_shape", "pad_shape"):
                if key not in meta:
                    raise ValueError(f"img_metas[{i}] has no {key!r}")
            if boxes.dim() != 2 or boxes.size(1) != 4:
                raise ValueError(f"gt_bboxes[{i}] must be (n, 4) x1 y1 x2 y2, got shape {tuple(boxes.shape)}")
            if labels.shape != (boxes.size(0),) or labels.is_floating_point():
                raise ValueError(f"gt_labels[{i}] must be ({boxes.size(0)},) integers, got {labels.dtype} "
                                 f"{tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"gt_labels[{i}] must lie in 0..{num_classes - 1}, got {labels.tolist()}")

    def _anchors_and_flags(self, cls_scores: Sequence[Tensor], img_metas: Sequence[Dict[str, Any]]
                           ) -> Tuple[List[Tensor], List[Tensor]]:
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        dtype = _fp32(cls_scores[0][:0]).dtype  # float32 targets under half precision, as mmdet's force_fp32
        anchors = [a.to(dtype) for a in self.anchor_generator.grid_anchors(sizes, device)]
        flags = [torch.cat(self.anchor_generator.valid_flags(sizes, m["pad_shape"], device)) for m in img_metas]
        return anchors, flags


def _class_major(dets: Tensor, labels: Tensor, **per_detection: Optional[Tensor]) -> Dict[str, Tensor]:
    """Detections in the order of the authors' per-class result lists: by class, then by score
    (``per_detection`` tensors, one row per detection, reordered alike; None left out)."""
    order = torch.sort(labels, stable=True).indices
    out = dict(boxes=dets[order, :4], scores=dets[order, 4], labels=labels[order])
    out.update({k: v[order] for k, v in per_detection.items() if v is not None})
    return out


class RetinaNet(DenseRelease):
    """mmdet's RetinaNet at test time.

    Args:
        backbone (nn.Module): returns the four stage maps.
        neck (FPN): P3-P7.
        bbox_head (RetinaHead): the head.
        anchor_generator (AnchorGenerator): the head's anchors.
        coder (dict): ``target_means`` / ``target_stds`` of the DeltaXYWH coder.
        test_cfg (dict): ``nms_pre``, ``min_bbox_size``, ``score_thr``, ``iou_threshold``,
            ``max_per_img``.
        train_cfg (dict, optional): mmdet's ``train_cfg`` (``assigner``, ``allowed_border``,
            ``pos_weight``); None or missing keys: the authors' values
            (:data:`~.training.RETINANET_TRAIN_CFG`).
        loss_cfg (dict, optional): the head's ``loss_cls`` / ``loss_bbox`` configs; None or missing:
            focal loss (gamma 2, alpha 0.25) and L1, weight 1 (:data:`~.training.RETINANET_LOSSES`).
    """
    kind = "retinanet"

    def __init__(
            self,
            backbone: nn.Module,
            neck: FPN,
            bbox_head: RetinaHead,
            anchor_generator: AnchorGenerator,
            coder: Dict[str, Any],
            test_cfg: Dict[str, Any],
            classes: Sequence[str],
            pipeline: TestPipeline,
            train_cfg: Optional[Dict[str, Any]] = None,
            loss_cfg: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(classes, pipeline, test_cfg)
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.anchor_generator = anchor_generator
        self.coder = coder
        self.train_cfg = train_cfg_with_defaults(self.kind, train_cfg)
        self.loss_cfg = loss_cfg_with_defaults(self.kind, loss_cfg)

    def init_weights(self) -> None:
        """mmdet 2.11's initialisation of the neck and head (the backbone is left alone)."""
        self.neck.init_weights()
        self.bbox_head.init_weights()

    def forward_train(
            self,
            img: Tensor,
            img_metas: Sequence[Dict[str, Any]],
            gt_bboxes: Sequence[Tensor],
            gt_labels: Sequence[Tensor],
            gt_bboxes_ignore: Optional[Sequence[Optional[Tensor]]] = None,
    ) -> Dict[str, Tensor]:
        """The training losses of mmdet 2.11's ``RetinaNet.forward_train``.

        Args:
            img (Tensor[B, 3, H, W]): the normalised images, padded to a common size.
            img_metas (Sequence[dict]): per image ``img_shape`` (h, w, 3) of the resized image before
                padding and ``pad_shape`` (that image padded to the size divisor): anchors beyond
                ``pad_shape`` are not used.
            gt_bboxes (Sequence[Tensor[n_i, 4]]): x1 y1 x2 y2 in the resized image's pixels.
            gt_labels (Sequence[Tensor[n_i] int64]): classes 0..K-1.
            gt_bboxes_ignore (Sequence[Tensor[g_i, 4]], optional): boxes to ignore (with
                ``train_cfg['assigner']['ignore_iof_thr'] > 0``).

        Returns:
            dict: ``loss_cls`` (sigmoid focal loss) and ``loss_bbox`` (L1 on the deltas), scalars,
            each the sum over the FPN levels; their sum is the loss mmdet back-propagates.
        """
        self.check_train_cfg()
        head = self.bbox_head
        if not head.use_sigmoid:
            raise ValueError("training a softmax RetinaHead is not supported (mmdet 2.11's FocalLoss is sigmoid)")
        self._check_batch(img, img_metas, gt_bboxes, gt_labels, head.num_classes)
        cls_scores, bbox_preds = self(img)
        anchors, flags = self._anchors_and_flags(cls_scores, img_metas)
        losses_cls, losses_bbox = dense_head_loss(
            cls_scores, bbox_preds, anchors, flags, img_metas, gt_bboxes, gt_labels, gt_bboxes_ignore,
            self.train_cfg, self.loss_cfg["loss_cls"], self.loss_cfg["loss_bbox"], head.num_classes, self.coder)
        return dict(loss_cls=sum(losses_cls), loss_bbox=sum(losses_bbox))

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Raw head outputs: per FPN level class logits (B, A*C, H, W) and deltas (B, A*4, H, W)."""
        return self.bbox_head(self.extract_feat(x))

    def get_bboxes(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], img_meta: Dict[str, Any],
                   rescale: bool = True) -> Tuple[Tensor, Tensor]:
        """Detections of the first image from the raw outputs: ((K, 5) boxes + score, (K,) labels)."""
        cfg = self.test_cfg
        anchors = self.anchor_generator.grid_anchors([c.shape[-2:] for c in cls_scores], cls_scores[0].device)
        num_classes = self.bbox_head.num_classes
        sigmoid = self.bbox_head.use_sigmoid
        boxes_l, scores_l = [], []
        for cls, reg, anc in zip(cls_scores, bbox_preds, anchors):
            # 1, A*C, H, W -> 1, H*W*A, C
            cls = cls[:1].permute(0, 2, 3, 1).reshape(1, -1, self.bbox_head.cls_out_channels)
            scores = cls.sigmoid() if sigmoid else cls.softmax(-1)
            reg = reg[:1].permute(0, 2, 3, 1).reshape(1, -1, 4)  # 1, A*4, H, W -> 1, H*W*A, 4
            anc = anc.expand_as(reg)
            nms_pre = cfg["nms_pre"]
            if 0 < nms_pre < scores.shape[-2]:
                max_scores, _ = (scores if sigmoid else scores[..., :-1]).max(-1)
                _, topk = max_scores.topk(nms_pre)
                anc, reg, scores = anc[0, topk[0]][None], reg[0, topk[0]][None], scores[0, topk[0]][None]
            boxes_l.append(delta2bbox(anc, reg, self.coder["target_means"], self.coder["target_stds"],
                                      max_shape=img_meta["img_shape"][:2]))
            scores_l.append(scores)
        boxes = torch.cat(boxes_l, dim=1)
        if rescale:
            boxes = boxes / boxes.new_tensor(img_meta["scale_factor"]).view(1, 1, 4)
        scores = torch.cat(scores_l, dim=1)
        if sigmoid:
            scores = torch.cat([scores, scores.new_zeros(1, scores.shape[1], 1)], dim=-1)
        assert scores.shape[-1] == num_classes + 1
        return multiclass_nms(boxes[0], scores[0], cfg["score_thr"], cfg["iou_threshold"], cfg["max_per_img"])

    @torch.no_grad()
    def simple_test(self, x: Tensor, img_meta: Dict[str, Any], rescale: bool = True) -> Tuple[Tensor, Tensor]:
        return self.get_bboxes(*self(x), img_meta, rescale=rescale)

    @torch.no_grad()
    def predict(self, image: Any) -> Dict[str, Tensor]:
        """Detections of one image as the authors' ``inference_detector`` returns them.

        Args:
            image: (H, W, 3) uint8 RGB array or PIL image.

        Returns:
            dict: ``boxes`` (Tensor[N, 4], x1 y1 x2 y2 in the image's pixels), ``scores`` (Tensor[N]),
            ``labels`` (Tensor[N], index into ``classes``), ordered as the authors' per-class lists
            (by class, then by score).
        """
        x, meta = self.preprocess(image)
        dets, labels = self.simple_test(x, meta)
        return _class_major(dets.cpu(), labels.cpu())


class StandardRoIHead(nn.Module):
    """mmdet's StandardRoIHead at test time: RoI extractors (no parameters), ``bbox_head``,
    optional ``mask_head``."""

    def __init__(
            self,
            bbox_roi_extractor: RoIExtractor,
            bbox_head: ConvFCBBoxHead,
            mask_roi_extractor: Optional[RoIExtractor] = None,
            mask_head: Optional[FCNMaskHead] = None,
    ):
        super().__init__()
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = bbox_head
        self.mask_roi_extractor = mask_roi_extractor
        self.mask_head = mask_head


class MaskRCNN(DenseRelease):
    """mmdet's Mask R-CNN (or Faster R-CNN, without ``mask_head``) at test time.

    Args:
        backbone, neck: as :class:`RetinaNet`.
        rpn_head (RPNHead): proposals.
        roi_head (StandardRoIHead): second stage.
        anchor_generator (AnchorGenerator): the RPN's anchors.
        rpn_coder (dict), rcnn_coder (dict): ``target_means`` / ``target_stds`` of the two coders.
        test_cfg (dict): ``rpn`` (``nms_pre``, ``max_per_img``, ``iou_threshold``,
            ``min_bbox_size``) and ``rcnn`` (``score_thr``, ``iou_threshold``, ``max_per_img``,
            ``mask_thr_binary``).
        train_cfg (dict, optional): mmdet's ``train_cfg`` (``rpn``, ``rpn_proposal``, ``rcnn``); None
            or missing keys: the authors' values (:data:`~.training.MASK_RCNN_TRAIN_CFG`).
        loss_cfg (dict, optional): the heads' loss configs (``rpn_loss_cls``, ``rpn_loss_bbox``,
            ``loss_cls``, ``loss_bbox``, ``loss_mask``); None or missing: the authors'
            (:data:`~.training.MASK_RCNN_LOSSES`).
    """
    kind = "mask_rcnn"

    def __init__(
            self,
            backbone: nn.Module,
            neck: FPN,
            rpn_head: RPNHead,
            roi_head: StandardRoIHead,
            anchor_generator: AnchorGenerator,
            rpn_coder: Dict[str, Any],
            rcnn_coder: Dict[str, Any],
            test_cfg: Dict[str, Any],
            classes: Sequence[str],
            pipeline: TestPipeline,
            train_cfg: Optional[Dict[str, Any]] = None,
            loss_cfg: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(classes, pipeline, test_cfg)
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.anchor_generator = anchor_generator
        self.rpn_coder = rpn_coder
        self.rcnn_coder = rcnn_coder
        self.train_cfg = train_cfg_with_defaults(self.kind, train_cfg)
        self.loss_cfg = loss_cfg_with_defaults(self.kind, loss_cfg)

    def init_weights(self) -> None:
        """mmdet 2.11's initialisation of the neck and heads (the backbone is left alone)."""
        self.neck.init_weights()
        self.rpn_head.init_weights()
        self.roi_head.bbox_head.init_weights()
        if self.roi_head.mask_head is not None:
            self.roi_head.mask_head.init_weights()

    def forward_train(
            self,
            img: Tensor,
            img_metas: Sequence[Dict[str, Any]],
            gt_bboxes: Sequence[Tensor],
            gt_labels: Sequence[Tensor],
            gt_masks: Optional[Sequence[Tensor]] = None,
            gt_bboxes_ignore: Optional[Sequence[Optional[Tensor]]] = None,
            stats: Optional[Dict[str, Tensor]] = None,
    ) -> Dict[str, Tensor]:
        """The training losses of mmdet 2.11's ``TwoStageDetector.forward_train``.

        Args:
            img, img_metas, gt_bboxes, gt_labels, gt_bboxes_ignore: as
                :meth:`RetinaNet.forward_train`.
            gt_masks (Sequence[Tensor[n_i, h, w] uint8 | bool], optional): one bitmap per box (needed
                with a mask head), at least ``img_shape``; smaller than ``pad_shape`` they are
                zero-padded to it, as mmdet's pipeline pads them (their size clips the RoIs
                that crop the targets).
            stats (dict, optional): receives ``acc``, the box head's top-1 accuracy (per cent) on
                the sampled RoIs, detached: what mmdet logs beside the losses (not a loss).

        Returns:
            dict: ``loss_rpn_cls``, ``loss_rpn_bbox`` (each summed over the FPN levels),
            ``loss_cls``, ``loss_bbox`` and, with a mask head, ``loss_mask``; scalars whose sum is
            the loss mmdet back-propagates.
        """
        self.check_train_cfg()
        roi_head = self.roi_head
        num_classes = roi_head.bbox_head.num_classes
        self._check_batch(img, img_metas, gt_bboxes, gt_labels, num_classes)
        if self.with_mask:
            gt_masks = self._padded_masks(gt_masks, img_metas, gt_bboxes)
        feats = self.extract_feat(img)
        cls_scores, bbox_preds = self.rpn_head(feats)
        anchors, flags = self._anchors_and_flags(cls_scores, img_metas)
        rpn_cls, rpn_bbox = dense_head_loss(
            cls_scores, bbox_preds, anchors, flags, img_metas, gt_bboxes, None, gt_bboxes_ignore,
            self.train_cfg["rpn"], self.loss_cfg["rpn_loss_cls"], self.loss_cfg["rpn_loss_bbox"], 1, self.rpn_coder)
        losses = dict(loss_rpn_cls=sum(rpn_cls), loss_rpn_bbox=sum(rpn_bbox))
        proposal_cfg = self._proposal_cfg()
        detached_cls = [_fp32(c.detach()) for c in cls_scores]
        detached_reg = [_fp32(r.detach()) for r in bbox_preds]
        proposals = [self.get_proposals(detached_cls, detached_reg, meta, cfg=proposal_cfg, index=i)
                     for i, meta in enumerate(img_metas)]
        losses.update(roi_head_loss(roi_head, feats, proposals, gt_bboxes, gt_labels, gt_bboxes_ignore, gt_masks,
                                    self.train_cfg["rcnn"], self.loss_cfg, self.rcnn_coder, stats=stats))
        return losses

    def _proposal_cfg(self) -> Dict[str, Any]:
        cfg = self.train_cfg["rpn_proposal"]
        nms = cfg.get("nms") or {}
        return dict(nms_pre=int(cfg.get("nms_pre", -1)), max_per_img=int(cfg.get("max_per_img", -1)),
                    iou_threshold=float(nms.get("iou_threshold", nms.get("iou_thr", 0.7))),
                    min_bbox_size=float(cfg.get("min_bbox_size", 0)))

    @staticmethod
    def _padded_masks(gt_masks: Optional[Sequence[Tensor]], img_metas: Sequence[Dict[str, Any]],
                      gt_bboxes: Sequence[Tensor]) -> List[Tensor]:
        if gt_masks is None or len(gt_masks) != len(gt_bboxes):
            raise ValueError(f"a mask head needs gt_masks, one (n, h, w) tensor per image; got "
                             f"{None if gt_masks is None else len(gt_masks)} for {len(gt_bboxes)} images")
        out = []
        for i, (m, boxes, meta) in enumerate(zip(gt_masks, gt_bboxes, img_metas)):
            h, w = int(meta["img_shape"][0]), int(meta["img_shape"][1])
            if m.dim() != 3 or m.size(0) != boxes.size(0) or m.size(1) < h or m.size(2) < w:
                raise ValueError(f"gt_masks[{i}] must be ({boxes.size(0)}, >= {h}, >= {w}) bitmaps, got shape "
                                 f"{tuple(m.shape)}")
            ph, pw = int(meta["pad_shape"][0]), int(meta["pad_shape"][1])
            m = m.to(torch.uint8)
            if m.size(1) < ph or m.size(2) < pw:
                m = F.pad(m, (0, max(pw - m.size(2), 0), 0, max(ph - m.size(1), 0)))
            out.append(m)
        return out

    @property
    def num_classes(self) -> int:
        return self.roi_head.bbox_head.num_classes

    @property
    def with_mask(self) -> bool:
        return self.roi_head.mask_head is not None

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Raw RPN outputs per FPN level: objectness logits (B, A, H, W) and deltas (B, A*4, H, W)."""
        return self.rpn_head(self.extract_feat(x))

    def get_proposals(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      img_meta: Dict[str, Any], cfg: Optional[Dict[str, Any]] = None, index: int = 0) -> Tensor:
        """The RPN's proposals of image ``index``, (K, 5): boxes in the resized image and scores.

        ``cfg`` (``nms_pre``, ``max_per_img``, ``iou_threshold``, ``min_bbox_size``): the test
        settings ``test_cfg['rpn']`` unless given (training passes ``train_cfg['rpn_proposal']``).
        """
        cfg = self.test_cfg["rpn"] if cfg is None else cfg
        anchors = self.anchor_generator.grid_anchors([c.shape[-2:] for c in cls_scores], cls_scores[0].device)
        scores_l, reg_l, anc_l, ids_l = [], [], [], []
        for lvl, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
            cls, reg = cls[index:index + 1], reg[index:index + 1]
            scores = cls.permute(0, 2, 3, 1).reshape(1, -1).sigmoid()  # 1, A, H, W -> 1, H*W*A
            reg = reg.permute(0, 2, 3, 1).reshape(1, -1, 4)  # 1, A*4, H, W -> 1, H*W*A, 4
            anc = anc.expand_as(reg)
            if 0 < cfg["nms_pre"] < scores.shape[-1]:
                ranked, rank_inds = scores.sort(descending=True)
                topk = rank_inds[:, :cfg["nms_pre"]]
                scores = ranked[:, :cfg["nms_pre"]]
                reg, anc = reg[0, topk[0]][None], anc[0, topk[0]][None]
            scores_l.append(scores)
            reg_l.append(reg)
            anc_l.append(anc)
            ids_l.append(scores.new_full(scores.shape, lvl, dtype=torch.long))
        proposals = delta2bbox(torch.cat(anc_l, 1), torch.cat(reg_l, 1), self.rpn_coder["target_means"],
                               self.rpn_coder["target_stds"], max_shape=img_meta["img_shape"][:2])[0]
        scores, ids = torch.cat(scores_l, 1)[0], torch.cat(ids_l, 1)[0]
        if cfg["min_bbox_size"] > 0:
            w = proposals[:, 2] - proposals[:, 0]
            h = proposals[:, 3] - proposals[:, 1]
            valid = torch.nonzero((w >= cfg["min_bbox_size"]) & (h >= cfg["min_bbox_size"]), as_tuple=False)[:, 0]
            # mmdet 2.11 filters only when the *sum of the kept indices* differs from the count
            if int(valid.sum()) != len(proposals):
                proposals, scores, ids = proposals[valid], scores[valid], ids[valid]
        dets, _ = batched_nms(proposals, scores, ids, cfg["iou_threshold"])
        return dets[:cfg["max_per_img"]]

    def bbox_forward(self, feats: Sequence[Tensor], proposals: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """RoIs (K, 5) of the proposals, and the box head's class logits and deltas for them."""
        rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals[:, :4]], dim=-1)
        roi_head = self.roi_head
        feats_roi = roi_head.bbox_roi_extractor(feats[:roi_head.bbox_roi_extractor.num_inputs], rois)
        cls_score, bbox_pred = roi_head.bbox_head(feats_roi)
        padding = rois[:, -1] == 0  # mmdet 2.11 marks padding RoIs by their y2 (see the module docstring)
        cls_score = torch.where(padding[:, None], torch.zeros_like(cls_score), cls_score)
        bbox_pred = torch.where(padding[:, None], torch.zeros_like(bbox_pred), bbox_pred)
        return rois, cls_score, bbox_pred

    def get_bboxes(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_meta: Dict[str, Any],
                   rescale: bool = True) -> Tuple[Tensor, Tensor]:
        cfg = self.test_cfg["rcnn"]
        scores = F.softmax(cls_score, dim=-1)
        boxes = delta2bbox(rois[:, 1:], bbox_pred, self.rcnn_coder["target_means"], self.rcnn_coder["target_stds"],
                           max_shape=img_meta["img_shape"][:2])
        if rescale and boxes.size(0) > 0:
            boxes = boxes / boxes.new_tensor(img_meta["scale_factor"]).repeat(boxes.size(-1) // 4)
        return multiclass_nms(boxes, scores, cfg["score_thr"], cfg["iou_threshold"], cfg["max_per_img"])

    def get_mask_probs(self, feats: Sequence[Tensor], dets: Tensor, labels: Tensor, img_meta: Dict[str, Any]
                       ) -> Tuple[Tensor, Tensor]:
        """The mask head's probabilities of each detection's class, (N, M, M), and the boxes (N, 4)
        in the original image they are pasted into (:func:`~.heads.paste_mask_regions`); zero for a
        detection mmdet 2.11 gives no mask (nothing reaches the threshold, which is above 0)."""
        scale = dets.new_tensor(img_meta["scale_factor"])
        boxes = dets[:, :4] * scale
        if len(dets) == 0:
            return dets.new_zeros(0, 1, 1), boxes / scale
        mask_head = self.roi_head.mask_head
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=-1)
        roi_head = self.roi_head
        mask_pred = mask_head(roi_head.mask_roi_extractor(feats[:roi_head.mask_roi_extractor.num_inputs], rois))
        probs = mask_pred.new_zeros(len(dets), *mask_pred.shape[-2:])
        keep = boxes[:, -1] != 0  # mmdet 2.11 drops detections whose y2 is 0 (see the module docstring)
        if keep.any():
            kept = mask_pred[keep].sigmoid()
            index = torch.arange(len(kept), device=kept.device)
            probs[keep] = kept[:, 0] if mask_head.class_agnostic else kept[index, labels[keep]]
        return probs, boxes / scale

    def get_masks(self, feats: Sequence[Tensor], dets: Tensor, labels: Tensor, img_meta: Dict[str, Any]) -> Tensor:
        """Binary masks (N, H, W) in the original image of detections given in its pixels."""
        h, w = img_meta["ori_shape"][:2]
        probs, boxes = self.get_mask_probs(feats, dets, labels, img_meta)
        return paste_masks(probs, boxes, h, w, self.test_cfg["rcnn"]["mask_thr_binary"])

    @torch.no_grad()
    def simple_test(self, x: Tensor, img_meta: Dict[str, Any]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(dets (K, 5), labels (K,), masks (K, H, W) or None), detections in score order."""
        feats = self.extract_feat(x)
        proposals = self.get_proposals(*self.rpn_head(feats), img_meta)
        rois, cls_score, bbox_pred = self.bbox_forward(feats, proposals)
        dets, labels = self.get_bboxes(rois, cls_score, bbox_pred, img_meta)
        masks = self.get_masks(feats, dets, labels, img_meta) if self.with_mask else None
        return dets, labels, masks

    @torch.no_grad()
    def predict(self, image: Any, paste_masks: bool = True) -> Dict[str, Tensor]:
        """Detections of one image as the authors' ``inference_detector`` returns them.

        Args:
            image: (H, W, 3) uint8 RGB array or PIL image.
            paste_masks (bool): the masks pasted into full-size maps (``masks``), or left as the
                mask head gives them (``mask_probs`` Tensor[N, M, M] of each detection's class and
                ``mask_boxes`` Tensor[N, 4], which :func:`~.heads.paste_mask_regions` pastes one
                box at a time into the same pixels): N full-size maps of a large image take N x H x W
                bytes.

        Returns:
            dict: ``boxes`` (Tensor[N, 4] in the image's pixels), ``scores``, ``labels`` and, with a
            mask head, ``masks`` (Tensor[N, H, W] bool) or ``mask_probs`` and ``mask_boxes``,
            ordered by class, then by score.
        """
        x, meta = self.preprocess(image)
        if paste_masks or not self.with_mask:
            dets, labels, masks = self.simple_test(x, meta)
            return _class_major(dets.cpu(), labels.cpu(), masks=masks.cpu() if masks is not None else None)
        feats = self.extract_feat(x)
        proposals = self.get_proposals(*self.rpn_head(feats), meta)
        dets, labels = self.get_bboxes(*self.bbox_forward(feats, proposals), meta)
        probs, boxes = self.get_mask_probs(feats, dets, labels, meta)
        return _class_major(dets.cpu(), labels.cpu(), mask_probs=probs.cpu(), mask_boxes=boxes.cpu())


class SemanticFPN(DenseRelease):
    """mmseg's EncoderDecoder with an FPN neck and FPNHead: whole-image inference, and the training
    loss of mmseg 0.13 (:meth:`forward_train`, :mod:`.seg_train`). A release and a model of litvit's
    ``segment train`` are both this class.

    Args:
        backbone, neck: as :class:`RetinaNet`.
        decode_head (FPNHead): the head.
        align_corners (bool): of the bilinear resizes (the head's).
        ignore_index (int): the label without a class (255).
        loss_weight (float): of the cross-entropy (the config's ``loss_decode.loss_weight``, 1.0).
    """
    kind = "semantic_fpn"

    def __init__(
            self,
            backbone: nn.Module,
            neck: FPN,
            decode_head: FPNHead,
            test_cfg: Dict[str, Any],
            classes: Sequence[str],
            pipeline: TestPipeline,
            palette: Optional[Sequence[Sequence[int]]] = None,
            align_corners: bool = False,
            ignore_index: int = 255,
            loss_weight: float = 1.0,
    ):
        super().__init__(classes, pipeline, test_cfg, palette)
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.align_corners = align_corners
        self.ignore_index = int(ignore_index)
        self.loss_weight = float(loss_weight)

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Class logits at stride 4, (B, C, H/4, W/4) (the head's output)."""
        return self.decode_head(self.extract_feat(x))

    def forward_train(self, x: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """mmseg 0.13's training forward: ``loss_seg`` (cross-entropy of the logits resized to the
        labels, averaged over every pixel, ignored ones counting 0) and ``acc_seg`` (%, for logs).

        Args:
            x (Tensor[B, 3, H, W]): normalised images.
            labels (Tensor[B, H, W]): class indices, ``ignore_index`` ignored.
        """
        return segmentation_loss(self(x), labels, ignore_index=self.ignore_index, loss_weight=self.loss_weight,
                                 align_corners=self.align_corners)

    def encode_decode(self, x: Tensor) -> Tensor:
        """Logits resized to the network input, (B, C, H, W)."""
        return F.interpolate(self(x), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)

    @torch.no_grad()
    def inference(self, x: Tensor, img_meta: Dict[str, Any]) -> Tensor:
        """Class probabilities in the original image, (B, C, H0, W0)."""
        logits = F.interpolate(self.encode_decode(x), size=tuple(img_meta["ori_shape"][:2]), mode="bilinear",
                               align_corners=self.align_corners)
        return F.softmax(logits, dim=1)

    @torch.no_grad()
    def predict(self, image: Any) -> Dict[str, Tensor]:
        """The label map of one image as the authors' ``inference_segmentor`` returns it.

        Args:
            image: (H, W, 3) uint8 RGB array or PIL image.

        Returns:
            dict: ``labels`` (Tensor[H, W] int64, index into ``classes``).
        """
        x, meta = self.preprocess(image)
        return dict(labels=self.inference(x, meta).argmax(dim=1)[0].cpu())
