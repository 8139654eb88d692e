"""``litvit flops``: the command over :mod:`litvit.tools.flops` (the counting convention is in its
docstring)."""
import argparse
import os
from collections import OrderedDict
from pathlib import Path
from typing import List

from ..tools import flops as F  # called through the module: a patch of litvit.tools.flops is seen here
from ..tools.flops import CATEGORIES, PAPER_HEADER, PAPER_NOTES, PAPER_SIZES, PAPER_TABLES, REPORT_HEADER, FlopReport
from ..utils import atomic_write
from .args import img_size_arg

__all__ = ["add_parsers", "cmd_flops"]


def _profile_all(jobs, args) -> List[FlopReport]:
    from tqdm import tqdm
    reports = []
    bar = tqdm(jobs, desc="tracing", unit="model", disable=len(jobs) < 3, leave=False)
    for name, size in bar:
        bar.set_postfix_str(f"{name} @ {size}")
        reports.append(F.profile_model(name, size, fused_attn=args.fused, dtm_impl=args.dtm_impl))
    return reports


def cmd_flops(args: argparse.Namespace) -> int:
    if args.paper:
        names = list(OrderedDict.fromkeys(n for rows in PAPER_TABLES.values() for n, *_ in rows))
        reports = {r.model: r for r in _profile_all([(n, PAPER_SIZES.get(n, 224)) for n in names], args)}
        rows = F.paper_rows(reports)
        if args.format != "csv":
            print("FLOPs = MACs of convs, linears and the two attention products, one 224x224 image "
                  "(384x384 for LITv2-B 384; traced; DTM as a dense 2x2 conv).")
        print(F.format_table(PAPER_HEADER, rows, args.format))
        if args.format != "csv":
            for note in PAPER_NOTES:
                print(f"note: {note}")
        bad = [r[2] for r in rows if r[-1] == "DIFF"]
        checked = sum(1 for r in rows if r[-1])
        if args.format != "csv":
            print(f"{checked - len(bad)}/{checked} published FLOPs reproduced"
                  + (f"; differs: {', '.join(bad)}" if bad else ""))
        return 0
    names = args.models or ["lit_ti", "lit_s", "lit_m", "lit_b"]
    sizes = args.resolutions or [args.img_size]
    for s in sizes:
        if s <= 0 or s % 32:
            raise ValueError(f"input size {s} is not a positive multiple of 32")
    reports = _profile_all([(n, s) for n in names for s in sizes], args)
    print(F.format_table(REPORT_HEADER, F.report_rows(reports), args.format))
    if args.by_stage:
        rows = []
        for r in reports:
            for stage, cats in r.by_stage.items():
                rows.append([r.model, str(r.img_size), stage, f"{sum(cats.values()) / 1e9:.3f}",
                             *[f"{cats[k] / 1e9:.3f}" for k in CATEGORIES if k != "other"]])
        print()
        print(F.format_table(["model", "input", "stage", "GFLOPs"] + REPORT_HEADER[4:10], rows, args.format))
    if args.resolutions and len(sizes) > 1:
        os.makedirs(args.out, exist_ok=True)
        png = F.plot_sweep(reports, os.path.join(args.out, "flops_sweep.png"))
        csv_path = os.path.join(args.out, "flops_sweep.csv")
        text = F.format_table(REPORT_HEADER, F.report_rows(reports), "csv") + "\n"
        atomic_write(csv_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync=False)
        for name in names:
            rs = sorted((r for r in reports if r.model == name), key=lambda r: r.img_size)
            a0, a1 = rs[0].by_category["attn_mm"], rs[-1].by_category["attn_mm"]
            growth = f"x{a1 / a0:.0f}" if a0 else "n/a (no attention)"
            print(f"{name}: {rs[0].img_size} -> {rs[-1].img_size} px: total x{rs[-1].macs / rs[0].macs:.1f}, "
                  f"attention products {growth}")
        print(f"wrote {png}")
        print(f"wrote {csv_path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops", help="parameters and FLOPs (MACs) of models, by tracing their forward",
        description="Parameters and FLOPs (the paper's convention: MACs of convs, linears and the two attention "
                    "matrix products; DTM as a dense 2x2 conv) counted by tracing the real forward.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="litvit or timm model names (default: lit_ti lit_s lit_m lit_b)")
    p.add_argument("--img-size", type=img_size_arg, default=224, help="square input side, a multiple of 32 (default 224)")
    p.add_argument("--resolutions", type=img_size_arg, nargs="+", metavar="SIZE",
                   help="sweep these input sides and plot FLOPs per stage type (e.g. 224 384 512 768 1024)")
    p.add_argument("--format", choices=("table", "markdown", "csv"), default="table", help="output format (default table)")
    p.add_argument("--paper", action="store_true", help="the paper's Tables 2-4 rows and LITv2's (family, alpha) beside the published values")
    p.add_argument("--by-stage", action="store_true", help="also print the FLOPs of every stage")
    p.add_argument("--fused", action="store_true", help="trace the fused (SDPA) attention path instead of the plain one")
    p.add_argument("--dtm-impl", choices=("fast", "torchvision"), default="fast", help="DTM implementation traced")
    p.add_argument("--out", default=os.path.join("runs", "flops"), help="folder for the sweep plot and CSV")
    p.set_defaults(func=cmd_flops)
