"""The authors' dense releases on the command line: ``litvit detect|segment predict|eval --checkpoint``
with a release file or a release name, ``OUTPUT/detections.json``, and the RLE it holds.

The releases are written from the tiny fixtures of ``tests/data/official_dense`` (made by the
authors' own code, see ``test_official_dense.py``); the release-name path downloads from a local
HTTP server on 127.0.0.1, nothing else is fetched.
"""
import functools
import http.server
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litvit.cli import main
from litvit.checkpoint import record_entries
from litvit.metrics import COCO_CATEGORY_IDS, COCO_CLASSES, rle_encode
from litvit.models.official_dense import load, load_dense
from litvit.tasks.detection import DetectionTask
from litvit.tasks.segmentation import release_reduce_zero_label

from helpers import TINY
from test_official_dense import Fixture

pytestmark = pytest.mark.unit
cli = pytest.mark.cli


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """name -> (release file, PNG of the fixture's image, the model loaded in Python)."""
    root = tmp_path_factory.mktemp("releases")
    cache = {}

    def get(name: str):
        if name not in cache:
            fx = Fixture(name)
            path = fx.write_release(root / f"{name}.pth")
            img = root / f"{name}.png"
            Image.fromarray(fx.image()).save(img)  # lossless: the CLI reads the fixture's pixels
            cache[name] = path, img, load_dense(path)
        return cache[name]
    return get


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils
    return mask_utils.decode(dict(size=rle["size"], counts=rle["counts"].encode())).astype(bool)


# --- RLE ---------------------------------------------------------------------------------------------------

def test_rle_encode_is_pycocotools_encoding():
    """Whole masks and regions placed in an image (runs continuing into the next column included)
    give pycocotools' compressed counts."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(500):
        H, W = (int(v) for v in rng.integers(1, 12, 2))
        full = rng.random((H, W)) < rng.random()
        want = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))["counts"].decode()
        assert rle_encode(full) == dict(size=[H, W], counts=want)
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        h, w = int(rng.integers(1, H - y0 + 1)), int(rng.integers(1, W - x0 + 1))
        placed = np.zeros((H, W), bool)
        placed[y0:y0 + h, x0:x0 + w] = full[y0:y0 + h, x0:x0 + w]
        want = mask_utils.encode(np.asfortranarray(placed.astype(np.uint8)))["counts"].decode()
        assert rle_encode(placed[y0:y0 + h, x0:x0 + w], (H, W), (y0, x0))["counts"] == want
    big = rng.random((300, 500)) < 0.5  # counts above 2**5, differences of both signs
    assert rle_encode(big)["counts"] == mask_utils.encode(np.asfortranarray(big.astype(np.uint8)))["counts"].decode()
    with pytest.raises(ValueError, match="does not fit"):
        rle_encode(np.ones((3, 3)), (4, 4), (2, 0))


# --- detect predict ----------------------------------------------------------------------------------------

@cli
@pytest.mark.parametrize("name", ["retinanet_lit_s", "mask_rcnn_lit_ti"])
def test_detect_predict_release_writes_every_detection(release, tmp_path, capsys, name):
    path, img, model = release(name)
    out = tmp_path / "out"
    assert main(["detect", "predict", "--checkpoint", str(path), str(img), "--output", str(out)]) == 0
    assert (out / f"{name}_det.png").is_file()
    records = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    want = model.predict(np.array(Image.open(img).convert("RGB")))
    assert len(records) == len(want["scores"]) > 0  # all of them, not those above --score-thresh
    assert f"{len(records)} detection(s) -> " in capsys.readouterr().out
    coco = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))
    for k, r in enumerate(records):
        label = int(want["labels"][k])
        assert r["file_name"] == str(img) and r["label"] == label and r["category"] == model.classes[label]
        assert r["category_id"] == coco[model.classes[label]]
        x1, y1, x2, y2 = want["boxes"][k].tolist()
        assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-4)
        assert r["score"] == pytest.approx(float(want["scores"][k]), abs=1e-6)
        if "masks" in want:
            assert np.array_equal(_decode(r["segmentation"]), want["masks"][k].numpy())
        else:
            assert "segmentation" not in r


@cli
def test_detect_predict_needs_no_pycocotools(release, tmp_path, monkeypatch):
    """pycocotools is optional: predict encodes the masks' RLE itself."""
    path, img, _ = release("mask_rcnn_lit_s")
    for name in ("pycocotools", "pycocotools.mask", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert main(["detect", "predict", "--checkpoint", str(path), str(img), "--output", str(tmp_path / "o")]) == 0
    records = json.loads((tmp_path / "o" / "detections.json").read_text(encoding="utf-8"))
    assert records and all(isinstance(r["segmentation"]["counts"], str) for r in records)


def test_unpasted_release_masks_paste_into_the_same_pixels_and_picture(release):
    """predict(paste_masks=False) + paste_regions, one box at a time, gives predict()'s masks (the
    detections mmdet 2.11 leaves without a mask included) and draw_detections' picture."""
    from litvit.data.io import image_to_tensor
    from litvit.tasks.detection import draw_detections
    path, img, model = release("mask_rcnn_lit_ti")
    pixels = np.array(Image.open(img).convert("RGB"))
    full = model.predict(pixels)
    task = DetectionTask.from_release(model)
    image = image_to_tensor(Image.open(img).convert("RGB"))
    unpasted = task.predict(model, [image], paste_masks=False)[0]
    assert "masks" not in unpasted and torch.equal(unpasted["boxes"], full["boxes"])
    H, W = pixels.shape[:2]
    regions = list(task.paste_regions(unpasted["mask_probs"], unpasted["mask_boxes"], (H, W)))
    assert len(regions) == len(full["masks"]) and (~full["masks"].flatten(1).any(1)).any()  # some get no mask
    for region, want in zip(regions, full["masks"]):
        mine = torch.zeros(H, W, dtype=torch.bool)
        if region is not None:
            mine[region[0]] = region[1]
        assert torch.equal(mine, want)
    pasted = task.predict(model, [image])[0]
    a, n = draw_detections(image, pasted, task.class_names, 0.05)
    b, m = draw_detections(image, unpasted, task.class_names, 0.05, paste=task.paste_regions)
    assert n == m > 0 and np.array_equal(np.asarray(a), np.asarray(b))


@cli
def test_detect_predict_release_never_pastes_every_mask_full_size(release, tmp_path, monkeypatch):
    """N full-size maps of a large image would take N x H x W bytes: the command pastes box by box."""
    from litvit.models.official_dense import models
    path, img, model = release("mask_rcnn_lit_s")
    want = len(model.predict(np.array(Image.open(img).convert("RGB")))["scores"])

    def refuse(*args, **kwargs):
        raise AssertionError("every mask pasted into a full-size map")
    monkeypatch.setattr(models, "paste_masks", refuse)
    assert main(["detect", "predict", "--checkpoint", str(path), str(img), "--output", str(tmp_path / "o")]) == 0
    records = json.loads((tmp_path / "o" / "detections.json").read_text(encoding="utf-8"))
    assert len(records) == want > 0


@cli
def test_release_classes_that_are_not_cocos_get_no_category_id(release, tmp_path):
    path, img, model = release("retinanet_lit_s")
    fx = Fixture("retinanet_lit_s")
    meta = fx.meta()
    meta["CLASSES"] = tuple(f"thing {i}" for i in range(len(model.classes)))
    renamed = fx.write_release(tmp_path / "renamed.pth", meta=meta)
    assert main(["detect", "predict", "--checkpoint", str(renamed), str(img), "--output", str(tmp_path / "o")]) == 0
    records = json.loads((tmp_path / "o" / "detections.json").read_text(encoding="utf-8"))
    assert records and all(r["category_id"] is None and r["category"].startswith("thing ") for r in records)


@cli
def test_litvit_checkpoint_predicts_as_before_and_writes_detections_json(tmp_path, capsys):
    """A litvit Mask R-CNN checkpoint: its classes' own category ids, masks as drawn (> 0.5)."""
    task = DetectionTask("mask_rcnn", "lit_ti", num_classes=2, class_names=["square", "triangle"], cat_ids=[3, 7],
                         min_size=64, max_size=96, backbone_kwargs=dict(TINY), fpn_channels=16)
    torch.manual_seed(0)
    model = task.build_model().eval()
    ckpt = tmp_path / "last.pth"
    torch.save(dict(model=model.state_dict(), **record_entries("detection", task.checkpoint_extra())), ckpt)
    rng = np.random.default_rng(0)
    img = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["detect", "predict", "--checkpoint", str(ckpt), str(img), "--output", str(out)]) == 0
    assert (out / "x_det.png").is_file()
    records = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    from litvit.data.io import image_to_tensor
    want = task.predict(model, [image_to_tensor(Image.open(img).convert("RGB"))])[0]
    assert len(records) == len(want["scores"]) > 0
    for r, box, label, mask in zip(records, want["boxes"].tolist(), want["labels"].tolist(), want["masks"]):
        assert r["label"] == label - 1 and r["category"] == ["square", "triangle"][label - 1]
        assert r["category_id"] == [3, 7][label - 1]
        assert r["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=1e-4)
        assert np.array_equal(_decode(r["segmentation"]), (mask[0] > 0.5).numpy())


# --- detect eval -------------------------------------------------------------------------------------------

def _coco_from_predictions(root: Path, img: Path, model, ids_by_name: dict, names=None) -> Path:
    """A one-image COCO set whose annotations are the model's own detections (masks included)."""
    pixels = np.array(Image.open(img).convert("RGB"))
    want = model.predict(pixels)
    anns = []
    for k, (box, label) in enumerate(zip(want["boxes"].tolist(), want["labels"].tolist())):
        x1, y1, x2, y2 = box
        ann = dict(id=k + 1, image_id=1, category_id=ids_by_name[model.classes[label]], iscrowd=0,
                   bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1))
        if "masks" in want:
            if not want["masks"][k].any():
                continue  # mmdet 2.11 gives some detections no mask
            ann["segmentation"] = rle_encode(want["masks"][k].numpy())
            ann["area"] = float(want["masks"][k].sum())
        anns.append(ann)
    cats = [dict(id=i, name=n) for n, i in ids_by_name.items() if names is None or n in names]
    ann_file = root / "val.json"
    ann_file.write_text(json.dumps(dict(images=[dict(id=1, file_name=img.name, height=pixels.shape[0],
                                                     width=pixels.shape[1])],
                                        annotations=anns, categories=cats)), encoding="utf-8")
    return ann_file


@cli
def test_detect_eval_release_on_its_own_detections_is_perfect(release, tmp_path, capsys):
    """Categories matched by name: the annotation file lists the classes in another order, with other ids."""
    pytest.importorskip("pycocotools")
    path, img, model = release("retinanet_lit_s")
    ids = {n: 100 - i for i, n in reversed(list(enumerate(model.classes)))}
    ann = _coco_from_predictions(tmp_path, img, model, ids)
    assert main(["detect", "eval", "--checkpoint", str(path), "--val-images", str(img.parent), "--val-ann", str(ann),
                 "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "bbox_AP 100.00 %" in last and "bbox_AP50 100.00 %" in last


@cli
def test_detect_eval_mask_rcnn_release_gives_mask_ap(release, tmp_path, capsys):
    """Box and mask AP of the CLI are those of pycocotools on the release's own predict(); the
    detections mmdet 2.11 leaves without a mask are not annotated, so they count as false positives."""
    pytest.importorskip("pycocotools")
    from litvit.data.coco import CocoDetection
    from litvit.metrics import coco_evaluate, coco_results
    path, img, model = release("mask_rcnn_lit_s")
    ids = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))
    ann = _coco_from_predictions(tmp_path, img, model, ids, model.classes)
    assert main(["detect", "eval", "--checkpoint", str(path), "--val-images", str(img.parent), "--val-ann", str(ann),
                 "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = model.predict(np.array(Image.open(img).convert("RGB")))
    out = dict(out, labels=out["labels"] + 1, masks=out["masks"][:, None].float())
    want, _ = coco_evaluate(CocoDetection(str(img.parent), str(ann), train=False).coco,
                            coco_results([out], [1], [0] + [ids[c] for c in model.classes]), [1], ("bbox", "segm"))
    assert want["segm_AP"] > 80 and want["bbox_AP"] > 80
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75"):
        assert f"{key} {want[key]:.2f} %" in last, (key, last)


@cli
def test_detect_eval_refuses_categories_that_are_not_the_releases(release, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    path, img, model = release("retinanet_lit_s")
    ids = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))
    ann = _coco_from_predictions(tmp_path, img, model, ids, names=COCO_CLASSES)  # 80 categories, 12 classes
    rc = main(["detect", "eval", "--checkpoint", str(path), "--val-images", str(img.parent), "--val-ann", str(ann),
               "--workers", "0", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert "does not hold the release's 12 classes" in err and "68 categories there are not among its classes" in err


# --- segment -----------------------------------------------------------------------------------------------

@cli
def test_segment_predict_release_labels_and_palette(release, tmp_path):
    path, img, model = release("sem_fpn_lit_ti")
    out = tmp_path / "out"
    assert main(["segment", "predict", "--checkpoint", str(path), str(img), "--output", str(out)]) == 0
    labels = np.array(Image.open(out / f"{img.stem}_labels.png"))
    want = model.predict(np.array(Image.open(img).convert("RGB")))["labels"].numpy()
    assert labels.shape == want.shape and (labels == want).all()
    side = np.array(Image.open(out / f"{img.stem}_seg.png"))
    W = labels.shape[1]
    colours = np.asarray(model.palette, np.uint8)
    assert (side[:, 2 * W:] == colours[labels]).all()  # the release's palette, not litvit's


def _ade_from_predictions(root: Path, img: Path, model, reduce_zero_label: bool) -> Path:
    for sub in ("images/validation", "annotations/validation"):
        (root / sub).mkdir(parents=True)
    Image.open(img).save(root / "images/validation" / img.name)
    labels = model.predict(np.array(Image.open(img).convert("RGB")))["labels"].numpy()
    Image.fromarray((labels + int(reduce_zero_label)).astype(np.uint8)).save(
        root / "annotations/validation" / f"{img.stem}.png")
    return root


@cli
def test_segment_eval_release_on_its_own_labels_is_perfect(release, tmp_path, capsys):
    """The fixture's config is ADE20K's: labels 1..150 with 0 ignored (reduce_zero_label)."""
    path, img, model = release("sem_fpn_lit_ti")
    assert release_reduce_zero_label(model.config)
    ade = _ade_from_predictions(tmp_path / "ade", img, model, reduce_zero_label=True)
    assert main(["segment", "eval", "--checkpoint", str(path), "--data", str(ade), "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "mIoU 100.00 %" in last and "aAcc 100.00 %" in last


def test_reduce_zero_label_comes_from_the_config():
    assert release_reduce_zero_label({}) is True
    assert release_reduce_zero_label(dict(data=dict(test=dict(type="ADE20KDataset")))) is True
    assert release_reduce_zero_label(dict(data=dict(test=dict(type="CustomDataset", reduce_zero_label=False)))) is False
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=False)]
    assert release_reduce_zero_label(dict(data=dict(train=dict(type="CustomDataset", pipeline=pipeline)))) is False


# --- release names: downloaded once, from the URL table ----------------------------------------------------

@pytest.fixture
def loopback_only(monkeypatch):
    """Every socket connection made during the test is recorded; one off the loopback fails."""
    seen = []
    connect = socket.socket.connect

    def guarded(sock, address):
        seen.append(address)
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"connection to {address} attempted")
        return connect(sock, address)
    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


@cli
def test_release_name_downloads_into_the_torch_hub_cache(release, tmp_path, monkeypatch, loopback_only, capsys):
    path, img, model = release("sem_fpn_lit_ti")
    served = tmp_path / "served"
    served.mkdir()
    (served / "sem_fpn_lit_ti.pth").write_bytes(path.read_bytes())
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sem_fpn_lit_ti.pth"
        monkeypatch.setitem(load.RELEASES, "sem_fpn_lit_ti", url)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() reads TORCH_HOME
        monkeypatch.chdir(tmp_path)
        loaded = load_dense("sem_fpn_lit_ti")
        assert f"downloading {url} to " in capsys.readouterr().err
        cached = tmp_path / "torch" / "hub" / "checkpoints" / "sem_fpn_lit_ti.pth"
        assert cached.read_bytes() == path.read_bytes() and loopback_only
        assert loaded.classes == model.classes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    # the CLI takes the name too, from the cache now (the server is gone)
    out = tmp_path / "out"
    assert main(["segment", "predict", "--checkpoint", "sem_fpn_lit_ti", str(img), "--output", str(out),
                 "--no-progress"]) == 0
    labels = np.array(Image.open(out / f"{img.stem}_labels.png"))
    assert (labels == model.predict(np.array(Image.open(img).convert("RGB")))["labels"].numpy()).all()


# --- bad input: one line -----------------------------------------------------------------------------------

@cli
@pytest.mark.parametrize("case", ["wrong-task", "ema", "amp", "missing"])
def test_bad_release_use_is_one_line(release, tmp_path, capsys, case):
    seg, seg_img, _ = release("sem_fpn_lit_ti")
    det, det_img, _ = release("retinanet_lit_s")
    out = str(tmp_path / "out")
    argv, said = dict(
        **{"wrong-task": (["detect", "predict", "--checkpoint", str(seg), str(seg_img), "--output", out],
                          "is a Semantic FPN release: use `litvit segment`"),
           "ema": (["detect", "predict", "--checkpoint", str(det), str(det_img), "--output", out, "--ema"],
                   "hold no EMA weights"),
           "amp": (["segment", "eval", "--checkpoint", str(seg), "--data", str(tmp_path), "--amp", "bf16"],
                   "float32 inference"),
           "missing": (["segment", "predict", "--checkpoint", "sem_fpn_lit_x", str(seg_img), "--output", out],
                       "a file, or a release: retina_lit_ti")})[case]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and said in err, err
    assert not Path(out).exists()
