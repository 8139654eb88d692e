"""LITBackbone / LITFPN: multi-scale maps, arbitrary sizes, freezing, norm-eval, backbone-only loading."""
import copy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import litvit
import litvit.detection
import litvit.segmentation
from litvit.engine import param_groups
from litvit.models import CheckpointMismatchError
from litvit.models.backbone import LITBackbone, LITFPN, build_backbone
from litvit.models.convert import litvit_to_official
from litvit.models.lit import resize_abs_pos_embed

from helpers import TINY, randomize_

pytestmark = pytest.mark.unit

FAMILY = {"lit_ti": "pvt", "lit_s": "swin"}


def tiny(name="lit_ti", **kw):
    return litvit.create_model(name, **dict(dict(TINY, num_classes=0), **kw))


def manual_maps(model, x, keep_class_token=False, mode="bilinear", norms=None):
    """The backbone's maps by hand, a loop over the model's parts as the backbone computed them
    before it wrapped the model: pad to 32, no class token in stage 4 unless kept (its position
    embedding's map part only), embeddings resized with ``mode``, ``norms[i]`` on stage i's tokens."""
    B, _, H, W = x.shape
    x = F.pad(x, (0, -W % 32, 0, -H % 32))
    x, feat_size = model.patch_embed(x)
    maps = []
    for i, stage in enumerate(model.stages):
        if stage.downsample is not None:
            x, feat_size = stage.downsample(x, feat_size)
        p = stage.num_prefix_tokens if keep_class_token else 0
        if p:
            x = torch.cat((stage.cls_token.expand(B, -1, -1), x), dim=1)
        if stage.pos_embed is not None:
            pos = resize_abs_pos_embed(stage.pos_embed, stage.grid_size, feat_size, stage.num_prefix_tokens, mode)
            x = x + pos[:, stage.num_prefix_tokens - p:]
        for blk in stage.blocks:
            x = blk(x, feat_size)
        y = x[:, p:]
        if norms and i in norms:
            y = norms[i](y)
        maps.append(y.transpose(1, 2).reshape(B, -1, *feat_size))  # B, N, C -> B, C, H, W
    return maps


def attributes(model):
    """Every module's type, mode, parameter and child names and plain attributes."""
    return {name: (type(m), sorted(n for n, v in m._parameters.items() if v is not None), sorted(m._modules),
                   {k: v for k, v in vars(m).items() if not k.startswith("_")})
            for name, m in model.named_modules()}


@pytest.mark.parametrize("name", litvit.list_models())
@pytest.mark.parametrize("size", [(64, 64), (70, 101)])
def test_maps_strides_channels(name, size):
    """Shapes, and the values: the maps a loop over the classifier's parts computes, and (the class
    token kept, position embeddings resized as the classifier does) the classifier's own stage
    outputs on the zero-padded image, read by forward hooks while it classifies."""
    model = randomize_(tiny(name)).eval()
    body = LITBackbone(model).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = body(x)
        by_hand = manual_maps(model, x, norms={int(i): norm for i, norm in body.out_norms.items()})
    H, W = (-(-s // 32) * 32 for s in size)  # padded to a multiple of 32
    assert [f.shape for f in feats] == [(2, c, H // s, W // s) for c, s in zip(body.channels, body.strides)]
    assert body.strides == [4, 8, 16, 32] and [i["num_chs"] for i in body.feature_info] == list(TINY["embed_dims"])
    for a, b in zip(feats, by_hand):
        torch.testing.assert_close(a, b)
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, args, out: outputs.append((m.num_prefix_tokens, *out)))
             for stage in model.stages]
    with torch.no_grad():
        model(F.pad(x, (0, W - size[1], 0, H - size[0])))
        feats = LITBackbone(model, keep_class_token=True, out_norms=False, pos_embed_interpolation="bicubic").eval()(x)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 8  # the classifier's four stages, then the backbone's
    for f, (p, tokens, (h, w)) in zip(feats, outputs[:4]):
        torch.testing.assert_close(f, tokens[:, p:].transpose(1, 2).reshape(2, -1, h, w))  # B, N, C -> B, C, H, W


@pytest.mark.parametrize("name", litvit.list_models())
def test_matches_forward_intermediates_when_keeping_class_token(name):
    model = randomize_(tiny(name)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        # the classifier resizes position embeddings bicubically, the dense backbone bilinearly by default
        body = LITBackbone(model, keep_class_token=True, out_norms=False, pos_embed_interpolation="bicubic").eval()
        feats = body(x)
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b)


def test_class_token_dropped_only_changes_stage_4():
    model = randomize_(tiny("lit_ti")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        body = LITBackbone(model).eval()  # drops the class token (the authors' dense backbone)
        feats = body(x)
        by_hand = manual_maps(model, x)
    assert model.stages[3].cls_token is not None and not body.out_norms  # the model keeps its token
    assert "model.stages.3.cls_token" not in body.state_dict()
    for a, b in zip(feats[:3], ref[:3]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(feats[3], ref[3])
    for a, b in zip(feats, by_hand):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["lit_ti", "pvt_s_msa", "lit_s"])
def test_stage_api_options(name):
    """forward_intermediates' per-call options give the hand loop's maps in both formats."""
    model = randomize_(tiny(name)).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        for class_token in (True, False):
            for mode in ("bilinear", "bicubic"):
                by_hand = manual_maps(model, x, class_token, mode)
                maps = model.forward_intermediates(x, intermediates_only=True, class_token=class_token,
                                                   pos_embed_interpolation=mode)
                tokens = model.forward_intermediates(x, intermediates_only=True, class_token=class_token,
                                                     pos_embed_interpolation=mode, output_fmt="NLC")
                for a, t, b in zip(maps, tokens, by_hand):
                    torch.testing.assert_close(a, b)
                    torch.testing.assert_close(t, b.flatten(2).transpose(1, 2))
        default = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(default, manual_maps(model, x, True, "bicubic")):  # the classifier's
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pos_embed_interpolation"):
        model.forward_intermediates(x, pos_embed_interpolation="nearest")


@pytest.mark.parametrize("name", ["lit_ti", "lit_s", "pvt_s_msa"])
def test_wrapping_leaves_the_model_unchanged(name):
    """Like torchvision's IntermediateLayerGetter: the classifier's state dict, attributes and output
    are the same after wrapping and after backbone forwards; the maps are those of the hand loop."""
    model = randomize_(tiny(name, num_classes=5)).eval()
    images = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 96, 64)  # the trained grid and another one
    with torch.no_grad():
        logits = [model(x) for x in images]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = attributes(model)
    bodies = [LITBackbone(model).eval(), LITBackbone(model, keep_class_token=True, out_indices=(1, 2)).eval()]
    assert attributes(model) == attrs
    for body in bodies:
        # only the parts used, under the model's names: no head, no final norm, no dropped class token
        names = [k for k in body.state_dict() if not k.startswith("out_norms.")]
        expected = [f"model.{k}" for k in state if not k.startswith(("head.", "norm."))
                    and (body.keep_class_token or not k.endswith("cls_token"))]
        assert names == expected
        assert all(p is model.get_parameter(n[len("model."):]) for n, p in body.named_parameters() if n.startswith("model."))
        norms = {int(i): m for i, m in body.out_norms.items()}
        for x in images + (torch.randn(1, 3, 70, 101),):
            with torch.no_grad():
                feats = body(x)
                by_hand = manual_maps(model, x, body.keep_class_token, "bilinear", norms)
            assert len(feats) == len(body.out_indices)
            for a, i in zip(feats, body.out_indices):
                torch.testing.assert_close(a, by_hand[i])
    assert attributes(model) == attrs
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        for x, ref in zip(images, logits):
            torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    assert bodies[0].wrapped is model


def _layer_norm(t, norm):
    mean = t.mean(-1, keepdim=True)
    var = (t - mean).pow(2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_out_norms_for_swin_family():
    model = randomize_(tiny("lit_s")).eval()
    body = LITBackbone(model).eval()
    assert sorted(body.out_norms) == ["1", "2", "3"]  # stages 2-4, as the authors' LIT-S dense backbone
    randomize_(body.out_norms)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        raw = LITBackbone(model, out_norms=False)(x)
        feats = body(x)
        # each normed map is a LayerNorm over channels of the raw stage map; stage 1 is left raw
        torch.testing.assert_close(feats[0], raw[0])
        for i in (1, 2, 3):
            tokens = raw[i].flatten(2).transpose(1, 2)  # B, C, H, W -> B, N, C
            expected = _layer_norm(tokens, body.out_norms[str(i)]).transpose(1, 2).reshape(raw[i].shape)
            torch.testing.assert_close(feats[i], expected)
            assert not torch.allclose(feats[i], raw[i])
        body.out_norms["2"].weight.mul_(2)
        changed = body(x)
    torch.testing.assert_close(changed[2], 2 * feats[2] - body.out_norms["2"].bias[:, None, None])
    for i in (0, 1, 3):
        torch.testing.assert_close(changed[i], feats[i])
    all_four = LITBackbone(tiny("lit_s"), out_norms=(0, 1, 2, 3))
    assert sorted(all_four.out_norms) == ["0", "1", "2", "3"]
    # the dense models pick them by task: detection stages 2-4, segmentation all four (LIT.md)
    det = litvit.detection.retinanet("lit_s", num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=16)
    seg = litvit.segmentation.semantic_fpn("lit_s", num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=16)
    assert sorted(det.backbone.out_norms) == ["1", "2", "3"]
    assert sorted(seg.backbone.out_norms) == ["0", "1", "2", "3"]  # the authors' models: the backbone itself
    for name in ("lit_ti", "pvt_s_msa"):  # the PVT family has none
        assert not litvit.segmentation.semantic_fpn(name, num_classes=2, backbone_kwargs=dict(TINY),
                                                    fpn_channels=16).backbone.out_norms


@pytest.mark.parametrize("name,expected", [("lit_ti", "bilinear"), ("pvt_s_msa", "bilinear")])
def test_pos_embed_resize_by_family(name, expected):
    """Dense backbones of the PVT family resize their absolute position embeddings bilinearly (the
    authors' dense LIT-Ti), the classifier bicubically; the mode reaches the forward."""
    model = randomize_(tiny(name)).eval()
    x = torch.randn(1, 3, 96, 64)  # stage grids 24x16 ... 3x2, not the 16x16 ... 2x2 they were learned for
    stage = model.stages[0]
    pe = stage.pos_embed.detach()
    for mode in ("bilinear", "bicubic"):
        grid = pe.reshape(1, 16, 16, -1).permute(0, 3, 1, 2)  # 1, N, C -> 1, C, H, W
        ref = F.interpolate(grid, size=(24, 16), mode=mode, align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(resize_abs_pos_embed(pe, (16, 16), (24, 16), 0, mode), ref)
    with torch.no_grad():
        classifier = model.forward_intermediates(x, intermediates_only=True)
    assert stage.pos_embed_interpolation == "bicubic"
    for interp in (None, "bilinear", "bicubic"):
        body = LITBackbone(copy.deepcopy(model), keep_class_token=True, out_norms=False,
                           pos_embed_interpolation=interp).eval()
        assert body.pos_embed_interpolation == (interp or expected)
        with torch.no_grad():
            feats = body(x)
            by_hand = manual_maps(model, x, True, interp or expected)
        assert all(s.pos_embed_interpolation == "bicubic" for s in body.wrapped.stages)  # the model's own
        for a, b in zip(feats, by_hand):
            torch.testing.assert_close(a, b)
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(feats, classifier))
        assert same == ((interp or expected) == "bicubic")
    # the detector and the segmenter pick the family's mode
    det = litvit.detection.retinanet(name, num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=16)
    assert det.backbone.pos_embed_interpolation == expected
    with pytest.raises(ValueError, match="pos_embed_interpolation"):
        LITBackbone(tiny(name), pos_embed_interpolation="nearest")


def test_every_parameter_gets_a_gradient():
    fpn = LITFPN(build_backbone("lit_ti", **TINY), (0, 1, 2, 3), 32).train()
    sum(f.float().pow(2).mean() for f in fpn(torch.randn(2, 3, 64, 64)).values()).backward()
    missing = [n for n, p in fpn.named_parameters() if p.grad is None]
    assert not missing, missing


def test_frozen_stages_and_norm_eval():
    body = build_backbone("lit_ti", frozen_stages=2, norm_eval=True, **TINY).train()
    frozen = [n for n, p in body.named_parameters() if not p.requires_grad]
    assert any(n.startswith("model.patch_embed") for n in frozen)
    assert all(n.startswith(("model.patch_embed", "model.stages.0.", "model.stages.1.")) for n in frozen)
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith("model.stages.2."))
    assert not body.model.stages[1].training and body.model.stages[2].training
    bns = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    body(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    # without norm_eval the DTM BatchNorm of an unfrozen stage updates its statistics
    body = build_backbone("lit_ti", **TINY).train()
    bn = body.model.stages[3].downsample.dtm.norm_layer
    before = bn.running_mean.clone()
    body(torch.randn(2, 3, 64, 64))
    assert not torch.equal(before, bn.running_mean)
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("lit_ti", frozen_stages=7, **TINY)


@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
def test_loads_official_layout_checkpoint_into_backbone_only(name, tmp_path):
    src = randomize_(litvit.create_model(name, num_classes=10, **TINY))
    path = tmp_path / f"{name}.pth"
    official = litvit_to_official(src.state_dict(), FAMILY[name])
    torch.save(official if name == "lit_ti" else {"model": official}, path)  # the two release wrappings
    body = build_backbone(name, pretrained=str(path), **TINY)
    ref = src.state_dict()
    for k, v in body.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)
    # at another pre-training size the position tables are resized, not refused
    build_backbone(name, pretrained=str(path), **dict(TINY, img_size=96))
    # into a whole detector: only its backbone changes
    det = litvit.detection.retinanet(name, num_classes=2, pretrained_backbone=str(path), backbone_kwargs=dict(TINY),
                                     fpn_channels=32)
    torch.testing.assert_close(det.backbone.model.patch_embed.proj.weight, src.patch_embed.proj.weight)
    # a checkpoint of another width is refused with the offending keys
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        build_backbone(name, pretrained=str(path), **dict(TINY, embed_dims=(8, 16, 24, 64)))


def test_param_groups_inside_a_detector():
    """The ImageNet rules reach the backbone inside a detector: no decay on the class token,
    offset-predictor weights at lr x 0.01 (the dense tasks use their own rules, test_recipes.py)."""
    det = litvit.detection.mask_rcnn("lit_ti", num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=32)
    groups = {g["name"]: g for g in param_groups(det, 0.05)}
    assert "backbone.model.stages.0.pos_embed" in groups["decay"]["param_names"]
    assert all("conv_offset.weight" in n for n in groups["offset"]["param_names"])
    assert groups["offset"]["lr_mult"] == 0.01
    assert "backbone.model.stages.1.downsample.dtm.dconv.conv_offset.bias" in groups["no_decay"]["param_names"]
    assert "neck.lateral_convs.0.conv.weight" in groups["decay"]["param_names"]


def test_grad_checkpointing_and_early_stop():
    """Checkpointed blocks give the same maps and gradients; stages after the last of out_indices do not run."""
    results = []
    for enable in (False, True):
        torch.manual_seed(0)  # the same weights and input both times
        body = build_backbone("lit_ti", out_indices=(0, 1, 2), **TINY).train()
        randomize_(body)
        body.set_grad_checkpointing(enable)
        feats = body(torch.randn(2, 3, 70, 64))
        sum(f.pow(2).mean() for f in feats).backward()
        results.append((feats, {n: p.grad for n, p in body.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    assert ga.keys() == gb.keys() and not any(k.startswith("model.stages.3.") for k in ga)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], msg=k)
    calls = []
    body = build_backbone("lit_ti", out_indices=(0, 1), **TINY).eval()
    for i, stage in enumerate(body.wrapped.stages):
        stage.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    with torch.no_grad():
        assert [f.shape[1] for f in body(torch.randn(1, 3, 64, 64))] == [16, 32]
    assert calls == [0, 1]
