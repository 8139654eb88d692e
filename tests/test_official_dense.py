"""The authors' dense releases (mmdet 2.11 / mmseg 0.13) in litvit, stage by stage against their code.

``tests/data/official_dense/*.npz`` hold seven tiny releases made by the authors' own code (RetinaNet,
Mask R-CNN, Semantic FPN on LIT-Ti and LIT-S; other seeds, widths, depths, heads, MLP ratios,
classes, test scales and images than the reference tool's defaults) and what their
``inference_detector`` / ``inference_segmentor`` computed on each image (``generate.py`` there
says how). Each test writes the release as mmcv's ``save_checkpoint`` does, loads it with
:func:`litvit.models.official_dense.load_dense` and compares one stage: the network input
(exactly), backbone and FPN maps (1e-4 relative), raw head outputs, proposals, RoI features and
logits, detections (label, box, score), masks (IoU) and label maps (agreement).
"""
import hashlib
import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litvit.errors import CheckpointMismatchError
from litvit.models.official_dense import load_dense, parse_config, resize_bilinear_u8

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "official_dense"
NAMES = ["retinanet_lit_ti", "retinanet_lit_s", "mask_rcnn_lit_ti", "mask_rcnn_lit_s", "sem_fpn_lit_ti",
         "sem_fpn_lit_s", "sem_fpn_lit_ti_grid"]
DET = NAMES[:4]
RTOL = 1e-4


class Fixture:
    """One ``.npz`` of ``generate.py``: packed arrays and a JSON record."""

    def __init__(self, name: str):
        with np.load(DATA / f"{name}.npz", allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.record = json.loads(self.arrays["record"].tobytes().decode())
        self.name = name

    def has(self, key: str) -> bool:
        return key in self.record["index"]

    def get(self, key: str) -> np.ndarray:
        e = self.record["index"][key]
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        return self.arrays[e["kind"]][e["offset"]:e["offset"] + n].reshape(e["shape"])

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.get(key).copy())

    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        sd = OrderedDict()
        for e in self.record["state_dict"]:
            if "exp" in e:
                q = self.get("sd/" + e["key"]).astype(np.float32)
                sd[e["key"]] = torch.from_numpy(q * np.float32(2.0 ** e["exp"])).reshape(e["shape"])
            else:
                sd[e["key"]] = torch.tensor(e["values"], dtype=getattr(torch, e["dtype"])).reshape(e["shape"])
        return sd

    def meta(self) -> dict:
        meta = dict(self.record["meta"])
        meta["CLASSES"] = tuple(meta["CLASSES"])  # what mmcv saves
        return meta

    def image(self) -> np.ndarray:
        return np.array(Image.open(io.BytesIO(self.get("image").tobytes())).convert("RGB"))

    def write_release(self, path: Path, meta: dict = None, **extra) -> Path:
        """The release file as mmcv's ``save_checkpoint`` writes it."""
        torch.save(dict(meta=self.meta() if meta is None else meta, state_dict=self.state_dict(), **extra), path)
        return path

    def stage(self, key: str):
        return self.record["stages"][key], self.tensor("stage/" + key)


def _stats(t: torch.Tensor) -> list:
    d = t.double()
    return [d.sum().item(), d.abs().sum().item(), (d * d).sum().item(), d.min().item(), d.max().item()]


def assert_stage(fx: Fixture, key: str, mine: torch.Tensor, rtol: float = RTOL):
    """``mine`` (the full tensor) equals the authors' within ``rtol`` of its largest value: its
    recorded subsample element-wise, and its sum, sum of |x|, sum of squares, min and max."""
    info, ref = fx.stage(key)
    assert list(mine.shape) == info["full_shape"], key
    s = info["stride"]
    sub = mine[..., ::s, ::s] if mine.dim() >= 3 else mine
    scale = max(ref.abs().max().item(), 1e-6)
    err = (sub - ref).abs().max().item() / scale
    assert err <= rtol, f"{fx.name} {key}: max relative difference {err:.2e}"
    got, want = _stats(mine), info["stats"]
    peak = max(abs(want[3]), abs(want[4]))
    assert abs(got[0] - want[0]) <= rtol * want[1], (key, "sum")
    assert abs(got[1] - want[1]) <= rtol * want[1], (key, "sum |x|")
    assert abs(got[2] - want[2]) <= 2 * rtol * want[2], (key, "sum x^2")
    assert abs(got[3] - want[3]) <= rtol * peak and abs(got[4] - want[4]) <= rtol * peak, (key, "min/max")


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a (N, 4) and b (M, 4), (N, M)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def match_detections(mine_boxes, mine_scores, mine_labels, ref_boxes, ref_scores, ref_labels,
                     score_tol: float = 1e-4, iou_min: float = 0.999):
    """Index into ``mine`` of each reference detection (same label, IoU >= iou_min or, for boxes
    without area (clamped to the border), corners within 0.01 px; score within score_tol), -1
    where none."""
    iou = _iou(ref_boxes, mine_boxes)
    same_box = (iou >= iou_min) | ((ref_boxes[:, None] - mine_boxes[None]).abs().amax(-1) <= 1e-2)
    ok = (ref_labels[:, None] == mine_labels[None, :]) & same_box & \
         ((ref_scores[:, None] - mine_scores[None, :]).abs() <= score_tol)
    taken = torch.zeros(len(mine_boxes), dtype=torch.bool)
    match = []
    for i in range(len(ref_boxes)):
        cand = (ok[i] & ~taken).nonzero().flatten()
        j = cand[iou[i, cand].argmax()].item() if len(cand) else -1
        if j >= 0:
            taken[j] = True
        match.append(j)
    return torch.tensor(match, dtype=torch.long)


def _decode_runs(runs: np.ndarray, shape) -> np.ndarray:
    """Row-major run lengths (zeros first) -> bool mask."""
    return np.repeat(np.arange(len(runs)) % 2, runs).astype(bool).reshape(shape)


# --- one run per release, shared by the tests -------------------------------------------------------

class Run:
    """A fixture's release loaded by litvit and run stage by stage on its image."""

    def __init__(self, name: str, tmp: Path):
        self.fx = fx = Fixture(name)
        self.path = fx.write_release(tmp / f"{name}.pth")
        self.model = m = load_dense(self.path)
        self.image = fx.image()
        with torch.no_grad():
            self.x, self.meta = m.preprocess(self.image)
            self.backbone = m.backbone(self.x)
            self.neck = m.neck(self.backbone)
            if m.kind == "retinanet":
                self.cls_scores, self.bbox_preds = m.bbox_head(self.neck)
                self.dets, self.labels = m.get_bboxes(self.cls_scores, self.bbox_preds, self.meta)
            elif m.kind == "mask_rcnn":
                self.cls_scores, self.bbox_preds = m.rpn_head(self.neck)
                self.proposals = m.get_proposals(self.cls_scores, self.bbox_preds, self.meta)
                self.rois, self.roi_cls, self.roi_reg = m.bbox_forward(self.neck, self.proposals)
                extractor = m.roi_head.bbox_roi_extractor
                self.roi_feats = extractor(self.neck[:extractor.num_inputs], self.rois)
                self.dets, self.labels = m.get_bboxes(self.rois, self.roi_cls, self.roi_reg, self.meta)
                boxes = self.dets[:, :4] * self.dets.new_tensor(self.meta["scale_factor"])
                mask_rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1)
                extractor = m.roi_head.mask_roi_extractor
                self.mask_feats = extractor(self.neck[:extractor.num_inputs], mask_rois)
                self.mask_pred = m.roi_head.mask_head(self.mask_feats)
            else:
                self.logits = m.decode_head(self.neck)
                self.encode_decode = m.encode_decode(self.x)
                self.seg_prob = m.inference(self.x, self.meta)
        self.out = m.predict(self.image)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = Run(name, tmp_path_factory.mktemp(name))
        return cache[name]
    return get


# --- the release as a model ----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_release_loads_from_the_file_alone(runs, name):
    r = runs(name)
    m, fx = r.model, r.fx
    spec = fx.record["spec"]
    assert not m.training and m.kind == {"retinanet": "retinanet", "mask": "mask_rcnn", "sem": "semantic_fpn"}[
        name.split("_")[0]]
    assert m.classes == fx.meta()["CLASSES"]
    if m.kind == "semantic_fpn":
        assert m.palette == fx.meta()["PALETTE"] and len(m.classes) == 150
    else:
        assert len(m.classes) == spec["classes"]
    lit = m.backbone.wrapped
    assert [len(s.blocks) for s in lit.stages] == spec["depths"]
    assert list(lit.embed_dims) == spec["dims"]
    heads = [s.blocks[0].attn.num_heads for s in lit.stages if s.blocks[0].attn is not None]
    assert heads == (spec["heads"][2:] if "heads" in spec else [5, 8])  # LIT-Ti's are fixed by the authors' class
    norms = sorted(int(i) for i in m.backbone.out_norms)
    assert norms == ([] if "lit_ti" in name else [0, 1, 2, 3] if m.kind == "semantic_fpn" else [1, 2, 3])
    assert m.pipeline.img_scale == tuple(spec["scale"])


@pytest.mark.parametrize("name", NAMES)
def test_network_input_is_exact(runs, name):
    r = runs(name)
    want = r.fx.record["img_meta"]
    assert list(r.meta["img_shape"]) == want["img_shape"] and list(r.meta["pad_shape"]) == want["pad_shape"]
    assert list(r.meta["ori_shape"]) == want["ori_shape"]
    assert r.meta["scale_factor"].tolist() == [np.float32(v) for v in want["scale_factor"]]
    assert list(r.x.shape) == r.fx.record["stages"]["img"]["full_shape"]
    assert hashlib.sha256(r.x.numpy().tobytes()).hexdigest() == r.fx.record["img_sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_and_fpn_maps(runs, name):
    r = runs(name)
    for i, t in enumerate(r.backbone):
        assert_stage(r.fx, f"backbone.{i}", t)
    assert len(r.neck) == sum(k.startswith("neck.") for k in r.fx.record["stages"])
    for i, t in enumerate(r.neck):
        assert_stage(r.fx, f"neck.{i}", t)


@pytest.mark.parametrize("name", DET)
def test_dense_head_outputs(runs, name):
    r = runs(name)
    prefix = "head" if r.model.kind == "retinanet" else "rpn"
    for i, (c, b) in enumerate(zip(r.cls_scores, r.bbox_preds)):
        assert_stage(r.fx, f"{prefix}.cls_scores.{i}", c)
        assert_stage(r.fx, f"{prefix}.bbox_preds.{i}", b)


@pytest.mark.parametrize("name", ["mask_rcnn_lit_ti", "mask_rcnn_lit_s"])
def test_proposals_and_roi_head(runs, name):
    r, fx = runs(name), runs(name).fx
    info = fx.record["values"]["rpn.proposals"]
    assert len(r.proposals) == info["rows"]
    sums = r.proposals.double().sum(0)
    assert torch.allclose(sums, torch.tensor(info["sum"], dtype=torch.float64), rtol=1e-5), "proposal sums"
    ref = fx.tensor("value/rpn.proposals")  # the authors' first proposals; near-equal scores may swap places
    d = (ref[:, None, :4] - r.proposals[None, :, :4]).abs().amax(-1)
    j = d.argmin(1)
    assert d.min(1).values.max() < 1e-2 and (ref[:, 4] - r.proposals[j, 4]).abs().max() < 1e-5
    for key, mine in (("roi.cls_score", r.roi_cls[j]), ("roi.bbox_pred", r.roi_reg[j])):
        want = fx.tensor("value/" + key)
        assert (mine - want).abs().max() <= RTOL * want.abs().max(), key
    want = fx.tensor("value/roi.bbox_feats")
    assert (r.roi_feats[j[:len(want)]] - want).abs().max() <= RTOL * want.abs().max()


@pytest.mark.parametrize("name", DET)
def test_detections(runs, name):
    r, fx = runs(name), runs(name).fx
    ref = fx.tensor("value/det_bboxes")
    ref_labels = fx.tensor("value/det_labels")
    assert len(r.dets) == len(ref) > 0
    match = match_detections(r.dets[:, :4], r.dets[:, 4], r.labels, ref[:, :4], ref[:, 4], ref_labels)
    # a miss is allowed only at the max_per_img cut, where near-equal scores may trade places
    missed = match < 0
    assert (ref[missed, 4] <= ref[:, 4].min() + 1e-4).all(), f"{int(missed.sum())} detections not reproduced"
    # predict(): the authors' per-class order (by class, then score)
    order = torch.sort(ref_labels, stable=True).indices
    assert torch.equal(r.out["labels"], ref_labels[order])
    assert torch.allclose(r.out["boxes"], ref[order, :4], atol=1e-3 * ref[:, :4].abs().max().item())
    assert torch.allclose(r.out["scores"], ref[order, 4], atol=1e-4)


@pytest.mark.parametrize("name", ["mask_rcnn_lit_ti", "mask_rcnn_lit_s"])
def test_masks(runs, name):
    r, fx = runs(name), runs(name).fx
    masks = r.out["masks"]
    h, w = fx.record["values"]["mask_shape"]
    assert masks.dtype == torch.bool and tuple(masks.shape[1:]) == (h, w) == tuple(r.image.shape[:2])
    runs_ = fx.get("value/mask_runs")
    ends = np.cumsum(fx.record["values"]["mask_runs"])
    for i, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
        want = _decode_runs(runs_[a:b], (h, w))
        mine = masks[i].numpy()
        union = (want | mine).sum()
        assert union == 0 or (want & mine).sum() / union >= 0.99, f"mask {i}"
    areas = masks.flatten(1).sum(1)
    want_areas = fx.tensor("value/result.mask_areas")
    assert ((areas - want_areas).abs() <= torch.clamp(want_areas * 0.01, min=2)).all()
    # mmdet 2.11 gives no mask to a detection whose box ends at y = 0 (mask_rcnn_lit_ti has such)
    first = {c: int((r.out["labels"] < c).sum()) for c in range(len(r.model.classes))}
    for c, j in fx.record["values"]["empty_masks"]:
        assert r.out["boxes"][first[c] + j, 3] == 0 and not masks[first[c] + j].any()
    # the mask head itself on the first detections (features and logits of their class)
    ref = fx.tensor("value/det_bboxes")
    match = match_detections(r.dets[:, :4], r.dets[:, 4], r.labels, ref[:, :4], ref[:, 4],
                             fx.tensor("value/det_labels"))
    want = fx.tensor("value/roi.mask_feats")
    mine = r.mask_feats[match[:1]][:, :, ::3, ::3]
    assert (mine - want).abs().max() <= RTOL * want.abs().max()
    want = fx.tensor("value/roi.mask_pred_of_label")
    k = match[:len(want)]
    mine = r.mask_pred[k, r.labels[k]][:, ::2, ::2]
    assert (mine - want).abs().max() <= RTOL * want.abs().max()


@pytest.mark.parametrize("name", ["sem_fpn_lit_ti", "sem_fpn_lit_s", "sem_fpn_lit_ti_grid"])
def test_label_maps(runs, name):
    r, fx = runs(name), runs(name).fx
    assert_stage(fx, "decode.logits", r.logits)
    assert_stage(fx, "encode_decode", r.encode_decode)
    assert_stage(fx, "seg_prob", r.seg_prob)
    labels = r.out["labels"]
    want = torch.from_numpy(fx.get("value/label_map").astype(np.int64))
    assert labels.shape == want.shape == r.image.shape[:2]
    assert (labels == want).float().mean() >= 0.999


# --- the file -----------------------------------------------------------------------------------

def test_release_without_config_uses_the_authors_settings(runs, tmp_path):
    """retinanet_lit_ti keeps every official setting but its sizes: without ``meta['config']`` the
    architecture comes from the state dict and the rest from the authors' configs."""
    r = runs("retinanet_lit_ti")
    meta = {k: v for k, v in r.fx.meta().items() if k != "config"}
    model = load_dense(r.fx.write_release(tmp_path / "bare.pth", meta=meta))
    assert model.config == {} and model.pipeline.img_scale == (1333, 800)
    out = model.predict(r.image)
    assert torch.equal(out["labels"], r.out["labels"]) and torch.allclose(out["boxes"], r.out["boxes"])


@pytest.mark.parametrize("name", DET)
def test_defaults_are_the_authors_settings(runs, name):
    """A release without a config gets the settings of the authors' configs, which the fixtures
    keep (only their sizes, classes and test scales differ)."""
    from litvit.models.official_dense import build_dense
    r = runs(name)
    bare = build_dense(r.fx.state_dict(), {k: v for k, v in r.fx.meta().items() if k != "config"})
    m = r.model
    assert bare.test_cfg == m.test_cfg
    assert (bare.neck.start_level, bare.neck.add_extra_convs, bare.neck.num_outs) == \
        (m.neck.start_level, m.neck.add_extra_convs, m.neck.num_outs)
    assert all(torch.equal(a, b) for a, b in zip(bare.anchor_generator.base, m.anchor_generator.base))
    assert bare.anchor_generator.strides == m.anchor_generator.strides
    if m.kind == "retinanet":
        assert bare.coder == m.coder
    else:
        assert (bare.rpn_coder, bare.rcnn_coder) == (m.rpn_coder, m.rcnn_coder)
        for part in ("bbox_roi_extractor", "mask_roi_extractor"):
            a, b = getattr(bare.roi_head, part), getattr(m.roi_head, part)
            settings = ("output_size", "featmap_strides", "sampling_ratio", "aligned", "finest_scale")
            assert [getattr(a, k) for k in settings] == [getattr(b, k) for k in settings], part
    assert (bare.pipeline.mean, bare.pipeline.std, bare.pipeline.to_rgb, bare.pipeline.size_divisor) == \
        (m.pipeline.mean, m.pipeline.std, m.pipeline.to_rgb, m.pipeline.size_divisor)


def test_faster_rcnn_and_pil_input(runs, tmp_path):
    """Without ``roi_head.mask_head`` a release is a Faster R-CNN: the same boxes, no masks; a PIL
    image gives what its array gives."""
    r = runs("mask_rcnn_lit_s")
    sd = {k: v for k, v in r.fx.state_dict().items() if not k.startswith("roi_head.mask_head.")}
    torch.save(dict(meta=r.fx.meta(), state_dict=sd), tmp_path / "faster.pth")
    model = load_dense(tmp_path / "faster.pth")
    assert not model.with_mask
    out = model.predict(Image.fromarray(r.image))
    assert "masks" not in out and torch.equal(out["labels"], r.out["labels"])
    assert torch.equal(out["boxes"], r.out["boxes"]) and torch.equal(out["scores"], r.out["scores"])


def test_old_style_rpn_settings_are_read():
    """mask_rcnn_lit_ti's config has the old RPN keys (nms_thr, max_num), as the authors' LIT-Ti config."""
    from litvit.models.official_dense import build_dense
    fx = Fixture("mask_rcnn_lit_ti")
    meta = fx.meta()
    assert "nms_thr=0.7" in meta["config"] and "max_num=1000" in meta["config"]
    meta["config"] = meta["config"].replace("nms_thr=0.7", "nms_thr=0.6").replace("max_num=1000", "max_num=50")
    model = build_dense(fx.state_dict(), meta)
    assert model.test_cfg["rpn"] == dict(nms_pre=1000, max_per_img=50, iou_threshold=0.6, min_bbox_size=0.0)


def test_release_with_optimizer_state_loads(runs, tmp_path):
    """Releases saved during training also hold the optimizer (AdamW) state; the reader accepts it."""
    fx = runs("sem_fpn_lit_ti").fx
    optimizer = dict(state={0: dict(step=torch.tensor(3.0), exp_avg=torch.zeros(2), exp_avg_sq=torch.zeros(2))},
                     param_groups=[dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4, amsgrad=False,
                                        params=[0])])
    model = load_dense(fx.write_release(tmp_path / "r.pth", optimizer=optimizer))
    assert model.kind == "semantic_fpn"


def test_not_a_release_is_refused(runs, tmp_path):
    fx = runs("retinanet_lit_s").fx
    sd = fx.state_dict()
    torch.save({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointMismatchError, match="not an mmdet/mmseg release"):
        load_dense(tmp_path / "bare.pth")
    torch.save(dict(meta={}, state_dict={k: v for k, v in sd.items() if not k.startswith("bbox_head.")}),
               tmp_path / "headless.pth")
    with pytest.raises(CheckpointMismatchError, match="not a RetinaNet, Mask R-CNN or Semantic FPN"):
        load_dense(tmp_path / "headless.pth")
    sd["bbox_head.retina_cls.weight"] = sd["bbox_head.retina_cls.weight"][:-1]
    torch.save(dict(meta={}, state_dict=sd), tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatchError, match="not a multiple of 9 anchors"):
        load_dense(tmp_path / "odd.pth")


def test_config_text_is_read_not_run():
    cfg = parse_config("norm = dict(type='BN')\nmodel = dict(neck=dict(num_outs=5, norm=norm), s=(1333, 800), "
                       "m=[-1.5, +2], d={'a b': None, 'c': True})")
    assert cfg["model"] == dict(neck=dict(num_outs=5, norm=dict(type="BN")), s=(1333, 800), m=[-1.5, 2],
                                d={"a b": None, "c": True})
    for text in ("import os", "x = __import__('os').system('true')", "x = open('f')", "x = 1 + 2",
                 "x = dict(**y)", "x = y", "x.y = 1", "def f(): pass"):
        with pytest.raises(ValueError, match="line 1"):
            parse_config(text)
    with pytest.raises(ValueError, match="not Python"):
        parse_config("x = (")


# OpenCV's results (cv2.resize INTER_LINEAR) for seeded random images: up- and downscaling, an
# exact 2x reduction (OpenCV takes its area path there), and extreme aspect ratios.
_CV2_RESIZE = [
    ((37, 53), (80, 61), "3145cd3baf0dddd30700b60add8b63d6"),
    ((120, 160), (1067, 800), "1089fe2fd60f540f08335ac71180b941"),
    ((480, 640), (213, 160), "19dfdc457534fafb069bc45d91d885df"),
    ((64, 96), (48, 32), "d2b0a8c901c33cf972dea0699c58fbb9"),
    ((50, 70), (35, 25), "4a4cfee033685d38b8d05999f0dcdc61"),
    ((9, 300), (1333, 40), "dfbcd2d00cef76d2af4a198904971753"),
    ((301, 7), (5, 555), "a2c4f1d10e6bf10c006306b50cc055cb"),
]


@pytest.mark.parametrize("src, size, digest", _CV2_RESIZE)
def test_resize_is_opencv_bit_for_bit(src, size, digest):
    h, w = src
    img = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = resize_bilinear_u8(img, size)
    assert out.shape == (size[1], size[0], 3)
    assert hashlib.sha256(out.tobytes()).hexdigest()[:32] == digest


def test_resize_matches_opencv_on_random_sizes():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w, H, W = (int(v) for v in rng.integers(2, 300, 4))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(resize_bilinear_u8(img, (W, H)), cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR))
