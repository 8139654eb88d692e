"""The paper's two figures for any image and any checkpoint (``litvit viz``, :mod:`litvit.cli.viz`).

* ``litvit viz offsets IMAGE --checkpoint CKPT`` (Fig. 2): the 64 stage-1 sampling locations that
  the three DTMs reach from chosen points of the last stage, beside the regular 2x2-merging grid,
  and each DTM's offset field. See :mod:`litvit.tools.viz.offsets`.
* ``litvit viz attention IMAGE --checkpoint CKPT`` (Fig. 3): the attention probabilities of one
  query pixel in every head of every attention block, per stage, read from the plain attention
  path. See :mod:`litvit.tools.viz.attention`.

What both share (loading a model from ``--model`` / a checkpoint, images as normalised tensors plus
the RGB picture to draw on) is in :mod:`litvit.tools.viz.common`.
"""
from ...utils import moved_names
from . import attention, offsets  # noqa: F401
from .common import (IMAGE_EXTENSIONS, LoadedImage, checkpoint_metadata, find_images, load_image,  # noqa: F401
                     load_images, load_model, save_figure, save_npy, save_npz)

__all__ = ["IMAGE_EXTENSIONS", "LoadedImage", "find_images", "load_image", "load_images", "load_model",
           "checkpoint_metadata", "save_figure", "save_npy", "save_npz", "attention", "offsets"]


# the command-line functions that lived here, now in litvit.cli.viz: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.viz", ('add_parsers',))
