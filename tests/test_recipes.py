"""The authors' recipes: every preset resolved through ``--print-config`` against a table of the
official values written from LIT.md ("Recipes", "Dense recipes"), not from litvit's code; the
parameter groups by name and their learning rates along the schedule; SyncBN under a 2-process
gloo run; mmseg's crop and photometric semantics; RetinaNet's P6/P7."""
import json
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import litvit
import litvit.detection
import litvit.segmentation
from litvit.cli import main

from helpers import TINY

pytestmark = pytest.mark.unit

# --- the official values, from LIT.md --------------------------------------------------------------------
# (section, key) -> value; "family" rows hold per-backbone values.
LIT_TI_IMAGENET = {
    ("model", "name"): "lit_ti",
    ("model", "drop_path"): 0.1,
    ("model", "drop_path_off_epochs"): 0,
    ("optimizer", "type"): "AdamW",
    ("optimizer", "lr_per_512"): 5e-4,
    ("optimizer", "lr"): 1e-3,                # 5e-4 x 1024 / 512
    ("optimizer", "weight_decay"): 0.05,
    ("optimizer", "eps"): 1e-8,
    ("optimizer", "clip_grad"): None,
    ("optimizer", "offset_lr_mult"): 0.01,
    ("schedule", "type"): "cosine",
    ("schedule", "sched_on"): "epoch",
    ("schedule", "epochs"): 300,
    ("schedule", "warmup_epochs"): 5,
    ("schedule", "warmup_lr"): 1e-6,
    ("schedule", "min_lr"): 1e-5,
    ("augmentation", "aa"): "rand-m9-mstd0.5-inc1",
    ("augmentation", "mixup"): 0.8,
    ("augmentation", "cutmix"): 1.0,
    ("augmentation", "smoothing"): 0.1,
    ("augmentation", "reprob"): 0.25,
    ("augmentation", "repeated_aug"): 3,
    ("augmentation", "interpolation"): "bicubic",
    ("data", "crop_pct"): 224 / 256,
    ("data", "interpolation"): "bicubic",
    ("engine", "batch_size"): 1024,
    ("engine", "amp"): "fp16",                 # native AMP, on CUDA
}
LIT_SMB_IMAGENET = {
    **LIT_TI_IMAGENET, **{
        ("model", "name"): "lit_s",
        ("model", "drop_path"): 0.2,
        ("schedule", "sched_on"): "step",
        ("schedule", "warmup_epochs"): 20,
        ("schedule", "warmup_lr"): 5e-7 * 2,   # scaled by batch / 512 too
        ("schedule", "min_lr"): 5e-6 * 2,
        ("optimizer", "clip_grad"): 5.0,
        ("augmentation", "repeated_aug"): 0,
    }}
DETECTION_1X = {
    ("optimizer", "type"): "AdamW",
    ("optimizer", "weight_decay"): 1e-4,
    ("optimizer", "offset_lr_mult"): 1.0,
    ("schedule", "type"): "step",
    ("schedule", "epochs"): 12,
    ("schedule", "lr_steps"): [8, 11],
    ("schedule", "lr_gamma"): 0.1,
    ("schedule", "warmup"): "linear",
    ("schedule", "warmup_iters"): 500,
    ("schedule", "warmup_ratio"): 0.001,
    ("data", "min_size"): [800],               # single scale (1333, 800), train and test
    ("data", "max_size"): 1333,
    ("data", "test_min_size"): 800,
    ("data", "size_divisor"): 32,
    ("augmentation", "hflip"): 0.5,
    ("augmentation", "multi_scale"): False,
    ("model", "fpn_channels"): 256,
}
RETINANET = {**DETECTION_1X, **{
    ("model", "arch"): "retinanet",
    ("optimizer", "lr"): 1e-4,
    ("model", "fpn_stages"): [1, 2, 3],        # start_level=1
    ("model", "extra_levels"): "p6p7_on_input_no_relu",
}}
MASK_RCNN = {**DETECTION_1X, **{
    ("model", "arch"): "mask_rcnn",
    ("optimizer", "lr"): 2e-4,
    ("model", "fpn_stages"): [0, 1, 2, 3],
    ("model", "extra_levels"): "p6_maxpool",
}}
SEMANTIC_FPN = {
    ("optimizer", "type"): "AdamW",
    ("optimizer", "lr"): 1e-4,
    ("optimizer", "weight_decay"): 1e-4,
    ("optimizer", "offset_lr_mult"): 1.0,
    ("optimizer", "no_decay_keys"): [],
    ("schedule", "type"): "poly",
    ("schedule", "power"): 0.9,
    ("schedule", "min_lr"): 1e-6,
    ("schedule", "iters"): 80_000,
    ("engine", "batch_size"): 2,               # x 8 GPUs = 16
    ("model", "fpn_channels"): 256,
    ("model", "fpn_stages"): [0, 1, 2, 3],
    ("model", "head_channels"): 128,
    ("model", "head_norm"): "SyncBN",
    ("model", "dropout"): 0.1,
    ("augmentation", "crop_size"): 512,
    ("augmentation", "ratio_range"): [0.5, 2.0],
    ("augmentation", "cat_max_ratio"): 0.75,
    ("augmentation", "hflip"): 0.5,
    ("augmentation", "photometric"): "mmseg",
    ("data", "scale"): [2048, 512],
    ("data", "test_scale"): [2048, 512],
    ("data", "test_mode"): "whole",
}
DENSE_FAMILY = {  # per backbone
    "lit_ti": {("model", "drop_path"): 0.1, ("model", "out_norm_stages"): [],
               ("model", "pos_embed_interpolation"): "bilinear"},
    "lit_s": {("model", "drop_path"): 0.2, ("model", "pos_embed_interpolation"): None},
}
DETECTION_FAMILY = {
    "lit_ti": {("optimizer", "no_decay_keys"): [], ("engine", "amp"): "none"},
    "lit_s": {("optimizer", "no_decay_keys"): ["norm", "relative_position_bias_table", "absolute_pos_embed"],
              ("model", "out_norm_stages"): [1, 2, 3], ("model", "backbone_img_size"): [800, 800]},
}
SEGMENTATION_FAMILY = {"lit_ti": {}, "lit_s": {("model", "out_norm_stages"): [0, 1, 2, 3],
                                              ("model", "backbone_img_size"): [512, 512]}}

PRESETS = [
    (["train", "--recipe", "lit-ti"], LIT_TI_IMAGENET),
    (["train", "--recipe", "lit-smb"], LIT_SMB_IMAGENET),
    # the authors' LITv2 yaml/config.py: the same Swin trainer and values, offset weights at lr x 0.01
    (["train", "--recipe", "litv2"], {**LIT_SMB_IMAGENET, ("model", "name"): "litv2_s"}),
    (["train", "--recipe", "litv2", "--model", "litv2_b"],
     {**LIT_SMB_IMAGENET, ("model", "name"): "litv2_b", ("model", "drop_path"): 0.5}),
]
for _bb in ("lit_ti", "lit_s"):
    PRESETS += [
        (["detect", "train", "--recipe", "retinanet-1x", "--backbone", _bb],
         {**RETINANET, **DENSE_FAMILY[_bb], **DETECTION_FAMILY[_bb], ("engine", "batch_size"): 2}),
        (["detect", "train", "--recipe", "mask-rcnn-1x", "--backbone", _bb],
         {**MASK_RCNN, **DENSE_FAMILY[_bb], **DETECTION_FAMILY[_bb], ("engine", "batch_size"): 2,
          # LIT-S Mask R-CNN trained with fp16 and gradient checkpointing
          **({("engine", "amp"): "fp16", ("engine", "grad_checkpointing"): True} if _bb == "lit_s" else {})}),
        (["segment", "train", "--recipe", "semantic-fpn-80k", "--backbone", _bb],
         {**SEMANTIC_FPN, **DENSE_FAMILY[_bb], **SEGMENTATION_FAMILY[_bb]}),
    ]


def print_config(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("argv,official", PRESETS, ids=[" ".join(a[:-2] if a[0] != "train" else a) + (
    f" {a[-1]}" if a[0] != "train" else "") for a, _ in PRESETS])
@pytest.mark.cli
def test_presets_resolve_to_the_official_values(capsys, tmp_path, argv, official):
    # data paths that do not exist: --print-config must not touch them
    missing = str(tmp_path / "nowhere")
    data = {"train": ["--data", missing], "detect": ["--train-images", missing, "--train-ann", missing + ".json"],
            "segment": ["--data", missing]}[argv[0]]
    cfg = print_config(capsys, argv + data + ["--print-config", "--device", "cuda"])  # the GPU values
    for (section, key), value in official.items():
        got = cfg[section][key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6), (section, key)
        else:
            assert got == value, (section, key)
    assert not os.path.exists(missing)
    for section in ("model", "data", "optimizer", "schedule", "augmentation"):
        assert section in cfg
    for g in cfg["optimizer"]["param_groups"]:
        assert {"name", "lr_mult", "lr", "weight_decay", "tensors", "parameters"} <= set(g)


@pytest.mark.cli
def test_print_config_on_the_cpu_and_overrides(capsys):
    cfg = print_config(capsys, ["train", "--recipe", "lit-ti", "--data", "x", "--print-config", "--device", "cpu"])
    assert cfg["engine"]["amp"] == "none"  # no fp16 autocast on the CPU
    cfg = print_config(capsys, ["train", "--recipe", "lit-ti", "--model", "pvt_s_msa", "--data", "x", "--print-config"])
    assert cfg["model"]["drop_path_off_epochs"] == 100  # ablation models: no drop path for 100 epochs
    cfg = print_config(capsys, ["detect", "train", "--arch", "mask_rcnn", "--min-size", "640", "800",
                                "--weight-decay", "0.05", "--print-config"])
    assert cfg["recipe"] == "mask-rcnn-1x" and cfg["optimizer"]["lr"] == 2e-4
    assert cfg["data"]["min_size"] == [640, 800] and cfg["augmentation"]["multi_scale"]
    assert cfg["optimizer"]["weight_decay"] == 0.05 and sorted(cfg["overridden"]) == ["min_size", "weight_decay"]
    assert main(["detect", "train", "--recipe", "retinanet-1x", "--arch", "mask_rcnn", "--print-config"]) == 2


# --- parameter groups along the schedule ---------------------------------------------------------------

def _optimizer_and_scheduler(task, tc, model, steps_per_epoch, peak):
    """As litvit.engine.fit builds them."""
    groups = task.param_groups(model, tc)
    opt = torch.optim.AdamW([dict({k: v for k, v in g.items() if k != "param_names"}, lr=peak * g["lr_mult"])
                             for g in groups], lr=peak)
    return groups, opt, task.build_scheduler(opt, tc, steps_per_epoch)


def _lrs(opt):
    return {g["name"]: g["lr"] for g in opt.param_groups}


def _cosine(t, total, base, low):
    import math
    return low + 0.5 * (base - low) * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize("recipe,model", [("lit-ti", "lit_ti"), ("lit-smb", "lit_s"), ("litv2", "litv2_s")])
def test_imagenet_param_groups_by_name_and_lr_along_the_schedule(recipe, model):
    from litvit.cli.classification import add_train_args as _add_train_args, class_config as _class_config
    from litvit.cli.classification import train_config as _train_config
    from litvit.recipes import resolve_recipe as _resolve_recipe
    from litvit.tasks.classification import ClassificationTask
    import argparse
    p = argparse.ArgumentParser()
    _add_train_args(p)
    args = p.parse_args(["--recipe", recipe, "--data", "unused"])
    _, r = _resolve_recipe(args)
    task, tc = ClassificationTask(_class_config(r, args)), _train_config(r, args)
    with torch.device("meta"):
        net = litvit.create_model(model, num_classes=1000)
    spe = 4  # steps per epoch
    groups, opt, sched = _optimizer_and_scheduler(task, tc, net, spe, 1e-3)
    of = {n: g["name"] for g in groups for n in g["param_names"]}
    qkv = "l_q" if model == "litv2_s" else "qkv"
    decayed = {"patch_embed.proj.weight", f"stages.2.blocks.0.attn.{qkv}.weight", "head.weight",
               "stages.1.downsample.dtm.dconv.weight"}
    exempt = {"patch_embed.proj.bias", "patch_embed.norm.weight", "stages.2.blocks.0.norm1.weight",
              f"stages.2.blocks.0.attn.{qkv}.bias", "stages.1.downsample.dtm.norm_layer.weight",
              "stages.1.downsample.dtm.dconv.bias", "stages.1.downsample.dtm.dconv.conv_offset.bias"}
    if model == "litv2_s":
        decayed |= {"stages.0.blocks.0.mlp.dwconv.dwconv.weight", "stages.2.blocks.0.attn.h_qkv.weight"}
    elif model == "lit_ti":
        decayed |= {"stages.0.pos_embed", "stages.3.pos_embed"}  # LIT-Ti's position embeddings are decayed
        exempt |= {"stages.3.cls_token"}
    else:
        exempt |= {"stages.2.blocks.0.attn.relative_position_bias_table"}
    assert {n: of[n] for n in decayed} == {n: "decay" for n in decayed}
    assert {n: of[n] for n in exempt} == {n: "no_decay" for n in exempt}
    offsets = {n for n in of if "conv_offset.weight" in n}
    assert len(offsets) == 3 and {of[n] for n in offsets} == {"offset"}
    wd = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"decay": 0.05, "no_decay": 0.0, "offset": 0.05}

    warm_lr, min_lr = (1e-6, 1e-5)  # lit-smb: 5e-7 and 5e-6 scaled by 1024/512
    warmup, epochs = (5, 300) if recipe == "lit-ti" else (20, 300)
    assert _lrs(opt) == pytest.approx({"decay": warm_lr, "no_decay": warm_lr, "offset": warm_lr})  # step 0
    sched.step_update(warmup * spe)  # the first step after warm-up
    t, total = (warmup, epochs) if recipe == "lit-ti" else (warmup * spe, epochs * spe)
    expect = _cosine(t, total, 1e-3, min_lr)
    assert _lrs(opt) == pytest.approx({"decay": expect, "no_decay": expect, "offset": 1e-5})
    sched.step_update(epochs * spe - 1)  # the last step
    t = epochs - 1 if recipe == "lit-ti" else epochs * spe - 1
    end = _cosine(t, total, 1e-3, min_lr)
    assert _lrs(opt) == pytest.approx({"decay": end, "no_decay": end, "offset": 1e-5})
    assert end == pytest.approx(min_lr, rel=0.01)
    if recipe == "lit-ti":  # per epoch: constant within an epoch
        sched.step_update(10 * spe + 1)
        a = _lrs(opt)["decay"]
        sched.step_update(10 * spe + 3)
        assert _lrs(opt)["decay"] == a


@pytest.mark.parametrize("backbone", ["lit_ti", "lit_s"])
def test_dense_param_groups_by_name_and_lr_along_the_schedule(backbone):
    from litvit.engine import TrainConfig
    from litvit.recipes import resolve_dense_recipe
    from litvit.tasks.detection import DetectionTask
    r = resolve_dense_recipe("mask-rcnn-1x", "pvt" if backbone == "lit_ti" else "swin")
    task = DetectionTask("mask_rcnn", backbone, num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=16,
                         no_decay_keys=r["no_decay_keys"])
    tc = TrainConfig(epochs=12, lr=r["lr"], weight_decay=r["weight_decay"], offset_lr_mult=r["offset_lr_mult"])
    model = task.build_model()
    spe = 1000
    groups, opt, sched = _optimizer_and_scheduler(task, tc, model, spe, r["lr"])
    of = {n: g["name"] for g in groups for n in g["param_names"]}
    bb = "backbone.model."
    if backbone == "lit_ti":  # no per-parameter rules: everything decays, biases, norms, embeddings too
        assert [g["name"] for g in groups] == ["decay"]
        assert of[bb + "stages.0.pos_embed"] == of[bb + "stages.0.blocks.0.norm2.weight"] == "decay"
    else:
        exempt = [bb + "patch_embed.norm.weight", bb + "stages.0.blocks.0.norm2.bias",
                  bb + "stages.1.downsample.dtm.norm_layer.weight", "backbone.out_norms.1.weight",
                  bb + "stages.2.blocks.0.attn.relative_position_bias_table"]
        assert {of[n] for n in exempt} == {"no_decay"}
        assert of[bb + "stages.2.blocks.0.attn.qkv.bias"] == "decay"  # biases decay in mmdet's rule
    assert of[bb + "stages.1.downsample.dtm.dconv.conv_offset.weight"] == "decay"  # full lr: no offset group
    assert of["neck.lateral_convs.0.conv.bias"] == "decay"
    assert {g["lr_mult"] for g in groups} == {1.0}
    lr = 2e-4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * 0.001] * len(groups))  # step 0
    sched.step_update(500)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr] * len(groups))  # after warm-up
    sched.step_update(11 * spe)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * 0.01] * len(groups))  # the last epoch


def test_segmentation_poly_to_min_lr():
    from litvit.engine import TrainConfig
    from litvit.tasks.segmentation import SegmentationTask
    task = SegmentationTask("lit_ti", num_classes=2, iters=100, backbone_kwargs=dict(TINY), fpn_channels=16,
                            head_channels=16)
    tc = TrainConfig(epochs=1, lr=1e-4, min_lr=1e-6, weight_decay=1e-4, offset_lr_mult=1.0)
    groups, opt, sched = _optimizer_and_scheduler(task, tc, task.build_model(), 100, 1e-4)
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 1e-4)]
    sched.step_update(50)
    assert opt.param_groups[0]["lr"] == pytest.approx((1e-4 - 1e-6) * 0.5 ** 0.9 + 1e-6)
    sched.step_update(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_drop_path_off_for_the_first_epochs():
    from timm.layers import DropPath
    from litvit.tasks.classification import ClassificationConfig, ClassificationTask
    task = ClassificationTask(ClassificationConfig(model="pvt_s_msa", img_size=64, drop_path_off_epochs=100,
                                                   model_kwargs=dict(TINY, drop_path_rate=0.1)))
    model = litvit.create_model("pvt_s_msa", **dict(TINY, drop_path_rate=0.1))
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert max(rates) == pytest.approx(0.1)
    for epoch, expect in ((0, [0.0] * len(rates)), (99, [0.0] * len(rates)), (100, rates), (0, [0.0] * len(rates))):
        task.on_epoch_start(model, epoch)
        assert [m.drop_prob for m in model.modules() if isinstance(m, DropPath)] == expect


# --- SyncBN under DDP -------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _syncbn_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    from litvit.segmentation import SyncBatchNorm
    from litvit.tasks.segmentation import SegmentationTask
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        task = SegmentationTask("lit_ti", num_classes=3, backbone_kwargs=dict(TINY), fpn_channels=8, head_channels=8)
        model = task.build_model()
        head_norms = [type(m).__name__ for m in model.decode_head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        body_norms = [type(m).__name__ for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # the synchronised head on this rank's half of a batch
        g = torch.Generator().manual_seed(1)
        feats = [torch.randn(4, 8, 16 // s, 16 // s, generator=g) for s in (1, 2, 4, 8)]
        weight = torch.randn(4, 3, 16, 16, generator=g)
        half = slice(2 * rank, 2 * rank + 2)
        model.decode_head.train().dropout.eval()  # dropout off: compare the normalisation alone
        out = model.decode_head([f[half] for f in feats])
        (out * weight[half]).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.decode_head.parameters()])
        dist.all_reduce(grads)
        bn = next(m for m in model.decode_head.modules() if isinstance(m, SyncBatchNorm))
        torch.save(dict(head_norms=head_norms, body_norms=body_norms, out=out.detach(), grads=grads,
                        running_mean=bn.running_mean.clone(), running_var=bn.running_var.clone()),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_head_syncbn_under_two_gloo_processes(tmp_path):
    """Under DDP the head's BatchNorms become SyncBatchNorms (the backbone's DTM BatchNorms do not),
    and two processes with half a batch each compute what one process computes on the whole batch."""
    from litvit.tasks.segmentation import SegmentationTask
    mp.spawn(_syncbn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["head_norms"] and set(ranks[0]["head_norms"]) == {"SyncBatchNorm"}
    assert set(ranks[0]["body_norms"]) == {"BatchNorm2d"}
    torch.manual_seed(0)
    model = SegmentationTask("lit_ti", num_classes=3, backbone_kwargs=dict(TINY), fpn_channels=8,
                             head_channels=8).build_model()  # alone: plain BatchNorm
    assert {type(m).__name__ for m in model.decode_head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} \
        == {"BatchNorm2d"}
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(4, 8, 16 // s, 16 // s, generator=g) for s in (1, 2, 4, 8)]
    weight = torch.randn(4, 3, 16, 16, generator=g)
    model.decode_head.train().dropout.eval()
    out = model.decode_head(feats)
    (out * weight).sum().backward()
    torch.testing.assert_close(torch.cat([ranks[0]["out"], ranks[1]["out"]]), out.detach(), rtol=1e-4, atol=1e-5)
    grads = torch.cat([p.grad.flatten() for p in model.decode_head.parameters()])
    torch.testing.assert_close(ranks[0]["grads"], grads, rtol=1e-3, atol=1e-4)
    bn = next(m for m in model.decode_head.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(ranks[1]["running_mean"], bn.running_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranks[1]["running_var"], bn.running_var, rtol=1e-4, atol=1e-6)


# --- mmseg's data semantics --------------------------------------------------------------------------------

def test_crop_draws_as_mmseg(monkeypatch):
    """One draw, then up to ten checks, each failed one drawing again (11 draws at most)."""
    from litvit.dense_data import SegTrainTransform
    calls = []
    real = random.randint

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(random, "randint", counting)
    tf = SegTrainTransform(crop_size=8)
    tf._crop_box(np.ones((32, 32), np.uint8))  # one class everywhere: every crop fails
    assert len(calls) == 2 * 11
    calls.clear()
    mixed = np.tile(np.array([0, 1], np.uint8), (32, 16))  # every crop half/half: the first passes
    tf._crop_box(mixed)
    assert len(calls) == 2
    calls.clear()
    SegTrainTransform(crop_size=8, cat_max_ratio=1.0)._crop_box(np.ones((32, 32), np.uint8))
    assert len(calls) == 2
    # ignored pixels are not counted: one class plus ignore fails, as in mmseg
    calls.clear()
    with_ignore = np.where(mixed == 0, 255, 3).astype(np.uint8)
    tf._crop_box(with_ignore)
    assert len(calls) == 22


def test_photometric_distortion_semantics():
    from litvit.dense_data import PhotoMetricDistortion, _rgb_to_hsv8
    pmd = PhotoMetricDistortion()
    np.random.seed(0)
    grey = np.full((4, 4, 3), 100, np.uint8)
    outs = [pmd(grey) for _ in range(400)]
    values = np.array([o[0, 0, 0] for o in outs])
    assert all((o == o[0, 0, 0]).all() for o in outs)  # grey stays grey: saturation and hue act on colour only
    unchanged = (values == 100).mean()
    assert 0.15 < unchanged < 0.35  # no brightness and no contrast: 1/4
    assert values.min() >= int((100 - 32) * 0.5) and values.max() <= int((100 + 32) * 1.5)
    # contrast multiplies pixel values (no blending toward the mean grey)
    only_contrast = PhotoMetricDistortion(brightness_delta=0, saturation_range=(1, 1), hue_delta=1)
    img = np.array([[[40, 40, 40], [80, 80, 80]]], np.uint8)
    ratios = []
    for _ in range(50):
        o = only_contrast(img).astype(float)
        ratios.append(o[0, 1, 0] / max(o[0, 0, 0], 1))
    assert all(abs(r - 2) < 0.1 for r in ratios)
    # hue moves by an integer in [-18, 18) on OpenCV's 0-180 scale, wrapping
    only_hue = PhotoMetricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1))
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    shifts = set()
    for _ in range(300):
        h = int(_rgb_to_hsv8(only_hue(red))[0, 0, 0])
        shifts.add(h if h < 90 else h - 180)
    assert min(shifts) >= -18 and max(shifts) <= 17 and len(shifts) > 20


# --- RetinaNet's extra levels --------------------------------------------------------------------------------

def test_retinanet_p6_p7_on_input_without_relu():
    """mmdet 2.11's RetinaNet FPN: P6 = conv3x3/2 of C5 (the backbone's stage-4 map, not P5), P7 =
    conv3x3/2 of P6 with no ReLU between (``relu_before_extra_convs=False``)."""
    det = litvit.detection.retinanet("lit_ti", num_classes=2, backbone_kwargs=dict(TINY), fpn_channels=16)
    neck = det.neck
    feats = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate(det.backbone.channels)]
    outs = neck(feats)
    assert len(outs) == 5 and neck.start_level == 1
    p6, p7 = neck.fpn_convs[3], neck.fpn_convs[4]
    assert p6.conv.in_channels == det.backbone.channels[3] and p6.conv.stride == (2, 2)
    torch.testing.assert_close(outs[3], p6(feats[3]))
    torch.testing.assert_close(outs[4], p7(outs[3]))  # no ReLU before P7
