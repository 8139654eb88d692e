"""Classification data as WebDataset tar shards: written from an image folder, read as a seeded,
resumable stream split across processes and loader workers.

Layout, as timm's ``wds`` reader reads it::

    OUT/train-000000.tar ...   each sample KEY.jpg (or .png / .webp: the file's own bytes; other
    OUT/val-000000.tar ...     formats re-encoded as PNG) and KEY.cls (the class index in ASCII)
    OUT/_info.json             timm's split info: per split its filenames, shard_lengths, num_samples
    OUT/classes.txt            the class names, one a line, in index order

A training stream (:class:`ShardStream` after :meth:`~ShardStream.configure`) deals whole shards:
each epoch shuffles the shard list with ``(seed, epoch)``, process ``r`` of ``R`` takes shards
``r, r + R, ...`` of it and its loader worker ``w`` of ``W`` every ``W``-th of those; a worker reads
its shards in order through a seeded shuffle buffer and hands over whole batches; batch ``p`` of a
process comes from worker ``p mod W``. Sample ``i`` of batch ``p`` is augmented under the seed
``(seed, epoch, rank, p * batch_size + i)``, as :func:`litvit.engine.fit` seeds an image folder's.
Every process trains the same number of batches per epoch: as many full batches as the worker
dealt the fewest samples could make, times ``W`` (the rest of that epoch's shards is left out; the
next epoch deals them otherwise). Resume is exact: a worker replays its stream from the epoch's
start, reading but not decoding the batches already trained, so the shuffle buffer and the seeds
are what they were (it needs the same processes and workers).

"""
import json
import random
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..utils import atomic_path, atomic_write, mix_seed, seeded_rngs
from .io import read_image

__all__ = ["write_shards", "ShardStream", "is_shard_pattern", "shard_files", "split_pattern", "INFO", "CLASSES"]

INFO = "_info.json"
CLASSES = "classes.txt"
_KEPT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # stored as they are
_IMAGE_KEYS = ("jpg", "png", "webp")


def _webdataset():
    """The ``webdataset`` package (an optional extra), or a one-line error saying how to install it."""
    try:
        import webdataset
        import webdataset.shardlists  # noqa: F401
    except ImportError:
        raise ValueError("tar shards need the webdataset package: pip install 'litvit[shards]'") from None
    return webdataset


def is_shard_pattern(data: str) -> bool:
    """Whether ``--data`` names tar shards (``shards/train-{000000..000009}.tar``, one ``.tar``)."""
    return str(data).endswith(".tar")


def shard_files(pattern: str) -> List[Path]:
    """The files of a brace pattern, each checked to exist (FileNotFoundError naming the first missing)."""
    files = [Path(u) for u in _webdataset().shardlists.expand_urls(str(pattern))]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"shard not found: {f} (of --data {pattern})")
    return files


def write_shards(
        folder: Union[str, Path],
        out: Union[str, Path],
        shard_size: int = 1000,
        splits: Sequence[str] = ("train", "val"),
        seed: int = 0,
        bad_images: str = "fail",
        progress: bool = True,
) -> Dict[str, dict]:
    """Write the splits of an image folder (``folder/<split>/<class>/<image>``) as tar shards.

    Each split's images are shuffled with ``seed`` (a shard then holds many classes, as a stream
    needs) and written ``shard_size`` to a shard, atomically; ``classes.txt`` holds the training
    split's classes, ``_info.json`` the splits (timm's format). A split the folder lacks is left out.

    Returns:
        ``{split: {"filenames": [...], "shard_lengths": [...], "num_samples": n}}``.
    """
    from .classification import ImageFolder
    TarWriter = _webdataset().TarWriter
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    folder, out = Path(folder), Path(out)
    present = [s for s in splits if (folder / s).is_dir()]
    if not present:
        raise FileNotFoundError(f"{folder} has none of the splits {', '.join(splits)} "
                                f"(expected {folder}/<split>/<class>/<image>)")
    classes = None
    info = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in present:
        ds = ImageFolder(folder, split, classes=classes, bad_images=bad_images)
        classes = classes or ds.classes
        ds.drop(ds.scan(progress=progress))
        order = np.random.default_rng(seed).permutation(len(ds.samples))
        names, lengths = [], []
        for s, start in enumerate(range(0, len(order), shard_size)):
            name = f"{split}-{s:06d}.tar"
            with atomic_path(out / name) as tmp, open(tmp, "wb") as f, TarWriter(f, encoder=False) as sink:
                for i in order[start:start + shard_size]:
                    path, target = ds.samples[i]
                    ext = _KEPT.get(path.suffix.lower())
                    if ext is not None:
                        data = path.read_bytes()
                    else:  # a format timm's reader does not take: the decoded RGB image as PNG
                        ext, data = "png", _png_bytes(read_image(path))
                    sink.write({"__key__": f"{split}{int(i):08d}", ext: data, "cls": str(target).encode()})
            names.append(name)
            lengths.append(min(shard_size, len(order) - start))
        info[split] = dict(name=split, filenames=names, shard_lengths=lengths, num_samples=len(order))
    atomic_write(out / CLASSES, lambda tmp: Path(tmp).write_text("".join(c + "\n" for c in classes), encoding="utf-8"))
    text = json.dumps(dict(name=folder.name, num_classes=len(classes), splits=info), indent=1)
    atomic_write(out / INFO, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return info


def _png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _shard_lengths(files: Sequence[Path]) -> List[int]:
    """Samples per shard: from ``_info.json`` beside the shards where it lists them, else counted
    from the tar headers (the data is skipped, not read)."""
    lengths = []
    known: Dict[str, int] = {}
    info = files[0].parent / INFO if files else None
    if info is not None and info.is_file():
        for split in json.loads(info.read_text(encoding="utf-8")).get("splits", {}).values():
            known.update(zip(split.get("filenames", ()), split.get("shard_lengths", ())))
    for f in files:
        if f.name in known:
            lengths.append(int(known[f.name]))
            continue
        try:
            with tarfile.open(f, "r:") as tar:
                keys = {m.name.rsplit(".", 1)[0] for m in tar if m.isfile() and m.name.rsplit(".", 1)[-1] == "cls"}
        except tarfile.TarError as e:
            raise ValueError(f"{f} is not a tar shard: {e}") from None
        lengths.append(len(keys))
    return lengths


def _read_classes(folder: Path) -> List[str]:
    path = folder / CLASSES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: shards need the class list beside them "
                                f"(litvit shards writes it; one class name a line)")
    classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not classes:
        raise ValueError(f"{path} lists no classes")
    return classes


def split_pattern(pattern: str, split: str) -> Optional[List[Path]]:
    """The shard files of ``split`` that ``_info.json`` beside ``pattern``'s shards lists (the
    validation shards of a training pattern), or None."""
    folder = shard_files(pattern)[0].parent
    info = folder / INFO
    if not info.is_file():
        return None
    entry = json.loads(info.read_text(encoding="utf-8")).get("splits", {}).get(split)
    if not entry or not entry.get("filenames"):
        return None
    files = [folder / name for name in entry["filenames"]]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"shard not found: {f} (listed in {info})")
    return files


class ShardStream(IterableDataset):
    """Tar shards (:func:`write_shards`'s layout) as a stream of ``(image, class index)``.

    Unconfigured, it gives every sample once, in shard order, split across processes (set by
    :meth:`split`) and loader workers: an evaluation set. :meth:`configure` makes it a training
    stream of whole batches (see the module docstring).

    Args:
        files (str | Sequence[Path]): a brace pattern (``shards/train-{000000..000009}.tar``) or the files.
        transform (Callable, optional): applied to each decoded PIL image.
        classes (Sequence[str], optional): the class list; default ``classes.txt`` beside the shards.
        shuffle_buffer (int): samples a training worker shuffles among (as it reads its shards).
    """

    def __init__(
            self,
            files: Union[str, Sequence[Path]],
            transform: Optional[Callable] = None,
            classes: Optional[Sequence[str]] = None,
            shuffle_buffer: int = 1000,
    ):
        self.files = shard_files(files) if isinstance(files, str) else [Path(f) for f in files]
        if not self.files:
            raise ValueError(f"--data {files} names no shards")
        self.name = str(files) if isinstance(files, str) else str(self.files[0].parent)
        self.transform = transform
        self.classes = list(classes) if classes is not None else _read_classes(self.files[0].parent)
        self.lengths = _shard_lengths(self.files)
        self.targets: Optional[List[int]] = None
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = 0, 1
        self.batch_size: Optional[int] = None
        self.collate: Optional[Callable] = None
        self.seed, self.workers = 0, 0
        self.num_batches = 0
        self.epoch = 0
        self.skip_batches = 0

    def __len__(self) -> int:
        return sum(self.lengths)

    def split(self, rank: int, world_size: int) -> "ShardStream":
        """Process ``rank`` of ``world_size`` reads its share of the shards."""
        self.rank, self.world_size = rank, world_size
        return self

    def max_batches(self, batch_size: int, world_size: int, workers: int) -> int:
        """Batches of ``batch_size`` every process can train per epoch with ``workers`` loader
        workers (0: in the process): ``W`` times the full batches of the worker dealt the fewest shards."""
        w = max(workers, 1)
        per_worker = len(self.files) // (world_size * w)
        if per_worker == 0:
            raise ValueError(f"{len(self.files)} shard(s) cannot be dealt to {world_size} process(es) x {w} loader "
                             f"worker(s): write more, smaller shards (litvit shards --shard-size) or use fewer workers")
        return w * (sum(sorted(self.lengths)[:per_worker]) // batch_size)

    def configure(self, batch_size: int, seed: int, rank: int, world_size: int, workers: int, num_batches: int,
                  collate: Optional[Callable] = None) -> "ShardStream":
        """Make this a training stream of ``num_batches`` collated batches per epoch (at most
        :meth:`max_batches`); :attr:`epoch` and :attr:`skip_batches` (set before iterating) say
        which epoch and how many of its batches were trained already."""
        if num_batches > self.max_batches(batch_size, world_size, workers):
            raise ValueError(f"{num_batches} batches per epoch is more than the shards give "
                             f"({self.max_batches(batch_size, world_size, workers)})")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers, self.num_batches, self.collate = workers, num_batches, collate
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # --- reading -----------------------------------------------------------------------------
    def _samples(self, files: Sequence[Path], rng: Optional[random.Random]) -> Iterator[Tuple[str, str, bytes, int]]:
        """``(name, image key, image bytes, class index)`` of ``files`` in order, through a shuffle
        buffer drawn from ``rng`` (none: in order)."""
        wds = _webdataset()
        stream = wds.tarfile_to_samples()(dict(url=str(f)) for f in files)
        if rng is not None:
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
        for sample in stream:
            key = next((k for k in _IMAGE_KEYS if k in sample), None)
            where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            if key is None or "cls" not in sample:
                raise ValueError(f"shard sample {where} lacks an image (.jpg/.png/.webp) or its .cls")
            target = int(sample["cls"])
            if not 0 <= target < len(self.classes):
                raise ValueError(f"shard sample {where} has class {target}, outside the {len(self.classes)} classes")
            yield where, key, sample[key], target

    def _decode(self, where: str, key: str, data: bytes):
        img = read_image(f"{where}.{key}", data=data)
        return self.transform(img) if self.transform is not None else img

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.batch_size is None:  # evaluation: every sample once, in order
            mine = self.files[self.rank::self.world_size][wid::nw]
            for where, key, data, target in self._samples(mine, None):
                yield self._decode(where, key, data), target
            return
        W = max(self.workers, 1)
        if nw != W:
            raise ValueError(f"the stream was configured for {W} loader worker(s), it runs in {nw}")
        skip = self.skip_batches
        role = (wid + skip) % W  # the loader asks worker 0 first: it plays the role of batch ``skip``
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.files))
        mine = [self.files[i] for i in order[self.rank::self.world_size][role::W]]
        rng = random.Random(mix_seed(self.seed, self.epoch, self.rank, role))
        batch: List[tuple] = []
        j = 0  # this worker's batch number; its position in the process's stream is role + j * W
        for sample in self._samples(mine, rng):
            batch.append(sample)
            if len(batch) < self.batch_size:
                continue
            pos = role + j * W
            if pos >= self.num_batches:
                return
            if pos >= skip:
                items = []
                for i, (where, key, data, target) in enumerate(batch):
                    with seeded_rngs(mix_seed(self.seed, self.epoch, self.rank, pos * self.batch_size + i)):
                        items.append((self._decode(where, key, data), target))
                yield self.collate(items) if self.collate is not None else items
            batch, j = [], j + 1
