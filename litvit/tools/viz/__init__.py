"""``litvit viz``: the paper's two figures for any image and any checkpoint.

* ``litvit viz offsets IMAGE --checkpoint CKPT`` (Fig. 2): the 64 stage-1 sampling locations that
  the three DTMs reach from chosen points of the last stage, beside the regular 2x2-merging grid,
  and each DTM's offset field. See :mod:`litvit.tools.viz.offsets`.
* ``litvit viz attention IMAGE --checkpoint CKPT`` (Fig. 3): the attention probabilities of one
  query pixel in every head of every attention block, per stage, read from the plain attention
  path. See :mod:`litvit.tools.viz.attention`.

What both share (loading a model from ``--model`` / a checkpoint, images as normalised tensors plus
the RGB picture to draw on) is in :mod:`litvit.tools.viz.common`.
"""
import argparse

from . import attention, offsets
from .common import (IMAGE_EXTENSIONS, LoadedImage, add_common_arguments, checkpoint_metadata,  # noqa: F401
                     find_images, load_image, load_images, load_model, prepare, save_figure, save_npy, save_npz)

__all__ = ["IMAGE_EXTENSIONS", "LoadedImage", "find_images", "load_image", "load_model", "checkpoint_metadata",
           "save_figure", "save_npy", "add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="the paper's figures: DTM sampling offsets, attention maps",
                       description="Visualise a LIT model: DTM sampling locations (paper Fig. 2) and attention "
                                   "maps (paper Fig. 3).")
    viz = p.add_subparsers(dest="viz_command", metavar="FIGURE")
    viz.required = True
    offsets.add_parser(viz)
    attention.add_parser(viz)
