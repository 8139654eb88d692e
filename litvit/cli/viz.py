"""``litvit viz offsets | attention``: the commands over :mod:`litvit.tools.viz` (the paper's
Fig. 2 and Fig. 3 for any image and checkpoint)."""
import argparse
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..models import MODEL_NAMES
from ..tools.viz.attention import (check_attention_memory, load_official_input, mean_attention_distance,
                                   official_attention, plot_official, visualize_attention)
from ..tools.viz.common import LoadedImage, find_images, load_images, load_model, save_figure, save_npy
from ..tools.viz.offsets import WALK_BACKS, visualize_offsets
from ..utils import warn_grid_change
from .args import img_size_arg, positive_int

__all__ = ["add_parsers", "cmd_offsets", "cmd_attention"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="the paper's figures: DTM sampling offsets, attention maps",
                       description="Visualise a LIT model: DTM sampling locations (paper Fig. 2) and attention "
                                   "maps (paper Fig. 3).")
    viz = p.add_subparsers(dest="viz_command", metavar="FIGURE")
    viz.required = True
    _add_offsets_parser(viz)
    _add_attention_parser(viz)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="an image file or a folder of images")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="litvit training checkpoint or safetensors export, or official LIT release")
    p.add_argument("--model", choices=MODEL_NAMES, metavar="MODEL",
                   help="model name (default: the one the checkpoint records, or the one an official release fits)")
    p.add_argument("--img-size", type=img_size_arg, default=None,
                   help="shorter image side fed to the network, a multiple of 32 (default: the model's)")
    p.add_argument("--out", default=os.path.join("runs", "viz"), help="output folder (default runs/viz)")


def prepare(args: argparse.Namespace) -> Tuple[torch.nn.Module, dict, List[LoadedImage]]:
    """Model, its info and every image, from the common arguments."""
    import matplotlib
    matplotlib.use("Agg")
    find_images(args.image)  # a missing image fails before the model is built
    model, info = load_model(args.model, args.checkpoint)
    size = args.img_size or info["img_size"]
    images = load_images(args.image, size, info["mean"], info["std"], getattr(model, "in_chans", 3))
    warn_grid_change(f"viz {args.viz_command}", info["img_size"], tuple(images[0].tensor.shape[-2:]))
    src = f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights (no --checkpoint)"
    print(f"model {info['model']} from {src}; {len(images)} image(s), network input "
          f"{images[0].tensor.shape[-2]}x{images[0].tensor.shape[-1]}")
    return model, info, images


# --- offsets ---------------------------------------------------------------------------------------

def _parse_points(values: Optional[List[str]]) -> Optional[Tensor]:
    if not values:
        return None
    pts = []
    for v in values:
        try:
            y, x = (int(c) for c in v.split(","))
        except ValueError:
            raise ValueError(f"--points takes Y,X pairs of last-stage grid coordinates (e.g. 3,4), got {v!r}") from None
        pts.append((y, x))
    return torch.tensor(pts, dtype=torch.float64)


def cmd_offsets(args: argparse.Namespace) -> int:
    points = _parse_points(args.points)
    if args.grid < 1:
        raise ValueError(f"--grid must be at least 1, got {args.grid}")
    model, info, images = prepare(args)
    out = Path(args.out)
    for img in images:
        title = f"{info['model']}: {img.path.name}"
        for path in visualize_offsets(model, img.tensor, img.rgb, out / img.path.stem, points, args.grid, title,
                                      args.walk_back):
            print(f"wrote {path}")
    return 0


def _add_offsets_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "offsets", help="DTM sampling locations walked back to stage 1, and offset fields (paper Fig. 2)",
        description="For points of the last stage, draw the 64 stage-1 sampling locations reached through the "
                    "three DTMs beside the regular 2x2-merging grid, and each DTM's offset field.")
    add_common_arguments(p)
    p.add_argument("--points", nargs="+", metavar="Y,X",
                   help="last-stage grid points to trace (default: an evenly spread --grid x --grid set)")
    p.add_argument("--grid", type=positive_int, default=3, help="points per side of the default grid (default 3)")
    p.add_argument("--walk-back", default="bilinear", choices=WALK_BACKS,
                   help="bilinear (default: fractional points read the interpolated offset field, all kept) or "
                        "official (the authors': round to the nearest cell, drop points leaving the map)")
    p.set_defaults(func=cmd_offsets)


# --- attention -------------------------------------------------------------------------------------

def _parse_query(value: Optional[str]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    try:
        y, x = (int(c) for c in value.split(","))
    except ValueError:
        raise ValueError(f"--query takes a Y,X pixel of the network input (e.g. 112,96), got {value!r}") from None
    return y, x


def _cmd_official(args: argparse.Namespace) -> int:
    """``--method official``: the first ``--num-images`` images, centre-cropped, averaged."""
    import matplotlib
    matplotlib.use("Agg")
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.query is not None:
        raise ValueError("--query is for the default method; the official one uses the authors' query tokens")
    files = find_images(args.image)[:args.num_images]
    model, info = load_model(args.model, args.checkpoint)
    size = args.img_size or info["img_size"]
    check_attention_memory(model, (size, size))
    inputs = [load_official_input(f, size, info["mean"], info["std"]) for f in files]  # all read before writing
    print(f"model {info['model']}: the authors' attention maps averaged over {len(inputs)} image(s) at {size}x{size}")
    stages, n = official_attention(model, inputs)
    out = Path(args.out)
    written = []
    for s in stages:
        title = f"{info['model']}, mean of {n} image(s): "
        written.append(save_figure(plot_official(s, title), out / f"official_attention_stage{s.stage}.png"))
        written.append(save_npy(s.maps, out / f"official_attention_stage{s.stage}.npy"))
        print(f"stage {s.stage}: query token {s.query} of {s.feat_size[0]}x{s.feat_size[1]}, {s.maps.shape[0]} block(s) "
              f"x {s.maps.shape[1]} head(s), mean attention distance {mean_attention_distance(s):.2f} tokens")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    if args.method == "official":
        return _cmd_official(args)
    query = _parse_query(args.query)
    model, info, images = prepare(args)
    out = Path(args.out)
    for img in images:
        q = query if query is not None else (img.tensor.shape[-2] // 2, img.tensor.shape[-1] // 2)
        written, stages = visualize_attention(model, img.tensor, img.rgb, out / img.path.stem, q,
                                              f"{info['model']}: {img.path.name}, query {q}")
        for s in stages:
            spread = mean_attention_distance(s)
            print(f"{img.path.name} stage {s.stage}: {s.maps.shape[0]} block(s) x {s.maps.shape[1]} head(s), "
                  f"mean attention distance {spread:.2f} tokens"
                  + (f", class token {s.prefix_mass.mean():.3f}" if s.prefix_mass.size else ""))
        for path in written:
            print(f"wrote {path}")
    return 0


def _add_attention_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention", help="attention maps of one query pixel, every head of every block (paper Fig. 3)",
        description="For a query pixel, draw the attention probabilities of every head of every attention block, "
                    "per stage, over the image (PNG grids) and save the raw maps (.npy).")
    add_common_arguments(p)
    p.add_argument("--query", metavar="Y,X", help="query pixel in the network input (default: the centre)")
    p.add_argument("--method", default="query", choices=("query", "official"),
                   help="query (default): one image, any query pixel, maps over the image; official: the authors' "
                        "maps, averaged over --num-images images at their query tokens, class token removed")
    p.add_argument("--num-images", type=int, default=100,
                   help="official method: how many images of the folder to average (default 100, the authors')")
    p.set_defaults(func=cmd_attention)
