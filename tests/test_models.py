"""Every registered model: shapes, gradients, checkpointing, features, sizes, attention paths."""
import pytest
import timm
import torch

import litvit
from litvit.models.lit import Attention, relative_position_index, resize_rel_pos_table

from helpers import TINY, forward_by_hand, randomize_

pytestmark = pytest.mark.unit

MODELS = litvit.list_models()
PARAMS = {"lit_ti": 19_886_272, "lit_s": 27_973_720, "lit_m": 49_372_264, "lit_b": 87_292_384,
          "pvt_s_msa": 20_185_384}


@pytest.mark.parametrize("name,expected", sorted(PARAMS.items()))
def test_parameter_counts_equal_the_official_ones(name, expected):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_registered_in_timm():
    assert set(MODELS) <= set(timm.list_models("*"))
    for name in ("lit_ti", "lit_s", "lit_m", "lit_b"):
        assert name in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    model = litvit.create_model(name, num_classes=5, drop_path_rate=0.1, **TINY)
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    # the zero-initialised offset predictors receive a non-zero gradient
    for n, p in model.named_parameters():
        if "conv_offset.weight" in n:
            assert p.grad.abs().sum() > 0, n
    # the values, in float64: the logits are those of a loop over the model's parts, and the gradient
    # along a random direction of all parameters is the central difference of the loss. DTM samples
    # bilinearly, smooth only between pixels: steps of 1e-6 along every parameter at once move some
    # sampling points across a pixel edge (2% off for litv2_b), steps of 1e-7 stay inside
    model = randomize_(model).double().eval()
    x = x.double()
    torch.testing.assert_close(model(x), forward_by_hand(model, x), rtol=1e-10, atol=1e-10)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    model.zero_grad()
    model(x).square().sum().backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction))
    eps, losses = 1e-7, []
    with torch.no_grad():
        for sign in (1, -2, 1):  # +eps, -eps, back
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            losses.append(model(x).square().sum())
    numeric = (losses[0] - losses[1]) / (2 * eps)
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_same_output(name):
    model = randomize_(litvit.create_model(name, num_classes=5, **TINY)).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    y0 = model(x)
    model.set_grad_checkpointing(True)
    y1 = model(x)
    torch.testing.assert_close(y0, y1)
    y1.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", MODELS)
def test_fused_and_plain_attention_agree(name):
    model = randomize_(litvit.create_model(name, num_classes=5, **TINY)).eval()
    x = torch.randn(2, 3, 96, 64)  # not the training size: resized tables too
    y_fused = model(x)
    model.set_fused_attn(False)
    torch.testing.assert_close(model(x), y_fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    model = litvit.create_model(name, features_only=True, **TINY)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == list(TINY["embed_dims"])
    feats = model(torch.randn(2, 3, 64, 96))
    for f, c, r in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.shape == (2, c, 64 // r, 96 // r)
    model = litvit.create_model(name, features_only=True, out_indices=(1, 3), **TINY)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64]


@pytest.mark.parametrize("name", MODELS)
def test_variable_input_size(name):
    """At every size the logits are those of the loop over the model's parts (embeddings and
    relative tables resized for the map; the model's caches by size are served back correctly)."""
    model = randomize_(litvit.create_model(name, num_classes=3, **TINY)).eval()
    for h, w in [(64, 64), (32, 32), (96, 160), (128, 64), (32, 32)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 3)
        torch.testing.assert_close(y, forward_by_hand(model, x).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Input height \(70\) and width \(64\) must be multiples of 32"):
        model(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match="Expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))


def test_timm_api():
    model = litvit.create_model("lit_ti", **TINY)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 4, 64)  # class token + 2x2 map
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)
    model.reset_classifier(7, global_pool="avg")
    assert model(x).shape == (2, 7)
    nwd = model.no_weight_decay()
    assert nwd == {"stages.3.cls_token"}  # as the authors': LIT-Ti's position embeddings are decayed
    swin = litvit.create_model("lit_s", **TINY)
    assert any(n.endswith("relative_position_bias_table") for n in swin.no_weight_decay())
    final, inter = swin.forward_intermediates(x)
    assert final.shape == (2, 4, 64) and len(inter) == 4
    inter = swin.forward_intermediates(x, indices=[2], output_fmt="NLC", intermediates_only=True, stop_early=True)
    assert inter[0].shape == (2, 16, 48)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match=r"embed_dims\[2\]=48 is not divisible by num_heads\[2\]=5"):
        litvit.create_model("lit_ti", img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                            num_heads=(1, 2, 5, 4))
    with pytest.raises(ValueError, match="depths must have 4 entries"):
        litvit.create_model("lit_ti", depths=(1, 1, 1))
    with pytest.raises(ValueError, match="img_size=.* must be a multiple of 32"):
        litvit.create_model("lit_ti", img_size=100)
    with pytest.raises(ValueError, match="unknown model 'lit_xl'"):
        litvit.create_model("lit_xl")


def test_relative_position_index_formula():
    H, W = 3, 4
    index = relative_position_index(H, W)
    for n in range(H * W):
        for m in range(H * W):
            dy, dx = n // W - m // W, n % W - m % W
            assert index[n, m] == (dy + H - 1) * (2 * W - 1) + (dx + W - 1)


def test_rel_table_resize_is_identity_at_training_size_and_bicubic_else():
    table = torch.randn(7 * 7, 3)
    assert resize_rel_pos_table(table, (4, 4), (4, 4)) is table
    resized = resize_rel_pos_table(table, (4, 4), (6, 5))
    assert resized.shape == (11 * 9, 3)
    img = table.t().reshape(1, 3, 7, 7)
    expected = torch.nn.functional.interpolate(img, size=(11, 9), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized, expected.reshape(3, -1).t())


def test_plain_attention_probabilities_are_hookable():
    attn = Attention(16, 2, rel_pos_size=(2, 2), fused_attn=False)
    seen = []
    attn.attn_probs.register_forward_hook(lambda m, i, o: seen.append(o))
    attn(torch.randn(1, 4, 16), (2, 2))
    assert seen[0].shape == (1, 2, 4, 4)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(1, 2, 4))


def test_empty_batch():
    for name in ("lit_ti", "lit_s"):
        model = litvit.create_model(name, **TINY).eval()
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 1000)
