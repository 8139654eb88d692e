"""``litvit models`` and ``litvit demo``: what is registered, and a first forward on a real photo."""
import argparse
import time

import torch

from ..models import MODEL_NAMES, create_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cmd_models(args: argparse.Namespace) -> int:
    print(f"{'model':<22}{'params':>14}")
    for name in MODEL_NAMES:
        with torch.device("meta"):  # counting needs shapes only
            model = create_model(name)
        print(f"{name:<22}{count_parameters(model):>14,}")
    return 0


def load_sample_photo(size: int = 224) -> torch.Tensor:
    """A real photo shipped by scikit-learn (``china.jpg``), resized and normalised: (1, 3, size, size)."""
    from sklearn.datasets import load_sample_image
    from PIL import Image
    from timm.data import create_transform
    img = Image.fromarray(load_sample_image("china.jpg"))
    tf = create_transform(input_size=(3, size, size), interpolation="bicubic", crop_pct=0.875)
    return tf(img).unsqueeze(0)


def cmd_demo(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    n = count_parameters(model)
    x = load_sample_photo(args.img_size)
    print(f"model {args.model}: {n:,} parameters; input {tuple(x.shape)} (scikit-learn's china.jpg)")
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(x)
        dt = time.perf_counter() - t0
    feats = model.forward_intermediates(x, intermediates_only=True)
    print(f"logits {tuple(logits.shape)} in {dt * 1000:.0f} ms (random weights: classes are meaningless)")
    print("stage maps: " + ", ".join(f"{tuple(f.shape[1:])}" for f in feats))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models and their parameter counts")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("demo", help="build a LIT model and run it on a real photo")
    p.add_argument("--model", default="lit_ti", choices=MODEL_NAMES)
    p.add_argument("--img-size", type=int, default=224)
    p.set_defaults(func=cmd_demo)
