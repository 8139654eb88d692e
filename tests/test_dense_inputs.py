"""Detection and segmentation on inputs that used to break them: NaN boxes, empty or invalid masks,
sizes that disagree, repeated ids, labels with nothing to learn, huge and extreme images, folders
with a bad image, and what the commands print (bars, units)."""
import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from litvit.cli import main
from litvit.data.ade20k import SegmentationDataset
from litvit.data.coco import CocoDetection, rle_string_counts
from litvit.engine import Task, TrainConfig, fit
from litvit.metrics import coco_evaluate
from litvit.models import semantic_fpn as sfpn
from litvit.tasks.detection import DetectionTask, draw_detections
from litvit.tasks.segmentation import SegmentationTask

from helpers import TINY, perfect_coco_results
from test_detection import make_coco
from test_segmentation import make_ade

pytestmark = pytest.mark.unit

TINY_JSON = json.dumps(TINY)
TINY_DETECTOR = ["--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--min-size", "64", "--max-size", "96",
                 "--fpn-channels", "16", "--backbone-kwargs", TINY_JSON, "--warmup-iters", "1", "--workers", "0",
                 "--no-progress", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), n_images=4)


def _variant(coco, tmp_path, change, name="variant.json"):
    """A copy of the annotation file with ``change(data)`` applied (NaN and Infinity written as JSON allows)."""
    data = json.loads(coco[1].read_text())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(coco[0]), str(path)


# --- COCO annotations -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_boxes_are_refused_naming_file_and_annotation(coco, tmp_path, bad):
    img_dir, ann = _variant(coco, tmp_path, lambda d: d["annotations"][2]["bbox"].__setitem__(1, bad))
    for masks in (False, True):
        with pytest.raises(ValueError, match=r"variant\.json: annotation 3 has bbox .*finite"):
            CocoDetection(img_dir, ann, with_masks=masks)


def test_non_finite_boxes_stop_detect_train_in_one_line(coco, tmp_path, capsys):
    def change(d):
        d["annotations"][0]["bbox"][2] = float("nan")
        d["annotations"][3]["bbox"][0] = float("inf")
    img_dir, ann = _variant(coco, tmp_path, change)
    rc = main(["detect", "train", "--train-images", img_dir, "--train-ann", ann, "--output", str(tmp_path / "r")]
              + TINY_DETECTOR)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "variant.json" in err and "annotation 1 " in err and "1 more" in err


def test_empty_and_short_polygons_are_dropped_up_front_with_one_warning(coco, tmp_path):
    """``"segmentation": []`` used to raise an IndexError in a data-loader worker; a polygon of two
    points a TypeError. Now: short polygons dropped, annotations left without any left out, one
    warning each with a count, and every item loads (through a worker too)."""
    def change(d):
        d["annotations"][0]["segmentation"] = []
        d["annotations"][2]["segmentation"] = [[1, 2, 3, 4]]
        d["annotations"][3]["segmentation"] = d["annotations"][3]["segmentation"] + [[5, 5, 6, 6, 7]]
    img_dir, ann = _variant(coco, tmp_path, change)
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(img_dir, ann, train=True, with_masks=True, hflip_prob=0.0)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert len(messages) == 2
    assert any("2 annotation(s) without any polygon" in m and "ids 1, 3" in m for m in messages)
    assert any("2 polygon(s) of fewer than 3 points" in m for m in messages)
    assert sorted(ds.coco.anns) == [2, 4, 5, 6, 7, 8]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=lambda b: b)
    items = [item for batch in loader for item in batch]
    assert len(items) == len(ds) == 4
    for image, target in items:
        assert target["masks"].shape == (len(target["boxes"]), *image.shape[-2:])


@pytest.mark.parametrize("seg, why", [
    ({"counts": "Z!!", "size": [72, 88]}, "not a valid compressed string"),
    ({"counts": [5, 10], "size": [72, 88]}, "add up to 15 pixels"),
    ({"counts": [-3, 6339], "size": [72, 88]}, "negative"),
    ({"counts": [6336], "size": [72]}, "not \\[height, width\\]"),
    ({"counts": 7, "size": [72, 88]}, "neither a list"),
    ([[1, 2, float("nan"), 4, 5, 6]], "non-finite"),
    ("polygon", "no valid 'segmentation'"),
])
def test_invalid_masks_are_refused_at_load_naming_file_and_annotation(coco, tmp_path, seg, why):
    img_dir, ann = _variant(coco, tmp_path, lambda d: d["annotations"][4].__setitem__("segmentation", seg))
    with pytest.raises(ValueError, match=rf"variant\.json: annotation 5 .*{why}"):
        CocoDetection(img_dir, ann, with_masks=True)
    CocoDetection(img_dir, ann, with_masks=False)  # RetinaNet reads no mask


def test_rle_of_another_size_than_its_image_is_refused_before_training(coco, tmp_path):
    img_dir, ann = _variant(coco, tmp_path, lambda d: d["annotations"][0].__setitem__(
        "segmentation", {"counts": [70 * 88], "size": [70, 88]}))
    ds = CocoDetection(img_dir, ann, train=True, with_masks=True)
    with pytest.raises(ValueError, match=r"annotation 1 in .*variant\.json: its RLE mask is 88x70 .* img0\.png is "
                                         r"88x72"):
        ds.scan(progress=False)


def test_rle_strings_decode_as_pycocotools_writes_them():
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = rng.integers(1, 30, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        m[:, : trial % 3] = trial % 2
        counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        flat = m.ravel(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0] == 1:
            runs = [0] + runs  # RLE starts with a run of zeros
        assert rle_string_counts(counts) == runs
    assert rle_string_counts("5220003") == [5, 2, 2, 2, 2, 2, 5]
    assert rle_string_counts("1a") is None  # ends inside a number
    assert rle_string_counts("1 ") is None  # a character outside the alphabet


def test_sizes_that_disagree_with_the_files_are_repaired_with_one_warning(coco, tmp_path):
    """Width/height of the JSON that disagree with the image files: the files' sizes are used (and
    said once, with a count), so that mask AP of perfect detections is 100."""
    def change(d):
        for im in d["images"][:3]:
            im["width"], im["height"] = im["width"] + 12, im["height"] - 2
        del d["images"][3]["width"]
    img_dir, ann = _variant(coco, tmp_path, change)
    ds = CocoDetection(img_dir, ann, with_masks=True)
    with pytest.warns(UserWarning, match=r"^3 image\(s\) of .*variant\.json have a width/height that disagrees .*"
                                         r"img0\.png is 88x72, the annotation file says 100x70.*files' sizes are used"):
        assert ds.scan(progress=False) == []
    assert all((im["width"], im["height"]) == (88, 72) for im in ds.coco.imgs.values())
    results, ids = perfect_coco_results(ds)
    metrics, _ = coco_evaluate(ds.coco, results, ids, ("bbox", "segm"))
    assert metrics["segm_AP"] == pytest.approx(100.0) and metrics["bbox_AP"] == pytest.approx(100.0)


def test_repeated_or_missing_annotation_ids_are_renumbered(coco, tmp_path):
    """pycocotools indexes annotations by id: a repeated id used to hide one annotation from the
    evaluation (perfect detections then scored below 100)."""
    def change(d):
        d["annotations"][1]["id"] = d["annotations"][0]["id"]
        d["annotations"][5]["id"] = d["annotations"][4]["id"]
        del d["annotations"][6]["id"]
    img_dir, ann = _variant(coco, tmp_path, change)
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) have no id and 2 annotation\(s\) repeat an earlier "
                                         r"one's id \(1, 5\): given new ids 9\.\.11"):
        ds = CocoDetection(img_dir, ann, with_masks=True)
    assert sorted(ds.coco.anns) == [1, 3, 4, 5, 8, 9, 10, 11]
    results, ids = perfect_coco_results(ds)
    metrics, _ = coco_evaluate(ds.coco, results, ids, ("bbox", "segm"))
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["segm_AP"] == pytest.approx(100.0)


def test_missing_iscrowd_and_area_are_filled_for_evaluation(coco, tmp_path):
    def change(d):
        for a in d["annotations"]:
            del a["area"], a["iscrowd"]
    img_dir, ann = _variant(coco, tmp_path, change)
    with pytest.warns(UserWarning, match="8 annotation\\(s\\) without 'iscrowd' taken as not crowd; 8 annotation"):
        ds = CocoDetection(img_dir, ann)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results, ids = perfect_coco_results(CocoDetection(img_dir, ann, with_masks=True))
    assert coco_evaluate(ds.coco, results, ids)[0]["bbox_AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("key", ["images", "categories"])
def test_repeated_image_or_category_ids_are_refused(coco, tmp_path, key):
    img_dir, ann = _variant(coco, tmp_path, lambda d: d[key].append(dict(d[key][0], file_name="img1.png")))
    noun = "image" if key == "images" else "category"
    with pytest.raises(ValueError, match=rf"variant\.json: 1 {noun} id\(s\) appear more than once"):
        CocoDetection(img_dir, ann)


# --- Mask R-CNN on extreme aspect ratios ------------------------------------------------------------------

@pytest.mark.parametrize("size", [(20, 400), (400, 20)])
def test_mask_rcnn_outputs_are_cut_back_to_extreme_images(coco, size):
    """The image is padded for the detector's resize; its masks used to come back at the padded size
    ("The image and the masks must have the same height and width" when drawn)."""
    task = DetectionTask("mask_rcnn", "lit_ti", num_classes=2, min_size=(64,), max_size=96,
                         backbone_kwargs=dict(TINY), fpn_channels=16)
    model = task.build_model().eval()
    model.test_cfg["rcnn"]["score_thr"] = 0.0
    image = torch.rand(3, *size)
    out = task.predict(model, [image])[0]
    H, W = size
    assert len(out["boxes"]) > 0 and out["masks"].shape == (len(out["boxes"]), 1, H, W)
    assert (out["boxes"][:, 2] <= W).all() and (out["boxes"][:, 3] <= H).all()
    assert ((out["boxes"][:, 2] > out["boxes"][:, 0]) & (out["boxes"][:, 3] > out["boxes"][:, 1])).all()
    drawn, n = draw_detections(image, out, task.class_names, score_thresh=0.0)
    assert drawn.size == (W, H) and n == len(out["boxes"])


def test_unpasted_masks_draw_the_same_picture_without_full_size_maps(monkeypatch):
    """``detect predict`` pastes each mask into its box only (N full-size maps of 100 detections on
    a 9000x9000 image take 32 GB): the drawing is the one of the model's full-size pasted masks,
    pixel for pixel, overlaps (black under two masks) and extreme aspect ratios included."""
    from litvit.models.official_dense import models as dense_models
    from helpers import randomize_
    task = DetectionTask("mask_rcnn", "lit_ti", num_classes=2, min_size=(64,), max_size=96,
                         backbone_kwargs=dict(TINY), fpn_channels=16)
    model = randomize_(task.build_model()).eval()
    model.test_cfg["rcnn"]["score_thr"] = 0.0
    g = torch.Generator().manual_seed(0)
    for size in [(72, 88), (20, 300), (130, 50)]:
        image = torch.rand(3, *size, generator=g)
        with torch.no_grad():
            full = task.predict(model, [image])[0]
            with monkeypatch.context() as m:
                m.setattr(dense_models.MaskRCNN, "get_masks", None)  # the full-size paste is never called
                compact = task.predict(model, [image], paste_masks=False)[0]
        assert "masks" not in compact and compact["mask_probs"].shape[-2:] == (28, 28)
        assert torch.equal(full["boxes"], compact["boxes"]) and len(full["boxes"]) > 10
        overlaps = (full["masks"] > 0.5).sum(0).gt(1).sum()
        assert overlaps > 0
        a, n = draw_detections(image, full, task.class_names, score_thresh=0.0)
        b, m = draw_detections(image, compact, task.class_names, score_thresh=0.0, paste=task.paste_regions)
        assert n == m and np.array_equal(np.asarray(a), np.asarray(b))


# --- segmentation: bounded memory on large images ------------------------------------------------------------

def _track_interpolate(monkeypatch):
    """Record the number of elements of every tensor F.interpolate returns in the Semantic FPN module."""
    sizes = []

    def tracked(*args, **kwargs):
        out = F.interpolate(*args, **kwargs)
        sizes.append((tuple(out.shape[-2:]), out.numel()))
        return out
    monkeypatch.setattr(sfpn, "F", type("F", (), {"interpolate": staticmethod(tracked)}))
    return sizes


@pytest.mark.parametrize("B, K, budget", [(1, 150, 20_000), (2, 7, 3 * 60 * 70 * 2), (1, 5, 1), (1, 3, 1 << 24)])
def test_resize_argmax_is_exact_with_bounded_memory(monkeypatch, B, K, budget):
    logits = torch.randn(B, K, 13, 17, generator=torch.Generator().manual_seed(K))
    logits[:, 2] = logits[:, 1]  # exact ties: the lower class wins, as argmax's
    ref = F.interpolate(logits, size=(60, 70), mode="bilinear", align_corners=False).argmax(1)
    sizes = _track_interpolate(monkeypatch)
    for dtype in (torch.int64, torch.uint8):
        got = sfpn.resize_argmax(logits, (60, 70), dtype=dtype, max_elements=budget)
        assert got.dtype == dtype and torch.equal(got.long(), ref)
    assert max(n for _, n in sizes) <= max(budget, B * 60 * 70)


@pytest.mark.parametrize("K", [3, 150, 256])
def test_colorize_through_a_palette_matches_indexing(K):
    from litvit.tasks.segmentation import colorize
    pred = np.random.default_rng(K).integers(0, 256, (37, 53)).astype(np.uint8)
    pred[0, :4] = 255  # ignored pixels: black
    assert np.array_equal(colorize(pred, K), colorize(pred.astype(np.int64), K))
    assert (colorize(pred, K)[0, :4] == 0).all() == (K < 256)


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """A tiny Semantic FPN checkpoint with 150 classes (one training step) and its ADE data."""
    root = tmp_path_factory.mktemp("seg")
    ade = make_ade(root / "ade", n_train=2, n_val=1)
    rc = main(["segment", "train", "--data", str(ade), "--num-classes", "150", "--iters", "1", "--batch-size", "2",
               "--crop-size", "64", "--scale", "64", "32", "--fpn-channels", "16", "--backbone-kwargs", TINY_JSON,
               "--workers", "0", "--no-progress", "--device", "cpu", "--threads", "1", "--output", str(root / "run")])
    assert rc == 0
    return root / "run" / "last.pth", ade


@pytest.mark.cli
def test_segment_predict_never_holds_all_classes_at_full_size(seg_checkpoint, tmp_path, monkeypatch, capsys):
    """150 classes x the full image used to be resized at once (48.6 GB at 9000x9000): now at most
    the budget (or one class) is, and the labels are those of the full resize."""
    ckpt, _ = seg_checkpoint
    H, W = 150, 260
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(sfpn, "RESIZE_MAX_ELEMENTS", 3 * H * W)
    sizes = _track_interpolate(monkeypatch)
    assert main(["segment", "predict", "--checkpoint", str(ckpt), str(tmp_path / "big.png"),
                 "--output", str(tmp_path / "p")]) == 0
    full = [n for size, n in sizes if size == (H, W)]
    assert full and max(full) <= 3 * H * W
    labels = np.asarray(Image.open(tmp_path / "p" / "big_labels.png"))
    monkeypatch.undo()
    task = SegmentationTask.from_checkpoint(str(ckpt))
    model = task.build_model()
    task.load_weights(model, str(ckpt))
    img = np.asarray(Image.open(tmp_path / "big.png").convert("RGB"))
    ref = model.eval().predict(img)["labels"]  # the authors' inference: softmax over full-size maps
    assert np.array_equal(labels, ref.numpy().astype(np.uint8))
    seg = Image.open(tmp_path / "p" / "big_seg.png")
    assert seg.size == (3 * W, H) and "class_" in capsys.readouterr().out


def test_segment_evaluation_resizes_with_bounded_memory(seg_checkpoint, monkeypatch):
    from litvit.engine import DistInfo
    from litvit.data.ade20k import segmentation_collate
    ckpt, ade = seg_checkpoint
    task = SegmentationTask.from_checkpoint(str(ckpt), data=str(ade), progress=False)
    model = task.build_model()
    task.load_weights(model, str(ckpt))
    _, val = task.build_datasets()
    loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=segmentation_collate)
    expected = task.evaluate(model, loader, torch.device("cpu"), DistInfo())
    monkeypatch.setattr(sfpn, "RESIZE_MAX_ELEMENTS", 1)
    sizes = _track_interpolate(monkeypatch)
    got = task.evaluate(model, loader, torch.device("cpu"), DistInfo())
    label_size = tuple(val[0][1].shape)
    assert max(n for size, n in sizes if size == label_size) == label_size[0] * label_size[1]  # one class at a time
    assert got == expected


# --- segmentation: labels with nothing to learn ----------------------------------------------------------------

def _blank_labels(ade, value):
    for split in ("training", "validation"):
        for png in (ade / "annotations" / split).glob("*.png"):
            Image.new("L", Image.open(png).size, value).save(png)


@pytest.mark.cli
@pytest.mark.parametrize("reduce_zero, value", [(True, 0), (False, 255)])
def test_labels_without_a_class_pixel_are_refused_before_training(tmp_path, capsys, reduce_zero, value):
    ade = make_ade(tmp_path / "ade", n_train=2, n_val=1)
    _blank_labels(ade, value)
    ds = SegmentationDataset(str(ade), "training", 3, reduce_zero_label=reduce_zero)
    with pytest.raises(ValueError, match=rf"label\(s\) of .*training hold no pixel of the 3 classes"):
        ds.scan(progress=False)
    out = tmp_path / "run"
    rc = main(["segment", "train", "--data", str(ade), "--num-classes", "3", "--iters", "1", "--batch-size", "2",
               "--crop-size", "64", "--scale", "64", "32", "--fpn-channels", "16", "--backbone-kwargs", TINY_JSON,
               "--workers", "0", "--no-progress", "--device", "cpu", "--threads", "1", "--output", str(out)]
              + ([] if reduce_zero else ["--no-reduce-zero-label"]))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "hold no pixel" in err
    assert "loss is nan" not in err and not (out / "last.pth").exists()


def test_a_batch_of_ignored_pixels_has_zero_loss_not_nan(tmp_path):
    ade = make_ade(tmp_path / "ade", n_train=2, n_val=1)
    task = SegmentationTask("lit_ti", data=str(ade), num_classes=3, iters=1, crop_size=64, scale=(64, 32),
                            backbone_kwargs=dict(TINY), fpn_channels=16, head_channels=16)
    model = task.build_model().train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.full((2, 64, 64), 255)
    loss, _ = task.train_step(model, (images, labels), torch.device("cpu"))
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    labels[0, :10, :10] = 1  # some pixels count: mmseg's mean over every pixel, the ignored ones as 0
    model.eval()  # the same logits twice (no dropout, fixed BatchNorm statistics)
    loss, _ = task.train_step(model, (images, labels), torch.device("cpu"))
    logits = F.interpolate(model(images), size=(64, 64), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum") / labels.numel()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


class _NaNTask(Task):
    """A linear model whose loss turns NaN at optimizer step ``nan_at``."""
    name = "toy"

    def __init__(self, nan_at):
        self.nan_at, self.calls = nan_at, 0

    def build_model(self):
        return torch.nn.Linear(4, 2)

    def build_datasets(self):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), None

    def train_step(self, model, batch, device):
        x, y = batch
        self.calls += 1
        loss = F.cross_entropy(model(x), y)
        return (loss * float("nan") if self.calls > self.nan_at else loss), {}


def test_nan_loss_message_names_only_a_checkpoint_that_exists(tmp_path):
    cfg = dict(epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0, progress=False, verbose=False, device="cpu")
    with pytest.raises(FloatingPointError) as e:
        fit(_NaNTask(nan_at=0), TrainConfig(output_dir=str(tmp_path / "a"), **cfg))
    assert "loss is nan" in str(e.value) and "last.pth" not in str(e.value) and "no checkpoint" in str(e.value)
    assert not (tmp_path / "a" / "last.pth").exists()
    with pytest.raises(FloatingPointError, match=r"the last good checkpoint is .*b.last\.pth"):
        fit(_NaNTask(nan_at=2), TrainConfig(output_dir=str(tmp_path / "b"), save_every_steps=1, **cfg))
    assert (tmp_path / "b" / "last.pth").is_file()


# --- predict on folders: every input checked first ---------------------------------------------------------------

@pytest.fixture(scope="module")
def det_run(coco, tmp_path_factory):
    """A tiny Mask R-CNN trained for one step (of an epoch of two) on annotations that need repairs:
    (checkpoint, stdout, stderr)."""
    root = tmp_path_factory.mktemp("det")

    def change(d):
        d["annotations"][0]["segmentation"] = []
        d["images"][1]["width"] = 100
    img_dir, ann = _variant(coco, root, change)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["detect", "train", "--arch", "mask_rcnn", "--train-images", img_dir, "--train-ann", ann,
                   "--output", str(root / "run")] + TINY_DETECTOR)
    assert rc == 0, err.getvalue()
    return root / "run" / "last.pth", out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def det_checkpoint(det_run):
    return det_run[0]


@pytest.mark.cli
def test_detect_train_says_what_it_repaired_and_names_only_files_it_wrote(det_run):
    ckpt, out, err = det_run
    warned = err.strip().splitlines()
    assert len(warned) == 2 and all(ln.startswith("litvit detect: warning: ") for ln in warned)
    assert "1 annotation(s) without any polygon" in warned[0] and "1 image(s)" in warned[1]
    done = out.strip().splitlines()[-1]
    assert done.startswith("done: 0 epochs, 1 steps") and "best box AP -;" in done
    assert done.endswith(f"; checkpoints {ckpt}") and not ckpt.with_name("best.pth").exists()  # nor curves


def _folder_with_a_bad_image(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "d.png"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / name)
    good = (root / "b.png").read_bytes()
    (root / "c.png").write_bytes(good[: len(good) // 2])  # truncated
    return root


@pytest.mark.cli
@pytest.mark.parametrize("command", ["detect", "segment"])
def test_predict_checks_every_input_before_writing(det_checkpoint, seg_checkpoint, tmp_path, capsys, command):
    ckpt = det_checkpoint if command == "detect" else seg_checkpoint[0]
    folder = _folder_with_a_bad_image(tmp_path / "in")
    out = tmp_path / "out"
    rc = main([command, "predict", "--checkpoint", str(ckpt), str(folder), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "c.png" in err and "nothing was written" in err
    assert not out.exists()
    rc = main([command, "predict", "--checkpoint", str(ckpt), str(folder), "--output", str(out),
               "--bad-images", "skip"])
    captured = capsys.readouterr()
    assert rc == 0 and "1 of 4 image(s) skipped" in captured.err
    assert [ln.split(":")[0].endswith("c.png") for ln in captured.out.splitlines()].count(True) == 1
    suffix = "_det.png" if command == "detect" else "_seg.png"
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(suffix)) == [f"{s}{suffix}" for s in "abd"]


@pytest.mark.cli
@pytest.mark.parametrize("size", [(20, 1000), (1000, 20)])
def test_detect_predict_mask_rcnn_on_extreme_aspect_ratios(det_checkpoint, tmp_path, size):
    """4000x20 in the issue; 1000x20 here: the tiny model's 96 px limit pads 4000x20 to 4000x1334,
    where each of up to 100 masks is pasted before the crop."""
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(tmp_path / "x.png")
    assert main(["detect", "predict", "--checkpoint", str(det_checkpoint), str(tmp_path / "x.png"),
                 "--output", str(tmp_path / "p"), "--score-thresh", "0"]) == 0
    assert Image.open(tmp_path / "p" / "x_det.png").size == (size[1], size[0])


# --- what the commands print ---------------------------------------------------------------------------------

@pytest.mark.cli
def test_no_progress_means_no_bar_and_metrics_are_in_percent(det_checkpoint, seg_checkpoint, coco, capsys):
    ckpt, ade = seg_checkpoint
    assert main(["segment", "eval", "--checkpoint", str(ckpt), "--data", str(ade), "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "evaluating" not in captured.err
    assert "IoU (%)" in captured.out and " %  mAcc " in captured.out and captured.out.rstrip().endswith("%")
    img_dir, ann = coco
    assert main(["detect", "eval", "--checkpoint", str(det_checkpoint), "--val-images", str(img_dir), "--val-ann",
                 str(ann), "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "evaluating" not in captured.err and "bbox_AP " in captured.out
    last = captured.out.strip().splitlines()[-1]
    assert all(part.endswith("%") for part in last.split("  ")[1:] if "AP" in part)


@pytest.mark.cli
def test_segment_train_no_progress_shows_no_evaluation_bar(tmp_path, capsys):
    ade = make_ade(tmp_path / "ade", n_train=2, n_val=1)
    rc = main(["segment", "train", "--data", str(ade), "--num-classes", "3", "--iters", "1", "--batch-size", "2",
               "--crop-size", "64", "--scale", "64", "32", "--fpn-channels", "16", "--backbone-kwargs", TINY_JSON,
               "--workers", "0", "--no-progress", "--device", "cpu", "--threads", "1", "--output", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert rc == 0 and "evaluating" not in captured.err and "it/s" not in captured.err
    assert "best mIoU" in captured.out and " %" in captured.out.split("best mIoU")[1].split("(")[0]
