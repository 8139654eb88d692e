"""LIT: Less attention vIsion Transformer.

*Less is More: Pay Less Attention in Vision Transformers*, Zizheng Pan, Bohan Zhuang, Haoyu He,
Jing Liu, Jianfei Cai. AAAI 2022. https://arxiv.org/abs/2105.14217

A four-stage hierarchical transformer whose two early stages hold MLP blocks only and whose two
late stages hold full multi-head self-attention, with deformable token merging (DTM) between
stages. One class, :class:`LIT`, expresses both released families as configuration:

* LIT-Ti (PVT-S based): learned absolute position embedding per stage, a class token in stage 4,
  LayerNorm eps 1e-6, classification from the class token.
* LIT-S/M/B (Swin based): a learned relative position bias over the whole map (a Swin window as
  large as the map) in the attention stages, LayerNorm eps 1e-5, average-pooled head.

The paper's ablation models (PVT-S with spatial-reduction attention, PVT-S with full MSA in every
stage, LIT without DTM) are configurations of the same class.

Weights of the official release load through :func:`litvit.models.convert.checkpoint_filter_fn`;
timm's ``pretrained=True`` reads the file with litvit's reader (:meth:`LIT.load_pretrained`).
"""
import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models._pretrained import PretrainedCfg
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_function

from ..ops import fused_mlp
from ..ops.dtm import DTM_IMPLS, DeformableTokenMerging
from ..ops.tracing import autocast_dtype, is_exporting, is_fx_proxy, is_tracing
from .convert import checkpoint_filter_fn, load_weights
from .pos_embed import (gather_rel_pos_bias, relative_position_index, resize_abs_pos_embed,  # noqa: F401
                        resize_rel_pos_table)  # re-exported: litvit.models.lit.resize_* are old import paths

__all__ = ["LIT", "StagedModel", "Attention", "Block", "LITStage", "PatchEmbed", "ConvMerge", "PatchMerging", "MIXERS",
           "register_mixer", "build_mixer", "mixer_names"]

ATTN_TYPES = ("none", "msa", "sra")  # LIT's own mixers (any registered one builds: MIXERS, register_mixer)
MERGE_TYPES = ("dtm", "conv", "swin")
POS_EMBED_TYPES = ("abs", "rel", "none")

_int_or_tuple_2 = Union[int, Tuple[int, int]]


def _to_2tuple(x: _int_or_tuple_2) -> Tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


@register_notrace_function  # torch.fx: checked with the real shape at run time
def check_image_batch(x: Tensor, in_chans: int, reduction: int) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, in_chans, H, W) with H and W multiples of ``reduction``."""
    if x.dim() != 4:
        raise ValueError(f"Expected a 4-D image batch (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if C != in_chans:
        raise ValueError(f"Expected {in_chans} input channels, got {C} (input shape {tuple(x.shape)})")
    if H % reduction or W % reduction:
        raise ValueError(f"Input height ({H}) and width ({W}) must be multiples of {reduction}; "
                         f"pad or resize the image (e.g. to {math.ceil(H / reduction) * reduction}x"
                         f"{math.ceil(W / reduction) * reduction})")


def _param_cache(
        cache: Dict[tuple, Tensor],
        key: tuple,
        params: Sequence[Tensor],
        build: Callable[[], Tensor],
) -> Tensor:
    """Memoise ``build()`` derived from ``params`` when no gradient is needed.

    The key includes every parameter's ``_version`` (bumped by any in-place update: optimiser steps,
    ``load_state_dict``, ``copy_``) and identity, so a stale entry is never served; an old version's
    entry is dropped when a new one is stored. With gradients enabled, or while tracing, ``build()``
    runs every call so autograd (or the traced graph) sees the computation.
    """
    if torch.is_grad_enabled() or is_tracing():
        return build()
    full = key + tuple((id(p), p._version) for p in params)
    hit = cache.get(full)
    if hit is None:
        for k in [k for k in cache if k[:len(key)] == key]:
            del cache[k]
        hit = _remember(cache, full, build())
    return hit


_CACHED_SIZES = 4  # entries kept per module cache: the last few input sizes (train, eval, a test-time size)


def _remember(cache: Dict, key, value: Tensor, limit: int = _CACHED_SIZES) -> Tensor:
    """Store ``cache[key] = value``, dropping the oldest entries beyond ``limit`` (dicts keep insertion
    order), so a model run at many sizes holds a bounded amount of derived tensors."""
    cache[key] = value
    while len(cache) > limit:
        del cache[next(iter(cache))]
    return value


_MAX_CACHED_BIAS = 4 * 2 ** 20  # entries of a cached relative-position bias (heads * N * N)


class PatchEmbed(nn.Module):
    """Image to tokens: Conv2d(k=s=patch_size) then LayerNorm.

    Args:
        patch_size (int): kernel and stride.
        in_chans (int): image channels.
        embed_dim (int): token width.
        norm_layer (Callable[..., nn.Module]): normalisation over tokens.
        device (torch.device, optional): where the parameters are created.
        dtype (torch.dtype, optional): dtype of the parameters.
    """

    def __init__(
            self,
            patch_size: int = 4,
            in_chans: int = 3,
            embed_dim: int = 64,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, **dd)
        self.norm = norm_layer(embed_dim, **dd)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)
        feat_size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # B, C, H, W -> B, N, C
        return self.norm(x), feat_size


class DTMDownsample(nn.Module):
    """Deformable token merging on tokens: (B, H*W, C) -> (B, H/2*W/2, C')."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            impl: str = "fast",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        self.dtm = DeformableTokenMerging(dim, out_dim, impl=impl, device=device, dtype=dtype)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        H, W = feat_size
        B, N, C = x.shape
        if self.dtm.impl == "fast":
            # token-major in and out: the map is a channels-last view of the tokens and the fast
            # merge answers channels-last, so no transpose copy on either side
            x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)  # B, N, C -> B, C, H, W (channels-last view)
            x = self.dtm(x)
            feat_size = (x.shape[2], x.shape[3])
            return x.permute(0, 2, 3, 1).flatten(1, 2), feat_size  # B, C', H', W' -> B, N', C'
        # the reference path: the original code's permute/copy to a contiguous map and back
        x = x.transpose(1, 2).reshape(B, C, H, W)  # B, N, C -> B, C, H, W
        x = self.dtm(x)
        feat_size = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), feat_size  # B, C', H', W' -> B, N', C'


class ConvMerge(nn.Module):
    """Regular patch merging as PVT does it: Conv2d(C, C', 2, stride 2) then LayerNorm."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Conv2d(dim, out_dim, kernel_size=2, stride=2, **dd)
        self.norm = norm_layer(out_dim, **dd)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        H, W = feat_size
        x = self.proj(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W))  # B, N, C -> B, C, H, W -> B, C', H', W'
        feat_size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), feat_size  # B, C', H', W' -> B, N', C'


class PatchMerging(nn.Module):
    """Regular patch merging as Swin does it: concatenate 2x2 neighbours, LayerNorm(4C), Linear(4C, C')."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = norm_layer(4 * dim, **dd)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, **dd)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        H, W = feat_size
        B, _, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C)  # B, N, C -> B, H/2, 2(i), W/2, 2(j), C
        x = x.permute(0, 1, 3, 4, 2, 5).flatten(3)  # -> B, H/2, W/2, 4C in Swin's (j, i) order
        x = self.reduction(self.norm(x))
        return x.flatten(1, 2), (H // 2, W // 2)  # B, H/2, W/2, C' -> B, N', C'


# --- token mixers ----------------------------------------------------------------------------------
# attn_type -> (mixer class or None for an MLP block, options it is always built with, the families
# whose stages take it: None for every family)
MIXERS: Dict[str, Tuple[Optional[type], Dict[str, Any], Optional[Tuple[str, ...]]]] = {}


def register_mixer(name: str, families: Optional[Sequence[str]] = None,
                   **fixed: Any) -> Callable[[Optional[type]], Optional[type]]:
    """Register a token mixer class under ``name`` (an ``attn_type`` of LIT and LITv2 stages), as a
    class decorator: ``@register_mixer("hilo", families=("litv2",))``. ``families``: the model
    families (``"lit"``, ``"litv2"``) whose stages take it; None: every family. Registering None
    makes ``name`` a block without mixer (LIT's MLP block, LITv2's ConvFFN block; no ``norm1``).

    A mixer is built as ``cls(dim, num_heads, **options)`` with the options of its block that its
    ``__init__`` names (``qkv_bias``, ``attn_drop``, ``proj_drop``, ``rel_pos_size``, ``sr_ratio``,
    ``num_prefix_tokens``, ``window_size``, ``alpha``, ``fused_attn``, ``device``, ``dtype``), then
    ``fixed`` on top; its forward maps ``(x: Tensor[B, N, C], feat_size: (H, W))`` to
    ``Tensor[B, N, C]``.

    Examples::

        >>> mixer = build_mixer("sra", 64, 2, sr_ratio=4, window_size=2)   # window_size: not Attention's
        >>> type(mixer).__name__, mixer.sr_ratio, build_mixer("none", 64, 2), mixer_names("litv2")
        ('Attention', 4, None, ('none', 'hilo'))
    """
    def register(cls: Optional[type]) -> Optional[type]:
        MIXERS[name] = (cls, dict(fixed), tuple(families) if families is not None else None)
        return cls
    return register


def mixer_names(family: Optional[str] = None) -> Tuple[str, ...]:
    """The registered ``attn_type`` names (that stages of ``family`` take)."""
    return tuple(n for n, (_, _, fams) in MIXERS.items() if family is None or fams is None or family in fams)


def build_mixer(name: str, dim: int, num_heads: int, family: Optional[str] = None, **options: Any) -> Optional[nn.Module]:
    """The mixer registered as ``name`` (:func:`register_mixer`) for tokens of width ``dim``; None
    for a block without mixer. ValueError naming the registered ones (of ``family``) otherwise."""
    if name not in mixer_names(family):
        raise ValueError(f"attn_type must be one of {mixer_names(family)}, got {name!r}")
    cls, fixed, _ = MIXERS[name]
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters
    any_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if any_kwargs or k in params}
    kwargs.update(fixed)
    return cls(dim, num_heads, **kwargs)


register_mixer("none")(None)


@register_mixer("sra", families=("lit",))
@register_mixer("msa", families=("lit",), sr_ratio=1)
class Attention(nn.Module):
    """Multi-head self-attention over all tokens, with an optional relative position bias or
    spatial-reduction keys/values.

    Two paths compute the same thing: a fused one (``F.scaled_dot_product_attention``, the relative
    bias passed as ``attn_mask``) and a plain one (explicit softmax). Attention probabilities of the
    plain path pass through ``self.attn_probs`` (an identity module) so that forward hooks can read
    them; visualisation switches the module to the plain path.

    Args:
        dim (int): token width.
        num_heads (int): heads; ``dim`` must be divisible by it.
        qkv_bias (bool): bias in the q, k, v projections.
        attn_drop (float): dropout on attention probabilities.
        proj_drop (float): dropout after the output projection.
        rel_pos_size (Tuple[int, int], optional): learn a relative position bias table for an
            (H, W) map (Swin style, whole map as the window); resized bicubically for other maps.
        sr_ratio (int): spatial-reduction ratio of keys/values (PVT's SRA); 1 for full attention.
        num_prefix_tokens (int): leading non-spatial tokens (class token), only with ``sr_ratio`` 1
            or kept out of the reduction.
        fused_attn (bool): use the fused path.
        norm_layer (Callable[..., nn.Module]): normalisation of the reduced keys/values (SRA).
        device (torch.device, optional): where the parameters are created.
        dtype (torch.dtype, optional): dtype of the parameters.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            rel_pos_size: Optional[Tuple[int, int]] = None,
            sr_ratio: int = 1,
            num_prefix_tokens: int = 0,
            fused_attn: bool = True,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if rel_pos_size is not None and num_prefix_tokens:
            raise ValueError("a relative position bias cannot be combined with a class token")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.sr_ratio = sr_ratio
        self.num_prefix_tokens = num_prefix_tokens
        self.fused_attn = fused_attn
        if sr_ratio > 1:
            self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = norm_layer(dim, **dd)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.attn_probs = nn.Identity()
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_size = _to_2tuple(rel_pos_size) if rel_pos_size is not None else None
        if self.rel_pos_size is not None:
            H, W = self.rel_pos_size
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * H - 1) * (2 * W - 1), num_heads, **dd))
        else:
            self.relative_position_bias_table = None
        self._rel_index_cache: Dict[Tuple[int, int, str], Tensor] = {}
        self._rel_bias_cache: Dict[tuple, Tensor] = {}

    def _rel_index(self, H: int, W: int, device: torch.device) -> Tensor:
        if is_tracing():  # part of the traced graph (compile, export), not a captured constant
            return relative_position_index(H, W, device=device).flatten()
        key = (H, W, str(device))
        index = self._rel_index_cache.get(key)
        if index is None:
            with torch.inference_mode(False):  # usable outside inference mode later
                index = relative_position_index(H, W, device=device).flatten()
            _remember(self._rel_index_cache, key, index)
        return index

    def _build_rel_pos_bias(self, H: int, W: int) -> Tensor:
        table = self.relative_position_bias_table
        return gather_rel_pos_bias(table, self.rel_pos_size, (H, W), self._rel_index(H, W, table.device))

    def rel_pos_bias(self, feat_size: Tuple[int, int]) -> Tensor:
        """The relative position bias for an H x W map, (heads, N, N).

        Without gradients (eval, inference) the gathered bias is cached for the last few sizes (each
        up to 4M entries, 16 MB in float32, per module) and recomputed when the table changes (its ``_version``);
        with gradients, or for larger maps, it is rebuilt every call.
        """
        H, W = feat_size
        table = self.relative_position_bias_table
        if is_fx_proxy(H, W):  # torch.fx: one call node, run with the real sizes
            return gather_rel_pos_bias(table, self.rel_pos_size, feat_size)
        if (H * W) ** 2 * self.num_heads > _MAX_CACHED_BIAS:  # large maps: one bias per block would not fit
            return self._build_rel_pos_bias(H, W)
        return _param_cache(self._rel_bias_cache, (H, W, str(table.device), table.dtype), (table,),
                            lambda: self._build_rel_pos_bias(H, W))

    def _qkv(self, x: Tensor, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape
        if self.sr_ratio > 1:
            q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # B, heads, N, hd
            p = self.num_prefix_tokens
            H, W = feat_size
            x_ = x[:, p:].transpose(1, 2).reshape(B, C, H, W)  # B, N, C -> B, C, H, W
            x_ = self.sr(x_).flatten(2).transpose(1, 2)  # B, C, H/r, W/r -> B, M, C
            x_ = self.norm(torch.cat((x[:, :p], x_), dim=1))
            kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return q, kv[0], kv[1]  # B, heads, M, hd
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # 3, B, heads, N, hd -> B, heads, N, hd each

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x, feat_size)
        bias = self.rel_pos_bias(feat_size).unsqueeze(0) if self.relative_position_bias_table is not None else None
        if self.fused_attn:
            if bias is not None:
                bias = bias.to(q.dtype)
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # B, heads, N, M
            if bias is not None:
                attn = attn + bias
            attn = self.attn_probs(attn.softmax(dim=-1))
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # B, heads, N, hd -> B, N, C
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """An MLP block (``attn_type="none"``) or a transformer block.

    MLP block: ``x + DropPath(MLP(LN(x)))``; its norm is ``norm2`` as in the official checkpoints.
    Transformer block: ``x + DropPath(MSA(LN1(x)))`` then ``x + DropPath(MLP(LN2(x)))``.

    In CPU inference the MLP half may run as oneDNN's fused linear+GELU / linear+residual
    (:mod:`litvit.ops.fused_mlp`), where the probe says this CPU supports it in the dtype at hand;
    ``fused_mlp=False`` (or ``LIT.set_fused_mlp(False)``) keeps timm's ``Mlp`` always.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            attn_type: str = "msa",
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            rel_pos_size: Optional[Tuple[int, int]] = None,
            sr_ratio: int = 1,
            num_prefix_tokens: int = 0,
            fused_attn: bool = True,
            fused_mlp: bool = True,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if attn_type not in mixer_names("lit"):
            raise ValueError(f"attn_type must be one of {mixer_names('lit')}, got {attn_type!r}")
        self.norm1 = None if MIXERS[attn_type][0] is None else norm_layer(dim, **dd)
        self.attn = build_mixer(  # the registered mixer (register_mixer); None: an MLP block
            attn_type, dim, num_heads, "lit", qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            rel_pos_size=rel_pos_size, sr_ratio=sr_ratio, num_prefix_tokens=num_prefix_tokens, fused_attn=fused_attn,
            **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop,
                       **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.fused_mlp = fused_mlp

    def _use_fused_mlp(self, x: Tensor) -> bool:
        """CPU inference with an exact-GELU MLP, in a dtype the oneDNN probe accepts. Never with
        gradients (the fused kernels have no autograd formula) and never while anything traces
        (torch.fx, torch.compile, exporters, FlopCounterMode / FakeTensorMode see the plain ops)."""
        if not self.fused_mlp or self.training or torch.is_grad_enabled() or is_fx_proxy(x) or is_tracing():
            return False
        if x.device.type != "cpu" or not (isinstance(self.mlp.act, nn.GELU) and self.mlp.act.approximate == "none"
                                          and isinstance(self.mlp.norm, nn.Identity)):
            return False
        return fused_mlp.supported(autocast_dtype("cpu") or x.dtype)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        if self._use_fused_mlp(x):
            return fused_mlp.fused_mlp_residual(x, self.norm2, self.mlp.fc1, self.mlp.fc2, autocast_dtype("cpu"))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class TokenMap(nn.Module):
    """Tokens (B, P + H*W, C) -> map (B, C, H, W), the P leading (class) tokens dropped. A view.

    Each stage holds one as ``to_map``: ``forward_intermediates`` returns its maps through it, and
    under torch.fx it is called on the stage output so that timm's ``feature_cls='fx'`` extractor
    finds the stage's map at the node ``stages.{i}.to_map``.
    """

    def __init__(self, num_prefix_tokens: int = 0):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        H, W = feat_size
        x = x[:, self.num_prefix_tokens:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)  # B, N, C -> B, C, H, W


class LITStage(nn.Module):
    """One stage: optional token merging from the previous stage, optional absolute position
    embedding (and class token), then blocks. Works on tokens (B, N, C) with an explicit feat_size.
    """

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            mlp_ratio: float,
            attn_type: str,
            downsample: Optional[nn.Module] = None,
            grid_size: Tuple[int, int] = (14, 14),
            abs_pos_embed: bool = False,
            class_token: bool = False,
            rel_pos: bool = False,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (),
            fused_attn: bool = True,
            fused_mlp: bool = True,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.downsample = downsample
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **dd)) if class_token else None
        if abs_pos_embed:
            self.pos_embed = nn.Parameter(
                torch.zeros(1, self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1], dim, **dd))
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(proj_drop)
        self.blocks = nn.ModuleList([
            Block(
                dim, num_heads, mlp_ratio=mlp_ratio, attn_type=attn_type, qkv_bias=qkv_bias,
                proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[j] if drop_path else 0.,
                rel_pos_size=self.grid_size if rel_pos and attn_type != "none" else None,
                sr_ratio=sr_ratio, num_prefix_tokens=self.num_prefix_tokens, fused_attn=fused_attn,
                fused_mlp=fused_mlp, norm_layer=norm_layer, **dd)
            for j in range(depth)])
        self.to_map = TokenMap(self.num_prefix_tokens)
        self.grad_checkpointing = False
        self.pos_embed_interpolation = "bicubic"  # of the run-time resize, unless forward is given another
        self._pos_embed_cache: Dict[tuple, Tensor] = {}

    def _pos_embed(self, feat_size: Tuple[int, int], mode: str) -> Tensor:
        if is_fx_proxy(*feat_size):  # torch.fx: one call node, run with the real sizes
            return resize_abs_pos_embed(self.pos_embed, self.grid_size, feat_size, self.num_prefix_tokens, mode)
        if not is_exporting() and tuple(feat_size) == self.grid_size:
            return self.pos_embed
        # resized for other sizes: cached per size and mode when no gradient is needed
        return _param_cache(
            self._pos_embed_cache, (tuple(feat_size), mode, str(self.pos_embed.device), self.pos_embed.dtype),
            (self.pos_embed,),
            lambda: resize_abs_pos_embed(self.pos_embed, self.grid_size, feat_size, self.num_prefix_tokens, mode))

    def forward(
            self,
            x: Tensor,
            feat_size: Tuple[int, int],
            class_token: bool = True,
            pos_embed_interpolation: Optional[str] = None,
    ) -> Tuple[Tensor, Tuple[int, int]]:
        """
        Args:
            x (Tensor[B, N, C_in]): the previous stage's tokens (the patch embedding's for stage 1).
            feat_size (Tuple[int, int]): their grid (H, W).
            class_token (bool): prepend the stage's class token, if it has one. ``False`` runs the
                stage as the authors' dense backbones do: map tokens only, ``pos_embed[:, 1:]``.
            pos_embed_interpolation (str, optional): how the absolute position embedding is resized
                to another grid, ``"bilinear"`` or ``"bicubic"``; ``None``: the stage's own
                (``pos_embed_interpolation``, bicubic as in classification).

        Returns:
            (Tensor[B, P + H' * W', C], Tuple[int, int]): tokens (P = 1 with a class token, else 0)
            and their grid (H', W'), halved by the token merging of stages 2-4.
        """
        if self.downsample is not None:
            x, feat_size = self.downsample(x, feat_size)
        with_token = class_token and self.cls_token is not None
        if with_token:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            pos_embed = self._pos_embed(feat_size, pos_embed_interpolation or self.pos_embed_interpolation)
            if self.num_prefix_tokens and not with_token:
                pos_embed = pos_embed[:, self.num_prefix_tokens:]  # the map tokens' part only
            x = self.pos_drop(x + pos_embed)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, feat_size, use_reentrant=False)
            else:
                x = blk(x, feat_size)
        if is_fx_proxy(x) and with_token == bool(self.num_prefix_tokens):
            self.to_map(x, feat_size)  # a named node holding the stage's map, for fx feature extraction
        return x, feat_size


class StagedModel(nn.Module):
    """What LIT and LITv2 share as timm models of four stages (``patch_embed``, ``stages`` with
    their ``downsample`` and ``blocks``, ``norm``, ``head``): parameter groups, gradient
    checkpointing, the classifier, the DTM implementation switch and intermediate pruning.
    Subclasses define ``forward_features``, ``forward_head``, ``reset_classifier`` and ``forward``
    (in their own module: torch.fx wraps the not-traced functions, such as
    :func:`check_image_batch`, in the globals of the module that defines the traced ``forward``)."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def set_dtm_impl(self, impl: str) -> None:
        """Switch every DTM between ``"fast"`` and ``"torchvision"``."""
        for m in self.modules():
            if isinstance(m, DeformableTokenMerging):
                m.impl = impl

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop stages (and norm/head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < 3:
            self.norm = nn.Identity()
        if prune_head or max_index < 3:
            self.reset_classifier(0, "" if max_index < 3 else None)
        return take_indices


class LIT(StagedModel):
    """LIT: Less attention vIsion Transformer (both released families and the paper's ablations).

    Args:
        img_size (int | Tuple[int, int]): the training image size; position embeddings and tables
            are learned for its grid and resized for other sizes (multiples of 32).
        patch_size (int): stem patch size (4).
        in_chans (int): image channels.
        num_classes (int): classes; 0 for no head.
        global_pool (str): ``"token"`` (class token) or ``"avg"`` (mean over tokens).
        embed_dims (Sequence[int]): four stage widths.
        depths (Sequence[int]): blocks per stage.
        num_heads (Sequence[int]): heads per stage (ignored for MLP stages).
        mlp_ratios (Sequence[float]): MLP expansion per stage.
        attn_types (Sequence[str]): per stage ``"none"`` (MLP blocks), ``"msa"`` (full attention)
            or ``"sra"`` (PVT's spatial-reduction attention).
        sr_ratios (Sequence[int]): SRA reduction ratio per stage.
        merge (str): token merging between stages: ``"dtm"`` (deformable), ``"conv"`` (PVT's
            conv k2 s2 + LayerNorm) or ``"swin"`` (Swin's patch merging).
        pos_embed (str): ``"abs"`` (PVT: learned absolute per stage), ``"rel"`` (Swin: relative
            bias in attention stages) or ``"none"``.
        class_token (bool): prepend a class token in the last stage (PVT).
        qkv_bias (bool): bias in qkv projections.
        drop_rate (float): dropout after position embedding, in MLPs and before the head.
        attn_drop_rate (float): dropout on attention probabilities.
        drop_path_rate (float): stochastic depth, increasing linearly over all blocks.
        norm_eps (float): LayerNorm eps of blocks and the final norm (1e-6 LIT-Ti, 1e-5 LIT-S/M/B).
        fused_attn (bool): attention through ``scaled_dot_product_attention`` (else explicit softmax).
        fused_mlp (bool): in CPU inference, oneDNN's fused linear+GELU / linear+residual in the MLPs
            where this CPU supports them in the dtype at hand (probed once; else timm's ``Mlp``).
        dtm_impl (str): DTM implementation, ``"fast"`` or ``"torchvision"``.
        device (torch.device, optional): where the parameters are created (``"meta"`` works).
        dtype (torch.dtype, optional): dtype of the parameters.

    Examples::
        >>> m = LIT(img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4))
        >>> m(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 1000])
    """

    def __init__(
            self,
            img_size: _int_or_tuple_2 = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (3, 4, 6, 3),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            attn_types: Sequence[str] = ("none", "none", "msa", "msa"),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            merge: str = "dtm",
            pos_embed: str = "abs",
            class_token: bool = True,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_eps: float = 1e-6,
            fused_attn: bool = True,
            fused_mlp: bool = True,
            dtm_impl: str = "fast",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.img_size = _to_2tuple(img_size)
        per_stage = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                         attn_types=attn_types, sr_ratios=sr_ratios)
        for name, value in per_stage.items():
            if len(value) != 4:
                raise ValueError(f"{name} must have 4 entries (one per stage), got {tuple(value)}")
        for i, (d, h, t) in enumerate(zip(embed_dims, num_heads, attn_types)):
            if t not in mixer_names("lit"):
                raise ValueError(f"attn_types[{i}]={t!r} is not one of {mixer_names('lit')}")
            if t != "none" and d % h != 0:
                raise ValueError(f"embed_dims[{i}]={d} is not divisible by num_heads[{i}]={h}")
        if merge not in MERGE_TYPES:
            raise ValueError(f"merge={merge!r} is not one of {MERGE_TYPES}")
        if pos_embed not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed={pos_embed!r} is not one of {POS_EMBED_TYPES}")
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool={global_pool!r} is not one of ('token', 'avg', '')")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if class_token and pos_embed == "rel":
            raise ValueError("class_token=True cannot be combined with pos_embed='rel'")
        if dtm_impl not in DTM_IMPLS:
            raise ValueError(f"dtm_impl={dtm_impl!r} is not one of {DTM_IMPLS}")
        stride = patch_size * 2 ** 3
        if self.img_size[0] % stride or self.img_size[1] % stride:
            raise ValueError(f"img_size={self.img_size} must be a multiple of {stride} in both dimensions")

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.num_prefix_tokens = 1 if class_token else 0
        self.reduction = stride
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dims[0], **dd)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages = []
        self.feature_info = []
        for i in range(4):
            grid = (self.img_size[0] // (patch_size * 2 ** i), self.img_size[1] // (patch_size * 2 ** i))
            downsample = None
            if i > 0:
                if merge == "dtm":
                    downsample = DTMDownsample(embed_dims[i - 1], embed_dims[i], impl=dtm_impl, **dd)
                elif merge == "conv":
                    downsample = ConvMerge(embed_dims[i - 1], embed_dims[i], **dd)
                else:
                    downsample = PatchMerging(embed_dims[i - 1], embed_dims[i], norm_layer=norm_layer, **dd)
            stages.append(LITStage(
                dim=embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i],
                attn_type=attn_types[i],
                downsample=downsample,
                grid_size=grid,
                abs_pos_embed=pos_embed == "abs",
                class_token=class_token and i == 3,
                rel_pos=pos_embed == "rel",
                sr_ratio=sr_ratios[i],
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                fused_attn=fused_attn,
                fused_mlp=fused_mlp,
                norm_layer=norm_layer,
                **dd,
            ))
            # the stage's output as a (B, C, H, W) map is the node of its ``to_map`` (fx extraction)
            self.feature_info.append(
                dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}.to_map"))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise as the official code does: trunc-normal(0.02) linears, position embeddings,
        class token and relative tables; convs as nn.Conv2d; DTM offset predictors at zero."""
        self.apply(self._init_weights)
        for stage in self.stages:
            if stage.pos_embed is not None:
                trunc_normal_(stage.pos_embed, std=.02)
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=.02)
            for blk in stage.blocks:
                if getattr(blk.attn, "relative_position_bias_table", None) is not None:
                    trunc_normal_(blk.attn.relative_position_bias_table, std=.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- timm model API -------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The class token and relative position tables, as the authors' two codebases exempt them
        (1-D parameters and biases are exempt by the optimizer's rule); LIT-Ti's absolute position
        embeddings are decayed, as they were in the official run."""
        return {n for n, _ in self.named_parameters() if n.endswith(("cls_token", "relative_position_bias_table"))}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool={global_pool!r} is not one of ('token', 'avg', '')")
            if global_pool == "token" and not self.num_prefix_tokens:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        if num_classes > 0:
            # on the device and in the dtype of the model, in its train/eval mode
            ref = next(self.parameters())
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a checkpoint file: timm's pretrained path calls this (``custom_load`` in the default
        configs) with the downloaded release or ``pretrained_cfg_overlay(file=...)``, so those files
        are read by litvit's one reader (any trainer's form, safetensors; nothing beyond its
        allow-list unpickled) and fitted by :func:`checkpoint_filter_fn`. A classifier for another
        number of classes keeps its initialisation.
        """
        load_weights(self, checkpoint_path, classifier_mismatch="quiet")

    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every attention module between ``F.scaled_dot_product_attention`` (fused) and the
        explicit softmax (plain, the reference and what attention maps are read from)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused_attn = enable

    def set_fused_mlp(self, enable: bool = True) -> None:
        """Switch every block's CPU-inference MLP between oneDNN's fused kernels (used only where the
        probe in :mod:`litvit.ops.fused_mlp` says they work) and timm's ``Mlp`` (the reference)."""
        for m in self.modules():
            if isinstance(m, Block):
                m.fused_mlp = enable

    # --- forward --------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the final norm: (B, P + H/32 * W/32, C) with P = 1 class token or 0."""
        check_image_batch(x, self.in_chans, self.reduction)
        x, feat_size = self.patch_embed(x)
        for stage in self.stages:
            x, feat_size = stage(x, feat_size)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            class_token: bool = True,
            pos_embed_interpolation: Optional[str] = None,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs as (B, C_i, H / 2^(i+2), W / 2^(i+2)) maps, strides 4, 8, 16, 32.

        Args:
            x (Tensor[B, C, H, W]): images, H and W multiples of 32.
            indices (int | List[int], optional): last n stages if int, those listed if a list, all if None.
            norm (bool): apply the final norm to the last stage's output.
            stop_early (bool): stop after the last requested stage.
            output_fmt (str): ``"NCHW"`` or ``"NLC"`` (tokens, class token dropped).
            intermediates_only (bool): return only the list of maps.
            class_token (bool): use the class token (LIT-Ti's stage 4); ``False`` runs that stage
                on its map tokens only, as the authors' dense backbones do (:class:`LITStage`).
            pos_embed_interpolation (str, optional): ``"bilinear"`` or ``"bicubic"`` resizing of
                absolute position embeddings; ``None``: each stage's own (bicubic).

        Returns:
            The list of maps, or (final normed tokens, list of maps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if pos_embed_interpolation not in (None, "bilinear", "bicubic"):
            raise ValueError(f"pos_embed_interpolation must be 'bilinear' or 'bicubic', got {pos_embed_interpolation!r}")
        check_image_batch(x, self.in_chans, self.reduction)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x, feat_size = self.patch_embed(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x, feat_size = stage(x, feat_size, class_token=class_token,
                                 pos_embed_interpolation=pos_embed_interpolation)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                if output_fmt == "NCHW" and (class_token or not stage.num_prefix_tokens):
                    intermediates.append(stage.to_map(y, feat_size))
                elif output_fmt == "NCHW":  # no class token in front
                    B, _, C = y.shape
                    intermediates.append(y.transpose(1, 2).reshape(B, C, *feat_size))  # B, N, C -> B, C, H, W
                else:
                    intermediates.append(y[:, stage.num_prefix_tokens:] if class_token else y)
        if intermediates_only:
            return intermediates
        return self.norm(x) if len(stages) == len(self.stages) else x, intermediates


# --- builders ---------------------------------------------------------------------------------------

def _create_lit(variant: str, pretrained: bool = False, **kwargs) -> LIT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    # timm resets custom_load when an overlay or a config dict names another file or url; the files
    # LIT users have (the authors' trainers' pickles, safetensors) still go to LIT.load_pretrained
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):
        if isinstance(kwargs.get(key), dict):
            kwargs[key] = {"custom_load": True, **kwargs[key]}
    return build_model_with_cfg(
        LIT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


_RELEASE = "https://github.com/ziplab/LIT/releases/download/v1.0/"


@dataclass
class LITPretrainedCfg(PretrainedCfg):
    """timm's pretrained cfg plus the facts of a variant that recipes and dense tasks read without
    building the model (:func:`litvit.models.factory.model_facts`).

    Attributes:
        family (str): ``"pvt"`` (class token, absolute position embeddings: LIT-Ti and the PVT-S
            ablations), ``"swin"`` (relative position tables: LIT-S/M/B) or ``"litv2"`` (HiLo).
        stage_channels (Tuple[int, ...]): the width of each stage's output (``embed_dims``).
        dense_img_size (Dict[str, int], optional): the grid the authors learned the relative
            position tables for in each dense task (``{"detection": 800, "segmentation": 512}``);
            None for models without relative tables (their embeddings are resized on the fly).
    """
    family: Optional[str] = None
    stage_channels: Optional[Tuple[int, ...]] = None
    dense_img_size: Optional[Dict[str, int]] = None


_PVT_FACTS = dict(family="pvt", stage_channels=(64, 128, 320, 512))
_SWIN_FACTS = dict(family="swin", stage_channels=(96, 192, 384, 768), dense_img_size=dict(detection=800, segmentation=512))
_SWIN_B_FACTS = dict(_SWIN_FACTS, stage_channels=(128, 256, 512, 1024))


def _cfg(url: str = "", **kwargs) -> LITPretrainedCfg:
    # custom_load: timm hands the downloaded (or ``file=``) checkpoint to LIT.load_pretrained, which
    # reads every form the authors' trainers wrote; timm's own loader refuses their pickled configs
    return LITPretrainedCfg(**{
        "url": url, "custom_load": True,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2105.14217", "paper_name": "Less is More: Pay Less Attention in Vision Transformers",
        "origin_url": "https://github.com/ziplab/LIT", "license": "apache-2.0",
        **kwargs,
    })


default_cfgs = generate_default_cfgs({
    "lit_ti.in1k": _cfg(url=_RELEASE + "lit_ti.pth", **_PVT_FACTS),
    "lit_s.in1k": _cfg(url=_RELEASE + "lit_s.pth", **_SWIN_FACTS),
    "lit_m.in1k": _cfg(url=_RELEASE + "lit_m.pth", **_SWIN_FACTS),
    "lit_b.in1k": _cfg(url=_RELEASE + "lit_b.pth", **_SWIN_B_FACTS),
    "pvt_s.untrained": _cfg(**_PVT_FACTS),
    # the authors' PVT-S w/ MSA (pvt_small_full_msa), the model of the attention figure; 80.9 top-1
    "pvt_s_msa.in1k": _cfg(url="https://github.com/zhuang-group/LIT/releases/download/v2.1/pvt_full_msa.pth",
                           **_PVT_FACTS),
    "pvt_s_msa_no_attn1.untrained": _cfg(**_PVT_FACTS),
    "pvt_s_msa_no_attn12.untrained": _cfg(**_PVT_FACTS),
    "lit_ti_no_dtm.untrained": _cfg(**_PVT_FACTS),
    "lit_s_no_dtm.untrained": _cfg(**_SWIN_FACTS),
})

# Shared settings of the two families.
_PVT_FAMILY = dict(
    embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
    pos_embed="abs", class_token=True, global_pool="token", norm_eps=1e-6)
_SWIN_FAMILY = dict(
    mlp_ratios=(4, 4, 4, 4), attn_types=("none", "none", "msa", "msa"), pos_embed="rel", class_token=False,
    global_pool="avg", norm_eps=1e-5)


@register_model
def lit_ti(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-Ti (PVT-S based): 19.9 M params, 3.6 GFLOPs, 81.1 top-1."""
    model_args = dict(_PVT_FAMILY, attn_types=("none", "none", "msa", "msa"), merge="dtm", drop_path_rate=0.1)
    return _create_lit("lit_ti", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lit_s(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-S (Swin-Ti based): 28.0 M params, 4.1 GFLOPs, 81.5 top-1."""
    model_args = dict(_SWIN_FAMILY, embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.2)
    return _create_lit("lit_s", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lit_m(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-M (Swin-S based): 49.4 M params, 8.6 GFLOPs, 83.0 top-1."""
    model_args = dict(_SWIN_FAMILY, embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.3)
    return _create_lit("lit_m", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lit_b(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-B (Swin-B based): 87.3 M params, 15.0 GFLOPs, 83.4 top-1."""
    model_args = dict(_SWIN_FAMILY, embed_dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                      drop_path_rate=0.5)
    return _create_lit("lit_b", pretrained=pretrained, **dict(model_args, **kwargs))


# --- the paper's ablation models (Tables 2-4) -----------------------------------------------------

@register_model
def pvt_s(pretrained: bool = False, **kwargs) -> LIT:
    """PVT-S: spatial-reduction attention (r = 8, 4, 2, 1) in every stage, conv patch merging. 24.5 M, 3.8 G."""
    model_args = dict(_PVT_FAMILY, attn_types=("sra",) * 4, sr_ratios=(8, 4, 2, 1), merge="conv", drop_path_rate=0.1)
    return _create_lit("pvt_s", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def pvt_s_msa(pretrained: bool = False, **kwargs) -> LIT:
    """PVT-S w/ MSA: full self-attention in every stage, conv patch merging. 20.2 M, 8.4 G."""
    model_args = dict(_PVT_FAMILY, attn_types=("msa",) * 4, merge="conv", drop_path_rate=0.1)
    return _create_lit("pvt_s_msa", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def pvt_s_msa_no_attn1(pretrained: bool = False, **kwargs) -> LIT:
    """PVT-S w/ MSA with stage 1's attention removed (MLP blocks in stage 1)."""
    model_args = dict(_PVT_FAMILY, attn_types=("none", "msa", "msa", "msa"), merge="conv", drop_path_rate=0.1)
    return _create_lit("pvt_s_msa_no_attn1", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def pvt_s_msa_no_attn12(pretrained: bool = False, **kwargs) -> LIT:
    """PVT-S w/ MSA with stages 1-2's attention removed; the same model as LIT-Ti without DTM."""
    model_args = dict(_PVT_FAMILY, attn_types=("none", "none", "msa", "msa"), merge="conv", drop_path_rate=0.1)
    return _create_lit("pvt_s_msa_no_attn12", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lit_ti_no_dtm(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-Ti with regular (conv k2 s2 + LayerNorm) patch merging instead of DTM."""
    model_args = dict(_PVT_FAMILY, attn_types=("none", "none", "msa", "msa"), merge="conv", drop_path_rate=0.1)
    return _create_lit("lit_ti_no_dtm", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lit_s_no_dtm(pretrained: bool = False, **kwargs) -> LIT:
    """LIT-S with Swin's regular patch merging instead of DTM."""
    model_args = dict(_SWIN_FAMILY, embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      merge="swin", drop_path_rate=0.2)
    return _create_lit("lit_s_no_dtm", pretrained=pretrained, **dict(model_args, **kwargs))
