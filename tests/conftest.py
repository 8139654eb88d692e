import pytest
import torch

torch.set_num_threads(1)  # the suite runs two workers on two cores

# Tiny widths for behaviour tests (the full sizes are only built on the meta device to count parameters).
TINY = dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 2, 2, 1), num_heads=(1, 2, 3, 4))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
