"""Classification datasets and transforms: image folders and the embedded digits.

* :class:`ImageFolder`: the ImageNet layout, ``root/train/<class>/<image>`` and
  ``root/val/<class>/<image>``; classes are the sorted sub-folder names of ``train``. Before
  training, :meth:`ImageFolder.scan` checks every file cheaply (:func:`check_image`); an image
  that cannot be read either stops the run with its path (``bad_images="fail"``) or is left out
  with a warning (``bad_images="skip"``; one that fails later, while decoding, is replaced by the
  next readable one).
* :class:`DigitsDataset`: scikit-learn's handwritten digits (1,797 real 8x8 scans of 10 classes,
  shipped inside scikit-learn, so nothing is downloaded), upscaled bicubically to RGB images, with
  a fixed stratified train/val split (1,437 / 360 images).
* :func:`build_transform`: timm's training transform (random resized crop, flips, RandAugment,
  colour jitter, random erasing) or evaluation transform (resize to ``img_size / crop_pct``, centre
  crop), with the paper's bicubic interpolation. Mixup / cutmix / label smoothing act on batches
  and live in the classification task.

Examples::

    >>> from litvit.data import DigitsDataset, build_transform
    >>> ds = DigitsDataset("train", transform=build_transform(False, 32))
    >>> len(ds), ds[0][0].shape, ds.classes[:3]
    (1437, torch.Size([3, 32, 32]), ['0', '1', '2'])
"""
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .io import IMG_EXTENSIONS, UnreadableImageError, check_image, load_image, scan_files

__all__ = ["ImageFolder", "DigitsDataset", "ImageList", "build_transform", "DIGITS", "BAD_IMAGE_MODES"]

BAD_IMAGE_MODES = ("fail", "skip")
DIGITS = "digits"  # the name that selects the embedded dataset wherever a dataset folder is expected


class _ImageDataset(Dataset):
    """Shared loading with the unreadable-image policy."""

    samples: List[Tuple[Path, int]]

    def __init__(self, transform: Optional[Callable], bad_images: str):
        if bad_images not in BAD_IMAGE_MODES:
            raise ValueError(f"bad_images={bad_images!r} is not one of {BAD_IMAGE_MODES}")
        self.transform = transform
        self.bad_images = bad_images
        self._warned = set()

    def __len__(self) -> int:
        return len(self.samples)

    def scan(self, progress: bool = True) -> List[int]:
        """Check every file cheaply (:func:`check_image`) before it is used.

        Returns:
            indices to leave out (unreadable images, with a warning each) under ``bad_images="skip"``.

        Raises:
            UnreadableImageError: under ``bad_images="fail"``, naming the first unreadable file.
        """
        where = getattr(self, "split", "images")
        bad = scan_files([p for p, _ in self.samples], check_image, progress, desc=f"checking {where}")
        if bad and self.bad_images == "fail":
            more = f" (and {len(bad) - 1} more unreadable image(s); --bad-images skip leaves them out)" \
                if len(bad) > 1 else ""
            raise UnreadableImageError(bad[0][1] + more)
        for _, msg in bad:
            warnings.warn(f"skipping unreadable image: {msg}")
        return [i for i, _ in bad]

    def drop(self, indices: Iterable[int]) -> None:
        """Leave these items out (after :meth:`scan`)."""
        out = set(indices)
        self.samples = [s for i, s in enumerate(self.samples) if i not in out]
        if hasattr(self, "targets"):
            self.targets = [t for _, t in self.samples]

    def _load(self, index: int):
        path, target = self.samples[index]
        img = load_image(path)
        return (self.transform(img) if self.transform is not None else img), target

    def __getitem__(self, index: int):
        if self.bad_images == "fail":
            return self._load(index)
        for k in range(len(self.samples)):  # "skip": the next readable sample takes this one's place
            i = (index + k) % len(self.samples)
            try:
                return self._load(i)
            except UnreadableImageError as e:
                if i not in self._warned:
                    self._warned.add(i)
                    warnings.warn(f"skipping unreadable image: {e}")
        raise ValueError("no image of the dataset can be read")


class ImageFolder(_ImageDataset):
    """``root/<split>/<class>/<image>``, classes sorted by name (as torchvision's ImageFolder).

    Args:
        root (str | Path): dataset folder holding ``train/`` and ``val/``.
        split (str): ``"train"`` or ``"val"`` (any sub-folder name).
        transform (Callable, optional): applied to the PIL image.
        classes (Sequence[str], optional): the class list to use (the training set's, for ``val``);
            a class folder not in it is an error.
        bad_images (str): ``"fail"`` (stop with the file's path) or ``"skip"`` (warn, use the next image).
        min_classes (int): refuse a split with images of fewer classes (2 for a training set: a
            classifier of one class learns nothing).

    Class folders without any image are named in a warning (they stay classes: a model trained on
    this folder has an output for each, never trained); so is a split with a single class.
    :attr:`empty_classes` lists the former.

    Raises:
        FileNotFoundError: ``root`` or ``root/split`` does not exist.
        ValueError: no class folders, or no images in them, or classes that the training set lacks,
            or images of fewer than ``min_classes`` classes.
    """

    def __init__(
            self,
            root: Union[str, Path],
            split: str = "train",
            transform: Optional[Callable] = None,
            classes: Optional[Sequence[str]] = None,
            bad_images: str = "fail",
            min_classes: int = 1,
    ):
        super().__init__(transform, bad_images)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {root} has no '{split}' sub-folder "
                                    f"(expected {root}/{split}/<class>/<image>)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise ValueError(f"{folder} holds no class folders (expected {folder}/<class>/<image>)")
        images = {c: _image_files(folder / c) for c in found}
        if classes is None:
            classes = found
        extra = sorted(c for c in found if c not in set(classes) and images[c])
        if extra:
            raise ValueError(f"{folder} has classes the training set lacks: {', '.join(extra[:5])}")
        self.root, self.split, self.classes = root, split, list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(f, self.class_to_idx[c]) for c in found if images[c] for f in images[c]]
        if not self.samples:
            raise ValueError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
        self.targets = [t for _, t in self.samples]
        seen = set(self.targets)
        self.empty_classes = [c for c in found if not images[c]]
        empty = ", ".join(self.empty_classes[:10]) + (f" (+{len(self.empty_classes) - 10} more)"
                                                     if len(self.empty_classes) > 10 else "")
        if len(seen) < min_classes:
            with_images = ", ".join(self.classes[t] for t in sorted(seen))
            raise ValueError(f"{folder} holds images of {'one class' if len(seen) == 1 else f'{len(seen)} classes'} "
                             f"only ({with_images}); "
                             f"a classifier needs at least {min_classes}"
                             + (f" (class folders without images: {empty})" if empty else ""))
        if self.empty_classes:
            warnings.warn(f"{folder}: {len(self.empty_classes)} class folder(s) without images: {empty}", stacklevel=2)
        if len(self.classes) == 1:
            warnings.warn(f"{folder} holds a single class ({self.classes[0]}): every image gets that label",
                          stacklevel=2)


def _image_files(folder: Path) -> List[Path]:
    """The image files under one class folder (symlinks followed), in a stable order."""
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        out += [Path(dirpath) / f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return out


class ImageList(_ImageDataset):
    """A flat list of image files (for prediction); target is the file's index.

    Args:
        files (Sequence[str | Path]): the images (:func:`~litvit.data.io.find_images` lists a folder).
        transform (Callable, optional): applied to the PIL image.
        bad_images (str): ``"fail"`` or ``"skip"`` (the next readable image takes an unreadable one's place).
        with_reasons (bool): items are ``(image or None, index, why it could not be read or "")``
            instead: every file keeps its own row (``litvit predict``), ``bad_images`` aside.
    """

    def __init__(self, files: Sequence[Union[str, Path]], transform: Optional[Callable] = None,
                 bad_images: str = "fail", with_reasons: bool = False):
        super().__init__(transform, bad_images)
        self.samples = [(Path(f), i) for i, f in enumerate(files)]
        self.with_reasons = with_reasons

    def __getitem__(self, index: int):
        if not self.with_reasons:
            return super().__getitem__(index)
        try:
            image, target = self._load(index)
        except UnreadableImageError as e:
            return None, index, str(e)
        return image, target, ""


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as RGB images: 1,797 real 8x8 scans, 10 classes.

    The 0-16 grey levels are scaled to 0-255 and the scan upscaled bicubically to ``base_size``
    (the transform then crops/resizes to the model's input size). The split is fixed: stratified
    by class, ``val_fraction`` of the images (360 of 1,797 by default) held out with
    ``split_seed``; it does not depend on the training seed.

    Args:
        split (str): ``"train"`` or ``"val"``.
        transform (Callable, optional): applied to the PIL image.
        base_size (int): side of the upscaled image.
        val_fraction (float): held-out share.
        split_seed (int): seed of the split.
    """

    classes = [str(i) for i in range(10)]

    def __init__(
            self,
            split: str = "train",
            transform: Optional[Callable] = None,
            base_size: int = 32,
            val_fraction: float = 0.2,
            split_seed: int = 0,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # N, 8, 8
        idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=val_fraction,
                                              stratify=digits.target, random_state=split_seed)
        idx = np.sort(idx_train if split == "train" else idx_val)
        self.images = images[idx]
        self.targets = digits.target[idx].astype(np.int64).tolist()
        self.split, self.transform, self.base_size = split, transform, base_size
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        img = Image.fromarray(self.images[index], mode="L").resize((self.base_size, self.base_size), Image.BICUBIC)
        return img.convert("RGB")

    def __getitem__(self, index: int):
        img = self.image(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


def build_transform(
        is_training: bool,
        img_size: int,
        auto_augment: Optional[str] = None,
        re_prob: float = 0.0,
        re_mode: str = "pixel",
        re_count: int = 1,
        color_jitter: float = 0.4,
        hflip: float = 0.5,
        scale: Tuple[float, float] = (0.08, 1.0),
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        mean: Tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: Tuple[float, float, float] = (0.229, 0.224, 0.225),
):
    """timm's transform: training (random resized crop with ``scale``, flip, RandAugment
    ``auto_augment`` such as ``"rand-m9-mstd0.5-inc1"``, colour jitter when no auto-augment,
    random erasing with probability ``re_prob``) or evaluation (resize to ``img_size / crop_pct``,
    centre crop). Output: Tensor[3, img_size, img_size], normalised.
    """
    from timm.data import create_transform
    if is_training:
        return create_transform(
            input_size=img_size, is_training=True, scale=tuple(scale), hflip=hflip, color_jitter=color_jitter,
            auto_augment=auto_augment or None, interpolation=interpolation, re_prob=re_prob, re_mode=re_mode,
            re_count=re_count, mean=tuple(mean), std=tuple(std))
    return create_transform(input_size=img_size, is_training=False, interpolation=interpolation,
                            crop_pct=crop_pct, mean=tuple(mean), std=tuple(std))
