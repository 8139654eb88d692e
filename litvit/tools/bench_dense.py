"""``litvit bench --dense-releases``: CPU time per image of the authors' six dense architectures.

Each architecture (RetinaNet, Mask R-CNN and Semantic FPN on LIT-Ti and LIT-S) is built as a
release in memory, without a file and without the authors' code: :func:`release_layout` makes the
state dict of the full-size layout (random weights, drawn from a fixed seed; the detectors' class
biases set so that every image gives ``max_per_img`` = 100 detections, see :data:`BUSY_CLASSES`)
under the names the authors' mmdet 2.11 / mmseg 0.13 models use, and the config text (:func:`release_config`, written
out by :func:`config_text` in mmcv's ``name = dict(...)`` form) from litvit's own description of
the authors' settings (``docs``: the README's "The authors' released dense models"). litvit's model
is then :func:`~litvit.models.official_dense.dense_from_checkpoint` of that release, timed on one
synthetic 1333x800 RGB image with ``model.predict`` (the whole test-time path: resize, normalise,
network, post-processing), after warm-up, median of the repetitions.

``--official WORK`` also times the authors' own model, built by their code from the *same*
release (its config text through mmcv's ``Config``, its state dict loaded strictly), with their
``inference_detector`` / ``inference_segmentor`` on the same image, interleaved with litvit's in
one process per code tree (mmdet's and mmseg's trees cannot share a process: both ship packages
of the same names). ``WORK`` is a folder you prepare: ``WORK/LIT`` a checkout of the authors'
repository (zhuang-group/LIT: its ``detection/`` vendors mmdet 2.11, ``segmentation/`` mmseg 0.13),
``WORK/site`` mmcv 1.7.2 built without compiled ops (``MMCV_WITH_OPS=0 pip install --target
WORK/site mmcv==1.7.2 addict yapf==0.32.0 terminaltables``). Their compiled kernels are replaced in that
process before anything imports them: mmcv's ``nms`` and ``roi_align`` kernels and the authors'
deformable convolution by torchvision's ops, apex's ``amp`` decorators by the identity. Nothing of
their code is part of litvit; it is only imported from ``WORK`` at run time.

The parameter counts are those of the release layouts (every state-dict entry that is a
parameter in the authors' models: BatchNorm statistics and LIT-S's relative-position indices are
buffers) and of litvit's models built from them.
"""
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..metrics import COCO_CLASSES
from ..models.convert import litvit_to_official
from ..models.lit import lit_s, lit_ti
from ..models.official_dense import build_dense, dense_from_checkpoint
from ..models.official_dense.heads import (FPN, ConvFCBBoxHead, FCNMaskHead, FPNHead, RetinaHead, RPNHead)

__all__ = ["ARCHITECTURES", "FULL", "TINY", "BUSY_CLASSES", "release_config", "config_text", "release_layout", "release_params",
           "litvit_params", "bench_dense", "print_dense_table", "plot_dense", "OfficialEnvError"]

# name -> (detector / segmentor, backbone family); the order of the README's table
ARCHITECTURES: Dict[str, Tuple[str, str]] = OrderedDict([
    ("retinanet_lit_ti", ("retinanet", "lit_ti")), ("retinanet_lit_s", ("retinanet", "lit_s")),
    ("mask_rcnn_lit_ti", ("mask_rcnn", "lit_ti")), ("mask_rcnn_lit_s", ("mask_rcnn", "lit_s")),
    ("sem_fpn_lit_ti", ("semantic_fpn", "lit_ti")), ("sem_fpn_lit_s", ("semantic_fpn", "lit_s")),
])
# The sizes of the authors' configs (FULL) and a tiny variant for quick checks (TINY).
FULL = dict(lit_ti=dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
            lit_s=dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2)),
            fpn=256, retina_convs=4, retina_feat=256, rpn_feat=256, fc=1024, mask_convs=4, mask_feat=256,
            sem_channels=128, image=(1333, 800), det_scale=(1333, 800), seg_scale=(2048, 512))
TINY = dict(lit_ti=dict(embed_dims=(8, 16, 40, 64), depths=(1, 1, 1, 1)),
            lit_s=dict(embed_dims=(24, 48, 96, 192), depths=(1, 1, 1, 1)),
            fpn=32, retina_convs=2, retina_feat=32, rpn_feat=32, fc=64, mask_convs=2, mask_feat=32,
            sem_channels=32, image=(320, 192), det_scale=(320, 192), seg_scale=(256, 128))
_MEAN = [123.675, 116.28, 103.53]
_STD = [58.395, 57.12, 57.375]
_ADE_CLASSES = 150
_SEED = 17
# Random weights with the authors' initial class biases score no detection above 0.05, and the
# post-processing and mask branch would not run; raising these classes' biases makes every image
# as busy as a crowded photo: max_per_img (100) detections, with their masks.
BUSY_CLASSES = (0, 2, 9, 39, 56)


class OfficialEnvError(RuntimeError):
    """The folder given to ``--official`` does not hold the authors' code and mmcv, or their run failed."""


# --- the release: config and state dict -------------------------------------------------------------

def _test_pipeline(scale: Tuple[int, int], pad: bool) -> List[dict]:
    steps = [dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
             dict(type="Normalize", mean=_MEAN, std=_STD, to_rgb=True)]
    if pad:
        steps.append(dict(type="Pad", size_divisor=32))
    steps += [dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])]
    return [dict(type="LoadImageFromFile"), dict(type="MultiScaleFlipAug", img_scale=scale, flip=False,
                                                 transforms=steps)]


def release_config(name: str) -> Dict[str, Any]:
    """The test-time config of the full-size architecture ``name`` (a key of :data:`ARCHITECTURES`),
    as plain values: ``model`` (backbone, neck, heads with their anchors, coders and ``test_cfg``)
    and ``data.test.pipeline``, with the values of the authors' configs (README, "The authors'
    released dense models"). Training-only entries (losses aside, which mmdet needs to build a
    head) are left out."""
    kind, family = ARCHITECTURES[name]
    dims = list(FULL[family]["embed_dims"])
    if family == "lit_ti":
        backbone = dict(type="LIT_Ti")  # the authors' LIT_Ti has its sizes in its code
    else:
        backbone = dict(type="LIT", embed_dim=dims[0], depths=list(FULL[family]["depths"]), num_heads=[3, 6, 12, 24],
                        window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_path_rate=0.2, ape=False,
                        patch_norm=True, out_indices=(0, 1, 2, 3))
    l1 = dict(type="L1Loss", loss_weight=1.0)
    if kind == "retinanet":
        model = dict(
            type="RetinaNet", pretrained=None, backbone=backbone,
            neck=dict(type="FPN", in_channels=dims, out_channels=256, start_level=1, add_extra_convs="on_input",
                      num_outs=5),
            bbox_head=dict(
                type="RetinaHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                      ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                loss_bbox=l1),
            test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                          max_per_img=100))
    elif kind == "mask_rcnn":
        def extractor(size):
            return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                        out_channels=256, featmap_strides=[4, 8, 16, 32])
        model = dict(
            type="MaskRCNN", pretrained=None, backbone=backbone,
            neck=dict(type="FPN", in_channels=dims, out_channels=256, num_outs=5),
            rpn_head=dict(
                type="RPNHead", in_channels=256, feat_channels=256,
                anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                      strides=[4, 8, 16, 32, 64]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0), loss_bbox=l1),
            roi_head=dict(
                type="StandardRoIHead", bbox_roi_extractor=extractor(7),
                bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                               num_classes=80,
                               bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                               target_stds=[0.1, 0.1, 0.2, 0.2]),
                               reg_class_agnostic=False,
                               loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                               loss_bbox=l1),
                mask_roi_extractor=extractor(14),
                mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80,
                               loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
            test_cfg=dict(
                rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=0.7,
                         min_bbox_size=0),
                rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                          mask_thr_binary=0.5)))
    else:
        norm = dict(type="SyncBN", requires_grad=True)
        model = dict(
            type="EncoderDecoder", pretrained=None, backbone=backbone,
            neck=dict(type="FPN", in_channels=dims, out_channels=256, num_outs=4),
            decode_head=dict(type="FPNHead", in_channels=[256] * 4, in_index=[0, 1, 2, 3],
                             feature_strides=[4, 8, 16, 32], channels=128, dropout_ratio=0.1,
                             num_classes=_ADE_CLASSES, norm_cfg=norm, align_corners=False,
                             loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
            train_cfg=dict(), test_cfg=dict(mode="whole"))
    det = kind != "semantic_fpn"
    pipeline = _test_pipeline(FULL["det_scale"] if det else FULL["seg_scale"], pad=det)
    return dict(model=model, data=dict(test=dict(type="CocoDataset" if det else "ADE20KDataset", pipeline=pipeline)))


def _literal_text(value: Any) -> str:
    if isinstance(value, dict):
        if all(isinstance(k, str) and k.isidentifier() for k in value):
            return "dict(" + ", ".join(f"{k}={_literal_text(v)}" for k, v in value.items()) + ")"
        return "{" + ", ".join(f"{_literal_text(k)}: {_literal_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal_text(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return repr(value)
    raise TypeError(f"a config holds literals only, got {type(value).__name__}")


def config_text(cfg: Dict[str, Any]) -> str:
    """``cfg`` as mmcv config text: one ``name = literal`` line per entry (what ``meta['config']``
    holds; :func:`~litvit.models.official_dense.parse_config` and mmcv's ``Config`` both read it)."""
    return "".join(f"{k} = {_literal_text(v)}\n" for k, v in cfg.items())


def _prefixed(module: torch.nn.Module, prefix: str) -> Dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _backbone_entries(kind: str, family: str, sizes: dict) -> Dict[str, Tensor]:
    """The backbone's entries in the authors' dense layout: their classification layout without the
    classifier and final norm (and LIT-Ti's class token), LIT-S's relative-position tables sized
    for the grid their dense code builds them for (800 px for detection, 512 for segmentation),
    and LIT-S's output LayerNorms ``norm{i}`` (stages 2-4 for detection, all four for
    segmentation)."""
    arch = dict(sizes[family])
    if family == "lit_ti":
        sd = litvit_to_official(lit_ti(num_classes=0, **arch).state_dict(), "pvt")
        drop = ("cls_token", "norm.weight", "norm.bias")
        return {k: v for k, v in sd.items() if k not in drop and not k.startswith("head.")}
    grid = 512 if kind == "semantic_fpn" else 800
    sd = litvit_to_official(lit_s(num_classes=0, img_size=grid, **arch).state_dict(), "swin")
    sd = {k: v for k, v in sd.items() if k not in ("norm.weight", "norm.bias") and not k.startswith("head.")
          and not k.endswith("relative_position_index")}  # their dense LIT-S does not save the index
    for i in (range(4) if kind == "semantic_fpn" else range(1, 4)):
        norm = torch.nn.LayerNorm(arch["embed_dims"][i])
        sd[f"norm{i}.weight"], sd[f"norm{i}.bias"] = norm.weight.detach(), norm.bias.detach()
    return sd


def release_layout(name: str, tiny: bool = False, seed: int = _SEED) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The state dict and meta of a release of architecture ``name`` (random weights from ``seed``).

    Builds on the current default device: under ``torch.device("meta")`` nothing is allocated (for
    counting parameters). ``tiny``: the :data:`TINY` widths, depths and test scales (litvit only:
    the authors' LIT-Ti has its sizes in its code), a config otherwise the full-size one.

    Returns:
        (dict, dict): ``state_dict`` (the authors' key names) and ``meta`` (``config`` text,
        ``CLASSES`` for detection, ``mmdet_version`` / ``mmseg_version``).
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    kind, family = ARCHITECTURES[name]
    s = TINY if tiny else FULL
    cfg = release_config(name)
    model = cfg["model"]
    dims = list(s[family]["embed_dims"])
    model["neck"]["in_channels"] = dims
    model["neck"]["out_channels"] = s["fpn"]
    cfg["data"]["test"]["pipeline"][1]["img_scale"] = s["det_scale" if kind != "semantic_fpn" else "seg_scale"]
    if family == "lit_s":
        model["backbone"].update(embed_dim=dims[0], depths=list(s[family]["depths"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = {f"backbone.{k}": v for k, v in _backbone_entries(kind, family, s).items()}
        fpn = s["fpn"]
        if kind == "retinanet":
            sd.update(_prefixed(FPN(dims, fpn, 5, start_level=1, add_extra_convs="on_input"), "neck"))
            head = RetinaHead(80, fpn, s["retina_feat"], s["retina_convs"], 9)
            with torch.no_grad():  # the authors' class prior 0.01, but a few classes likely everywhere
                head.retina_cls.bias.fill_(-math.log(99.0))
                head.retina_cls.bias.view(9, 80)[:, list(BUSY_CLASSES)] = 0.0
            sd.update(_prefixed(head, "bbox_head"))
            model["bbox_head"].update(in_channels=fpn, feat_channels=s["retina_feat"], stacked_convs=s["retina_convs"])
        elif kind == "mask_rcnn":
            sd.update(_prefixed(FPN(dims, fpn, 5), "neck"))
            sd.update(_prefixed(RPNHead(fpn, s["rpn_feat"], 3), "rpn_head"))
            box_head = ConvFCBBoxHead(80, fpn, 7, s["fc"], 2)
            with torch.no_grad():  # a few classes likely for every RoI (background is the last logit)
                box_head.fc_cls.bias[list(BUSY_CLASSES)] = 3.0
            sd.update(_prefixed(box_head, "roi_head.bbox_head"))
            sd.update(_prefixed(FCNMaskHead(80, fpn, s["mask_feat"], s["mask_convs"]), "roi_head.mask_head"))
            model["rpn_head"].update(in_channels=fpn, feat_channels=s["rpn_feat"])
            roi = model["roi_head"]
            roi["bbox_head"].update(in_channels=fpn, fc_out_channels=s["fc"])
            roi["mask_head"].update(in_channels=fpn, conv_out_channels=s["mask_feat"], num_convs=s["mask_convs"])
            roi["bbox_roi_extractor"]["out_channels"] = roi["mask_roi_extractor"]["out_channels"] = fpn
        else:
            sd.update(_prefixed(FPN(dims, fpn, 4), "neck"))
            sd.update(_prefixed(FPNHead([fpn] * 4, s["sem_channels"], _ADE_CLASSES), "decode_head"))
            model["decode_head"].update(in_channels=[fpn] * 4, channels=s["sem_channels"])
    meta: Dict[str, Any] = dict(config=config_text(cfg))
    if kind == "semantic_fpn":
        meta["mmseg_version"] = "0.13.0"
    else:
        meta.update(mmdet_version="2.11.0", CLASSES=tuple(COCO_CLASSES))
    return sd, meta


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")


def release_params(state_dict: Dict[str, Tensor]) -> int:
    """Parameters of a release layout: its entries less BatchNorm statistics and LIT-S's
    relative-position indices (buffers in the authors' models)."""
    return sum(v.numel() for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _BUFFERS)


def litvit_params(name: str, tiny: bool = False) -> Tuple[int, int]:
    """(release layout, litvit's model built from it) parameter counts of ``name``, on the meta
    device: nothing is allocated, so the full-size layouts count in a moment."""
    with torch.device("meta"):
        sd, meta = release_layout(name, tiny)
        model = build_dense(sd, meta)
    return release_params(sd), sum(p.numel() for p in model.parameters())


# --- timing -------------------------------------------------------------------------------------------

def _image(size: Tuple[int, int]) -> np.ndarray:
    """A fixed (H, W, 3) uint8 RGB picture of ``size`` = (width, height): smooth gradients with
    blocks, so that resizing and the heads see structure."""
    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([40 + 170 * xx / max(w - 1, 1), 60 + 150 * yy / max(h - 1, 1),
                    200 - 120 * (xx + yy) / max(w + h - 2, 1)], -1)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        img[y0:y0 + int(rng.integers(8, h // 3 + 9)), x0:x0 + int(rng.integers(8, w // 3 + 9))] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)


def _official_runner(kind: str, ckpt: dict):
    """The authors' model of a release (built by their code from its config text, weights loaded
    strictly) and a function running their inference on an RGB image. Needs their tree importable
    (:func:`_install_stubs` first)."""
    from mmcv import Config
    cfg = Config.fromstring(ckpt["meta"]["config"], ".py")
    if kind == "semantic_fpn":
        from mmseg.apis import inference_segmentor as infer
        from mmseg.models import build_segmentor
        model = build_segmentor(cfg.model)
    else:
        from mmdet.apis import inference_detector as infer
        from mmdet.models import build_detector
        model = build_detector(cfg.model)
        model.CLASSES = ckpt["meta"].get("CLASSES")
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.cfg = cfg
    model.eval()
    params = sum(p.numel() for p in model.parameters())

    def run(rgb: np.ndarray):
        with torch.no_grad():
            return infer(model, np.ascontiguousarray(rgb[..., ::-1]))  # their arrays are BGR, as cv2 reads
    return run, params


def _count_results(result: Any) -> int:
    """Detections in mmdet's result: per-class box arrays, or (boxes, masks) for Mask R-CNN."""
    boxes = result[0] if isinstance(result, tuple) else result
    return int(sum(len(b) for b in boxes))


def _install_stubs() -> None:
    """Stand-ins for the compiled modules the authors' code imports (mmcv's ``_ext`` kernels, their
    ``DCN`` extension, apex), computing with torchvision's ops; registered before their import."""
    import types

    import torchvision

    def missing(name):
        def call(*args, **kwargs):
            raise NotImplementedError(f"{name} has no CPU stand-in in litvit's bench")
        return call

    def nms(boxes, scores, iou_threshold, offset=0):
        if offset:
            raise NotImplementedError("nms with offset != 0")
        return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))

    def roi_align_forward(feats, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                          sampling_ratio, pool_mode, aligned):
        if pool_mode != 1:
            raise NotImplementedError("roi_align with max pooling")
        output.copy_(torchvision.ops.roi_align(feats, rois.to(feats.dtype), (aligned_height, aligned_width),
                                               spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                                               aligned=bool(aligned)))

    ext = types.ModuleType("mmcv._ext")
    ext.nms, ext.roi_align_forward = nms, roi_align_forward

    def other_kernel(name):  # mmcv.ops checks at import that its kernels exist; only two are called here
        if name.startswith("__"):
            raise AttributeError(name)
        return missing(f"mmcv._ext.{name}")
    ext.__getattr__ = other_kernel

    def deform_forward(x, weight, bias, offset, kh, kw, sh, sw, ph, pw, dh, dw, group, deformable_group, im2col_step):
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=(sh, sw), padding=(ph, pw),
                                             dilation=(dh, dw))

    dcn = types.ModuleType("DCN")
    dcn.deform_conv2d_forward = deform_forward
    for n in ("deform_conv2d_backward", "modulated_deform_conv2d_forward", "modulated_deform_conv2d_backward"):
        setattr(dcn, n, missing(f"DCN.{n}"))
    amp = types.ModuleType("apex.amp")
    amp.float_function = amp.half_function = lambda fn: fn
    apex = types.ModuleType("apex")
    apex.amp = amp
    for name, mod in (("mmcv._ext", ext), ("DCN", dcn), ("apex", apex), ("apex.amp", amp)):
        sys.modules.setdefault(name, mod)
    import mmcv
    mmcv._ext = ext


def _time_round(runners: Sequence[Tuple[str, Any]], image: np.ndarray, warmup: int, reps: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {label: [] for label, _ in runners}
    for _ in range(warmup):
        for _, run in runners:
            run(image)
    for _ in range(reps):
        for label, run in runners:
            t0 = time.perf_counter()
            run(image)
            times[label].append(time.perf_counter() - t0)
    return times


def _bench_in_process(names: Sequence[str], tiny: bool, warmup: int, reps: int, official: bool) -> List[dict]:
    s = TINY if tiny else FULL
    image = _image(s["image"])
    rows = []
    for name in names:
        kind, _ = ARCHITECTURES[name]
        sd, meta = release_layout(name, tiny)
        ckpt = dict(meta=meta, state_dict=sd)
        model = dense_from_checkpoint(ckpt, name)
        runners = [("litvit", lambda img, m=model: m.predict(img))]
        row = dict(name=name, kind=kind, image=list(s["image"]), tiny=tiny, params=release_params(sd),
                   litvit_params=sum(p.numel() for p in model.parameters()), warmup=warmup, reps=reps,
                   threads=torch.get_num_threads())
        if official:
            run, row["official_params"] = _official_runner(kind, ckpt)
            runners.append(("official", run))
            row["official_detections"] = _count_results(run(image)) if kind != "semantic_fpn" else None
        out = model.predict(image)
        row["detections"] = int(len(out["scores"])) if "scores" in out else None
        times = _time_round(runners, image, warmup, reps)
        for label, ts in times.items():
            row[f"{label}_s"] = statistics.median(ts)
            row[f"{label}_times"] = ts
        if official:
            row["ratio"] = row["official_s"] / row["litvit_s"]
        rows.append(row)
        del model, runners
    return rows


def _official_paths(work: str, tree: str) -> List[str]:
    sub = "detection" if tree == "det" else "segmentation"
    paths = [os.path.join(work, "site"), os.path.join(work, "LIT", sub)]
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing or not os.path.isdir(os.path.join(paths[1], "mmdet" if tree == "det" else "mmseg")):
        raise OfficialEnvError(f"--official {work}: not a folder holding the authors' code (expected "
                               f"{paths[0]} and {paths[1]} with the authors' {'mmdet' if tree == 'det' else 'mmseg'})")
    return paths


def bench_dense(names: Sequence[str], tiny: bool = False, warmup: int = 1, reps: int = 3,
                official: Optional[str] = None, threads: int = 0) -> List[dict]:
    """Time ``model.predict`` of each architecture of ``names`` on one image (1333x800; 320x192 with
    ``tiny``); with ``official`` (a folder holding the authors' code and mmcv, see above) also the authors'
    inference on the same release, interleaved in one process per code tree.

    Returns:
        list of dict: per architecture ``name``, ``params`` (release layout), ``litvit_params``,
        ``litvit_s`` (median seconds per image) and its ``litvit_times``; with ``official``
        also ``official_params``, ``official_detections``, ``official_s``, ``official_times`` and
        ``ratio`` (official / litvit). ``detections``: what litvit's model returned (None for
        Semantic FPN), from an untimed run before the warm-up, as is the authors'.
    """
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise KeyError(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHITECTURES)}")
    if not official:
        return _bench_in_process(names, tiny, warmup, reps, official=False)
    if tiny:
        raise ValueError("--official times the full-size layouts only (the authors' LIT-Ti has fixed sizes)")
    rows: Dict[str, dict] = {}
    for tree in ("det", "seg"):
        mine = [n for n in names if (ARCHITECTURES[n][0] == "semantic_fpn") == (tree == "seg")]
        if not mine:
            continue
        paths = _official_paths(official, tree)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [root] + [os.environ.get("PYTHONPATH", "")]),
                   PYTHONWARNINGS="ignore")
        spec = dict(names=mine, warmup=warmup, reps=reps, threads=threads or torch.get_num_threads())
        cmd = [sys.executable, "-m", "litvit.tools.bench_dense", json.dumps(spec)]
        proc = subprocess.run(cmd, env=env, cwd=paths[1], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise OfficialEnvError(f"the authors' code failed in {paths[1]}: " + " | ".join(tail))
        for row in json.loads(lines[-1])["rows"]:
            rows[row["name"]] = row
    return [rows[n] for n in names]


# --- report -------------------------------------------------------------------------------------------

def print_dense_table(rows: List[dict]) -> None:
    official = any("official_s" in r for r in rows)
    head = f"{'architecture':<18} {'params (release)':>16} {'params (litvit)':>15} {'detections':>10} {'litvit s/img':>12}"
    if official:
        head += f" {'authors s/img':>13} {'authors/litvit':>14}"
    print(head)
    for r in rows:
        dets = "-" if r.get("detections") is None else str(r["detections"])
        if official and r.get("official_detections") is not None:
            dets += f"/{r['official_detections']}"  # litvit's / the authors'
        line = f"{r['name']:<18} {r['params']:>16,} {r['litvit_params']:>15,} {dets:>10} {r['litvit_s']:>12.3f}"
        if official:
            line += f" {r['official_s']:>13.3f} {r['ratio']:>13.2f}x"
        print(line)


def plot_dense(rows: List[dict], path: str, title: str) -> None:
    """Seconds per image per architecture: litvit's bar beside the authors' where timed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_write
    labels = [r["name"] for r in rows]
    x = np.arange(len(rows))
    official = any("official_s" in r for r in rows)
    width = 0.38 if official else 0.6
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(x - (width / 2 if official else 0), [r["litvit_s"] for r in rows], width, label="litvit")
    if official:
        ax.bar(x + width / 2, [r.get("official_s", float("nan")) for r in rows], width, label="authors' code")
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set_ylabel("seconds per image (median)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), fsync=False)
    plt.close(fig)


def _worker(spec: str) -> int:
    """The process that times litvit and the authors' code side by side (``python -m
    litvit.tools.bench_dense SPEC``, started by :func:`bench_dense` with the authors' tree on
    ``PYTHONPATH`` and as working directory; ``SPEC``: JSON with ``names``, ``warmup``, ``reps``,
    ``threads``). Prints one JSON line: ``{"rows": [...]}``."""
    opts = json.loads(spec)
    torch.set_num_threads(int(opts["threads"]))
    _install_stubs()
    rows = _bench_in_process(opts["names"], False, int(opts["warmup"]), int(opts["reps"]), official=True)
    print(json.dumps(dict(rows=rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
