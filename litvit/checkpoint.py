"""Checkpoint files: the one reader, the one writer, the model record and the key-mismatch report.

* :func:`read_checkpoint` reads a file on the CPU with one trust policy: ``torch.load(weights_only=True)``
  with exactly the extra objects that official releases and training scripts pickle allowed
  (``argparse.Namespace``, numpy scalars and dtypes, yacs configs read as plain dicts); nothing else
  is ever unpickled.
* :func:`write_checkpoint` writes one atomically (temporary file in the same folder, fsync,
  ``os.replace``): the file at the path is always the previous complete checkpoint or the new one.
* :func:`model_record` / :func:`read_model_record`: what model a training checkpoint holds. The
  engine stores ``task`` (the task's name) and ``extra`` (``Task.checkpoint_extra()``: the model
  name or architecture, its constructor arguments, classes, input size, normalisation) next to the
  weights; validate, eval, predict, viz and export rebuild the model from that record.
* :func:`mismatch_message` names the missing, unexpected and mis-shaped keys of a state dict that
  does not fit a model; :func:`load_state_dict_strict` loads one that fits, or raises with it.

Loading weights *into a LIT model* (official layouts, resizing) is :func:`litvit.models.load_weights`.
"""
import collections
import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .errors import CheckpointMismatchError, CheckpointWriteError
from .utils import atomic_path

__all__ = ["read_checkpoint", "read_training_checkpoint", "write_checkpoint", "record_entries", "model_record",
           "read_model_record", "mismatch_message", "load_state_dict_strict"]

PathLike = Union[str, os.PathLike]


# --- reading -----------------------------------------------------------------------------------------

class _ConfigAsDict:
    """Stands in for a pickled config object (the Swin trainer's ``yacs.config.CfgNode``, a dict
    subclass): the unpickler builds a plain OrderedDict of its items; no code of the class runs."""

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


def _checkpoint_globals() -> list:
    """The only non-tensor objects a checkpoint may hold, beyond what ``weights_only=True`` reads:
    ``argparse.Namespace`` (the DeiT/PVT trainers save their arguments), numpy scalars and dtypes
    (metrics saved as numpy numbers), and yacs configs (the Swin trainer), read as plain dicts."""
    import argparse
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", object)) if n.endswith("DType")]
    return [argparse.Namespace, core.multiarray.scalar, np.dtype, *dtypes, (_ConfigAsDict, "yacs.config.CfgNode")]


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's messages run to several lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    return first.split(". ")[0].rstrip(".") if len(first) > 100 else first


def read_checkpoint(path: PathLike) -> Any:
    """Read a checkpoint file on the CPU without running code from it (see the module docstring).

    Returns:
        what the file holds: a state dict, ``{'model': ...}``, a litvit training checkpoint, ...

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file is not a PyTorch checkpoint, is truncated, or pickles
            other objects (the message names them and the file).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch's zip format, or its legacy pickle
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                                      f"(neither torch.save's zip format nor a pickle)")
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = []
        with contextlib.suppress(Exception):
            allowed = {f"{g[1]}" if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                       for g in _checkpoint_globals()}
            foreign = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        if foreign:
            raise CheckpointMismatchError(
                f"{path} pickles objects litvit does not load ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): a checkpoint may hold tensors, plain values, "
                f"argparse.Namespace and yacs configs only") from None
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                                      f"({_first_line(e)})") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def read_training_checkpoint(path: PathLike) -> dict:
    """:func:`read_checkpoint` for a file that must hold a dict (a litvit training checkpoint, or an
    official release wrapped as ``{'model': ...}``)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


# --- writing -----------------------------------------------------------------------------------------

def write_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: the file
    at ``path`` is always either the previous complete checkpoint or the new complete one.

    Raises:
        CheckpointWriteError: the write failed (the message names the reason and says that the
            previous checkpoint is kept, or that there was none).
    """
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)  # through a file object, so the OSError of a failed write is kept
    except (OSError, RuntimeError) as e:
        cause, seen = e, set()
        while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept = f"the previous {path.name} is kept" if existed else f"no {path.name} was written"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {cause.strerror or cause}; {kept}") from None


# --- the model record --------------------------------------------------------------------------------

def record_entries(task: str, extra: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries a training checkpoint stores beside its weights to say what model it holds:
    ``task`` (the task's name) and ``extra`` (its ``checkpoint_extra()``, plain values). The
    engine writes them; :func:`model_record` reads them back."""
    return dict(task=task, extra=dict(extra))


def model_record(ckpt: Any) -> Dict[str, Any]:
    """What a training checkpoint says about its model: its ``extra`` dict (written by the task's
    ``checkpoint_extra()``) plus ``task`` when recorded; ``{}`` for an official release or a bare
    state dict, which record nothing (the model must then be named by the caller)."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("extra"), Mapping):
        return {}
    record = dict(ckpt["extra"])
    if isinstance(ckpt.get("task"), str):
        record.setdefault("task", ckpt["task"])
    return record


def read_model_record(path: PathLike, task: Optional[str] = None) -> Dict[str, Any]:
    """The :func:`model_record` of the file at ``path``; with ``task``, a checkpoint written by
    another task (or none) is refused with a ValueError naming what was found."""
    ckpt = read_checkpoint(path)
    record = model_record(ckpt)
    if task is not None and (not record or (ckpt.get("task") if isinstance(ckpt, Mapping) else None) != task):
        found = ckpt.get("task") if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path} is not a litvit {task} checkpoint (task: {found!r})")
    return record


# --- loading into a module ---------------------------------------------------------------------------

def _few(keys: Sequence[str], limit: int) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def mismatch_message(
        target: Mapping[str, Tensor],
        state_dict: Mapping[str, Tensor],
        ignore_missing: Sequence[str] = (),
        limit: int = 5,
) -> Optional[str]:
    """``"missing keys: ...; unexpected keys: ...; mis-shaped keys: ..."`` for a state dict that does
    not fit ``target`` (a model's ``state_dict()``), or None when it fits.

    Args:
        ignore_missing: key prefixes that may be absent (a classifier the caller re-initialises).
        limit: keys named per kind (mis-shaped ones, which carry both shapes, at most 3).
    """
    missing = [k for k in target if k not in state_dict and not k.startswith(tuple(ignore_missing))]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
              for k in state_dict if k in target and state_dict[k].shape != target[k].shape]
    parts = [f"{what}: {_few(keys, min(limit, 3) if what.startswith('mis') else limit)}" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)) if keys]
    return "; ".join(parts) or None


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], path: PathLike) -> None:
    """Load a state dict saved from the same model; anything else raises CheckpointMismatchError
    naming the keys (:func:`mismatch_message`)."""
    problem = mismatch_message(model.state_dict(), state_dict, limit=3)
    if problem:
        raise CheckpointMismatchError(f"checkpoint {path} does not fit the model: {problem}")
    model.load_state_dict(state_dict)
