"""Image files: the one reader, the one list of extensions, cheap checks before a run.

* :func:`read_image`: open and fully decode an image as it is meant to be seen (EXIF orientation
  applied, 16-bit data scaled to 8 bits), converted to RGB; decoding errors surface here, not in a
  transform. :class:`~litvit.errors.UnreadableImageError` (an ``OSError`` and a ``ValueError``)
  names the file otherwise.
* :func:`check_image`: a cheap check of every file before training (header + end marker) that
  returns the size :func:`read_image` will give; :func:`scan_files` runs a check over many files
  in a few threads.
* :func:`find_images`: the image files named, folders by :data:`IMG_EXTENSIONS` (the one lister).
* :func:`image_to_tensor`, :func:`palette`: a PIL image as a tensor; a colour per class.

Examples::

    >>> import tempfile, os
    >>> from PIL import Image
    >>> exif = Image.Exif()
    >>> exif[ORIENTATION] = 6  # a phone held upright: stored 40 wide and 20 high, shown turned
    >>> path = os.path.join(tempfile.mkdtemp(), "phone.jpg")
    >>> Image.new("RGB", (40, 20)).save(path, exif=exif)
    >>> read_image(path).size, check_image(path)
    ((20, 40), (20, 40))
"""
import errno
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from ..errors import UnreadableImageError

__all__ = ["IMG_EXTENSIONS", "ORIENTATION", "UnreadableImageError", "read_image", "load_image", "check_image",
           "exif_orientation", "scan_files", "find_images", "image_to_tensor", "palette"]

# every suffix litvit reads as an image (classification folders, ADE20K folders, predict, viz)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)  # missing, truncated, not an image

ORIENTATION = 0x0112  # the EXIF / TIFF tag saying how stored rows and columns map to the picture as shown
# orientation -> the transpose that shows the picture upright (1: as stored; 5-8 swap width and height)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# single-channel integer modes holding more than 8 bits: 16-bit PNG / TIFF / PGM, 32-bit integer TIFF
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image, 1 when it has none or an invalid one.

    Read from what PIL has parsed: the EXIF block of a JPEG, WebP or PNG, a TIFF's own tag. A PNG
    whose ``eXIf`` chunk follows the image data shows it only once loaded (before, this gives 1);
    a TIFF that a recent Pillow (13 here) has loaded is upright already and shows 1.
    Metadata that cannot be parsed counts as no orientation: it never makes an image unreadable.
    """
    if img.format == "PNG" and "exif" not in img.info and "Raw profile type exif" not in img.info:
        return 1  # PIL's PNG getexif() would decode the whole image to look after the pixel data
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 -- malformed metadata (any error PIL's parser raises): no orientation
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey image as 8-bit ``L``: 0..65535 scaled to 0..255, rounded;
    values outside that range are clipped (PIL's own conversion clips everything above 255)."""
    a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))


def read_image(path: Union[str, Path], mode: Optional[str] = "RGB", verb: str = "read",
               data: Optional[bytes] = None) -> Image.Image:
    """Open and fully decode an image as it is meant to be seen, converted to ``mode``.

    * **Orientation**: the EXIF orientation (JPEG, PNG, WebP; a TIFF's orientation tag) is applied,
      so a photo stored 40x20 with orientation 6 comes out 20 wide and 40 high.
    * **16 bits**: 16-bit grey (PNG, TIFF, PGM) and 32-bit integer images are scaled from 0..65535
      to 0..255 (rounded; values beyond clip); 16-bit colour PNG / TIFF / PPM keep PIL's own 8-bit
      reading (the high byte, or the value scaled to its maximum).
    * **Alpha** (RGBA, LA, palette transparency) is dropped: each pixel keeps the colour stored
      under it, as PIL's ``convert("RGB")`` does; transparent pixels are not composited on anything.
    * **Others**: palette, 1-bit, CMYK, YCbCr through PIL's conversion; float images (mode ``F``)
      as PIL converts them (values are 0..255 levels, truncated and clipped); multi-frame files
      (GIF, TIFF, MPO, APNG) give their first frame.
    * **Size limit**: PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``: a warning
      above it, an error above twice it) is checked on the header, before anything is decoded.

    PIL decodes every format (JPEG with the libjpeg-turbo its wheels ship): to a PIL image it is as
    fast as ``torchvision.io.decode_image``, which would need a copy into PIL on top
    (``litvit bench --decode`` measures both).

    Args:
        path (str | Path): the file.
        mode (str, optional): PIL mode to convert to (``"RGB"``); ``None`` keeps the file's mode
            and values (orientation still applied).
        verb (str): the word of the error message (``"cannot <verb> image <path>: ..."``).
        data (bytes, optional): the file's bytes, already read (a member of a tar shard); ``path``
            then only names it in errors.

    Returns:
        PIL.Image.Image: the decoded image, detached from the file.

    Raises:
        UnreadableImageError: missing, not an image, truncated, too large (the message names the file).
    """
    try:
        with (io.BytesIO(data) if data is not None else open(path, "rb")) as f:
            img = Image.open(f)  # the header: format, mode, size; refuses decompression bombs
            img.load()  # the first frame of a multi-frame file; a PNG's trailing chunks (eXIf) too
            out = img
            if mode:
                if img.mode in _WIDE_MODES and mode not in _WIDE_MODES + ("F",):
                    out = _to_8bit(img)
                if out.mode != mode:
                    out = out.convert(mode)
            orientation = exif_orientation(img)
            if orientation != 1:
                return out.transpose(_UPRIGHT[orientation])
            return out.copy() if out is img else out  # detached from the file
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
    size, EXIF orientation), and for JPEG and PNG the last 4 KiB must hold the format's end marker
    (a truncated file fails). Only a file that looks off is decoded in full, to be sure, and so is a
    PNG whose ``eXIf`` chunk follows the pixel data.

    Returns:
        (width, height) as :func:`read_image` gives the image: after its EXIF orientation, so an
        image stored 40x20 with orientation 6 is (20, 40).

    Raises:
        UnreadableImageError: missing, not an image, truncated, or empty (the message names the file).
    """
    try:
        with Image.open(path) as img:
            size, fmt, orientation = img.size, img.format, exif_orientation(img)
            if fmt == "TIFF":  # the stored size: recent Pillow reports a TIFF's size already turned
                size = img.tag_v2.get(256, size[0]), img.tag_v2.get(257, size[1])
            late_exif = fmt == "PNG" and "exif" not in img.info
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except _DECODE_ERRORS as e:
        raise UnreadableImageError(f"cannot read image {path}: {_reason(path, e)}") from None
    if size[0] < 1 or size[1] < 1:
        raise UnreadableImageError(f"cannot read image {path}: it is {size[0]}x{size[1]} pixels")
    if (fmt in _FORMAT_END and _FORMAT_END[fmt] not in tail) or (late_exif and b"eXIf" in tail):
        return load_image(path).size  # decoded in full: raises if it is really truncated
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


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


def _images_in(folder: Path, recursive: bool) -> List[Path]:
    """The image files in ``folder`` (see :func:`find_images`), sorted; possibly none."""
    found, seen = [], set()
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink back up the tree: listed once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(dirpath) / f for f in files if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)]
    return sorted(found)


def find_images(paths: Union[str, Path, Sequence[Union[str, Path]]], recursive: bool = True) -> List[Path]:
    """The image files ``paths`` names, the one lister of every command that takes images.

    A file is taken as named, whatever its name. A folder gives the files inside it (and inside its
    sub-folders, unless ``recursive=False``) whose extension, in any case (``.JPG``), is one of
    :data:`IMG_EXTENSIONS`, sorted; hidden files and folders (names starting with ``.``, such as
    macOS's ``._photo.jpg``, which are not images) are left out. Symlinks are followed, to files and
    to folders (a link back up the tree is listed once); one that leads nowhere (dangling, or a
    loop) is listed too: reading it fails with the reason, so it is reported (or skipped with its
    reason), never silently left out. Several paths: their files in the order given.

    Raises:
        FileNotFoundError: a path that does not exist (``image not found: PATH``).
        ValueError: a folder without images.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: List[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"image not found: {item}")
        if not path.is_dir():
            files.append(path)
            continue
        inside = _images_in(path, recursive)
        if not inside:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {path}")
        files += inside
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
