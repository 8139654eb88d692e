"""Deformable token merging (DTM), the token-merging module of LIT.

From *Less is More: Pay Less Attention in Vision Transformers* (Pan et al., AAAI 2022,
arXiv 2105.14217): between stages, a 2x2 stride-2 deformable convolution (DCN v1) whose sampling
offsets are predicted from the input merges each 2x2 neighbourhood of tokens, followed by
BatchNorm and GELU.

The deformable convolution is always kernel 2, stride 2, no padding, dilation 1, one offset group
and no modulation mask. That makes it much simpler than a general deformable conv:

* ``impl="fast"`` (default): the four sampling points of every output are gathered with one
  bilinear ``F.grid_sample`` and then contracted with the reshaped weight in one matrix multiply.
* ``impl="torchvision"``: ``torchvision.ops.deform_conv2d``, the general op, kept as the reference
  the fast path is tested against (it computes what the authors' CUDA extension computes).

Offset layout (as in the official checkpoints): for kernel point ``k = i * 2 + j`` (row-major over
the 2x2 kernel) channel ``2k`` is the shift along y (rows) and ``2k + 1`` along x (columns). Output
``(p, q)`` samples input point ``(2p + i + dy, 2q + j + dx)`` bilinearly; points with ``y <= -1``,
``y >= H``, ``x <= -1`` or ``x >= W`` sample zero and corners outside the map contribute zero.
"""
import math
from collections import OrderedDict
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from timm.models import register_notrace_module
from torch import Tensor, nn

from .tracing import autocast_dtype, autocast_off, is_tracing

__all__ = ["deform_merge2x2", "DeformMerge2x2", "DeformableTokenMerging", "DTM_IMPLS"]

DTM_IMPLS = ("fast", "torchvision")


def _check_shapes(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[int, int]:
    if input.dim() != 4:
        raise ValueError(f"input must be a 4-D tensor (B, C, H, W), got shape {tuple(input.shape)}")
    B, C, H, W = input.shape
    if H < 2 or W < 2:
        raise ValueError(f"input height and width must be at least 2 for a 2x2 merge, got {H}x{W}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (C, 2, 2):
        raise ValueError(f"weight must have shape (C_out, {C}, 2, 2) for an input of {C} channels, "
                         f"got {tuple(weight.shape)}")
    Ho, Wo = H // 2, W // 2
    if tuple(offset.shape) != (B, 8, Ho, Wo):
        raise ValueError(f"offset must have shape ({B}, 8, {Ho}, {Wo}) for an input of shape {tuple(input.shape)}, "
                         f"got {tuple(offset.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return Ho, Wo


_BASE_CACHE: "OrderedDict[Tuple[int, int, str, torch.dtype], Tuple[Tensor, Tensor]]" = OrderedDict()
_BASE_CACHE_SIZE = 32  # grids kept (least recently used dropped): a few sizes per device and dtype


def _base_coords(Ho: int, Wo: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Pixel coordinates ``(x, y)`` of the regular 2x2 grid, each (1, 4, Ho, Wo): ``(2q + j, 2p + i)``
    for kernel point ``k = i * 2 + j`` of output ``(p, q)``.

    Built once per size, device and dtype and cached, the last ``_BASE_CACHE_SIZE`` of them (outside
    autograd and inference mode, so a tensor cached under ``torch.inference_mode`` still serves
    training). Under tracing (torch.compile, ONNX export) it is built inline so that it becomes part
    of the graph.
    """
    if is_tracing():
        return _build_base_coords(Ho, Wo, device, dtype)
    key = (Ho, Wo, str(device), dtype)
    base = _BASE_CACHE.get(key)
    if base is None:
        with torch.inference_mode(False), torch.no_grad():
            base = _BASE_CACHE[key] = _build_base_coords(Ho, Wo, device, dtype)
        while len(_BASE_CACHE) > _BASE_CACHE_SIZE:
            _BASE_CACHE.popitem(last=False)
    else:
        _BASE_CACHE.move_to_end(key)
    return base


def _build_base_coords(Ho: int, Wo: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    k = torch.arange(4, device=device)
    ys = (2 * torch.arange(Ho, device=device)).view(1, 1, Ho, 1) + (k // 2).view(1, 4, 1, 1)  # 1, 4, Ho, 1
    xs = (2 * torch.arange(Wo, device=device)).view(1, 1, 1, Wo) + (k % 2).view(1, 4, 1, 1)  # 1, 4, 1, Wo
    return xs.to(dtype).expand(1, 4, Ho, Wo), ys.to(dtype).expand(1, 4, Ho, Wo)


def _sample_grid(offset: Tensor, H: int, W: int) -> Tensor:
    """Normalised ``grid_sample`` grid for the four kernel points of every output.

    Args:
        offset (Tensor[B, 8, Ho, Wo]): (dy, dx) per kernel point, float32 or float64.
        H (int): input height.
        W (int): input width.

    Returns:
        Tensor[B, 4 * Ho, Wo, 2]: (x, y) in ``align_corners=False`` coordinates, kernel point major.
    """
    B, _, Ho, Wo = offset.shape
    off = offset.reshape(B, 4, 2, Ho, Wo)  # B, 8, Ho, Wo -> B, k, (dy, dx), Ho, Wo
    xs, ys = _base_coords(Ho, Wo, offset.device, offset.dtype)
    # pixel coordinate -> [-1, 1] with align_corners=False: pixel i spans [i - 0.5, i + 0.5]
    gx = (xs + off[:, :, 1]) * (2 / W) + (1 / W - 1)  # B, 4, Ho, Wo
    gy = (ys + off[:, :, 0]) * (2 / H) + (1 / H - 1)
    return torch.stack((gx, gy), dim=-1).view(B, 4 * Ho, Wo, 2)  # B, 4, Ho, Wo, 2 -> B, 4*Ho, Wo, 2


def _out_dtype(input: Tensor) -> torch.dtype:
    """The dtype a convolution would answer in: the autocast dtype where autocast is on."""
    return autocast_dtype(input.device.type) or input.dtype


def _merge_fast(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    B, C, H, W = input.shape
    C_out = weight.shape[0]
    Ho, Wo = H // 2, W // 2
    dtype = _out_dtype(input)
    # Sampling coordinates need float32 at least: bf16/fp16 cannot hold a pixel position to < 0.1 px.
    work = torch.float64 if input.dtype == torch.float64 else torch.float32
    with autocast_off(input.device.type):
        grid = _sample_grid(offset.to(work), H, W)
        # one bilinear gather for all four kernel points; zeros padding = corners outside contribute 0
        sampled = F.grid_sample(input.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # B, C, 4*Ho, Wo -> B, C*4, Ho*Wo (channel-major, kernel point minor: the order of weight.flatten(1))
        cols = sampled.view(B, C * 4, Ho * Wo).to(dtype)
        w = weight.reshape(C_out, C * 4).to(dtype)
        b = bias.to(dtype) if bias is not None else None
        # One GEMM, token-major: B, N, C*4 @ C*4, C_out. The tokens are what the model wants next:
        # the result is a channels-last view of them, no copy.
        colsT = cols.transpose(1, 2)  # B, C*4, N -> B, N, C*4
        if torch.is_grad_enabled():
            # one 2-D GEMM (bias fused) on a token-major copy of the columns: its backward is two
            # plain GEMMs, where a batched product with a broadcast weight would build B partial
            # weight gradients and sum them
            cols2d = colsT.reshape(B * Ho * Wo, C * 4)  # B, N, C*4 -> B*N, C*4 (a copy)
            out = cols2d @ w.t() if b is None else torch.addmm(b, cols2d, w.t())  # B*N, C_out
        elif b is None:
            out = torch.matmul(colsT, w.t())
        else:
            # inference: batched GEMM reading the transposed columns in place (no copy), bias fused;
            # measured faster than the channel-major product for all three LIT-Ti shapes
            out = torch.baddbmm(b.view(1, 1, C_out), colsT, w.t().expand(B, -1, -1))  # B, N, C_out
    return out.view(B, Ho, Wo, C_out).permute(0, 3, 1, 2)  # B, Ho, Wo, C_out -> B, C_out, Ho, Wo (channels-last)


def _merge_torchvision(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    dtype = _out_dtype(input)
    # torchvision's CPU kernel rejects bfloat16/float16: compute those in float32.
    work = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    with autocast_off(input.device.type):
        out = torchvision.ops.deform_conv2d(
            input.to(work), offset.to(work), weight.to(work), None if bias is None else bias.to(work), stride=2)
    return out.to(dtype)


def deform_merge2x2(
        input: Tensor,
        offset: Tensor,
        weight: Tensor,
        bias: Optional[Tensor] = None,
        impl: str = "fast",
) -> Tensor:
    """Deformable 2x2 stride-2 convolution: the merge of deformable token merging.

    Equal to ``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=2)``.

    Args:
        input (Tensor[B, C, H, W]): input map; odd H or W drop the last row/column as a conv would.
        offset (Tensor[B, 8, H // 2, W // 2]): sampling offsets, (dy, dx) per kernel point k = i * 2 + j.
        weight (Tensor[C_out, C, 2, 2]): convolution weight.
        bias (Tensor[C_out], optional): convolution bias.
        impl (str): ``"fast"`` (grid_sample + one matmul) or ``"torchvision"`` (reference op).

    Returns:
        Tensor[B, C_out, H // 2, W // 2]: merged map. Under autocast it has the autocast dtype.

    Examples::
        >>> x = torch.randn(2, 16, 8, 8)
        >>> deform_merge2x2(x, torch.zeros(2, 8, 4, 4), torch.randn(32, 16, 2, 2)).shape
        torch.Size([2, 32, 4, 4])
    """
    if impl not in DTM_IMPLS:
        raise ValueError(f"impl must be one of {DTM_IMPLS}, got {impl!r}")
    Ho, Wo = _check_shapes(input, offset, weight, bias)
    if input.shape[0] == 0:
        out = input.new_zeros((0, weight.shape[0], Ho, Wo), dtype=_out_dtype(input))
        # keep the result attached to the graph so backward yields zero gradients, not an error
        return out + 0 * weight.sum().to(out.dtype) + 0 * offset.sum().to(out.dtype)
    if impl == "fast":
        return _merge_fast(input, offset, weight, bias)
    return _merge_torchvision(input, offset, weight, bias)


class DeformMerge2x2(nn.Module):
    """Deformable 2x2 stride-2 convolution with its own offset predictor.

    Holds ``weight``/``bias`` (initialised like ``nn.Conv2d``) and ``conv_offset``, a Conv2d(C, 8, 2,
    stride 2) whose weight and bias start at zero, so a new module merges the regular 2x2 grid.
    Parameter names follow the official checkpoints (``dconv.weight``, ``dconv.conv_offset.weight``).

    Args:
        in_chans (int): input channels C.
        out_chans (int): output channels C_out.
        bias (bool): add a learned bias.
        impl (str): ``"fast"`` or ``"torchvision"``, see :func:`deform_merge2x2`.
        device (torch.device, optional): where the parameters are created (``"meta"`` works).
        dtype (torch.dtype, optional): dtype of the parameters.

    Examples::
        >>> DeformMerge2x2(16, 32)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(
            self,
            in_chans: int,
            out_chans: int,
            bias: bool = True,
            impl: str = "fast",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if impl not in DTM_IMPLS:
            raise ValueError(f"impl must be one of {DTM_IMPLS}, got {impl!r}")
        dd = dict(device=device, dtype=dtype)
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, 2, 2, **dd))
        self.bias = nn.Parameter(torch.empty(out_chans, **dd)) if bias else None
        self.conv_offset = nn.Conv2d(in_chans, 8, kernel_size=2, stride=2, bias=True, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the initialisation of nn.Conv2d (kaiming-uniform, a = sqrt(5)) for the merge weight and bias
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_chans * 4)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor, return_offsets: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if self.impl == "fast":
            # the fast path gathers channels-last faster (and the offset conv runs faster on it); in
            # LIT the input is a token-major view already, so this is free there
            x = x.contiguous(memory_format=torch.channels_last)
        offset = self.conv_offset(x)
        out = deform_merge2x2(x, offset, self.weight, self.bias, impl=self.impl)
        return (out, offset) if return_offsets else out

    def extra_repr(self) -> str:
        return f"{self.in_chans}, {self.out_chans}, kernel_size=2, stride=2, impl={self.impl!r}"


@register_notrace_module  # torch.fx: one leaf (its shape checks are Python control flow)
class DeformableTokenMerging(nn.Module):
    """DTM: deformable 2x2 merge -> BatchNorm2d -> GELU, on a (B, C, H, W) map.

    Submodule names follow the official checkpoints: ``dconv`` and ``norm_layer``.

    Args:
        in_chans (int): input channels.
        out_chans (int): output channels.
        norm_layer (Callable[..., nn.Module]): normalisation over the merged map (BatchNorm2d).
        act_layer (Callable[..., nn.Module]): activation (exact GELU).
        impl (str): ``"fast"`` or ``"torchvision"``, see :func:`deform_merge2x2`.
        device (torch.device, optional): where the parameters are created.
        dtype (torch.dtype, optional): dtype of the parameters.

    Examples::
        >>> DeformableTokenMerging(64, 128)(torch.randn(2, 64, 56, 56)).shape
        torch.Size([2, 128, 28, 28])
    """

    def __init__(
            self,
            in_chans: int,
            out_chans: int,
            norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            impl: str = "fast",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dconv = DeformMerge2x2(in_chans, out_chans, bias=True, impl=impl, **dd)
        self.norm_layer = norm_layer(out_chans, **dd)
        self.act = act_layer()

    @property
    def impl(self) -> str:
        return self.dconv.impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in DTM_IMPLS:
            raise ValueError(f"impl must be one of {DTM_IMPLS}, got {value!r}")
        self.dconv.impl = value

    def forward(self, x: Tensor, return_offsets: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        x, offset = self.dconv(x, return_offsets=True)
        x = self.act(self.norm_layer(x))
        return (x, offset) if return_offsets else x
