"""Semantic FPN trains as the authors' mmseg 0.13 trains it: loss, gradients and initialisation.

``tests/data/official_dense/seg_train_*.npz`` hold what the authors' own ``forward_train`` computed
(``generate_seg_train.py`` there, not run by the suite) for the tiny Semantic FPN releases
``sem_fpn_lit_ti.npz`` / ``sem_fpn_lit_s.npz`` on a batch of two images whose labels hold ignored
pixels, in train mode (batch statistics; dropout and drop path off): the loss, the pixel accuracy,
a few parameters' gradients and the norm of all of them; and the initial weights their code gives
the neck and head at the paper's widths.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from litvit.models.official_dense import load_dense
from litvit.models.official_dense.backbone import backbone_state_dict
from litvit.models.official_dense.seg_train import segmentation_loss
from litvit.models.semantic_fpn import semantic_fpn

from helpers import TINY
from test_official_dense import Fixture

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "official_dense"
NAMES = ["sem_fpn_lit_ti", "sem_fpn_lit_s"]


def _reference(name):
    with np.load(DATA / f"seg_train_{name}.npz", allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    ref["record"] = json.loads(ref["record"].tobytes().decode())
    return ref


def _quiet(model: nn.Module) -> nn.Module:
    """Train mode (BatchNorms on batch statistics), dropout and drop path off, as the reference ran."""
    model.train()
    for m in model.modules():
        if type(m).__name__ in ("Dropout", "Dropout2d", "DropPath"):
            m.eval()
    return model


def _inputs(ref):
    mean = torch.tensor(ref["record"]["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ref["record"]["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(ref["pixels"]).permute(0, 3, 1, 2).float() - mean) / std  # B, H, W, 3 -> B, 3, H, W
    return x, torch.from_numpy(ref["labels"]).long()


def _litvit_name(key: str) -> str:
    if not key.startswith("backbone."):
        return key
    (mine,) = backbone_state_dict({key[len("backbone."):]: torch.zeros(1)})
    return "backbone." + mine


@pytest.fixture(scope="module", params=NAMES)
def trained(request, tmp_path_factory):
    """A release's model after one forward_train + backward on the reference batch."""
    name = request.param
    ref = _reference(name)
    model = _quiet(load_dense(Fixture(name).write_release(tmp_path_factory.mktemp(name) / f"{name}.pth")))
    x, labels = _inputs(ref)
    out = model.forward_train(x, labels)
    out["loss_seg"].backward()
    return name, ref, model, out, x, labels


def test_loss_and_accuracy_are_mmsegs(trained):
    name, ref, model, out, *_ = trained
    assert (ref["labels"] == 255).any() and ref["labels"].shape[-2:] != tuple(model(_inputs(ref)[0]).shape[-2:])
    assert out["loss_seg"].item() == pytest.approx(float(ref["loss"]), rel=1e-5)
    assert out["acc_seg"].item() == pytest.approx(float(ref["acc"]), abs=1e-4)
    assert not out["acc_seg"].requires_grad


def test_gradients_are_mmsegs(trained):
    name, ref, model, *_ = trained
    params = dict(model.named_parameters())
    for key in ref["record"]["grad_keys"]:
        grad = params[_litvit_name(key)].grad
        expected = torch.from_numpy(ref[f"grad/{key}"])
        assert grad is not None, key
        # float32 through the backbone and back: measured at most 6.4e-5 of the tensor's largest entry
        err = (grad - expected).abs().max().item() / expected.abs().max().item()
        assert err < 2e-4, (key, err)
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params.values() if p.grad is not None))
    assert norm.item() == pytest.approx(float(ref["grad_norm"]), rel=1e-4)


def test_loss_averages_over_every_pixel(trained):
    """mmseg's mean counts the ignored pixels (as 0): the mean over the labelled pixels alone, the
    reduction litvit used before, is not what the authors trained with."""
    name, ref, model, out, x, labels = trained
    with torch.no_grad():
        logits = model(x)
        valid = (labels != 255).sum().item()
        assert valid < labels.numel()
        over_labelled = segmentation_loss(logits, labels)["loss_seg"] * labels.numel() / valid
    assert over_labelled.item() != pytest.approx(float(ref["loss"]), rel=1e-3)
    # all pixels ignored: 0, not 0 / 0
    empty = segmentation_loss(logits, torch.full_like(labels, 255))
    assert empty["loss_seg"].item() == 0 and empty["acc_seg"].item() == 0


def test_loss_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"expected logits \(B, K, h, w\) and labels \(B, H, W\), got"):
        segmentation_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 16, 16, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_initialisation_is_mmsegs(name):
    """litvit's Semantic FPN at the paper's widths (256 / 128) gets the authors' initial weights:
    kaiming-normal (fan_out) convs with zero bias, also in the FPN (mmseg 0.13 never calls the FPN's
    xavier init_weights), BatchNorms 1 / 0, the classifier normal(0, 0.01)."""
    init = _reference(name)["record"]["init"]
    torch.manual_seed(0)
    model = semantic_fpn("lit_ti" if name.endswith("ti") else "lit_s", num_classes=150,
                         backbone_kwargs=dict(TINY))
    mine = dict(model.named_modules())
    assert {k for k, m in mine.items() if k.startswith(("neck.", "decode_head."))
            and isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))} == set(init)
    for key, e in init.items():
        m = mine[key]
        w = m.weight.detach().double()
        if e["type"] == "Conv2d":
            assert list(w.shape[:1]) + list(w.shape[2:]) == e["shape"][:1] + e["shape"][2:], key
            assert w.std().item() == pytest.approx(e["std"], rel=0.08), key
            assert w.abs().max().item() > 2.5 * w.std().item(), key  # normal, not uniform (at most 1.73 std)
        else:
            assert torch.equal(w, torch.ones_like(w)) and e["std"] == 0 and e["mean"] == 1, key
        if e["bias_max_abs"] is None:
            assert m.bias is None, key
        else:
            assert e["bias_max_abs"] == 0 and not m.bias.detach().any(), key
