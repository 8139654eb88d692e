"""Fine-tuning a detector from one of the authors' releases (``detect train --init-checkpoint``).

A litvit detector and a release are the same kind of object: the release written here is a tiny
litvit RetinaNet / Mask R-CNN saved under the authors' names in mmcv's format (backbone entries in
their LIT-Ti layout, ``meta`` with ``CLASSES`` and ``mmdet_version``), which ``load_dense`` reads
as it reads theirs.
"""
import json

import numpy as np
import pytest
import torch

import litvit.detection
from litvit.cli import main
from litvit.models.convert import litvit_to_official
from litvit.models.official_dense import init_from_checkpoint, load_dense

from test_detection import make_coco

pytestmark = pytest.mark.unit

NAMES = tuple(f"thing{i}" for i in range(10))
# a small LIT-Ti the authors' LIT_Ti could hold: its heads are fixed at 1-2-5-8
ARCH = dict(img_size=64, embed_dims=(8, 16, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 8))
KW = dict(backbone="lit_ti", backbone_kwargs=ARCH, fpn_channels=16, min_size=(64,), max_size=96)


def as_release(model) -> dict:
    """``model``'s weights as the authors' mmdet 2.11 save them: their backbone names, the rest as is."""
    sd = model.state_dict()
    body = {k[len("backbone.model."):]: v for k, v in sd.items() if k.startswith("backbone.model.")}
    out = {f"backbone.{k}": v for k, v in litvit_to_official(body, "pvt").items()}
    out.update({f"backbone.norm{k.split('.')[2]}.{k.split('.')[3]}": v for k, v in sd.items()
                if k.startswith("backbone.out_norms.")})
    out.update({k: v for k, v in sd.items() if not k.startswith("backbone.")})
    return dict(meta=dict(mmdet_version="2.11.0", CLASSES=NAMES), state_dict=out)


@pytest.fixture(scope="module", params=["retinanet", "mask_rcnn"])
def release(request, tmp_path_factory):
    torch.manual_seed(1)
    model = litvit.detection.build_detector(request.param, num_classes=10, **KW)
    with torch.no_grad():  # weights that detect: the class prior 0.01 alone scores nothing above 0.05
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if request.param == "retinanet":
            model.bbox_head.retina_cls.bias.zero_()
        else:
            model.roi_head.bbox_head.fc_cls.bias[:10] += 3.0  # background is the last logit
    path = tmp_path_factory.mktemp("release") / f"{request.param}_tiny.pth"
    torch.save(as_release(model), path)
    return request.param, path, model


def test_same_classes_give_the_release_itself(release):
    """Every tensor copied, the release's class names adopted, the same detections as the release
    loaded by ``load_dense`` (at the same test scale)."""
    arch, path, source = release
    model = litvit.detection.build_detector(arch, num_classes=10, **KW)
    line = init_from_checkpoint(model, str(path))
    assert line == f"init-checkpoint {path.name}: {len(source.state_dict())} tensors copied (10 classes)"
    assert model.classes == NAMES
    ref = load_dense(path)
    assert type(ref) is type(model)
    ref.pipeline = model.pipeline  # the file holds no config: load_dense takes the authors' (1333, 800)
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    a, b = model.eval().predict(image), ref.predict(image)
    assert len(a["boxes"]) > 0 and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_other_classes_get_a_new_classifier(release):
    arch, path, source = release
    model = litvit.detection.build_detector(arch, num_classes=3, **KW)
    layers = {"retinanet": "bbox_head.retina_cls",
              "mask_rcnn": "roi_head.bbox_head.fc_cls, roi_head.bbox_head.fc_reg, roi_head.mask_head.conv_logits"}
    assert init_from_checkpoint(model, str(path)) == \
        f"init-checkpoint {path.name}: 10 classes, the data has 3: new classifier ({layers[arch]})"
    ours, theirs = model.state_dict(), source.state_dict()
    for key, value in ours.items():
        if not key.startswith(tuple(layers[arch].split(", "))):
            assert torch.equal(value, theirs[key]), key


@pytest.mark.cli
def test_detect_train_fine_tunes_a_release(release, tmp_path, capsys):
    """``detect train --init-checkpoint`` on data of 2 classes: one line, then training; a missing
    file is one error line."""
    arch, path, _ = release
    img_dir, ann = make_coco(tmp_path)
    flags = ["detect", "train", "--arch", arch, "--backbone", "lit_ti", "--min-size", "64", "--max-size", "96",
             "--train-images", str(img_dir),
             "--train-ann", str(ann), "--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--workers", "0",
             "--no-progress", "--device", "cpu", "--warmup-iters", "0"]
    rc = main(flags + ["--init-checkpoint", str(path), "--output", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"init-checkpoint {path.name}: 10 classes, the data has 2: new classifier" in out
    assert (tmp_path / "run" / "last.pth").is_file()
    # that run's checkpoint starts the next: the same classes, every tensor
    assert main(flags + ["--init-checkpoint", str(tmp_path / "run" / "last.pth"), "--output", str(tmp_path / "r1")]) == 0
    assert "last.pth: " in capsys.readouterr().out
    rc = main(flags + ["--init-checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.pth: no such file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.cli
@pytest.mark.parametrize("name,backbone", [("retinanet_lit_ti", "lit_ti"), ("mask_rcnn_lit_s", "lit_s")])
def test_fine_tune_a_release_of_the_authors_code(name, backbone, tmp_path, capsys):
    """A tiny release the authors' mmdet 2.11 wrote (``tests/data/official_dense``: RetinaNet LIT-Ti
    with widths 4-8-10-16 and two stacked convs; Mask R-CNN LIT-S with heads x-x-1-1 and MLP ratio
    1.5) fine-tunes with no flag describing it, and the fine-tuned checkpoint evaluates and
    predicts (its model rebuilt from its weights)."""
    from test_official_dense import Fixture
    fx = Fixture(name)
    release = fx.write_release(tmp_path / f"{name}.pth")
    arch = name.rsplit("_lit", 1)[0]
    img_dir, ann = make_coco(tmp_path)
    out = tmp_path / "run"
    rc = main(["detect", "train", "--backbone", backbone, "--init-checkpoint", str(release),
               "--train-images", str(img_dir), "--train-ann", str(ann), "--val-images", str(img_dir),
               "--val-ann", str(ann), "--min-size", "64", "--max-size", "96", "--epochs", "1", "--max-steps", "2",
               "--batch-size", "2", "--workers", "0", "--no-progress", "--device", "cpu", "--warmup-iters", "0",
               "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    n = len(fx.meta()["CLASSES"])
    assert f"init-checkpoint {name}.pth: {n} classes, the data has 2: new classifier" in text
    assert f"detection: {'MaskRCNN' if arch == 'mask_rcnn' else 'RetinaNet'}" in text  # --arch taken from the file
    ckpt = torch.load(out / "last.pth", weights_only=False)
    head = "bbox_head.retina_cls.weight" if arch == "retinanet" else "roi_head.bbox_head.fc_cls.weight"
    ref = fx.state_dict()
    assert ckpt["model"][head].shape[0] == (2 * 9 if arch == "retinanet" else 3)
    assert ckpt["model"]["neck.lateral_convs.0.conv.weight"].shape == ref["neck.lateral_convs.0.conv.weight"].shape
    rc = main(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--val-images", str(img_dir),
               "--val-ann", str(ann), "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0 and "bbox_AP" in capsys.readouterr().out
    rc = main(["detect", "predict", "--checkpoint", str(out / "last.pth"), str(img_dir / "img0.png"),
               "--output", str(tmp_path / "pred")])
    assert rc == 0 and (tmp_path / "pred" / "detections.json").is_file()
    # a flag that would describe the architecture is refused, as is the other family's recipe
    rc = main(["detect", "train", "--backbone", backbone, "--fpn-channels", "8", "--init-checkpoint", str(release),
               "--train-images", str(img_dir), "--train-ann", str(ann), "--output", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "leave out --fpn-channels" in err[0]
    other = "lit_s" if backbone == "lit_ti" else "lit_ti"
    rc = main(["detect", "train", "--backbone", other, "--init-checkpoint", str(release),
               "--train-images", str(img_dir), "--train-ann", str(ann), "--output", str(tmp_path / "r3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"give --backbone {backbone}" in err[0]


@pytest.mark.cli
def test_a_litvit_checkpoint_with_its_own_heads_starts_a_run(tmp_path, capsys):
    """A litvit detector whose LIT-Ti heads are not the authors' 1-2-5-8 (the weights do not tell
    heads): trained by name, then fine-tuned from, then evaluated — the heads travel in the record."""
    img_dir, ann = make_coco(tmp_path)
    tiny = dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    common = ["--train-images", str(img_dir), "--train-ann", str(ann), "--min-size", "64", "--max-size", "96",
              "--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
              "--device", "cpu", "--warmup-iters", "0"]
    assert main(["detect", "train", "--backbone-kwargs", json.dumps(tiny), "--fpn-channels", "16",
                 "--output", str(tmp_path / "a")] + common) == 0
    assert main(["detect", "train", "--init-checkpoint", str(tmp_path / "a" / "last.pth"),
                 "--output", str(tmp_path / "b")] + common) == 0
    assert "tensors copied (2 classes)" in capsys.readouterr().out
    record = torch.load(tmp_path / "b" / "last.pth", weights_only=False)["extra"]
    assert record["backbone_heads"][2:] == [3, 4]
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "b" / "last.pth"), "--val-images", str(img_dir),
                 "--val-ann", str(ann), "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
