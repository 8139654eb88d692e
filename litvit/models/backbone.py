"""LIT as a multi-scale backbone for dense prediction, with a feature pyramid.

*Less is More: Pay Less Attention in Vision Transformers* (Pan et al., AAAI 2022,
arXiv 2105.14217) evaluates LIT-Ti and LIT-S as backbones of RetinaNet and Mask R-CNN (COCO) and
of Semantic FPN (ADE20K): the four stage outputs, at strides 4, 8, 16 and 32, feed an FPN.

:class:`LITBackbone` wraps any LIT or ablation model and returns those four maps for images of
any size (padded at the bottom/right to a multiple of 32; position embeddings and relative tables
are resized by the model). It wraps and does not modify: like torchvision's
``IntermediateLayerGetter`` it registers the model's patch embedding and stages (shared, not
copied) and runs them through :meth:`litvit.models.LIT.forward_intermediates` with per-call
options. It follows the authors' detection/segmentation backbones:

* the class token of the PVT family (LIT-Ti) is a classification device and is not used: stage 4
  adds ``pos_embed[:, 1:]`` to its map tokens only (``class_token=False``);
* the final classification norm and the head are not part of the backbone;
* the PVT family's absolute position embeddings are resized *bilinearly* to the grid at hand on
  every forward (the classification model resizes bicubically);
* the Swin family (LIT-S/M/B) gets a fresh LayerNorm on the outputs of stages 2-4 (detection) or
  of all four stages (segmentation) (``out_norms``).

:class:`LITFPN` adds torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` and returns an
``OrderedDict`` of 256-channel maps with an ``out_channels`` attribute, the interface
``torchvision.models.detection`` expects of a backbone.

Examples::
    >>> import torch
    >>> from litvit.models.backbone import build_backbone
    >>> body = build_backbone('lit_ti')
    >>> [tuple(f.shape) for f in body(torch.randn(1, 3, 100, 150))]
    [(1, 64, 32, 40), (1, 128, 16, 20), (1, 320, 8, 10), (1, 512, 4, 5)]
"""
import logging
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ..recipes import DENSE_RECIPES, dense_family
from ..utils import count_parameters
from .convert import checkpoint_filter_fn, load_state_dict_file, official_to_litvit, unwrap_state_dict
from .factory import create_model, model_facts

__all__ = ["LITBackbone", "LITFPN", "build_backbone", "backbone_family", "count_parameters",
           "default_backbone_img_size"]

_logger = logging.getLogger(__name__)


class _SharedParts(nn.Module):
    """Parameters and child modules of ``source`` under the same names, shared, not copied (``None``
    stays ``None``): a view whose state dict, ``parameters()``, ``to()`` and ``train()`` cover what a
    wrapper uses and nothing else. ``attrs`` (those ``source`` has) are copied as plain attributes."""

    def __init__(self, source: nn.Module, params: Sequence[str] = (), modules: Sequence[str] = (),
                 attrs: Sequence[str] = ()):
        super().__init__()
        for name in params:
            self.register_parameter(name, getattr(source, name))
        for name in modules:
            self.add_module(name, getattr(source, name))
        for name in attrs:
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))


class LITBackbone(nn.Module):
    """Stage maps of a LIT model at strides 4, 8, 16, 32 for images of any size.

    The model is wrapped, not modified: its patch embedding and stages are registered here as
    ``model.patch_embed`` and ``model.stages.{i}`` (the same parameters; the head, the final norm
    and, with ``keep_class_token=False``, the class token are left out), and every forward runs
    ``model.forward_intermediates(..., class_token=keep_class_token,
    pos_embed_interpolation=...)``. The classifier keeps working as before; training the backbone
    trains its shared parameters, and ``frozen_stages`` / ``set_grad_checkpointing`` act on them.

    Args:
        model (nn.Module): a :class:`litvit.models.LIT` (any registered model or ablation).
        out_indices (Sequence[int]): stages to return (0-3); later stages are not computed.
        frozen_stages (int): -1 trains everything; 0 freezes the patch embedding; n >= 1 also
            freezes stages 1..n (a stage includes the token merging into it). Frozen parts stay in
            eval mode and get no gradient.
        norm_eval (bool): keep every BatchNorm (the DTM's) in eval mode while training, using and
            not updating the ImageNet statistics (useful with small per-GPU batches).
        keep_class_token (bool): use the PVT family's class token in stage 4, as classification
            does; the authors' dense code drops it (default).
        out_norms (bool | Sequence[int], optional): LayerNorm on stage outputs, as the authors'
            Swin-family dense backbones have: ``True`` for stages 2-4 (their detection backbone), a
            sequence of stage indices (0-3) for exactly those (``(0, 1, 2, 3)``: their segmentation
            backbone), ``False`` for none. ``None``: stages 2-4 for models without a class token
            (LIT-S/M/B), none otherwise.
        pos_embed_interpolation (str, optional): how absolute position embeddings are resized to
            the grid at hand, ``"bilinear"`` or ``"bicubic"``. ``None``: bilinear, as the authors'
            dense LIT-Ti backbones (models without absolute embeddings are unaffected).

    Examples::
        >>> import litvit
        >>> m = litvit.create_model('lit_ti', img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
        ...                         num_heads=(1, 2, 3, 4))
        >>> [f.shape[1:] for f in LITBackbone(m)(torch.randn(1, 3, 70, 96))]
        [torch.Size([16, 24, 24]), torch.Size([32, 12, 12]), torch.Size([48, 6, 6]), torch.Size([64, 3, 3])]
    """

    def __init__(
            self,
            model: nn.Module,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            keep_class_token: bool = False,
            out_norms: Optional[Union[bool, Sequence[int]]] = None,
            pos_embed_interpolation: Optional[str] = None,
    ):
        super().__init__()
        if not hasattr(model, "stages") or len(model.stages) != 4 or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"expected a four-stage LIT model, got {type(model).__name__}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {out_indices}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        mode = pos_embed_interpolation or "bilinear"
        if mode not in ("bilinear", "bicubic"):
            raise ValueError(f"pos_embed_interpolation must be 'bilinear' or 'bicubic', got {mode!r}")
        # The wrapped model runs the forward; it is held outside the module tree so that its
        # classification-only parts are not parameters of the backbone.
        self.__dict__["_wrapped"] = model
        # What the backbone uses, registered under the model's own names: model.patch_embed, model.stages.{i}
        stages = [_SharedParts(stage, params=("cls_token", "pos_embed") if keep_class_token else ("pos_embed",),
                               modules=("downsample", "pos_drop", "blocks", "to_map"),
                               attrs=("grid_size", "num_prefix_tokens"))  # num_prefix_tokens: pos_embed's layout
                  for stage in model.stages]
        self.model = _SharedParts(model, modules=("patch_embed",),
                                  attrs=("img_size", "patch_size", "in_chans", "embed_dims", "reduction", "pretrained_cfg"))
        self.model.stages = nn.Sequential(*stages)
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.keep_class_token = keep_class_token
        self.pos_embed_interpolation = mode
        self.reduction = getattr(model, "reduction", 32)
        self.channels = [model.embed_dims[i] for i in out_indices]
        self.strides = [model.patch_size * 2 ** i for i in out_indices]
        if out_norms is None:
            out_norms = model.num_prefix_tokens == 0
        if isinstance(out_norms, bool):
            out_norms = (1, 2, 3) if out_norms else ()
        if any(int(i) not in range(4) for i in out_norms):
            raise ValueError(f"out_norms must name stages in 0..3, got {tuple(out_norms)}")
        self.out_norms = nn.ModuleDict({
            str(i): nn.LayerNorm(model.embed_dims[i]) for i in out_indices if i in {int(j) for j in out_norms}})
        self._freeze_stages()

    @property
    def wrapped(self) -> nn.Module:
        """The classification model this backbone wraps (unchanged by it)."""
        return self._wrapped

    @property
    def feature_info(self) -> List[Dict]:
        return [dict(num_chs=c, reduction=s, module=f"stages.{i}")
                for c, s, i in zip(self.channels, self.strides, self.out_indices)]

    # --- training behaviour -----------------------------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.model.patch_embed] + [self.model.stages[i] for i in range(min(self.frozen_stages, 4))]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "LITBackbone":
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self

    def no_weight_decay(self) -> set:
        """The model's class token (when kept) and relative position tables (names relative to this module)."""
        exempt = self._wrapped.no_weight_decay()
        return {f"model.{n}" for n, _ in self.model.named_parameters() if n in exempt}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the blocks of the (shared) stages."""
        self._wrapped.set_grad_checkpointing(enable)

    # --- checkpoints ------------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """Load ImageNet weights (official release in either layout, or a litvit checkpoint, bare or
        wrapped) into the backbone; the classifier, final norm and dropped class token are ignored.

        Raises:
            litvit.models.CheckpointMismatchError: the checkpoint is of another model or size.
        """
        sd = official_to_litvit(unwrap_state_dict(load_state_dict_file(path)))
        target = self.model.state_dict()  # the backbone's part of the model, under the model's names
        ignored = [k for k in sd if k.startswith(("head.", "norm.")) or (k.endswith("cls_token") and k not in target)]
        for k in ignored:
            del sd[k]
        sd = checkpoint_filter_fn(sd, self.model)
        self.model.load_state_dict(sd, strict=True)
        _logger.info("loaded backbone weights from %s (%d tensors; ignored %s)", path, len(sd), ", ".join(ignored) or "none")

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> List[Tensor]:
        """
        Args:
            x (Tensor[B, C, H, W]): images of any size.

        Returns:
            List[Tensor[B, C_i, ceil(H / 32) * 32 / s_i, ceil(W / 32) * 32 / s_i]]: one map per
            ``out_indices`` entry, s_i = 4, 8, 16, 32 (the padded image's grid).
        """
        if x.dim() != 4:
            raise ValueError(f"Expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        pad_h, pad_w = -H % self.reduction, -W % self.reduction
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # bottom/right, zeros (the mean colour after normalisation)
        H, W = H + pad_h, W + pad_w
        tokens = self._wrapped.forward_intermediates(
            x, indices=list(self.out_indices), stop_early=True, output_fmt="NLC", intermediates_only=True,
            class_token=self.keep_class_token, pos_embed_interpolation=self.pos_embed_interpolation)
        outs = []
        for i, s, y in zip(self.out_indices, self.strides, tokens):
            if str(i) in self.out_norms:
                y = self.out_norms[str(i)](y)
            outs.append(y.transpose(1, 2).reshape(y.shape[0], y.shape[2], H // s, W // s))  # B, N, C -> B, C, H, W
        return outs


class LITFPN(nn.Module):
    """A :class:`LITBackbone` followed by torchvision's FeaturePyramidNetwork.

    Args:
        body (LITBackbone): the multi-scale backbone.
        fpn_stages (Sequence[int]): which of ``body``'s stages (0-3) enter the FPN, e.g. ``(1, 2, 3)``
            for RetinaNet (P3-P5), ``(0, 1, 2, 3)`` for Mask R-CNN and Semantic FPN (P2-P5).
        out_channels (int): FPN width.
        extra_blocks (ExtraFPNBlock, optional): extra levels (``LastLevelP6P7``, ``LastLevelMaxPool``).
        norm_layer (Callable[..., nn.Module], optional): normalisation inside the FPN convs.

    The output is an ``OrderedDict`` named ``"0"``, ``"1"``, ... for the FPN levels, then the extra
    blocks' names (``"p6"``, ``"p7"`` or ``"pool"``); ``out_channels`` is set for torchvision.
    """

    def __init__(
            self,
            body: LITBackbone,
            fpn_stages: Sequence[int] = (0, 1, 2, 3),
            out_channels: int = 256,
            extra_blocks: Optional[ExtraFPNBlock] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
    ):
        super().__init__()
        missing = [i for i in fpn_stages if i not in body.out_indices]
        if missing:
            raise ValueError(f"fpn_stages {tuple(fpn_stages)} asks for stages {missing} the backbone does not "
                             f"return (out_indices={body.out_indices})")
        self.body = body
        self.fpn_stages = tuple(fpn_stages)
        self._take = [body.out_indices.index(i) for i in self.fpn_stages]
        in_channels = [body.channels[j] for j in self._take]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_blocks, norm_layer=norm_layer)
        self.out_channels = out_channels

    def no_weight_decay(self) -> set:
        return {f"body.{n}" for n in self.body.no_weight_decay()}

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """
        Args:
            x (Tensor[B, C, H, W]): images (normalised), any size.

        Returns:
            OrderedDict[str, Tensor[B, out_channels, h_l, w_l]]: FPN levels from the finest.
        """
        feats = self.body(x)
        return self.fpn(OrderedDict((str(k), feats[j]) for k, j in enumerate(self._take)))


def build_backbone(
        name: str = "lit_ti",
        pretrained: Optional[str] = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        keep_class_token: bool = False,
        out_norms: Optional[Union[bool, Sequence[int]]] = None,
        pos_embed_interpolation: Optional[str] = None,
        **model_kwargs,
) -> LITBackbone:
    """Build a LIT model by name and wrap it as a :class:`LITBackbone`.

    Args:
        name (str): any of :func:`litvit.list_models`.
        pretrained (str, optional): an ImageNet checkpoint file (official or litvit) loaded into the
            backbone only (classifier dropped, position tables resized).
        out_indices, frozen_stages, norm_eval, keep_class_token, out_norms, pos_embed_interpolation: see
            :class:`LITBackbone`.
        **model_kwargs: passed to :func:`litvit.create_model` (``img_size``, ``drop_path_rate``,
            ``embed_dims``, ...). ``img_size`` sets the grid that position embeddings and relative
            tables are learned for: the authors' dense LIT-S used 800 (COCO) and 512 (ADE20K).

    Examples::
        >>> build_backbone('lit_s', img_size=512).channels
        [96, 192, 384, 768]
    """
    model = create_model(name, num_classes=0, **model_kwargs)
    backbone = LITBackbone(model, out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval,
                           keep_class_token=keep_class_token, out_norms=out_norms,
                           pos_embed_interpolation=pos_embed_interpolation)
    if pretrained:
        backbone.load_pretrained(pretrained)
        backbone._freeze_stages()
    return backbone


def default_backbone_img_size(backbone: str, task: str = "detection") -> Optional[int]:
    """The grid the authors learned LIT-S/M/B's relative position tables for in dense tasks:
    800x800 for COCO and 512x512 for ADE20K. ``None`` (keep the model's 224) for models without
    relative tables (LIT-Ti and the PVT ablations, whose absolute embeddings are resized on the fly).
    Read from the variant's pretrained cfg (:func:`~litvit.models.factory.model_facts`), nothing built."""
    grid = model_facts(backbone)["dense_img_size"]
    if not grid:
        return None
    return grid["detection" if task == "detection" else "segmentation"]


def backbone_family(backbone: str) -> str:
    """``"pvt"`` for LIT-Ti and the PVT-S ablations (class token, absolute position embeddings),
    ``"swin"`` for LIT-S/M/B, ``lit_s_no_dtm`` and LITv2: the two families the authors' dense configs
    treat differently (:func:`litvit.recipes.resolve_dense_recipe`); from the variant's pretrained
    cfg (:func:`litvit.recipes.dense_family`), nothing built."""
    return dense_family(backbone)


def dense_backbone_kwargs(backbone: str, task: str, recipe: str, backbone_kwargs: Optional[Dict] = None) -> Dict:
    """``build_backbone`` keyword arguments as the authors' ``task`` backbones of ``backbone``'s family
    have them in ``recipe``: the dense training grid (:func:`default_backbone_img_size`), the output
    norms and the position-embedding interpolation; ``backbone_kwargs`` given by the caller win."""
    kwargs = dict(backbone_kwargs or {})
    if "img_size" not in kwargs:
        img_size = default_backbone_img_size(backbone, task)
        if img_size:
            kwargs["img_size"] = img_size
    family = DENSE_RECIPES[recipe]["by_family"][backbone_family(backbone)]
    kwargs.setdefault("out_norms", family["out_norm_stages"])
    kwargs.setdefault("pos_embed_interpolation", family["pos_embed_interpolation"])
    return kwargs
