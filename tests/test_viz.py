"""``litvit viz``: offset tracing on hand-built DTMs, attention maps against a hand computation,
and both commands end to end (valid PNG / .npy files, one-line errors)."""
import numpy as np
import pytest
import torch
from PIL import Image

import litvit
from litvit.cli import main
from litvit.tools.viz import checkpoint_metadata, load_image, load_model
from litvit.tools.viz.attention import check_attention_memory, collect_attention, query_maps
from litvit.tools.viz.offsets import (_magnification, collect_offsets, regular_points, sample_field,
                                      trace_sampling_points)

from helpers import TINY, randomize_

pytestmark = pytest.mark.unit

KERNEL = [(0, 0), (0, 1), (1, 0), (1, 1)]  # k = i * 2 + j


# --- offsets ------------------------------------------------------------------------------------------

def test_zero_offsets_give_the_regular_8x8_block():
    starts = torch.tensor([[0., 0.], [1., 2.]])
    pts = regular_points(starts)
    for n, (p, q) in enumerate(starts.tolist()):
        got = {tuple(v) for v in pts[n].tolist()}
        assert got == {(8 * p + a, 8 * q + b) for a in range(8) for b in range(8)}


def _hand_built_dtm_model(shifts):
    """Tiny LIT-Ti whose three offset predictors output constant (dy, dx) per kernel point:
    weight zero, bias = shifts[d] (4 kernel points x (dy, dx))."""
    model = randomize_(litvit.create_model("lit_ti", **TINY)).eval()
    dtms = [m for m in model.modules() if isinstance(m, litvit.DeformableTokenMerging)]
    assert len(dtms) == 3
    with torch.no_grad():
        for dtm, s in zip(dtms, shifts):
            dtm.dconv.conv_offset.weight.zero_()
            dtm.dconv.conv_offset.bias.copy_(torch.tensor(s, dtype=torch.float32).flatten())
    return model


def test_known_shifts_give_known_points():
    # per DTM and kernel point a different (dy, dx): also checks the channel layout (2k = dy, 2k+1 = dx)
    shifts = [
        [(0.5, 0.0), (0.0, -0.5), (1.0, 1.0), (-1.0, 0.25)],   # DTM into stage 2
        [(0.0, 1.0), (0.5, 0.5), (-0.5, 0.0), (0.0, 0.0)],     # DTM into stage 3
        [(1.0, -1.0), (0.0, 0.0), (0.25, 0.5), (-0.5, -0.5)],  # DTM into stage 4
    ]
    model = _hand_built_dtm_model(shifts)
    offsets = collect_offsets(model, torch.randn(1, 3, 64, 64))
    assert [n for n, _ in offsets] == [f"stages.{i}.downsample.dtm" for i in (1, 2, 3)]
    assert [tuple(f.shape) for _, f in offsets] == [(8, 8, 8), (8, 4, 4), (8, 2, 2)]
    starts = torch.tensor([[0., 0.], [1., 1.], [0., 1.]])
    steps = trace_sampling_points([f for _, f in offsets], starts)
    assert [tuple(s.shape) for s in steps] == [(3, 1, 2), (3, 4, 2), (3, 16, 2), (3, 64, 2)]
    s1, s2, s3 = shifts
    for n, (p, q) in enumerate(starts.tolist()):
        for k3 in range(4):
            for k2 in range(4):
                for k1 in range(4):
                    y3 = 2 * p + KERNEL[k3][0] + s3[k3][0]
                    x3 = 2 * q + KERNEL[k3][1] + s3[k3][1]
                    y2 = 2 * y3 + KERNEL[k2][0] + s2[k2][0]
                    x2 = 2 * x3 + KERNEL[k2][1] + s2[k2][1]
                    y1 = 2 * y2 + KERNEL[k1][0] + s1[k1][0]
                    x1 = 2 * x2 + KERNEL[k1][1] + s1[k1][1]
                    got = steps[3][n, k3 * 16 + k2 * 4 + k1].tolist()
                    assert got == pytest.approx([y1, x1]), (n, k3, k2, k1)


def test_hooked_offsets_are_the_dtm_offsets():
    model = randomize_(litvit.create_model("lit_ti", **TINY)).eval()
    x = torch.randn(1, 3, 64, 96)
    got = collect_offsets(model, x)
    # the offsets the first DTM returns itself
    with torch.no_grad():
        tokens, feat = model.patch_embed(x)
        tokens, feat = model.stages[0](tokens, feat)
        m = tokens.transpose(1, 2).reshape(1, -1, *feat)
        _, off = model.stages[1].downsample.dtm(m, return_offsets=True)
    torch.testing.assert_close(got[0][1], off[0])
    assert got[0][1].abs().sum() > 0


def test_fractional_points_use_the_bilinearly_interpolated_field():
    # a field linear in x and y is reproduced exactly by bilinear interpolation inside the grid
    h, w = 6, 6
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    field = torch.stack([0.1 * xx - 0.05 * yy, 0.2 * yy] * 4)  # dy = 0.1x - 0.05y, dx = 0.2y for every k
    ys, xs = torch.tensor([1.25, 3.5, 0.0]), torch.tensor([2.75, 0.5, 4.0])
    vals = sample_field(field, ys.double(), xs.double())
    torch.testing.assert_close(vals[:, 0], 0.1 * xs.double() - 0.05 * ys.double())
    torch.testing.assert_close(vals[:, 1], 0.2 * ys.double())
    # clamped at the border
    torch.testing.assert_close(sample_field(field, torch.tensor([-3.0]).double(), torch.tensor([9.0]).double())[0],
                               field[:, 0, w - 1])
    # two DTMs: a zero field at the end, the linear one before it, evaluated at fractional points
    start = torch.tensor([[1.0, 1.0]])
    first = torch.tensor([[0.3, -0.2]] * 4, dtype=torch.float64).flatten().view(8, 1, 1).expand(8, 3, 3)
    steps = trace_sampling_points([field, first], start)
    for k2 in range(4):
        y2 = 2 + KERNEL[k2][0] + 0.3
        x2 = 2 + KERNEL[k2][1] - 0.2
        for k1 in range(4):
            y1 = 2 * y2 + KERNEL[k1][0] + (0.1 * x2 - 0.05 * y2)
            x1 = 2 * x2 + KERNEL[k1][1] + 0.2 * y2
            assert steps[2][0, k2 * 4 + k1].tolist() == pytest.approx([y1, x1])


def test_small_shifts_are_magnified_by_a_round_factor():
    assert _magnification(0.02, 4.0) == 200
    assert _magnification(0.3, 4.0) == 10
    assert _magnification(1.04, 4.0) == 2
    assert _magnification(5.0, 4.0) == 1 and _magnification(0.0, 4.0) == 1


def test_offsets_need_a_dtm_model():
    model = litvit.create_model("pvt_s_msa", **TINY).eval()
    with pytest.raises(ValueError, match="no deformable token merging"):
        collect_offsets(model, torch.randn(1, 3, 64, 64))


# --- attention ----------------------------------------------------------------------------------------

def _hand_attention(attn, x, feat_size):
    """Softmax(q k^T * scale + bias) from the module's weights, written out."""
    B, N, C = x.shape
    h, d = attn.num_heads, attn.head_dim
    if attn.sr_ratio > 1:
        q = x @ attn.q.weight.T + attn.q.bias
        p = attn.num_prefix_tokens
        H, W = feat_size
        m = x[:, p:].transpose(1, 2).reshape(B, C, H, W)
        red = torch.nn.functional.conv2d(m, attn.sr.weight, attn.sr.bias, stride=attn.sr_ratio)
        red = torch.cat((x[:, :p], red.flatten(2).transpose(1, 2)), 1)
        red = torch.nn.functional.layer_norm(red, (C,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
        k = (red @ attn.kv.weight.T + attn.kv.bias)[..., :C]
    else:
        qkv = x @ attn.qkv.weight.T + attn.qkv.bias
        q, k = qkv[..., :C], qkv[..., C:2 * C]
    q = q.reshape(B, N, h, d).transpose(1, 2)
    k = k.reshape(B, -1, h, d).transpose(1, 2)
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / d ** 0.5
    if attn.relative_position_bias_table is not None:
        logits = logits + attn.rel_pos_bias(feat_size)
    return logits.softmax(-1)


@pytest.mark.parametrize("name", ["pvt_s_msa", "pvt_s", "lit_s", "lit_ti"])
def test_attention_maps_match_a_hand_computation(name):
    model = randomize_(litvit.create_model(name, **TINY)).eval()
    x = torch.randn(1, 3, 64, 96)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, key=n: inputs.__setitem__(key, args))
             for n, m in model.named_modules() if isinstance(m, litvit.models.Attention)]
    probs = collect_attention(model, x)
    for h in hooks:
        h.remove()
    assert all(m.fused_attn for m in model.modules() if isinstance(m, litvit.models.Attention))  # restored
    expected_stages = {"pvt_s_msa": [1, 2, 3, 4], "pvt_s": [1, 2, 3, 4], "lit_s": [3, 4], "lit_ti": [3, 4]}[name]
    assert sorted({int(n.split(".")[1]) + 1 for n in probs}) == expected_stages
    for n, p in probs.items():
        attn = model.get_submodule(n)
        tokens, feat_size = inputs[n]
        torch.testing.assert_close(p, _hand_attention(attn, tokens, feat_size), rtol=1e-5, atol=1e-6)
    # the query's rows on the key grids
    query = (40, 70)
    stages = query_maps(probs, model, (64, 96), query)
    for s in stages:
        stride = 4 * 2 ** (s.stage - 1)
        h, w = 64 // stride, 96 // stride
        assert s.feat_size == (h, w) and s.query == (40 // stride, 70 // stride)
        name0 = s.blocks[0]
        attn = model.get_submodule(name0)
        pfx, r = attn.num_prefix_tokens, attn.sr_ratio
        row = probs[name0][0, :, pfx + s.query[0] * w + s.query[1]]
        np.testing.assert_allclose(s.maps[0], row[:, pfx:].reshape(-1, h // r, w // r).numpy(), rtol=1e-6)
        prefix = s.prefix_mass if s.prefix_mass.size else 0.0
        assert s.prefix_mass.size == (s.maps[:, :, 0, 0].size if pfx else 0)
        np.testing.assert_allclose(s.maps.sum(axis=(2, 3)) + prefix, 1.0, rtol=1e-5)


# --- commands -----------------------------------------------------------------------------------------

def _image(path, size=(96, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _checkpoint(path, name, **extra_kwargs):
    """A litvit-style training checkpoint of a tiny model that records its name and overrides."""
    kwargs = dict(TINY, num_classes=3, **extra_kwargs)
    model = randomize_(litvit.create_model(name, **kwargs))
    # the layout of `litvit train` checkpoints: weights under "model", what rebuilds the model under "extra"
    torch.save({"model": model.state_dict(), "model_ema": None, "epoch": 1, "config": {"output_dir": "x", "lr": 5e-4},
                "extra": {"model": name, "model_kwargs": kwargs, "img_size": 64,
                          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}, path)
    return path


def _valid_png(path):
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG"


def test_checkpoint_metadata_and_model_loading(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pth", "lit_ti")
    meta = checkpoint_metadata(torch.load(ckpt, weights_only=True))
    assert meta["model"] == "lit_ti" and meta["num_classes"] == 3 and meta["model_kwargs"]["img_size"] == 64
    model, info = load_model(checkpoint=str(ckpt))
    assert info["model"] == "lit_ti" and info["img_size"] == 64 and model.embed_dims == TINY["embed_dims"]
    assert info["mean"] == (0.5, 0.5, 0.5) and info["std"] == (0.25, 0.25, 0.25)
    with pytest.raises(litvit.CheckpointMismatchError):
        load_model("lit_s", str(ckpt))  # --model disagrees with the weights
    torch.save(torch.load(ckpt, weights_only=True)["model"], tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="does not record its model"):
        load_model(checkpoint=str(tmp_path / "bare.pth"))


def test_load_image_sizes_and_normalisation(tmp_path):
    img = load_image(_image(tmp_path / "a.png", (100, 50)), 64, (0.5,) * 3, (0.25,) * 3)
    assert img.tensor.shape == (1, 3, 64, 128) and img.rgb.shape == (64, 128, 3)
    expected = (img.rgb.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(img.tensor[0].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.cli
def test_viz_offsets_command(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "lit_ti.pth", "lit_ti")
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "one.png")
    _image(folder / "two.jpg", (64, 64), seed=1)
    out = tmp_path / "out"
    assert main(["viz", "offsets", str(folder), "--checkpoint", str(ckpt), "--out", str(out),
                 "--points", "0,0", "1,1"]) == 0
    printed = capsys.readouterr().out
    for stem in ("one", "two"):
        for suffix in ("_offsets.png", "_offset_fields.png"):
            assert _valid_png(out / f"{stem}{suffix}")
            assert f"wrote {out / (stem + suffix)}" in printed
        data = np.load(out / f"{stem}_offsets.npz")
        assert data["points_step3"].shape == (2, 64, 2) and data["regular_points"].shape == (2, 64, 2)


@pytest.mark.cli
def test_viz_attention_command(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "pvt.pth", "pvt_s_msa")
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["viz", "attention", str(img), "--checkpoint", str(ckpt), "--out", str(out),
                 "--query", "10,20"]) == 0
    printed = capsys.readouterr().out
    assert _valid_png(out / "img_attention.png")
    for stage, (blocks, heads, hk, wk) in enumerate([(1, 1, 16, 24), (2, 2, 8, 12), (2, 3, 4, 6), (1, 4, 2, 3)], 1):
        assert _valid_png(out / f"img_attention_stage{stage}.png")
        maps = np.load(out / f"img_attention_stage{stage}.npy")
        assert maps.shape == (blocks, heads, hk, wk)
        assert np.isfinite(maps).all() and (maps >= 0).all()
        assert f"wrote {out / f'img_attention_stage{stage}.npy'}" in printed


@pytest.mark.cli
def test_viz_errors_are_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "lit_ti.pth", "lit_ti")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["viz", "attention", str(bad), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read image" in err[0]
    img = _image(tmp_path / "img.png")
    assert main(["viz", "offsets", str(img), "--checkpoint", str(ckpt), "--model", "lit_s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit lit_s" in err[0]
    pvt = _checkpoint(tmp_path / "pvt.pth", "pvt_s_msa")
    assert main(["viz", "offsets", str(img), "--checkpoint", str(pvt)]) == 2
    assert "no deformable token merging" in capsys.readouterr().err
    assert main(["viz", "offsets", str(tmp_path / "missing.png"), "--checkpoint", str(ckpt)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["viz", "offsets", str(img), "--checkpoint", str(ckpt), "--points", "9,9"]) == 2
    assert "outside" in capsys.readouterr().err


def test_attention_memory_guard():
    with torch.device("meta"):
        model = litvit.create_model("pvt_s_msa")
    check_attention_memory(model, (224, 224))
    with pytest.raises(ValueError, match="smaller --img-size"):
        check_attention_memory(model, (1024, 1024))


# --- the authors' methods --------------------------------------------------------------------------------

def test_official_walk_back_rounds_and_drops():
    """Round each point to the nearest cell, read the offset there, drop points leaving the grid."""
    fields = [torch.zeros(8, 8, 8), torch.zeros(8, 4, 4), torch.zeros(8, 2, 2)]
    fields[2][:, 0, 0] = torch.tensor([0.4, 0.0, 0.0, 0.6, -1.0, 0.0, 0.0, 0.0])  # (dy, dx) per kernel point
    fields[1][:, 0, 1] = 0.25  # the bilinear walk reads some of it at (0, 1.6); the official one rounds to (0, 2)
    steps = trace_sampling_points(fields, torch.tensor([[0., 0.]]), walk_back="official")
    s1 = steps[1][0]
    torch.testing.assert_close(s1, torch.tensor([[0.4, 0.], [0., 1.6], [0., 0.], [1., 1.]], dtype=torch.float64))
    s2 = steps[2][0]
    # kernel point 0 of step 1 sits at (0.4, 0) -> cell (0, 0), zero offsets: the plain 2x2 block
    torch.testing.assert_close(s2[:4], torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]], dtype=torch.float64))
    # kernel point 1 at (0, 1.6) -> cell (0, 2): offsets 0 there
    torch.testing.assert_close(s2[4:8], torch.tensor([[0., 4.], [0., 5.], [1., 4.], [1., 5.]], dtype=torch.float64))
    # the bilinear walk instead reads the field at the fractional point
    bil = trace_sampling_points(fields, torch.tensor([[0., 0.]]))[2][0]
    assert not torch.allclose(bil[4:8], s2[4:8])
    # a point pushed off the grid is dropped (NaN) with everything it leads to
    fields[2][:, 0, 0] = torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    steps = trace_sampling_points(fields, torch.tensor([[0., 0.]]), walk_back="official")
    assert steps[1][0, 0].tolist() == [-2.0, 0.0]  # lands at row -2: off the 4x4 grid it is read on next
    assert torch.isnan(steps[2][0, :4]).all() and not torch.isnan(steps[2][0, 4:]).any()
    assert torch.isnan(steps[3][0, :16]).all() and not torch.isnan(steps[3][0, 16:]).any()
    with pytest.raises(ValueError, match="walk_back"):
        trace_sampling_points(fields, torch.tensor([[0., 0.]]), walk_back="nearest")


def test_official_attention_averages_at_the_official_tokens():
    from litvit.tools.viz.attention import official_attention, official_query, official_query_maps
    assert [official_query(s, (g, g)) for s, g in ((1, 56), (2, 28), (3, 14), (4, 7))] == \
        [(22, 28), (10, 14), (6, 8), (2, 3)]
    assert official_query(1, (28, 28)) == (11, 14)  # other input sizes: the same relative position
    model = randomize_(litvit.create_model("pvt_s_msa", **TINY)).eval()
    xs = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    stages, n = official_attention(model, xs)
    assert n == 3 and [s.stage for s in stages] == [1, 2, 3, 4]
    singles = [official_query_maps(collect_attention(model, x), model, (64, 64)) for x in xs]
    for i, s in enumerate(stages):
        np.testing.assert_allclose(s.maps, np.mean([one[i].maps for one in singles], axis=0), rtol=1e-5, atol=1e-7)
    # stage 4 (2x2 tokens + class token): the class token's row and column removed, not renormalised
    probs = collect_attention(model, xs[0])
    name = stages[3].blocks[0]
    a = probs[name][0]  # heads, 5, 5
    row, col = stages[3].query
    np.testing.assert_allclose(singles[0][3].maps[0], a[:, 1 + row * 2 + col, 1:].reshape(-1, 2, 2).numpy(), rtol=1e-6)
    assert (singles[0][3].maps[0].sum(axis=(1, 2)) < 1).all()


@pytest.mark.cli
def test_viz_official_methods_commands(tmp_path, capsys):
    pvt = _checkpoint(tmp_path / "pvt.pth", "pvt_s_msa")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _image(folder / f"im{i}.png", seed=i)
    out = tmp_path / "att"
    assert main(["viz", "attention", str(folder), "--checkpoint", str(pvt), "--out", str(out),
                 "--method", "official", "--num-images", "2", "--img-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "averaged over 2 image(s)" in printed
    for stage in (1, 2, 3, 4):
        assert _valid_png(out / f"official_attention_stage{stage}.png")
        assert np.load(out / f"official_attention_stage{stage}.npy").ndim == 4
    ckpt = _checkpoint(tmp_path / "lit_ti.pth", "lit_ti")
    out = tmp_path / "off"
    assert main(["viz", "offsets", str(folder / "im0.png"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--walk-back", "official"]) == 0
    assert _valid_png(out / "im0_offsets.png")
    assert np.load(out / "im0_offsets.npz")["points_step3"].shape[-1] == 2
