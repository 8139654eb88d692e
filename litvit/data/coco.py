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
(mmdetection's ``filter_empty_gt``). The resize to 1333x800 (multi-scale) happens in the detector
(torchvision's ``GeneralizedRCNNTransform``); the dataset only flips.

The annotation file is checked when the dataset is built, before any worker starts: what cannot
be right is refused with one line naming the file and the first offending annotation, what can be
repaired is repaired with one warning per kind and a count (:func:`_check_coco` lists both).
Before training or evaluation, :meth:`CocoDetection.scan` opens every image's header and holds
the annotations against the files (their real sizes replace a ``width``/``height`` that disagree).
"""
import contextlib
import io
import json
import math
import os
import random
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .io import check_image, image_to_tensor, read_image, scan_files

__all__ = ["CocoDetection", "detection_collate", "pad_extreme_aspect", "rle_string_counts"]


# --- COCO ------------------------------------------------------------------------------------------

def _load_coco_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
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


def _number(v: Any) -> bool:
    """A JSON number (not a bool); NaN and the infinities included, which ``json.load`` reads."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)


def rle_string_counts(s: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string, or None when it is malformed.

    The format is pycocotools' (``maskApi.c``): each count is written in groups of 5 bits, least
    significant first, one character ``48 + bits`` each, bit 0x20 set while more groups follow and
    bit 0x10 of the last group the sign; from the fourth count on, the value stored is the
    difference to the count two places before.

    Examples::
        >>> rle_string_counts("5220003")   # a 4x5 mask with a 2x3 block, column by column
        [5, 2, 2, 2, 2, 2, 5]
    """
    counts: List[int] = []
    x = k = 0
    for ch in s:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:  # more groups follow
            continue
        if c & 0x10:  # negative: sign-extend the 5k bits
            x -= 1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
        x = k = 0
    return None if k else counts


def _rle_error(seg: dict) -> Optional[str]:
    """Why an RLE ``{"size": [h, w], "counts": ...}`` cannot be a mask (None when it can): its runs
    must be non-negative whole numbers adding up to h x w."""
    size = seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_finite(v) and v >= 1 and v == int(v)
                                                                       for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "RLE counts is not a valid compressed string"
    elif isinstance(counts, list) and all(_finite(v) and v == int(v) for v in counts):
        runs = [int(v) for v in counts]
    else:
        return "RLE counts is neither a list of whole numbers nor a compressed string"
    negative = sum(v < 0 for v in runs)
    if negative:
        return f"{negative} of its runs are negative"
    h, w = int(size[0]), int(size[1])
    if sum(runs) != h * w:
        return f"its runs add up to {sum(runs)} pixels, its size [{h}, {w}] holds {h * w}"
    return None


def _first(ids: List[Any], n: int = 3) -> str:
    return ", ".join(str(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


def _check_coco(data: dict, ann_file: str, with_masks: bool) -> List[str]:
    """Check a COCO instances dict, refusing what cannot be right and repairing (in place) what can.

    Refused (ValueError naming the file and the first offending entry, with a count): entries
    without their keys, duplicate image or category ids, a bbox that is not four finite numbers,
    an unknown image or category id, a non-finite area; with masks, a ``segmentation`` that is
    missing, of the wrong type, holds non-finite coordinates, or an RLE whose runs do not fill its
    size. Repaired (one note per kind, with a count, returned for the caller to show): annotations
    without an id or repeating an earlier one get new ids above the largest; a missing ``iscrowd``
    becomes 0 and a missing ``area`` the box's w x h (pycocotools' evaluation needs both); with
    masks, polygons of fewer than 3 points are dropped, and an annotation left without any polygon
    (``"segmentation": []``) is left out, box included.

    Returns:
        the notes, one line each.
    """
    where = f"malformed annotation file {ann_file}"
    notes: List[str] = []

    def refuse(bad: List[str], what: str) -> None:
        if bad:
            more = f" (and {len(bad) - 1} more {what})" if len(bad) > 1 else ""
            raise ValueError(f"{where}: {bad[0]}{more}")

    for key, noun, needed in (("images", "image", ("id", "file_name")), ("categories", "category", ("id",))):
        for entry in data[key]:
            if not isinstance(entry, dict) or any(k not in entry for k in needed):
                raise ValueError(f"{where}: {noun} entry {str(entry)[:80]} needs {' and '.join(map(repr, needed))}")
        seen: Dict[Any, int] = {}
        for entry in data[key]:
            seen[entry["id"]] = seen.get(entry["id"], 0) + 1
        dup = [i for i, n in seen.items() if n > 1]
        if dup:  # which entry would annotations of that id belong to?
            raise ValueError(f"{where}: {len(dup)} {noun} id(s) appear more than once ({_first(dup)}); each {noun} "
                             f"needs its own id")
    if not data["categories"]:
        raise ValueError(f"{where}: 'categories' is empty")
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    bad_box: List[str] = []
    bad_area: List[str] = []
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ValueError(f"{where}: annotation #{i} is not an object")
        aid = a.get("id", f"#{i}")
        bbox = a.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise ValueError(f"{where}: annotation {aid} has bbox {bbox!r}, expected [x, y, width, height]")
        if not all(math.isfinite(v) for v in bbox):
            bad_box.append(f"annotation {aid} has bbox {bbox!r}; its values must be finite numbers")
        if "area" in a and not _finite(a["area"]):
            bad_area.append(f"annotation {aid} has area {a['area']!r}, not a finite number")
        if a.get("image_id") not in image_ids:
            raise ValueError(f"{where}: annotation {aid} refers to image_id {a.get('image_id')!r}, not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise ValueError(f"annotation {aid} in {ann_file} has category_id {a.get('category_id')!r}, outside the "
                             f"{len(cat_ids)} categories declared (ids {sorted(cat_ids)[:10]}"
                             f"{'...' if len(cat_ids) > 10 else ''})")
    refuse(bad_box, "annotations with non-finite bbox values")
    refuse(bad_area, "annotations with a non-finite area")
    if with_masks:
        notes += _check_masks(data, ann_file)
    # ids: pycocotools indexes annotations by id, so a repeated id hides all but one from evaluation
    anns = data["annotations"]
    for i, a in enumerate(anns):
        if "id" in a and not (isinstance(a["id"], (int, str)) and not isinstance(a["id"], bool)):
            raise ValueError(f"{where}: annotation #{i} has id {a['id']!r}, expected an integer")
    next_id = max((a["id"] for a in anns if isinstance(a.get("id"), int)), default=0) + 1
    seen_ids: set = set()
    renumbered: List[Any] = []
    for a in anns:
        old = a.get("id")
        if old is None or old in seen_ids:
            renumbered.append(old)
            a["id"], next_id = next_id, next_id + 1
        seen_ids.add(a["id"])
    if renumbered:
        repeated = [i for i in renumbered if i is not None]
        why = " and ".join(([f"{len(renumbered) - len(repeated)} annotation(s) have no id"]
                            if len(repeated) < len(renumbered) else [])
                           + ([f"{len(repeated)} annotation(s) repeat an earlier one's id ({_first(repeated)})"]
                              if repeated else []))
        notes.append(f"{ann_file}: {why}: given new ids {next_id - len(renumbered)}..{next_id - 1} in file order "
                     f"(pycocotools' evaluation sees one annotation per id)")
    filled = []
    for key in ("iscrowd", "area"):
        n = sum(key not in a for a in anns)
        if n:
            filled.append(f"{n} annotation(s) without {key!r} " + ("taken as not crowd" if key == "iscrowd" else
                                                                    "given their box's width x height"))
    for a in anns:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(max(a["bbox"][2], 0) * max(a["bbox"][3], 0)))
    if filled:
        notes.append(f"{ann_file}: {'; '.join(filled)} (pycocotools' evaluation needs 'iscrowd' and 'area')")
    return notes


def _check_masks(data: dict, ann_file: str) -> List[str]:
    """The ``segmentation`` part of :func:`_check_coco` (Mask R-CNN): refuses what cannot be a mask,
    drops polygons of fewer than 3 points and the annotations left without a polygon."""
    bad: List[str] = []
    short_polygons, dropped, kept = 0, [], []
    for i, a in enumerate(data["annotations"]):
        aid = a.get("id", f"#{i}")
        seg = a.get("segmentation")
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            why = _rle_error(seg)
            if why is not None:
                bad.append(f"annotation {aid} has an invalid RLE 'segmentation': {why}")
        elif isinstance(seg, list) and all(isinstance(p, list) and all(_number(v) for v in p) for p in seg):
            polygons = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
            short_polygons += len(seg) - len(polygons)
            if not all(math.isfinite(v) for p in seg for v in p):
                bad.append(f"annotation {aid} has a polygon with non-finite coordinates")
            elif polygons:
                a["segmentation"] = polygons
            else:
                dropped.append(aid)
                continue
        else:
            bad.append(f"annotation {aid} has no valid 'segmentation' (polygons [[x1, y1, ...]] of at least 3 "
                       f"points, or RLE {{'counts', 'size'}}), needed for masks: {str(seg)[:60]}")
        kept.append(a)
    if bad:
        more = f" (and {len(bad) - 1} more annotations with invalid masks)" if len(bad) > 1 else ""
        raise ValueError(f"malformed annotation file {ann_file}: {bad[0]}{more}")
    notes = []
    if short_polygons:
        notes.append(f"{ann_file}: {short_polygons} polygon(s) of fewer than 3 points (or with an odd number of "
                     f"coordinates) dropped from their masks")
    if dropped:
        data["annotations"] = kept
        notes.append(f"{ann_file}: {len(dropped)} annotation(s) without any polygon of 3 points or more (ids "
                     f"{_first(dropped)}) left out, boxes included: Mask R-CNN needs a mask for every box")
    return notes


def _warn(message: str) -> None:
    """A warning about the data, from the first process only (every process of a run reads the file)."""
    if int(os.environ.get("RANK", 0)) == 0:
        warnings.warn(message, stacklevel=3)


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
        for note in _check_coco(data, self.ann_file, with_masks):
            _warn(note)
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
        training or evaluation, and hold the annotations against the files: an image whose
        ``width``/``height`` disagree with its file (or are missing) gets the file's size in the
        index pycocotools evaluates with (one warning with a count); an RLE mask of another size
        than its image is refused. In training mode, also find the images whose boxes all fall
        outside the image.

        Returns:
            indices to leave out (training images left without a box).

        Raises:
            OSError: an image that will not open, named.
            ValueError: an RLE mask of another size than its image, named.
        """
        sizes: Dict[int, Tuple[int, int]] = {}

        def check(index: int) -> None:
            info = self.coco.imgs[self.ids[index]]
            sizes[index] = check_image(os.path.join(self.img_dir, info["file_name"]))

        bad = scan_files(list(range(len(self.ids))), check, progress, desc=f"checking {self.img_dir}")
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise OSError(f"{bad[0][1]}{more}; images of {self.ann_file} must all open")
        self._hold_sizes({self.ids[i]: wh for i, wh in sizes.items()})
        if not self.train:
            return []
        return [i for i in range(len(self.ids))
                if not any(self._keep(a, sizes[i]) for a in self.coco.imgToAnns.get(self.ids[i], []))]

    def _hold_sizes(self, sizes: Dict[Any, Tuple[int, int]]) -> None:
        """Hold the annotations against the files' real sizes ``{image_id: (W, H)}`` (see :meth:`scan`)."""
        wrong = []
        for img_id, (W, H) in sizes.items():
            info = self.coco.imgs[img_id]
            if (info.get("width"), info.get("height")) != (W, H):
                if any(k in info and info[k] != v for k, v in (("width", W), ("height", H))):  # not just missing
                    wrong.append(f"{info['file_name']} is {W}x{H}, the annotation file says "
                                 f"{info.get('width')}x{info.get('height')}")
                info["width"], info["height"] = W, H  # the dict pycocotools' index and the dataset share
            if self.with_masks:
                for a in self.coco.imgToAnns.get(img_id, []):
                    seg = a["segmentation"]
                    if isinstance(seg, dict) and [int(v) for v in seg["size"]] != [H, W]:
                        raise ValueError(f"annotation {a['id']} in {self.ann_file}: its RLE mask is "
                                         f"{int(seg['size'][1])}x{int(seg['size'][0])} (width x height), its image "
                                         f"{info['file_name']} is {W}x{H}")
        if wrong:
            _warn(f"{len(wrong)} image(s) of {self.ann_file} have a width/height that disagrees with the image file "
                  f"(e.g. {wrong[0]}): the files' sizes are used")

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
