"""``litvit shards``: an image folder written as WebDataset tar shards (:mod:`litvit.data.shards`)."""
import argparse

from ..data import BAD_IMAGE_MODES
from ..data.shards import write_shards
from .args import positive_int, seed_arg

__all__ = ["add_parsers", "cmd_shards"]

_HELP = "write an image folder (FOLDER/train, FOLDER/val) as WebDataset tar shards for --data"


def cmd_shards(args: argparse.Namespace) -> int:
    info = write_shards(args.folder, args.out, shard_size=args.shard_size, splits=tuple(args.splits),
                        seed=args.seed, bad_images=args.bad_images, progress=not args.no_progress)
    for split, entry in info.items():
        n = len(entry["filenames"])
        pattern = entry["filenames"][0] if n == 1 else f"{split}-{{000000..{n - 1:06d}}}.tar"
        print(f"{split}: {entry['num_samples']} images in {n} shard(s): {args.out}/{pattern}")
    print(f"classes: {args.out}/classes.txt; train with --data '{args.out}/"
          f"train-{{000000..{len(info['train']['filenames']) - 1:06d}}}.tar'" if "train" in info else "")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help=_HELP, description=_HELP + (
        ": each split's images shuffled (--seed) and written SHARD_SIZE to a tar, each sample KEY.jpg "
        "(the file's bytes; .png/.webp kept, other formats as PNG) and KEY.cls (class index), as timm's wds "
        "reader reads them; OUT/classes.txt lists the classes (of train), OUT/_info.json the splits"))
    p.add_argument("folder", help="image folder: FOLDER/<split>/<class>/<image>")
    p.add_argument("out", help="folder for the shards (created)")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="sub-folders to write (default train val)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the order of the images in the shards")
    p.add_argument("--bad-images", default="fail", choices=BAD_IMAGE_MODES,
                   help="an unreadable image stops the command (fail) or is reported and left out (skip)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_shards)
