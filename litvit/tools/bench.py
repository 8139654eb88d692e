"""``litvit bench``: throughput, latency and peak memory of LIT against its reference path and timm peers.

Every speed figure is measured in one process with warm-up and *interleaved* repetitions (variant A,
B, C, A, B, C, ...), so that a change in machine load hits every variant alike; the median and the
spread (min-max over repetitions) are reported. Each figure is also given as

* a ratio to the **reference path** (plain softmax attention + ``torchvision.ops.deform_conv2d``,
  eager: what the original code computes) of the same model, batch, size, mode *and dtype*: the
  reference is timed in every dtype asked for, so a bf16 time is only ever divided by a bf16 one,
* a ratio to the same path in float32 (what bf16 autocast or compilation gains),
* a fraction of the **peak of its dtype**: the best GEMM this machine shows in that dtype (square
  ``torch.mm`` and tall ``F.linear`` products of 1024-4096 sides, as many as ``PEAK_BUDGET_S``
  allows, at start-up; the best one again before every model case and at the end, so load that
  comes and goes cannot understate it), or the achieved rate of a model where one ran faster than
  every GEMM measured (the output names it): no row reads above 100 %.
  Achieved GFLOP/s = FLOPs per image x images/s, FLOPs counted by ``FlopCounterMode`` in the paper's
  convention (conv/linear multiply-adds and the two attention products, x2; DTM as its dense 2x2
  conv; bilinear sampling, norms and activations not counted); a training step counts 3x forward.

The closing line names the best speed-up of the fast path over the reference in each dtype, when
every variant was timed at least ``MIN_REPS_FOR_SPEEDUP`` times (fewer is noise, and it says so).
A ``--models`` name may be any litvit or timm model: the model is built for the input size where
its constructor takes one (:mod:`litvit.tools.named_models`); a timm model that cannot run at a
size is skipped with the reason.

Peak memory of a (model, size) is measured in a fresh subprocess: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the resident-set high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` just before the step, with glibc's heap trimmed and a fixed mmap
threshold so freed tensors leave the resident set) minus the resident size before the step.

Examples::

    litvit bench                                              # LIT-Ti, LIT-S, LITv2-S, batch 16, 224, fp32+bf16, infer+train
    litvit bench --models lit_ti --threads 2 --compile        # + torch.compile(fullgraph=True)
    litvit bench --models lit_ti pvt_s_msa --img-size 224 512 1024 --batch-size 1 --memory --peers
    litvit bench --dtm-only --threads 2                       # the DTM op alone, fast vs reference
    litvit bench --dense-releases --official WORK --threads 2 # the authors' six dense models vs their code
    litvit bench --device cuda --dtype fp32 bf16 fp16
    litvit bench --models resnet18 convnext_tiny --img-size 160 --out runs/b.json   # any timm model; plot runs/b.png
"""
import copy
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models import MODEL_NAMES
from ..models.lit import Attention
from ..ops.dtm import DeformableTokenMerging, DeformMerge2x2
from ..utils import atomic_write, moved_names
from .flops import count_flops as count_macs
from .named_models import create_named_model

DEFAULTS = dict(
    models=["lit_ti", "lit_s", "litv2_s"],
    batch_size=[16],
    img_size=[224],
    dtype=["fp32", "bf16"],
    mode=["infer", "train"],
    warmup=2,
    reps=5,
    out="bench.json",
    plot=None,  # beside --out: runs/b.json -> runs/b.png
)
MIN_REPS_FOR_SPEEDUP = 3  # fewer timed repetitions per variant: a speed-up is not summarised (noise)
PEERS = ("pvt_v2_b2", "swin_tiny_patch4_window7_224", "deit_small_patch16_224", "resnet50")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# LIT-Ti's three DTM shapes at 224: (in channels, out channels, input map side)
DTM_SHAPES = ((64, 128, 56), (128, 320, 28), (320, 512, 14))


# --- machine ------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# (M, K, N) of the products that measure a dtype's peak, smallest first: square ones and the tall,
# narrow ones of linear layers over many tokens (the sweep stops when its time budget is spent)
PEAK_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (16384, 512, 2048), (8192, 1024, 4096), (4096, 4096, 4096))
PEAK_SHAPES_CUDA = PEAK_SHAPES + ((8192, 8192, 8192),)
PEAK_BUDGET_S = 10.0  # seconds of products per dtype for the sweep at start-up


def _time_best(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(device: torch.device, dtype: str = "fp32", shapes: Optional[Sequence[Tuple[int, int, int]]] = None,
                reps: int = 2, budget_s: Optional[float] = None, ops: Sequence[str] = ("mm", "linear")) -> dict:
    """The best GEMM rate this machine shows in ``dtype``: every (M, K, N) of ``shapes`` (default
    :data:`PEAK_SHAPES`) as ``torch.mm`` and as ``F.linear`` (the op of the models' linear layers),
    best of ``reps`` after one warm-up each (``ops`` picks among the two); larger shapes are skipped
    once the next one would overrun ``budget_s`` (default :data:`PEAK_BUDGET_S`; at least one shape
    is always timed).

    Returns:
        dict: ``gflops`` (the best rate), ``op`` (which product gave it, e.g. ``"linear 8192x1024x4096"``)
        and ``shape`` (its (M, K, N)).

    Examples::
        >>> matmul_peak(torch.device("cpu"), "fp32", shapes=[(256, 256, 256)])["gflops"] > 0
        True
    """
    if shapes is None:
        shapes = PEAK_SHAPES_CUDA if device.type == "cuda" else PEAK_SHAPES
    budget = PEAK_BUDGET_S if budget_s is None else budget_s
    dt = DTYPES[dtype]
    best = dict(gflops=0.0, op="", shape=None)
    spent = 0.0
    for m, k, n in sorted(shapes, key=lambda s: s[0] * s[1] * s[2]):
        flops = 2.0 * m * k * n
        if best["shape"] is not None and spent + len(ops) * (reps + 1) * flops / (best["gflops"] * 1e9) > budget:
            break
        t_start = time.perf_counter()
        a = torch.randn(m, k, device=device, dtype=dt)
        b = torch.randn(k, n, device=device, dtype=dt)
        w = b.t().contiguous()  # N, K: a linear layer's weight
        products = dict(mm=lambda: torch.mm(a, b), linear=lambda: F.linear(a, w))
        for op in ops:
            fn = products[op]
            fn()
            rate = flops / _time_best(fn, device, reps) / 1e9
            if rate > best["gflops"]:
                best = dict(gflops=rate, op=f"{op} {m}x{k}x{n}", shape=(m, k, n))
        del a, b, w
        spent += time.perf_counter() - t_start
    return best


def remeasure_peak(device: torch.device, dtype: str, best: dict) -> float:
    """The product that gave :func:`matmul_peak`'s ``best`` timed once more (one warm-up, one run):
    the bench does so before every case and at the end, so load that comes and goes cannot
    understate the peak."""
    if not best.get("shape"):
        return 0.0
    return matmul_peak(device, dtype, shapes=[best["shape"]], reps=1, ops=[best["op"].split()[0]])["gflops"]


def settle_peaks(rows: List[dict], peaks: Dict[str, dict]) -> Dict[str, dict]:
    """The peak of each dtype, and every row's ``frac_of_peak`` against its own dtype's peak.

    A peak is the best rate seen in that dtype: the best GEMM measured (``peaks``, from
    :func:`matmul_peak`), or the achieved rate of a row that beat every GEMM measured (a model is
    then named as the source: no row can read above 100 %).
    """
    settled = {d: dict(p, source=p.get("op", "")) for d, p in peaks.items()}
    for r in rows:
        if r.get("gflop_per_s") is None:
            continue
        d = r["dtype"]
        if d not in settled or r["gflop_per_s"] > settled[d]["gflops"]:
            label = " ".join(str(r[k]) for k in ("model", "op", "variant", "impl", "mode", "direction") if r.get(k))
            settled[d] = dict(gflops=r["gflop_per_s"], op=settled.get(d, {}).get("op", ""),
                              source=f"{label} (faster than every GEMM measured)")
    for r in rows:
        if r.get("gflop_per_s") is not None:
            r["peak_gflops"] = settled[r["dtype"]]["gflops"]
            r["frac_of_peak"] = r["gflop_per_s"] / r["peak_gflops"]
    return settled


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    info = dict(torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
                device=str(device), cpu=_cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    return info


# --- models -------------------------------------------------------------------------------------

def build_model(name: str, resolution: int, **overrides) -> nn.Module:
    """A LIT model or any timm model by name (random init, nothing downloaded), built for
    ``resolution`` where its constructor takes an input size (:func:`~litvit.tools.named_models.size_kwargs`);
    an ``img_size`` among ``overrides`` (``--model-args``) wins."""
    overrides = dict(overrides)
    return create_named_model(name, img_size=overrides.pop("img_size", resolution), **overrides)


def is_lit(model: nn.Module) -> bool:
    return hasattr(model, "set_fused_attn") and hasattr(model, "set_dtm_impl")


def set_path(model: nn.Module, path: str) -> nn.Module:
    """``"ref"``: plain attention, timm's Mlp, torchvision DTM; ``"fast"``: SDPA, the fused MLP (where
    the CPU supports it), fast DTM."""
    if is_lit(model):
        model.set_fused_attn(path != "ref")
        model.set_fused_mlp(path != "ref")
        if any(isinstance(m, _dtm_cls()) for m in model.modules()):
            model.set_dtm_impl("torchvision" if path == "ref" else "fast")
    return model


def _dtm_cls():
    return DeformableTokenMerging


def count_flops(model: nn.Module, img_size: int, device: torch.device) -> float:
    """Forward FLOPs of one image, 2 x the multiply-adds that :func:`litvit.tools.flops.count_flops`
    counts (the paper's "FLOPs" are multiply-adds; a share of the matmul peak needs FLOPs).

    Counted on the meta device, on the fast path with the math SDPA kernel, so the attention products appear as matmuls,
    the DTM merge as its one GEMM (= the dense 2x2 conv) and its grid_sample not at all.
    """
    # on the meta device: shapes only, so a 1024 px full-attention model costs no memory here
    m = set_path(copy.deepcopy(model), "fast").eval().to("meta")
    x = torch.randn(1, 3, img_size, img_size, device="meta")
    with sdpa_kernel(SDPBackend.MATH):
        return 2.0 * count_macs(m, x).macs


def plain_attention_bytes(model: nn.Module, batch: int, res: int) -> int:
    """Bytes of the largest attention-score tensors (scores + probabilities, float32) that the plain
    path materialises at once, to keep the reference path off sizes this machine cannot hold."""
    worst = 0
    patch = getattr(model, "patch_size", 4)
    for i, stage in enumerate(getattr(model, "stages", [])):
        side = res // (patch * 2 ** i)
        for m in stage.modules():
            if isinstance(m, Attention):
                n = side * side + m.num_prefix_tokens
                keys = (side // m.sr_ratio) ** 2 + m.num_prefix_tokens
                worst = max(worst, 2 * 4 * batch * m.num_heads * n * keys)
    return worst


def available_memory_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --- timing -------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One thing to time: a model on one path, dtype and (optionally) compiled."""
    name: str
    step: Callable[[], None]
    path: str
    dtype: str
    compiled: bool = False
    times: List[float] = field(default_factory=list)


def make_step(model: nn.Module, mode: str, x: Tensor, dtype: str, device: torch.device) -> Callable[[], None]:
    amp = dtype != "fp32"
    amp_dtype = DTYPES[dtype]
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                model(x)
        return step
    model.train()
    target = torch.randint(0, 1000, (x.shape[0],), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def run_interleaved(variants: Sequence[Variant], warmup: int, reps: int, device: torch.device, bar=None) -> None:
    """Warm every variant up, then time one step of each in turn, ``reps`` rounds."""
    for v in variants:
        for _ in range(warmup):
            v.step()
        if bar is not None:
            bar.update(warmup)
    for _ in range(reps):
        for v in variants:
            sync(device)
            t0 = time.perf_counter()
            v.step()
            sync(device)
            v.times.append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)


def summarise(times: Sequence[float]) -> dict:
    med = statistics.median(times)
    return dict(median_s=med, min_s=min(times), max_s=max(times), spread=(max(times) - min(times)) / med)


# --- peak memory in a fresh process -------------------------------------------------------------

def _rss_kb(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark (VmHWM)
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(spec: dict) -> dict:
    """Runs in the fresh subprocess: build, one warm-up step, then the peak of one more step."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = set_path(build_model(spec["model"], spec["img_size"], **spec.get("model_args", {})), spec["path"]).to(device)
    x = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"], device=device)
    step = make_step(model, spec["mode"], x, spec["dtype"], device)
    step()  # one-time allocations (caches, kernels) are not the model's working memory
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return dict(peak_mb=(torch.cuda.max_memory_allocated(device) - base) / 2 ** 20, method="cuda.max_memory_allocated")
    _trim_heap()
    base_kb = _rss_kb("VmRSS")
    if _reset_peak_rss() and base_kb is not None:
        step()
        return dict(peak_mb=(_rss_kb("VmHWM") - base_kb) / 1024, method="VmHWM-VmRSS")
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(peak_mb=(after - before) / 1024, method="ru_maxrss delta (lower bound)")


def measure_memory(spec: dict, timeout: float = 1800) -> dict:
    """Peak memory of one step in a fresh Python process (nothing else allocated there)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), env.get("PYTHONPATH")) if p)
    code = "import json, sys; from litvit.tools.bench import memory_probe; print(json.dumps(memory_probe(json.loads(sys.argv[1]))))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(peak_mb=None, method="failed", error=tail)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the model benchmark ------------------------------------------------------------------------

def bench_models(opts, device: torch.device, peaks: Dict[str, dict]) -> Tuple[List[dict], Dict[str, dict]]:
    """Every (model, batch, size, mode) case of ``opts`` (the options of ``litvit bench``: an
    ``argparse.Namespace`` or any object with those attributes), its variants timed interleaved;
    one row per variant.

    ``peaks`` maps each dtype of ``opts.dtype`` to its :func:`matmul_peak` at start-up; the best
    GEMM is re-measured before every case and at the end. Returns ``(rows, settled)``: the rows, and
    the settled peak of each dtype (:func:`settle_peaks`), against which every row's ``frac_of_peak``
    is given; ``opts`` is only read."""
    from tqdm import tqdm
    names = list(opts.models) + (list(PEERS) if opts.peers else [])
    extra_peers = [n for n in names if n not in MODEL_NAMES]
    if extra_peers:
        import timm  # noqa: F401  (fail early when timm is missing)
    cases = [(n, b, r, mode) for n in names for r in opts.img_size for b in opts.batch_size for mode in opts.mode]
    steps_of = {}
    for case in cases:
        lit = case[0] in MODEL_NAMES
        n_fast = len(opts.dtype) * (2 if opts.compile else 1) if "fast" in opts.paths or not lit else 0
        n_variants = (len(opts.dtype) if lit and "ref" in opts.paths else 0) + n_fast
        steps_of[case] = n_variants * (opts.warmup + opts.reps)
    total = sum(steps_of.values())
    rows = []
    best_gemm = {d: dict(p) for d, p in peaks.items()}

    def remeasure():
        for d, p in best_gemm.items():
            rate = remeasure_peak(device, d, p)
            if rate > p["gflops"]:
                p["gflops"] = rate

    flops_cache: Dict[Tuple[str, int], float] = {}
    bar = tqdm(total=total, desc="bench", unit="step", dynamic_ncols=True)
    for (name, batch, res, mode) in cases:
        bar.set_postfix_str(f"{name} b{batch} {res}px {mode}")
        remeasure()
        torch.manual_seed(0)
        try:
            base = build_model(name, res, **(opts.model_args if name in MODEL_NAMES else {})).to(device)
            if (name, res) not in flops_cache:
                flops_cache[(name, res)] = count_flops(base, res, device)
        except Exception as e:  # a peer that cannot be built or run at this size: say so, keep going
            if name in MODEL_NAMES:
                raise
            why = " ".join(str(e).split()) or type(e).__name__
            tqdm.write(f"skip {name} @ {res}: {type(e).__name__}: {why}")
            rows.append(dict(model=name, batch_size=batch, img_size=res, mode=mode, skipped=why))
            bar.update(steps_of[(name, batch, res, mode)])
            continue
        flops = flops_cache[(name, res)] * (3 if mode == "train" else 1)
        x = torch.randn(batch, 3, res, res, device=device)
        variants = []
        lit = is_lit(base)
        if lit and "ref" in opts.paths:
            need = plain_attention_bytes(base, batch, res) * (2 if mode == "train" else 1)
            avail = available_memory_bytes(device)
            if avail is not None and need > 0.6 * avail:
                tqdm.write(f"{name} @ {res}: no reference path (its plain attention needs {need / 2 ** 30:.1f} GiB, "
                           f"{avail / 2 ** 30:.1f} GiB available)")
                for dt in opts.dtype:
                    rows.append(dict(model=name, batch_size=batch, img_size=res, mode=mode, variant=f"reference {dt}",
                                     skipped=f"plain attention needs {need / 2 ** 30:.1f} GiB"))
                bar.update(len(opts.dtype) * (opts.warmup + opts.reps))
            else:
                for dt in opts.dtype:  # each dtype's reference: a fast variant is compared with its own dtype
                    ref = set_path(copy.deepcopy(base), "ref")
                    variants.append(Variant(f"reference {dt}", make_step(ref, mode, x, dt, device), "ref", dt))
        for dt in (opts.dtype if "fast" in opts.paths or not lit else ()):
            m = set_path(copy.deepcopy(base), "fast")
            variants.append(Variant(f"fast {dt}", make_step(m, mode, x, dt, device), "fast", dt))
        if opts.compile and ("fast" in opts.paths or not lit):
            if device.type == "cpu" and not opts.no_freeze:
                # inference graphs: weights become constants, so inductor pre-packs them for oneDNN and
                # fuses linear + GELU / + residual (training graphs are not frozen)
                import torch._inductor.config as inductor_config
                inductor_config.freezing = True
            for dt in opts.dtype:
                m = set_path(copy.deepcopy(base), "fast")
                cm = torch.compile(m, fullgraph=True)
                variants.append(Variant(f"compiled {dt}", make_step(cm, mode, x, dt, device), "fast", dt, compiled=True))
        del base
        try:
            run_interleaved(variants, opts.warmup, opts.reps, device, bar)
        except Exception as e:
            if name in MODEL_NAMES:
                raise
            why = " ".join(str(e).split()) or type(e).__name__
            tqdm.write(f"skip {name} @ {res} ({mode}): {type(e).__name__}: {why}")
            bar.update(max(0, steps_of[(name, batch, res, mode)] - sum(len(v.times) for v in variants)
                           - opts.warmup * len(variants)))
            rows.append(dict(model=name, batch_size=batch, img_size=res, mode=mode, skipped=why))
            continue
        median = {(v.path, v.dtype, v.compiled): statistics.median(v.times) for v in variants}
        for v in variants:
            s = summarise(v.times)
            med = s["median_s"]
            gflops = flops * batch / med / 1e9
            ref_med = median.get(("ref", v.dtype, False))  # the reference in the same dtype
            fp32_med = median.get((v.path, "fp32", False))  # the same path, eager, in fp32
            row = dict(model=name, batch_size=batch, img_size=res, mode=mode, variant=v.name, path=v.path,
                       dtype=v.dtype, compiled=v.compiled, img_per_s=batch / med, latency_ms=med * 1e3,
                       latency_min_ms=s["min_s"] * 1e3, latency_max_ms=s["max_s"] * 1e3, spread=s["spread"],
                       gflop_per_img=flops / 1e9, gflop_per_s=gflops,
                       vs_reference=(ref_med / med) if ref_med else None,
                       vs_fp32_eager=(fp32_med / med) if fp32_med else None,
                       reps=len(v.times), times_s=v.times)
            rows.append(row)
        del variants
        gc.collect()
    bar.close()
    remeasure()
    settled = settle_peaks(rows, best_gemm)
    if opts.memory:
        mem_specs = []
        for row in rows:
            if row.get("skipped") or row["compiled"] or row["dtype"] != opts.dtype[0]:
                continue
            mem_specs.append(row)
        for row in tqdm(mem_specs, desc="peak memory (fresh process each)", unit="run", dynamic_ncols=True):
            spec = dict(model=row["model"], path=row["path"], batch_size=row["batch_size"], img_size=row["img_size"],
                        mode=row["mode"], dtype=row["dtype"], device=str(device), threads=torch.get_num_threads(),
                        model_args=opts.model_args if row["model"] in MODEL_NAMES else {})
            m = measure_memory(spec)
            row["peak_mem_mb"] = m["peak_mb"]
            row["mem_method"] = m["method"]
            if "error" in m:
                row["mem_error"] = m["error"]
    return rows, settled


# --- the DTM op benchmark -----------------------------------------------------------------------

def bench_dtm(opts, device: torch.device, peaks: Dict[str, dict]) -> Tuple[List[dict], Dict[str, dict]]:
    """DeformMerge2x2 (offset conv + deformable merge) fast vs torchvision on LIT-Ti's DTM shapes, at
    ``opts.batch_size[0]`` and ``opts.img_size[0]``, ``opts.warmup`` + ``opts.reps`` repetitions, in
    float32; ``peaks["fp32"]`` is the GEMM peak at start-up. Returns ``(rows, settled)``: the rows
    and the settled peaks (:func:`settle_peaks`); ``opts`` is only read."""
    from tqdm import tqdm
    batch = opts.batch_size[0]
    scale = opts.img_size[0] / 224
    layouts = ("nchw", "tokens")
    total = len(DTM_SHAPES) * 2 * len(layouts) * 2 * (opts.warmup + opts.reps)
    bar = tqdm(total=total, desc="dtm", unit="step", dynamic_ncols=True)
    rows = []
    for cin, cout, side in DTM_SHAPES:
        side = int(round(side * scale))
        torch.manual_seed(0)
        m = DeformMerge2x2(cin, cout).to(device)
        with torch.no_grad():  # offsets of a trained model: up to a few pixels, some off the map
            m.conv_offset.weight.normal_(0, 0.02)
            m.conv_offset.bias.normal_(0, 1.0)
        flops = 2 * batch * (side // 2) ** 2 * (cout + 8) * cin * 4
        for layout in layouts:
            if layout == "nchw":
                x = torch.randn(batch, cin, side, side, device=device)
            else:  # what LIT hands the op: its (B, N, C) tokens seen as a map
                x = torch.randn(batch, side * side, cin, device=device).view(batch, side, side, cin).permute(0, 3, 1, 2)
            for direction in ("forward", "forward+backward"):
                variants = []
                for impl in ("torchvision", "fast"):
                    mi = copy.deepcopy(m)
                    mi.impl = impl
                    if direction == "forward":
                        def step(mi=mi):
                            with torch.no_grad():
                                mi(x)
                    else:
                        xg = x.detach().requires_grad_()

                        def step(mi=mi, xg=xg):
                            mi(xg).sum().backward()
                            mi.zero_grad(set_to_none=True)
                            xg.grad = None
                    variants.append(Variant(impl, step, "ref" if impl == "torchvision" else "fast", "fp32"))
                run_interleaved(variants, opts.warmup, opts.reps, device, bar)
                ref_med = statistics.median(variants[0].times)
                for v in variants:
                    s = summarise(v.times)
                    f = flops * (3 if direction != "forward" else 1)
                    rows.append(dict(op="DeformMerge2x2", in_chans=cin, out_chans=cout, side=side, batch_size=batch,
                                     layout=layout, direction=direction, impl=v.name, path=v.path, dtype="fp32",
                                     latency_ms=s["median_s"] * 1e3, latency_min_ms=s["min_s"] * 1e3,
                                     latency_max_ms=s["max_s"] * 1e3, spread=s["spread"],
                                     vs_reference=ref_med / s["median_s"], gflop_per_s=f / s["median_s"] / 1e9,
                                     reps=len(v.times), times_s=v.times))
    bar.close()
    return rows, settle_peaks(rows, {"fp32": peaks["fp32"]})


# --- output -------------------------------------------------------------------------------------

def _label(r: dict) -> str:
    if "op" in r:
        return f"{r['in_chans']}->{r['out_chans']} @{r['side']}^2 {r['layout']} {r['direction']}"
    return f"{r['model']} b{r['batch_size']} {r['img_size']}px {r['mode']}, {r['variant']}"


def speedup_summary(rows: List[dict]) -> str:
    """The closing line's speed-up: for each dtype, the best ratio of a fast variant to the
    reference path *in the same dtype*, named; or, when a variant was timed fewer than
    :data:`MIN_REPS_FOR_SPEEDUP` times, a line saying that such ratios are noise. ``""`` when no
    row has a reference to compare with.

    Examples::
        >>> speedup_summary([dict(op="DeformMerge2x2", in_chans=64, out_chans=128, side=56, layout="nchw",
        ...     direction="forward", path="fast", dtype="fp32", vs_reference=3.1, reps=1)])
        'speed-ups not summarised: 1 timed repetition per variant is noise (--reps 3 or more)'
    """
    fast = [r for r in rows if not r.get("skipped") and r.get("path") == "fast" and r.get("vs_reference")]
    if not fast:
        return ""
    reps = min(r["reps"] for r in fast)
    if reps < MIN_REPS_FOR_SPEEDUP:
        return (f"speed-ups not summarised: {reps} timed repetition{'s' if reps > 1 else ''} per variant is noise "
                f"(--reps {MIN_REPS_FOR_SPEEDUP} or more)")
    parts = []
    for dt in dict.fromkeys(r["dtype"] for r in fast):
        best = max((r for r in fast if r["dtype"] == dt), key=lambda r: r["vs_reference"])
        parts.append(f"{dt} x{best['vs_reference']:.2f} ({_label(best)})")
    return (f"best speed-up of the fast path over the reference path in the same dtype (medians of {reps}+ "
            f"repetitions): " + "; ".join(parts))


def peaks_summary(peaks: Dict[str, dict]) -> str:
    """One line: the peak of each dtype that ``%peak`` divides by, and what set it."""
    return "peaks (%peak = achieved / the peak of the row's dtype): " + "; ".join(
        f"{d} {p['gflops']:.1f} GFLOP/s ({p['source']})" for d, p in peaks.items())


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_model_table(rows: List[dict]) -> None:
    head = (f"{'model':<30}{'batch':>6}{'size':>6} {'mode':<6}{'variant':<14}{'img/s':>9}{'ms':>9}{'spread':>8}"
            f"{'xref':>7}{'xfp32':>7}{'%peak':>7}{'mem MB':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("skipped"):
            print(f"{r['model']:<30}{r['batch_size']:>6}{r['img_size']:>6} {r['mode']:<6}{r.get('variant', ''):<14}"
                  f"skipped: {r['skipped'][:60]}")
            continue
        print(f"{r['model']:<30}{r['batch_size']:>6}{r['img_size']:>6} {r['mode']:<6}{r['variant']:<14}"
              f"{r['img_per_s']:>9.2f}{r['latency_ms']:>9.1f}{100 * r['spread']:>7.0f}%"
              f"{_fmt(r['vs_reference'], '.2f'):>7}{_fmt(r['vs_fp32_eager'], '.2f'):>7}"
              f"{100 * r['frac_of_peak']:>6.0f}%{_fmt(r.get('peak_mem_mb'), '.0f'):>9}")


def print_dtm_table(rows: List[dict]) -> None:
    head = f"{'shape':<22}{'layout':<8}{'direction':<18}{'impl':<13}{'ms':>9}{'spread':>8}{'xref':>7}{'%peak':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['in_chans']}->{r['out_chans']} @{r['side']}^2"
        print(f"{shape:<22}{r['layout']:<8}{r['direction']:<18}{r['impl']:<13}{r['latency_ms']:>9.2f}"
              f"{100 * r['spread']:>7.0f}%{r['vs_reference']:>7.2f}{100 * r['frac_of_peak']:>6.0f}%")


def plot(rows: List[dict], path: str, title: str) -> None:
    """Throughput and peak memory against resolution: colour = model, line style = variant; one
    mode (inference when measured) and the first batch size, so lines compare like with like."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if not r.get("skipped") and "img_per_s" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    if ok:
        mode = "infer" if any(r["mode"] == "infer" for r in ok) else ok[0]["mode"]
        batch = ok[0]["batch_size"]
        ok = [r for r in ok if r["mode"] == mode and r["batch_size"] == batch]
        title = f"{title} — {mode}, batch {batch}"
    models = list(dict.fromkeys(r["model"] for r in ok))
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    colors = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    for mi, model in enumerate(models):
        for vi, variant in enumerate(variants):
            rs = sorted((r for r in ok if r["model"] == model and r["variant"] == variant), key=lambda r: r["img_size"])
            if not rs:
                continue
            style = dict(color=colors(mi % 10), linestyle=styles[vi % len(styles)], marker="o", label=f"{model} {variant}")
            ax1.plot([r["img_size"] for r in rs], [r["img_per_s"] for r in rs], **style)
            mem = [(r["img_size"], r["peak_mem_mb"]) for r in rs if r.get("peak_mem_mb") is not None]
            if mem:
                ax2.plot([m[0] for m in mem], [m[1] for m in mem], **style)
    for ax, ylabel in ((ax1, "throughput (img/s)"), (ax2, "peak memory of a step (MB)")):
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize=7)
    if ax2.lines:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "memory not measured (--memory)", ha="center", va="center", transform=ax2.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), fsync=False)
    plt.close(fig)


def plot_dtm(rows: List[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, speedups = [], []
    for r in rows:
        if r["impl"] == "fast":
            labels.append(f"{r['in_chans']}->{r['out_chans']}@{r['side']}\n{r['layout']}\n{r['direction'].replace('forward+backward', 'fwd+bwd')}")
            speedups.append(r["vs_reference"])
    ax.bar(range(len(speedups)), speedups, color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=6)
    ax.set_ylabel("speed-up of the fast DTM over torchvision")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"), fsync=False)
    plt.close(fig)


# the command-line functions that lived here, now in litvit.cli.bench: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.bench", ('add_parsers', 'cmd_bench'))
