"""Parameters and FLOPs of LIT, its ablation models and timm baselines (``litvit flops``).

FLOPs follow the paper's convention (docs/architecture.md, "FLOPs convention"): multiply-accumulates (MACs) of
every convolution and linear layer plus the two attention matrix products (q @ k^T and attn @ v),
DTM counted as a dense 2x2 stride-2 convolution, its bilinear sampling not counted, norms,
activations, softmax and additions not counted, one image.

They are counted by tracing the model's real forward under
:class:`torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per MAC; we divide by 2),
never by formulas kept beside the model. The trace runs on fake tensors
(:class:`torch._subclasses.fake_tensor.FakeTensorMode`): shapes flow through every op but no memory
is allocated and nothing is computed, so a LIT-B at 1024x1024 costs a fraction of a second.

What is counted, op by op:

* ``aten.convolution`` / ``aten.mm`` / ``aten.addmm`` / ``aten.bmm``: torch's own rules (bias adds
  are not counted).
* DTM, fast path (``grid_sample`` + one matmul): the matmul of the (C', 4C) weight with the
  (4C, H/2 * W/2) sampled columns is exactly the MACs of a dense 2x2 stride-2 conv; ``grid_sample``
  has no rule and counts zero. DTM, reference path: a rule added here for
  ``torchvision::deform_conv2d`` counts it as the dense conv of the same shape. Both give the same
  number (tested).
* The DTM offset predictor is a Conv2d(C, 8, 2, stride 2), so by the convention it counts
  (0.003 G in LIT-Ti, 0.002 G in LIT-S); LIT-Ti gives 3.61 G with it and 3.61 G without, both
  round to the paper's 3.6 G.
* Attention: the plain path's two batched matmuls are counted by torch. The fused path's CPU
  kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) has no rule in torch; one is added
  here (the same two products), so both paths, and timm models that use SDPA, count the same.
  LIT models are traced on the plain path by default (``--fused`` traces the fused one).

Examples::

    litvit flops                                   # LIT-Ti/S/M/B at 224
    litvit flops lit_ti pvt_s_msa --img-size 448 --format markdown
    litvit flops --paper                           # Tables 2-4 rows beside the published values
    litvit flops lit_ti pvt_s_msa lit_s --resolutions 224 384 512 768 1024 --out runs/flops
"""
import csv
import io
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..utils import atomic_write, count_parameters, moved_names
from ..models import LIT, MODEL_NAMES, LITv2, create_model
from .named_models import create_named_model, is_known_model

__all__ = [
    "CATEGORIES", "FlopReport", "count_flops", "profile_model", "build_for_counting", "PAPER_TABLES", "PAPER_SIZES",
    "paper_rows", "report_rows", "format_table", "plot_sweep",
]

aten = torch.ops.aten

# Where each counted MAC goes. Order is the order of columns and of the stacked plot.
CATEGORIES = OrderedDict([
    ("stem", "patch embedding"),
    ("merge", "token merging (DTM / conv / patch merging)"),
    ("attn_proj", "attention projections (qkv, proj, SRA conv)"),
    ("attn_mm", "attention matrix products (q k^T, attn v)"),
    ("mlp", "MLP"),
    ("head", "classifier"),
    ("other", "other"),
])

_STAGE_RE = re.compile(r"(?:^|\.)(?:stages|layers)\.(\d+)(?:\.|$)")


# --- flop rules ------------------------------------------------------------------------------------

def _deform_conv2d_flop(input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args,
                        out_shape=None, **kwargs) -> int:
    """``torchvision::deform_conv2d`` as the dense conv of the same shape: 2 * MACs (torch's unit)."""
    c_out, c_in_per_group, kh, kw = weight_shape
    return 2 * math.prod(out_shape) * c_in_per_group * kh * kw


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU SDPA kernel: q @ k^T and attn @ v, 2 * MACs (torch's unit)."""
    b, h, n, d = query_shape
    m = key_shape[-2]
    dv = value_shape[-1]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def _custom_rules() -> Dict:
    rules = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    rules[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flop
    return rules


# --- counting --------------------------------------------------------------------------------------

@dataclass
class FlopReport:
    """Parameters and MACs of one model at one input size.

    Attributes:
        model (str): model name.
        img_size (int): square input side.
        params (int): parameter count.
        macs (int): total multiply-accumulates, the paper's "FLOPs".
        by_category (Dict[str, int]): MACs per :data:`CATEGORIES` key.
        by_stage (Dict[str, Dict[str, int]]): ``"stage1"`` .. ``"stage4"`` (and ``"rest"``) -> category -> MACs.
        by_op (Dict[str, int]): MACs per aten op (what the trace saw).
    """
    model: str
    img_size: int
    params: int
    macs: int
    by_category: Dict[str, int] = field(default_factory=dict)
    by_stage: Dict[str, Dict[str, int]] = field(default_factory=dict)
    by_op: Dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.macs / 1e9


def _category(path: str) -> str:
    """Category of the MACs a module does itself (not through its children)."""
    parts = path.split(".")
    if "attn" in parts:
        return "attn_mm" if parts[-1] == "attn" else "attn_proj"
    if "mlp" in parts:
        return "mlp"
    if "downsample" in parts:
        return "merge"
    if parts and parts[0] == "patch_embed":
        return "stem"
    if parts and parts[0] == "head":
        return "head"
    return "other"


def _self_counts(per_module: Dict[str, Dict]) -> Dict[str, int]:
    """MACs each module does itself: its total minus its direct children's totals.

    ``per_module`` keys are FlopCounterMode's module paths, which start with the root class name.
    """
    totals = {k: sum(v.values()) for k, v in per_module.items() if k != "Global"}
    # containers that run no op of their own (nn.Sequential, nn.ModuleList) are not in the
    # counter's keys: a module's parent here is its nearest ancestor that is
    children_total = dict.fromkeys(totals, 0)
    for name, total in totals.items():
        parent = name
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent in totals:
                children_total[parent] += total
                break
    out = {}
    for name, total in totals.items():
        own = total - children_total[name]
        if own:
            rel = name.split(".", 1)[1] if "." in name else ""
            out[rel] = out.get(rel, 0) + own
    return out


def count_flops(model: nn.Module, x: torch.Tensor, name: str = "", params: Optional[int] = None) -> FlopReport:
    """Trace ``model(x)`` and count MACs by the paper's convention.

    Args:
        model (nn.Module): any model; LIT models are counted on whichever attention path and DTM
            implementation they are set to.
        x (Tensor[1, 3, H, W]): input (real or fake tensor); counts are for the whole batch.
        name (str): label of the report.
        params (int, optional): parameter count to report (default: counted from ``model``).

    Returns:
        FlopReport.

    Examples::
        >>> import litvit
        >>> m = litvit.create_model('lit_ti', img_size=64, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))
        >>> count_flops(m.eval(), torch.randn(1, 3, 64, 64)).macs > 0
        True
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False, custom_mapping=_custom_rules())
    with counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()
    own = _self_counts(counts)
    by_category = {k: 0 for k in CATEGORIES}
    by_stage: Dict[str, Dict[str, int]] = {}
    for path, flops in own.items():
        macs = flops // 2
        cat = _category(path)
        by_category[cat] += macs
        m = _STAGE_RE.search(path)
        stage = f"stage{int(m[1]) + 1}" if m else "rest"
        by_stage.setdefault(stage, {k: 0 for k in CATEGORIES})[cat] += macs
    by_op = {str(op): v // 2 for op, v in counts.get("Global", {}).items()}
    total = counter.get_total_flops() // 2
    if params is None:
        params = count_parameters(model)
    return FlopReport(name or type(model).__name__, int(x.shape[-1]), params, total, by_category,
                      dict(sorted(by_stage.items())), by_op)


def build_for_counting(name: str, img_size: Optional[int] = None, **kwargs) -> nn.Module:
    """Build a model by name without spending time or memory on its weights.

    litvit names go through :func:`litvit.create_model`, anything else through
    ``timm.create_model`` (e.g. ``swin_tiny_patch4_window7_224``, ``resnet18``), by
    :func:`~litvit.tools.named_models.create_named_model`: ``img_size`` goes to the families whose
    constructor takes one (ViT, Swin, LIT) and not to the others (ResNet, ConvNeXt, EfficientNet,
    which take any input size). The model is built on the meta device (falling back to the CPU for
    models whose constructor reads tensor values).
    """
    if not is_known_model(name):
        raise ValueError(f"unknown model {name!r}: neither a litvit model ({', '.join(MODEL_NAMES)}) "
                         f"nor a timm model")
    try:
        with torch.device("meta"):
            return create_named_model(name, img_size=img_size, **kwargs).eval()
    except (RuntimeError, NotImplementedError):
        return create_named_model(name, img_size=img_size, **kwargs).eval()


def profile_model(
        name: str,
        img_size: int = 224,
        fused_attn: bool = False,
        dtm_impl: str = "fast",
        model_kwargs: Optional[dict] = None,
) -> FlopReport:
    """Parameters and MACs of a named model for one square image, by a trace on fake tensors.

    Args:
        name (str): a litvit model or a timm model name.
        img_size (int): input side (LIT: a multiple of 32; position tables are resized to it).
        fused_attn (bool): trace LIT's fused attention path instead of the plain one.
        dtm_impl (str): ``"fast"`` or ``"torchvision"`` DTM for LIT models.
        model_kwargs (dict, optional): constructor overrides.

    Returns:
        FlopReport.

    Examples::
        >>> round(profile_model('lit_ti').gflops, 1)
        3.6
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    kwargs = dict(model_kwargs or {})
    # timm models with a fixed grid (ViT, Swin) are built for the size they will see; LIT resizes its tables
    built_for = kwargs.pop("img_size", None if name in MODEL_NAMES else img_size)
    model = build_for_counting(name, img_size=built_for, **kwargs)
    params = count_parameters(model)
    if isinstance(model, (LIT, LITv2)):
        model.set_fused_attn(fused_attn)
        model.set_dtm_impl(dtm_impl)
        if img_size % model.reduction:
            raise ValueError(f"--img-size {img_size} is not a multiple of {model.reduction} (required by {name})")
    with FakeTensorMode(allow_non_fake_inputs=True):
        if any(p.is_meta for p in model.parameters()):
            model = model.to_empty(device="cpu")
        x = torch.empty(1, 3, img_size, img_size)
        try:
            return count_flops(model, x, name=name, params=params)
        except (AssertionError, RuntimeError) as e:  # e.g. a timm model that cannot take this size
            raise ValueError(f"{name} cannot run on a {img_size}x{img_size} input: {e}") from None


# --- the paper's tables -----------------------------------------------------------------------------

# Published values as the paper states them: params in millions, GFLOPs, ImageNet-1K top-1.
# ``None`` where the paper's tables give no number we hold.
PAPER_TABLES = OrderedDict([
    ("Less attention (PVT-S based)", [
        ("pvt_s", "PVT-S", 24.5, 3.8, None),
        ("pvt_s_msa", "PVT-S w/ MSA", 20.2, 8.4, 80.9),
        ("pvt_s_msa_no_attn1", "  w/o MSA in stage 1", None, None, 80.8),
        ("pvt_s_msa_no_attn12", "  w/o MSA in stages 1-2", None, None, 80.4),
    ]),
    ("Deformable token merging", [
        ("lit_ti_no_dtm", "LIT-Ti w/o DTM (PVT-S based)", None, None, 80.4),
        ("lit_ti", "LIT-Ti", 19.9, 3.6, 81.1),
        ("swin_tiny_patch4_window7_224", "Swin-Ti", None, 4.5, None),
        ("lit_s_no_dtm", "LIT-S w/o DTM (Swin-Ti based)", None, None, 81.2),
        ("lit_s", "LIT-S", 28.0, 4.1, 81.5),
    ]),
    ("LIT family", [
        ("lit_ti", "LIT-Ti", 19.9, 3.6, 81.1),
        ("lit_s", "LIT-S", 28.0, 4.1, 81.5),
        ("lit_m", "LIT-M", 49.4, 8.6, 83.0),
        ("lit_b", "LIT-B", 87.3, 15.0, 83.4),
    ]),
    # LITv2 (Pan, Cai, Zhuang, NeurIPS 2022): the README of the authors' release
    ("LITv2 family", [
        ("litv2_s", "LITv2-S", 28.0, 3.7, 82.0),
        ("litv2_m", "LITv2-M", 49.0, 7.5, 83.3),
        ("litv2_b", "LITv2-B", 87.0, 13.2, 83.6),
        ("litv2_b_384", "LITv2-B 384", 87.0, 39.7, 84.7),
    ]),
    # LITv2-S with a share alpha of Lo-Fi heads (the v1.1 releases, named by their timm tags)
    ("LITv2 alpha (LITv2-S)", [
        ("litv2_s.alpha_0", "alpha 0.0", None, 3.97, None),
        ("litv2_s.alpha_0.2", "alpha 0.2", None, 3.88, None),
        ("litv2_s.alpha_0.4", "alpha 0.4", None, 3.82, None),
        ("litv2_s.alpha_0.5", "alpha 0.5", None, 3.77, None),
        ("litv2_s.alpha_0.7", "alpha 0.7", None, 3.74, None),
        ("litv2_s.alpha_0.9", "alpha 0.9", None, 3.73, None),
        ("litv2_s.alpha_1", "alpha 1.0", None, 3.70, None),
    ]),
])
# Input side of a row (224 unless named here).
PAPER_SIZES = {"litv2_b_384": 384}
# Tolerance of the FLOPs check, in G: the paper rounds to 0.1 G; PVT-S's 3.8 G is checked to
# within 0.1 G (ours: 3.82); LITv2-B 384 to 0.1 G (ours 39.65: the authors' counter adds norms,
# biases and 12 offset channels, 0.05 G at 384, see PAPER_NOTES).
PAPER_TOLERANCE = {"pvt_s": 0.1, "litv2_b_384": 0.1}
# The alpha table is published to 0.01 G; litvit's convention counts about 0.01 G less than the
# authors' counter, so those rows are checked to 0.02 G (alpha 1.0 then differs: see PAPER_NOTES).
PAPER_TOLERANCE.update({name: 0.02 for name, *_ in PAPER_TABLES["LITv2 alpha (LITv2-S)"]})


def _published(value: float) -> str:
    """A published value with the decimals it was published with (one or two)."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def paper_rows(reports: Dict[str, FlopReport]) -> List[List[str]]:
    """Rows of the ``--paper`` tables: group, model, params ours/paper, GFLOPs ours/paper, top-1, check."""
    rows = []
    for group, entries in PAPER_TABLES.items():
        for name, label, p_params, p_flops, p_top1 in entries:
            r = reports[name]
            ok = ""
            if p_flops is not None:
                tol = PAPER_TOLERANCE.get(name, 0.05)
                ok = "ok" if abs(r.gflops - p_flops) <= tol + 1e-9 else "DIFF"
            rows.append([
                group, label, name,
                f"{r.params / 1e6:.2f}", "-" if p_params is None else f"{p_params:.1f}",
                f"{r.gflops:.2f}", "-" if p_flops is None else _published(p_flops),
                "-" if p_top1 is None else f"{p_top1:.1f}", ok,
            ])
    return rows


PAPER_NOTES = [
    "params M / GFLOPs: ours, traced; paper M / paper G / paper top-1: published (ImageNet-1K, 224).",
    "top-1 of the ablation rows is the paper's stated difference applied to its base: w/o MSA in stage 1 / "
    "stages 1-2 = PVT-S w/ MSA - 0.1 / - 0.5; w/o DTM = LIT-Ti - 0.7, LIT-S - 0.3.",
    "Swin-Ti is timm's swin_tiny_patch4_window7_224 (4.5 G as the paper quotes it). "
    "PVT-S is checked to +-0.1 G, the others to the paper's 0.1 G rounding.",
    "the counting rules and the published values: docs/architecture.md in the litvit repository.",
    "LITv2: litvit counts by the same convention (the depthwise conv of every MLP as a conv, HiLo's "
    "pooling not counted, DTM's offset conv with its 8 channels). The authors' flops() also counts "
    "LayerNorms, biases, DTM's BatchNorm, the pooling before the head, and the offset conv with 12 output "
    "channels where it has 8: about 0.01 G more at 224 (LITv2-S 3.734 G against litvit's 3.724 G). "
    "Their counter gives 3.746 G for alpha 1.0 where the README prints 3.70 G; litvit counts 3.735 G, "
    "so that row differs (the alpha rows are checked to 0.02 G, LITv2-B 384 to 0.1 G).",
]

PAPER_HEADER = ["table", "model", "name", "params M", "paper M", "GFLOPs", "paper G", "paper top-1", "check"]


# --- output -----------------------------------------------------------------------------------------

def report_rows(reports: Sequence[FlopReport]) -> List[List[str]]:
    rows = []
    for r in reports:
        cats = [f"{r.by_category[k] / 1e9:.3f}" for k in CATEGORIES if k != "other"]
        rows.append([r.model, str(r.img_size), f"{r.params:,}", f"{r.gflops:.2f}", *cats,
                     f"{100 * r.by_category['attn_mm'] / max(r.macs, 1):.1f}"])
    return rows


REPORT_HEADER = ["model", "input", "params", "GFLOPs", "stem", "merge", "attn proj", "attn q@k,a@v", "MLP", "head",
                 "attn mm %"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "table") -> str:
    """Render rows as an aligned text table, a Markdown table or CSV."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    if fmt != "table":
        raise ValueError(f"format must be 'table', 'markdown' or 'csv', got {fmt!r}")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    left = {0, 1, 2} if header and header[0] == "table" else {0}
    def line(cells):  # noqa: E306
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot_sweep(reports: Sequence[FlopReport], path: str) -> str:
    """GMACs per category against input size on log-log axes, one panel per model (the attention
    products' slope is 4 — quadratic in tokens —, everything else 2), plus the share of the
    attention products in all FLOPs; written atomically as a PNG. Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(OrderedDict.fromkeys(r.model for r in reports))
    cats = [k for k in CATEGORIES if any(r.by_category[k] for r in reports)]
    colors = dict(zip(CATEGORIES, ["#8c8c8c", "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4", "#9467bd", "#bcbd22"]))
    n = len(models)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 4.2), squeeze=False)
    for ax, name in zip(axes[0], models):
        rs = sorted((r for r in reports if r.model == name), key=lambda r: r.img_size)
        sizes = [r.img_size for r in rs]
        for k in cats:
            vals = [r.by_category[k] / 1e9 for r in rs]
            if any(vals):
                ax.plot(sizes, vals, marker="o", ms=3, color=colors[k], label=CATEGORIES[k])
        ax.plot(sizes, [r.macs / 1e9 for r in rs], color="black", ls="--", lw=1, label="total")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_ylabel("GMACs (log)")
        ax.set_xlabel("input size (px, log)")
        ax.set_title(name)
    ax = axes[0][n]
    for name in models:
        rs = sorted((r for r in reports if r.model == name), key=lambda r: r.img_size)
        ax.plot([r.img_size for r in rs], [100 * r.by_category["attn_mm"] / r.macs for r in rs], marker="o", label=name)
    ax.set_title("attention matrix products, share of all FLOPs")
    ax.set_xlabel("input size (px)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    handles, labels = max((a.get_legend_handles_labels() for a in axes[0][:n]), key=lambda hl: len(hl[0]))
    fig.legend(handles, labels, loc="lower center", ncol=len(cats), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), fsync=False)
    plt.close(fig)
    return path


# the command-line functions that lived here, now in litvit.cli.flops: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.flops", ('add_parsers', 'cmd_flops'))
