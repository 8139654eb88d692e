"""Image files: the one reader, the one list of extensions, cheap checks before a run.

* :func:`read_image`: open and fully decode an image (decoding errors surface here, not in a
  transform), converted to RGB; :class:`~litvit.errors.UnreadableImageError` (an ``OSError`` and a
  ``ValueError``) names the file otherwise.
* :func:`check_image`: a cheap check of every file before training (header + end marker);
  :func:`scan_files` runs a check over many files in a few threads.
* :func:`find_images`: the image files under a folder, by :data:`IMG_EXTENSIONS`.
* :func:`image_to_tensor`, :func:`palette`: a PIL image as a tensor; a colour per class.
"""
import errno
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from ..errors import UnreadableImageError

__all__ = ["IMG_EXTENSIONS", "UnreadableImageError", "read_image", "load_image", "check_image", "scan_files",
           "find_images", "image_to_tensor", "palette"]

# every suffix litvit reads as an image (classification folders, ADE20K folders, predict, viz)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)  # missing, truncated, not an image


def read_image(path: Union[str, Path], mode: str = "RGB", verb: str = "read") -> Image.Image:
    """Open and fully decode an image, converted to ``mode`` (``"RGB"``; ``None`` keeps the file's).

    Args:
        path (str | Path): the file.
        mode (str, optional): PIL mode to convert to.
        verb (str): the word of the error message (``"cannot <verb> image <path>: ..."``).

    Raises:
        UnreadableImageError: missing, not an image, truncated (the message names the file).
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert(mode) if mode and img.mode != mode else img.copy()
    except _DECODE_ERRORS as e:
        raise UnreadableImageError(f"cannot {verb} image {path}: {_reason(path, e)}") from None


def _reason(path: Union[str, Path], e: BaseException) -> str:
    """Why ``path`` could not be read, in words: the system's reason for a file that cannot be
    opened (naming a dangling symlink or a symlink loop), PIL's for one that is not an image
    (without the file object's repr that PIL puts in its message)."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image file PIL can identify"
    if isinstance(e, OSError) and e.strerror:
        what = {errno.ENOENT: "dangling symlink", errno.ELOOP: "symlink loop"}.get(e.errno)
        if what and os.path.islink(path):
            return f"{e.strerror} ({what} to {os.readlink(path)})"
        return e.strerror
    return str(e) or type(e).__name__


def load_image(path: Union[str, Path]) -> Image.Image:
    """:func:`read_image` as RGB (the name classification datasets have always used)."""
    return read_image(path)


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
    except _DECODE_ERRORS as e:
        raise UnreadableImageError(f"cannot read image {path}: {_reason(path, e)}") from None
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

    n, step = len(items), 256
    chunks = [range(a, min(a + step, n)) for a in range(0, n, step)]
    bad: List[Tuple[int, str]] = []
    bar = None
    if progress and n >= 1000:
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
    folder is missing or holds none.

    A symlink that leads nowhere (dangling, or a loop) is listed too: reading it fails with the
    reason, so it is reported (or skipped with its reason), never silently left out."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if folder.is_file():
        return [folder]
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in it if p.suffix.lower() in IMG_EXTENSIONS
                   and (p.is_file() or (p.is_symlink() and not p.exists())))
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder}")
    return files


def image_to_tensor(img: Image.Image) -> Tensor:
    """PIL RGB -> Tensor[3, H, W] float in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)  # H, W, 3 -> 3, H, W


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-spread colour per class (PASCAL VOC's bit-interleaving scheme): uint8 [K, 3]."""
    out = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for k in range(num_classes):
        c, r, g, b = k + 1, 0, 0, 0  # +1: class 0 gets a colour, not black
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[k] = (r, g, b)
    return out
