"""The authors' dense LIT backbones (mmdet ``LIT_Ti`` / ``LIT``, mmseg the same) as litvit's LIT.

The release's backbone keys are the official classification layouts (``patch_embed1``,
``block{i}``, ``pos_embed{i}`` for LIT-Ti; ``layers.{i}.blocks`` / ``layers.{i}.downsample`` for
LIT-S) plus, for LIT-S, output LayerNorms ``norm{i}``. :func:`build_release_backbone` reads the
architecture from them (widths, depths, which stages attend, MLP ratios, qkv bias, heads from
LIT-S's relative-position tables, the training grid from the tables and position embeddings),
builds a :class:`litvit.models.LIT` and wraps it in :class:`ReleaseBackbone`, whose forward
follows the authors' handling of sizes:

* LIT-S zero-pads the image at the bottom/right to a multiple of the patch size; LIT-Ti's patch
  convolution drops the remainder; each token merging (2x2, stride 2) drops an odd row/column;
* LIT-Ti adds its position embeddings resized bilinearly to the grid at hand (stage 4 without the
  class-token slot), except that stage 1 uses its table as it is whenever the grid has as many
  tokens as the table (the authors test ``H * W`` only);
* LIT-S's attention stages resize their relative-position table bicubically to ``(2H-1, 2W-1)``.
"""
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from ...errors import CheckpointMismatchError
from ..backbone import LITBackbone, dense_backbone_kwargs
from ..factory import create_model
from ..convert import official_to_litvit
from ..lit import LIT
from ..pos_embed import resize_abs_pos_embed

__all__ = ["ReleaseBackbone", "build_release_backbone", "dense_backbone", "backbone_state_dict", "LIT_TI_HEADS",
           "LIT_S_HEADS"]

LIT_TI_HEADS = (1, 2, 5, 8)    # hard-coded in the authors' LIT_Ti
LIT_S_HEADS = (3, 6, 12, 24)   # the LIT-S configs' num_heads


class ReleaseBackbone(LITBackbone):
    """A :class:`~litvit.models.backbone.LITBackbone` whose forward follows the authors' dense code.

    Args:
        model (LIT): the LIT model (LIT-Ti: ``class_token=True`` for the layout of its position
            embeddings; the class token itself is not used).
        family (str): ``"pvt"`` (LIT-Ti) or ``"swin"`` (LIT-S).
        out_norms (Sequence[int]): stages with an output LayerNorm (the authors' ``norm{i}``).
        out_indices (Sequence[int]): stages returned (LIT-S's ``out_indices``; LIT-Ti returns all four).
        frozen_stages (int), norm_eval (bool): training options, as :class:`LITBackbone` (the
            authors' ``frozen_stages`` / ``norm_eval``; none in their configs).
    """

    def __init__(self, model: LIT, family: str, out_norms: Sequence[int] = (),
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False):
        if family not in ("pvt", "swin"):
            raise ValueError(f"family must be 'pvt' or 'swin', got {family!r}")
        super().__init__(model, out_indices=tuple(out_indices), frozen_stages=frozen_stages, norm_eval=norm_eval,
                         keep_class_token=False, out_norms=tuple(out_norms), pos_embed_interpolation="bilinear")
        self.family = family

    def _pos_embed(self, i: int, stage, feat_size: Tuple[int, int]) -> Tensor:
        table = stage.pos_embed[:, stage.num_prefix_tokens:]  # 1, P + h*w, C -> 1, h*w, C
        H, W = feat_size
        if i == 0 and H * W == table.shape[1]:
            return table
        return resize_abs_pos_embed(table, stage.grid_size, (H, W), 0, "bilinear")

    def forward(self, x: Tensor) -> List[Tensor]:
        """
        Args:
            x (Tensor[B, 3, H, W]): the network input (any size).

        Returns:
            List[Tensor[B, C_i, H_i, W_i]]: the maps of ``out_indices`` (strides 4, 8, 16, 32; sizes as
            the authors' code gives them).
        """
        if x.dim() != 4:
            raise ValueError(f"Expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        m = self.model
        p = m.patch_size
        if self.family == "swin" and (x.shape[2] % p or x.shape[3] % p):
            x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        tokens, feat_size = m.patch_embed(x)
        B = x.shape[0]
        outs = []
        for i, stage in enumerate(m.stages[:max(self.out_indices) + 1]):
            if stage.downsample is not None:
                tokens, feat_size = stage.downsample(tokens, feat_size)
            if stage.pos_embed is not None:
                tokens = stage.pos_drop(tokens + self._pos_embed(i, stage, feat_size))
            checkpointed = self._wrapped.stages[i].grad_checkpointing and torch.is_grad_enabled()
            for blk in stage.blocks:
                if checkpointed:  # set_grad_checkpointing()
                    tokens = torch.utils.checkpoint.checkpoint(blk, tokens, feat_size, use_reentrant=False)
                else:
                    tokens = blk(tokens, feat_size)
            if i in self.out_indices:
                y = self.out_norms[str(i)](tokens) if str(i) in self.out_norms else tokens
                outs.append(y.transpose(1, 2).reshape(B, y.shape[2], *feat_size))  # B, N, C -> B, C, H, W
        return outs


def _count(keys: Sequence[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _side(n: int, what: str) -> int:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise CheckpointMismatchError(f"{what}: {n} entries is not a square grid")
    return side


def _mlp_ratio(hidden: int, dim: int) -> float:
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # int() of a float product: nudge until it gives the width back
        ratio = (hidden + 0.5) / dim
    return ratio


def build_release_backbone(
        sd: Mapping[str, Tensor],
        cfg: Optional[Dict] = None,
        model_kwargs: Optional[Mapping] = None,
) -> Tuple["ReleaseBackbone", Dict[str, Tensor]]:
    """The backbone of a release and its weights under litvit's names.

    Args:
        sd (Mapping[str, Tensor]): the release's ``backbone.*`` entries, prefix removed.
        cfg (dict, optional): the config's ``model.backbone`` (type, num_heads, qk_scale, ...).
        model_kwargs (Mapping, optional): ``drop_path_rate`` (for training) and, for LIT-Ti,
            ``num_heads`` (the authors' are fixed at 1-2-5-8; a litvit model's may differ): what the
            weights do not tell; anything else is refused.

    Returns:
        (ReleaseBackbone, dict): the backbone (random weights) and the state dict to load into it.

    Raises:
        CheckpointMismatchError: the keys are neither the LIT-Ti nor the LIT-S layout, or ask for
            something the authors' configs do not use (absolute position embedding in LIT-S, no
            patch norm, ``qk_scale``).
    """
    cfg = dict(cfg or {})
    extra = dict(model_kwargs or {})
    unknown = sorted(set(extra) - {"drop_path_rate", "num_heads"})
    if unknown:
        raise ValueError(f"the weights fix the backbone's architecture; only drop_path_rate (and LIT-Ti's "
                         f"num_heads, which its weights do not tell) can be set, got {', '.join(unknown)}")
    heads_given = extra.pop("num_heads", None)
    keys = list(sd)
    if "patch_embed1.proj.weight" in sd:
        family = "pvt"
        n = 4
        dims = [sd[f"pos_embed{i + 1}"].shape[-1] for i in range(n)]
        depths = [_count(keys, rf"block{i + 1}\.(\d+)\.") for i in range(n)]
        attn = [f"block{i + 1}.0.attn.qkv.weight" in sd for i in range(n)]
        mlp = [_mlp_ratio(sd[f"block{i + 1}.0.mlp.fc1.weight"].shape[0], dims[i]) for i in range(n)]
        qkv_bias = any(k.endswith("attn.qkv.bias") for k in keys) or not any(attn)
        patch = sd["patch_embed1.proj.weight"].shape[-1]
        grid = _side(sd["pos_embed1"].shape[1], "backbone.pos_embed1")
        heads = list(heads_given or LIT_TI_HEADS)  # the authors' LIT_Ti fixes them; a litvit model may not
        model = LIT(img_size=grid * patch, patch_size=patch, num_classes=0, global_pool="token", embed_dims=dims,
                    depths=depths, num_heads=heads, mlp_ratios=mlp,
                    attn_types=["msa" if a else "none" for a in attn], merge="dtm", pos_embed="abs",
                    class_token=True, qkv_bias=qkv_bias, norm_eps=1e-6, **extra)
        out_norms: List[int] = []
        out_indices = (0, 1, 2, 3)  # LIT_Ti ignores its config
    elif any(k.startswith("layers.") for k in keys):
        family = "swin"
        n = _count(keys, r"layers\.(\d+)\.")
        if n != 4:
            raise CheckpointMismatchError(f"expected 4 backbone stages (layers.0-3), found {n}")
        if cfg.get("ape") or "absolute_pos_embed" in sd:
            raise CheckpointMismatchError("LIT-S with an absolute position embedding (ape=True) is not supported")
        if "patch_embed.norm.weight" not in sd:
            raise CheckpointMismatchError("LIT-S without a patch norm (patch_norm=False) is not supported")
        if cfg.get("qk_scale") is not None:
            raise CheckpointMismatchError(f"qk_scale={cfg['qk_scale']} is not supported (head_dim ** -0.5 only)")
        dims = [sd[f"layers.{i}.blocks.0.norm2.weight"].shape[0] for i in range(n)]
        depths = [_count(keys, rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(n)]
        attn = [f"layers.{i}.blocks.0.attn.qkv.weight" in sd for i in range(n)]
        mlp = [_mlp_ratio(sd[f"layers.{i}.blocks.0.mlp.fc1.weight"].shape[0], dims[i]) for i in range(n)]
        qkv_bias = any(k.endswith("attn.qkv.bias") for k in keys) or not any(attn)
        patch = sd["patch_embed.proj.weight"].shape[-1]
        heads = list(cfg.get("num_heads") or LIT_S_HEADS)
        grids = set()
        for i in range(n):
            table = sd.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
            if table is not None:
                heads[i] = table.shape[1]
                side = (_side(table.shape[0], f"backbone.layers.{i} relative position table") + 1) // 2
                grids.add(side * 2 ** i)
        for i in range(n):
            if not attn[i] and dims[i] % heads[i]:
                heads[i] = 1  # unused by MLP stages
        if len(grids) > 1:
            raise CheckpointMismatchError(f"the relative position tables are sized for different inputs ({grids})")
        grid = grids.pop() if grids else 224 // patch
        model = LIT(img_size=grid * patch, patch_size=patch, num_classes=0, global_pool="avg", embed_dims=dims,
                    depths=depths, num_heads=heads, mlp_ratios=mlp, attn_types=["msa" if a else "none" for a in attn],
                    merge="dtm", pos_embed="rel", class_token=False, qkv_bias=qkv_bias, norm_eps=1e-5, **extra)
        out_norms = [i for i in range(n) if f"norm{i}.weight" in sd]
        out_indices = tuple(int(i) for i in cfg.get("out_indices", (0, 1, 2, 3)))
    else:
        raise CheckpointMismatchError("the backbone is neither LIT-Ti (backbone.patch_embed1, block1, ...) nor "
                                      "LIT-S (backbone.patch_embed, layers.0, ...)")
    backbone = ReleaseBackbone(model, family, out_norms, out_indices)
    return backbone, backbone_state_dict(sd)


def backbone_state_dict(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The release's backbone entries under :class:`ReleaseBackbone`'s names
    (``model.patch_embed.*``, ``model.stages.{i}.*``, ``out_norms.{i}.*``)."""
    out = {}
    for k, v in official_to_litvit(dict(sd)).items():
        m = re.match(r"^norm(\d)\.(.*)$", k)
        out[f"out_norms.{m[1]}.{m[2]}" if m else f"model.{k}"] = v
    return out


def dense_backbone(
        name: str,
        task: str = "detection",
        recipe: str = "retinanet-1x",
        pretrained: Optional[str] = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        backbone_kwargs: Optional[Dict] = None,
) -> ReleaseBackbone:
    """The authors' dense backbone of a litvit model name, for litvit's own detectors and segmenters:
    the same :class:`ReleaseBackbone` a release is loaded into, built from ``name`` instead of a
    state dict.

    Args:
        name (str): any LIT model name (``lit_ti``, ``lit_s``, an ablation model, ...).
        task (str): ``"detection"`` or ``"segmentation"``: the grid LIT-S's relative tables are
            learned for (800 / 512 px) and which stages get an output LayerNorm (the recipe's).
        recipe (str): the dense recipe whose family rules apply (:data:`litvit.recipes.DENSE_RECIPES`).
        pretrained (str, optional): an ImageNet checkpoint (official or litvit) for the backbone.
        frozen_stages (int), norm_eval (bool): see :class:`~litvit.models.backbone.LITBackbone`.
        backbone_kwargs (dict, optional): passed to :func:`litvit.create_model` (``img_size``,
            ``drop_path_rate``, widths of tiny test models, ...).

    Returns:
        ReleaseBackbone: all four stages, in the authors' handling of sizes.
    """
    kwargs = dense_backbone_kwargs(name, task, recipe, backbone_kwargs)
    out_norms = kwargs.pop("out_norms", ()) or ()
    kwargs.pop("pos_embed_interpolation", None)  # the authors' rule: bilinear for LIT-Ti's tables
    model = create_model(name, num_classes=0, **kwargs)
    family = "pvt" if model.num_prefix_tokens else "swin"  # as backbone_family(name) tells, for these kwargs
    backbone = ReleaseBackbone(model, family, out_norms=tuple(out_norms), frozen_stages=frozen_stages,
                               norm_eval=norm_eval)
    if pretrained:
        backbone.load_pretrained(pretrained)
        backbone._freeze_stages()
    return backbone
