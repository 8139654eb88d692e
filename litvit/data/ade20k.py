"""The ADE20K-format semantic segmentation dataset and its transforms.

ADE20K format (what ``segment train`` reads)::

    root/images/training/*.jpg        root/annotations/training/*.png
    root/images/validation/*.jpg      root/annotations/validation/*.png

Label PNGs hold one class index per pixel (8-bit grey or palette). ADE20K's convention: 0 is
"other" (not evaluated) and 1..150 are the classes; ``reduce_zero_label=True`` (default) maps 0 to
the ignore index 255 and v to v - 1, giving classes 0..149. With ``reduce_zero_label=False`` the
values are the classes themselves and 255 is ignored. Any other value out of range is an error.
Training (mmsegmentation's ADE20K pipeline): random rescale (ratio 0.5-2.0 of a 2048x512 scale),
random 512x512 crop (re-drawn up to 10 times while one class covers >= 75 % of it,
``cat_max_ratio``), horizontal flip, mmsegmentation's photometric distortion
(:class:`PhotoMetricDistortion`), ImageNet normalisation, padding with the ignore index. Evaluation: resize to the 2048x512 scale; labels stay at full size.
Before training, :meth:`SegmentationDataset.scan` checks every pair, and that the labels hold at
least one pixel of a class between them (labels that are all "ignore" leave nothing to learn).
"""
import os
import random
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..metrics import IGNORE_INDEX
from .io import IMG_EXTENSIONS, check_image, image_to_tensor, read_image, scan_files

__all__ = ["SegmentationDataset", "PhotoMetricDistortion", "SegTrainTransform", "SegEvalTransform",
           "segmentation_collate", "IGNORE_INDEX"]


def _resize_keep_ratio(size: Tuple[int, int], scale: Tuple[int, int]) -> Tuple[int, int]:
    """(W, H) of an image resized so that its long side <= scale[0] and short side <= scale[1]."""
    W, H = size
    f = min(max(scale) / max(W, H), min(scale) / min(W, H))
    return max(1, int(W * f + 0.5)), max(1, int(H * f + 0.5))


def _normalize(img: Image.Image) -> Tensor:
    x = image_to_tensor(img)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (x - mean) / std


def _rgb_to_hsv8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV as OpenCV's 8-bit conversion (H in 0..179, degrees / 2; S, V in 0..255)."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255 * delta / np.maximum(v, 1e-6), 0)
    d = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60 * (g - b) / d, np.where(v == g, 120 + 60 * (b - r) / d, 240 + 60 * (r - g) / d))
    h = np.where(delta > 0, h % 360, 0)
    hsv = np.stack([np.round(h / 2) % 180, np.round(s), v], axis=-1)
    return hsv.astype(np.uint8)


def _hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rgb_to_hsv8`, rounded to uint8."""
    h = hsv[..., 0].astype(np.float32) * 2 / 60  # sector 0..6
    s = hsv[..., 1].astype(np.float32) / 255
    v = hsv[..., 2].astype(np.float32)
    c = v * s
    x = c * (1 - np.abs(h % 2 - 1))
    z = np.zeros_like(c)
    sector = np.floor(h).astype(np.int64) % 6
    rgb = np.select([sector[..., None] == k for k in range(6)],
                    [np.stack(t, -1) for t in ((c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x))])
    return np.clip(np.round(rgb + (v - c)[..., None]), 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmsegmentation's ``PhotoMetricDistortion``, applied in its order and with its semantics.

    Each step happens with probability 0.5 and rounds back to uint8, as mmseg's: brightness (add a
    value drawn from +-``brightness_delta``), then contrast (multiply by a factor from
    ``contrast_range``) either here or last (a coin decides), saturation (multiply the HSV
    saturation), hue (add an integer from ``[-hue_delta, hue_delta)`` to the hue on OpenCV's 0-180
    scale, wrapping). Unlike torchvision's ColorJitter, contrast scales pixel values (it does not
    blend with the mean grey) and brightness is additive. Random numbers come from ``np.random``.

    Examples::

        >>> img = np.full((4, 4, 3), 100, np.uint8)
        >>> PhotoMetricDistortion()(img).shape
        (4, 4, 3)
    """

    def __init__(
            self,
            brightness_delta: int = 32,
            contrast_range: Tuple[float, float] = (0.5, 1.5),
            saturation_range: Tuple[float, float] = (0.5, 1.5),
            hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            img = self._convert(img, alpha=np.random.uniform(*self.contrast_range))
        return img

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """
        Args:
            img (np.ndarray[H, W, 3]): uint8 RGB.

        Returns:
            np.ndarray[H, W, 3]: uint8 RGB.
        """
        if np.random.randint(2):
            img = self._convert(img, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_last = np.random.randint(2) == 0
        if not contrast_last:
            img = self._contrast(img)
        if np.random.randint(2):
            hsv = _rgb_to_hsv8(img)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=np.random.uniform(*self.saturation_range))
            img = _hsv8_to_rgb(hsv)
        if np.random.randint(2):
            hsv = _rgb_to_hsv8(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + np.random.randint(-self.hue_delta, self.hue_delta)) % 180
            img = _hsv8_to_rgb(hsv)
        if contrast_last:
            img = self._contrast(img)
        return img


class SegTrainTransform:
    """Training augmentation of mmsegmentation's ADE20K pipeline.

    Args:
        crop_size (int): square crop (512).
        scale (Tuple[int, int]): (long, short) side limits at ratio 1 (2048, 512).
        ratio_range (Tuple[float, float]): random rescale ratio (0.5, 2.0).
        cat_max_ratio (float): re-draw a crop (up to 10 times) while one class covers this share of
            it or more (ignored pixels not counted), as mmseg's ``RandomCrop``; 1 turns it off.
        hflip_prob (float): horizontal flip probability.
        photometric (bool): mmseg's :class:`PhotoMetricDistortion`.
    """

    def __init__(
            self,
            crop_size: int = 512,
            scale: Tuple[int, int] = (2048, 512),
            ratio_range: Tuple[float, float] = (0.5, 2.0),
            cat_max_ratio: float = 0.75,
            hflip_prob: float = 0.5,
            photometric: bool = True,
    ):
        self.crop_size = crop_size
        self.scale = scale
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.hflip_prob = hflip_prob
        self.photometric = PhotoMetricDistortion() if photometric else None

    def _crop_box(self, label: np.ndarray) -> Tuple[int, int, int, int]:
        """mmseg's RandomCrop: one draw, then up to 10 checks, each failed one drawing again."""
        H, W = label.shape
        ch, cw = min(self.crop_size, H), min(self.crop_size, W)
        y, x = random.randint(0, H - ch), random.randint(0, W - cw)
        if self.cat_max_ratio < 1:
            for _ in range(10):
                crop = label[y:y + ch, x:x + cw]
                _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y, x = random.randint(0, H - ch), random.randint(0, W - cw)
        return y, x, ch, cw

    def __call__(self, img: Image.Image, label: np.ndarray) -> Tuple[Tensor, Tensor]:
        r = random.uniform(*self.ratio_range)
        W, H = _resize_keep_ratio(img.size, (int(self.scale[0] * r), int(self.scale[1] * r)))
        img = img.resize((W, H), Image.BILINEAR)
        label = np.asarray(Image.fromarray(label).resize((W, H), Image.NEAREST))
        y, x, ch, cw = self._crop_box(label)
        img = img.crop((x, y, x + cw, y + ch))
        label = label[y:y + ch, x:x + cw]
        if random.random() < self.hflip_prob:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            label = label[:, ::-1]
        if self.photometric is not None:
            img = Image.fromarray(self.photometric(np.asarray(img, dtype=np.uint8)))
        image = _normalize(img)
        target = torch.from_numpy(np.array(label, dtype=np.int64))
        pad_h, pad_w = self.crop_size - ch, self.crop_size - cw
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.)
            target = F.pad(target, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return image, target


class SegEvalTransform:
    """Resize the image to the test scale (keep ratio) and normalise; the label is left at full size.

    Args:
        scale (Tuple[int, int]): (long, short) side limits (2048, 512).
    """

    def __init__(self, scale: Tuple[int, int] = (2048, 512)):
        self.scale = scale

    def __call__(self, img: Image.Image, label: np.ndarray) -> Tuple[Tensor, Tensor]:
        W, H = _resize_keep_ratio(img.size, self.scale)
        if (W, H) != img.size:
            img = img.resize((W, H), Image.BILINEAR)
        return _normalize(img), torch.from_numpy(np.array(label, dtype=np.int64))


class SegmentationDataset(Dataset):
    """Images and label PNGs in ADE20K's layout (``images/<split>``, ``annotations/<split>``).

    Args:
        root (str): dataset root (or pass ``img_dir`` and ``ann_dir``).
        split (str): sub-folder name, ``training`` or ``validation``.
        num_classes (int): K; labels (after reduction) must be in 0..K-1 or 255.
        transform (Callable): ``(PIL image, label array) -> (image tensor, label tensor)``.
        reduce_zero_label (bool): ADE20K's convention, 0 = ignore and v -> v - 1 (see module doc).
        img_dir, ann_dir (str, optional): explicit folders instead of ``root``/``split``.

    Raises:
        FileNotFoundError: a folder is missing, empty, or an image has no label PNG.
        ValueError (on loading): a label outside the class range, a label PNG that is not single-channel.
        OSError (on loading): an image that will not open.
    """

    def __init__(
            self,
            root: Optional[str] = None,
            split: str = "training",
            num_classes: int = 150,
            transform=None,
            reduce_zero_label: bool = True,
            img_dir: Optional[str] = None,
            ann_dir: Optional[str] = None,
    ):
        if img_dir is None or ann_dir is None:
            if root is None:
                raise ValueError("give a dataset root or both img_dir and ann_dir")
            img_dir = img_dir or os.path.join(root, "images", split)
            ann_dir = ann_dir or os.path.join(root, "annotations", split)
        for d in (img_dir, ann_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"folder not found: {d} (expected ADE20K layout images/{split}, "
                                        f"annotations/{split})")
        images = sorted(p for p in Path(img_dir).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not images:
            raise FileNotFoundError(f"no images in {img_dir}")
        pairs = []
        for p in images:
            label = Path(ann_dir) / (p.stem + ".png")
            if not label.is_file():
                raise FileNotFoundError(f"no label PNG for image {p.name}: expected {label}")
            pairs.append((str(p), str(label)))
        self.samples = pairs
        self.num_classes = num_classes
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.class_names = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.samples)

    def scan(self, progress: bool = True) -> List[int]:
        """Check every pair before training: the image's header (readable, not truncated), the label
        PNG's mode and size, and its value range (``getextrema`` on the decoded label: labels are
        small 8-bit maps; images are never decoded). The labels must hold, all together, at least
        one pixel of a class: labels that are all "ignore" (all 0 under ``reduce_zero_label``) leave
        nothing to learn or to measure.

        Raises:
            ValueError / OSError: the first bad pair, named; or labels without any pixel of a class.
        """
        labelled = []

        def check(pair) -> None:
            img_path, label_path = pair
            size = check_image(img_path)
            if self._check_label(label_path, size):
                labelled.append(label_path)

        folder = os.path.dirname(self.samples[0][0])
        bad = scan_files(self.samples, check, progress, desc=f"checking {folder}")
        if bad:
            more = f" (and {len(bad) - 1} more bad pair(s))" if len(bad) > 1 else ""
            raise ValueError(bad[0][1] + more)
        if not labelled:
            ignored = "0 (\"other\", ignored)" if self.reduce_zero_label else f"{IGNORE_INDEX} (ignored)"
            raise ValueError(f"the {len(self.samples)} label(s) of {os.path.dirname(self.samples[0][1])} hold no "
                             f"pixel of the {self.num_classes} classes: every pixel is {ignored}; "
                             + ("are the classes 0..K-1 (then add --no-reduce-zero-label)?" if self.reduce_zero_label
                                else "check the labels"))
        return []

    def drop(self, indices) -> None:
        out = set(indices)
        self.samples = [p for i, p in enumerate(self.samples) if i not in out]

    def _check_label(self, path: str, size: Tuple[int, int]) -> bool:
        """Mode, size (``(W, H)`` of the image) and value range of one label PNG, as :meth:`load_label`
        reads it; whether it holds a pixel of a class (one not ignored)."""
        K = self.num_classes
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise ValueError(f"label {path} has mode {im.mode}; expected a single-channel PNG of class indices")
                if im.size != tuple(size):
                    raise ValueError(f"label {path} is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}")
                lo, hi = im.getextrema()  # palette images: the indices, which are the class values
                hist = None
                if not self.reduce_zero_label and hi == IGNORE_INDEX:  # values between K and 255 hide below the max
                    hist = im.histogram() if im.mode in ("L", "P") else \
                        np.bincount(np.asarray(im).ravel().clip(0, 256), minlength=257).tolist()
        except (UnidentifiedImageError, OSError) as e:
            raise OSError(f"cannot open label {path}: {e}") from None
        if self.reduce_zero_label:  # raw 0 = ignore, raw 1..K = classes 0..K-1
            bad = hi if hi > K else None
            expected = f"1..{K}, 0 = ignore"
        else:  # raw 0..K-1 = classes, 255 = ignore
            above = [v for v in range(K, IGNORE_INDEX) if hist and hist[v]] if hist else []
            bad = above[-1] if above else (hi if hi >= K and hi != IGNORE_INDEX else None)
            expected = f"0..{K - 1}, {IGNORE_INDEX} = ignore"
        if lo < 0 or bad is not None:
            raise ValueError(f"label {path} holds value {bad if bad is not None else lo}, outside the {K} classes "
                             f"({expected})")
        return hi >= 1 if self.reduce_zero_label else lo < K

    def load_label(self, path: str) -> np.ndarray:
        """The label map (uint8 [H, W]) after the zero-label reduction, range-checked."""
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise ValueError(f"label {path} has mode {im.mode}; expected a single-channel PNG of class indices")
                arr = np.asarray(im).astype(np.int64)
        except (UnidentifiedImageError, OSError) as e:
            raise OSError(f"cannot open label {path}: {e}") from None
        K = self.num_classes
        if self.reduce_zero_label:  # raw 0 = ignore, raw 1..K = classes 0..K-1
            bad = (arr < 0) | (arr > K)
            expected = f"1..{K}, 0 = ignore"
            out = np.where(arr == 0, IGNORE_INDEX, arr - 1)
        else:  # raw 0..K-1 = classes, 255 = ignore
            bad = ((arr < 0) | (arr >= K)) & (arr != IGNORE_INDEX)
            expected = f"0..{K - 1}, {IGNORE_INDEX} = ignore"
            out = arr
        if bad.any():
            raise ValueError(f"label {path} holds value {int(arr[bad].max())}, outside the {K} classes ({expected})")
        return out.astype(np.uint8)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        img_path, label_path = self.samples[index]
        img = read_image(img_path, verb="open")
        label = self.load_label(label_path)
        if label.shape != (img.size[1], img.size[0]):
            raise ValueError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image {img_path} is "
                             f"{img.size[0]}x{img.size[1]}")
        if self.transform is None:
            return _normalize(img), torch.from_numpy(label).long()
        return self.transform(img, label)


def segmentation_collate(batch):
    """Stacked tensors when every item has the same size (training crops), else lists (evaluation)."""
    images, labels = zip(*batch)
    if all(im.shape == images[0].shape for im in images) and all(lb.shape == labels[0].shape for lb in labels):
        return torch.stack(images), torch.stack(labels)
    return list(images), list(labels)
