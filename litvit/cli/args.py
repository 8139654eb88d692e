"""Argument types and checks shared by every command group: each numeric and enumerated flag is
checked while parsing, and a bad value is one line naming the flag. Also the ``--print-config``
printer and the ``--device`` test every ``train`` command uses."""
import argparse
import importlib.util
import inspect
import json
import math
from typing import Callable, Optional, Sequence

import torch

from ..errors import CLIError
from ..utils import warn_grid_change  # noqa: F401  (re-exported: its old place)
from ..engine.config import LOG_TARGETS
from ..engine.plan import RunPlan
from ..models import LIT, MODEL_NAMES, create_model

__all__ = ["OneLineParser", "int_arg", "float_arg", "device_arg", "threads_arg", "img_size_arg", "positive_int",
           "nonneg_int", "prob_arg", "seed_arg", "check_json_object", "check_model_kwargs", "warn_grid_change",
           "print_config", "uses_cuda", "log_arg", "add_log_arg", "print_plan", "BATCH_SIZE_HELP"]

# what --batch-size means for every train command (detect train and segment train too)
BATCH_SIZE_HELP = ("the global batch: images per optimizer step over all processes, split into "
                   "processes x --accum-steps micro-batches")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``litvit train: error: argument
    --accum-steps: ...``) and exit code 2, without the usage block. Sub-parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


# --- argument types: every numeric and enumerated flag is checked while parsing -----------------------

def int_arg(lo: Optional[int] = None, hi: Optional[int] = None, multiple: Optional[int] = None,
            extra: Sequence[int] = ()) -> Callable[[str], int]:
    """An argparse ``type`` for an integer in ``[lo, hi]`` (a multiple of ``multiple``, or one of ``extra``).

    Examples::
        >>> int_arg(1)("3")
        3
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        ok = value is not None and (value in extra or (
            (lo is None or value >= lo) and (hi is None or value <= hi) and (not multiple or value % multiple == 0)))
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}")
        return value

    def describe() -> str:
        what = f"a multiple of {multiple}" if multiple else "an integer"
        if lo is not None and hi is not None:
            what += f" in [{lo}, {hi}]"
        elif lo is not None:
            what += f" >= {lo}"
        elif hi is not None:
            what += f" <= {hi}"
        return what + "".join(f" or {e}" for e in extra)

    parse.__name__ = "int"
    return parse


def float_arg(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
              hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a finite float in the interval ``lo .. hi`` (open ends where asked).

    Examples::
        >>> float_arg(0, 1, hi_open=True)("0.5")
        0.5
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo is None or (value > lo if lo_open else value >= lo)) and \
            (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            if lo is not None and hi is not None:
                what = f"a number in {left}{lo:g}, {hi:g}{right}"
            elif lo is not None:
                what = f"a number {'>' if lo_open else '>='} {lo:g}"
            elif hi is not None:
                what = f"a number {'<' if hi_open else '<='} {hi:g}"
            else:
                what = "a finite number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = "float"
    return parse


def device_arg(auto: bool = True) -> Callable[[str], str]:
    """An argparse ``type`` for a device: ``cpu``, ``cuda``, ``cuda:N`` (and ``auto``)."""
    def parse(text: str) -> str:
        names = ("auto", "cpu", "cuda") if auto else ("cpu", "cuda")
        if text in names or (text.startswith("cuda:") and text[5:].isdigit()):
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is not a device ({', '.join(names)} or cuda:N)")

    parse.__name__ = "device"
    return parse


def threads_arg(text: str):
    """``--threads``: a positive integer, or ``auto`` (see :func:`litvit.engine.auto_threads`)."""
    if text == "auto":
        return text
    return int_arg(1, extra=())(text)


threads_arg.__name__ = "threads"

# positive multiples of 32, the total stride of every LIT model: image sides
img_size_arg = int_arg(32, 8192, multiple=32)
positive_int = int_arg(1)
nonneg_int = int_arg(0)
prob_arg = float_arg(0, 1)
seed_arg = int_arg(0, 2 ** 32 - 1)


def log_arg(text: str) -> str:
    """``--log``: ``tensorboard`` or ``wandb``, refused while parsing when its package is not installed."""
    if text not in LOG_TARGETS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_TARGETS)}")
    if importlib.util.find_spec(text) is None:
        extra = "litvit[tensorboard]" if text == "tensorboard" else text
        raise argparse.ArgumentTypeError(f"{text} is not installed (pip install '{extra}')")
    return text


log_arg.__name__ = "log"


def add_log_arg(group) -> None:
    """``--log`` of every ``train`` command (repeatable): where ``log.jsonl``'s records also go."""
    group.add_argument("--log", type=log_arg, action="append", default=[], metavar="{tensorboard,wandb}",
                       help="also write every log.jsonl record (loss, lr of each parameter group, metrics, "
                            "images/s, epoch values) to TensorBoard (OUTPUT/tb/) or to an offline Weights & "
                            "Biases run (OUTPUT/wandb/, needs wandb); repeatable")


def check_json_object(text: Optional[str], flag: str) -> dict:
    """A JSON object given on the command line; CLIError naming ``flag`` otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"{flag} must be a JSON object, e.g. '{{\"drop_path_rate\": 0.1}}': {e}") from None
    if not isinstance(value, dict):
        raise CLIError(f"{flag} must be a JSON object, got {text!r}")
    return value


def check_model_kwargs(kwargs: dict, flag: str, model: str = "lit_ti", allowed: Sequence[str] = ()) -> dict:
    """Constructor overrides given on the command line (``--model-args``, ``--backbone-kwargs``),
    checked against :class:`litvit.models.LIT`'s arguments by building the model on the meta device;
    CLIError naming ``flag`` and the unknown key or bad value."""
    known = [n for n in inspect.signature(LIT.__init__).parameters if n != "self"] + list(allowed)
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise CLIError(f"{flag}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    if model not in MODEL_NAMES or not any(k not in allowed for k in kwargs):
        return kwargs  # nothing to check: the model's own arguments build
    try:
        with torch.device("meta"):
            create_model(model, **{k: v for k, v in kwargs.items() if k not in allowed})
    except (TypeError, ValueError, AssertionError, IndexError, RuntimeError) as e:
        raise CLIError(f"{flag}: {' '.join(str(e).split()) or type(e).__name__}") from None
    return kwargs


def uses_cuda(device: str) -> bool:
    """Whether ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) resolves to a GPU here."""
    return torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")


def print_plan(tc, task, model) -> RunPlan:
    """The run plan ``--print-config`` shows: :meth:`RunPlan.resolve` as :func:`litvit.engine.fit`
    calls it, for this world (``$WORLD_SIZE`` under torchrun) and ``--device``, with the model's
    parameter groups (built on the meta device) and without the data (the step counts are null)."""
    import os
    device_type = "cuda" if uses_cuda(tc.device) else "cpu"
    return RunPlan.resolve(tc, int(os.environ.get("WORLD_SIZE", 1)), device_type,
                           groups=task.param_groups(model, tc), schedule_steps=task.schedule_steps)


def print_config(config: dict) -> int:
    """``--print-config``: the resolved configuration as JSON on stdout; exit code 0."""
    print(json.dumps(config, indent=2))
    return 0
