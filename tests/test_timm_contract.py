"""timm's model contract, for every registered model: the cases of timm's own ``tests/test_models.py``
(timm 1.0.31) that apply to LIT, reproduced here so they run in this suite: forward (+ gradient
checkpointing), backward, the default-config checks of non-standard models, features (getter and
fx), forward_intermediates, torch.fx forward/backward; plus ``device=``/``dtype=`` construction and
``reset_classifier`` keeping device, dtype and mode.

Inputs are 64 px (timm uses up to 128-384 px; the checks are about structure, not size), and only
LIT-Ti and LIT-S (one model of each family) are built at full depth: the others get one block per
stage, so the suite stays quick on two cores. TorchScript is not supported (see the README).
"""
import pytest
import timm
import torch
from timm.models import FeatureGraphNet, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import litvit

MODELS = litvit.list_models()
SIZE = 64
FULL_DEPTH = ("lit_ti", "lit_s")


def create(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` as timm's tests call it (one block per stage outside FULL_DEPTH)."""
    if name not in FULL_DEPTH:
        kwargs.setdefault("depths", (1, 1, 1, 1))
    return timm.create_model(name, pretrained=False, **kwargs)

pytestmark = [pytest.mark.unit, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")]


def _input(batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, 3, SIZE, SIZE)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward(name):
    model = create(name).eval()
    x = _input()
    out = model(x)
    assert out.shape == (1, 1000) and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_backward(name):
    model = create(name, num_classes=42).train()
    out = model(_input(2))
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs_non_std(name):
    """timm's checks for models with token outputs (LIT is in its 'non-standard' class, as ViTs are)."""
    model = create(name).eval()
    state_dict = model.state_dict()
    cfg = model.pretrained_cfg
    x = _input()
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[-1] == model.num_features
    assert pre.shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape[-1] == model.head_hidden_size and out.shape == pre.shape
    model = create(name, num_classes=0).eval()
    assert model(x).shape[-1] == model.num_features
    assert cfg["classifier"] + ".weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict
    assert cfg["input_size"] == ((3, 384, 384) if name.endswith("_384") else (3, 224, 224))
    assert not cfg["fixed_input_size"]


@pytest.mark.parametrize("feature_cls", ["getter", "fx"])
@pytest.mark.parametrize("name", MODELS)
def test_model_forward_features(name, feature_cls):
    model = create(name, features_only=True, feature_cls=feature_cls).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert reductions == [4, 8, 16, 32] and len(channels) == 4
    outs = model(_input())
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape == (1, c, SIZE // r, SIZE // r) and not torch.isnan(o).any()


@pytest.mark.parametrize("name", ["lit_ti", "lit_s", "pvt_s"])
def test_fx_features_equal_forward_intermediates(name):
    model = create(name).eval()
    fx = FeatureGraphNet(model, out_indices=(1, 3))
    x = _input(2)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = fx(x)
    assert len(got) == 2
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_intermediates(name):
    model = create(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = _input()
    final, inter = model.forward_intermediates(x, output_fmt="NCHW")
    for c, r, o in zip(info.channels(), info.reduction(), inter):
        assert o.shape == (1, c, SIZE // r, SIZE // r)
    torch.testing.assert_close(final, model.forward_features(x))
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


def _fx_model(model, train: bool = False):
    """timm's ``_create_fx_model``: trace with timm's leaf modules and functions, return the output node."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        out_names = [n.name for n in nodes[0]._input_nodes.keys()]
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n)] for n in out_names]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_fx(name):
    """The traced graph computes what the model computes. timm compares exactly; with the
    oneDNN-fused MLP of CPU inference on, eager runs other kernels than the traced plain ops, so the
    exact comparison is made with it off and a 1e-5 one with it on."""
    model = create(name).eval()
    x = _input()
    with torch.inference_mode():
        fused_out = model(x)
        model.set_fused_mlp(False)
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)
    torch.testing.assert_close(fx_out, fused_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_backward_fx(name):
    model = create(name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(_input(2)).values()))
    out.mean().backward()
    for n, p in fx.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert sum(p.grad.numel() for p in fx.parameters()) == num_params
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_create_on_meta_device_in_bfloat16(name):
    """timm passes ``device=``/``dtype=`` through to the model; every submodule creates its
    parameters there, so nothing is allocated on the CPU first."""
    model = create(name, device="meta", dtype=torch.bfloat16)
    assert all(t.device.type == "meta" and t.dtype == torch.bfloat16 for t in model.parameters())
    assert all(t.device.type == "meta" for t in model.buffers())
    assert all(t.dtype == torch.bfloat16 for t in model.buffers() if t.is_floating_point())
    out = model(torch.randn(2, 3, SIZE, SIZE, device="meta", dtype=torch.bfloat16))
    assert out.shape == (2, 1000) and out.device.type == "meta" and out.dtype == torch.bfloat16


def test_create_in_float64_equals_conversion():
    torch.manual_seed(0)
    a = litvit.create_model("lit_ti", img_size=64, dtype=torch.float64).eval()
    torch.manual_seed(0)
    b = litvit.create_model("lit_ti", img_size=64).eval().to(torch.float64)
    assert all(p.dtype == torch.float64 for p in a.parameters())
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
def test_reset_classifier_keeps_dtype_device_and_mode(name):
    model = litvit.create_model(name, img_size=64).to(torch.float64).eval()
    model.reset_classifier(10)
    assert model.head.weight.dtype == torch.float64 and not model.head.training
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert out.shape == (2, 10) and out.dtype == torch.float64
    model.train().reset_classifier(3)
    assert model.head.training
    meta = litvit.create_model(name, device="meta")
    meta.reset_classifier(7)
    assert meta.head.weight.device.type == "meta"
