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
DTM_MODELS = ("lit_ti", "lit_s", "lit_m", "lit_b", "litv2_s", "litv2_m", "litv2_b", "litv2_b_384")
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


@pytest.fixture
def quick_peak(monkeypatch):
    """The bench's GEMM sweep cut to its first shape (the sweep's size is not what these tests check)."""
    from litvit.tools import bench
    monkeypatch.setattr(bench, "PEAK_BUDGET_S", 0.0)


@pytest.mark.cli
@pytest.mark.slow
@pytest.mark.parametrize("fused", [None, False], ids=["probed", "forced-fallback"])
def test_bench_end_to_end(tmp_path, fused, quick_peak, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["bench", "--models", "lit_ti", "--model-args", json.dumps(dict(SMALL, img_size=64)),
            "--img-size", "64", "--batch-size", "2", "--dtype", "fp32", "bf16", "--mode", "infer", "train",
            "--warmup", "1", "--reps", "2", "--threads", "1", "--out", str(out), "--plot", str(png)]
    with fused_mlp.forced(fused):
        assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["matmul_peak_gflops"] > 0 and set(res["peaks"]) == {"fp32", "bf16"}
    rows = res["models"]
    assert {(r["mode"], r["variant"]) for r in rows} == {
        (m, f"{p} {d}") for m in ("infer", "train") for p in ("reference", "fast") for d in ("fp32", "bf16")}
    median = {(r["mode"], r["variant"]): sorted(r["times_s"])[1] / 2 + sorted(r["times_s"])[0] / 2 for r in rows}
    for r in rows:
        assert r["img_per_s"] > 0 and len(r["times_s"]) == 2 and r["gflop_per_img"] > 0 and r["reps"] == 2
        # like with like: a variant is compared with the reference path in its own dtype
        ref = median[(r["mode"], f"reference {r['dtype']}")]
        assert r["vs_reference"] == pytest.approx(ref / median[(r["mode"], r["variant"])])
        # %peak against the peak of the row's own dtype, which no row exceeds
        assert r["peak_gflops"] == res["peaks"][r["dtype"]]["gflops"]
        assert 0 < r["frac_of_peak"] <= 1.0
    ref = next(r for r in rows if r["variant"] == "reference fp32" and r["mode"] == "infer")
    assert ref["vs_reference"] == 1.0
    assert ref["gflop_per_img"] == pytest.approx(next(r for r in rows if r["variant"] == "fast fp32"
                                                      and r["mode"] == "infer")["gflop_per_img"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two repetitions: no speed-up is headlined
    assert "speed-ups not summarised: 2 timed repetitions per variant is noise" in printed
    assert "best speed-up" not in printed


@pytest.mark.cli
@pytest.mark.slow
def test_bench_any_timm_model_and_the_plot_beside_the_json(tmp_path, monkeypatch, quick_peak, capsys):
    """timm models built for one input size get it (mixer), others run on any size (resnet);
    the plot goes beside --out."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sub" / "b.json"
    assert main(["bench", "--models", "resnet18", "mixer_s32_224", "--img-size", "64", "--batch-size", "1",
                 "--dtype", "fp32", "--mode", "infer", "--warmup", "0", "--reps", "1", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["models"]
    assert [(r["model"], r.get("skipped")) for r in rows] == [("resnet18", None), ("mixer_s32_224", None)]
    assert (tmp_path / "sub" / "b.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "bench.png").exists()
    assert "speed-up" not in printed  # nothing to compare with: timm models have no reference path


def test_named_models_get_img_size_only_where_their_constructor_takes_it():
    from litvit.tools.named_models import create_named_model, size_kwargs, takes_img_size
    assert size_kwargs("lit_ti", 64) == {"img_size": 64}
    for name in ("resnet18", "convnext_atto", "pvt_v2_b0", "efficientnet_b0"):
        assert size_kwargs(name, 64) == {}, name
    for name in ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mixer_s32_224", "vit_tiny_patch16_384"):
        assert size_kwargs(name, 64) == {"img_size": 64}, name
    assert size_kwargs("deit_tiny_patch16_224", None) == {}
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        takes_img_size("nope")
    with torch.device("meta"):
        assert create_named_model("vit_tiny_patch16_384", img_size=64).patch_embed.img_size == (64, 64)
        assert type(create_named_model("resnet18", img_size=64)).__name__ == "ResNet"


def test_bench_peaks_are_per_dtype_and_never_exceeded():
    from litvit.tools.bench import matmul_peak, settle_peaks
    best = matmul_peak(torch.device("cpu"), "fp32", shapes=[(64, 64, 64), (128, 64, 256)], budget_s=60)
    assert best["gflops"] > 0 and best["shape"] in ((64, 64, 64), (128, 64, 256))
    assert best["op"].split()[0] in ("mm", "linear")
    assert matmul_peak(torch.device("cpu"), "bf16", shapes=[(64, 64, 64), (512, 512, 512)], budget_s=0)["shape"] \
        == (64, 64, 64)  # no budget: only the smallest shape
    rows = [dict(model="m", variant="fast fp32", mode="infer", dtype="fp32", gflop_per_s=150.0),
            dict(model="m", variant="fast bf16", mode="infer", dtype="bf16", gflop_per_s=150.0),
            dict(model="m", variant="reference fp32", mode="infer", dtype="fp32", gflop_per_s=50.0)]
    peaks = settle_peaks(rows, {"fp32": dict(gflops=100.0, op="mm 2048x2048x2048"),
                                "bf16": dict(gflops=300.0, op="linear 8192x1024x4096")})
    assert peaks["fp32"]["gflops"] == 150.0 and "m fast fp32" in peaks["fp32"]["source"]  # a model beat the GEMMs
    assert peaks["bf16"] == dict(gflops=300.0, op="linear 8192x1024x4096", source="linear 8192x1024x4096")
    assert [r["frac_of_peak"] for r in rows] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_bench_headline_compares_like_with_like():
    from litvit.tools.bench import speedup_summary

    def row(variant, dtype, ratio, reps=5):
        return dict(model="lit_ti", batch_size=16, img_size=224, mode="infer", variant=variant, dtype=dtype,
                    path="ref" if variant.startswith("reference") else "fast", vs_reference=ratio, reps=reps)

    rows = [row("reference fp32", "fp32", 1.0), row("reference bf16", "bf16", 1.0), row("fast fp32", "fp32", 1.45),
            row("fast bf16", "bf16", 1.2), row("compiled bf16", "bf16", 1.3), dict(model="x", skipped="no")]
    line = speedup_summary(rows)
    assert "in the same dtype" in line and "fp32 x1.45 (lit_ti b16 224px infer, fast fp32)" in line
    assert "bf16 x1.30 (lit_ti b16 224px infer, compiled bf16)" in line
    rows[2]["reps"] = 1
    assert speedup_summary(rows).startswith("speed-ups not summarised: 1 timed repetition per variant is noise")
    assert speedup_summary([row("fast fp32", "fp32", None)]) == ""  # nothing to compare with (a timm peer)


@pytest.mark.slow
def test_peak_memory_in_a_fresh_process():
    from litvit.tools.bench import measure_memory
    spec = dict(model="lit_ti", path="fast", batch_size=2, img_size=64, mode="train", dtype="fp32", device="cpu",
                threads=1, model_args=dict(SMALL, img_size=64))
    result = measure_memory(spec)
    assert result.get("error") is None and result["peak_mb"] > 0, result
    assert result["method"] in ("VmHWM-VmRSS", "ru_maxrss delta (lower bound)")


@pytest.mark.cli
def test_bench_dtm_only(tmp_path, quick_peak):
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    # 64 px: the three shapes at 2/7 of LIT-Ti's 224 sizes (16, 8, 4), quick
    assert main(["bench", "--dtm-only", "--img-size", "64", "--batch-size", "2", "--warmup", "0", "--reps", "1",
                 "--threads", "1", "--out", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())["dtm"]
    assert len(rows) == 3 * 2 * 2 * 2
    assert {r["side"] for r in rows} == {16, 8, 4}
    assert png.exists()


def test_bench_dtm_returns_its_peaks_and_leaves_its_options_alone(quick_peak):
    """The settled GEMM peaks come back with the rows; the options are only read."""
    import argparse
    from litvit.tools.bench import bench_dtm, matmul_peak
    opts = argparse.Namespace(batch_size=[1], img_size=[32], warmup=0, reps=1)
    before = dict(vars(opts))
    device = torch.device("cpu")
    rows, settled = bench_dtm(opts, device, {"fp32": matmul_peak(device, "fp32")})
    assert vars(opts) == before
    assert rows and set(settled) == {"fp32"} and settled["fp32"]["gflops"] > 0


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
