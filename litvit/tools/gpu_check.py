"""The checks that need a CUDA GPU (``make gpu-check``), in one run, written to a JSON file.

CI has no GPU, so nothing here is required by a test; run it wherever a CUDA device is at hand
(no install needed, from the repository root):

    PYTHONPATH=. python -m litvit.cli.gpu_check --out gpu-check.json

Each check is independent (a failure is recorded with its one-line error and the run goes on):

* ``parity``: LIT-Ti and LIT-S (full size, 224 px) on CUDA against the CPU, fast and reference paths;
* ``train_amp``: one fp16 (GradScaler) and one bf16 training step of every registered model;
* ``dtm_gradcheck``: ``torch.autograd.gradcheck`` of the fast DTM on CUDA in float64, and its
  agreement with torchvision's ``deform_conv2d``;
* ``compile``: ``torch.compile(fullgraph=True)`` (inductor) of LIT-Ti (``--compile-models``) under
  fp32 and bf16, inference and a training step, with the speed-up over eager;
  ``mode="reduce-overhead"`` (CUDA graphs) inference;
* ``cli_train``: ``litvit train --device cuda`` for one epoch on the embedded digits;
* ``cli_bench``: ``litvit bench --device cuda --peers`` (LIT-Ti, LIT-S and the timm peers).

Sized to finish in about 4 minutes on an H100 (most of it inductor compiling).
"""
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ..models import create_model, list_models
from ..ops.dtm import deform_merge2x2

__all__ = ["run_checks", "CHECKS"]

# the checks, in the order they run
CHECKS = ("parity", "train_amp", "dtm_gradcheck", "compile", "cli_train", "cli_bench")


def _median_time(fn: Callable[[], object], reps: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def check_parity() -> Dict:
    out = {}
    for name in ("lit_ti", "lit_s"):
        torch.manual_seed(0)
        cpu = create_model(name).eval()
        with torch.no_grad():  # non-trivial offsets, so the deformable sampling is exercised
            for n, p in cpu.named_parameters():
                if "conv_offset" in n:
                    p.normal_(0, 0.05)
        gpu = create_model(name).eval().cuda()
        gpu.load_state_dict(cpu.state_dict())
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            want = cpu(x)
            for path in ("fast", "reference"):
                gpu.set_fused_attn(path == "fast")
                gpu.set_dtm_impl("fast" if path == "fast" else "torchvision")
                got = gpu(x.cuda()).cpu()
                err = (got - want).abs().max().item()
                out[f"{name}/{path}"] = dict(max_abs_err=err, ok=err < 1e-3)
    return out


def check_train_amp() -> Dict:
    out = {}
    for name in list_models():
        model = create_model(name, num_classes=10).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda")
        x = torch.randn(8, 3, 224, 224, device="cuda")
        y = torch.randint(0, 10, (8,), device="cuda")
        res = {}
        for dtype in (torch.float16, torch.bfloat16):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            if dtype == torch.float16:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            finite = all(torch.isfinite(p).all().item() for p in model.parameters())
            res[str(dtype).replace("torch.", "")] = dict(loss=loss.item(), finite=finite)
        out[name] = res
    return out


def check_dtm_gradcheck() -> Dict:
    import torchvision
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 3, 5, 6, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    off = (torch.randn(2, 8, 2, 3, device="cuda", dtype=torch.float64, generator=g) * 1.5).requires_grad_()
    w = torch.randn(4, 3, 2, 2, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    ok = torch.autograd.gradcheck(lambda *a: deform_merge2x2(*a, impl="fast"), (x, off, w, b), eps=1e-6, atol=1e-5)
    want = torchvision.ops.deform_conv2d(x, off, w, b, stride=2)
    err = (deform_merge2x2(x, off, w, b) - want).abs().max().item()
    return dict(gradcheck=bool(ok), max_abs_err_vs_torchvision=err, ok=bool(ok) and err < 1e-10)


def check_compile(models=("lit_ti",)) -> Dict:
    out = {}
    x = torch.randn(32, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (32,), device="cuda")
    for name in models:
        for dtype in (None, torch.bfloat16):
            tag = f"{name}/{'bf16' if dtype else 'fp32'}"
            amp = dict(device_type="cuda", dtype=dtype or torch.float32, enabled=dtype is not None)
            torch._dynamo.reset()
            model = create_model(name).cuda().eval()
            compiled = torch.compile(model, fullgraph=True)
            with torch.no_grad(), torch.autocast(**amp):
                t0 = time.perf_counter()
                got = compiled(x)
                compile_s = time.perf_counter() - t0
                err = (got.float() - model(x).float()).abs().max().item()
                eager = _median_time(lambda: model(x))
                comp = _median_time(lambda: compiled(x))
            out[f"{tag}/infer"] = dict(max_abs_err=err, compile_s=compile_s, eager_ms=eager * 1e3,
                                       compiled_ms=comp * 1e3, speedup=eager / comp)
            torch._dynamo.reset()
            model.train()
            compiled = torch.compile(model, fullgraph=True)

            def step(m):
                with torch.autocast(**amp):
                    loss = torch.nn.functional.cross_entropy(m(x), y)
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss

            t0 = time.perf_counter()
            loss = step(compiled).item()
            compile_s = time.perf_counter() - t0
            eager = _median_time(lambda: step(model), reps=5, warmup=2)
            comp = _median_time(lambda: step(compiled), reps=5, warmup=2)
            out[f"{tag}/train"] = dict(loss=loss, compile_s=compile_s, eager_ms=eager * 1e3, compiled_ms=comp * 1e3,
                                       speedup=eager / comp)
    torch._dynamo.reset()
    model = create_model("lit_ti").cuda().eval()
    graphs = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):  # CUDA graphs are recorded on a later call
            got = graphs(x).clone()
        err = (got.float() - model(x).float()).abs().max().item()
    out["lit_ti/bf16/infer/reduce-overhead"] = dict(max_abs_err=err, ok=err < 0.1)
    return out


def _cli(args: List[str], timeout: int) -> Dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "litvit", *args], capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    return dict(returncode=proc.returncode, seconds=time.perf_counter() - t0, tail=tail)


def check_cli_train() -> Dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = _cli(["train", "--device", "cuda", "--epochs", "1", "--amp", "bf16", "--no-progress",
                    "--output", str(Path(tmp) / "run")], timeout=300)
        log = Path(tmp) / "run" / "log.jsonl"
        if log.exists():
            res["last_record"] = json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1])
    return res


def check_cli_bench(out_dir: Path) -> Dict:
    res = _cli(["bench", "--device", "cuda", "--models", "lit_ti", "lit_s", "--peers", "--batch-size", "64",
                "--img-size", "224", "--dtype", "fp32", "bf16", "--mode", "infer", "train", "--reps", "5",
                "--out", str(out_dir / "gpu-bench.json"), "--plot", str(out_dir / "gpu-bench.png")], timeout=600)
    if (out_dir / "gpu-bench.json").exists():
        rows = json.loads((out_dir / "gpu-bench.json").read_text(encoding="utf-8"))["models"]
        res["rows"] = [{k: r.get(k) for k in ("model", "variant", "mode", "img_per_s", "vs_reference", "frac_of_peak")}
                       for r in rows]
    return res


def run_checks(only: Optional[List[str]], out: Path, compile_models=("lit_ti",)) -> Dict:
    """Run the checks, rewriting ``out`` after each one (a run cut short still leaves its findings)."""
    out_dir = out.parent
    import timm
    import torchvision
    report = dict(
        torch=torch.__version__, torchvision=torchvision.__version__, timm=timm.__version__,
        cuda=torch.version.cuda, python=platform.python_version(),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, checks={})
    if not torch.cuda.is_available():
        report["error"] = "no CUDA device"
        return report
    checks = dict(parity=check_parity, train_amp=check_train_amp, dtm_gradcheck=check_dtm_gradcheck,
                  compile=lambda: check_compile(compile_models), cli_train=check_cli_train,
                  cli_bench=lambda: check_cli_bench(out_dir))
    assert tuple(checks) == CHECKS
    for name, fn in checks.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            result = dict(status="ok", result=fn())
        except Exception as e:  # one check's failure is a finding, not the end of the run
            result = dict(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                          traceback=traceback.format_exc()[-3000:])
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu-check] {name}: {result['status']} in {result['seconds']} s", flush=True)
        report["checks"][name] = result
        out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report
