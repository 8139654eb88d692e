"""``litvit bench``: the command over :mod:`litvit.tools.bench` (its docstring, the method, is the
command's ``--help``)."""
import argparse
import json
import os
from pathlib import Path

import torch

from ..errors import CLIError
from ..models import MODEL_NAMES
from ..tools import bench as B
from ..tools.bench import (DEFAULTS, DTYPES, PEERS, bench_dtm, bench_models, machine_info, matmul_peak, peaks_summary,
                           plot, plot_dtm, print_dtm_table, print_model_table, speedup_summary)
from ..tools.named_models import is_known_model
from ..utils import atomic_write
from .args import check_json_object, check_model_kwargs, device_arg, img_size_arg, nonneg_int, positive_int

__all__ = ["add_parsers", "cmd_bench"]


def _write_json(obj, path: str) -> None:
    def write(p):
        with open(p, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write, fsync=False)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.data_read:
        from ..tools.data_bench import bench_data_read, print_data_read
        print_data_read(bench_data_read(args.data_folder, n=args.data_read, img_size=args.img_size[0],
                                        reps=min(args.reps, 3)))
        return 0
    if args.data_folder:
        raise CLIError("--data-folder goes with --data-read")
    if args.decode:
        from ..tools.decode_bench import bench_decode, print_decode
        print_decode(bench_decode(args.decode, reps=args.reps, warmup=max(1, args.warmup)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dense_releases is not None:
        return _cmd_dense(args)
    if args.official or args.dense_tiny:
        raise CLIError("--official and --dense-tiny go with --dense-releases")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here")
    for d in args.dtype:
        if d not in DTYPES:
            raise CLIError(f"--dtype {d!r}: choose from {', '.join(DTYPES)}")
        if d == "fp16" and device.type == "cpu":
            raise CLIError("--dtype fp16 is for CUDA; use bf16 on CPU")
    if args.reps < 1 or args.warmup < 0:
        raise CLIError(f"--reps must be >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")
    for s in args.img_size:
        if s % 32:
            raise CLIError(f"--img-size {s} is not a multiple of 32")
    if isinstance(args.model_args, str):
        args.model_args = check_json_object(args.model_args, "--model-args")
        lit = [n for n in args.models if n in MODEL_NAMES] or ["lit_ti"]
        check_model_kwargs(args.model_args, "--model-args", lit[0])
    if not args.dtm_only:
        for n in args.models:
            if not is_known_model(n):
                raise CLIError(f"unknown model {n!r}; litvit models: {', '.join(MODEL_NAMES)} (or a timm model name)")
    plot_path = args.plot or str(Path(args.out).with_suffix(".png"))  # beside the JSON unless named
    if plot_path == args.out:
        plot_path += ".png"
    print(f"litvit bench: device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"warm-up {args.warmup}, {args.reps} interleaved repetitions per variant")
    dtypes = ["fp32"] if args.dtm_only else list(args.dtype)
    peaks = {d: matmul_peak(device, d) for d in dtypes}
    print("best GEMM at start: " + "; ".join(f"{d} {p['gflops']:.1f} GFLOP/s ({p['op']})" for d, p in peaks.items()))
    result = dict(machine=machine_info(device), args={k: v for k, v in vars(args).items() if k != "func"})
    if args.dtm_only:
        print(f"DTM op (DeformMerge2x2: offset conv + deformable 2x2 merge), batch {args.batch_size[0]}, "
              f"fast vs torchvision reference")
        rows, settled = bench_dtm(args, device, peaks)
        result["dtm"] = rows
        print_dtm_table(rows)
        plot_dtm(rows, plot_path, f"DTM fast vs torchvision, {device}, {torch.get_num_threads()} threads")
    else:
        print(f"models {', '.join(args.models)}{' + timm peers' if args.peers else ''}; batch {args.batch_size}, "
              f"sizes {args.img_size}, dtypes {args.dtype}, modes {args.mode}, compile {args.compile}, "
              f"memory {'yes (fresh process each)' if args.memory else 'no'}")
        rows, settled = bench_models(args, device, peaks)
        result["models"] = rows
        print_model_table(rows)
        plot(rows, plot_path, f"litvit bench, {device}, {torch.get_num_threads()} threads")
    print(peaks_summary(settled))
    result["peaks"] = settled
    result["matmul_peak_gflops"] = settled["fp32"]["gflops"] if "fp32" in settled else None
    _write_json(result, args.out)
    ok = [r for r in rows if not r.get("skipped")]
    print(f"wrote {args.out} and {plot_path}: {len(ok)} measurements")
    headline = speedup_summary(rows)
    if headline:
        print(headline)
    return 0


def _cmd_dense(args: argparse.Namespace) -> int:
    """``--dense-releases``: :mod:`litvit.tools.bench_dense`."""
    from ..tools import bench_dense as D
    names = args.dense_releases or list(D.ARCHITECTURES)
    unknown = [n for n in names if n not in D.ARCHITECTURES]
    if unknown:
        raise CLIError(f"--dense-releases {unknown[0]!r}: choose from {', '.join(D.ARCHITECTURES)}")
    if args.device != "cpu":
        raise CLIError("--dense-releases times the CPU only (the authors' code runs there with torchvision's ops)")
    if args.official and args.dense_tiny:
        raise CLIError("--official times the full-size layouts only (the authors' LIT-Ti has fixed sizes): "
                       "drop --dense-tiny")
    if args.official and not os.path.isdir(args.official):
        raise CLIError(f"--official {args.official}: no such folder")
    size = D.TINY["image"] if args.dense_tiny else D.FULL["image"]
    plot_path = args.plot or str(Path(args.out).with_suffix(".png"))
    if plot_path == args.out:
        plot_path += ".png"
    print(f"litvit bench --dense-releases: {', '.join(names)}{' (tiny layouts)' if args.dense_tiny else ''}; "
          f"one {size[0]}x{size[1]} image, cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"warm-up {args.warmup}, median of {args.reps}"
          + (f"; the authors' code from {args.official}, interleaved" if args.official else ""))
    try:
        rows = D.bench_dense(names, tiny=args.dense_tiny, warmup=args.warmup, reps=args.reps,
                             official=args.official, threads=torch.get_num_threads())
    except D.OfficialEnvError as e:
        raise CLIError(str(e)) from None
    D.print_dense_table(rows)
    result = dict(machine=machine_info(torch.device("cpu")),
                  args={k: v for k, v in vars(args).items() if k != "func"}, dense=rows)
    _write_json(result, args.out)
    D.plot_dense(rows, plot_path, f"seconds per {size[0]}x{size[1]} image, cpu, {torch.get_num_threads()} threads, "
                                  f"torch {torch.__version__}")
    print(f"wrote {args.out} and {plot_path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput, latency and peak memory vs the reference path and timm peers",
                       description=B.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULTS["models"],
                   help="litvit model names (or any timm model name)")
    p.add_argument("--model-args", default="", help="JSON overrides for the litvit models, e.g. a tiny config")
    p.add_argument("--peers", action="store_true", help=f"add the timm peers {', '.join(PEERS)} (random init)")
    p.add_argument("--batch-size", nargs="+", type=positive_int, default=DEFAULTS["batch_size"],
                   help="batch sizes to time")
    p.add_argument("--img-size", nargs="+", type=img_size_arg, default=DEFAULTS["img_size"],
                   help="square input sides to time, multiples of 32")
    p.add_argument("--dtype", nargs="+", default=DEFAULTS["dtype"], choices=DTYPES,
                   help="fp32, bf16 (autocast), fp16 (CUDA)")
    p.add_argument("--mode", nargs="+", default=DEFAULTS["mode"], choices=("infer", "train"),
                   help="time inference and/or a training step")
    p.add_argument("--paths", nargs="+", default=["ref", "fast"], choices=("ref", "fast"),
                   help="LIT paths to time: the reference path and/or the fast path")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model, fullgraph=True)")
    p.add_argument("--no-freeze", action="store_true",
                   help="with --compile on CPU: do not freeze weights (inductor's oneDNN pre-packing and fusion)")
    p.add_argument("--memory", action="store_true", help="peak memory per (model, size), each in a fresh process")
    p.add_argument("--dtm-only", action="store_true", help="time the DTM op alone on LIT-Ti's three shapes")
    p.add_argument("--decode", nargs="?", type=positive_int, const=64, default=0, metavar="N",
                   help="time JPEG decoding instead: read_image vs the old PIL reader and torchvision, N synthetic "
                        "500x375 photos, one thread (litvit.tools.decode_bench)")
    p.add_argument("--data-read", nargs="?", type=positive_int, const=512, default=0, metavar="N",
                   help="time one loader worker reading, decoding and augmenting N images (at the first --img-size) "
                        "from an image folder and from the same images as tar shards; N synthetic 500x375 "
                        "photos unless --data-folder (litvit.tools.data_bench)")
    p.add_argument("--data-folder", default=None, metavar="FOLDER",
                   help="with --data-read: the image folder (its train split) instead of synthetic photos")
    p.add_argument("--dense-releases", nargs="*", default=None, metavar="NAME",
                   help="time litvit's model of the authors' dense releases (random weights, full-size layouts "
                        "built in memory) on a 1333x800 image and print parameter counts; NAMEs among "
                        "retinanet_lit_ti ... sem_fpn_lit_s, none: all six (litvit.tools.bench_dense)")
    p.add_argument("--official", metavar="WORK", default=None,
                   help="with --dense-releases: also time the authors' code from WORK (WORK/LIT: their "
                        "repository; WORK/site: mmcv 1.7.2 without compiled ops) on the same releases, interleaved")
    p.add_argument("--dense-tiny", action="store_true",
                   help="with --dense-releases: tiny widths, depths and image (a quick check)")
    p.add_argument("--device", type=device_arg(auto=False), default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="torch threads (0: leave as is; on a CPU shared with other jobs, the free cores)")
    p.add_argument("--warmup", type=nonneg_int, default=DEFAULTS["warmup"], help="untimed repetitions first")
    p.add_argument("--reps", type=positive_int, default=DEFAULTS["reps"],
                   help=f"timed repetitions per variant (speed-ups are summarised from {B.MIN_REPS_FOR_SPEEDUP} on)")
    p.add_argument("--out", default=DEFAULTS["out"], help="JSON results")
    p.add_argument("--plot", default=DEFAULTS["plot"],
                   help="PNG plot (default: beside --out, runs/b.json -> runs/b.png)")
    p.set_defaults(func=cmd_bench)
