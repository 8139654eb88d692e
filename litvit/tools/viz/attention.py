"""The attention of one query pixel, per stage, block and head (paper Fig. 3; ``litvit viz attention``).

The maps are read from the model's own plain attention path: the model is switched to it with
``set_fused_attn(False)`` and a forward hook on every ``Attention.attn_probs`` (an identity the
softmax output passes through) records the probabilities (B, heads, N, M) of one ordinary forward.
Nothing is recomputed beside the model.

The query pixel (image coordinates of the network input) falls in one token of each stage's grid
(stride 4, 8, 16, 32); its row of the probabilities, over the spatial keys, is the map drawn. Keys
live on the stage grid for full attention and on the reduced grid (H/r, W/r) for PVT's
spatial-reduction attention; the class token's share (LIT-Ti, PVT-S stage 4) is reported beside.

The authors' method (``--method official``, their ``generate_attention_maps.py``) differs: the
probabilities are averaged over many images (the first 100 of the validation set, centre-cropped
to 224), the query is a fixed token per stage (flat indices 1260, 294, 92, 17 of the 56x56, 28x28,
14x14 and 7x7 grids: rows/cols (22, 28), (10, 14), (6, 8), (2, 3)), the stage-4 class token's
row and column are removed (without renormalising), and the maps are drawn on their own grid
rather than over one image. :func:`official_attention` computes that average.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ...data.io import read_image
from ...models import Attention
from ...utils import moved_names
from .common import save_figure, save_npy

__all__ = ["AttentionMaps", "OFFICIAL_QUERY_TOKENS", "check_attention_memory", "collect_attention", "query_maps",
           "official_query", "official_query_maps", "official_attention", "plot_stage", "plot_overview",
           "plot_official", "visualize_attention", "mean_attention_distance", "load_official_input"]


@dataclass
class AttentionMaps:
    """The query's attention in one stage.

    Attributes:
        stage (int): 1-based stage index.
        blocks (List[str]): names of the attention modules, in order.
        feat_size (Tuple[int, int]): the stage's token grid (H, W).
        query (Tuple[int, int]): the query token on that grid (row, col).
        maps (np.ndarray[blocks, heads, Hk, Wk]): probabilities over the spatial keys.
        prefix_mass (np.ndarray[blocks, heads]): probability on prefix (class) tokens; empty
            (shape (0, 0)) where the stage has none.
    """
    stage: int
    blocks: List[str]
    feat_size: Tuple[int, int]
    query: Tuple[int, int]
    maps: np.ndarray
    prefix_mass: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


MAX_ATTN_BYTES = 2 * 1024 ** 3


def check_attention_memory(model: nn.Module, image_size: Tuple[int, int], limit: int = MAX_ATTN_BYTES) -> None:
    """Refuse inputs whose plain-path attention matrices would not fit in memory.

    The plain path materialises (heads, N, M) probabilities per block; a 1024 px image in PVT-S
    w/ MSA's first stage alone would need 17 GB.

    Raises:
        ValueError: naming the block, the size it would need and the limit.
    """
    H, W = image_size
    patch = getattr(model, "patch_size", 4)
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            stride = patch * 2 ** (_stage_of(name) - 1)
            n = (H // stride) * (W // stride)
            r = m.sr_ratio if m.sr_ratio > 1 else 1
            size = 4 * m.num_heads * (n + m.num_prefix_tokens) * (n // (r * r) + m.num_prefix_tokens)
            if size > limit:
                raise ValueError(f"a {H}x{W} input needs {size / 1024 ** 3:.1f} GiB for the attention probabilities "
                                 f"of {name} (limit {limit / 1024 ** 3:.0f} GiB): use a smaller --img-size")


def collect_attention(model: nn.Module, x: Tensor) -> Dict[str, Tensor]:
    """Attention probabilities of every attention module for one forward, from the plain path.

    Args:
        model (nn.Module): a LIT model; its fused-attention setting is restored afterwards.
        x (Tensor[B, C, H, W]): images.

    Returns:
        {attention module name: Tensor[B, heads, N, M]} in forward order.

    Raises:
        ValueError: the model has no attention (all MLP stages).
    """
    attns = [(n, m) for n, m in model.named_modules() if isinstance(m, Attention)]
    if not attns:
        raise ValueError("the model has no attention blocks to visualise")
    fused = {n: m.fused_attn for n, m in attns}
    found: Dict[str, Tensor] = {}
    handles = [m.attn_probs.register_forward_hook(lambda mod, inp, out, key=n: found.__setitem__(key, out.detach()))
               for n, m in attns]
    try:
        for _, m in attns:
            m.fused_attn = False
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for n, m in attns:
            m.fused_attn = fused[n]
    missing = [n for n, _ in attns if n not in found]
    if missing:
        raise RuntimeError(f"no attention probabilities were recorded for {missing[:3]}")
    return {n: found[n] for n, _ in attns}


def _stage_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("stages") + 1]) + 1 if "stages" in parts else 0


def _stage_grids(probs: Dict[str, Tensor], model: nn.Module, image_size: Tuple[int, int]):
    """``(stage, attention module names, (h, w) token grid)`` for each stage with attention, in order."""
    H, W = image_size
    patch = getattr(model, "patch_size", 4)
    by_stage: Dict[int, List[str]] = {}
    for name in probs:
        by_stage.setdefault(_stage_of(name), []).append(name)
    for stage, names in sorted(by_stage.items()):
        stride = patch * 2 ** (stage - 1)
        yield stage, names, (H // stride, W // stride)


def query_maps(
        probs: Dict[str, Tensor],
        model: nn.Module,
        image_size: Tuple[int, int],
        query: Tuple[int, int],
) -> List[AttentionMaps]:
    """The query pixel's rows of the attention probabilities, reshaped to key grids, per stage.

    Args:
        probs (Dict[str, Tensor[1, heads, N, M]]): from :func:`collect_attention` (first image).
        model (nn.Module): the LIT model (for strides, prefix tokens and SRA ratios).
        image_size (Tuple[int, int]): network input (H, W).
        query (Tuple[int, int]): query pixel (y, x) in the network input.

    Returns:
        One :class:`AttentionMaps` per stage that has attention.
    """
    H, W = image_size
    qy, qx = query
    if not (0 <= qy < H and 0 <= qx < W):
        raise ValueError(f"--query {qy},{qx} is outside the {H}x{W} network input")
    out = []
    for stage, names, (h, w) in _stage_grids(probs, model, image_size):
        row, col = qy * h // H, qx * w // W  # the token under the query pixel
        maps, prefix = [], []
        for name in names:
            attn = model.get_submodule(name)
            p = attn.num_prefix_tokens
            r = attn.sr_ratio if getattr(attn, "sr_ratio", 1) > 1 else 1
            hk, wk = h // r, w // r
            a = probs[name][0]  # heads, N, M
            if a.shape[-2] != p + h * w or a.shape[-1] != p + hk * wk:
                raise ValueError(f"{name}: attention of shape {tuple(a.shape)} does not fit a {h}x{w} grid "
                                 f"with {p} prefix token(s) and reduction {r}")
            q = a[:, p + row * w + col]  # heads, M
            maps.append(q[:, p:].reshape(-1, hk, wk).float().numpy())  # heads, M - p -> heads, Hk, Wk
            prefix.append(q[:, :p].sum(-1).float().numpy())
        has_prefix = any(model.get_submodule(n).num_prefix_tokens for n in names)
        out.append(AttentionMaps(stage, names, (h, w), (row, col), np.stack(maps),
                                 np.stack(prefix) if has_prefix else np.zeros((0, 0), dtype=np.float32)))
    return out


# The authors' query tokens: flat index on each stage's grid at 224x224 input (stage 4 without its class token).
OFFICIAL_QUERY_TOKENS = {1: (1260, 56), 2: (294, 28), 3: (92, 14), 4: (17, 7)}


def official_query(stage: int, feat_size: Tuple[int, int]) -> Tuple[int, int]:
    """The authors' query token (row, col) of ``stage`` (1-4) on a ``feat_size`` grid; at other input
    sizes than 224 it keeps its relative position."""
    index, side = OFFICIAL_QUERY_TOKENS[stage]
    row, col = divmod(index, side)
    h, w = feat_size
    return (row, col) if (h, w) == (side, side) else (row * h // side, col * w // side)


def official_query_maps(probs: Dict[str, Tensor], model: nn.Module, image_size: Tuple[int, int]) -> List[AttentionMaps]:
    """The authors' rows of the attention probabilities, averaged over the batch: the class token's
    row and column removed (not renormalised), the official query token of each stage.

    Args:
        probs (Dict[str, Tensor[B, heads, N, M]]): from :func:`collect_attention`.
        model (nn.Module): the LIT model.
        image_size (Tuple[int, int]): network input (H, W).

    Returns:
        One :class:`AttentionMaps` per stage with attention (``prefix_mass`` empty).
    """
    out = []
    for stage, names, (h, w) in _stage_grids(probs, model, image_size):
        row, col = official_query(stage, (h, w))
        maps = []
        for name in names:
            attn = model.get_submodule(name)
            p = attn.num_prefix_tokens
            r = attn.sr_ratio if getattr(attn, "sr_ratio", 1) > 1 else 1
            a = probs[name].double().mean(0)[:, p:, p:]  # B, heads, N, M -> heads, N - p, M - p
            maps.append(a[:, row * w + col].reshape(-1, h // r, w // r).float().numpy())  # heads, Hk, Wk
        out.append(AttentionMaps(stage, names, (h, w), (row, col), np.stack(maps)))
    return out


def official_attention(model: nn.Module, inputs) -> Tuple[List[AttentionMaps], int]:
    """The authors' attention maps: :func:`official_query_maps` averaged over every image of ``inputs``.

    Args:
        model (nn.Module): the LIT model.
        inputs (Iterable[Tensor[B, C, H, W]]): batches of normalised images, all of one size.

    Returns:
        (per-stage maps averaged over all images, number of images).
    """
    total: Optional[List[AttentionMaps]] = None
    n = 0
    for x in inputs:
        stages = official_query_maps(collect_attention(model, x), model, tuple(x.shape[-2:]))
        b = x.shape[0]
        if total is None:
            total = stages
            for s in total:
                s.maps = s.maps.astype(np.float64) * b
        else:
            for t, s in zip(total, stages):
                t.maps += s.maps * b
        n += b
    if total is None:
        raise ValueError("no images to average")
    for s in total:
        s.maps = (s.maps / n).astype(np.float32)
    return total, n


def load_official_input(path: Path, img_size: int, mean, std) -> Tensor:
    """The evaluation transform of the authors' script: shorter side to ``img_size / 0.875``
    (bicubic), centre crop ``img_size`` x ``img_size``, normalise. Returns Tensor[1, 3, S, S]."""
    if img_size <= 0 or img_size % 32:
        raise ValueError(f"--img-size must be a positive multiple of 32, got {img_size}")
    img = read_image(path)
    short = int(img_size / 0.875)
    scale = short / min(img.size)
    img = img.resize((max(img_size, round(img.width * scale)), max(img_size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - img_size) // 2, (img.height - img_size) // 2
    img = img.crop((left, top, left + img_size, top + img_size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # H, W, 3 -> 3, H, W
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / sd).unsqueeze(0)


def plot_official(stage: AttentionMaps, title: str = ""):
    """The authors' drawing: each map on its own grid (no image under it), "OrRd" colours, the
    query cell outlined in lime; a row per block, a column per head."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    nb, nh = stage.maps.shape[:2]
    fig, axes = plt.subplots(nb, nh, figsize=(1.9 * nh + 0.4, 1.9 * nb + 0.8), squeeze=False)
    hk, wk = stage.maps.shape[2:]
    qy = stage.query[0] * hk / stage.feat_size[0]
    qx = stage.query[1] * wk / stage.feat_size[1]
    for b in range(nb):
        for hd in range(nh):
            ax = axes[b][hd]
            ax.imshow(stage.maps[b, hd], cmap="OrRd", interpolation="nearest")
            ax.add_patch(Rectangle((qx - 0.5, qy - 0.5), 1, 1, linewidth=1.5, edgecolor="lime", facecolor="none"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"block {b + 1} head {hd + 1}", fontsize=6)
    fig.suptitle(f"{title}stage {stage.stage}: query token {stage.query} of {stage.feat_size[0]}x{stage.feat_size[1]}",
                 fontsize=8)
    fig.tight_layout()
    return fig


def _overlay(ax, rgb: np.ndarray, amap: np.ndarray, query: Tuple[int, int]) -> None:
    H, W = rgb.shape[:2]
    ax.imshow(rgb, extent=(0, W, H, 0))
    ax.imshow(amap / max(float(amap.max()), 1e-12), extent=(0, W, H, 0), cmap="jet", alpha=0.55,
              interpolation="nearest", vmin=0, vmax=1)
    ax.scatter([query[1]], [query[0]], s=40, marker="x", color="white", linewidths=1.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_stage(rgb: np.ndarray, maps: AttentionMaps, query: Tuple[int, int], title: str = ""):
    """Grid of overlays for one stage: a row per attention block, a column per head. Each map is
    scaled to its own maximum (printed in the panel title)."""
    import matplotlib.pyplot as plt
    nb, nh = maps.maps.shape[:2]
    H, W = rgb.shape[:2]
    cell = 1.9
    fig, axes = plt.subplots(nb, nh, figsize=(cell * nh * W / max(H, W) + 0.4, cell * nb * H / max(H, W) + 0.8),
                             squeeze=False)
    for b in range(nb):
        for hd in range(nh):
            ax = axes[b][hd]
            _overlay(ax, rgb, maps.maps[b, hd], query)
            cls = f", cls {maps.prefix_mass[b, hd]:.2f}" if maps.prefix_mass.size else ""
            ax.set_title(f"block {b + 1} head {hd + 1}\nmax {maps.maps[b, hd].max():.3f}{cls}", fontsize=6)
    fig.suptitle(f"{title}stage {maps.stage}: {maps.feat_size[0]}x{maps.feat_size[1]} tokens, "
                 f"keys {maps.maps.shape[2]}x{maps.maps.shape[3]}, query token {maps.query}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_overview(rgb: np.ndarray, stages: List[AttentionMaps], query: Tuple[int, int], title: str = ""):
    """Fig. 3 layout: one row per stage, the last block's heads across (up to 8)."""
    import matplotlib.pyplot as plt
    nh = min(8, max(s.maps.shape[1] for s in stages))
    H, W = rgb.shape[:2]
    cell = 1.9
    fig, axes = plt.subplots(len(stages), nh + 1, squeeze=False,
                             figsize=(cell * (nh + 1) * W / max(H, W) + 0.4, cell * len(stages) * H / max(H, W) + 0.7))
    for r, s in enumerate(stages):
        ax = axes[r][0]
        ax.imshow(rgb, extent=(0, W, H, 0))
        ax.scatter([query[1]], [query[0]], s=40, marker="x", color="red", linewidths=1.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"stage {s.stage}", fontsize=8)
        ax.set_title("query", fontsize=7)
        for hd in range(nh):
            ax = axes[r][hd + 1]
            if hd < s.maps.shape[1]:
                _overlay(ax, rgb, s.maps[-1, hd], query)
                cls = f", cls {s.prefix_mass[-1, hd]:.2f}" if s.prefix_mass.size else ""
                ax.set_title(f"head {hd + 1}{cls}", fontsize=7)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title + " (last block of each stage)", fontsize=8)
    fig.tight_layout()
    return fig


def visualize_attention(
        model: nn.Module,
        x: Tensor,
        rgb: np.ndarray,
        out_prefix: Path,
        query: Optional[Tuple[int, int]] = None,
        title: str = "",
) -> Tuple[List[Path], List[AttentionMaps]]:
    """Figure 3 for one image.

    Writes ``<prefix>_attention.png`` (overview), ``<prefix>_attention_stage{i}.png`` (every block
    and head of stage i) and ``<prefix>_attention_stage{i}.npy`` (float32 [blocks, heads, Hk, Wk]).

    Args:
        model (nn.Module): a LIT model.
        x (Tensor[1, C, H, W]): the normalised image.
        rgb (np.ndarray[H, W, 3]): the image to draw on.
        out_prefix (Path): prefix of the files.
        query (Tuple[int, int], optional): query pixel (y, x); default the centre.

    Returns:
        (paths written, per-stage maps).
    """
    H, W = x.shape[-2:]
    if query is None:
        query = (H // 2, W // 2)
    check_attention_memory(model, (H, W))
    stages = query_maps(collect_attention(model, x), model, (H, W), query)
    out_prefix = Path(out_prefix)
    written = [save_figure(plot_overview(rgb, stages, query, title), Path(f"{out_prefix}_attention.png"))]
    for s in stages:
        written.append(save_figure(plot_stage(rgb, s, query, f"{title}: " if title else ""),
                                   Path(f"{out_prefix}_attention_stage{s.stage}.png")))
        written.append(save_npy(s.maps.astype(np.float32), Path(f"{out_prefix}_attention_stage{s.stage}.npy")))
    return written, stages


def mean_attention_distance(s: AttentionMaps) -> float:
    """Mean distance (in key-grid tokens) from the query token, weighted by the attention, over
    every block and head of a stage."""
    nb, nh, hk, wk = s.maps.shape
    ry = s.query[0] * hk / s.feat_size[0]
    rx = s.query[1] * wk / s.feat_size[1]
    yy, xx = np.meshgrid(np.arange(hk), np.arange(wk), indexing="ij")
    d = np.hypot(yy - ry, xx - rx)
    w = s.maps / np.maximum(s.maps.sum(axis=(2, 3), keepdims=True), 1e-12)
    return float((w * d).sum(axis=(2, 3)).mean())


# the command-line functions that lived here, now in litvit.cli.viz: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.viz", ('cmd_attention',))
