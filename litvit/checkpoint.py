"""Checkpoint files: the one reader, the one writer, the model record and the key-mismatch report.

* :func:`read_checkpoint` reads a file on the CPU with one trust policy: ``torch.load(weights_only=True)``
  with exactly the extra objects that official releases and training scripts pickle allowed
  (``argparse.Namespace``, numpy scalars and dtypes, yacs configs read as plain dicts); nothing else
  is ever unpickled. A safetensors file (recognised by its header, whatever its name) is read
  too; one written by ``litvit export --format safetensors`` comes back as a training checkpoint
  would, ``{'model': state_dict, 'task': ..., 'extra': ...}``, so its model record is read alike.
* :func:`write_safetensors` / :func:`read_safetensors`: a state dict plus the model record as
  safetensors' string metadata (each value JSON-encoded), written atomically.
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
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import CheckpointMismatchError, CheckpointWriteError
from .utils import atomic_path

__all__ = ["read_checkpoint", "read_training_checkpoint", "write_checkpoint", "read_safetensors", "write_safetensors",
           "is_safetensors", "record_entries", "model_record", "read_model_record", "mismatch_message",
           "load_state_dict_strict"]

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
        what the file holds: a state dict, ``{'model': ...}``, a litvit training checkpoint, ...;
        for a safetensors file its state dict, or ``{'model', 'task', 'extra'}`` when its metadata
        holds a litvit model record.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file is not a PyTorch or safetensors checkpoint, is truncated,
            or pickles other objects (the message names them and the file).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_safetensors(path):
        state_dict, metadata = read_safetensors(path)
        record = _record_from_metadata(metadata, path)
        return dict(model=state_dict, **record) if record else state_dict
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch's zip format, or its legacy pickle
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                                      f"(neither torch.save's zip format, a pickle nor a safetensors file)")
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


# --- safetensors -------------------------------------------------------------------------------------

# safetensors metadata keys that are not entries of the model record
_SAFETENSORS_FORMAT = "format"  # "pt": the convention of safetensors.torch and the Hugging Face hub
_LITVIT_VERSION = "litvit_version"  # present in every file litvit writes; marks the record's entries


def is_safetensors(path: PathLike) -> bool:
    """Whether the file starts as a safetensors file does: an 8-byte little-endian header length,
    then a JSON object (``{``). The name's suffix plays no part; a truncated file still counts (and
    reading it says so)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < 2 ** 32


def read_safetensors(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """The state dict (on the CPU) and the string metadata of a safetensors file.

    Raises:
        CheckpointMismatchError: a damaged header or truncated data (the message names the file).
    """
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' SafetensorError, or an OSError of a short read
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: damaged safetensors file "
                                      f"({_first_line(e)})") from None
    return state_dict, metadata


def write_safetensors(
        state_dict: Mapping[str, Tensor],
        path: PathLike,
        task: Optional[str] = None,
        extra: Optional[Mapping[str, Any]] = None,
        version: str = "",
) -> None:
    """Write a state dict as a safetensors file, atomically (:func:`litvit.utils.atomic_path`),
    with the model record as metadata: ``task`` and each ``extra`` entry (plain values) JSON-encoded
    under its own key, plus ``litvit_version`` and ``format: pt``. :func:`read_checkpoint` gives
    them back as ``{'model': state_dict, 'task': task, 'extra': extra}``.

    Raises:
        ValueError: an ``extra`` entry named like a reserved key, or a value JSON cannot encode.

    Examples::
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_safetensors({"w": torch.ones(2)}, path, task="classification", extra=dict(model="lit_ti"))
        >>> ck = read_checkpoint(path)
        >>> ck["task"], ck["extra"], ck["model"]["w"]
        ('classification', {'model': 'lit_ti'}, tensor([1., 1.]))
    """
    from safetensors.torch import save_file
    extra = dict(extra or {})
    reserved = {_SAFETENSORS_FORMAT, _LITVIT_VERSION, "task"} & set(extra)
    if reserved:
        raise ValueError(f"model record entries {sorted(reserved)} clash with safetensors metadata keys")
    metadata = {_SAFETENSORS_FORMAT: "pt", _LITVIT_VERSION: json.dumps(version)}
    if task is not None:
        metadata["task"] = json.dumps(task)
    for key, value in extra.items():
        try:
            metadata[key] = json.dumps(value)
        except TypeError as e:
            raise ValueError(f"model record entry {key!r} is not a plain value: {e}") from None
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        # safetensors stores each tensor on its own: a view into a larger storage is copied out
        tensors[k] = v if v.is_contiguous() and v.untyped_storage().nbytes() == v.nbytes else v.clone(
            memory_format=torch.contiguous_format)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _record_from_metadata(metadata: Mapping[str, str], path: str) -> Dict[str, Any]:
    """``{'task': ..., 'extra': {...}}`` from the metadata of a safetensors file litvit wrote; ``{}``
    for one that records nothing, or was written elsewhere (no ``litvit_version`` key: its metadata
    is left alone)."""
    if _LITVIT_VERSION not in metadata:
        return {}
    decoded = {}
    for key, text in metadata.items():
        if key == _SAFETENSORS_FORMAT:
            continue
        try:
            decoded[key] = json.loads(text)
        except ValueError:
            raise CheckpointMismatchError(f"cannot read checkpoint {path}: its metadata entry {key!r} "
                                          f"is not JSON ({text[:40]!r})") from None
    decoded.pop(_LITVIT_VERSION)
    task = decoded.pop("task", None)
    out: Dict[str, Any] = dict(extra=decoded) if decoded else {}
    if isinstance(task, str):
        out.update(task=task, extra=decoded)
    return out


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
