"""Capabilities are probed, not assumed: the oneDNN fused MLP is used only where a tiny probe call
in the dtype at hand works, and bf16 autocast runs everywhere through the fallback otherwise.

The fallback is exercised on purpose two ways: by forcing the probe's answer (``fused_mlp.forced``)
and, in a subprocess, by capping oneDNN at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), which makes an
AVX-512 CPU behave like one without native bf16 (the fused bf16 kernel then raises in oneDNN).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import litvit
from litvit.ops import fused_mlp

from helpers import TINY

pytestmark = pytest.mark.unit


def test_probe_runs_once_per_dtype(monkeypatch):
    calls = []
    real = fused_mlp._probe
    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_probe", lambda dtype: calls.append(dtype) or real(dtype))
    model = litvit.create_model("lit_ti", **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    assert calls == [torch.float32, torch.bfloat16]


def test_probe_says_no_when_the_op_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation")

    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_op_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken, raising=False)
    assert not fused_mlp.supported(torch.float32)
    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_op_available", lambda: False)
    assert not fused_mlp.supported(torch.float32)
    assert not fused_mlp._probe(torch.float64)  # no fused kernel for float64: never probed as usable


def test_forced_fallback_gives_the_plain_result():
    model = litvit.create_model("lit_ti", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), fused_mlp.forced(False):
        fallback = model(x)
    model.set_fused_mlp(False)
    with torch.no_grad():
        plain = model(x)
    assert torch.equal(fallback, plain)


_SCRIPT = textwrap.dedent("""
    import json, torch, litvit
    from litvit.ops import fused_mlp
    report = dict(bf16_native=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    try:  # does the raw fused kernel work in bf16 here? (it is what crashed before the probe)
        torch.ops.mkldnn._linear_pointwise(torch.randn(2, 8, dtype=torch.bfloat16),
            torch.randn(4, 8, dtype=torch.bfloat16), None, "gelu", [], "none")
        report["raw_bf16_kernel"] = True
    except RuntimeError:
        report["raw_bf16_kernel"] = False
    kw = dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    for name in ("lit_ti", "lit_s"):
        model = litvit.create_model(name, num_classes=5, **kw).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            y32 = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y16 = model(x)
        assert y16.dtype == torch.bfloat16 and (y16.float() - y32).abs().max() < 0.1
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().mean().backward()
    report["fused_bf16"] = fused_mlp.supported(torch.bfloat16)
    report["fused_fp32"] = fused_mlp.supported(torch.float32)
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_bf16_on_a_cpu_capped_at_avx2():
    """What a CPU without native bf16 sees. Where the torch build honours the cap, the raw bf16
    kernel fails in the subprocess (the crash this package used to hit) and the probe must say no;
    bf16 autocast inference and training must work either way."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if not report["raw_bf16_kernel"]:
        assert not report["fused_bf16"]  # the probe saw what the kernel does
    if not report["bf16_native"]:
        assert not report["fused_bf16"]
    assert report["fused_fp32"] == fused_mlp._probe(torch.float32)  # fp32 is unaffected by the cap


def test_conv_kernel_probed_apart(monkeypatch):
    """LITv2's fused conv kernel has a probe of its own: a CPU where only it fails keeps LIT's fused
    MLP (the linear kernels), and LITv2 falls back to its plain ConvFFN."""
    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_probe", lambda dtype: True)
    monkeypatch.setattr(fused_mlp, "_probe_conv", lambda dtype: False)
    assert fused_mlp.supported(torch.float32) and not fused_mlp.supported(torch.float32, conv=True)
    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_probe_conv", lambda dtype: True)
    assert fused_mlp.supported(torch.float32, conv=True)
    monkeypatch.setattr(fused_mlp, "_probed", {})
    monkeypatch.setattr(fused_mlp, "_probe", lambda dtype: False)  # no linear kernels: no conv path either
    assert not fused_mlp.supported(torch.float32, conv=True)
