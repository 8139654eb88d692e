"""The ``litvit`` command line: thin argument parsing over library functions.

Every sub-command lives in a module that provides ``add_parsers(subparsers)`` (registering its
arguments and ``set_defaults(func=...)``); this file only collects them and turns expected
failures (bad input, missing files, wrong checkpoints) into one line on stderr and exit code 2.

    litvit demo                     # train a small LIT on the embedded digits (scikit-learn's scans)
    litvit models                   # list the registered models with their parameter counts
    litvit <command> --help         # the arguments of each command
"""
import argparse
import importlib
import sys
from typing import List, Optional

# Modules providing ``add_parsers(subparsers)``, one per group of sub-commands.
COMMANDS = [
    "litvit.tools.info",               # models, demo
    "litvit.tasks.classification",     # train, validate, predict
    "litvit.tools.bench",              # bench
    "litvit.tools.export",             # export
    "litvit.tools.flops",              # flops
    "litvit.tools.viz",                # viz offsets | attention
    "litvit.tasks.detection",          # detect train | eval | predict
    "litvit.tasks.segmentation",       # segment train | eval | predict
]


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def one_line(e: BaseException) -> str:
    """The message of an expected failure as one line.

    A data-loader worker re-raises a dataset's error with the worker's traceback folded into the
    message ("Caught OSError in DataLoader worker process 0. Original Traceback ... OSError: msg");
    only the original message is kept.
    """
    msg = str(e) or type(e).__name__
    if msg.startswith("Caught ") and "DataLoader worker" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        msg = last.partition(": ")[2] or last
    if isinstance(e, (FileNotFoundError, NotADirectoryError)) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return " ".join(msg.split("\n")).strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litvit", description="LIT vision transformers: models, training, tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # a command group not written yet
                continue
            raise
        mod.add_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("litvit: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as e:
        print(f"litvit {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
