"""LITv2 (HiLo attention): sizes and release layouts of the authors' models, outputs equal to the
authors' code (fixtures made by it, ``tests/data/official_litv2/generate.py``) in eval and train
mode, the fused HiLo against the plain reference, inputs of any multiple of 32 (padding where a map
is not a multiple of the window), backbone use."""
from pathlib import Path

import pytest
import timm
import torch

import litvit
from litvit.models.litv2 import HiLo, hilo_heads

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "official_litv2"
KEYS = DATA / "keys"  # the authors' full-size release layouts (key, shape), listed by their code
MINI = dict(embed_dims=(6, 12, 24, 48), depths=(1, 1, 2, 1), num_classes=10, drop_path_rate=0.)
FIXTURES = {"litv2_s_mini": 0.9, "litv2_s_mini_alpha0": 0.0, "litv2_s_mini_alpha1": 1.0}
TINY_V2 = dict(img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize("name, alpha, expected", [
    ("litv2_s", 0.9, 27_844_000), ("litv2_m", 0.9, 48_830_368), ("litv2_b", 0.9, 86_520_704),
    ("litv2_b_384", 0.9, 86_520_704),
    # the alpha ablation: the two projections are block-diagonal, so the count depends on alpha
    ("litv2_s", 0.0, 28_089_760), ("litv2_s", 0.2, 27_844_000), ("litv2_s", 0.4, 27_696_544),
    ("litv2_s", 0.5, 27_647_392), ("litv2_s", 0.7, 27_696_544), ("litv2_s", 1.0, 28_089_760),
])
def test_parameter_counts_equal_the_authors(name, alpha, expected):
    model = litvit.create_model(name, alpha=alpha, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected


def test_head_split_truncates_as_the_authors_code():
    assert hilo_heads(12, 2, 0.9) == (2, 10)
    assert hilo_heads(12, 2, 0.7) == (4, 8)  # 12 * 0.7 = 8.39...
    assert hilo_heads(16, 2, 0.9) == (2, 14)
    assert hilo_heads(24, 1, 0.0) == (0, 24)  # window 1: plain attention through the Lo-Fi modules
    attn = HiLo(96, 12, window_size=2, alpha=0.0)
    assert not hasattr(attn, "l_q") and attn.h_qkv.out_features == 3 * 96


def _official_shapes(path: Path) -> dict:
    return dict(line.rstrip("\n").split("\t")[:2] for line in path.read_text().splitlines() if line.strip())


@pytest.mark.parametrize("name, kwargs, listing", [
    ("litv2_s", {}, "litv2_s"), ("litv2_m", {}, "litv2_m"), ("litv2_b", {}, "litv2_b"),
    ("litv2_s", dict(alpha=0.0), "litv2_s_alpha0"), ("litv2_s", dict(alpha=1.0), "litv2_s_alpha1"),
])
def test_release_layouts_load(name, kwargs, listing):
    """Every key of the authors' release renames to one of ours with the same shape, and back."""
    official = _official_shapes(KEYS / f"{listing}.txt")
    from litvit.models.convert import official_to_litvit
    renamed = official_to_litvit({k: torch.empty(0) for k in official})
    ours = {k: str(tuple(v.shape)) for k, v in litvit.create_model(name, device="meta", **kwargs).state_dict().items()}
    assert sorted(renamed) == sorted(ours)
    for (k_off, shape), k_ours in zip(official.items(), renamed):
        assert ours[k_ours] == shape, (k_off, k_ours)


def _mini(name: str, **kwargs) -> torch.nn.Module:
    return litvit.create_model("litv2_s", alpha=FIXTURES[name], checkpoint_path=str(DATA / f"{name}.pth"),
                               **MINI, **kwargs)


@pytest.mark.parametrize("name", FIXTURES)
def test_equals_the_authors_code(name):
    """Eval (224-style 64 px and 96 px), train mode (DTM's BatchNorm on batch statistics) and each
    stage's output, on both attention paths and both DTM implementations."""
    expected = torch.load(DATA / f"{name}_expected.pt", weights_only=True)
    x, x96 = expected["input"].float(), expected["input_96"].float()
    model = _mini(name).eval()
    tol = dict(rtol=1e-4, atol=1e-4)
    for fused in (True, False):
        model.set_fused_attn(fused)
        for impl in ("fast", "torchvision"):
            model.eval().set_dtm_impl(impl)
            with torch.no_grad():
                torch.testing.assert_close(model(x), expected["logits_eval"], **tol)
                torch.testing.assert_close(model(x96), expected["logits_96_eval"], **tol)
                maps = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
                # the authors' stage i ends with the DTM into stage i + 1
                sizes = [(16, 16), (8, 8), (4, 4)]
                ours = [model.stages[i + 1].downsample(maps[i], sizes[i])[0] for i in range(3)] + [maps[3]]
                for i, (a, b) in enumerate(zip(ours, expected["features_eval"])):
                    torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"stage {i}: {m}")
                state = {k: v.clone() for k, v in model.state_dict().items()}
                torch.testing.assert_close(model.train()(x), expected["logits_train"], **tol)
                model.load_state_dict(state)  # the train forward moved the running statistics


def test_release_through_timm_pretrained_and_the_alpha_tags(tmp_path):
    src = DATA / "litv2_s_mini_alpha0.pth"
    expected = torch.load(DATA / "litv2_s_mini_alpha0_expected.pt", weights_only=True)
    # the tag of the alpha release sets alpha; the file stands in for the download
    model = timm.create_model("litv2_s.alpha_0", pretrained=True, pretrained_cfg_overlay=dict(file=str(src)), **MINI)
    assert model.alpha == 0.0 and model.pretrained_cfg["url"].endswith("/v1.1/alpha_0.pth")
    with torch.no_grad():
        logits = model.eval()(expected["input"].float())
    torch.testing.assert_close(logits, expected["logits_eval"], rtol=1e-4, atol=1e-4)
    # fine-tuning on another number of classes keeps everything but the classifier
    model = timm.create_model("litv2_s.alpha_0", pretrained=True, pretrained_cfg_overlay=dict(file=str(src)),
                              **dict(MINI, num_classes=3))
    assert model.head.out_features == 3
    urls = {name: timm.create_model(name, device="meta").pretrained_cfg["url"]
            for name in ("litv2_s", "litv2_m", "litv2_b", "litv2_b_384")}
    assert urls["litv2_b_384"] == "https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_b_384.pth"
    assert urls["litv2_s"].endswith("/v1.0/litv2_s.pth")


def _hilo_pair(dim, heads, ws, alpha):
    fast = HiLo(dim, heads, window_size=ws, alpha=alpha, dtype=torch.float64)
    plain = HiLo(dim, heads, window_size=ws, alpha=alpha, fused_attn=False, dtype=torch.float64)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@pytest.mark.parametrize("dim, heads, ws, alpha, size", [
    (12, 3, 2, 0.9, (6, 10)), (12, 3, 2, 0.0, (4, 4)), (12, 3, 2, 1.0, (6, 2)), (16, 4, 3, 0.5, (5, 7)),
    (8, 2, 1, 0.5, (3, 5)), (12, 4, 4, 0.7, (6, 10)),
])
def test_fused_hilo_equals_the_plain_reference(dim, heads, ws, alpha, size):
    """Forward and backward in float64, including maps that are not multiples of the window."""
    fast, plain = _hilo_pair(dim, heads, ws, alpha)
    x = torch.randn(2, size[0] * size[1], dim, dtype=torch.float64, requires_grad=True)
    y_fast = fast(x, size)
    g = torch.randn_like(y_fast)
    (gx_fast,) = torch.autograd.grad(y_fast, x, g)
    y_plain = plain(x, size)
    (gx_plain,) = torch.autograd.grad(y_plain, x, g)
    torch.testing.assert_close(y_fast, y_plain)
    torch.testing.assert_close(gx_fast, gx_plain)
    assert fast(x[:0], size).shape == (0, size[0] * size[1], dim)  # an empty batch


def test_padding_is_the_authors_dense_rule():
    """A map that is not a multiple of the window: zero-pad the normed map bottom/right, run both
    branches on the padded map, crop back."""
    attn, _ = _hilo_pair(8, 4, 4, 0.5)
    H, W = 6, 10
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 2, 0, 2))  # -> 8 x 12
    full = attn(padded.reshape(2, -1, 8), (8, 12)).reshape(2, 8, 12, 8)
    torch.testing.assert_close(attn(x.reshape(2, -1, 8), (H, W)), full[:, :H, :W].reshape(2, -1, 8))


def test_hifi_is_window_local_and_hifi_channels_come_first():
    """Changing one window's tokens changes the Hi-Fi output of that window only; the Lo-Fi half
    (the last channels) sees the change everywhere through the pooled keys."""
    attn, _ = _hilo_pair(8, 4, 2, 0.5)
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0:2, 0:2] += 1.0
    y, y2 = (attn(t.reshape(1, 16, 8), (4, 4)).reshape(4, 4, 8) for t in (x, x2))
    d = (y - y2).abs()
    assert d[0:2, 0:2, :4].max() > 1e-3 and d[2:, :, :4].max() == 0 and d[:, 2:, :4].max() == 0
    assert d[2:, 2:, 4:].max() > 1e-6


def test_any_multiple_of_32_square_or_not_and_backbone_use():
    model = litvit.create_model("litv2_s", **TINY_V2, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 5)
        assert model(torch.randn(1, 3, 96, 32)).shape == (1, 5)
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 16, 24), (16, 8, 12), (32, 4, 6), (64, 2, 3)]
    feats = timm.create_model("litv2_s", features_only=True, out_indices=(1, 3), **TINY_V2)
    assert feats.feature_info.channels() == [16, 64] and feats.feature_info.reduction() == [8, 32]
    assert [f.shape[1] for f in feats(torch.randn(1, 3, 64, 64))] == [16, 64]
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))


def test_bf16_autocast_on_cpu_and_every_parameter_learns():
    model = litvit.create_model("litv2_s", **TINY_V2, num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 64, 64))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="window_sizes\\[2\\]=0"):
        litvit.create_model("litv2_s", window_sizes=(0, 0, 0, 1), device="meta")
    with pytest.raises(ValueError, match="alpha=1.5"):
        litvit.create_model("litv2_s", alpha=1.5, device="meta")
    with pytest.raises(ValueError, match="attn_types\\[0\\]='msa'"):
        litvit.create_model("litv2_s", attn_types=("msa", "none", "hilo", "hilo"), device="meta")


def test_recipe_by_model_name():
    from litvit.recipes import default_recipe_for, get_recipe
    assert default_recipe_for("/data/imagenet", "litv2_b") == "litv2"
    assert default_recipe_for("/data/imagenet", "lit_s") == "lit-smb"
    r = get_recipe("litv2")
    assert (r["model"], r["offset_lr_mult"], r["warmup_epochs"], r["clip_grad"]) == ("litv2_s", 0.01, 20, 5.0)


@pytest.mark.cli
def test_digits_train_a_small_litv2(tmp_path, capsys):
    from litvit.cli import main
    argv = ["train", "--model", "litv2_s", "--embed-dims", "8", "16", "24", "32", "--depths", "1", "1", "1", "1",
            "--num-heads", "1", "2", "3", "4", "--epochs", "1", "--output", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "LITv2" in out and "val top-1" in out
    model = litvit.create_model("litv2_s", embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                                num_classes=10, checkpoint_path=str(tmp_path / "best.pth")).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_fused_convffn_equals_the_plain_modules(monkeypatch):
    """CPU inference runs the ConvFFN as oneDNN's conv+GELU and linear+residual where the probe
    allows; it equals the plain modules (fp32 tight, bf16 autocast loosely); never with gradients."""
    from litvit.ops import fused_mlp
    if not fused_mlp.supported(torch.float32):
        pytest.skip("oneDNN's fused kernels do not run on this CPU")
    calls = []
    real = fused_mlp.fused_conv_mlp_residual
    monkeypatch.setattr(fused_mlp, "fused_conv_mlp_residual", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = litvit.create_model("litv2_s", **TINY_V2, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fused = model(x)
        assert len(calls) == 5  # every block
        model.set_fused_mlp(False)
        torch.testing.assert_close(fused, model(x), rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(x)
            model.set_fused_mlp(True)
            torch.testing.assert_close(model(x).float(), plain.float(), rtol=0.1, atol=0.1)
    calls.clear()
    model(x).sum().backward()
    assert not calls


def test_inference_mode_runs_the_ops_of_no_grad():
    """Under ``torch.inference_mode`` the forward runs no more batched products than under
    ``no_grad``: a linear over a strided 6-d view of the Hi-Fi windows once fell back to a batched
    product copying its weight per batch there (bf16 LITv2-S 2.7x slower)."""
    from torch.profiler import profile
    model = litvit.create_model("litv2_s", **TINY_V2, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)

    def products(mode):
        with mode(), torch.autocast("cpu", torch.bfloat16), profile() as prof:
            model(x)
        counts = {e.key: e.count for e in prof.key_averages()}
        return counts.get("aten::bmm", 0)

    assert products(torch.inference_mode) == products(torch.no_grad)
