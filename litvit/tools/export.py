"""``litvit export``: a LIT model to ONNX (dynamic batch and image size, checked with onnxruntime)
or to safetensors (its weights plus what rebuilds it).

ONNX: the model is exported in eval mode on its fast path (SDPA attention, the grid_sample DTM)
through ``torch.onnx.export(dynamo=True)`` at opset >= 17 (grid_sample needs 16). Batch, height and
width are symbolic: height and width as multiples of 32, the model's total stride. Position
embeddings and relative tables are resized inside the graph, so any multiple of 32 runs. After
writing, the file is loaded in onnxruntime and compared with PyTorch at two sizes and batch sizes.

safetensors: the state dict (litvit's key layout) with a small metadata header, each value
JSON-encoded: ``model``, ``model_kwargs`` (the constructor arguments that rebuild it: number of
classes, image size, widths, ...), ``classes``, ``img_size``, ``input_size``, ``mean``, ``std``,
``crop_pct``, ``interpolation``, ``task``, ``litvit_version``. ``litvit validate`` / ``predict``
rebuild the model from it without ``--model``; any litvit checkpoint argument reads the file.
After writing, the model is rebuilt from the file and its logits compared with the source model's.

Examples::

    litvit export --model lit_ti --out lit_ti.onnx
    litvit export --model lit_s --checkpoint lit_s.pth --out lit_s.onnx --opset 18
    litvit export --checkpoint runs/digits/best.pth --out digits.safetensors   # format from the suffix
    litvit export --checkpoint lit_ti.pth --format safetensors                 # -> lit_ti.safetensors
"""
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..checkpoint import write_safetensors
from ..utils import atomic_path, moved_names, plain

DEFAULT_OPSET = 18
MIN_OPSET = 17


def export_onnx(
        model: nn.Module,
        path: str,
        img_size: int = 224,
        opset: int = DEFAULT_OPSET,
        stride: int = 32,
        max_side: int = 4096,
) -> str:
    """Export ``model`` to ONNX with dynamic batch, height and width (multiples of ``stride``).

    Args:
        model (nn.Module): a LIT model (put in eval mode, fast path is whatever it is set to).
        path (str): the .onnx file, written atomically (temporary file, then renamed).
        img_size (int): the example input's side.
        opset (int): ONNX opset, >= 17.
        stride (int): the model's total stride; height and width are exported as multiples of it.
        max_side (int): the largest side the graph is valid for.

    Returns:
        str: ``path``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (grid_sample needs 16, LayerNormalization 17), got {opset}")
    if img_size % stride:
        raise ValueError(f"img_size ({img_size}) must be a multiple of the model stride ({stride})")
    from torch.export import Dim
    model = model.eval()
    x = torch.randn(2, 3, img_size, img_size)
    batch = Dim("batch", min=1, max=4096)
    h = stride * Dim("h_blocks", min=1, max=max_side // stride)
    w = stride * Dim("w_blocks", min=1, max=max_side // stride)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch, 2: h, 3: w}}, external_data=False, optimize=True)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return path


def check_onnx(
        model: nn.Module,
        path: str,
        shapes: Sequence[Tuple[int, int, int]] = ((1, 224, 224), (3, 160, 256)),
        atol: float = 1e-4,
        rtol: float = 1e-4,
        threads: int = 0,
) -> List[Dict[str, float]]:
    """Run the ONNX file in onnxruntime and compare with PyTorch on random images.

    Args:
        model (nn.Module): the exported model (eval mode).
        path (str): the .onnx file.
        shapes (Sequence[Tuple[int, int, int]]): (batch, height, width) to check.
        atol (float): absolute tolerance.
        rtol (float): relative tolerance.
        threads (int): onnxruntime intra-op threads (0: its default).

    Returns:
        List[Dict[str, float]]: per shape, the maximal absolute difference.

    Raises:
        ValueError: if an output differs beyond the tolerance.
    """
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = []
    g = torch.Generator().manual_seed(0)
    for b, hh, ww in shapes:
        x = torch.randn(b, 3, hh, ww, generator=g)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"onnxruntime output shape {got.shape} differs from PyTorch's {expected.shape} "
                             f"for input {tuple(x.shape)}")
        diff = float(np.abs(got - expected).max())
        results.append(dict(batch=b, height=hh, width=ww, max_abs_diff=diff))
        if not np.allclose(got, expected, atol=atol, rtol=rtol):
            raise ValueError(f"onnxruntime output differs from PyTorch by {diff:.2e} (> atol {atol}, rtol {rtol}) "
                             f"for input {tuple(x.shape)}")
    return results


def safetensors_record(model: nn.Module, info: Mapping[str, Any]) -> Dict[str, Any]:
    """The model record a safetensors export carries: the entries a classification training
    checkpoint records (``ClassificationTask.checkpoint_extra``) that describe the model and its
    input, from ``info`` (:func:`litvit.tools.viz.load_model`'s) and the model.

    Args:
        model (LIT): the model exported.
        info (Mapping): ``model``, ``model_kwargs``, ``img_size``, ``mean``, ``std``, and where
            known ``classes``, ``crop_pct``, ``interpolation``, ``data``.

    Returns:
        dict of plain (JSON-encodable) values.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    img = int(info["img_size"])
    kwargs = dict(info.get("model_kwargs", {}), num_classes=int(model.num_classes))
    kwargs.setdefault("img_size", img)
    record = dict(
        model=info["model"], model_kwargs=kwargs, img_size=img, input_size=[int(model.in_chans), *model.img_size],
        mean=list(info["mean"]), std=list(info["std"]),
        crop_pct=float(info.get("crop_pct", cfg.get("crop_pct", 0.875))),
        interpolation=str(info.get("interpolation", cfg.get("interpolation", "bicubic"))))
    if info.get("classes"):
        record["classes"] = list(info["classes"])
    if info.get("data"):
        record["data"] = str(info["data"])
    return plain(record)


def export_safetensors(model: nn.Module, path: str, record: Mapping[str, Any], version: str = "") -> str:
    """Write ``model``'s state dict and its model ``record`` (:func:`safetensors_record`) as a
    safetensors file, atomically (:func:`litvit.checkpoint.write_safetensors`).

    Returns:
        str: ``path``.
    """
    write_safetensors(model.state_dict(), path, task="classification", extra=record, version=version)
    return path


# the command-line functions that lived here, now in litvit.cli.export: their old import path stays
__getattr__ = moved_names(__name__, "litvit.cli.export", ('add_parsers', 'cmd_export'))
