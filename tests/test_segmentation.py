"""Segmentation: Semantic FPN with a LIT backbone on a tiny ADE20K-format set generated here."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import litvit.models.official_dense
import litvit.segmentation
from litvit.cli import main
from litvit.dense_data import IGNORE_INDEX, SegEvalTransform, SegmentationDataset, SegTrainTransform, segmentation_collate
from litvit.segmentation import SemanticFPNHead, confusion_matrix, segmentation_metrics
from litvit.tasks.segmentation import SegmentationTask

from helpers import TINY, assert_dense_parameters_add_up

pytestmark = pytest.mark.unit

NUM_CLASSES = 3  # raw label values: 0 = "other" (ignored), 1 = background, 2 = disc, 3 = bar


def make_ade(root, n_train=6, n_val=3, size=(72, 90), seed=0):
    """ADE20K layout: images/{training,validation}/*.jpg and annotations/{...}/*.png."""
    rng = np.random.default_rng(seed)
    for split, n in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            H, W = size
            img = Image.fromarray(rng.integers(90, 130, (H, W, 3), dtype=np.uint8))
            lab = Image.new("L", (W, H), 1)
            di, dl = ImageDraw.Draw(img), ImageDraw.Draw(lab)
            x, y, r = int(rng.integers(15, W - 15)), int(rng.integers(15, H - 15)), int(rng.integers(8, 14))
            di.ellipse([x - r, y - r, x + r, y + r], fill=(220, 30, 30))
            dl.ellipse([x - r, y - r, x + r, y + r], fill=2)
            bx = int(rng.integers(0, W - 12))
            di.rectangle([bx, 0, bx + 8, H - 1], fill=(20, 20, 200))
            dl.rectangle([bx, 0, bx + 8, H - 1], fill=3)
            dl.rectangle([0, 0, 4, 4], fill=0)  # a patch of "other"
            img.save(root / "images" / split / f"{split}_{i}.jpg", quality=95)
            lab.save(root / "annotations" / split / f"{split}_{i}.png")
    return root


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return make_ade(tmp_path_factory.mktemp("ade"))


def tiny_task(ade, **kw):
    return SegmentationTask(backbone="lit_ti", data=str(ade), num_classes=NUM_CLASSES, iters=10, crop_size=64,
                            scale=(128, 64), backbone_kwargs=dict(TINY, drop_path_rate=0.0), fpn_channels=32,
                            head_channels=32, **kw)


def test_confusion_matrix_and_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = confusion_matrix(pred, target, 3)
    # rows = labels, columns = predictions; the ignored pixel is skipped
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    m = segmentation_metrics(cm)
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]  # TP / (row + column - TP)
    assert m["mIoU"] == pytest.approx(100 * np.mean(iou))
    assert m["aAcc"] == pytest.approx(100 * 4 / 7)
    assert m["mAcc"] == pytest.approx(100 * np.mean([1 / 2, 2 / 3, 1 / 2]))
    # a class absent from labels and predictions is left out of the mean
    cm4 = torch.zeros(4, 4, dtype=torch.long)
    cm4[:3, :3] = cm
    assert segmentation_metrics(cm4)["mIoU"] == pytest.approx(m["mIoU"])
    with pytest.raises(ValueError, match="label 5 is outside the 3 classes"):
        confusion_matrix(pred, torch.full_like(target, 5), 3)


def test_dataset_reduce_zero_label(ade):
    ds = SegmentationDataset(str(ade), "training", NUM_CLASSES)
    image, label = ds[0]
    raw = np.asarray(Image.open(ds.samples[0][1]))
    assert image.shape == (3, 72, 90)
    assert (label[:5, :5] == IGNORE_INDEX).all()  # raw 0 -> ignore
    assert torch.equal(label[raw == 2], torch.full(((raw == 2).sum(),), 1))  # raw v -> v - 1
    assert set(label.unique().tolist()) == {0, 1, 2, IGNORE_INDEX}
    raw_ds = SegmentationDataset(str(ade), "training", 4, reduce_zero_label=False)
    assert set(raw_ds[0][1].unique().tolist()) == {0, 1, 2, 3}


def test_train_transform_crops_and_pads(ade):
    ds = SegmentationDataset(str(ade), "training", NUM_CLASSES, SegTrainTransform(64, scale=(128, 64)))
    images, labels = segmentation_collate([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and labels.shape == (3, 64, 64)
    ev = SegmentationDataset(str(ade), "validation", NUM_CLASSES, SegEvalTransform(scale=(128, 64)))
    image, label = ev[0]
    assert image.shape[-2:] == (64, 80) and label.shape == (72, 90)  # resized image, full-size label


def test_semantic_fpn_shapes_and_branches():
    """SemanticFPNHead is mmseg's FPNHead (the authors' module names); the model gives stride-4
    logits, ``encode_decode`` the logits at the input's size, whatever the size."""
    head = SemanticFPNHead([256] * 4, 128, 150)
    # Kirillov et al.: 1, 1, 2, 3 conv blocks on strides 4, 8, 16, 32
    n_convs = [sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) for b in head.scale_heads]
    assert n_convs == [1, 1, 2, 3]
    model = litvit.segmentation.semantic_fpn("lit_ti", num_classes=5, backbone_kwargs=dict(TINY), fpn_channels=32,
                                             channels=32).eval()
    assert isinstance(model, litvit.models.official_dense.SemanticFPN)
    assert [n for n, _ in model.named_children()] == ["backbone", "neck", "decode_head"]
    for size in ((64, 64), (70, 101), (33, 47)):  # multiples of 32 and not
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, size[0] // 4, size[1] // 4)
        assert model.encode_decode(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_training_reduces_loss(ade):
    torch.manual_seed(0)
    task = tiny_task(ade)
    model = task.build_model().train()
    train, _ = task.build_datasets()
    batch = segmentation_collate([train[i] for i in range(2)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss, _ = task.train_step(model, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses


def test_evaluate_matches_hand_confusion_matrix(ade):
    """Task.evaluate's mIoU equals the metrics of a confusion matrix built here with numpy."""
    from litvit.engine import DistInfo
    task = tiny_task(ade)
    torch.manual_seed(0)
    model = task.build_model().eval()
    _, val = task.build_datasets()
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=segmentation_collate)
    metrics = task.evaluate(model, loader, torch.device("cpu"), DistInfo())
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(val)):
            image, label = val[i]  # 8-bit pixels: the model's own test pipeline resizes them
            pred = model.predict(image.numpy())["labels"].numpy()
            lab = label.numpy()
            for t, p in zip(lab.ravel(), pred.ravel()):
                if t != IGNORE_INDEX:
                    cm[t, p] += 1
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert metrics["mIoU"] == pytest.approx(100 * iou.mean(), abs=1e-6)
    assert metrics["aAcc"] == pytest.approx(100 * tp.sum() / cm.sum(), abs=1e-6)
    assert metrics["score"] == metrics["mIoU"]


@pytest.mark.cli
@pytest.mark.slow
def test_cli_train_eval_predict(ade, tmp_path, capsys):
    out = tmp_path / "run"
    names = tmp_path / "names.txt"
    names.write_text("background\ndisc\nbar\n")
    rc = main(["segment", "train", "--data", str(ade), "--backbone", "lit_ti", "--num-classes", str(NUM_CLASSES),
               "--class-names", str(names),
               "--iters", "4", "--batch-size", "2", "--crop-size", "64", "--scale", "128", "64",
               "--fpn-channels", "32", "--backbone-kwargs", json.dumps(TINY), "--workers", "0", "--no-progress",
               "--output", str(out), "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "4 iterations = 2 epoch(s)" in text and (out / "best.pth").is_file()
    # the banner says true things: DTM's offset predictors counted, how the lr was chosen
    assert "(0 offset-predictor)" not in text and "in DTM offset predictors)" in text
    assert "unscaled" not in text and ("as given, not scaled by the batch" in text or "x global batch" in text)
    epoch_line = next(ln for ln in text.splitlines() if ln.startswith("epoch 2/2"))
    assert re.search(r"val_mIoU \d+\.\d\d%", epoch_line) and re.search(r"val_aAcc \d+\.\d\d%", epoch_line)
    rc = main(["segment", "eval", "--checkpoint", str(out / "last.pth"), "--data", str(ade), "--workers", "0",
               "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "mIoU" in text and "disc" in text  # per-class table with the names
    img = ade / "images" / "validation" / "validation_0.jpg"
    rc = main(["segment", "predict", "--checkpoint", str(out / "last.pth"), str(img), "--output", str(tmp_path / "p")])
    assert rc == 0
    assert Image.open(tmp_path / "p" / "validation_0_seg.png").size == (3 * 90, 72)
    labels = np.asarray(Image.open(tmp_path / "p" / "validation_0_labels.png"))
    assert labels.shape == (72, 90) and labels.max() < NUM_CLASSES


def test_parameter_counts_match_paper():
    """Exact counts, and the same count summed from independent parts: the classifier's trunk (LIT
    without head, final norm and dropped class token) plus the out-norms, the FPN and the heads."""
    exact = {("semantic_fpn", "lit_ti"): 23_638_382, ("semantic_fpn", "lit_s"): 31_850_502}
    table = litvit.segmentation.parameter_table()
    assert {(arch, bb) for arch, bb, *_ in table} == set(exact)
    for arch, bb, n, n_body, paper in table:
        assert n == exact[arch, bb], (arch, bb, n)
        assert round(n / 1e6) == paper, (arch, bb, n, paper)  # the paper gives whole millions
        with torch.device("meta"):
            model = litvit.segmentation.semantic_fpn(bb, num_classes=150)
        assert_dense_parameters_add_up(model, bb, "segmentation", n, n_body)


@pytest.mark.cli
def test_errors_are_one_line(ade, tmp_path, capsys):
    # a label outside the class range
    bad = make_ade(tmp_path / "bad", n_train=2, n_val=1)
    lab = np.asarray(Image.open(bad / "annotations" / "training" / "training_0.png")).copy()
    lab[10, 10] = 9
    Image.fromarray(lab).save(bad / "annotations" / "training" / "training_0.png")
    ds = SegmentationDataset(str(bad), "training", NUM_CLASSES)
    with pytest.raises(ValueError, match="holds value 9, outside the 3 classes"):
        ds[0]
    common = ["--num-classes", str(NUM_CLASSES), "--iters", "1", "--batch-size", "2", "--crop-size", "64",
              "--scale", "128", "64", "--fpn-channels", "32", "--backbone-kwargs", json.dumps(TINY), "--workers", "0",
              "--no-progress", "--device", "cpu"]
    assert main(["segment", "train", "--data", str(bad), "--output", str(tmp_path / "r1")] + common) == 2
    err = capsys.readouterr().err
    assert "holds value 9" in err and len(err.strip().splitlines()) == 1
    # an image that will not open
    broken = make_ade(tmp_path / "broken", n_train=2, n_val=1)
    (broken / "images" / "training" / "training_1.jpg").write_bytes(b"\xff\xd8 truncated")
    worker = common[:common.index("--workers")] + ["--workers", "1"] + common[common.index("--workers") + 2:]
    assert main(["segment", "train", "--data", str(broken), "--output", str(tmp_path / "r2")] + worker) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "training_1.jpg" in err  # found by the check before training
    # an image without a label
    (broken / "annotations" / "validation" / "validation_0.png").unlink()
    with pytest.raises(FileNotFoundError, match="no label PNG"):
        SegmentationDataset(str(broken), "validation", NUM_CLASSES)
    # an RGB label
    Image.new("RGB", (90, 72)).save(bad / "annotations" / "training" / "training_1.png")
    with pytest.raises(ValueError, match="single-channel"):
        SegmentationDataset(str(bad), "training", NUM_CLASSES)[1]


@pytest.mark.cli
def test_cli_resume_refusal_names_what_was_given(ade, tmp_path, capsys):
    """A dense run resumed with other flags is refused naming the flags changed; what follows from
    them (the epochs of an iteration-based run) is counted, the recipe's own values are not listed."""
    out = tmp_path / "run"
    common = ["segment", "train", "--data", str(ade), "--backbone", "lit_ti", "--num-classes", str(NUM_CLASSES),
              "--batch-size", "2", "--crop-size", "64", "--scale", "128", "64", "--fpn-channels", "32",
              "--backbone-kwargs", json.dumps(TINY), "--workers", "0", "--no-progress", "--output", str(out)]
    assert main(common + ["--iters", "2"]) == 0
    capsys.readouterr()
    assert main(common + ["--iters", "6", "--lr", "0.0005"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--lr 0.0001 -> 0.0005" in err[0] and err[0].count("iters 2 -> 6") == 1
    assert "--epochs" not in err[0] and "weight-decay" not in err[0] and "that follow" in err[0]
