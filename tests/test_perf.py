"""The fast path against the reference path (numerics, autocast, empty batch, caches) and
``litvit bench`` end to end on a tiny config (torch.compile: test_compile.py). No timing assertions."""
import json

import pytest
import torch

import litvit
from litvit.cli import main
from litvit.models.lit import Block
from litvit.ops import fused_mlp

from helpers import TINY, randomize_

pytestmark = pytest.mark.unit

MODELS = litvit.list_models()
DTM_MODELS = ("lit_ti", "lit_s", "lit_m", "lit_b")
SMALL = dict(TINY, depths=(1, 1, 1, 1))  # one block per stage where only tracing is checked


def _pair(name, **kw):
    """(fast, reference) copies of one randomised tiny model (no drop-path: train mode compares too)."""
    kw.setdefault("drop_path_rate", 0.0)
    fast = randomize_(litvit.create_model(name, num_classes=5, **dict(TINY, **kw)), offset_scale=0.5)
    ref = litvit.create_model(name, num_classes=5, **dict(TINY, **kw))
    ref.load_state_dict(fast.state_dict())
    ref.set_fused_attn(False)
    ref.set_fused_mlp(False)
    if name in DTM_MODELS:
        ref.set_dtm_impl("torchvision")
    return fast, ref


@pytest.mark.parametrize("name", MODELS)
def test_fast_path_matches_reference_inference(name):
    fast, ref = _pair(name)
    fast.eval(), ref.eval()
    x = torch.randn(3, 3, 96, 64)  # not the training size: resized tables and odd DTM maps (3x2 -> 1x1)
    with torch.inference_mode():
        y_ref = ref(x)
        y_fast = fast(x)  # the oneDNN-fused MLP and the cached tables run here
        y_again = fast(x)  # ... and from the caches now
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_again, y_fast, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
@pytest.mark.parametrize("dtype,train,tol", [(torch.float32, False, 1e-4), (torch.float64, True, 1e-9)])
def test_fast_path_matches_reference_gradients(name, dtype, train, tol):
    """Gradients w.r.t. the input and every parameter. Float32 in eval mode; in train mode (BatchNorm
    on the statistics of a 2-image batch of 2x3 maps, offsets of up to ~15 px) the gradient is so
    ill-conditioned that even the reference differs from itself in float64 by ~1e-2, so that case is
    compared in float64."""
    fast, ref = _pair(name)
    for m in (fast, ref):
        m.to(dtype).train(train)
    x = torch.randn(2, 3, 64, 96, dtype=dtype)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(xi) for m, xi in zip((fast, ref), xs)]
    torch.testing.assert_close(outs[0], outs[1], rtol=tol / 10, atol=tol / 10)
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=tol, atol=tol)
    ref_params = dict(ref.named_parameters())
    for n, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[n].grad, rtol=tol, atol=tol, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("fused", [None, False], ids=["probed", "forced-fallback"])
@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
def test_bf16_autocast_inference_and_training(name, fused):
    """bf16 autocast works whatever the CPU: with the fused MLP where the probe allows it, and through
    the plain fallback when the probe says no (as on a CPU without native bf16)."""
    fast, ref = _pair(name)
    fast.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode(), fused_mlp.forced(fused):
        y32 = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = fast(x)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.1, atol=0.1)
    fast.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fast(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())


@pytest.mark.parametrize("name", ["lit_ti", "lit_s"])
def test_empty_batch(name):
    fast, ref = _pair(name)
    for m in (fast.eval(), ref.eval()):
        with torch.inference_mode():
            assert m(torch.randn(0, 3, 64, 64)).shape == (0, 5)


def test_fused_mlp_runs_only_where_it_can():
    model = litvit.create_model("lit_ti", **TINY).eval()
    blk = next(m for m in model.modules() if isinstance(m, Block))
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        assert blk._use_fused_mlp(x) == fused_mlp.supported(torch.float32)
        with fused_mlp.forced(True):
            assert blk._use_fused_mlp(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert blk._use_fused_mlp(x)
        with fused_mlp.forced(False):  # the probe says no: timm's Mlp, silently
            assert not blk._use_fused_mlp(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert not blk._use_fused_mlp(x)
    with fused_mlp.forced(True):
        assert not blk._use_fused_mlp(x)  # gradients wanted: no autograd formula for the fused kernel
        model.set_fused_attn(False)
        with torch.no_grad():
            assert blk._use_fused_mlp(x)  # its own switch: the attention path does not turn it off
        model.set_fused_mlp(False)
        with torch.no_grad():
            assert not blk._use_fused_mlp(x)  # the reference path keeps timm's Mlp
        model.set_fused_mlp(True)
        model.train()
        with torch.no_grad():
            assert not blk._use_fused_mlp(x)


def test_caches_follow_parameter_updates():
    """Resized position tables are cached per size without gradients and rebuilt when a parameter
    changes in place (optimizer step, load_state_dict)."""
    for name in ("lit_ti", "lit_s"):
        model = randomize_(litvit.create_model(name, num_classes=5, **TINY)).eval()
        x = torch.randn(1, 3, 96, 96)
        with torch.no_grad():
            y0 = model(x)
            for n, p in model.named_parameters():
                if n.endswith(("pos_embed", "relative_position_bias_table")):
                    p.mul_(3.0)
            y1 = model(x)
        fresh = litvit.create_model(name, num_classes=5, **TINY).eval()
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(y1, fresh(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(y0, y1)


@pytest.mark.cli
@pytest.mark.slow
@pytest.mark.parametrize("fused", [None, False], ids=["probed", "forced-fallback"])
def test_bench_end_to_end(tmp_path, fused):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "--models", "lit_ti", "--model-args", json.dumps(dict(SMALL, img_size=64)),
            "--img-size", "64", "--batch-size", "2", "--dtype", "fp32", "bf16", "--mode", "infer", "train",
            "--warmup", "1", "--reps", "2", "--threads", "1", "--out", str(out), "--plot", str(png)]
    with fused_mlp.forced(fused):
        assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["matmul_peak_gflops"] > 0
    rows = res["models"]
    assert {(r["mode"], r["variant"]) for r in rows} == {
        (m, v) for m in ("infer", "train") for v in ("reference", "fast fp32", "fast bf16")}
    for r in rows:
        assert r["img_per_s"] > 0 and len(r["times_s"]) == 2 and r["gflop_per_img"] > 0
        assert r["vs_reference"] > 0 and 0 < r["frac_of_peak"]
    ref = next(r for r in rows if r["variant"] == "reference" and r["mode"] == "infer")
    assert ref["vs_reference"] == 1.0
    assert ref["gflop_per_img"] == pytest.approx(next(r for r in rows if r["variant"] == "fast fp32"
                                                      and r["mode"] == "infer")["gflop_per_img"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_peak_memory_in_a_fresh_process():
    from litvit.tools.bench import measure_memory
    spec = dict(model="lit_ti", path="fast", batch_size=2, img_size=64, mode="train", dtype="fp32", device="cpu",
                threads=1, model_args=dict(SMALL, img_size=64))
    result = measure_memory(spec)
    assert result.get("error") is None and result["peak_mb"] > 0, result
    assert result["method"] in ("VmHWM-VmRSS", "ru_maxrss delta (lower bound)")


@pytest.mark.cli
def test_bench_dtm_only(tmp_path):
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    # 64 px: the three shapes at 2/7 of LIT-Ti's 224 sizes (16, 8, 4), quick
    assert main(["bench", "--dtm-only", "--img-size", "64", "--batch-size", "2", "--warmup", "0", "--reps", "1",
                 "--threads", "1", "--out", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())["dtm"]
    assert len(rows) == 3 * 2 * 2 * 2
    assert {r["side"] for r in rows} == {16, 8, 4}
    assert png.exists()


def test_bench_flop_count_follows_the_paper_convention():
    from litvit.tools.bench import count_flops
    model = litvit.create_model("lit_ti").eval()
    assert count_flops(model, 224, torch.device("cpu")) / 2e9 == pytest.approx(3.6, abs=0.05)


@pytest.mark.cli
def test_bench_bad_arguments_are_one_line_errors(capsys):
    assert main(["bench", "--models", "nope", "--out", "/dev/null"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["bench", "--img-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_flop_counter_sees_the_plain_ops_under_no_grad():
    """The oneDNN-fused MLP is invisible to FlopCounterMode: under a dispatch mode the plain path runs."""
    from torch.utils.flop_counter import FlopCounterMode
    model = litvit.create_model("lit_ti", **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    counts = []
    for grad in (True, False):
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_bench_reference_path_is_the_plain_path():
    from litvit.models.lit import Attention
    from litvit.ops.dtm import DeformableTokenMerging
    from litvit.tools.bench import set_path
    model = set_path(litvit.create_model("lit_ti", **TINY), "ref")
    assert not any(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    assert not any(m.fused_mlp for m in model.modules() if isinstance(m, Block))
    assert all(m.impl == "torchvision" for m in model.modules() if isinstance(m, DeformableTokenMerging))
    model = set_path(model, "fast")
    assert all(m.fused_mlp for m in model.modules() if isinstance(m, Block))
