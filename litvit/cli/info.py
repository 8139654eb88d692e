"""``litvit models``: every registered model with its parameter count (``litvit demo`` lives in
:mod:`litvit.cli.classification`: it trains LIT on the embedded digits)."""
import argparse
import torch

from ..models import MODEL_NAMES, create_model
from ..utils import count_parameters


def cmd_models(args: argparse.Namespace) -> int:
    print(f"{'model':<22}{'params':>14}")
    for name in MODEL_NAMES:
        with torch.device("meta"):  # counting needs shapes only
            model = create_model(name)
        print(f"{name:<22}{count_parameters(model):>14,}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models and their parameter counts")
    p.set_defaults(func=cmd_models)
