"""LITv2: LIT with HiLo attention.

*Fast Vision Transformers with HiLo Attention*, Zizheng Pan, Jianfei Cai, Bohan Zhuang.
NeurIPS 2022. https://arxiv.org/abs/2205.13213

LIT's four-stage layout (attention-free early stages, deformable token merging between stages)
with three changes: the late stages attend with HiLo, every MLP holds a 3x3 depthwise conv between
``fc1`` and the GELU, and there is no position embedding at all (spatial information enters through
the convolutions only).

HiLo splits a block's heads in two. ``int(heads * alpha)`` heads (Lo-Fi) attend from every token to
the average-pooled map (ws x ws cells); the remaining heads (Hi-Fi) attend within non-overlapping
ws x ws windows. Each branch has its own output projection and the two outputs are concatenated,
Hi-Fi channels first; nothing mixes them afterwards. A window size of 1 makes the block plain global
attention through the Lo-Fi modules (the released models' last stage), whatever ``alpha`` is.

What the authors' classification code accepts is one square input size; litvit's model takes any
size that is a multiple of 32, square or not. Where a map is not a multiple of the window (e.g.
stage 3 of a 224 x 288 input is fine, a 14 x 18 map with ws = 4 is not), the normed map is
zero-padded at the bottom and right, both branches run on the padded map and the result is cropped,
as the authors' dense backbones do: pad tokens then take part in the border windows and count as
zeros in the border cells' average, so the pooled keys of those cells are pulled towards zero.

The authors' releases (``{'model': state_dict}`` in their Swin-style layout) load through
:func:`litvit.models.convert.checkpoint_filter_fn`, read by litvit's one checkpoint reader
(:meth:`LITv2.load_pretrained` for timm's ``pretrained=True``).
"""
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices

from ..ops.dtm import DTM_IMPLS
from ..ops import fused_mlp as fused_mlp_ops
from ..ops.tracing import autocast_dtype, is_fx_proxy, is_tracing
from .convert import checkpoint_filter_fn, load_weights
from .lit import (MIXERS, DTMDownsample, LITPretrainedCfg, PatchEmbed, StagedModel, TokenMap, _int_or_tuple_2,
                  _to_2tuple, build_mixer, check_image_batch, mixer_names, register_mixer)

__all__ = ["LITv2", "HiLo", "DWConvMlp", "LITv2Block", "LITv2Stage"]

ATTN_TYPES = ("none", "hilo")  # LITv2's own mixers (any registered one builds: MIXERS, register_mixer)


def hilo_heads(num_heads: int, window_size: int, alpha: float) -> Tuple[int, int]:
    """(Hi-Fi heads, Lo-Fi heads) as the authors' code splits them: ``int(num_heads * alpha)``
    Lo-Fi heads (a truncated float product: 12 * 0.7 -> 8), the rest Hi-Fi; window size 1 makes
    every head Lo-Fi (plain global attention)."""
    if window_size == 1:
        return 0, num_heads
    lo = int(num_heads * alpha)
    return num_heads - lo, lo


@register_mixer("hilo", families=("litv2",))
@register_notrace_module  # torch.fx: one leaf (the padding depends on the map size)
class HiLo(nn.Module):
    """HiLo attention on tokens of an (H, W) map.

    Two paths compute the same thing: a fused one (``F.scaled_dot_product_attention``; Hi-Fi as a
    batch of windows, Lo-Fi over the pooled keys/values) and a plain one (explicit softmax, the
    reference and what attention maps are read from through ``attn_probs``).

    Args:
        dim (int): token width.
        num_heads (int): heads; ``dim`` must be divisible by it.
        window_size (int): Hi-Fi window side and Lo-Fi pooling cell side; 1 for global attention.
        alpha (float): the share of Lo-Fi heads, ``int(num_heads * alpha)``.
        qkv_bias (bool): bias in the q, k, v projections.
        fused_attn (bool): use the fused path.
        device (torch.device, optional): where the parameters are created.
        dtype (torch.dtype, optional): dtype of the parameters.

    Examples::
        >>> attn = HiLo(32, 4, window_size=2, alpha=0.5)
        >>> attn(torch.randn(2, 6 * 10, 32), (6, 10)).shape
        torch.Size([2, 60, 32])
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 2,
            alpha: float = 0.9,
            qkv_bias: bool = True,
            fused_attn: bool = True,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if window_size < 1:
            raise ValueError(f"window_size={window_size} must be at least 1")
        if not 0. <= alpha <= 1.:
            raise ValueError(f"alpha={alpha} must lie in [0, 1]")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.h_heads, self.l_heads = hilo_heads(num_heads, window_size, alpha)
        self.h_dim = self.h_heads * self.head_dim
        self.l_dim = self.l_heads * self.head_dim
        self.fused_attn = fused_attn
        self.attn_probs = nn.Identity()  # plain path: forward hooks read (B, heads, N, M) probabilities
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim, **dd)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim, **dd)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """softmax(q k^T * scale) v: (B', heads, N, hd) x (B', heads, M, hd) -> (B', heads, N, hd)."""
        if self.fused_attn:
            return F.scaled_dot_product_attention(q, k, v)
        attn = self.attn_probs(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return attn @ v

    def hifi(self, x: Tensor) -> Tensor:
        """Window attention: (B, H, W, C) -> (B, H, W, h_dim); H and W multiples of the window."""
        B, H, W, C = x.shape
        ws = self.window_size
        hg, wg = H // ws, W // ws
        # B, H, W, C -> B, hg, wg, ws(i), ws(j), C -> (B * windows, ws*ws, C), one contiguous copy: a linear
        # over the 6-d strided view falls back to a batched matmul that copies its weight per batch
        # under torch.inference_mode (2.7x slower LITv2-S in bf16)
        x = x.reshape(B, hg, ws, wg, ws, C).transpose(2, 3).reshape(B * hg * wg, ws * ws, C)
        qkv = self.h_qkv(x).reshape(B * hg * wg, ws * ws, 3, self.h_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x (B * windows, h_heads, ws*ws, hd)
        x = self._attend(q, k, v).transpose(1, 2)  # B * windows, ws*ws, h_heads, hd
        x = x.reshape(B, hg, wg, ws, ws, self.h_dim).transpose(2, 3).reshape(B, H, W, self.h_dim)
        return self.h_proj(x)

    def lofi(self, x: Tensor) -> Tensor:
        """Attention to the pooled map: (B, H, W, C) -> (B, H, W, l_dim)."""
        B, H, W, C = x.shape
        q = self.l_q(x).reshape(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)  # B, l_heads, N, hd
        if self.window_size > 1:
            kv_in = F.avg_pool2d(x.permute(0, 3, 1, 2), self.window_size)  # B, C, H/ws, W/ws
            kv_in = kv_in.flatten(2).transpose(1, 2)  # -> B, M, C
        else:
            kv_in = x.reshape(B, H * W, C)
        kv = self.l_kv(kv_in).reshape(B, kv_in.shape[1], 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = self._attend(q, kv[0], kv[1])  # B, l_heads, N, hd
        x = x.transpose(1, 2).reshape(B, H, W, self.l_dim)
        return self.l_proj(x)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """
        Args:
            x (Tensor[B, H*W, C]): normed tokens, row-major.
            feat_size (Tuple[int, int]): the map (H, W).

        Returns:
            Tensor[B, H*W, C]: Hi-Fi channels first, then Lo-Fi.
        """
        B, N, C = x.shape
        H, W = feat_size
        x = x.reshape(B, H, W, C)  # B, N, C -> B, H, W, C
        ws = self.window_size
        pad_h, pad_w = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_h or pad_w:  # the authors' dense backbones: zero-pad bottom/right, crop afterwards
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        outs = []
        if self.h_heads > 0:
            outs.append(self.hifi(x))
        if self.l_heads > 0:
            outs.append(self.lofi(x))
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if pad_h or pad_w:
            x = x[:, :H, :W]
        return x.reshape(B, N, C)  # B, H, W, C -> B, N, C

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, hifi_heads={self.h_heads}, "
                f"lofi_heads={self.l_heads}, fused_attn={self.fused_attn}")


class DWConv(nn.Module):
    """3x3 depthwise conv on tokens of an (H, W) map; the submodule name follows the releases."""

    def __init__(self, dim: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        H, W = feat_size
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)  # B, N, C -> B, C, H, W (channels-last view)
        x = self.dwconv(x)
        return x.permute(0, 2, 3, 1).reshape(B, N, C)  # B, C, H, W -> B, N, C


class DWConvMlp(nn.Module):
    """fc1 -> 3x3 depthwise conv -> GELU -> fc2, on tokens (the conv has no residual or norm)."""

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.dwconv = DWConv(hidden_dim, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), feat_size)))
        return self.drop(self.fc2(x))


class LITv2Block(nn.Module):
    """A ConvFFN block (``attn_type="none"``: ``x + DropPath(DWConvMlp(LN2(x)))``) or a HiLo block
    (``x + DropPath(HiLo(LN1(x)))`` first); norm names follow the releases.

    In CPU inference the ConvFFN may run with the depthwise conv + GELU and fc2 + residual fused
    (oneDNN, :func:`litvit.ops.fused_mlp.fused_conv_mlp_residual`) where the probe says this CPU
    supports it; ``fused_mlp=False`` keeps the plain modules (the reference)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            attn_type: str = "hilo",
            window_size: int = 2,
            alpha: float = 0.9,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            fused_attn: bool = True,
            fused_mlp: bool = True,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if attn_type not in mixer_names("litv2"):
            raise ValueError(f"attn_type must be one of {mixer_names('litv2')}, got {attn_type!r}")
        self.norm1 = None if MIXERS[attn_type][0] is None else norm_layer(dim, **dd)
        self.attn = build_mixer(  # the registered mixer (register_mixer); None: a ConvFFN block
            attn_type, dim, num_heads, "litv2", window_size=window_size, alpha=alpha, qkv_bias=qkv_bias, fused_attn=fused_attn,
            **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = DWConvMlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.fused_mlp = fused_mlp

    def _use_fused_mlp(self, x: Tensor) -> bool:
        """CPU inference in a dtype the oneDNN probe accepts; never with gradients or while anything
        traces (torch.fx, torch.compile, exporters and FLOP counters see the plain ops)."""
        if not self.fused_mlp or self.training or torch.is_grad_enabled() or is_fx_proxy(x) or is_tracing():
            return False
        if x.device.type != "cpu" or not (isinstance(self.mlp.act, nn.GELU) and self.mlp.act.approximate == "none"):
            return False
        return fused_mlp_ops.supported(autocast_dtype("cpu") or x.dtype, conv=True)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm1(x), feat_size))
        if self._use_fused_mlp(x):
            m = self.mlp
            return fused_mlp_ops.fused_conv_mlp_residual(x, feat_size, self.norm2, m.fc1, m.dwconv.dwconv, m.fc2,
                                                         autocast_dtype("cpu"))
        return x + self.drop_path(self.mlp(self.norm2(x), feat_size))


class LITv2Stage(nn.Module):
    """Optional DTM from the previous stage, then blocks, on tokens (B, H*W, C) with their map size."""

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            mlp_ratio: float,
            attn_type: str,
            window_size: int,
            alpha: float,
            downsample: Optional[nn.Module] = None,
            grid_size: Tuple[int, int] = (14, 14),
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            drop_path: Sequence[float] = (),
            fused_attn: bool = True,
            fused_mlp: bool = True,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        self.num_prefix_tokens = 0
        self.grid_size = tuple(grid_size)
        # no class token or position embedding in LITv2; the names are kept so that litvit's dense
        # wrapper (models.backbone.LITBackbone) takes a LITv2 model as it takes a LIT one
        self.cls_token = self.pos_embed = None
        self.pos_drop = nn.Identity()
        self.downsample = downsample
        self.blocks = nn.ModuleList([
            LITv2Block(dim, num_heads, mlp_ratio=mlp_ratio, attn_type=attn_type, window_size=window_size,
                       alpha=alpha, qkv_bias=qkv_bias, proj_drop=proj_drop,
                       drop_path=drop_path[j] if drop_path else 0., fused_attn=fused_attn, fused_mlp=fused_mlp,
                       norm_layer=norm_layer,
                       device=device, dtype=dtype)
            for j in range(depth)])
        self.to_map = TokenMap(0)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, feat_size: Tuple[int, int], **_) -> Tuple[Tensor, Tuple[int, int]]:
        """(Tensor[B, H*W, C_in], (H, W)) -> (Tensor[B, H'*W', C], (H', W')), halved by DTM in stages 2-4."""
        if self.downsample is not None:
            x, feat_size = self.downsample(x, feat_size)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, feat_size, use_reentrant=False)
            else:
                x = blk(x, feat_size)
        if is_fx_proxy(x):
            self.to_map(x, feat_size)  # a named node holding the stage's map, for fx feature extraction
        return x, feat_size


class LITv2(StagedModel):
    """LITv2: LIT with HiLo attention, ConvFFN and no position embedding.

    Args:
        img_size (int | Tuple[int, int]): the training image size (the default config's; nothing
            is learned for it, any multiple of 32 runs).
        patch_size (int): stem patch size (4).
        in_chans (int): image channels.
        num_classes (int): classes; 0 for no head.
        global_pool (str): ``"avg"`` (mean over tokens) or ``""`` (none).
        embed_dims (Sequence[int]): four stage widths.
        depths (Sequence[int]): blocks per stage.
        num_heads (Sequence[int]): heads per stage (ignored for attention-free stages).
        mlp_ratios (Sequence[float]): MLP expansion per stage.
        attn_types (Sequence[str]): per stage ``"none"`` (ConvFFN blocks) or ``"hilo"``.
        window_sizes (Sequence[int]): HiLo window per stage (the authors' ``local_ws``); 1 makes a
            stage plain global attention; ignored for attention-free stages.
        alpha (float): the share of Lo-Fi heads in HiLo stages.
        qkv_bias (bool): bias in the q, k, v projections.
        drop_rate (float): dropout in MLPs and before the head.
        drop_path_rate (float): stochastic depth, increasing linearly over all blocks.
        norm_eps (float): LayerNorm eps (1e-5 as released).
        fused_attn (bool): HiLo through ``scaled_dot_product_attention`` (else explicit softmax).
        fused_mlp (bool): in CPU inference, oneDNN's fused conv+GELU and linear+residual in the
            ConvFFNs where this CPU supports them in the dtype at hand (probed once).
        dtm_impl (str): DTM implementation, ``"fast"`` or ``"torchvision"``.
        device (torch.device, optional): where the parameters are created (``"meta"`` works).
        dtype (torch.dtype, optional): dtype of the parameters.

    Examples::
        >>> m = LITv2(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
        >>> m(torch.randn(2, 3, 64, 96)).shape
        torch.Size([2, 1000])
    """

    def __init__(
            self,
            img_size: _int_or_tuple_2 = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (96, 192, 384, 768),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            mlp_ratios: Sequence[float] = (4, 4, 4, 4),
            attn_types: Sequence[str] = ("none", "none", "hilo", "hilo"),
            window_sizes: Sequence[int] = (0, 0, 2, 1),
            alpha: float = 0.9,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_eps: float = 1e-5,
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
                         attn_types=attn_types, window_sizes=window_sizes)
        for name, value in per_stage.items():
            if len(value) != 4:
                raise ValueError(f"{name} must have 4 entries (one per stage), got {tuple(value)}")
        for i, (d, h, t, ws) in enumerate(zip(embed_dims, num_heads, attn_types, window_sizes)):
            if t not in mixer_names("litv2"):
                raise ValueError(f"attn_types[{i}]={t!r} is not one of {mixer_names('litv2')}")
            if t != "none" and d % h != 0:
                raise ValueError(f"embed_dims[{i}]={d} is not divisible by num_heads[{i}]={h}")
            if t != "none" and ws < 1:
                raise ValueError(f"window_sizes[{i}]={ws} must be at least 1 for a HiLo stage")
        if not 0. <= alpha <= 1.:
            raise ValueError(f"alpha={alpha} must lie in [0, 1]")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r} is not one of ('avg', '')")
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
        self.alpha = alpha
        self.window_sizes = tuple(window_sizes)
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.num_prefix_tokens = 0
        self.reduction = stride
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dims[0], norm_layer=norm_layer, **dd)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages = []
        self.feature_info = []
        for i in range(4):
            downsample = DTMDownsample(embed_dims[i - 1], embed_dims[i], impl=dtm_impl, **dd) if i > 0 else None
            stages.append(LITv2Stage(
                dim=embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i],
                attn_type=attn_types[i],
                window_size=window_sizes[i],
                alpha=alpha,
                downsample=downsample,
                grid_size=(self.img_size[0] // (patch_size * 2 ** i), self.img_size[1] // (patch_size * 2 ** i)),
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                drop_path=dpr[i],
                fused_attn=fused_attn,
                fused_mlp=fused_mlp,
                norm_layer=norm_layer,
                **dd,
            ))
            self.feature_info.append(
                dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}.to_map"))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """As the authors: trunc-normal(0.02) linears, unit LayerNorms; convs as nn.Conv2d; DTM's
        offset predictor at zero (its own reset)."""
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
        """Nothing beyond the optimizer's rule (1-D parameters and biases): LITv2 has no position
        tables."""
        return set()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r} is not one of ('avg', '')")
            self.global_pool = global_pool
        if num_classes > 0:
            ref = next(self.parameters())
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a checkpoint file for timm's pretrained path (``custom_load``): read by litvit's one
        reader and fitted by :func:`checkpoint_filter_fn`, as :meth:`LIT.load_pretrained`."""
        load_weights(self, checkpoint_path, classifier_mismatch="quiet")

    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch every HiLo between ``F.scaled_dot_product_attention`` (fused) and the explicit
        softmax (plain: the reference, computing what the authors' code computes)."""
        for m in self.modules():
            if isinstance(m, HiLo):
                m.fused_attn = enable

    def set_fused_mlp(self, enable: bool = True) -> None:
        """Switch every block's CPU-inference ConvFFN between oneDNN's fused conv+GELU / linear+residual
        (where the probe in :mod:`litvit.ops.fused_mlp` says they work) and the plain modules."""
        for m in self.modules():
            if isinstance(m, LITv2Block):
                m.fused_mlp = enable

    # --- forward --------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the final norm: (B, H/32 * W/32, C)."""
        check_image_batch(x, self.in_chans, self.reduction)
        x, feat_size = self.patch_embed(x)
        for stage in self.stages:
            x, feat_size = stage(x, feat_size)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
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
            **_,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs as (B, C_i, H / 2^(i+2), W / 2^(i+2)) maps, strides 4, 8, 16, 32.

        Args:
            x (Tensor[B, C, H, W]): images, H and W multiples of 32.
            indices (int | List[int], optional): last n stages if int, those listed if a list, all if None.
            norm (bool): apply the final norm to the last stage's output.
            stop_early (bool): stop after the last requested stage.
            output_fmt (str): ``"NCHW"`` or ``"NLC"`` (tokens).
            intermediates_only (bool): return only the list of maps.

        Returns:
            The list of maps, or (final normed tokens, list of maps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        check_image_batch(x, self.in_chans, self.reduction)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x, feat_size = self.patch_embed(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x, feat_size = stage(x, feat_size)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(stage.to_map(y, feat_size) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x) if len(stages) == len(self.stages) else x, intermediates


# --- builders ---------------------------------------------------------------------------------------

def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    # the alpha ablation releases (``litv2_s.alpha_0`` ...) are LITv2-S at that alpha; else 0.9
    tag = kwargs.get("pretrained_cfg")
    kwargs.setdefault("alpha", _ALPHA_TAGS.get(tag, 0.9) if isinstance(tag, str) else 0.9)
    for key in ("pretrained_cfg_overlay", "pretrained_cfg"):  # keep litvit's reader for files named there
        if isinstance(kwargs.get(key), dict):
            kwargs[key] = {"custom_load": True, **kwargs[key]}
    return build_model_with_cfg(
        LITv2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


_RELEASE = "https://github.com/ziplab/LITv2/releases/download/"
_ALPHA_TAGS = {"alpha_0": 0.0, "alpha_0.2": 0.2, "alpha_0.4": 0.4, "alpha_0.5": 0.5, "alpha_0.7": 0.7,
               "alpha_0.9": 0.9, "alpha_1": 1.0}


def _cfg(url: str = "", **kwargs) -> LITPretrainedCfg:
    return LITPretrainedCfg(**{
        "url": url, "custom_load": True,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2205.13213", "paper_name": "Fast Vision Transformers with HiLo Attention",
        "origin_url": "https://github.com/ziplab/LITv2", "license": "apache-2.0",
        "family": "litv2", "stage_channels": (96, 192, 384, 768),
        **kwargs,
    })


_B = dict(stage_channels=(128, 256, 512, 1024))


default_cfgs = generate_default_cfgs({
    "litv2_s.in1k": _cfg(url=_RELEASE + "v1.0/litv2_s.pth"),
    **{f"litv2_s.{tag}": _cfg(url=_RELEASE + f"v1.1/{tag}.pth") for tag in _ALPHA_TAGS},
    "litv2_m.in1k": _cfg(url=_RELEASE + "v1.0/litv2_m.pth"),
    "litv2_b.in1k": _cfg(url=_RELEASE + "v1.0/litv2_b.pth", **_B),
    "litv2_b_384.in1k": _cfg(url=_RELEASE + "v1.0/litv2_b_384.pth", input_size=(3, 384, 384), pool_size=(12, 12),
                             crop_pct=1.0, **_B),
})

_LITV2 = dict(mlp_ratios=(4, 4, 4, 4), attn_types=("none", "none", "hilo", "hilo"), window_sizes=(0, 0, 2, 1))


@register_model
def litv2_s(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 27.8 M params, 3.7 GFLOPs, 82.0 top-1."""
    model_args = dict(_LITV2, embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.2)
    return _create_litv2("litv2_s", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_m(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 48.8 M params, 7.5 GFLOPs, 83.3 top-1."""
    model_args = dict(_LITV2, embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.3)
    return _create_litv2("litv2_m", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_b(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 86.5 M params, 13.2 GFLOPs, 83.6 top-1."""
    model_args = dict(_LITV2, embed_dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                      drop_path_rate=0.5)
    return _create_litv2("litv2_b", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_b_384(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B fine-tuned at 384: 86.5 M params, 39.7 GFLOPs, 84.7 top-1."""
    model_args = dict(_LITV2, img_size=384, embed_dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                      num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
    return _create_litv2("litv2_b_384", pretrained=pretrained, **dict(model_args, **kwargs))
