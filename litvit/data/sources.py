"""Where ``--data`` leads: a registry of classification data sources.

A source says whether it reads a ``--data`` value (:meth:`DataSource.matches`) and opens its
training set, an evaluation split and the validation set paired with training. Registered, first
match wins: ``digits`` (the embedded digits), ``shards`` (WebDataset tar shards, a brace pattern
ending in ``.tar``), ``folder`` (an image folder with ``train/`` and ``val/``; any other value). A new
source is one :class:`DataSource` subclass and one :func:`register_data_source`.

Examples::

    >>> data_source("digits").name, data_source("shards/train-{000000..000003}.tar").name
    ('digits', 'shards')
    >>> data_source("/data/imagenet").name
    'folder'
    >>> len(data_source("digits").evaluation("digits", "val", transform=None))
    360
"""
from typing import Callable, Dict, Optional, Sequence

from torch.utils.data import Dataset

from .. import data as D  # the package's names, looked up when a set is opened (tests may replace them)
from . import shards
from .classification import DIGITS

__all__ = ["DataSource", "DATA_SOURCES", "register_data_source", "data_source"]


class DataSource:
    """One kind of classification data. Subclasses set :attr:`name` and :attr:`streams` and
    implement :meth:`matches`, :meth:`train` and :meth:`evaluation`.

    Attributes:
        name (str): the registry's key.
        streams (bool): its training set is a stream (an ``IterableDataset`` read once per epoch,
            in its own order: no custom sampler such as repeated augmentation).
    """
    name = "source"
    streams = False

    def matches(self, data: str) -> bool:
        raise NotImplementedError

    def train(self, data: str, transform: Optional[Callable], classes: Optional[Sequence[str]] = None,
              bad_images: str = "fail") -> Dataset:
        """The training set (``classes``: a fixed class list, else its own)."""
        raise NotImplementedError

    def evaluation(self, data: str, split: str, transform: Optional[Callable], classes: Optional[Sequence[str]] = None,
                   bad_images: str = "fail") -> Dataset:
        """The evaluation set ``split`` (with the class list of the checkpoint or training set)."""
        raise NotImplementedError

    def paired_val(self, data: str, split: str, transform: Optional[Callable], classes: Optional[Sequence[str]] = None,
                   bad_images: str = "fail") -> Optional[Dataset]:
        """The validation set of a training run on ``data`` (None: train without evaluation);
        by default :meth:`evaluation` of ``split``."""
        return self.evaluation(data, split, transform, classes, bad_images)


# name -> source, in the order they are tried
DATA_SOURCES: Dict[str, DataSource] = {}


def register_data_source(source: DataSource, first: bool = False) -> DataSource:
    """Add ``source`` to :data:`DATA_SOURCES` (tried after those registered before it, or before
    all of them with ``first``); returns it."""
    if first:
        items = [(source.name, source)] + [(k, v) for k, v in DATA_SOURCES.items() if k != source.name]
        DATA_SOURCES.clear()
        DATA_SOURCES.update(items)
    else:
        DATA_SOURCES[source.name] = source
    return source


def data_source(data: str) -> DataSource:
    """The first registered source that reads ``data``; ValueError when none does."""
    for source in DATA_SOURCES.values():
        if source.matches(data):
            return source
    raise ValueError(f"--data {data}: no data source reads it (sources: {', '.join(DATA_SOURCES)})")


class DigitsSource(DataSource):
    """scikit-learn's digits, embedded (:class:`~litvit.data.DigitsDataset`): ``--data digits``."""
    name = "digits"

    def matches(self, data: str) -> bool:
        return data == DIGITS

    def train(self, data, transform, classes=None, bad_images="fail"):
        return D.DigitsDataset("train", transform=transform)

    def evaluation(self, data, split, transform, classes=None, bad_images="fail"):
        return D.DigitsDataset(split, transform=transform)


class ShardSource(DataSource):
    """WebDataset tar shards (:mod:`litvit.data.shards`): training reads the pattern and validates on
    the ``split`` shards its ``_info.json`` lists; evaluation reads the shards named, whatever the
    split. Their ``classes.txt`` must list the given classes, in the same order."""
    name = "shards"
    streams = True

    def matches(self, data: str) -> bool:
        return shards.is_shard_pattern(data)

    @staticmethod
    def _open(files, transform, classes):
        ds = shards.ShardStream(files, transform=transform)
        if classes is not None and list(classes) != ds.classes:
            raise ValueError(f"the classes of {ds.name} (classes.txt: {len(ds.classes)}) are not those of the "
                             f"checkpoint or training set ({len(classes)}), in the same order")
        return ds

    def train(self, data, transform, classes=None, bad_images="fail"):
        return self._open(data, transform, classes)

    def evaluation(self, data, split, transform, classes=None, bad_images="fail"):
        return self._open(data, transform, classes)

    def paired_val(self, data, split, transform, classes=None, bad_images="fail"):
        files = shards.split_pattern(data, split)
        return self._open(files, transform, classes) if files else None


class FolderSource(DataSource):
    """An image folder, ``data/<split>/<class>/<image>`` (:class:`~litvit.data.ImageFolder`); a
    training split needs images of two classes at least. Reads any ``--data`` (tried last)."""
    name = "folder"

    def matches(self, data: str) -> bool:
        return True

    def train(self, data, transform, classes=None, bad_images="fail"):
        return D.ImageFolder(data, "train", transform=transform, classes=classes, bad_images=bad_images, min_classes=2)

    def evaluation(self, data, split, transform, classes=None, bad_images="fail"):
        return D.ImageFolder(data, split, transform=transform, classes=classes, bad_images=bad_images)


register_data_source(DigitsSource())
register_data_source(ShardSource())
register_data_source(FolderSource())
