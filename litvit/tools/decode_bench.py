"""``litvit bench --decode``: JPEG decode throughput of :func:`litvit.data.read_image` against the
reader it replaced and against torchvision's decoder, on ImageNet-like files.

Writes ``n`` synthetic photos (500x375, quality 90, natural-looking content: smooth colour fields,
hard-edged shapes, grain and sensor-like noise, about 90 kB each; ImageNet's JPEGs average about
110 kB at about 400x350) into a temporary folder, checks that the readers agree, then times them
in one process and one thread:

* ``before``: PIL ``open`` + ``load`` + ``convert("RGB")``, what ``read_image`` did before it
  applied EXIF orientation and scaled 16-bit data;
* ``after``: :func:`~litvit.data.read_image` (PIL, plus the EXIF orientation and 16-bit handling);
* ``torchvision``: ``torchvision.io.decode_image(mode=RGB, apply_exif_orientation=True)``
  (libjpeg-turbo) and ``Image.fromarray``, the alternative ``read_image`` could have used (left
  out where torchvision's image extension is missing).

Every reader gives a PIL RGB image (what timm's transforms take). The readers take turns on each
image (A, B, C on image 1, then on image 2, ...; B, C, A in the next round, ...), ``reps`` rounds
over all images (a multiple of the number of readers is fairest); each image's
time is the fastest of its rounds (the one least disturbed by other jobs, as ``timeit`` takes),
and images/s is ``n`` over their sum ("best"; "median" uses each image's median instead). The
ratio to ``before`` compares the best figures.

Examples::

    litvit bench --decode              # 64 images, 5 timed rounds
    litvit bench --decode 256 --reps 9
"""
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.io import read_image

__all__ = ["synthetic_photo", "write_photos", "read_image_before", "read_image_torchvision", "bench_decode",
           "print_decode", "cpu_name"]


def synthetic_photo(rng: np.random.Generator, size: Tuple[int, int] = (500, 375)) -> Image.Image:
    """A photo-like RGB image of ``size`` (W, H): a few smooth colour waves, hard-edged shapes, a
    grainy texture and Gaussian noise, so that a JPEG of it costs what a camera picture of that size costs to decode.

    Examples::

        >>> synthetic_photo(np.random.default_rng(0), (64, 48)).size
        (64, 48)
    """
    W, H = size
    y, x = np.mgrid[0:H, 0:W] / max(W, H)
    img = np.zeros((H, W, 3))
    for _ in range(6):  # smooth colour fields
        fx, fy = rng.uniform(0.5, 6, 2)
        img += np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))[..., None] * rng.uniform(-1, 1, 3)
    img = (img - img.min()) / max(np.ptp(img), 1e-6) * 190 + 30
    pic = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(12):  # objects: edges and flat regions
        x0, y0 = rng.integers(0, W), rng.integers(0, H)
        box = [x0, y0, x0 + rng.integers(8, W // 3), y0 + rng.integers(8, H // 3)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    grain = rng.normal(0, 30, (H // 2 + 1, W // 2 + 1)).astype(np.float32)  # texture at 2 px, then sensor noise
    texture = np.asarray(Image.fromarray(grain, "F").resize((W, H), Image.Resampling.BILINEAR))
    arr = np.asarray(pic).astype(np.float32) + texture[..., None] + rng.normal(0, 9, (H, W, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_photos(folder: Path, n: int, size: Tuple[int, int] = (500, 375), quality: int = 90,
                 seed: int = 0) -> List[Path]:
    """``n`` :func:`synthetic_photo` JPEGs (4:2:0, as cameras and ImageNet's files) in ``folder``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = Path(folder) / f"photo{i:04d}.jpg"
        synthetic_photo(rng, size).save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def read_image_before(path) -> Image.Image:
    """The reader as it was: PIL decodes, converts to RGB, nothing else (no orientation)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img.copy()


def read_image_torchvision(path) -> Image.Image:
    """torchvision's decoder (libjpeg-turbo), the EXIF orientation applied, copied into a PIL RGB image."""
    from torchvision import io as tvio
    t = tvio.decode_image(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB, apply_exif_orientation=True)
    return Image.fromarray(t.permute(1, 2, 0).numpy())  # 3, H, W -> H, W, 3


def _torchvision_reads_jpeg(path) -> bool:
    try:
        read_image_torchvision(path)
        return True
    except (RuntimeError, ImportError, AttributeError):  # no image extension, or the API is gone
        return False


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_decode(n: int = 64, reps: int = 5, warmup: int = 1, size: Tuple[int, int] = (500, 375),
                 quality: int = 90, seed: int = 0) -> Dict:
    """Images/s of :func:`read_image_before`, :func:`read_image` and :func:`read_image_torchvision`
    over ``n`` synthetic JPEGs, one thread, ``reps`` timed rounds after ``warmup`` untimed ones
    (see the module's docstring).

    Returns:
        dict: ``readers``: per reader (``before``, ``after``, ``torchvision`` when available)
        ``best`` and ``median`` images/s and ``ratio`` (its best over ``before``'s);
        ``max_diff`` (the largest pixel difference of a reader from ``before``); ``n``, ``reps``,
        ``size``, ``quality``, ``mean_kb``; the machine (``cpu``, ``cores``, ``load``: the
        1-minute load average at the end, ``torch``, ``torchvision``, ``pillow``).

    Raises:
        RuntimeError: the readers disagree by more than 2 levels on a pixel.
    """
    import PIL
    import torchvision
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="litvit-decode-") as tmp:
            paths = write_photos(Path(tmp), n, size, quality, seed)
            mean_kb = sum(os.path.getsize(p) for p in paths) / n / 1e3
            readers = {"before": read_image_before, "after": read_image}
            if _torchvision_reads_jpeg(paths[0]):
                readers["torchvision"] = read_image_torchvision
            max_diff = {k: 0 for k in readers}
            for p in paths:  # the same pixels (libjpeg-turbo builds may differ by a level or two); a warm cache
                ref = np.asarray(read_image_before(p), np.int16)
                for name, read in readers.items():
                    out = np.asarray(read(p), np.int16)
                    if out.shape != ref.shape or np.abs(out - ref).max() > 2:
                        raise RuntimeError(f"{name} and PIL disagree on {p.name}")
                    max_diff[name] = max(max_diff[name], int(np.abs(out - ref).max()))
            times = {k: np.zeros((reps, n)) for k in readers}  # seconds per image, per round
            names = list(readers)
            for r in range(warmup + reps):
                order = names[r % len(names):] + names[:r % len(names)]  # each reader goes first in turn
                for i, p in enumerate(paths):  # the readers take turns on each image
                    for name in order:
                        read = readers[name]
                        t0 = time.perf_counter()
                        read(p)
                        if r >= warmup:
                            times[name][r - warmup, i] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    # per image, the fastest of the rounds (the least disturbed by other jobs, as timeit) and the median
    out = {k: dict(best=n / t.min(0).sum(), median=n / np.median(t, 0).sum()) for k, t in times.items()}
    for v in out.values():
        v["ratio"] = v["best"] / out["before"]["best"]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return dict(readers=out, max_diff=max_diff, n=n, reps=reps, size=list(size), quality=quality, mean_kb=mean_kb,
                cpu=cpu_name(), cores=os.cpu_count(), load=load, torch=torch.__version__,
                torchvision=torchvision.__version__, pillow=PIL.__version__)


_WHAT = {"before": "PIL open + convert", "after": "read_image", "torchvision": "decode_image + PIL"}


def print_decode(r: Dict) -> None:
    """The result of :func:`bench_decode` as a few lines."""
    print(f"JPEG decode, {r['n']} synthetic {r['size'][0]}x{r['size'][1]} photos at quality {r['quality']} "
          f"({r['mean_kb']:.0f} kB each), one thread, the fastest of {r['reps']} rounds per image")
    load = f", 1-minute load {r['load']:.1f} at the end" if r.get("load") is not None else ""
    print(f"machine: {r['cpu']} ({r['cores']} cores{load}), torch {r['torch']}, torchvision {r['torchvision']}, "
          f"Pillow {r['pillow']}")
    for name, what in _WHAT.items():
        if name in r["readers"]:
            s = r["readers"][name]
            print(f"  {name:11s} {what:19s} {s['best']:7.1f} images/s (median {s['median']:.1f}), "
                  f"x{s['ratio']:.2f} of before, pixels within {r['max_diff'][name]} of before")
