"""Datasets: image files (:mod:`.io`), classification folders and the embedded digits
(:mod:`.classification`), tar shards of them (:mod:`.shards`), COCO-format detection (:mod:`.coco`), ADE20K-format segmentation (:mod:`.ade20k`).

Examples::

    >>> from litvit.data import DigitsDataset, build_transform
    >>> ds = DigitsDataset("train", transform=build_transform(False, 32))
    >>> len(ds), ds[0][0].shape, ds.classes[:3]
    (1437, torch.Size([3, 32, 32]), ['0', '1', '2'])
"""
from .classification import BAD_IMAGE_MODES, DIGITS, DigitsDataset, ImageFolder, ImageList, build_transform
from .io import (IMG_EXTENSIONS, UnreadableImageError, check_image, find_images, image_to_tensor, load_image, palette,
                 read_image, scan_files)

__all__ = ["IMG_EXTENSIONS", "UnreadableImageError", "ImageFolder", "DigitsDataset", "ImageList", "build_transform",
           "find_images", "load_image", "read_image", "check_image", "scan_files", "image_to_tensor", "palette",
           "DIGITS", "BAD_IMAGE_MODES"]
