"""``litvit export``: the command over :mod:`litvit.tools.export` (its docstring is the command's
``--help``)."""
import argparse
import os
import time

import torch

from ..errors import CLIError
from ..models import MODEL_NAMES
from ..tools import export as E
from ..tools.export import DEFAULT_OPSET, MIN_OPSET, check_onnx, export_onnx, export_safetensors, safetensors_record
from ..tools.viz import load_model
from .args import check_json_object, check_model_kwargs, float_arg, int_arg, nonneg_int

__all__ = ["add_parsers", "cmd_export"]


FORMATS = ("onnx", "safetensors")


def _format(args: argparse.Namespace) -> str:
    """--format, else the suffix of --out (.safetensors), else onnx."""
    if args.format:
        return args.format
    return "safetensors" if args.out and args.out.lower().endswith(".safetensors") else "onnx"


def cmd_export(args: argparse.Namespace) -> int:
    overrides = check_json_object(args.model_args, "--model-args")
    check_model_kwargs(overrides, "--model-args", args.model or "lit_ti")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # the model a litvit checkpoint records (or --model for an official release / random weights)
    model, info = load_model(args.model or (None if args.checkpoint else "lit_ti"), args.checkpoint, **overrides)
    if _format(args) == "safetensors":
        return _export_safetensors(model, info, args)
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


def _export_safetensors(model: torch.nn.Module, info: dict, args: argparse.Namespace) -> int:
    from .. import __version__
    name = info["model"]
    out = args.out or f"{name}.safetensors"
    record = E.safetensors_record(model, info)
    print(f"exporting {name} ({sum(p.numel() for p in model.parameters()):,} parameters"
          f"{', ' + args.checkpoint if args.checkpoint else ', random weights'}) to {out}: safetensors, "
          f"{record['model_kwargs']['num_classes']} classes, {record['img_size']} px")
    export_safetensors(model, out, record, version=__version__)
    print(f"wrote {out} ({os.path.getsize(out) / 2 ** 20:.1f} MB)")
    if not args.no_check:  # rebuilt from the file alone, as validate / predict will
        rebuilt, _ = load_model(None, out)
        h, w = model.img_size
        x = torch.randn(2, model.in_chans, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (rebuilt(x) - model(x)).abs().max().item()
        if diff:
            raise CLIError(f"{out}: the model rebuilt from it differs from {name} by {diff:.2e}")
        print(f"rebuilt from {out} alone ({rebuilt.pretrained_cfg.get('architecture', name)}): the same logits")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from torch.onnx._constants import ONNX_MAX_OPSET
    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch and size), checked with onnxruntime, "
                                      "or to safetensors",
                       description=E.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, choices=MODEL_NAMES, metavar="MODEL",
                   help="model name (default: the one a litvit --checkpoint records or an official one's weights "
                        "fit, else lit_ti)")
    p.add_argument("--checkpoint", default=None,
                   help="litvit checkpoint or safetensors export (records its model) or official release (any form)")
    p.add_argument("--model-args", default="", help="JSON constructor overrides, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="onnx or safetensors (default: safetensors for an --out ending in .safetensors, else onnx)")
    p.add_argument("--out", default=None, help="output file (default: MODEL.onnx or MODEL.safetensors)")
    p.add_argument("--opset", type=int_arg(MIN_OPSET, ONNX_MAX_OPSET), default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}..{ONNX_MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--img-size", type=int_arg(64, 8192, multiple=32, extra=(0,)), default=0,
                   help="ONNX example input side, a multiple of 32 of at least 64 (default: the model's, at least 64)")
    p.add_argument("--atol", type=float_arg(0, lo_open=True), default=1e-4, help="tolerance of the onnxruntime check")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check (onnxruntime against PyTorch; safetensors: the model rebuilt from the file)")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: leave as is)")
    p.set_defaults(func=cmd_export)
