"""The COCO-format detection dataset (what ``detect train`` reads).

COCO format (what ``detect train`` reads)::

    images/                       any folder of images
    annotations.json              {"images": [{"id", "file_name", "height", "width"}],
                                   "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                                                    "segmentation": polygons or RLE, "area", "iscrowd"}],
                                   "categories": [{"id", "name"}]}

Category ids may be any integers; they are mapped in increasing order to labels 1..K (0 is
background, torchvision's convention) and back when results are written for pycocotools.
Training drops crowd boxes and boxes narrower or lower than one pixel once clipped to the image
(a box wholly outside its image is dropped); images left without a box are skipped
(mmdetection's ``filter_empty_gt``). Before training, ``scan`` opens every image's header. The resize to 1333x800 (multi-scale) happens in
the detector (torchvision's ``GeneralizedRCNNTransform``); the dataset only flips.
"""
import contextlib
import io
import json
import os
import random
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .io import check_image, image_to_tensor, read_image, scan_files

__all__ = ["CocoDetection", "detection_collate", "pad_extreme_aspect"]


# --- COCO ------------------------------------------------------------------------------------------

def _load_coco_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed annotation file {ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"malformed annotation file {ann_file}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"malformed annotation file {ann_file}: missing list {key!r} "
                             f"(COCO instances format needs 'images', 'annotations', 'categories')")
    return data


def _validate_coco(data: dict, ann_file: str, with_masks: bool) -> None:
    where = f"malformed annotation file {ann_file}"
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{where}: image entry {str(im)[:80]} needs 'id' and 'file_name'")
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise ValueError(f"{where}: category entry {str(c)[:80]} needs an 'id'")
    if not data["categories"]:
        raise ValueError(f"{where}: 'categories' is empty")
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ValueError(f"{where}: annotation #{i} is not an object")
        aid = a.get("id", f"#{i}")
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where}: annotation {aid} has bbox {bbox!r}, expected [x, y, width, height]")
        if a.get("image_id") not in image_ids:
            raise ValueError(f"{where}: annotation {aid} refers to image_id {a.get('image_id')!r}, not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise ValueError(f"annotation {aid} in {ann_file} has category_id {a.get('category_id')!r}, outside the "
                             f"{len(cat_ids)} categories declared (ids {sorted(cat_ids)[:10]}"
                             f"{'...' if len(cat_ids) > 10 else ''})")
        if with_masks:
            seg = a.get("segmentation")
            ok = (isinstance(seg, list) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg)) \
                or (isinstance(seg, dict) and "counts" in seg and "size" in seg)
            if not ok:
                raise ValueError(f"{where}: annotation {aid} has no valid 'segmentation' (polygons [[x1, y1, ...]] "
                                 f"of at least 3 points, or RLE {{'counts', 'size'}}), needed for masks")


class CocoDetection(Dataset):
    """Images and instance annotations in COCO format.

    Args:
        img_dir (str): folder the ``file_name`` entries are relative to.
        ann_file (str): COCO instances JSON.
        train (bool): training mode: random horizontal flips, crowd/degenerate boxes dropped,
            images without boxes skipped.
        with_masks (bool): decode instance masks (polygons or RLE) for Mask R-CNN.
        hflip_prob (float): flip probability when training.

    Items: ``(image, target)`` with image ``Tensor[3, H, W]`` in [0, 1] and target a dict of
    ``boxes`` (``Tensor[N, 4]`` x1, y1, x2, y2 pixels), ``labels`` (``Tensor[N]`` in 1..K),
    ``masks`` (``Tensor[N, H, W]`` uint8, with ``with_masks``), ``image_id`` (int), ``iscrowd``.

    Raises:
        ValueError: a malformed annotation file or a category id that is not declared.
        FileNotFoundError: the annotation file or an image is missing.
    """

    def __init__(
            self,
            img_dir: str,
            ann_file: str,
            train: bool = False,
            with_masks: bool = False,
            hflip_prob: float = 0.5,
    ):
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise ImportError("COCO-format data needs pycocotools: pip install 'litvit[detection]'") from None
        self.img_dir = str(img_dir)
        self.ann_file = str(ann_file)
        if not os.path.isdir(self.img_dir):
            raise FileNotFoundError(f"image folder not found: {self.img_dir}")
        data = _load_coco_json(self.ann_file)
        _validate_coco(data, self.ann_file, with_masks)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.train = train
        self.with_masks = with_masks
        self.hflip_prob = hflip_prob
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self.cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(self._keep(a) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids
        missing = [self.coco.imgs[i]["file_name"] for i in ids
                   if not os.path.isfile(os.path.join(self.img_dir, self.coco.imgs[i]["file_name"]))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {self.ann_file} not found in {self.img_dir}, "
                                    f"e.g. {missing[0]}")

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _keep(self, ann: dict, size: Optional[Tuple[int, int]] = None) -> bool:
        """A training box: not crowd, at least one pixel wide and high (inside ``size`` = (W, H) when given)."""
        if ann.get("iscrowd", 0):
            return False
        x, y, w, h = ann["bbox"]
        if size is not None:
            W, H = size
            x, y, w, h = max(x, 0), max(y, 0), min(x + w, W) - max(x, 0), min(y + h, H) - max(y, 0)
        return w >= 1 and h >= 1

    def scan(self, progress: bool = True) -> List[int]:
        """Open every image's header (:func:`litvit.data.check_image`: readable, not truncated) before
        training; in training mode, also find the images whose boxes all fall outside the image.

        Returns:
            indices to leave out (training images left without a box).

        Raises:
            OSError: an image that will not open, named.
        """
        sizes: Dict[int, Tuple[int, int]] = {}

        def check(index: int) -> None:
            info = self.coco.imgs[self.ids[index]]
            sizes[index] = check_image(os.path.join(self.img_dir, info["file_name"]))

        bad = scan_files(list(range(len(self.ids))), check, progress, desc=f"checking {self.img_dir}")
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise OSError(f"{bad[0][1]}{more}; images of {self.ann_file} must all open")
        if not self.train:
            return []
        return [i for i in range(len(self.ids))
                if not any(self._keep(a, sizes[i]) for a in self.coco.imgToAnns.get(self.ids[i], []))]

    def drop(self, indices) -> None:
        out = set(indices)
        self.ids = [img_id for i, img_id in enumerate(self.ids) if i not in out]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        img = read_image(os.path.join(self.img_dir, info["file_name"]), verb="open")
        W, H = img.size
        anns = self.coco.imgToAnns.get(img_id, [])
        if self.train:
            anns = [a for a in anns if self._keep(a, (W, H))]  # boxes outside the image are dropped
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
        boxes[:, 0::2].clamp_(0, W)
        boxes[:, 1::2].clamp_(0, H)
        target = dict(
            boxes=boxes,
            labels=torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            iscrowd=torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            image_id=img_id,
        )
        if self.with_masks:
            if anns:
                masks = np.stack([self._mask(a, H, W) for a in anns])
            else:
                masks = np.zeros((0, H, W), dtype=np.uint8)
            target["masks"] = torch.from_numpy(masks)
        image = image_to_tensor(img)
        if self.train and random.random() < self.hflip_prob:
            image = image.flip(-1)
            b = target["boxes"]
            target["boxes"] = torch.stack((W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]), 1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target

    def _mask(self, ann: dict, H: int, W: int) -> np.ndarray:
        from pycocotools import mask as mask_utils
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, H, W)
        else:
            rle = seg
        m = mask_utils.decode(rle)
        if m.shape != (H, W):
            raise ValueError(f"annotation {ann.get('id')} in {self.ann_file}: mask of size {m.shape} for an image "
                             f"of {H}x{W}")
        return m.astype(np.uint8)


def pad_extreme_aspect(image: Tensor, max_size: int, target: Optional[Dict[str, Tensor]] = None,
                       min_side: int = 32) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
    """Pad an image so that its shorter side is still ``min_side`` px after the detector's resize.

    torchvision's detection transform scales an image by ``min(min_size / short, max_size / long)``;
    for an extreme aspect ratio (4000x20) the short side rounds to 0 px. Padding at the bottom/right
    with zeros keeps box coordinates as they are (masks are padded alike).

    Args:
        image (Tensor[3, H, W]): the image.
        max_size (int): the detector's longer-side limit.
        target (dict, optional): with ``masks`` (Tensor[N, H, W]) to pad alike.
    """
    H, W = image.shape[-2:]
    need = -(-max(H, W) * min_side // max_size)  # ceil(long * min_side / max_size)
    pad_h, pad_w = (max(0, need - H), 0) if H <= W else (0, max(0, need - W))
    if not (pad_h or pad_w):
        return image, target
    image = F.pad(image, (0, pad_w, 0, pad_h))
    if target is not None and "masks" in target:
        target = dict(target, masks=F.pad(target["masks"], (0, pad_w, 0, pad_h)))
    return image, target


def detection_collate(batch):
    """Lists of images and targets (detectors take images of different sizes)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
