"""What several test modules share: tiny model widths, a helper that gives a model non-trivial weights,
the parameter decomposition of a dense model, and a small image folder of digits.

Imported as ``from helpers import TINY, randomize_`` (pytest puts this folder on ``sys.path``);
``conftest.py`` keeps only fixtures and hooks.
"""
from pathlib import Path

import torch

__all__ = ["TINY", "randomize_", "forward_by_hand", "assert_dense_parameters_add_up", "image_folder",
           "perfect_coco_results"]

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


def forward_by_hand(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A LIT or LITv2 classifier's logits by a loop over its parts, as the paper composes them: stem;
    per stage token merging, class token, absolute position embedding resized bicubically to the
    map, blocks; final norm; class-token or average pooling; head. Runs with gradients enabled, so
    that no cached position embedding or relative bias of the model's own forward is used."""
    from litvit.models.pos_embed import resize_abs_pos_embed
    with torch.enable_grad():
        x, feat_size = model.patch_embed(x)
        for stage in model.stages:
            if stage.downsample is not None:
                x, feat_size = stage.downsample(x, feat_size)
            if stage.cls_token is not None:
                x = torch.cat((stage.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            if stage.pos_embed is not None:
                x = x + resize_abs_pos_embed(stage.pos_embed, stage.grid_size, feat_size, stage.num_prefix_tokens)
            for blk in stage.blocks:
                x = blk(x, feat_size)
        x = model.norm(x)
        x = x[:, 0] if model.global_pool == "token" else x[:, model.num_prefix_tokens:].mean(dim=1)
        return model.head(x)


def assert_dense_parameters_add_up(model: torch.nn.Module, backbone: str, task: str, n: int, n_body: int) -> None:
    """A dense model's count ``n`` and its backbone body's ``n_body`` (from ``parameter_table``), summed
    from independent parts: the classifier's trunk (LIT without head, final norm and dropped class
    token) plus the out-norms, then the FPN and heads. ``model`` is built on the meta device."""
    from litvit.models import create_model
    from litvit.models.backbone import default_backbone_img_size
    with torch.device("meta"):
        classifier = create_model(backbone, num_classes=0, img_size=default_backbone_img_size(backbone, task) or 224)
    body, prefix = (model.backbone.body, "backbone.body.") if hasattr(model.backbone, "body") \
        else (model.backbone, "backbone.")
    trunk = sum(p.numel() for k, p in classifier.named_parameters()
                if not k.startswith("norm.") and not k.endswith("cls_token"))
    out_norms = sum(2 * classifier.embed_dims[int(i)] for i in body.out_norms)
    assert n_body == trunk + out_norms, (backbone, task)
    rest = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(prefix))
    assert n == n_body + rest


def image_folder(root: Path, n: int = 4) -> Path:
    """``root/{train,val}/<class>/<i>.png``: the first ``n`` validation digits as PNG files in both splits."""
    from litvit.data import DigitsDataset
    ds = DigitsDataset("val")
    for split in ("train", "val"):
        for i in range(n):
            d = root / split / str(ds.targets[i])
            d.mkdir(parents=True, exist_ok=True)
            ds.image(i).save(d / f"{i}.png")
    return root


def perfect_coco_results(ds):
    """The ground truth of a ``CocoDetection`` (``with_masks=True``) fed back as detections (boxes and
    masks, score 1): ``(coco_results records, image ids)``, for AP-100 checks."""
    from litvit.metrics import coco_results
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        outputs.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                            masks=t["masks"][:, None].float()))
        ids.append(t["image_id"])
    return coco_results(outputs, ids, [0] + ds.cat_ids), ids


class Killed(Exception):
    """Raised by :func:`dies_at`'s task: a run stopped as a kill would stop it (no clean-up, no save)."""


def dies_at(task_class):
    """A subclass of the classification ``task_class`` whose ``train_step`` raises :class:`Killed`
    when micro-batch ``at`` starts (counted from 1): ``dies_at(ClassificationTask)(cfg, at=34)``."""

    class DiesAt(task_class):
        def __init__(self, cfg, at):
            super().__init__(cfg)
            self.at, self.calls = at, 0

        def train_step(self, model, batch, device):
            self.calls += 1
            if self.calls == self.at:
                raise Killed
            return super().train_step(model, batch, device)

    return DiesAt


def toy_task_class():
    """A minimal :class:`litvit.engine.Task` (name ``toy``): a linear classifier of 4 features into 2
    classes on 64 fixed points (class = sign of the first feature), for engine tests; ``score`` is
    the accuracy over the 64 points."""
    from torch import nn
    from litvit.engine import Task

    class Toy(Task):
        name = "toy"

        def build_model(self):
            return nn.Linear(4, 2)

        def build_datasets(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 4, generator=g)
            ds = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
            return ds, ds

        def train_step(self, model, batch, device):
            x, y = batch
            return nn.functional.cross_entropy(model(x), y), {}

        def evaluate(self, model, loader, device, dist):
            return {"score": sum(int((model(x).argmax(1) == y).sum()) for x, y in loader) / 64}

    return Toy
