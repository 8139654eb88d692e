"""The paper's ablation models: configurations as docs/architecture.md describes them, build, run, train a step."""
import pytest
import torch

import litvit

from helpers import TINY

pytestmark = pytest.mark.unit

ABLATIONS = ("pvt_s", "pvt_s_msa", "pvt_s_msa_no_attn1", "pvt_s_msa_no_attn12", "lit_ti_no_dtm", "lit_s_no_dtm")


def _attn_per_stage(model):
    """Per stage: None (MLP blocks), 'msa' or 'sra', asserting all blocks of a stage agree."""
    kinds = []
    for stage in model.stages:
        ks = {None if b.attn is None else ("sra" if b.attn.sr_ratio > 1 else "msa") for b in stage.blocks}
        assert len(ks) == 1
        kinds.append(ks.pop())
    return kinds


def _merge_types(model):
    return [type(s.downsample).__name__ for s in model.stages[1:]]


@pytest.mark.parametrize("name,attn,merge", [
    ("pvt_s", ["sra", "sra", "sra", "msa"], "ConvMerge"),  # r = 8, 4, 2, 1: stage 4's SRA is full attention
    ("pvt_s_msa", ["msa"] * 4, "ConvMerge"),
    ("pvt_s_msa_no_attn1", [None, "msa", "msa", "msa"], "ConvMerge"),
    ("pvt_s_msa_no_attn12", [None, None, "msa", "msa"], "ConvMerge"),
    ("lit_ti_no_dtm", [None, None, "msa", "msa"], "ConvMerge"),
    ("lit_s_no_dtm", [None, None, "msa", "msa"], "PatchMerging"),
    ("lit_ti", [None, None, "msa", "msa"], "DTMDownsample"),
])
def test_configuration_matches_lit_md(name, attn, merge):
    with torch.device("meta"):
        model = litvit.create_model(name)
    assert _attn_per_stage(model) == attn
    assert _merge_types(model) == [merge] * 3
    if name.startswith(("pvt", "lit_ti")):  # PVT-S widths, depths, heads, ratios, class token
        assert model.embed_dims == (64, 128, 320, 512)
        assert [len(s.blocks) for s in model.stages] == [3, 4, 6, 3]
        assert [b.mlp.fc1.out_features // b.mlp.fc1.in_features for s in model.stages for b in s.blocks[:1]] == [8, 8, 4, 4]
        assert model.stages[3].cls_token is not None
        heads = [s.blocks[0].attn.num_heads for s in model.stages if s.blocks[0].attn is not None]
        assert heads == [1, 2, 5, 8][4 - len(heads):]
    else:  # Swin-Ti widths
        assert model.embed_dims == (96, 192, 384, 768)
        assert [len(s.blocks) for s in model.stages] == [2, 2, 6, 2]
        assert model.stages[2].blocks[0].attn.relative_position_bias_table is not None
    if name == "pvt_s":
        assert [s.blocks[0].attn.sr_ratio for s in model.stages] == [8, 4, 2, 1]
        sr = model.stages[0].blocks[0].attn.sr
        assert (sr.kernel_size, sr.stride) == ((8, 8), (8, 8))


def test_parameter_counts():
    counts = {}
    for name in ABLATIONS + ("lit_ti", "lit_s"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in litvit.create_model(name).parameters())
    assert counts["pvt_s_msa"] == 20_185_384           # the exact count
    assert round(counts["pvt_s"] / 1e6, 1) == 24.5     # the paper: 24.5 M
    # removing attention from a stage removes its norm1 + qkv + proj
    assert counts["pvt_s_msa"] - counts["pvt_s_msa_no_attn1"] == 3 * (2 * 64 + 64 * 192 + 192 + 64 * 64 + 64)
    assert counts["pvt_s_msa_no_attn12"] == counts["lit_ti_no_dtm"]
    # DTM vs regular merging: "negligible params" (the paper); the DTM has the same 2x2 weight plus
    # an offset predictor, BatchNorm instead of LayerNorm
    offset = sum(c * 8 * 4 + 8 for c in (64, 128, 320))
    assert counts["lit_ti"] - counts["lit_ti_no_dtm"] == offset
    assert 0 < counts["lit_s"] - counts["lit_s_no_dtm"] < 0.001 * counts["lit_s"]


@pytest.mark.parametrize("name", ABLATIONS)
def test_builds_runs_and_trains_a_step(name):
    model = litvit.create_model(name, num_classes=4, drop_path_rate=0.1, **TINY)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"not updated by the step: {unchanged[:5]}"
    # the plain attention path (what the attention figure reads) gives the same eval output
    model.eval()
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        plain = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
