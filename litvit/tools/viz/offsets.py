"""Where deformable token merging looks (paper Fig. 2; ``litvit viz offsets``).

Each DTM output point (p, q) samples four input points, one per kernel point (i, j) of the 2x2
kernel, at ``(2p + i + dy, 2q + j + dx)`` with the offsets its offset predictor produced
(docs/architecture.md, "Layers"). Starting from a point of the last stage and walking back through the three DTMs
gives 4 -> 16 -> 64 points on the stage-1 grid; a stage-1 grid point (y, x) covers image pixels
``[4y, 4y + 4)``, so it is drawn at ``((y + 0.5) * 4, (x + 0.5) * 4)``. With zero offsets the walk
lands on the regular 8x8 block of stage-1 points under the starting point: what regular 2x2
merging sees.

Fractional points. After the first step back the points are fractional (offsets are real
numbers). A fractional point (y, x) of a DTM's output grid is treated as the bilinear blend of the
integer output points around it: its kernel point (i, j) lands at ``(2y + i + dy, 2x + j + dx)``
with (dy, dx) the offset field bilinearly interpolated at (y, x) (clamped to the grid at its
border). For integer points this is exactly what the DTM computes; in between it interpolates the
sampling pattern of the neighbours, the same way the DTM's own bilinear sampling interpolates the
features they carry. Points outside the map are kept (the DTM samples zero there).

The authors' walk-back (``--walk-back official``, their ``show_offset.py``): at each step every
point is rounded to the nearest cell of the DTM's output grid (numpy's round, halves to even), a
point that then lies outside that grid is dropped with everything it would have led to, and the
offsets are read at that cell; the stage-1 points are dropped when their drawn pixel
``round(4 y + 2)`` leaves the image. Dropped points are NaN in the returned arrays and not drawn.
The bilinear walk-back (default) keeps the fractional positions and every point.
"""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ...ops.dtm import DeformableTokenMerging
from ...utils import moved_names
from .common import save_figure, save_npz

__all__ = ["WALK_BACKS", "collect_offsets", "sample_field", "trace_sampling_points", "regular_points", "grid_of_points",
           "to_pixels", "plot_sampling_points", "plot_offset_fields", "visualize_offsets"]


WALK_BACKS = ("bilinear", "official")


def collect_offsets(model: nn.Module, x: Tensor) -> List[Tuple[str, Tensor]]:
    """Run ``model`` on ``x`` and return every DTM's offsets, first DTM first.

    Reads the output of each ``DeformableTokenMerging``'s offset predictor (``dconv.conv_offset``)
    with a forward hook during one ordinary forward.

    Args:
        model (nn.Module): a LIT model with DTMs.
        x (Tensor[1, C, H, W]): one image.

    Returns:
        List of (module name, Tensor[8, h, w]) where (h, w) is that DTM's output grid; channel 2k is
        dy and 2k + 1 is dx of kernel point k = i * 2 + j.

    Raises:
        ValueError: the model has no DTM.
    """
    dtms = [(n, m) for n, m in model.named_modules() if isinstance(m, DeformableTokenMerging)]
    if not dtms:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise ValueError(f"model {name} has no deformable token merging (DTM): offsets need a DTM model "
                         f"such as lit_ti or lit_s")
    found = {}
    handles = [m.dconv.conv_offset.register_forward_hook(
        lambda mod, inp, out, key=n: found.__setitem__(key, out.detach()))
        for n, m in dtms]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [(n, found[n][0].float()) for n, _ in dtms]


def sample_field(field: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear interpolation of a field at real-valued grid points, clamped at the border.

    Args:
        field (Tensor[C, h, w]): values at integer grid points.
        y (Tensor[N]): row coordinates (grid units).
        x (Tensor[N]): column coordinates.

    Returns:
        Tensor[N, C].
    """
    C, h, w = field.shape
    y = y.clamp(0, h - 1)
    x = x.clamp(0, w - 1)
    y0 = y.floor().long().clamp(max=h - 1)
    x0 = x.floor().long().clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    wy = (y - y0.to(y.dtype)).unsqueeze(1)  # N, 1
    wx = (x - x0.to(x.dtype)).unsqueeze(1)
    f = field.permute(1, 2, 0)  # C, h, w -> h, w, C
    return ((1 - wy) * (1 - wx) * f[y0, x0] + (1 - wy) * wx * f[y0, x1]
            + wy * (1 - wx) * f[y1, x0] + wy * wx * f[y1, x1])


def trace_sampling_points(offsets: Sequence[Tensor], points: Tensor, walk_back: str = "bilinear") -> List[Tensor]:
    """Walk points of the last grid back through a chain of DTMs.

    Args:
        offsets (Sequence[Tensor[8, h_d, w_d]]): offset fields of the DTMs, first DTM first (the
            last one merges into the grid ``points`` live on).
        points (Tensor[N, 2]): (y, x) points on the last DTM's output grid.
        walk_back (str): ``"bilinear"`` (fractional points read the bilinearly interpolated field)
            or ``"official"`` (the authors': round to the nearest cell, drop points off the grid;
            dropped points are NaN), see the module docstring.

    Returns:
        List of Tensor[N, 4^s, 2] for s = 0 .. len(offsets): the points on each grid from the last
        back to the first DTM's input grid; entry ``[n, k]`` of step s descends from entry
        ``[n, k // 4]`` of step s - 1 through kernel point ``k % 4``.

    Examples::
        >>> pts = trace_sampling_points([torch.zeros(8, 4, 4)] * 3, torch.tensor([[0., 0.]]))
        >>> pts[-1].shape, pts[-1].amax(dim=(0, 1))
        (torch.Size([1, 64, 2]), tensor([7., 7.], dtype=torch.float64))
    """
    if walk_back not in WALK_BACKS:
        raise ValueError(f"walk_back must be one of {WALK_BACKS}, got {walk_back!r}")
    kernel = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]], dtype=torch.float64)  # k = i * 2 + j -> (i, j)
    cur = points.to(torch.float64).reshape(points.shape[0], 1, 2)  # N, 2 -> N, 1, 2
    steps = [cur]
    for field in reversed(list(offsets)):
        N, K, _ = cur.shape
        flat = cur.reshape(N * K, 2)  # N, K, 2 -> N*K, 2
        if walk_back == "official":
            h, w = field.shape[-2:]
            flat = torch.round(flat)  # halves to even, as np.round
            inside = (flat[:, 0] >= 0) & (flat[:, 0] <= h - 1) & (flat[:, 1] >= 0) & (flat[:, 1] <= w - 1)
            flat = torch.where(inside[:, None], flat, torch.full_like(flat, float("nan")))
            cell = flat.nan_to_num(0).long()
            off = field.to(torch.float64)[:, cell[:, 0], cell[:, 1]].T.reshape(N * K, 4, 2)  # 8, M -> M, 4, (dy, dx)
        else:
            off = sample_field(field.to(torch.float64), flat[:, 0], flat[:, 1]).reshape(N * K, 4, 2)  # dy, dx per k
        nxt = 2 * flat[:, None, :] + kernel[None] + off  # N*K, 4, 2 (NaN stays NaN)
        cur = nxt.reshape(N, K * 4, 2)  # N*K, 4, 2 -> N, 4K, 2 (parent major, kernel point minor)
        steps.append(cur)
    if walk_back == "official" and offsets:
        h1, w1 = 2 * offsets[0].shape[-2], 2 * offsets[0].shape[-1]  # the first DTM's input grid (stage 1)
        px = torch.round(cur * 4 + 2)
        off_image = (px[..., 0] < 0) | (px[..., 0] > 4 * h1 - 1) | (px[..., 1] < 0) | (px[..., 1] > 4 * w1 - 1)
        steps[-1] = torch.where(off_image[..., None], torch.full_like(cur, float("nan")), cur)
    return steps


def regular_points(points: Tensor, num_dtms: int = 3) -> Tensor:
    """Stage-1 points regular 2x2 merging reaches from ``points``: (N, 4^num_dtms, 2)."""
    fields = [torch.zeros(8, 1, 1, dtype=torch.float64)] * num_dtms
    return trace_sampling_points(fields, points)[-1]


def grid_of_points(h: int, w: int, n: int) -> Tensor:
    """An n x n (at most h x w) grid of evenly spread points of an h x w map: (n', 2) int coordinates."""
    ys = torch.linspace(0, h - 1, min(n, h) + 2)[1:-1].round() if n < h else torch.arange(h, dtype=torch.float32)
    xs = torch.linspace(0, w - 1, min(n, w) + 2)[1:-1].round() if n < w else torch.arange(w, dtype=torch.float32)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # n, n, 2 -> n*n, 2


def to_pixels(points: Tensor, stride: int) -> np.ndarray:
    """Grid points to image pixel coordinates (y, x): ``(point + 0.5) * stride``."""
    return ((points.to(torch.float64) + 0.5) * stride).numpy()


def _magnification(shift_px: float, target_px: float) -> float:
    """A round factor that makes a shift of ``shift_px`` about ``target_px`` long (at least 1)."""
    if shift_px <= 0 or shift_px >= target_px:
        return 1.0
    k = target_px / shift_px
    base = 10 ** np.floor(np.log10(k))
    return float(max(m * base for m in (1, 2, 5) if m * base <= k))


def plot_sampling_points(rgb: np.ndarray, starts: Tensor, learned: Tensor, regular: Tensor, title: str = ""):
    """Three panels over the image: the regular grid, the learned sampling locations, and the
    displacement from the one to the other (magnified when small, the factor in the title).

    Args:
        rgb (np.ndarray[H, W, 3]): the image.
        starts (Tensor[N, 2]): the last-stage points (grid units, stride 32).
        learned (Tensor[N, 64, 2]): stage-1 points reached through the DTMs.
        regular (Tensor[N, 64, 2]): stage-1 points of regular 2x2 merging.
    """
    import matplotlib.pyplot as plt
    H, W = rgb.shape[:2]
    panel = 4.5
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel * min(1.0, W / H) + 0.6, panel * min(1.0, H / W) + 0.7))
    colors = plt.cm.tab10(np.arange(len(starts)) % 10)
    start_px = to_pixels(starts, 32)
    reg_px = to_pixels(regular.reshape(-1, 2), 4).reshape(len(starts), -1, 2)  # N*64, 2 -> N, 64, 2
    learn_px = to_pixels(learned.reshape(-1, 2), 4).reshape(len(starts), -1, 2)
    shift = learn_px - reg_px
    dist = np.hypot(shift[..., 0], shift[..., 1])
    max_shift = float(np.nanmax(dist)) if np.isfinite(dist).any() else 0.0  # official walk-back: NaN = dropped
    k = _magnification(max_shift, 4.0)  # the largest shift drawn about one stage-1 cell (4 px) long
    size = 9 if len(starts) > 1 else 22
    for ax, pix, name in ((axes[0], reg_px, "regular 2x2 merging"), (axes[1], learn_px, "DTM (learned offsets)")):
        ax.imshow(rgb, extent=(0, W, H, 0))
        for n in range(len(starts)):
            ax.scatter(pix[n, :, 1], pix[n, :, 0], s=size, color=colors[n], edgecolors="white", linewidths=0.3)
        ax.set_title(name, fontsize=10)
    ax = axes[2]
    ax.imshow(rgb, extent=(0, W, H, 0))
    for n in range(len(starts)):
        ax.quiver(reg_px[n, :, 1], reg_px[n, :, 0], k * shift[n, :, 1], k * shift[n, :, 0], color=colors[n],
                  angles="xy", scale_units="xy", scale=1, width=0.005)
    ax.set_title(f"shift from the regular grid (max {max_shift:.2f} px" + (f", drawn x{k:g})" if k > 1 else ")"),
                 fontsize=10)
    for ax in axes:
        for n in range(len(starts)):
            ax.scatter(start_px[n, 1], start_px[n, 0], s=80, marker="*", color=colors[n], edgecolors="black",
                       linewidths=0.6)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_offset_fields(rgb: np.ndarray, offsets: Sequence[Tuple[str, Tensor]], title: str = ""):
    """One panel per DTM: the mean offset's magnitude (colour, in input-grid units) over the image
    and its direction (arrows, magnified when small; the factor is in the title), averaged over
    the four kernel points."""
    import matplotlib.pyplot as plt
    H, W = rgb.shape[:2]
    n = len(offsets)
    side = 3.6
    fig, axes = plt.subplots(1, n, figsize=(side * n * min(1.0, W / H) + 0.8 * n, side + 0.6), squeeze=False)
    for ax, (name, field) in zip(axes[0], offsets):
        h, w = field.shape[-2:]
        off = field.reshape(4, 2, h, w).mean(dim=0).numpy()  # 8, h, w -> (dy, dx), h, w
        mag = np.hypot(off[0], off[1])
        ax.imshow(rgb, extent=(0, W, H, 0))
        im = ax.imshow(mag, extent=(0, W, H, 0), cmap="magma", alpha=0.6, interpolation="nearest")
        cell_y, cell_x = H / h, W / w
        ys, xs = np.meshgrid((np.arange(h) + 0.5) * cell_y, (np.arange(w) + 0.5) * cell_x, indexing="ij")
        step = max(1, int(round(max(h, w) / 16)))
        # one grid unit of the DTM's input map is half an output cell; small offsets are magnified
        # so that the largest arrow is about 0.8 cell long
        k = _magnification(float(mag.max()) * min(cell_x, cell_y) / 2, 0.8 * min(cell_x, cell_y))
        ax.quiver(xs[::step, ::step], ys[::step, ::step], k * off[1][::step, ::step] * cell_x / 2,
                  k * off[0][::step, ::step] * cell_y / 2, color="cyan", angles="xy", scale_units="xy", scale=1,
                  width=0.006)
        ax.set_title(f"{name}\n{2 * h}x{2 * w} -> {h}x{w}, |offset| max {mag.max():.2f}"
                     + (f", arrows x{k:g}" if k > 1 else ""), fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def visualize_offsets(
        model: nn.Module,
        x: Tensor,
        rgb: np.ndarray,
        out_prefix: Path,
        points: Optional[Tensor] = None,
        grid: int = 3,
        title: str = "",
        walk_back: str = "bilinear",
) -> List[Path]:
    """Figure 2 for one image: sampling locations PNG, offset-field PNG and the raw numbers (.npz).

    Args:
        model (nn.Module): a LIT model with three DTMs.
        x (Tensor[1, C, H, W]): the normalised image.
        rgb (np.ndarray[H, W, 3]): the image to draw on.
        out_prefix (Path): files are ``<prefix>_offsets.png``, ``<prefix>_offset_fields.png``,
            ``<prefix>_offsets.npz``.
        points (Tensor[N, 2], optional): last-stage points (y, x); default an evenly spread grid.
        grid (int): points per side of the default grid.
        walk_back (str): ``"bilinear"`` or ``"official"`` (:func:`trace_sampling_points`).

    Returns:
        The paths written.
    """
    offsets = collect_offsets(model, x)
    h, w = offsets[-1][1].shape[-2:]
    if points is None:
        points = grid_of_points(h, w, grid)
    points = points.to(torch.float64)
    bad = [(int(p[0]), int(p[1])) for p in points if not (0 <= p[0] < h and 0 <= p[1] < w)]
    if bad:
        raise ValueError(f"--points {bad} are outside the last stage's {h}x{w} grid (rows 0..{h - 1}, cols 0..{w - 1})")
    steps = trace_sampling_points([f for _, f in offsets], points, walk_back)
    regular = regular_points(points, len(offsets))
    out_prefix = Path(out_prefix)
    written = [
        save_figure(plot_sampling_points(rgb, points, steps[-1], regular, title), Path(f"{out_prefix}_offsets.png")),
        save_figure(plot_offset_fields(rgb, offsets, title), Path(f"{out_prefix}_offset_fields.png")),
    ]
    arrays = {"start_points": points.numpy(), "regular_points": regular.numpy()}
    for s, pts in enumerate(steps[1:], 1):
        arrays[f"points_step{s}"] = pts.numpy()
    for d, (name, field) in enumerate(offsets, 1):
        arrays[f"offsets_dtm{d}"] = field.numpy()
    written.append(save_npz(arrays, Path(f"{out_prefix}_offsets.npz")))
    return written


# the command-line functions that lived here, now in litvit.cli.viz: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.viz", ('cmd_offsets',))
