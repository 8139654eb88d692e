"""What the figures share: a model from ``--model`` / a checkpoint, images as normalised tensors plus
the RGB picture to draw on, atomic figure and array files, the common arguments."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...checkpoint import model_record
from ...data.io import IMG_EXTENSIONS as IMAGE_EXTENSIONS
from ...data.io import find_images as _find_images
from ...data.io import read_image
from ...models import create_model, MODEL_NAMES
from ...models.convert import official_to_litvit, unwrap_state_dict
from ...utils import atomic_write, moved_names

__all__ = ["IMAGE_EXTENSIONS", "LoadedImage", "find_images", "load_image", "load_model", "checkpoint_metadata",
           "save_figure", "save_npy", "save_npz", "load_images"]


# --- model -----------------------------------------------------------------------------------------

def checkpoint_metadata(ckpt: Mapping) -> dict:
    """What a checkpoint says about the model it holds: ``model`` (name), ``model_kwargs``,
    ``num_classes``, ``img_size``, ``mean``, ``std``, ``classes``, ``crop_pct``, ``interpolation``,
    ``data``, whichever are recorded.

    litvit training checkpoints record them next to the weights (the task's model record,
    :func:`litvit.checkpoint.model_record`); official releases record nothing, and the name must
    come from ``--model``; the number of classes is read from the classifier's weights.
    """
    record = model_record(ckpt)
    meta = {}
    if isinstance(record.get("model"), str):
        meta["model"] = record["model"]
    if isinstance(record.get("model_kwargs"), Mapping):
        meta["model_kwargs"] = dict(record["model_kwargs"])
    if isinstance(record.get("img_size"), (int, tuple, list)):
        meta["img_size"] = record["img_size"]
    for key in ("mean", "std"):
        if isinstance(record.get(key), (tuple, list)):
            meta[key] = tuple(float(c) for c in record[key])
    if isinstance(record.get("classes"), (tuple, list)) and record["classes"]:
        meta["classes"] = [str(c) for c in record["classes"]]
    for key, kind in (("crop_pct", (int, float)), ("interpolation", str), ("data", str)):
        if isinstance(record.get(key), kind):
            meta[key] = record[key]
    try:
        sd = official_to_litvit(unwrap_state_dict(ckpt))
    except ValueError:
        sd = {}
    if "head.weight" in sd:
        meta["num_classes"] = int(sd["head.weight"].shape[0])
    elif sd:
        meta["num_classes"] = 0
    return meta


def load_model(
        model: Optional[str] = None,
        checkpoint: Optional[str] = None,
        **overrides,
) -> Tuple[torch.nn.Module, dict]:
    """Build a LIT model (by name or from a checkpoint's metadata) and load the checkpoint.

    Args:
        model (str, optional): model name; when None the checkpoint's record names it, or for an
            official release the one registered model its weights fit.
        checkpoint (str, optional): litvit or official checkpoint; None keeps random weights.
        **overrides: constructor arguments that win over the checkpoint's.

    Returns:
        (model in eval mode, metadata dict: ``model``, ``model_kwargs`` (the constructor arguments
        given), ``mean``, ``std``, ``img_size``, ``checkpoint``, and ``classes``, ``crop_pct``,
        ``interpolation``, ``data`` where the checkpoint records them).

    A checkpoint is read as every command reads one: :func:`litvit.tasks.records.task_from_checkpoint`
    rebuilds its classification task, whose config names the model, its arguments and transform.

    Raises:
        ValueError: no model name anywhere, an unknown name, or a checkpoint of another model
            (:class:`litvit.CheckpointMismatchError`).
    """
    if checkpoint is None:
        if model is None:
            raise ValueError("pass --model or --checkpoint")
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        net = create_model(model, **overrides).eval()
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        size = overrides.get("img_size", getattr(net, "img_size", (224, 224)))
        return net, dict(model=model, checkpoint=None, model_kwargs=dict(overrides),
                         mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                         img_size=int(size[-1] if isinstance(size, (tuple, list)) else size))
    from ...tasks.records import task_from_checkpoint  # the one rebuild path (a floor above: imported on use)
    task = task_from_checkpoint(checkpoint, task="classification", model=model)
    c, record = task.cfg, task.checkpoint_record
    kwargs = dict(c.model_kwargs)
    if "img_size" in (record.get("model_kwargs") or {}):
        kwargs["img_size"] = c.img_size
    if task.checkpoint_classes is not None:
        kwargs["num_classes"] = task.checkpoint_classes
    kwargs.update(overrides)
    net = create_model(c.model, checkpoint_path=checkpoint, **kwargs).eval()
    info = dict(model=c.model, checkpoint=checkpoint, model_kwargs=kwargs)
    if c.classes:
        info["classes"] = list(c.classes)
    info.update({k: getattr(c, k) for k in ("crop_pct", "interpolation", "data") if k in record})
    pcfg = getattr(net, "pretrained_cfg", {}) or {}
    info["mean"] = tuple(float(v) for v in (c.mean if "mean" in record else pcfg.get("mean", (0.485, 0.456, 0.406))))
    info["std"] = tuple(float(v) for v in (c.std if "std" in record else pcfg.get("std", (0.229, 0.224, 0.225))))
    size = record.get("img_size") if isinstance(record.get("img_size"), (int, tuple, list)) else \
        kwargs.get("img_size", getattr(net, "img_size", (224, 224)))
    info["img_size"] = int(size[-1] if isinstance(size, (tuple, list)) else size)
    return net, info


# --- images ----------------------------------------------------------------------------------------

@dataclass
class LoadedImage:
    """An image ready for the network and for drawing.

    Attributes:
        path (Path): source file.
        tensor (Tensor[1, C, H, W]): normalised network input, H and W multiples of 32.
        rgb (np.ndarray[H, W, 3]): the same picture as uint8 RGB, to draw on.
    """
    path: Path
    tensor: Tensor
    rgb: np.ndarray


def find_images(path: str) -> List[Path]:
    """The image files at ``path``: the file itself, or the images directly inside a folder (sorted):
    :func:`litvit.data.io.find_images` without sub-folders."""
    return _find_images(path, recursive=False)


def _input_size(width: int, height: int, img_size: int, multiple: int = 32) -> Tuple[int, int]:
    """(H, W): the shorter side becomes ``img_size``, the longer keeps the aspect ratio, both
    rounded to a multiple of ``multiple``."""
    scale = img_size / min(width, height)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def load_image(
        path: Path,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        in_chans: int = 3,
) -> LoadedImage:
    """Read an image with PIL, resize it (shorter side ``img_size``, both sides multiples of 32,
    bicubic) and normalise it.

    Raises:
        ValueError: the file is not a readable image, or ``img_size`` is not a positive multiple of 32.
    """
    if img_size <= 0 or img_size % 32:
        raise ValueError(f"--img-size must be a positive multiple of 32, got {img_size}")
    img = read_image(path)
    h, w = _input_size(img.width, img.height, img_size)
    img = img.resize((w, h), Image.BICUBIC)
    rgb = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)  # H, W, 3 -> 3, H, W
    if in_chans == 1:
        x = x.mean(dim=0, keepdim=True)
    elif in_chans != 3:
        raise ValueError(f"images have 3 channels; the model expects in_chans={in_chans}")
    m = torch.tensor(mean[:in_chans], dtype=torch.float32).view(-1, 1, 1)  # C -> C, 1, 1
    s = torch.tensor(std[:in_chans], dtype=torch.float32).view(-1, 1, 1)
    return LoadedImage(Path(path), ((x - m) / s).unsqueeze(0), rgb)


def load_images(path: str, img_size: int, mean, std, in_chans: int = 3) -> List[LoadedImage]:
    """Every image at ``path`` (a file or a folder), all read before anything is written."""
    return [load_image(f, img_size, mean, std, in_chans) for f in find_images(path)]


# --- output ----------------------------------------------------------------------------------------

def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def save_npy(array: np.ndarray, path: Path) -> Path:
    """``np.save`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    return atomic_write(path, write)


def save_npz(arrays: Dict[str, np.ndarray], path: Path) -> Path:
    """``np.savez_compressed`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return atomic_write(path, write)


# the command-line functions that lived here, now in litvit.cli.viz: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.viz", ('prepare', 'add_common_arguments'))
