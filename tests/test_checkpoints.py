"""Official checkpoints: key layouts, loading through a saved file, logits against a reference
forward written from docs/architecture.md and fed the official layout."""
from pathlib import Path

import pytest
import timm
import torch

import litvit
from litvit.models.convert import CheckpointMismatchError, litvit_to_official, official_to_litvit

from helpers import TINY, randomize_
from reference_lit import reference_forward_pvt, reference_forward_swin

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
FAMILY = {"lit_ti": "pvt", "lit_s": "swin", "lit_m": "swin", "lit_b": "swin", "pvt_s_msa": "pvt"}


def _official_layout(name):
    lines = (DATA / f"{name}.txt").read_text().splitlines()
    return {k: v for k, v in (line.split(" ", 1) for line in lines if not line.startswith("#"))}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_key_layout_matches_the_release(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    official = litvit_to_official(model.state_dict(), FAMILY[name])
    expected = _official_layout(name)
    assert set(official) == set(expected)
    for k, v in official.items():
        assert str(tuple(v.shape)) == expected[k], k
    # and back again, dropping the relative_position_index buffers
    assert set(official_to_litvit(official)) == set(model.state_dict())


def _save_official(model, family, path):
    sd = litvit_to_official(model.state_dict(), family)
    # LIT-Ti is released as a bare state dict, LIT-S/M/B inside {'model': ...} of a Swin-style trainer
    torch.save(sd if family == "pvt" else {"model": sd, "epoch": 299, "max_accuracy": 81.5}, path)
    return sd


CASES = [("lit_ti", reference_forward_pvt), ("lit_s", reference_forward_swin), ("pvt_s_msa", reference_forward_pvt)]


@pytest.mark.parametrize("name,reference", CASES)
@pytest.mark.parametrize("training", [False, True])
def test_official_checkpoint_reproduces_reference_logits(tmp_path, name, reference, training):
    src = randomize_(litvit.create_model(name, num_classes=10, drop_path_rate=0., **TINY))
    path = tmp_path / f"{name}.pth"
    official = _save_official(src, FAMILY[name], path)

    model = litvit.create_model(name, num_classes=10, drop_path_rate=0., checkpoint_path=str(path), **TINY)
    model.train(training)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference(official, x, TINY["num_heads"], training=training)
        for fused in (True, False):
            model.set_fused_attn(fused)
            for impl in ("fast", "torchvision"):
                model.set_dtm_impl(impl)
                torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
def test_timm_pretrained_overlay_file(tmp_path, name):
    src = randomize_(litvit.create_model(name, **TINY))
    path = tmp_path / f"{name}.pth"
    _save_official(src, FAMILY[name], path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    # fine-tuning: another number of classes keeps everything but the classifier
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=3, **TINY)
    assert model.head.out_features == 3
    torch.testing.assert_close(model.stages[2].blocks[0].attn.qkv.weight, src.stages[2].blocks[0].attn.qkv.weight)


def test_pretrained_cfg_points_at_the_release():
    model = timm.create_model("lit_b", pretrained=False, **TINY)
    assert model.pretrained_cfg["url"] == "https://github.com/ziplab/LIT/releases/download/v1.0/lit_b.pth"
    model = timm.create_model("pvt_s_msa", pretrained=False, **TINY)
    assert model.pretrained_cfg["url"] == "https://github.com/zhuang-group/LIT/releases/download/v2.1/pvt_full_msa.pth"


def test_pvt_s_msa_release_layout(tmp_path):
    """The authors' pvt_full_msa.pth (bare state dict, conv merges as patch_embed{2,3,4}.proj/norm)
    loads into pvt_s_msa, through create_model and through timm's pretrained machinery."""
    expected = _official_layout("pvt_s_msa")
    assert sum(int(torch.Size(eval(v)).numel()) for v in expected.values()) == 20_185_384
    src = randomize_(litvit.create_model("pvt_s_msa", **TINY))
    path = tmp_path / "pvt_full_msa.pth"
    sd = _save_official(src, "pvt", path)
    assert "patch_embed3.proj.weight" in sd and "patch_embed3.norm.bias" in sd and "block1.0.attn.qkv.weight" in sd
    for model in (litvit.create_model("pvt_s_msa", checkpoint_path=str(path), **TINY),
                  timm.create_model("pvt_s_msa", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)):
        for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k


def test_wrong_model_fails_with_one_clear_error(tmp_path):
    src = litvit.create_model("lit_s", **TINY)
    path = tmp_path / "lit_s.pth"
    _save_official(src, "swin", path)
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint does not fit lit_ti: missing keys: .*stages\.0\.pos_embed"):
        litvit.create_model("lit_ti", checkpoint_path=str(path), **TINY)
    deeper = dict(TINY, depths=(1, 2, 3, 1))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: stages\.2\.blocks\.2\."):
        litvit.create_model("lit_s", checkpoint_path=str(path), **deeper)
    wider = dict(TINY, embed_dims=(16, 32, 48, 96))
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped keys: stages\.3\.downsample"):
        litvit.create_model("lit_s", checkpoint_path=str(path), **wider)
    with pytest.raises(FileNotFoundError):
        litvit.create_model("lit_s", checkpoint_path=str(tmp_path / "nope.pth"), **TINY)


def test_checkpoint_at_another_resolution_is_resized(tmp_path):
    for name, family in (("lit_ti", "pvt"), ("lit_s", "swin")):
        src = randomize_(litvit.create_model(name, **TINY))
        path = tmp_path / f"{name}.pth"
        _save_official(src, family, path)
        model = litvit.create_model(name, checkpoint_path=str(path), **dict(TINY, img_size=96)).eval()
        src.eval()
        x = torch.randn(1, 3, 96, 96)
        # loading at 96 px resizes the tables once; the 64-px model resizes them on the fly: same logits
        torch.testing.assert_close(model(x), src(x), rtol=1e-4, atol=1e-4)


def test_litvit_state_dict_and_ddp_prefix_load(tmp_path):
    src = randomize_(litvit.create_model("lit_ti", **TINY))
    path = tmp_path / "ours.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    model = litvit.create_model("lit_ti", checkpoint_path=str(path), **TINY)
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
