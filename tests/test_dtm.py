"""DTM op: fast path and torchvision path against a float64 bilinear reference written as a loop."""
import math

import pytest
import torch
import torchvision

from litvit.ops import DeformableTokenMerging, DeformMerge2x2, deform_merge2x2

pytestmark = pytest.mark.unit


def bilinear_reference(x, offset, weight, bias):
    """Deformable 2x2 stride-2 conv by explicit loops, from the rule in docs/architecture.md (float64)."""
    B, C, H, W = x.shape
    Ho, Wo = H // 2, W // 2
    out = torch.zeros(B, weight.shape[0], Ho, Wo, dtype=torch.float64)

    def pixel(b, yy, xx):
        if 0 <= yy < H and 0 <= xx < W:
            return x[b, :, yy, xx]
        return torch.zeros(C, dtype=torch.float64)

    for b in range(B):
        for p in range(Ho):
            for q in range(Wo):
                acc = torch.zeros(weight.shape[0], dtype=torch.float64)
                for i in range(2):
                    for j in range(2):
                        k = i * 2 + j
                        y = 2 * p + i + offset[b, 2 * k, p, q].item()
                        xx = 2 * q + j + offset[b, 2 * k + 1, p, q].item()
                        val = torch.zeros(C, dtype=torch.float64)
                        if -1 < y < H and -1 < xx < W:
                            y0, x0 = math.floor(y), math.floor(xx)
                            ly, lx = y - y0, xx - x0
                            val = ((1 - ly) * (1 - lx) * pixel(b, y0, x0) + (1 - ly) * lx * pixel(b, y0, x0 + 1)
                                   + ly * (1 - lx) * pixel(b, y0 + 1, x0) + ly * lx * pixel(b, y0 + 1, x0 + 1))
                        acc += weight[:, :, i, j].double() @ val
                out[b, :, p, q] = acc + (bias.double() if bias is not None else 0)
    return out


def _inputs(B=2, C=3, H=6, W=8, Cout=5, scale=1.5, dtype=torch.float64):
    x = torch.randn(B, C, H, W, dtype=dtype)
    offset = torch.randn(B, 8, H // 2, W // 2, dtype=dtype) * scale
    weight = torch.randn(Cout, C, 2, 2, dtype=dtype)
    bias = torch.randn(Cout, dtype=dtype)
    return x, offset, weight, bias


@pytest.mark.parametrize("impl", ["fast", "torchvision"])
@pytest.mark.parametrize("shape", [(6, 8), (5, 7), (2, 2), (9, 4)])
def test_matches_loop_reference(impl, shape):
    x, offset, weight, bias = _inputs(H=shape[0], W=shape[1], scale=2.0)
    expected = bilinear_reference(x, offset, weight, bias)
    out = deform_merge2x2(x, offset, weight, bias, impl=impl)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_zero_offsets_are_a_plain_2x2_conv():
    x, _, weight, bias = _inputs(H=8, W=10)
    offset = torch.zeros(2, 8, 4, 5, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, weight, bias, stride=2)
    for impl in ("fast", "torchvision"):
        torch.testing.assert_close(deform_merge2x2(x, offset, weight, bias, impl=impl), expected)


def test_offsets_that_leave_the_map():
    x, offset, weight, bias = _inputs(H=4, W=4)
    offset = offset * 0 + torch.tensor([-3.3, 7.2, -0.4, 4.9, 0.7, -1.6, 2.5, -0.2], dtype=torch.float64).view(1, 8, 1, 1)
    expected = bilinear_reference(x, offset, weight, bias)
    for impl in ("fast", "torchvision"):
        torch.testing.assert_close(deform_merge2x2(x, offset, weight, bias, impl=impl), expected)
    far = torch.full_like(offset, 50.0)
    out = deform_merge2x2(x, far, weight, bias)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))


@pytest.mark.parametrize("impl", ["fast", "torchvision"])
def test_gradcheck(impl):
    x, offset, weight, bias = _inputs(B=1, C=2, H=4, W=6, Cout=3, scale=0.8)
    # keep sampling points away from integer coordinates, where bilinear weights have kinks
    offset = offset.round() + 0.3 + 0.2 * torch.rand_like(offset)
    args = [t.clone().requires_grad_() for t in (x, offset, weight, bias)]
    assert torch.autograd.gradcheck(lambda *a: deform_merge2x2(*a, impl=impl), args, eps=1e-6, atol=1e-6)


def _grads(fn, tensors, dtype):
    """Output and gradients (x, offset, weight, bias) of fn under a fixed upstream gradient."""
    args = [t.to(dtype).clone().requires_grad_() for t in tensors]
    out = fn(*args)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out))
    return [out.detach()] + [a.grad for a in args]


@pytest.mark.parametrize("impl", ["fast", "torchvision"])
def test_gradients_match_torchvision_deform_conv2d(impl):
    """Both paths in float32 against torchvision's op called directly in float64 (not through the wrapper)."""
    tensors = _inputs(B=2, C=4, H=7, W=9, Cout=6, scale=2.5)
    expected = _grads(lambda x, o, w, b: torchvision.ops.deform_conv2d(x, o, w, b, stride=2), tensors, torch.float64)
    got = _grads(lambda *a: deform_merge2x2(*a, impl=impl), tensors, torch.float32)
    for name, a, b in zip(("out", "x", "offset", "weight", "bias"), got, expected):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["fast", "torchvision"])
def test_empty_batch(impl):
    m = DeformMerge2x2(3, 5, impl=impl)
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 5, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(m.weight.grad, torch.zeros_like(m.weight))


@pytest.mark.parametrize("impl", ["fast", "torchvision"])
def test_bfloat16_autocast_cpu(impl):
    m = DeformableTokenMerging(8, 16, impl=impl).eval()
    with torch.no_grad():
        m.dconv.conv_offset.bias.normal_(0, 0.5)
    x = torch.randn(2, 8, 8, 8)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
    # a bfloat16 model without autocast stays bfloat16 (torchvision's CPU op is run in float32)
    out16 = m.to(torch.bfloat16)(x.bfloat16())
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16.float()).all()


def test_dtm_module_defaults_merge_the_regular_grid():
    m = DeformableTokenMerging(4, 6)
    assert torch.all(m.dconv.conv_offset.weight == 0) and torch.all(m.dconv.conv_offset.bias == 0)
    x = torch.randn(2, 4, 6, 6)
    y, offsets = m(x, return_offsets=True)
    assert y.shape == (2, 6, 3, 3) and offsets.shape == (2, 8, 3, 3) and torch.all(offsets == 0)
    m.eval()
    expected = torch.nn.functional.gelu(m.norm_layer(torch.nn.functional.conv2d(x, m.dconv.weight, m.dconv.bias, stride=2)))
    torch.testing.assert_close(m(x), expected)


def test_bad_shapes_raise():
    x, offset, weight, bias = _inputs(H=6, W=8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 8, 3, 4\)"):
        deform_merge2x2(x, offset[:, :4], weight, bias)
    with pytest.raises(ValueError, match="weight must have shape"):
        deform_merge2x2(x, offset, weight[:, :2], bias)
    with pytest.raises(ValueError, match="4-D"):
        deform_merge2x2(x[0], offset, weight, bias)
    with pytest.raises(ValueError, match="at least 2"):
        deform_merge2x2(x[:, :, :1], offset[:, :, :0], weight, bias)
    with pytest.raises(ValueError, match="impl must be one of"):
        deform_merge2x2(x, offset, weight, bias, impl="cuda")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, H, W\)"):
        DeformMerge2x2(3, 5)(torch.randn(1, 4, 6, 6))


def test_torchvision_path_is_torchvision():
    """The torchvision path is torchvision's op, and both agree with the loop reference (float32)."""
    x, offset, weight, bias = _inputs(dtype=torch.float32)
    expected = bilinear_reference(x.double(), offset.double(), weight.double(), bias.double()).float()
    direct = torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=2)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deform_merge2x2(x, offset, weight, bias, impl="torchvision"), direct)
    torch.testing.assert_close(deform_merge2x2(x, offset, weight, bias, impl="fast"), expected, rtol=1e-5, atol=1e-5)


# --- the fast path's layouts and caches (perf) ----------------------------------------------------

@pytest.mark.parametrize("with_bias", [True, False])
def test_fast_token_major_input_matches_torchvision(with_bias):
    """LIT hands the op its (B, N, C) tokens seen as a channels-last map; the fast path answers
    channels-last. Forward to 1e-5 and gradients (input, offsets, weight, bias) to 1e-4, with odd
    sizes and offsets that leave the map."""
    B, C, H, W, Cout = 2, 6, 9, 7, 5
    tokens = torch.randn(B, H * W, C)
    offset = torch.randn(B, 8, H // 2, W // 2) * 3.0
    weight = torch.randn(Cout, C, 2, 2)
    bias = torch.randn(Cout) if with_bias else None
    results = {}
    for impl in ("fast", "torchvision"):
        t = tokens.clone().requires_grad_()
        x = t.view(B, H, W, C).permute(0, 3, 1, 2)  # B, N, C -> B, C, H, W (channels-last view)
        args = [a.clone().requires_grad_() if a is not None else None for a in (offset, weight, bias)]
        out = deform_merge2x2(x, args[0], args[1], args[2], impl=impl)
        if impl == "fast":
            assert out.is_contiguous(memory_format=torch.channels_last)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results[impl] = (out.detach(), t.grad, *[a.grad for a in args if a is not None])
    torch.testing.assert_close(results["fast"][0], results["torchvision"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["fast"][1:], results["torchvision"][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the inference GEMM (batched, bias folded) gives the same numbers
        x = tokens.view(B, H, W, C).permute(0, 3, 1, 2)
        torch.testing.assert_close(deform_merge2x2(x, offset, weight, bias), results["torchvision"][0],
                                   rtol=1e-5, atol=1e-5)


def test_grid_cache_from_inference_mode_serves_training():
    """A base grid cached under inference_mode gives the training forward and backward the numbers
    of torchvision's op (float64), as a fresh grid does."""
    tensors = _inputs(H=10, W=12)
    x, offset, weight, bias = (t.float() for t in tensors)
    with torch.inference_mode():
        deform_merge2x2(x, offset, weight, bias)  # fills the base-grid cache for 5x6
    got = _grads(deform_merge2x2, tensors, torch.float32)
    expected = _grads(lambda x, o, w, b: torchvision.ops.deform_conv2d(x, o, w, b, stride=2), tensors, torch.float64)
    for name, a, b in zip(("out", "x", "offset", "weight", "bias"), got, expected):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4, msg=name)


def test_shapes_on_meta_device():
    m = DeformableTokenMerging(8, 16).to("meta")
    assert m(torch.empty(2, 8, 10, 6, device="meta")).shape == (2, 16, 5, 3)
