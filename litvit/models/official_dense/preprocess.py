"""The test-time image pipeline of the authors' mmdet 2.11 / mmseg 0.13 configs, bit for bit.

``LoadImage -> MultiScaleFlipAug(img_scale, flip=False)[Resize(keep_ratio) -> Normalize -> Pad]``:

* resize: mmcv's ``imrescale`` (scale factor ``min(long / max(h, w), short / min(h, w))``, new size
  ``int(w * f + 0.5)``) with OpenCV's ``INTER_LINEAR`` on uint8, which works in fixed point
  (11-bit weights, a horizontal pass kept exact, then a vertical pass that rounds).
  :func:`resize_bilinear_u8` reproduces it exactly with integer arithmetic (no OpenCV);
* normalise: ``(x - mean) / std`` in float32 on RGB (the authors load BGR and convert,
  ``to_rgb=True``);
* pad: zeros at the bottom and right to a multiple of ``size_divisor`` (mmdet; mmseg does not pad).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TestPipeline", "rescale_size", "resize_bilinear_u8", "preprocess", "pipeline_from_config", "as_rgb_array"]

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


@dataclass
class TestPipeline:
    """What the config's ``data.test.pipeline`` does to an image.

    Attributes:
        img_scale (Tuple[int, int]): MultiScaleFlipAug's scale, e.g. (1333, 800) or (2048, 512).
        keep_ratio (bool): resize keeping the aspect ratio (mmcv ``imrescale``) or to the scale.
        mean (Sequence[float]): normalisation mean, RGB when ``to_rgb``.
        std (Sequence[float]): normalisation std.
        to_rgb (bool): the network takes RGB (the authors' images are read as BGR and converted).
        size_divisor (int, optional): pad bottom/right to a multiple of this.
        pad_size (Tuple[int, int], optional): pad to this fixed (h, w) instead.
    """
    img_scale: Tuple[int, int] = (1333, 800)
    keep_ratio: bool = True
    mean: Sequence[float] = (123.675, 116.28, 103.53)
    std: Sequence[float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    size_divisor: Optional[int] = 32
    pad_size: Optional[Tuple[int, int]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def rescale_size(w: int, h: int, scale: Sequence[int]) -> Tuple[int, int]:
    """mmcv's ``rescale_size``: the keep-ratio size (w', h') of a (w, h) image fitted in ``scale``
    (its larger entry bounds the long side, the smaller the short side)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(f) + 0.5), int(h * float(f) + 0.5)


def _coefficients(src: int, dst: int, clamp: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit weights of OpenCV's linear resize along one axis. Along x a
    sample left of the first or right of the last pixel is moved onto it with weights (1, 0);
    along y only the row indices are clamped (the weights stay, which rounds differently)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        low, high = s < 0, s >= src - 1
        f[low | high] = 0
        s[low] = 0
        s[high] = src - 1
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_bilinear_u8(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize a uint8 image exactly as ``cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)``.

    Args:
        img (ndarray[H, W, C] uint8): the image.
        size (Tuple[int, int]): (width, height) of the result.

    Returns:
        ndarray[h, w, C] uint8.

    Examples::
        >>> resize_bilinear_u8(np.zeros((480, 640, 3), np.uint8), (1067, 800)).shape
        (800, 1067, 3)
    """
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {img.dtype} of shape {img.shape}")
    H, W = img.shape[:2]
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"cannot resize to {w}x{h}")
    x0, x1, a0, a1 = _coefficients(W, w, clamp=True)
    y0, y1, b0, b1 = _coefficients(H, h, clamp=False)
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    src = img[rows].astype(np.int32)
    horizontal = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # rows, w, C (x 2048)
    r0, r1 = horizontal[inverse[:h]], horizontal[inverse[h:]]
    out = (((b0[:, None, None] * (r0 >> 4)) >> 16) + ((b1[:, None, None] * (r1 >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def as_rgb_array(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a PIL image or an (H, W, 3) / (H, W) uint8 array."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (H, W, 3), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {arr.shape}")
    return arr


def preprocess(image: Any, pipeline: TestPipeline) -> Tuple[Tensor, Dict[str, Any]]:
    """The network input and the image metas of the authors' test pipeline.

    Args:
        image: (H, W, 3) uint8 RGB array or PIL image.
        pipeline (TestPipeline): the release's test settings.

    Returns:
        (Tensor[1, 3, H', W'], dict): the normalised, padded image and its metas: ``ori_shape``,
        ``img_shape``, ``pad_shape`` (h, w, 3) and ``scale_factor`` (float32 [w_scale, h_scale,
        w_scale, h_scale]).
    """
    rgb = as_rgb_array(image)
    h, w = rgb.shape[:2]
    if pipeline.keep_ratio:
        new_w, new_h = rescale_size(w, h, pipeline.img_scale)
    else:
        new_w, new_h = int(pipeline.img_scale[0]), int(pipeline.img_scale[1])
    resized = rgb if (new_w, new_h) == (w, h) else resize_bilinear_u8(np.ascontiguousarray(rgb), (new_w, new_h))
    scale_factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()  # H, W, C -> C, H, W
    if not pipeline.to_rgb:
        x = x.flip(0)  # the network takes BGR
    mean = torch.tensor(pipeline.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pipeline.std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean) / std
    pad_h, pad_w = new_h, new_w
    if pipeline.pad_size is not None:
        pad_h, pad_w = int(pipeline.pad_size[0]), int(pipeline.pad_size[1])
    elif pipeline.size_divisor:
        d = int(pipeline.size_divisor)
        pad_h, pad_w = -(-new_h // d) * d, -(-new_w // d) * d
    if (pad_h, pad_w) != (new_h, new_w):
        x = F.pad(x, (0, pad_w - new_w, 0, pad_h - new_h))
    meta = dict(ori_shape=(h, w, 3), img_shape=(new_h, new_w, 3), pad_shape=(pad_h, pad_w, 3),
                scale_factor=scale_factor)
    return x[None], meta


def pipeline_from_config(cfg: Dict[str, Any], default: TestPipeline) -> TestPipeline:
    """The :class:`TestPipeline` of a parsed config's ``data.test.pipeline`` (``default`` for
    what it does not say).

    Raises:
        ValueError: the pipeline asks for test-time augmentation (several scales, flips) or a
            step this reimplementation does not have.
    """
    steps: List[Dict] = (((cfg.get("data") or {}).get("test") or {}).get("pipeline")
                         or cfg.get("test_pipeline") or [])
    if not steps:
        return default
    out = TestPipeline(**{k: getattr(default, k) for k in ("img_scale", "keep_ratio", "mean", "std", "to_rgb",
                                                         "size_divisor", "pad_size")})
    out.size_divisor = None
    transforms = []
    for step in steps:
        kind = step.get("type")
        if kind == "MultiScaleFlipAug":
            scale = step.get("img_scale")
            if isinstance(scale, list):
                if len(scale) != 1:
                    raise ValueError(f"test-time augmentation over scales {scale} is not supported")
                scale = scale[0]
            if scale is None or step.get("scale_factor") is not None:
                raise ValueError("MultiScaleFlipAug without an img_scale is not supported")
            ratios = step.get("img_ratios")
            if ratios not in (None, 1, 1.0, [1.0], (1.0,), [1], (1,)):
                raise ValueError(f"test-time augmentation over img_ratios {ratios} is not supported")
            if step.get("flip"):
                raise ValueError("test-time flip augmentation is not supported")
            out.img_scale = tuple(int(v) for v in scale)
            transforms = step.get("transforms") or []
        elif kind not in ("LoadImageFromFile", "LoadImage", "LoadImageFromWebcam"):
            transforms.append(step)
    for step in transforms:
        kind = step.get("type")
        if kind == "Resize":
            out.keep_ratio = bool(step.get("keep_ratio", True))
            if step.get("img_scale") is not None:
                scale = step["img_scale"]
                out.img_scale = tuple(int(v) for v in (scale[0] if isinstance(scale, list) else scale))
        elif kind == "Normalize":
            out.mean = tuple(float(v) for v in step["mean"])
            out.std = tuple(float(v) for v in step["std"])
            out.to_rgb = bool(step.get("to_rgb", True))
        elif kind == "Pad":
            if step.get("size") is not None:
                out.pad_size = tuple(int(v) for v in step["size"])
            else:
                out.size_divisor = int(step.get("size_divisor") or 0) or None
        elif kind not in ("RandomFlip", "ImageToTensor", "DefaultFormatBundle", "Collect"):
            raise ValueError(f"test pipeline step {kind!r} is not supported")
    return out
