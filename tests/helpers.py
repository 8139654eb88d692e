"""What several test modules share: tiny model widths and a helper that gives a model non-trivial weights.

Imported as ``from helpers import TINY, randomize_`` (pytest puts this folder on ``sys.path``);
``conftest.py`` keeps only fixtures and hooks.
"""
import torch

__all__ = ["TINY", "randomize_"]

# Tiny widths for behaviour tests (the full sizes are only built on the meta device to count parameters).
TINY = dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 2, 2, 1), num_heads=(1, 2, 3, 4))


def randomize_(model: torch.nn.Module, offset_scale: float = 0.5) -> torch.nn.Module:
    """Give every parameter and BatchNorm statistic non-trivial values (offset predictors too)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.copy_(torch.randn(p.shape, generator=g) * offset_scale)
            elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_layer.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(1 + 0.5 * torch.rand(b.shape, generator=g))
    return model
