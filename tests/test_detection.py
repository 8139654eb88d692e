"""Detection: RetinaNet / Mask R-CNN with LIT backbones on a tiny COCO-format set generated here."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import litvit.detection
from litvit.cli import main
from litvit.dense_data import CocoDetection, detection_collate
from litvit.ops import fused_mlp
from litvit.tasks.detection import DetectionTask, coco_evaluate

from helpers import TINY, assert_dense_parameters_add_up, perfect_coco_results

pytestmark = pytest.mark.unit

TINY_BB = {k: v for k, v in TINY.items()}
CATEGORIES = [dict(id=3, name="square"), dict(id=7, name="triangle")]  # non-contiguous ids on purpose


def make_coco(root, n_images=6, size=(72, 88), seed=0, name="train"):
    """Coloured squares and triangles on noisy backgrounds, with boxes and polygon masks.

    Returns (image folder, annotation file)."""
    rng = random.Random(seed)
    img_dir = root / f"{name}_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        H, W = size
        bg = np.random.default_rng(seed * 100 + i).integers(0, 60, (H, W, 3), dtype=np.uint8)
        img = Image.fromarray(bg)
        draw = ImageDraw.Draw(img)
        for k in range(2):
            cat = CATEGORIES[(i + k) % 2]
            s = rng.randint(18, 28)
            x, y = rng.randint(0, W - s - 1), rng.randint(0, H - s - 1)
            if cat["name"] == "square":
                poly = [x, y, x + s, y, x + s, y + s, x, y + s]
                colour = (230, 40, 40)
            else:
                poly = [x + s / 2, y, x + s, y + s, x, y + s]
                colour = (40, 220, 60)
            draw.polygon(poly, fill=colour)
            xs, ys = poly[0::2], poly[1::2]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat["id"], iscrowd=0,
                             bbox=[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                             area=float((max(xs) - min(xs)) * (max(ys) - min(ys))), segmentation=[poly]))
        fname = f"img{i}.png"
        img.save(img_dir / fname)
        images.append(dict(id=i + 1, file_name=fname, height=H, width=W))
    ann_file = root / f"{name}.json"
    ann_file.write_text(json.dumps(dict(images=images, annotations=anns, categories=CATEGORIES)))
    return img_dir, ann_file


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return make_coco(root)


def tiny_task(arch, coco, **kw):
    img_dir, ann = coco
    return DetectionTask(arch=arch, backbone="lit_ti", train_images=str(img_dir), train_ann=str(ann),
                         val_images=str(img_dir), val_ann=str(ann), min_size=(64,), max_size=96,
                         backbone_kwargs=dict(TINY_BB, drop_path_rate=0.0), fpn_channels=32, warmup_iters=0, **kw)


def test_dataset_targets(coco):
    ds = CocoDetection(*map(str, coco), train=True, with_masks=True, hflip_prob=0.0)
    assert ds.class_names == ["square", "triangle"] and ds.num_classes == 2
    image, target = ds[0]
    assert image.shape == (3, 72, 88) and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [1, 2]  # category ids 3, 7 -> labels 1, 2
    assert target["masks"].shape == (2, 72, 88)
    # the mask lies inside its box and covers most of a square
    b = target["boxes"][0].round().long().tolist()
    m = target["masks"][0]
    assert m.sum() > 0.8 * (b[2] - b[0]) * (b[3] - b[1]) and m[:, :b[0]].sum() == 0


def test_rle_and_crowd_annotations(coco, tmp_path):
    """Uncompressed RLE masks decode; crowd regions are kept for evaluation and dropped for training."""
    from pycocotools import mask as mask_utils
    img_dir, ann = coco
    data = json.loads(ann.read_text())
    a = data["annotations"][0]
    poly_mask = CocoDetection(str(img_dir), str(ann), with_masks=True)[0][1]["masks"][0].numpy()
    counts, prev, run = [], 0, 0
    for v in np.asfortranarray(poly_mask).ravel(order="F"):  # column-major runs, starting with zeros
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    a["segmentation"] = dict(counts=counts, size=list(poly_mask.shape))
    a["iscrowd"] = 1
    rle_file = tmp_path / "rle.json"
    rle_file.write_text(json.dumps(data))
    ev = CocoDetection(str(img_dir), str(rle_file), with_masks=True)
    _, t = ev[0]
    assert np.array_equal(t["masks"][0].numpy(), poly_mask) and t["iscrowd"].tolist() == [1, 0]
    tr = CocoDetection(str(img_dir), str(rle_file), train=True, with_masks=True, hflip_prob=0.0)
    assert len(tr[0][1]["labels"]) == 1
    assert mask_utils.area(mask_utils.encode(np.asfortranarray(poly_mask))) == poly_mask.sum()


def test_flip_moves_boxes_and_masks(coco):
    random.seed(0)
    ds = CocoDetection(*map(str, coco), train=True, with_masks=True, hflip_prob=1.0)
    ref = CocoDetection(*map(str, coco), train=True, with_masks=True, hflip_prob=0.0)
    (im_f, t_f), (im, t) = ds[1], ref[1]
    W = im.shape[-1]
    assert torch.equal(im_f, im.flip(-1)) and torch.equal(t_f["masks"], t["masks"].flip(-1))
    assert torch.allclose(t_f["boxes"][:, [0, 2]], W - t["boxes"][:, [2, 0]])


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_training_reduces_loss(arch, coco):
    """Overfit one batch for a few AdamW steps: the summed detector loss must drop."""
    torch.manual_seed(0)
    task = tiny_task(arch, coco)
    model = task.build_model().train()
    train, _ = task.build_datasets()
    train.hflip_prob = 0.0
    batch = detection_collate([train[0], train[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, logged = task.train_step(model, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    expected = {"retinanet": {"loss_cls", "loss_bbox"},  # mmdet 2.11's names
                "mask_rcnn": {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}}
    assert {k for k in logged if "loss" in k} == expected[arch]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def test_coco_results_and_eval_perfect_detections(coco):
    """Ground truth fed back as detections gives AP 100 through pycocotools (boxes and masks)."""
    ds = CocoDetection(*map(str, coco), train=False, with_masks=True)
    results, ids = perfect_coco_results(ds)
    assert {r["category_id"] for r in results} == {3, 7}
    metrics, text = coco_evaluate(ds.coco, results, ids, ("bbox", "segm"))
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["segm_AP"] == pytest.approx(100.0)
    # a wrong class everywhere: AP 0
    wrong = [dict(r, category_id=10 - r["category_id"]) for r in results]
    assert coco_evaluate(ds.coco, wrong, ids)[0]["bbox_AP"] == 0.0
    assert "Average Precision" in text


@pytest.mark.cli
@pytest.mark.slow
def test_cli_train_eval_predict(coco, tmp_path, capsys):
    img_dir, ann = coco
    out = tmp_path / "run"
    tiny = json.dumps(dict(TINY_BB))
    rc = main(["detect", "train", "--arch", "mask_rcnn", "--backbone", "lit_ti", "--train-images", str(img_dir),
               "--train-ann", str(ann), "--val-images", str(img_dir), "--val-ann", str(ann), "--epochs", "1",
               "--batch-size", "3", "--min-size", "64", "--max-size", "96", "--fpn-channels", "32",
               "--backbone-kwargs", tiny, "--warmup-iters", "1", "--workers", "0", "--no-progress",
               "--output", str(out), "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Average Precision" in text and (out / "best.pth").is_file() and (out / "curves.png").is_file()
    rc = main(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--val-images", str(img_dir),
               "--val-ann", str(ann), "--workers", "0", "--device", "cpu"])
    assert rc == 0 and "bbox_AP" in capsys.readouterr().out
    rc = main(["detect", "predict", "--checkpoint", str(out / "last.pth"), str(img_dir / "img0.png"),
               "--output", str(tmp_path / "pred"), "--score-thresh", "0.0"])
    assert rc == 0
    png = Image.open(tmp_path / "pred" / "img0_det.png")
    assert png.size == (88, 72)


@pytest.mark.parametrize("fused", [None, False], ids=["probed", "forced-fallback"])
def test_bf16_evaluation_keeps_float32_boxes(coco, fused):
    """Under bf16 autocast the backbone runs in bf16 but the FPN, the heads and the boxes in float32,
    with or without the fused MLP (a CPU without native bf16 takes the fallback)."""
    from litvit.engine import autocast
    from litvit.tasks.detection import float32_heads
    task = tiny_task("retinanet", coco)
    model = task.build_model().eval()
    body = model.backbone
    images = [torch.rand(3, 64, 80)]
    seen, inside = [], []
    model.neck.register_forward_hook(lambda m, i, o: seen.append((i[0][0].dtype, o[0].dtype)))
    body.model.stages[3].blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: inside.append(o.dtype))
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"), float32_heads(model, torch.device("cpu")), \
            fused_mlp.forced(fused):
        out = task.predict(model, images)
    assert inside == [torch.bfloat16]  # the backbone under autocast
    assert seen == [(torch.float32, torch.float32)] and out[0]["boxes"].dtype == torch.float32
    assert model.backbone is body  # restored


def test_non_multiple_of_32_sizes():
    """Images of odd sizes go through both detectors in eval mode and give detections inside each
    image (score threshold 0, so the untrained heads detect something)."""
    kw = dict(backbone="lit_ti", num_classes=3, min_size=70, max_size=110,
              backbone_kwargs=dict(TINY_BB), fpn_channels=32)
    sizes = [(70, 101), (45, 77)]
    for build in (litvit.detection.retinanet, litvit.detection.mask_rcnn):
        model = build(**kw).eval()
        (model.test_cfg["rcnn"] if "rcnn" in model.test_cfg else model.test_cfg)["score_thr"] = 0.0
        for H, W in sizes:
            x, meta = model.preprocess(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
            assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0 and meta["ori_shape"][:2] == (H, W)
            det = model.predict(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8))
            boxes = det["boxes"]
            assert boxes.shape[0] > 0 and boxes.shape[1] == 4
            assert det["scores"].shape == det["labels"].shape == boxes.shape[:1]
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= W + 1e-3).all() and (boxes[:, 3] <= H + 1e-3).all()
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            if "masks" in det:
                assert det["masks"].shape == (boxes.shape[0], H, W)


def test_parameter_counts_match_paper():
    """Exact counts — those of the authors' own models (their configs, built by their code: the
    release layouts of ``litvit.tools.bench_dense``) — and the same count summed from independent
    parts: the classifier's trunk (LIT without head, final norm and dropped class token) plus the
    out-norms, the FPN and the heads."""
    exact = {("retinanet", "lit_ti"): 29_621_708, ("retinanet", "lit_s"): 38_904_292,
             ("mask_rcnn", "lit_ti"): 39_539_144, ("mask_rcnn", "lit_s"): 48_240_096}
    table = litvit.detection.parameter_table()
    assert {(arch, bb) for arch, bb, *_ in table} == set(exact)
    for arch, bb, n, n_body, paper in table:
        assert n == exact[arch, bb], (arch, bb, n)
        assert round(n / 1e6) == paper, (arch, bb, n, paper)  # the paper gives whole millions
        with torch.device("meta"):
            model = litvit.detection.build_detector(arch, backbone=bb, num_classes=80)
        assert_dense_parameters_add_up(model, bb, "detection", n, n_body)


@pytest.mark.parametrize("arch,bb", [("retinanet", "lit_ti"), ("retinanet", "lit_s"), ("mask_rcnn", "lit_ti"),
                                     ("mask_rcnn", "lit_s")])
def test_litvit_detectors_are_the_release_models(arch, bb):
    """One definition: litvit's detector of a name and the model a full-size release of the authors'
    layout loads into (``load_dense``'s ``build_dense``) are the same class with the same entries,
    shapes and settings."""
    from litvit.models.official_dense import build_dense
    from litvit.tools.bench_dense import release_layout
    release = {"retinanet": "retinanet", "mask_rcnn": "mask_rcnn"}[arch] + "_" + bb
    with torch.device("meta"):
        sd, meta = release_layout(release)
        theirs = build_dense(sd, meta)
        ours = litvit.detection.build_detector(arch, backbone=bb, num_classes=80, class_names=theirs.classes)
    assert type(ours) is type(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    assert ours.test_cfg == theirs.test_cfg and ours.pipeline == theirs.pipeline
    assert ours.classes == theirs.classes


def test_train_inputs_follow_the_authors_pipeline(coco):
    """The train pipeline: keep-ratio resize to (max_size, min_size) as the test pipeline (the same
    tensor for the same image), boxes scaled and clipped, labels 0..K-1, masks resized with the
    image and padded with it, the batch padded to its largest image."""
    task = tiny_task("mask_rcnn", coco)
    model = task.build_model()
    train, _ = task.build_datasets()
    train.hflip_prob = 0.0
    (im0, t0), (im1, t1) = train[0], train[1]
    pad = torch.nn.functional.pad
    wide, t1 = pad(im1, (0, 40)), dict(t1, masks=pad(t1["masks"], (0, 40)))  # 72 x 128: another size in the batch
    img, metas, boxes, labels, masks = task.train_inputs(model, [im0, wide], [t0, t1])
    x0, meta0 = model.preprocess((im0.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    assert metas[0]["img_shape"] == meta0["img_shape"] == (64, 78, 3)
    assert metas[1]["img_shape"] == (54, 96, 3)  # scale min(96 / 128, 64 / 72)
    assert img.shape == (2, 3, 64, 96) and all(m["batch_input_shape"] == (64, 96) for m in metas)
    torch.testing.assert_close(img[0, :, :, :78], x0[0, :, :, :78])
    assert (img[1, :, 54:] == 0).all()  # padding after normalisation: zeros, as mmdet pads
    torch.testing.assert_close(boxes[0], t0["boxes"] * torch.tensor([78 / 88, 64 / 72] * 2))
    assert (labels[0] == t0["labels"] - 1).all()
    assert masks[0].shape == (len(t0["labels"]), 64, 96) and masks[0][:, :, 78:].sum() == 0
    # each mask still covers its box: its pixels' extent matches the scaled box within a pixel
    for m, b in zip(masks[0], boxes[0]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert abs(xs.min() - b[0]) <= 1.5 and abs(ys.min() - b[1]) <= 1.5
        assert abs(xs.max() + 1 - b[2]) <= 1.5 and abs(ys.max() + 1 - b[3]) <= 1.5


def test_checkpoint_of_the_old_definition_is_refused(coco, tmp_path):
    """A detection checkpoint written by litvit's earlier torchvision-based detectors is refused in
    one line (its weights do not fit the authors' modules)."""
    from litvit.tasks.detection import DetectionTask as T
    task = tiny_task("retinanet", coco)
    task.setup()
    record = task.checkpoint_extra()
    del record["definition"]
    path = tmp_path / "old.pth"
    torch.save(dict(model={}, task="detection", extra=record), path)
    with pytest.raises(ValueError, match="earlier definition"):
        T.from_checkpoint(str(path))


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.cli
def test_errors_are_one_line(coco, tmp_path, capsys):
    img_dir, ann = coco
    common = ["--train-images", str(img_dir), "--epochs", "1", "--output", str(tmp_path / "r"), "--device", "cpu"]
    bad_json = _write(tmp_path / "bad.json", "{not json")
    assert main(["detect", "train", "--train-ann", str(bad_json)] + common) == 2
    assert "malformed annotation file" in capsys.readouterr().err
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    bad_cat = _write(tmp_path / "bad_cat.json", json.dumps(data))
    assert main(["detect", "train", "--train-ann", str(bad_cat)] + common) == 2
    err = capsys.readouterr().err
    assert "category_id 99" in err and len(err.strip().splitlines()) == 1
    data = json.loads(ann.read_text())
    del data["categories"]
    no_cats = _write(tmp_path / "no_cats.json", json.dumps(data))
    assert main(["detect", "train", "--train-ann", str(no_cats)] + common) == 2
    assert "'categories'" in capsys.readouterr().err
    # an image that will not open: fails when loaded, naming the file
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "img0.png").write_bytes(b"not an image at all")
    data = json.loads(ann.read_text())
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    one = _write(tmp_path / "one.json", json.dumps(data))
    ds = CocoDetection(str(broken_dir), str(one))
    with pytest.raises(OSError, match="cannot open image .*img0.png"):
        ds[0]
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "missing.pth"), "--val-images", str(img_dir),
                 "--val-ann", str(ann)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_grad_checkpointing_in_the_authors_backbone(coco):
    """``--grad-checkpointing`` (the LIT-S Mask R-CNN recipe) reaches the blocks of the dense
    backbone: the same loss and gradients, and the blocks run again in the backward pass."""
    task = tiny_task("retinanet", coco)
    model = task.build_model().train()
    train, _ = task.build_datasets()
    train.hflip_prob = 0.0
    batch = detection_collate([train[0], train[1]])
    block = model.backbone.model.stages[2].blocks[0]
    calls = []
    block.register_forward_pre_hook(lambda m, i: calls.append(1))  # a post-hook misses the early-stopped recompute
    results = []
    for enable in (False, True):
        model.backbone.set_grad_checkpointing(enable)
        model.zero_grad()
        random.seed(0)
        torch.manual_seed(0)
        loss, _ = task.train_step(model, batch, torch.device("cpu"))
        calls.clear()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], len(calls)))
    (l0, g0, c0), (l1, g1, c1) = results
    torch.testing.assert_close(l0, l1)
    assert len(g0) == len(g1) and all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(g0, g1))
    assert c0 == 0 and c1 == 1  # recomputed once in the backward pass
