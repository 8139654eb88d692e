"""Evaluation metrics: top-k accuracy, COCO box/mask AP (pycocotools), confusion-matrix mIoU.

* :func:`accuracy_counts`: how many samples have their label among the top-k scores.
* :func:`coco_results` / :func:`coco_evaluate`: detector outputs as COCO result entries, and
  pycocotools' ``COCOeval`` over them (pycocotools is imported when first used).
* :func:`confusion_matrix` / :func:`segmentation_metrics`: a confusion matrix accumulated over the
  evaluation set, and from it per-class IoU ``TP / (TP + FP + FN)``, mIoU (mean over classes that
  occur in the labels or the predictions), mean accuracy and pixel accuracy.
"""
import contextlib
import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["COCO_STATS", "accuracy_counts", "coco_results", "coco_evaluate", "confusion_matrix", "segmentation_metrics",
           "IGNORE_INDEX", "rle_encode", "COCO_CLASSES", "COCO_CATEGORY_IDS"]

IGNORE_INDEX = 255  # the label value of pixels that count for nothing (ADE20K's "other", padding)

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_STATS = _STAT_NAMES  # the names of the COCO summary numbers, each in percent: bbox_AP, segm_AP50, ...


# --- classification ------------------------------------------------------------------------------------

def accuracy_counts(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> List[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count).

    Args:
        logits (Tensor[B, K]): scores.
        target (Tensor[B]): class indices.
    """
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # B, maxk
    hit = pred == target[:, None]  # B, maxk
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


# --- detection ------------------------------------------------------------------------------------------

# COCO's 80 object categories in the order of their ids (mmdetection's ``CocoDataset.CLASSES``),
# and those ids (1..90 with gaps).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def _rle_string(counts: Sequence[int]) -> str:
    """COCO's compressed RLE text: each count (from the third on, less the count two before it)
    in 5-bit groups, low first, a 6th bit marking that more follow, each group + 48 as a character."""
    chars = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends at -1
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(chars)


def rle_encode(mask: np.ndarray, size: Optional[Sequence[int]] = None, offset: Sequence[int] = (0, 0)) -> Dict:
    """A binary mask as COCO's RLE with ``counts`` as str (what pycocotools' ``encode`` gives,
    decoded), computed without pycocotools and without a full-size map: the mask may be a
    region ``mask[h, w]`` placed at ``offset`` (row, column) in an image of ``size`` (H, W).

    Args:
        mask (np.ndarray[h, w]): the pixels of the region (nonzero: in the mask).
        size (Sequence[int], optional): (H, W) of the image (default: the mask's own).
        offset (Sequence[int]): (y0, x0) of the region's top-left pixel in the image.

    Returns:
        dict: ``{"size": [H, W], "counts": str}`` (column-major runs, zeros first).

    Examples::
        >>> rle_encode(np.array([[0, 1], [1, 1]]))
        {'size': [2, 2], 'counts': '13'}
    """
    sub = np.asarray(mask).astype(bool, copy=False)
    if sub.ndim != 2:
        raise ValueError(f"rle_encode: expected a 2-D mask, got shape {tuple(sub.shape)}")
    H, W = (int(v) for v in (size if size is not None else sub.shape))
    y0, x0 = (int(v) for v in offset)
    h, w = sub.shape
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"rle_encode: a {h}x{w} region at ({y0}, {x0}) does not fit in a {H}x{W} image")
    padded = np.zeros((w, h + 2), np.int8)  # per column (COCO's order is column-major), False above and below
    padded[:, 1:-1] = sub.T  # h, w -> w, h
    step = np.diff(padded, axis=1)  # w, h + 1: +1 where a run starts, -1 one past its end
    cs, rs = np.nonzero(step == 1)
    ce, re_ = np.nonzero(step == -1)
    starts = (x0 + cs.astype(np.int64)) * H + y0 + rs
    ends = (x0 + ce.astype(np.int64)) * H + y0 + re_
    if len(starts) > 1:  # a run down to the last row goes on at the top of the next column
        apart = starts[1:] != ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][apart]])
        ends = np.concatenate([ends[:-1][apart], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[-1] = 0, H * W
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()  # the mask reaches the last pixel: no closing run of zeros
    return {"size": [H, W], "counts": _rle_string(counts)}


def coco_results(outputs: Sequence[Dict[str, Tensor]], image_ids: Sequence[int], label_to_cat: Sequence[int]) -> List[dict]:
    """Detector outputs -> COCO result entries (``bbox`` as x, y, w, h; ``segmentation`` as RLE when
    the outputs hold masks). ``label_to_cat[l]`` is the category id of label l (index 0 unused)."""
    from pycocotools import mask as mask_utils
    results = []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        boxes[:, 2:] -= boxes[:, :2]  # x1, y1, x2, y2 -> x, y, w, h
        scores = out["scores"].float().cpu().tolist()
        labels = out["labels"].cpu().tolist()
        rles = None
        if "masks" in out:
            masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # N, 1, H, W -> N, H, W
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
            for r in rles:
                r["counts"] = r["counts"].decode("ascii")
        for k, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            if not 0 < label < len(label_to_cat):
                continue  # RetinaNet's background logit
            entry = dict(image_id=int(img_id), category_id=int(label_to_cat[label]), bbox=[round(v, 2) for v in box],
                         score=float(score))
            if rles is not None:
                entry["segmentation"] = rles[k]
            results.append(entry)
    return results


def coco_evaluate(coco_gt, results: List[dict], image_ids: Sequence[int], iou_types: Sequence[str] = ("bbox",)
                  ) -> Tuple[Dict[str, float], str]:
    """Run pycocotools' COCOeval; returns ``{'<type>_AP': %, '<type>_AP50': %, ...}`` and the printed summary."""
    from pycocotools.cocoeval import COCOeval
    metrics, text = {}, io.StringIO()
    for iou_type in iou_types:
        if not results:
            metrics.update({f"{iou_type}_{n}": 0.0 for n in _STAT_NAMES})
            text.write(f"{iou_type}: no detections\n")
            continue
        with contextlib.redirect_stdout(text):
            dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, dt, iou_type)
            ev.params.imgIds = sorted(set(int(i) for i in image_ids))
            print(f"--- {iou_type} ---")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics.update({f"{iou_type}_{n}": 100 * max(float(v), 0.0) for n, v in zip(_STAT_NAMES, ev.stats[:6])})
    return metrics, text.getvalue()


# --- semantic segmentation ----------------------------------------------------------------------------------

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Confusion matrix of a prediction against labels; pixels labelled ``ignore_index`` are skipped.

    Args:
        pred (Tensor[...]): predicted classes (int).
        target (Tensor[...]): labels, same shape, in ``0..num_classes - 1`` or ``ignore_index``.
        num_classes (int): K.

    Returns:
        Tensor[K, K] (int64): entry [t, p] counts pixels of class t predicted as p.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"label {int(t.max() if t.max() >= num_classes else t.min())} is outside the "
                         f"{num_classes} classes (0..{num_classes - 1}, {ignore_index} = ignore)")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(cm: Tensor, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """mIoU, mean accuracy and pixel accuracy (in %) from a confusion matrix.

    Classes that appear neither in the labels nor in the predictions have no IoU and are left out
    of the means (as mmsegmentation does with ``nanmean``).

    Args:
        cm (Tensor[K, K]): confusion matrix, rows = labels, columns = predictions.
        class_names (Sequence[str], optional): adds ``IoU/<name>`` entries.

    Returns:
        dict with ``mIoU``, ``mAcc``, ``aAcc`` and, with names, per-class IoUs.
    """
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    out = {
        "mIoU": 100 * float(np.nanmean(iou.numpy())) if torch.any(union > 0) else 0.0,
        "mAcc": 100 * float(np.nanmean(acc.numpy())) if torch.any(gt > 0) else 0.0,
        "aAcc": 100 * float(tp.sum() / total) if total > 0 else 0.0,
    }
    if class_names is not None:
        for name, v in zip(class_names, iou.tolist()):
            out[f"IoU/{name}"] = 100 * v
    return out
