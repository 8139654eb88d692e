"""Position embeddings of LIT: resizing learned tables to another grid, Swin's relative index.

Shared by the model (:mod:`litvit.models.lit`, run-time resizing for other input sizes) and the
checkpoint conversion (:mod:`litvit.models.convert`, fitting an official table to a model built
at another size), as timm shares ``resample_abs_pos_embed`` from ``timm.layers``.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from timm.models import register_notrace_function

from ..ops.tracing import is_exporting

__all__ = ["resize_abs_pos_embed", "resize_rel_pos_table", "relative_position_index", "gather_rel_pos_bias"]


@register_notrace_function  # torch.fx: called with the real sizes at run time
def resize_abs_pos_embed(
        pos_embed: Tensor,
        old_size: Tuple[int, int],
        new_size: Tuple[int, int],
        num_prefix_tokens: int = 0,
        interpolation: str = "bicubic",
) -> Tensor:
    """Resize a learned absolute position embedding to another grid.

    Args:
        pos_embed (Tensor[1, P + H * W, C]): embedding with ``P = num_prefix_tokens`` leading tokens.
        old_size (Tuple[int, int]): the grid (H, W) it was learned for.
        new_size (Tuple[int, int]): the target grid (H', W').
        num_prefix_tokens (int): leading tokens (class token) kept as they are.
        interpolation (str): ``"bicubic"`` (loading a checkpoint at another size, timm's way) or
            ``"bilinear"`` (what the authors' dense LIT-Ti backbones do on every forward);
            align_corners False either way.

    Returns:
        Tensor[1, P + H' * W', C].

    Under an exporter the resize always runs (sizes are symbolic; it is exact at equal sizes).
    """
    if not is_exporting() and tuple(old_size) == tuple(new_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    C = grid.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], C).permute(0, 3, 1, 2)  # 1, H*W, C -> 1, C, H, W
    grid = F.interpolate(grid.float(), size=new_size, mode=interpolation, align_corners=False).to(pos_embed.dtype)
    grid = grid.flatten(2).transpose(1, 2)  # 1, C, H', W' -> 1, H'*W', C
    return torch.cat((prefix, grid), dim=1)


def resize_rel_pos_table(table: Tensor, old_size: Tuple[int, int], new_size: Tuple[int, int]) -> Tensor:
    """Resize a relative position bias table bicubically, as a (heads, 2H-1, 2W-1) image.

    Args:
        table (Tensor[(2H-1)*(2W-1), heads]): table learned for an H x W map.
        old_size (Tuple[int, int]): (H, W).
        new_size (Tuple[int, int]): (H', W').

    Returns:
        Tensor[(2H'-1)*(2W'-1), heads].
    """
    if not is_exporting() and tuple(old_size) == tuple(new_size):
        return table
    heads = table.shape[1]
    src = (2 * old_size[0] - 1, 2 * old_size[1] - 1)
    dst = (2 * new_size[0] - 1, 2 * new_size[1] - 1)
    img = table.transpose(0, 1).reshape(1, heads, src[0], src[1])  # L, heads -> 1, heads, 2H-1, 2W-1
    img = F.interpolate(img.float(), size=dst, mode="bicubic", align_corners=False).to(table.dtype)
    return img.reshape(heads, dst[0] * dst[1]).transpose(0, 1)  # 1, heads, 2H'-1, 2W'-1 -> L', heads


def relative_position_index(H: int, W: int, device: Optional[torch.device] = None) -> Tensor:
    """Swin's relative position index for a whole H x W map.

    Entry ``[n, m]`` is ``(dy + H - 1) * (2W - 1) + (dx + W - 1)`` for the displacement
    ``(dy, dx)`` of query token n minus key token m (tokens in row-major order).

    Returns:
        Tensor[H*W, H*W] (int64).
    """
    coords = torch.stack(torch.meshgrid(
        torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")).flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + H - 1) * (2 * W - 1) + (rel[1] + W - 1)


@register_notrace_function  # torch.fx: called with the real sizes at run time
def gather_rel_pos_bias(
        table: Tensor,
        table_size: Tuple[int, int],
        feat_size: Tuple[int, int],
        index: Optional[Tensor] = None,
) -> Tensor:
    """The relative position bias of every query/key pair of an H x W map.

    Args:
        table (Tensor[(2h-1)*(2w-1), heads]): table learned for an h x w map (``table_size``).
        table_size (Tuple[int, int]): (h, w).
        feat_size (Tuple[int, int]): the map (H, W); the table is resized when it differs.
        index (Tensor[H*W*H*W], optional): ``relative_position_index(H, W).flatten()`` if already built.

    Returns:
        Tensor[heads, H*W, H*W].
    """
    H, W = feat_size
    table = resize_rel_pos_table(table, table_size, (H, W))
    if index is None:
        index = relative_position_index(H, W, device=table.device).flatten()
    N = H * W
    bias = table[index].view(N, N, -1)  # N*N, heads -> N, N, heads
    return bias.permute(2, 0, 1).contiguous()  # N, N, heads -> heads, N, N
