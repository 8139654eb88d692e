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
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMG_EXTENSIONS", "UnreadableImageError", "ImageFolder", "DigitsDataset", "ImageList", "build_transform",
    "find_images", "load_image", "check_image", "scan_files", "DIGITS", "BAD_IMAGE_MODES",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGE_MODES = ("fail", "skip")
DIGITS = "digits"  # the name that selects the embedded dataset wherever a dataset folder is expected


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names the file.

    When raised inside a DataLoader worker, PyTorch re-creates the exception in the main process
    with the worker's whole traceback as its message; ``str()`` still gives the one useful line.
    """

    def __str__(self) -> str:
        msg = super().__str__()
        lines = [l.strip() for l in msg.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else msg
        prefix = f"{type(self).__module__}.{type(self).__name__}: "
        for p in (prefix, f"{type(self).__name__}: "):
            if last.startswith(p):
                last = last[len(p):]
        return last


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open and fully decode an image as RGB; UnreadableImageError (a ValueError) names the file otherwise."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:  # missing, truncated, not an image
        raise UnreadableImageError(f"cannot read image {path}: {e}") from None


# the bytes every complete file of a format ends with (JPEG: end-of-image marker; PNG: the IEND chunk)
_FORMAT_END = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def check_image(path: Union[str, Path]) -> Tuple[int, int]:
    """Check cheaply that an image can be read, without decoding it: PIL parses its header (format,
    size), and for JPEG and PNG the last 4 KiB must hold the format's end marker (a truncated file
    fails). Only a file that looks off is decoded in full, to be sure.

    Returns:
        (width, height).

    Raises:
        UnreadableImageError: missing, not an image, truncated, or empty (the message names the file).
    """
    try:
        with Image.open(path) as img:
            size, fmt = img.size, img.format
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise UnreadableImageError(f"cannot read image {path}: {e}") from None
    if size[0] < 1 or size[1] < 1:
        raise UnreadableImageError(f"cannot read image {path}: it is {size[0]}x{size[1]} pixels")
    if fmt in _FORMAT_END and _FORMAT_END[fmt] not in tail:
        load_image(path)  # decoded in full: raises if it is really truncated
    return size


def scan_files(items: Sequence, check: Callable, progress: bool = True, desc: str = "checking images",
               threads: int = 8) -> List[Tuple[int, str]]:
    """Run ``check(item)`` over every item in a few threads (file reads release the GIL), with a
    tqdm bar on stderr for 1,000 items or more.

    Returns:
        ``(index, message)`` of every item whose check raised ValueError or OSError, in order.
    """
    def run(chunk: range) -> List[Tuple[int, str]]:
        bad = []
        for i in chunk:
            try:
                check(items[i])
            except (ValueError, OSError) as e:
                bad.append((i, str(e) or type(e).__name__))
        return bad

    from concurrent.futures import ThreadPoolExecutor
    n, step = len(items), 256
    chunks = [range(a, min(a + step, n)) for a in range(0, n, step)]
    bad: List[Tuple[int, str]] = []
    bar = None
    if progress and n >= 1000:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=desc, unit="file", leave=False, dynamic_ncols=True, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, os.cpu_count() or 1))) as pool:
        for chunk, found in zip(chunks, pool.map(run, chunks)):
            bad += found
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return bad


def find_images(folder: Union[str, Path], recursive: bool = True) -> List[Path]:
    """Image files under ``folder`` (by extension), sorted. FileNotFoundError / ValueError when the
    folder is missing or holds none."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if folder.is_file():
        return [folder]
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder}")
    return files


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

    Raises:
        FileNotFoundError: ``root`` or ``root/split`` does not exist.
        ValueError: no class folders, or no images in them, or classes that the training set lacks.
    """

    def __init__(
            self,
            root: Union[str, Path],
            split: str = "train",
            transform: Optional[Callable] = None,
            classes: Optional[Sequence[str]] = None,
            bad_images: str = "fail",
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
        if classes is None:
            classes = found
        else:
            extra = sorted(set(found) - set(classes))
            if extra:
                raise ValueError(f"{folder} has classes the training set lacks: {', '.join(extra[:5])}")
        self.root, self.split, self.classes = root, split, list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in found:
            for dirpath, _, files in os.walk(folder / c, followlinks=True):
                for f in sorted(files):
                    if f.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((Path(dirpath) / f, self.class_to_idx[c]))
        if not self.samples:
            raise ValueError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
        self.targets = [t for _, t in self.samples]


class ImageList(_ImageDataset):
    """A flat list of image files (for prediction); target is the file's index."""

    def __init__(self, files: Sequence[Union[str, Path]], transform: Optional[Callable] = None,
                 bad_images: str = "fail"):
        super().__init__(transform, bad_images)
        self.samples = [(Path(f), i) for i, f in enumerate(files)]


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
