"""oneDNN's fused linear+GELU and linear+residual for the MLP half of a block, in CPU inference.

``x + fc2(GELU(fc1(norm(x))))`` is two GEMMs with an activation and a residual add between and
after them; oneDNN can run each GEMM with its epilogue fused (``torch.ops.mkldnn._linear_pointwise``,
the kernels inductor itself lowers to on CPU). The op is private and what it supports depends on
the CPU and the build: bf16 needs native bf16 or AVX-512 (on an AVX2-only CPU oneDNN cannot create
the primitive and raises), fp16 needs AVX-512 FP16 or AVX-NE-CONVERT. So :func:`supported` decides
once per dtype, with a tiny call of both kernels compared against the plain ops, and every caller
falls back to the plain ``Mlp`` where it says no. The probe's answer is cached: no per-call cost.

The fused kernels have no autograd formula: they are used only without gradients, and never while
torch.compile, torch.fx, an exporter or a dispatch mode traces (those see the plain ops).
"""
import contextlib
from typing import Dict, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["supported", "forced", "fused_mlp_residual", "fused_conv_mlp_residual", "PROBE_DTYPES"]

PROBE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_probed: Dict[object, bool] = {}  # dtype (linear kernels) or (dtype, "conv")
_forced: Optional[bool] = None  # set by :func:`forced` (tests, debugging)


def _op_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "mkldnn")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _probe(dtype: torch.dtype) -> bool:
    """Run both fused kernels once on a tiny problem in ``dtype`` and compare with the plain ops."""
    if dtype not in PROBE_DTYPES or not _op_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        return False
    g = torch.Generator().manual_seed(0)
    x, res = torch.randn(3, 16, generator=g), torch.randn(3, 8, generator=g)
    w1, b1 = torch.randn(32, 16, generator=g) / 4, torch.randn(32, generator=g)
    w2, b2 = torch.randn(8, 32, generator=g) / 4, torch.randn(8, generator=g)
    try:
        with torch.no_grad(), torch.inference_mode(False):
            args = [t.to(dtype) for t in (x, w1, b1)]
            h = torch.ops.mkldnn._linear_pointwise(*args, "gelu", [], "none")
            out = torch.ops.mkldnn._linear_pointwise.binary(h, res.to(dtype), w2.to(dtype), b2.to(dtype), "add")
            plain = torch.ops.mkldnn._linear_pointwise(*args, "none", [], "none")  # LITv2's fc1
    except (RuntimeError, NotImplementedError):  # oneDNN: "could not create a primitive descriptor ..."
        return False
    want = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2) + res
    tol = 1e-4 if dtype == torch.float32 else 0.1
    if not (out.shape == want.shape and torch.allclose(out.float(), want, rtol=tol, atol=tol)):
        return False
    with torch.autocast("cpu", enabled=False):
        want = F.linear(x, w1, b1)
    return torch.allclose(plain.float(), want, rtol=tol, atol=tol)


def _probe_conv(dtype: torch.dtype) -> bool:
    """LITv2's ConvFFN kernel: a depthwise 3x3 conv with the GELU fused, on a channels-last map,
    against the plain ops (probed apart from the linear kernels, so that a CPU where only this one
    fails keeps LIT's fused MLP)."""
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return False
    g = torch.Generator().manual_seed(0)
    tol = 1e-4 if dtype == torch.float32 else 0.1
    m = torch.randn(2, 5, 4, 8, generator=g).permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W (channels-last view)
    wc, bc = torch.randn(8, 1, 3, 3, generator=g) / 3, torch.randn(8, generator=g)
    try:
        with torch.no_grad(), torch.inference_mode(False):
            got = _dwconv_gelu(m.to(dtype), wc.to(dtype), bc.to(dtype))
    except (RuntimeError, NotImplementedError):
        return False
    with torch.autocast("cpu", enabled=False):  # the probe may first run under the caller's autocast
        want = F.gelu(F.conv2d(m, wc, bc, padding=1, groups=8))
    return got.shape == want.shape and torch.allclose(got.float(), want, rtol=tol, atol=tol)


def supported(dtype: torch.dtype, conv: bool = False) -> bool:
    """Whether the fused kernels run, and agree with the plain ops, in ``dtype`` on this CPU: the
    linear ones (LIT's MLP, LITv2's fc1 and fc2), and with ``conv=True`` also LITv2's fused
    depthwise conv + GELU. Probed on the first call for each dtype and kind; the answer is cached."""
    if _forced is not None:
        return _forced
    ok = _probed.get(dtype)
    if ok is None:
        ok = _probed[dtype] = _probe(dtype)
    if ok and conv:
        key = (dtype, "conv")
        if key not in _probed:
            _probed[key] = _probe_conv(dtype)
        ok = _probed[key]
    return ok


@contextlib.contextmanager
def forced(value: Optional[bool]) -> Iterator[None]:
    """Within the context :func:`supported` answers ``value`` for every dtype (None: probe as usual).
    Used to run the fallback on purpose on a machine where the fused kernels work.

    Examples::
        >>> with forced(False):
        ...     supported(torch.float32)
        False
    """
    global _forced
    previous, _forced = _forced, value
    try:
        yield
    finally:
        _forced = previous


def fused_mlp_residual(x: Tensor, norm: nn.Module, fc1: nn.Linear, fc2: nn.Linear,
                       autocast_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``x + fc2(GELU(fc1(norm(x))))`` with the two fused kernels (check :func:`supported` first).

    Args:
        x (Tensor[B, N, C]): the residual stream (float32 or bfloat16).
        norm (nn.Module): the block's pre-MLP norm.
        fc1 (nn.Linear): C -> hidden, followed by exact GELU.
        fc2 (nn.Linear): hidden -> C.
        autocast_dtype (torch.dtype, optional): the CPU autocast dtype when autocast is on: fc1+GELU
            then run in it (as autocast would), fc2 goes through autocast and the residual add
            follows autocast's type promotion, so the stream keeps its dtype.

    Returns:
        Tensor[B, N, C].
    """
    h = norm(x)
    if autocast_dtype is not None:
        dt = autocast_dtype
        h = torch.ops.mkldnn._linear_pointwise(
            h.to(dt), fc1.weight.to(dt), None if fc1.bias is None else fc1.bias.to(dt), "gelu", [], "none")
        return x + fc2(h)
    h = torch.ops.mkldnn._linear_pointwise(h, fc1.weight, fc1.bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise.binary(h, x, fc2.weight, fc2.bias, "add")


def _dwconv_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """GELU(depthwise 3x3 conv, padding 1) as one oneDNN primitive; x (B, C, H, W), channels-last best."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [1, 1], [1, 1], [1, 1], x.shape[1], "gelu", [], "none")


def fused_conv_mlp_residual(x: Tensor, feat_size, norm: nn.Module, fc1: nn.Linear, dwconv: nn.Conv2d,
                            fc2: nn.Linear, autocast_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``x + fc2(GELU(dwconv(fc1(norm(x)))))`` (LITv2's ConvFFN) with the conv+GELU and the
    fc2+residual fused (check :func:`supported` first).

    Args:
        x (Tensor[B, H*W, C]): the residual stream (float32 or bfloat16).
        feat_size (Tuple[int, int]): the map (H, W).
        norm (nn.Module): the block's pre-MLP norm.
        fc1 (nn.Linear): C -> hidden.
        dwconv (nn.Conv2d): the 3x3 depthwise conv over the hidden map (padding 1).
        fc2 (nn.Linear): hidden -> C.
        autocast_dtype (torch.dtype, optional): the CPU autocast dtype when autocast is on: the conv
            then runs in it (as autocast would) and the residual add follows autocast's promotion.

    Returns:
        Tensor[B, H*W, C].
    """
    B, N, _ = x.shape
    H, W = feat_size
    if autocast_dtype is None:  # bias in the GEMM's epilogue: no copy of the broadcast bias first (addmm)
        h = torch.ops.mkldnn._linear_pointwise(norm(x), fc1.weight, fc1.bias, "none", [], "none")
    else:
        h = fc1(norm(x))  # in autocast's dtype
    hidden = h.shape[-1]
    m = h.reshape(B, H, W, hidden).permute(0, 3, 1, 2)  # B, N, hid -> B, hid, H, W (channels-last view)
    w, b = dwconv.weight, dwconv.bias
    if autocast_dtype is not None:
        m, w, b = m.to(autocast_dtype), w.to(autocast_dtype), None if b is None else b.to(autocast_dtype)
    h = _dwconv_gelu(m, w, b).permute(0, 2, 3, 1).reshape(B, N, hidden)  # -> B, N, hid
    if autocast_dtype is not None:
        return x + fc2(h)
    return torch.ops.mkldnn._linear_pointwise.binary(h, x, fc2.weight, fc2.bias, "add")
