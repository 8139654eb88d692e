"""Building a release of the authors' dense models from the file alone.

:func:`load_dense` reads an mmdet 2.11 / mmseg 0.13 checkpoint (mmcv's ``save_checkpoint``:
``{'meta': {'config', 'CLASSES', 'PALETTE', ...}, 'state_dict': ..., ['optimizer': ...]}``) with
litvit's one checkpoint reader and builds the model it holds:

* the kind from the state dict's prefixes (``bbox_head.retina_cls``: RetinaNet; ``rpn_head`` and
  ``roi_head``: Mask R-CNN, or Faster R-CNN without ``roi_head.mask_head``; ``decode_head``:
  Semantic FPN);
* widths, depths, head sizes, numbers of classes, anchors per position and output norms from the
  keys and shapes (:func:`~litvit.models.official_dense.backbone.build_release_backbone` for the
  backbone);
* the rest (FPN levels and extra convs, anchors, box coders, RoI settings, test settings, the test
  pipeline) from ``meta['config']`` (parsed, never executed), falling back to the values of the
  authors' configs for what the file does not say;
* class names and palette from ``meta``.

The six releases also load by name (``load_dense("retina_lit_ti")``): :func:`release_file`
downloads them once into torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), as
``pretrained=True`` does for the ImageNet weights.
"""
import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from ...checkpoint import mismatch_message, read_checkpoint
from ...errors import CheckpointMismatchError
from .backbone import backbone_state_dict, build_release_backbone
from .config import parse_config
from .heads import FPN, ConvFCBBoxHead, FCNMaskHead, FPNHead, RetinaHead, RoIExtractor, RPNHead
from .models import AnchorGenerator, DenseRelease, MaskRCNN, RetinaNet, SemanticFPN, StandardRoIHead
from .preprocess import TestPipeline, pipeline_from_config

__all__ = ["load_dense", "build_dense", "release_kind", "is_release", "release_file", "dense_from_checkpoint",
           "RELEASES", "checkpoint_file", "retina_test_settings", "mask_rcnn_test_settings", "RETINA_ANCHORS", "RPN_ANCHORS", "CODER",
           "RCNN_CODER", "DET_PIPELINE"]

_logger = logging.getLogger(__name__)

# The authors' configs (configs/lit/*.py with their _base_ files), for what a release does not say.
RETINA_ANCHORS = dict(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128])
RPN_ANCHORS = dict(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])
CODER = dict(target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0])
RCNN_CODER = dict(target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2])
_RETINA_TEST = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                    max_per_img=100)
_RPN_TEST = dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0)
_RCNN_TEST = dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5)
DET_PIPELINE = TestPipeline(img_scale=(1333, 800), size_divisor=32)
_SEG_PIPELINE = TestPipeline(img_scale=(2048, 512), size_divisor=None)

PathLike = Union[str, os.PathLike]

# The authors' six dense releases (LIT release v2.0), by the names ``--checkpoint`` and
# :func:`load_dense` accept.
_RELEASE_URL = "https://github.com/ziplab/LIT/releases/download/v2.0/"
RELEASES: Dict[str, str] = {name: f"{_RELEASE_URL}{name}.pth" for name in (
    "retina_lit_ti", "retina_lit_s", "mask_rcnn_lit_ti", "mask_rcnn_lit_s", "sem_fpn_lit_ti", "sem_fpn_lit_s")}


def is_release(ckpt: Any) -> bool:
    """Whether a read checkpoint is in the format mmcv's ``save_checkpoint`` writes for mmdet /
    mmseg: a ``state_dict`` mapping beside a ``meta`` mapping that names an mmdet or mmseg
    version or carries a config."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        return False
    meta = ckpt.get("meta")
    return isinstance(meta, Mapping) and any(k in meta for k in ("mmdet_version", "mmseg_version", "config"))


def release_file(name: str, progress: bool = True) -> str:
    """The local file of the release called ``name`` (a key of :data:`RELEASES`), downloaded on
    first use into torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``, which
    honours ``$TORCH_HOME``); the download goes to a temporary file renamed when complete."""
    import torch.hub
    if name not in RELEASES:
        raise KeyError(f"unknown release {name!r}; the releases are {', '.join(RELEASES)}")
    url = RELEASES[name]
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(url))
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        sys.stderr.write(f"downloading {url} to {path}\n")  # as torch.hub's download of weights says
        torch.hub.download_url_to_file(url, path, progress=progress)
    return path


def checkpoint_file(spec: PathLike, what: str = "checkpoint", progress: bool = True) -> PathLike:
    """The file of a checkpoint given as a path or as a release's name (:data:`RELEASES`,
    downloaded once by :func:`release_file`); FileNotFoundError naming ``what`` when neither."""
    if isinstance(spec, str) and spec in RELEASES and not os.path.exists(spec):
        return release_file(spec, progress=progress)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"{what} not found: {spec} (a file, or a release: {', '.join(RELEASES)})")
    return spec


def release_kind(state_dict: Mapping[str, Tensor]) -> str:
    """``"retinanet"``, ``"mask_rcnn"`` (also Faster R-CNN) or ``"semantic_fpn"``, from the keys.

    Raises:
        CheckpointMismatchError: none of them.
    """
    keys = state_dict.keys()
    if not any(k.startswith("backbone.") for k in keys):
        raise CheckpointMismatchError("not an mmdet/mmseg dense model: no 'backbone.' entries in its state dict")
    if "bbox_head.retina_cls.weight" in state_dict:
        return "retinanet"
    if any(k.startswith("rpn_head.") for k in keys) and any(k.startswith("roi_head.") for k in keys):
        return "mask_rcnn"
    if any(k.startswith("decode_head.") for k in keys):
        return "semantic_fpn"
    heads = sorted({k.split(".")[0] for k in keys} - {"backbone"})
    raise CheckpointMismatchError(f"not a RetinaNet, Mask R-CNN or Semantic FPN release (top-level modules: "
                                  f"{', '.join(heads) or 'backbone only'})")


def _sub(sd: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    n = {k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)}
    return len({int(i) for i in n if i.isdigit()})


def _nms_iou(cfg: Dict[str, Any], where: str) -> float:
    nms = cfg.get("nms")
    if nms is None:  # the older key, which mmdet 2.11's RPN still reads
        if "nms_thr" not in cfg:
            raise CheckpointMismatchError(f"{where} has neither nms nor nms_thr")
        return float(cfg["nms_thr"])
    if nms.get("type", "nms") != "nms":
        raise CheckpointMismatchError(f"{where}: NMS type {nms.get('type')!r} is not supported (only 'nms')")
    return float(nms.get("iou_threshold", nms.get("iou_thr", 0.5)))


def _neck(sd: Mapping[str, Tensor], cfg: Dict[str, Any], backbone_channels: List[int], default: Dict) -> FPN:
    n_lat = _count(sd, "neck.lateral_convs.")
    n_fpn = _count(sd, "neck.fpn_convs.")
    out_channels = sd["neck.lateral_convs.0.conv.weight"].shape[0]
    cfg = dict(default, **cfg)
    start = int(cfg.get("start_level", 0))
    end = int(cfg.get("end_level", -1))
    end = len(backbone_channels) if end == -1 else end
    if end - start != n_lat:
        raise CheckpointMismatchError(f"neck: {n_lat} lateral convs for backbone levels {start}..{end - 1}")
    extra = n_fpn - n_lat
    add_extra = cfg.get("add_extra_convs", False) if extra else False
    if add_extra is True:
        add_extra = "on_input" if cfg.get("extra_convs_on_inputs", True) else "on_output"
    if extra and not add_extra:  # the config does not say: the first extra conv's input width tells
        first = sd[f"neck.fpn_convs.{n_lat}.conv.weight"].shape[1]
        add_extra = "on_input" if first == backbone_channels[end - 1] and first != out_channels else "on_output"
    num_outs = int(cfg.get("num_outs", n_fpn))
    if add_extra and num_outs != n_fpn:
        raise CheckpointMismatchError(f"neck: num_outs={num_outs} but {n_fpn} output convs")
    return FPN(backbone_channels, out_channels, num_outs, start_level=start, end_level=int(cfg.get("end_level", -1)),
               add_extra_convs=add_extra, relu_before_extra_convs=bool(cfg.get("relu_before_extra_convs", False)))


def _anchors(cfg: Optional[Dict], default: Dict) -> AnchorGenerator:
    cfg = dict(cfg or default)
    if cfg.get("type", "AnchorGenerator") != "AnchorGenerator":
        raise CheckpointMismatchError(f"anchor generator {cfg['type']!r} is not supported")
    return AnchorGenerator(strides=cfg["strides"], ratios=cfg["ratios"], scales=cfg.get("scales"),
                           octave_base_scale=cfg.get("octave_base_scale"),
                           scales_per_octave=cfg.get("scales_per_octave"), base_sizes=cfg.get("base_sizes"),
                           center_offset=float(cfg.get("center_offset", 0.0)))


def _coder(cfg: Optional[Dict], default: Dict) -> Dict[str, Any]:
    cfg = dict(default, **(cfg or {}))
    if cfg.get("type", "DeltaXYWHBBoxCoder") != "DeltaXYWHBBoxCoder":
        raise CheckpointMismatchError(f"box coder {cfg['type']!r} is not supported")
    if cfg.get("add_ctr_clamp"):
        raise CheckpointMismatchError("DeltaXYWHBBoxCoder(add_ctr_clamp=True) is not supported")
    if not cfg.get("clip_border", True):
        raise CheckpointMismatchError("DeltaXYWHBBoxCoder(clip_border=False) is not supported")
    return dict(target_means=list(cfg["target_means"]), target_stds=list(cfg["target_stds"]))


def _classes(meta: Mapping, num_classes: int) -> Tuple[str, ...]:
    names = meta.get("CLASSES")
    if isinstance(names, str):
        names = (names,)
    if names is not None and len(names) == num_classes:
        return tuple(str(n) for n in names)
    if names is not None:
        _logger.warning("the release names %d classes but its head has %d; using class_0 ... class_%d",
                        len(names), num_classes, num_classes - 1)
    return tuple(f"class_{i}" for i in range(num_classes))


def retina_test_settings(test_cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """RetinaNet's test settings (``nms_pre``, ``min_bbox_size``, ``score_thr``, ``iou_threshold``,
    ``max_per_img``) from a config's ``test_cfg`` (the authors' values when None or empty)."""
    tc = test_cfg or dict(_RETINA_TEST)
    return dict(nms_pre=int(tc.get("nms_pre", -1)), min_bbox_size=float(tc.get("min_bbox_size", 0)),
                score_thr=float(tc["score_thr"]), iou_threshold=_nms_iou(tc, "test_cfg"),
                max_per_img=int(tc.get("max_per_img", tc.get("max_num", -1))))


def mask_rcnn_test_settings(test_cfg: Optional[Dict[str, Any]] = None,
                            roi_cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Mask R-CNN's test settings (``rpn``: ``nms_pre``, ``max_per_img``, ``iou_threshold``,
    ``min_bbox_size``; ``rcnn``: ``score_thr``, ``iou_threshold``, ``max_per_img``,
    ``mask_thr_binary``) from a config's ``test_cfg`` (the authors' values for what it lacks)."""
    test_cfg, roi_cfg = test_cfg or {}, roi_cfg or {}
    rpn_tc = dict(test_cfg.get("rpn") or _RPN_TEST)  # mmdet 2.11 reads old names too: nms_thr, max_num
    rcnn_tc = dict(test_cfg.get("rcnn") or roi_cfg.get("test_cfg") or _RCNN_TEST)
    return dict(
        rpn=dict(nms_pre=int(rpn_tc.get("nms_pre", -1)),
                 max_per_img=int(rpn_tc.get("max_per_img", rpn_tc.get("max_num", -1))),
                 iou_threshold=_nms_iou(rpn_tc, "test_cfg.rpn"),
                 min_bbox_size=float(rpn_tc.get("min_bbox_size", 0))),
        rcnn=dict(score_thr=float(rcnn_tc["score_thr"]), iou_threshold=_nms_iou(rcnn_tc, "test_cfg.rcnn"),
                  max_per_img=int(rcnn_tc.get("max_per_img", -1)),
                  mask_thr_binary=float(rcnn_tc.get("mask_thr_binary", 0.5))))


def _test_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    model = cfg.get("model") or {}
    return dict(model.get("test_cfg") or cfg.get("test_cfg") or {})


def _train_cfg(cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The release's ``train_cfg`` (inside ``model`` as in the LIT-S configs, or at the top level
    as in the LIT-Ti ones), None when it has none."""
    model = cfg.get("model") or {}
    found = model.get("train_cfg") or cfg.get("train_cfg")
    return dict(found) if found else None


def build_dense(state_dict: Mapping[str, Tensor], meta: Optional[Mapping[str, Any]] = None,
                backbone_kwargs: Optional[Mapping[str, Any]] = None) -> DenseRelease:
    """The model of a release's state dict and meta (random weights; :func:`load_dense` loads them).

    ``backbone_kwargs`` may set the backbone's ``drop_path_rate`` for training (the released
    weights do not record it; 0 otherwise).

    Returns:
        DenseRelease: a :class:`RetinaNet`, :class:`MaskRCNN` or :class:`SemanticFPN`, with
        ``classes``, ``palette``, ``pipeline``, ``test_cfg``, ``meta`` and ``config`` set.
    """
    meta = dict(meta or {})
    sd = state_dict
    kind = release_kind(sd)
    text = meta.get("config")
    cfg = parse_config(text) if isinstance(text, str) and text.strip() else {}
    if not cfg:
        _logger.info("the release has no config; using the authors' settings for %s", kind)
    model_cfg = cfg.get("model") or {}
    test_cfg = _test_cfg(cfg)
    backbone, _ = build_release_backbone(_sub(sd, "backbone."), model_cfg.get("backbone"), backbone_kwargs)
    channels = list(backbone.channels)
    neck_default = dict(retinanet=dict(start_level=1, add_extra_convs="on_input", num_outs=5),
                        mask_rcnn=dict(num_outs=5), semantic_fpn=dict(num_outs=4))[kind]
    neck = _neck(sd, model_cfg.get("neck") or {}, channels, neck_default)
    if kind == "retinanet":
        head_cfg = model_cfg.get("bbox_head") or {}
        anchors = _anchors(head_cfg.get("anchor_generator"), RETINA_ANCHORS)
        A = anchors.num_anchors
        use_sigmoid = bool((head_cfg.get("loss_cls") or {}).get("use_sigmoid", True))
        cls_out = sd["bbox_head.retina_cls.weight"].shape[0]
        if cls_out % A:
            raise CheckpointMismatchError(f"bbox_head.retina_cls has {cls_out} outputs, not a multiple of {A} anchors")
        num_classes = cls_out // A - (0 if use_sigmoid else 1)
        if head_cfg.get("num_classes") not in (None, num_classes):
            raise CheckpointMismatchError(f"config num_classes={head_cfg['num_classes']} but retina_cls holds "
                                          f"{num_classes} classes")
        stacked = _count(sd, "bbox_head.cls_convs.")
        feat = sd["bbox_head.retina_cls.weight"].shape[1]
        in_ch = sd["bbox_head.cls_convs.0.conv.weight"].shape[1] if stacked else feat
        head = RetinaHead(num_classes, in_ch, feat_channels=feat, stacked_convs=stacked, num_anchors=A,
                          use_sigmoid=use_sigmoid)
        losses = dict(loss_cls=head_cfg.get("loss_cls"), loss_bbox=head_cfg.get("loss_bbox"),
                      reg_decoded_bbox=head_cfg.get("reg_decoded_bbox"))
        model: DenseRelease = RetinaNet(backbone, neck, head, anchors, _coder(head_cfg.get("bbox_coder"), CODER),
                                        retina_test_settings(test_cfg), _classes(meta, num_classes),
                                        pipeline_from_config(cfg, DET_PIPELINE), train_cfg=_train_cfg(cfg),
                                        loss_cfg=losses)
    elif kind == "mask_rcnn":
        rpn_cfg = model_cfg.get("rpn_head") or {}
        roi_cfg = model_cfg.get("roi_head") or {}
        anchors = _anchors(rpn_cfg.get("anchor_generator"), RPN_ANCHORS)
        A = anchors.num_anchors
        if sd["rpn_head.rpn_cls.weight"].shape[0] != A:
            raise CheckpointMismatchError(f"rpn_head.rpn_cls has {sd['rpn_head.rpn_cls.weight'].shape[0]} outputs for "
                                          f"{A} anchors (only sigmoid objectness is supported)")
        rpn = RPNHead(sd["rpn_head.rpn_conv.weight"].shape[1], sd["rpn_head.rpn_conv.weight"].shape[0], A)
        bbox_cfg = roi_cfg.get("bbox_head") or {}
        if _count(sd, "roi_head.bbox_head.shared_convs.") or any(
                k.startswith(("roi_head.bbox_head.cls_", "roi_head.bbox_head.reg_")) for k in sd):
            raise CheckpointMismatchError("only Shared2FCBBoxHead-style box heads (shared fcs) are supported")
        fc_cls = sd["roi_head.bbox_head.fc_cls.weight"]
        num_classes = fc_cls.shape[0] - 1
        n_fcs = _count(sd, "roi_head.bbox_head.shared_fcs.")
        fc_out = fc_cls.shape[1]
        bbox_extractor_cfg = roi_cfg.get("bbox_roi_extractor") or {}
        roi_size = int((bbox_extractor_cfg.get("roi_layer") or {}).get("output_size", bbox_cfg.get("roi_feat_size", 7)))
        in_ch = (sd["roi_head.bbox_head.shared_fcs.0.weight"].shape[1] // (roi_size * roi_size) if n_fcs
                 else fc_cls.shape[1] // (roi_size * roi_size))
        reg_agnostic = sd["roi_head.bbox_head.fc_reg.weight"].shape[0] == 4 and num_classes != 1
        bbox_head = ConvFCBBoxHead(num_classes, in_ch, roi_size, fc_out, n_fcs, reg_class_agnostic=reg_agnostic)
        bbox_extractor = _extractor(bbox_extractor_cfg, 7)
        mask_head = mask_extractor = None
        if any(k.startswith("roi_head.mask_head.") for k in sd):
            mask_cfg = roi_cfg.get("mask_head") or {}
            logits = sd["roi_head.mask_head.conv_logits.weight"]
            n_convs = _count(sd, "roi_head.mask_head.convs.")
            first = sd["roi_head.mask_head.convs.0.conv.weight"] if n_convs else None
            upsample = mask_cfg.get("upsample_cfg") or dict(type="deconv", scale_factor=2)
            if upsample.get("type", "deconv") != "deconv":
                raise CheckpointMismatchError(f"mask upsampling {upsample.get('type')!r} is not supported")
            mask_head = FCNMaskHead(num_classes, first.shape[1] if first is not None else logits.shape[1],
                                    conv_out_channels=logits.shape[1], num_convs=n_convs,
                                    conv_kernel_size=first.shape[-1] if first is not None else 3,
                                    scale_factor=sd["roi_head.mask_head.upsample.weight"].shape[-1],
                                    class_agnostic=logits.shape[0] == 1 and num_classes != 1)
            mask_extractor = _extractor(roi_cfg.get("mask_roi_extractor") or {}, 14)
        roi_head = StandardRoIHead(bbox_extractor, bbox_head, mask_extractor, mask_head)
        mask_cfg = roi_cfg.get("mask_head") or {}
        decoded = rpn_cfg.get("reg_decoded_bbox") or bbox_cfg.get("reg_decoded_bbox")
        losses = dict(rpn_loss_cls=rpn_cfg.get("loss_cls"), rpn_loss_bbox=rpn_cfg.get("loss_bbox"),
                      loss_cls=bbox_cfg.get("loss_cls"), loss_bbox=bbox_cfg.get("loss_bbox"),
                      loss_mask=mask_cfg.get("loss_mask"), reg_decoded_bbox=decoded)
        model = MaskRCNN(backbone, neck, rpn, roi_head, anchors, _coder(rpn_cfg.get("bbox_coder"), CODER),
                         _coder(bbox_cfg.get("bbox_coder"), RCNN_CODER), mask_rcnn_test_settings(test_cfg, roi_cfg),
                         _classes(meta, num_classes), pipeline_from_config(cfg, DET_PIPELINE),
                         train_cfg=_train_cfg(cfg), loss_cfg=losses)
    else:
        head_cfg = model_cfg.get("decode_head") or {}
        if (test_cfg.get("mode") or "whole") != "whole":
            raise CheckpointMismatchError(f"test_cfg mode {test_cfg.get('mode')!r} is not supported (only 'whole')")
        if head_cfg.get("type", "FPNHead") != "FPNHead":
            raise CheckpointMismatchError(f"decode head {head_cfg['type']!r} is not supported (only FPNHead)")
        n_levels = _count(sd, "decode_head.scale_heads.")
        in_channels = [sd[f"decode_head.scale_heads.{i}.0.conv.weight"].shape[1] for i in range(n_levels)]
        conv_seg = sd["decode_head.conv_seg.weight"]
        norm = "decode_head.scale_heads.0.0.bn.weight" in sd
        strides = list(head_cfg.get("feature_strides") or [4 * 2 ** i for i in range(n_levels)])
        head = FPNHead(in_channels, conv_seg.shape[1], conv_seg.shape[0], feature_strides=strides,
                       in_index=list(head_cfg.get("in_index") or range(n_levels)), norm=norm,
                       dropout_ratio=float(head_cfg.get("dropout_ratio", 0.1)),
                       align_corners=bool(head_cfg.get("align_corners", False)))
        palette = meta.get("PALETTE")
        loss_cfg = head_cfg.get("loss_decode") or {}
        model = SemanticFPN(backbone, neck, head, dict(mode="whole"), _classes(meta, conv_seg.shape[0]),
                            pipeline_from_config(cfg, _SEG_PIPELINE),
                            palette=palette if palette is not None and len(palette) == conv_seg.shape[0] else None,
                            align_corners=bool(head_cfg.get("align_corners", False)),
                            ignore_index=int(head_cfg.get("ignore_index", 255)),
                            loss_weight=float(loss_cfg.get("loss_weight", 1.0)))
    model.meta = {k: v for k, v in meta.items() if k != "config"}
    model.config = cfg
    return model


def _extractor(cfg: Dict[str, Any], default_size: int) -> RoIExtractor:
    layer = dict(dict(type="RoIAlign", output_size=default_size, sampling_ratio=0), **(cfg.get("roi_layer") or {}))
    if layer["type"] != "RoIAlign" or layer.get("pool_mode", "avg") != "avg":
        raise CheckpointMismatchError(f"RoI layer {layer['type']!r} ({layer.get('pool_mode', 'avg')}) is not supported")
    return RoIExtractor(int(layer["output_size"]), cfg.get("featmap_strides") or [4, 8, 16, 32],
                        sampling_ratio=int(layer.get("sampling_ratio", 0)), aligned=bool(layer.get("aligned", True)),
                        finest_scale=int(cfg.get("finest_scale", 56)))


def load_dense(path: PathLike) -> DenseRelease:
    """Load one of the authors' dense releases (RetinaNet, Mask R-CNN, Semantic FPN on LIT-Ti or
    LIT-S; mmdet 2.11 / mmseg 0.13 format) from the file alone.

    Args:
        path (str | PathLike): the ``.pth`` file, or the name of a release (:data:`RELEASES`:
            ``retina_lit_ti``, ``mask_rcnn_lit_s``, ...), downloaded on first use.

    Returns:
        DenseRelease: the model in eval mode, with ``classes`` (and ``palette`` for Semantic FPN);
        ``model.predict(image)`` runs the authors' inference on an (H, W, 3) uint8 RGB image.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: not a readable checkpoint, not such a release, or a setting this
            reimplementation does not have (the message says which).
        ValueError: the release's config text is not a plain config.

    Examples::
        >>> model = load_dense('retina_lit_ti.pth')  # doctest: +SKIP
        >>> model.predict(np.zeros((480, 640, 3), np.uint8))['boxes'].shape  # doctest: +SKIP
        torch.Size([0, 4])
    """
    if isinstance(path, str) and path in RELEASES and not os.path.exists(path):
        path = release_file(path)
    return dense_from_checkpoint(read_checkpoint(path), path)


def dense_from_checkpoint(ckpt: Any, path: PathLike = "the checkpoint",
                          backbone_kwargs: Optional[Mapping[str, Any]] = None) -> DenseRelease:
    """:func:`load_dense` of a checkpoint already read (``path`` names it in messages;
    ``backbone_kwargs`` as :func:`build_dense`'s)."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        found = sorted(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointMismatchError(f"{path} is not an mmdet/mmseg release (expected 'meta' and 'state_dict', "
                                      f"found {found})")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v
          for k, v in ckpt["state_dict"].items() if isinstance(v, Tensor)}
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    try:
        model = build_dense(sd, meta, backbone_kwargs)
    except ValueError as e:
        raise type(e)(f"{path}: {e}") from None
    state = {f"backbone.{k}": v for k, v in backbone_state_dict(_sub(sd, "backbone.")).items()}
    state.update({k: v for k, v in sd.items() if not k.startswith("backbone.")})
    problem = mismatch_message(model.state_dict(), state, limit=3)
    if problem:
        raise CheckpointMismatchError(f"{path} does not fit the model built from it: {problem}")
    model.load_state_dict(state)
    return model.eval()
