"""The ``litvit`` command line: thin argument parsing over library functions.

Every group of sub-commands is a module of this package that provides ``add_parsers(subparsers)``
(registering its arguments and ``set_defaults(func=...)``) over library functions of the floors
below (:mod:`litvit.tasks`, :mod:`litvit.tools`, :mod:`litvit.engine`); this module collects them
and turns expected failures (bad input, missing files, wrong checkpoints) into one line on stderr
and exit code 2. No module below this package parses arguments.

    litvit demo                     # train a small LIT on the embedded digits (scikit-learn's scans)
    litvit models                   # list the registered models with their parameter counts
    litvit <command> --help         # the arguments of each command

The argument types every command group shares (checked numbers, devices, JSON model arguments)
are in :mod:`litvit.cli.args`.
"""
import argparse
import contextlib
import importlib
import sys
from typing import Iterator, List, Optional

from ..errors import CLIError
from ..utils import preserved_global_state
from .args import (OneLineParser, check_json_object, check_model_kwargs, device_arg, float_arg,  # noqa: F401
                   img_size_arg, int_arg, nonneg_int, positive_int, prob_arg, seed_arg, threads_arg, warn_grid_change)

# Modules providing ``add_parsers(subparsers)``, one per group of sub-commands.
COMMANDS = [
    "litvit.cli.info",                 # models
    "litvit.cli.classification",       # train, validate, predict, demo
    "litvit.cli.shards",               # shards
    "litvit.cli.bench",                # bench
    "litvit.cli.export",               # export
    "litvit.cli.flops",                # flops
    "litvit.cli.viz",                  # viz offsets | attention
    "litvit.cli.detection",            # detect train | eval | predict | params
    "litvit.cli.segmentation",         # segment train | eval | predict | params
]


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
    parser = OneLineParser(
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


@contextlib.contextmanager
def _console_cannot_fail() -> Iterator[None]:
    """stdout and stderr write what their encoding cannot hold as escapes (``caf\\xe9``) instead of
    raising: a class name or path in another script must not stop a command on an ASCII console
    (``PYTHONIOENCODING=ascii``, ``LANG=C``). Files are written in UTF-8 whatever the console's
    encoding. The streams' error handlers are restored afterwards."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
                changed.append((stream, errors))
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)


def main(argv: Optional[List[str]] = None) -> int:
    with _console_cannot_fail():
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, one line already printed)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with preserved_global_state():  # an in-process run leaves RNGs and threads as it found them
            result = args.func(args)
    except KeyboardInterrupt:
        print("litvit: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, FloatingPointError) as e:  # OSError covers missing files, full disks
        print(f"litvit {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
