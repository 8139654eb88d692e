"""Facts as data: each variant's pretrained cfg names its family, its dense grid and its stage widths;
recipes and dense commands read them there instead of building the model."""
import pytest
import timm
import torch

import litvit
from litvit.cli import build_parser
from litvit.models import MODEL_NAMES
from litvit.models.factory import FAMILIES, model_facts
from litvit.models.lit import LIT, Attention
from litvit.models.litv2 import LITv2
from litvit.recipes import default_recipe_for, resolve_dense, resolve_recipe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_cfg_says_what_the_built_model_is(name):
    """The facts against the model itself (on the meta device): class token -> pvt, LITv2 -> litv2,
    else swin; the stage widths; a dense grid exactly where there are relative position tables."""
    facts = model_facts(name)
    with torch.device("meta"):
        model = litvit.create_model(name, num_classes=0)
    family = "litv2" if isinstance(model, LITv2) else ("pvt" if model.num_prefix_tokens else "swin")
    assert facts["family"] == family
    assert facts["stage_channels"] == tuple(model.embed_dims) == tuple(i["num_chs"] for i in model.feature_info)
    relative = any(isinstance(m, Attention) and m.relative_position_bias_table is not None for m in model.modules())
    assert (facts["dense_img_size"] is not None) == relative
    assert model.pretrained_cfg["family"] == family  # timm's cfg of the built model carries them too


def test_unknown_names_and_families_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'lit_x'"):
        model_facts("lit_x")
    import dataclasses
    get = timm.models.get_pretrained_cfg
    monkeypatch.setattr(timm.models, "get_pretrained_cfg",
                        lambda name, **kw: dataclasses.replace(get(name, **kw), family="convnext"))
    with pytest.raises(ValueError, match="names no known family \\('convnext'"):
        model_facts("lit_s")
    with pytest.raises(ValueError, match="names no known family"):
        default_recipe_for("/data/imagenet", "lit_s")  # once: LIT-Ti's recipe, silently
    assert set(FAMILIES) == {"pvt", "swin", "litv2"}


def test_default_recipe_reads_the_family():
    assert [default_recipe_for("/data/imagenet", m) for m in ("lit_ti", "pvt_s", "lit_s_no_dtm", "lit_b", "litv2_s")] \
        == ["lit-ti", "lit-ti", "lit-smb", "lit-smb", "litv2"]
    assert default_recipe_for("digits", "lit_b") == "digits" and default_recipe_for("x", None) == "lit-ti"


def test_recipe_resolution_is_a_library_function():
    name, r = resolve_recipe(dict(data="/data/imagenet", model="lit_s", aa="off", clip_grad=0, device="cpu"))
    assert name == "lit-smb" and r["aa"] is None and r["clip_grad"] is None
    # the recipe's fp16 stays in the recipe; the run plan is the one place it is turned off on the CPU
    from litvit.engine import resolve_amp
    assert r["amp"] == "fp16" and resolve_amp(r["amp"], "cpu", from_recipe=True)[0] == "none"
    with pytest.raises(ValueError, match="MIN must not exceed MAX"):
        resolve_recipe(dict(scale=(0.9, 0.1)))
    r = resolve_dense("semantic-fpn-80k", "litv2_s", dict(crop_size=[256], device="cpu"))
    assert r["backbone_family"] == "swin" and r["crop_size"] == (256,) and r["overridden"] == ["crop_size"]


def _count_lit_builds(monkeypatch):
    built = []
    init = LIT.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)
    monkeypatch.setattr(LIT, "__init__", counting)
    return built


@pytest.mark.parametrize("command, module", [("detect", "litvit.cli.detection"), ("segment", "litvit.cli.segmentation")])
def test_print_config_builds_the_backbone_once(monkeypatch, command, module):
    """``detect train --print-config`` built LIT five times for LIT-S (family twice, grid, the
    flags' check, the model); now only the model it prints is built."""
    import importlib
    resolved_config = importlib.import_module(module).resolved_config
    args = build_parser().parse_args([command, "train", "--backbone", "lit_s", "--print-config", "--output", "x"])
    built = _count_lit_builds(monkeypatch)
    config = resolved_config(args)
    assert len(built) == 1
    grid = [800, 800] if command == "detect" else [512, 512]
    assert (config["model"]["backbone_family"], config["model"]["backbone_img_size"]) == ("swin", grid)
