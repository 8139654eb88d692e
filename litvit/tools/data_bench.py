"""``litvit bench --data-read``: images/s one loader worker reads, decodes and augments, from an
image folder and from the same images as WebDataset tar shards (:mod:`litvit.data.shards`).

Writes ``n`` synthetic photos (500x375 JPEGs, :func:`litvit.tools.decode_bench.write_photos`) into
``classes`` class folders (or takes a folder's ``train`` split), writes them as shards of
``shard_size``, then times in this process and one thread what one loader worker of ``litvit
train`` does per image:

* ``folder``: :class:`~litvit.data.ImageFolder` items in a shuffled order, each read from its own
  file, decoded and put through the training transform under its own seed;
* ``shards``: a :class:`~litvit.data.shards.ShardStream` epoch, read shard after shard through
  the shuffle buffer, each image decoded and transformed under its own seed.

The two take turns for ``reps`` rounds; each path's figure is its fastest round (the one least
disturbed by other jobs). Files are read through the page cache after the first round, as a
dataset that fits in memory is.

Examples::

    litvit bench --data-read               # 512 photos, 224 px, 3 rounds
    litvit bench --data-read --data-read-folder /data/imagenet --data-read-n 2000
"""
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..data import ImageFolder, build_transform
from ..data.shards import ShardStream, write_shards
from ..utils import mix_seed, seeded_rngs
from .decode_bench import cpu_name, write_photos

__all__ = ["bench_data_read", "print_data_read"]


def _folder_epoch(ds: ImageFolder, n: int) -> float:
    order = np.random.default_rng(0).permutation(len(ds))[:n]
    t0 = time.perf_counter()
    for pos, i in enumerate(order):
        with seeded_rngs(mix_seed(0, 0, 0, pos)):
            ds[int(i)]
    return time.perf_counter() - t0


def _shard_epoch(stream: ShardStream) -> float:
    t0 = time.perf_counter()
    for _ in stream:
        pass
    return time.perf_counter() - t0


def bench_data_read(folder: Optional[str] = None, n: int = 512, classes: int = 8, img_size: int = 224,
                    shard_size: int = 64, batch_size: int = 32, reps: int = 3) -> Dict:
    """Images/s of the folder and shard paths (see the module docstring); returns both, their ratio
    (shards / folder) and the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(folder) if folder else Path(tmp) / "images"
            if not folder:
                for c in range(classes):
                    d = root / "train" / f"class{c}"
                    d.mkdir(parents=True)
                    write_photos(d, -(-n // classes), seed=c)
            write_shards(root, Path(tmp) / "shards", shard_size=shard_size, splits=("train",), progress=False)
            transform = build_transform(True, img_size)
            ds = ImageFolder(root, "train", transform=transform)
            files = sorted((Path(tmp) / "shards").glob("train-*.tar"))
            stream = ShardStream(files, transform=transform, shuffle_buffer=256)
            count = min(n, len(ds))
            batches = count // batch_size
            if batches == 0:
                raise ValueError(f"{count} images make no batch of {batch_size}")
            stream.configure(batch_size, 0, 0, 1, 0, min(batches, stream.max_batches(batch_size, 1, 0)))
            images = stream.num_batches * batch_size
            best = dict(folder=float("inf"), shards=float("inf"))
            for _ in range(reps):
                best["folder"] = min(best["folder"], _folder_epoch(ds, images))
                best["shards"] = min(best["shards"], _shard_epoch(stream))
    finally:
        torch.set_num_threads(threads)
    rates = {k: images / v for k, v in best.items()}
    return dict(images=images, img_size=img_size, shard_size=shard_size, folder_img_per_s=rates["folder"],
                shards_img_per_s=rates["shards"], ratio=rates["shards"] / rates["folder"], cpu=cpu_name(),
                torch=torch.__version__, source=str(folder) if folder else f"{n} synthetic 500x375 JPEGs")


def print_data_read(r: Dict) -> None:
    print(f"read + decode + augment, one worker, {r['images']} images at {r['img_size']} px ({r['source']}), "
          f"{r['cpu']}, torch {r['torch']}")
    print(f"  image folder   {r['folder_img_per_s']:8.1f} images/s")
    print(f"  tar shards     {r['shards_img_per_s']:8.1f} images/s   ({r['ratio']:.2f}x the folder)")
