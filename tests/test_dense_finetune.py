"""Fine-tuning a dense model from the authors' release or a litvit checkpoint (``--init-checkpoint``).

The release is the tiny Semantic FPN the authors' code made (``tests/data/official_dense/
sem_fpn_lit_ti.npz``: LIT-Ti widths 4-8-10-16, depths 1-1-2-1, FPN and head width 8, ADE20K's 150
classes), written as mmcv's ``save_checkpoint`` writes it.
"""
import json

import pytest
import torch

from litvit.cli import main
from litvit.errors import CheckpointMismatchError
from litvit.models.official_dense import init_from_checkpoint, load_dense
from litvit.models.semantic_fpn import semantic_fpn

from test_official_dense import Fixture
from test_segmentation import make_ade

pytestmark = pytest.mark.unit

ARCH = dict(embed_dims=(4, 8, 10, 16), depths=(1, 1, 2, 1))  # the release's backbone
ARCH_FLAGS = ["--backbone", "lit_ti", "--backbone-kwargs", json.dumps(ARCH), "--fpn-channels", "8",
              "--head-channels", "8"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    fx = Fixture("sem_fpn_lit_ti")
    return fx.write_release(tmp_path_factory.mktemp("release") / "sem_fpn_lit_ti.pth"), fx


def _model(num_classes, fpn_channels=8):
    torch.manual_seed(0)
    return semantic_fpn("lit_ti", num_classes=num_classes, backbone_kwargs=dict(ARCH), fpn_channels=fpn_channels,
                        channels=8)


def test_same_classes_give_the_release_itself(release):
    """With the release's 150 classes every tensor is copied, the class names and palette come
    along, and the litvit model predicts what the loaded release predicts."""
    path, fx = release
    model = _model(150)
    assert init_from_checkpoint(model, str(path)) == "init-checkpoint sem_fpn_lit_ti.pth: 143 tensors copied " \
                                                     "(150 classes)"
    ref = load_dense(path)
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.classes == ref.classes and model.classes[:2] == ("wall", "building")
    assert model.palette == ref.palette
    image = fx.image()
    assert torch.equal(model.eval().predict(image)["labels"], ref.predict(image)["labels"])


def test_other_classes_get_a_new_classifier(release):
    path, _ = release
    model = _model(19)
    fresh = model.decode_head.conv_seg.weight.detach().clone()
    line = init_from_checkpoint(model, str(path))
    assert line == "init-checkpoint sem_fpn_lit_ti.pth: 150 classes, the data has 19: new classifier " \
                   "(decode_head.conv_seg)"
    assert torch.equal(model.decode_head.conv_seg.weight, fresh)  # the initialisation of a new model
    assert model.classes[0] == "class_0" and model.palette is None
    ref = load_dense(path).state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("decode_head.conv_seg."):
            assert torch.equal(value, ref[key]), key


def test_a_litvit_checkpoint_starts_a_run_too(release, tmp_path):
    """A ``segment train`` checkpoint (``model`` + its record) is read like a release."""
    path, _ = release
    source = _model(150)
    init_from_checkpoint(source, str(path))
    ckpt = tmp_path / "last.pth"
    torch.save(dict(model=source.state_dict(), task="segmentation",
                    extra=dict(class_names=list(source.classes), palette=source.palette)), ckpt)
    model = _model(150)
    assert init_from_checkpoint(model, str(ckpt)).endswith("143 tensors copied (150 classes)")
    assert model.classes == source.classes and torch.equal(model.decode_head.conv_seg.bias,
                                                           source.decode_head.conv_seg.bias)


def test_what_does_not_fit_is_one_error(release, tmp_path):
    path, _ = release
    with pytest.raises(CheckpointMismatchError, match=r"sem_fpn_lit_ti.pth \(release\) does not fit the model: "
                                                      r"mis-shaped keys: neck\."):
        init_from_checkpoint(_model(150, fpn_channels=16), str(path))
    old = tmp_path / "old.pth"  # litvit's earlier Semantic FPN
    torch.save(dict(model={"backbone.body.model.patch_embed.proj.weight": torch.zeros(4, 3, 4, 4),
                           "head.branches.0.0.weight": torch.zeros(8, 8, 3, 3),
                           "head.classifier.weight": torch.zeros(3, 8, 1, 1)}, task="segmentation", extra={}), old)
    with pytest.raises(CheckpointMismatchError, match="earlier Semantic FPN definition"):
        init_from_checkpoint(_model(3), str(old))
    with pytest.raises(FileNotFoundError, match="init checkpoint not found: nowhere.pth"):
        init_from_checkpoint(_model(3), "nowhere.pth")


def test_a_release_by_name(release, monkeypatch):
    """A release's name is fetched as ``load_dense`` fetches it (``release_file``: torch hub's cache)."""
    import litvit.models.official_dense.load as load
    path, _ = release
    asked = []
    monkeypatch.setattr(load, "release_file", lambda name, progress=True: asked.append(name) or str(path))
    line = init_from_checkpoint(_model(7), "sem_fpn_lit_ti")
    assert asked == ["sem_fpn_lit_ti"]
    assert line == "init-checkpoint sem_fpn_lit_ti.pth: 150 classes, the data has 7: new classifier " \
                   "(decode_head.conv_seg)"


@pytest.mark.cli
def test_cli_fine_tunes_a_release(release, tmp_path, capsys):
    """``segment train --init-checkpoint``: the one line, then training, with no flag describing the
    release's tiny architecture (widths 4-8-10-16, FPN and head 8 wide); architecture flags, a
    backbone of the other family and a missing file are one error line each."""
    path, _ = release
    ade = make_ade(tmp_path / "ade", n_train=2, n_val=1)
    common = ["segment", "train", "--data", str(ade), "--num-classes", "3", "--iters", "1", "--batch-size", "2",
              "--crop-size", "64", "--scale", "64", "32", "--workers", "0", "--no-progress", "--device", "cpu",
              "--threads", "1"]
    assert main(common + ["--init-checkpoint", str(path), "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("init-checkpoint")]
    assert lines == ["init-checkpoint sem_fpn_lit_ti.pth: 150 classes, the data has 3: new classifier "
                     "(decode_head.conv_seg)"]
    assert "no --pretrained" not in out and (tmp_path / "run" / "last.pth").is_file()
    # the run's checkpoint starts the next one: same classes, every tensor
    assert main(common + ["--init-checkpoint", str(tmp_path / "run" / "last.pth"),
                          "--output", str(tmp_path / "run2")]) == 0
    assert "last.pth: 143 tensors copied (3 classes)" in capsys.readouterr().out
    # no flag describes the architecture: it is the checkpoint's, and a flag that would is refused
    assert main(common + ARCH_FLAGS + ["--init-checkpoint", str(path), "--output", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leave out --fpn-channels, --head-channels, --backbone-kwargs" in err[0]
    # a LIT-S checkpoint with LIT-Ti's recipe rules is refused
    assert main(common + ["--backbone", "lit_s", "--init-checkpoint", str(path), "--output", str(tmp_path / "r5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LIT-Ti (lit_ti) backbone; give --backbone lit_ti" in err[0]
    assert main(common + ["--init-checkpoint", str(tmp_path / "none.pth"), "--output", str(tmp_path / "r4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-checkpoint" in err[0] and "none.pth" in err[0]


@pytest.mark.cli
def test_eval_refuses_a_checkpoint_of_the_earlier_definition(tmp_path, capsys):
    ade = make_ade(tmp_path / "ade", n_train=1, n_val=1)
    old = tmp_path / "old.pth"
    torch.save(dict(model={"backbone.body.model.patch_embed.proj.weight": torch.zeros(4, 3, 4, 4),
                           "backbone.fpn.inner_blocks.0.0.weight": torch.zeros(8, 4, 1, 1),
                           "head.branches.0.0.weight": torch.zeros(8, 8, 3, 3)},
                    task="segmentation",
                    extra=dict(backbone="lit_ti", num_classes=3, reduce_zero_label=True, crop_size=64,
                               scale=[64, 32], backbone_kwargs=dict(ARCH), fpn_channels=8, head_channels=8,
                               class_names=["a", "b", "c"])), old)
    assert main(["segment", "eval", "--checkpoint", str(old), "--data", str(ade), "--workers", "0",
                 "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "earlier Semantic FPN definition" in err[0] and "train again" in err[0]
