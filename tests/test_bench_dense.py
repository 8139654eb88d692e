"""``litvit bench --dense-releases`` (:mod:`litvit.tools.bench_dense`): the full-size layouts of the
authors' six dense releases have the authors' parameter counts, a layout is a release litvit loads
with the settings of its config text, and the bench runs end to end on tiny layouts. The authors'
code (``--official``) is never needed: only its errors are checked here."""
import json
import math
import re

import numpy as np
import pytest
import torch

from litvit.cli import main
from litvit.models.official_dense import dense_from_checkpoint, is_release, parse_config
from litvit.tools import bench_dense as D

pytestmark = pytest.mark.unit

# sum(p.numel() for p in model.parameters()) of the authors' own models (mmdet 2.11 / mmseg 0.13)
# built from their six full-size configs by shared/tools/official-dense
AUTHORS_PARAMS = dict(retinanet_lit_ti=29_621_708, retinanet_lit_s=38_904_292, mask_rcnn_lit_ti=39_539_144,
                      mask_rcnn_lit_s=48_240_096, sem_fpn_lit_ti=23_638_382, sem_fpn_lit_s=31_850_502)


@pytest.mark.parametrize("name", list(D.ARCHITECTURES))
def test_full_size_layouts_have_the_authors_parameter_counts(name):
    release, litvit = D.litvit_params(name)  # on the meta device: nothing allocated
    assert release == litvit == AUTHORS_PARAMS[name]


@pytest.mark.parametrize("name", list(D.ARCHITECTURES))
def test_layout_names_the_entries_of_the_authors_releases(name):
    """The entries of a layout are those of the tiny release the authors' code wrote (indices aside:
    the sizes differ): no relative-position index, LIT-S's output norms, their head names."""
    from test_official_dense import Fixture

    def kinds(keys):
        return {re.sub(r"\d+", "#", k) for k in keys}
    assert kinds(D.release_layout(name, tiny=True)[0]) == kinds(Fixture(name).state_dict())


def test_layout_is_a_release_with_its_config():
    """The config text reads back as the config it was written from, and litvit's model built from
    the release follows it (test scale, anchors, test settings); tiny layouts are smaller."""
    for name in D.ARCHITECTURES:
        cfg = D.release_config(name)
        assert parse_config(D.config_text(cfg)) == cfg
    sd, meta = D.release_layout("retinanet_lit_s", tiny=True)
    assert is_release(dict(meta=meta, state_dict=sd)) and meta["mmdet_version"] == "2.11.0"
    model = dense_from_checkpoint(dict(meta=meta, state_dict=sd))
    assert model.pipeline.img_scale == D.TINY["det_scale"] and len(model.classes) == 80
    assert model.neck.num_outs == 5 and model.test_cfg["score_thr"] == 0.05
    sd2, _ = D.release_layout("retinanet_lit_s", tiny=True)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)  # the same weights every time (fixed seed)
    sd3, _ = D.release_layout("retinanet_lit_s", tiny=True, seed=1)
    assert not torch.equal(sd["neck.fpn_convs.0.conv.weight"], sd3["neck.fpn_convs.0.conv.weight"])
    # the authors' class prior on RetinaNet's classifier, but for the busy classes
    bias = sd["bbox_head.retina_cls.bias"].view(9, 80)
    busy = torch.zeros(80, dtype=torch.bool)
    busy[list(D.BUSY_CLASSES)] = True
    assert torch.all(bias[:, busy] == 0) and torch.allclose(bias[:, ~busy], torch.tensor(-math.log(99.0)))
    seg_sd, seg_meta = D.release_layout("sem_fpn_lit_ti", tiny=True)
    seg = dense_from_checkpoint(dict(meta=seg_meta, state_dict=seg_sd))
    assert seg.pipeline.img_scale == D.TINY["seg_scale"] and "mmseg_version" in seg_meta
    assert D.release_params(seg_sd) < D.litvit_params("sem_fpn_lit_ti")[0]


def test_buffers_are_not_parameters():
    sd = {"a.weight": torch.zeros(3, 2), "bn.running_mean": torch.zeros(5), "bn.num_batches_tracked": torch.zeros(()),
          "l.attn.relative_position_index": torch.zeros(4, 4)}
    assert D.release_params(sd) == 6


@pytest.mark.cli
def test_bench_dense_command_on_tiny_layouts(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["bench", "--dense-releases", "mask_rcnn_lit_ti", "sem_fpn_lit_s", "--dense-tiny", "--threads", "1",
                 "--warmup", "0", "--reps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = res["dense"]
    assert [r["name"] for r in rows] == ["mask_rcnn_lit_ti", "sem_fpn_lit_s"]
    for r in rows:
        assert r["tiny"] and r["image"] == list(D.TINY["image"]) and len(r["litvit_times"]) == 2
        assert 0 < min(r["litvit_times"]) <= r["litvit_s"] <= max(r["litvit_times"]) < 60
        assert r["params"] == r["litvit_params"] == D.litvit_params(r["name"], tiny=True)[0]
        assert "official_s" not in r and "ratio" not in r
        assert f"{r['params']:,}" in printed
    assert rows[0]["detections"] == 100 and rows[1]["detections"] is None  # busy: max_per_img
    assert res["machine"]["threads"] == 1 and res["machine"]["cpu"]
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cli
def test_bench_dense_command_errors(tmp_path, capsys):
    out = str(tmp_path / "d.json")
    assert main(["bench", "--dense-releases", "retina_lit_ti", "--out", out]) == 2
    assert "choose from retinanet_lit_ti" in capsys.readouterr().err
    assert main(["bench", "--dense-releases", "--dense-tiny", "--official", str(tmp_path), "--out", out]) == 2
    assert "full-size layouts only" in capsys.readouterr().err
    assert main(["bench", "--dense-releases", "sem_fpn_lit_ti", "--official", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["bench", "--dense-releases", "sem_fpn_lit_ti", "--official", str(tmp_path), "--out", out]) == 2
    assert "not a folder holding the authors" in capsys.readouterr().err
    assert main(["bench", "--official", str(tmp_path), "--out", out]) == 2
    assert "go with --dense-releases" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


def test_bench_image_is_fixed_and_structured():
    a, b = D._image((64, 48)), D._image((64, 48))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b) and a.std() > 20


def test_detections_are_counted_in_mmdets_results():
    boxes = [np.zeros((2, 5)), np.zeros((0, 5)), np.zeros((3, 5))]
    assert D._count_results(boxes) == 5 and D._count_results((boxes, [[], [], []])) == 5
