"""torch.compile(fullgraph=True) for every registered model, fp32 and bf16 autocast, inference and a
training step: dynamo must capture each forward in one graph (any call it skips, e.g. an autocast
query older dynamo cannot trace, raises here). Inference uses the ``eager`` backend and training
``aot_eager`` (AOTAutograd, what inductor consumes) to keep the suite quick; inductor itself runs in
``litvit bench --compile`` and in ``make gpu-check``."""
import pytest
import torch

import litvit

from helpers import TINY, randomize_

pytestmark = [pytest.mark.unit, pytest.mark.slow]

MODELS = litvit.list_models()
SMALL = dict(TINY, depths=(1, 1, 1, 1), drop_path_rate=0.0)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _autocast(dtype):
    return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype is None else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", MODELS)
def test_compile_inference(name, dtype):
    torch._dynamo.reset()
    model = randomize_(litvit.create_model(name, num_classes=5, **SMALL)).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), _autocast(dtype):
        got, want = compiled(x), model(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, **_tol(dtype))


AOT_MODELS = ("lit_ti", "lit_s")  # AOTAutograd traces the backward too: slow on 2 cores, one model per family


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", MODELS)
def test_compile_training_step(name, dtype):
    """Dynamo captures the training forward in one graph (``aot_eager`` for one model of each family,
    ``eager`` for the rest); the loss and the gradients match eager. In bf16 gradients are compared
    by direction (cosine > 0.99): the two runs round differently and bf16 keeps 8 bits."""
    torch._dynamo.reset()
    model = randomize_(litvit.create_model(name, num_classes=5, **SMALL)).train()
    compiled = torch.compile(model, backend="aot_eager" if name in AOT_MODELS else "eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    losses, grads = [], []
    for m in (compiled, model):
        model.zero_grad()
        with _autocast(dtype):
            loss = m(x).float().logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], **_tol(dtype))
    for n, g in grads[1].items():
        if dtype is None:
            torch.testing.assert_close(grads[0][n], g, rtol=1e-4, atol=1e-4, msg=lambda m: f"{n}: {m}")
        else:
            assert torch.isfinite(grads[0][n]).all(), n
    if dtype is not None:
        flat = [torch.cat([g[n].flatten().float() for n in sorted(g)]) for g in grads]
        assert torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0) > 0.99
