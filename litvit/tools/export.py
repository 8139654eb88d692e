"""``litvit export``: a LIT model to ONNX with dynamic batch and image size, checked with onnxruntime.

The model is exported in eval mode on its fast path (SDPA attention, the grid_sample DTM) through
``torch.onnx.export(dynamo=True)`` at opset >= 17 (grid_sample needs 16). Batch, height and width
are symbolic: height and width as multiples of 32, the model's total stride. Position embeddings
and relative tables are resized inside the graph, so any multiple of 32 runs. After writing, the
file is loaded in onnxruntime and compared with PyTorch at two sizes and batch sizes.

Examples::

    litvit export --model lit_ti --out lit_ti.onnx
    litvit export --model lit_s --checkpoint lit_s.pth --out lit_s.onnx --opset 18
"""
import argparse
import os
import time
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..utils import atomic_path
from ..cli.args import check_json_object, check_model_kwargs, float_arg, int_arg, nonneg_int
from ..errors import CLIError
from .viz import load_model
from ..models import MODEL_NAMES

DEFAULT_OPSET = 18
MIN_OPSET = 17


def export_onnx(
        model: nn.Module,
        path: str,
        img_size: int = 224,
        opset: int = DEFAULT_OPSET,
        stride: int = 32,
        max_side: int = 4096,
) -> str:
    """Export ``model`` to ONNX with dynamic batch, height and width (multiples of ``stride``).

    Args:
        model (nn.Module): a LIT model (put in eval mode, fast path is whatever it is set to).
        path (str): the .onnx file, written atomically (temporary file, then renamed).
        img_size (int): the example input's side.
        opset (int): ONNX opset, >= 17.
        stride (int): the model's total stride; height and width are exported as multiples of it.
        max_side (int): the largest side the graph is valid for.

    Returns:
        str: ``path``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (grid_sample needs 16, LayerNormalization 17), got {opset}")
    if img_size % stride:
        raise ValueError(f"img_size ({img_size}) must be a multiple of the model stride ({stride})")
    from torch.export import Dim
    model = model.eval()
    x = torch.randn(2, 3, img_size, img_size)
    batch = Dim("batch", min=1, max=4096)
    h = stride * Dim("h_blocks", min=1, max=max_side // stride)
    w = stride * Dim("w_blocks", min=1, max=max_side // stride)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch, 2: h, 3: w}}, external_data=False, optimize=True)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return path


def check_onnx(
        model: nn.Module,
        path: str,
        shapes: Sequence[Tuple[int, int, int]] = ((1, 224, 224), (3, 160, 256)),
        atol: float = 1e-4,
        rtol: float = 1e-4,
        threads: int = 0,
) -> List[Dict[str, float]]:
    """Run the ONNX file in onnxruntime and compare with PyTorch on random images.

    Args:
        model (nn.Module): the exported model (eval mode).
        path (str): the .onnx file.
        shapes (Sequence[Tuple[int, int, int]]): (batch, height, width) to check.
        atol (float): absolute tolerance.
        rtol (float): relative tolerance.
        threads (int): onnxruntime intra-op threads (0: its default).

    Returns:
        List[Dict[str, float]]: per shape, the maximal absolute difference.

    Raises:
        ValueError: if an output differs beyond the tolerance.
    """
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = []
    g = torch.Generator().manual_seed(0)
    for b, hh, ww in shapes:
        x = torch.randn(b, 3, hh, ww, generator=g)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"onnxruntime output shape {got.shape} differs from PyTorch's {expected.shape} "
                             f"for input {tuple(x.shape)}")
        diff = float(np.abs(got - expected).max())
        results.append(dict(batch=b, height=hh, width=ww, max_abs_diff=diff))
        if not np.allclose(got, expected, atol=atol, rtol=rtol):
            raise ValueError(f"onnxruntime output differs from PyTorch by {diff:.2e} (> atol {atol}, rtol {rtol}) "
                             f"for input {tuple(x.shape)}")
    return results


def cmd_export(args: argparse.Namespace) -> int:
    overrides = check_json_object(args.model_args, "--model-args")
    check_model_kwargs(overrides, "--model-args", args.model or "lit_ti")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # the model a litvit checkpoint records (or --model for an official release / random weights)
    model, info = load_model(args.model or (None if args.checkpoint else "lit_ti"), args.checkpoint, **overrides)
    name = info["model"]
    stride = getattr(model, "reduction", 32)
    # torch.export specialises a dimension of one block, so the example input spans at least two
    img = args.img_size or max(info["img_size"], 2 * stride)
    if img < 2 * stride or img % stride:
        raise CLIError(f"--img-size {img}: the example input must be a multiple of {stride} of at least {2 * stride} px")
    out = args.out or f"{name}.onnx"
    print(f"exporting {name} ({sum(p.numel() for p in model.parameters()):,} parameters"
          f"{', ' + args.checkpoint if args.checkpoint else ', random weights'}) to {out}: opset {args.opset}, "
          f"example {img}x{img}, dynamic batch and size (multiples of {stride})")
    t0 = time.perf_counter()
    try:
        export_onnx(model, out, img_size=img, opset=args.opset, stride=stride)
    except Exception as e:  # torch.export / ONNX conversion errors run to pages; their first line says what failed
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CLIError(f"ONNX export of {name} at {img}x{img} failed ({type(e).__name__}): "
                       f"{lines[0] if lines else ''}") from None
    size_mb = os.path.getsize(out) / 2 ** 20
    print(f"wrote {out} ({size_mb:.1f} MB) in {time.perf_counter() - t0:.0f} s")
    if not args.no_check:
        shapes = [(1, img, img), (3, img - stride, img + stride)]
        for r in check_onnx(model, out, shapes=shapes, atol=args.atol, rtol=args.atol):
            print(f"onnxruntime vs PyTorch, input ({r['batch']}, 3, {r['height']}, {r['width']}): "
                  f"max |diff| {r['max_abs_diff']:.2e} (tolerance {args.atol:g})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from torch.onnx._constants import ONNX_MAX_OPSET
    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch and size), checked with onnxruntime",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, choices=MODEL_NAMES, metavar="MODEL",
                   help="model name (default: the one a litvit --checkpoint records, else lit_ti)")
    p.add_argument("--checkpoint", default=None, help="litvit checkpoint (records its model) or official release")
    p.add_argument("--model-args", default="", help="JSON constructor overrides, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--out", default=None, help="output .onnx (default: MODEL.onnx)")
    p.add_argument("--opset", type=int_arg(MIN_OPSET, ONNX_MAX_OPSET), default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}..{ONNX_MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--img-size", type=int_arg(64, 8192, multiple=32, extra=(0,)), default=0,
                   help="example input side, a multiple of 32 of at least 64 (default: the model's, at least 64)")
    p.add_argument("--atol", type=float_arg(0, lo_open=True), default=1e-4, help="tolerance of the onnxruntime check")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: leave as is)")
    p.set_defaults(func=cmd_export)
