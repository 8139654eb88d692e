"""A task's config as its run settings and its checkpoint record, and the one way back from a
checkpoint to a task: :func:`task_from_checkpoint`.

Each task's config is a dataclass (:class:`~litvit.tasks.classification.ClassificationConfig`,
:class:`~litvit.tasks.detection.DetectionConfig`, :class:`~litvit.tasks.segmentation.SegmentationConfig`)
whose fields say, in their metadata, where they go:

- ``run``: compared when a run is resumed (``Task.run_config``); ``run="if set"`` only when not None;
- ``record``: written in every checkpoint (``Task.checkpoint_extra``) and read back to rebuild the
  task (``record="optional"``: a record written before the field existed may lack it; the field's
  default stands in).

:func:`task_from_checkpoint` reads a checkpoint's record, picks the task it names (:data:`TASKS`)
and rebuilds it with that task's ``from_record``: every command that reads a checkpoint
(``validate``, ``predict``, ``detect eval|predict``, ``segment eval|predict``, the figures) goes
through it.

Examples::

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Cfg:
    ...     width: int = field(default=8, metadata=dict(run=True, record=True))
    ...     data: str = "somewhere"
    >>> run_settings(Cfg()), record_of(Cfg())
    ({'width': 8}, {'width': 8})
"""
import dataclasses
import importlib
from typing import Any, Dict, Mapping, Optional, Type

from ..checkpoint import model_record, read_checkpoint
from ..utils import plain

__all__ = ["RUN", "RECORD", "RUN_RECORD", "TASKS", "run_settings", "record_of", "config_from_record",
           "config_argument", "delegate_config_fields", "task_class", "task_from_checkpoint"]

RUN = dict(run=True)
RECORD = dict(record=True)
RUN_RECORD = dict(run=True, record=True)

# task name (as checkpoints record it) -> "module:Class"; read by task_from_checkpoint
TASKS: Dict[str, str] = {
    "classification": "litvit.tasks.classification:ClassificationTask",
    "detection": "litvit.tasks.detection:DetectionTask",
    "segmentation": "litvit.tasks.segmentation:SegmentationTask",
}


def run_settings(cfg: Any) -> Dict[str, Any]:
    """The fields of ``cfg`` marked ``run`` as plain values (``run="if set"``: only when not None)."""
    out = {}
    for f in dataclasses.fields(cfg):
        mark = f.metadata.get("run")
        value = getattr(cfg, f.name)
        if mark and not (mark == "if set" and value is None):
            out[f.name] = plain(value)
    return out


def record_of(cfg: Any) -> Dict[str, Any]:
    """The fields of ``cfg`` marked ``record`` as plain values: what a checkpoint records."""
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.metadata.get("record")}


def config_from_record(config_cls: Type, record: Mapping[str, Any], path: str = "checkpoint", **overrides):
    """``config_cls`` from a checkpoint's record (its ``record`` fields; optional ones may be
    missing or None) with ``overrides`` that are not None on top.

    Raises:
        ValueError: the record lacks a field it must have, naming the file and the fields.
    """
    kwargs, missing = {}, []
    for f in dataclasses.fields(config_cls):
        mark = f.metadata.get("record")
        if not mark:
            continue
        if record.get(f.name) is not None or (f.name in record and mark != "optional"):
            kwargs[f.name] = record[f.name]
        elif mark != "optional":
            missing.append(f.name)
    if missing:
        raise ValueError(f"{path}: its record lacks {', '.join(missing)}; it was not written by this task")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return config_cls(**kwargs)


def config_argument(config_cls: Type, task: str, args: tuple, kwargs: dict):
    """A task's config from its constructor's arguments: a ``config_cls`` instance (copied: the
    task's settings are its own), or that config's fields (positional or by name); TypeError for
    both at once."""
    if args and isinstance(args[0], config_cls):
        if len(args) > 1 or kwargs:
            raise TypeError(f"{task} takes a {config_cls.__name__} or the config's fields, not both")
        return dataclasses.replace(args[0])
    return config_cls(*args, **kwargs)


def delegate_config_fields(config_cls: Type):
    """A class decorator: each field of ``config_cls`` becomes a property of the task reading and
    writing ``self.cfg`` (``task.backbone`` is ``task.cfg.backbone``), so that the config stays the
    one place the settings live."""
    def decorate(task_cls):
        for f in dataclasses.fields(config_cls):
            if f.name in vars(task_cls):
                continue

            def get(self, name=f.name):
                return getattr(self.cfg, name)

            def set_(self, value, name=f.name):
                setattr(self.cfg, name, value)
            setattr(task_cls, f.name, property(get, set_, doc=f"``cfg.{f.name}``"))
        return task_cls
    return decorate


def task_class(name: str) -> Type:
    """The task class that checkpoints name ``name`` (:data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_from_checkpoint(path: str, task: Optional[str] = None, **overrides):
    """The task that rebuilds the model of the checkpoint at ``path`` (for evaluation and
    prediction): the one its record names, rebuilt by that task's ``from_record(record, path,
    ckpt, **overrides)`` (overrides that are None are ignored). A file without a litvit record
    (an official classification release, a bare state dict) is a classification checkpoint.

    Args:
        path (str): a litvit checkpoint, a safetensors export or an official release.
        task (str, optional): the task expected; another task's checkpoint is refused.
        **overrides: the task's settings that win over the record's (data paths, ``progress``, ...).

    Raises:
        ValueError: a checkpoint of another task than ``task``, or a record the task cannot read.
    """
    ckpt = read_checkpoint(path)
    record = model_record(ckpt)
    found = ckpt.get("task") if isinstance(ckpt, Mapping) else None
    name = found if isinstance(found, str) and record else None
    if name is None and task in (None, "classification") and not (isinstance(found, str) and found != "classification"):
        name = "classification"
    if name is None or (task is not None and name != task):
        what = found if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path} is not a litvit {task or 'training'} checkpoint (task: {what!r})")
    return task_class(name).from_record(record, path, ckpt, **overrides)
