"""Training, resume, validation, prediction and the bad-input contract of train/validate/predict.

Everything runs a tiny LIT (widths 16-64, 32 px) on the embedded digits for a few steps.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import litvit
from litvit import engine
from litvit.cli import main
from litvit.data import DigitsDataset, ImageFolder, UnreadableImageError
from litvit.engine import TrainConfig, fit, param_groups
from litvit.tasks.classification import ClassificationConfig, ClassificationTask, validate_checkpoint

from helpers import Killed, dies_at, image_folder

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TINY_ARCH = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2))
TINY_FLAGS = ["--img-size", "32", "--embed-dims", "16", "32", "48", "64", "--depths", "1", "1", "1", "1",
              "--num-heads", "1", "2", "3", "4", "--mlp-ratios", "2", "2", "2", "2", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def tiny_task(**overrides) -> ClassificationTask:
    cfg = dict(img_size=32, model_kwargs=dict(TINY_ARCH, drop_path_rate=0.1), hflip=0.0, color_jitter=0.0,
               scale=(0.7, 1.0), smoothing=0.1, crop_pct=1.0)
    cfg.update(overrides)
    return ClassificationTask(ClassificationConfig(**cfg))


def tiny_train_cfg(out, **overrides) -> TrainConfig:
    cfg = dict(output_dir=str(out), epochs=1, batch_size=64, lr=1.6e-2, warmup_epochs=0.2, min_lr=1e-5,
               warmup_lr=1e-5, weight_decay=0.05, progress=False, log_every=1, clip_grad=5.0, device="cpu")
    cfg.update(overrides)
    return TrainConfig(**cfg)


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a tiny LIT on the digits through the engine (shared by several tests)."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    summary = fit(tiny_task(), tiny_train_cfg(out, ema_decay=0.9))
    return out, summary


# --- parameter groups ---------------------------------------------------------------------------------

def _group_of(groups, name):
    found = [g for g in groups if name in g["param_names"]]
    assert len(found) == 1, name
    return found[0]


def test_param_groups_by_name():
    """The ImageNet rules of both official codebases (their set_weight_decay)."""
    model = litvit.create_model("lit_ti", img_size=32, **TINY_ARCH)
    groups = param_groups(model, weight_decay=0.05, lr=1e-3)
    assert [g["name"] for g in groups] == ["decay", "no_decay", "offset"]
    expect = {
        "patch_embed.proj.weight": ("decay", 0.05, 1.0),
        "stages.2.blocks.0.attn.qkv.weight": ("decay", 0.05, 1.0),
        "head.weight": ("decay", 0.05, 1.0),
        "stages.1.downsample.dtm.dconv.weight": ("decay", 0.05, 1.0),  # the deformable conv itself
        "stages.0.pos_embed": ("decay", 0.05, 1.0),  # LIT-Ti's position embeddings are decayed
        "stages.3.pos_embed": ("decay", 0.05, 1.0),
        "patch_embed.proj.bias": ("no_decay", 0.0, 1.0),
        "stages.0.blocks.0.norm2.weight": ("no_decay", 0.0, 1.0),
        "stages.3.cls_token": ("no_decay", 0.0, 1.0),
        "stages.2.downsample.dtm.norm_layer.weight": ("no_decay", 0.0, 1.0),
        "stages.3.downsample.dtm.dconv.conv_offset.bias": ("no_decay", 0.0, 1.0),  # bias: full lr, no decay
        "stages.1.downsample.dtm.dconv.conv_offset.weight": ("offset", 0.05, 0.01),
    }
    names = dict(model.named_parameters())
    for name, (group, wd, mult) in expect.items():
        assert name in names, name
        g = _group_of(groups, name)
        assert (g["name"], g["weight_decay"], g["lr_mult"]) == (group, wd, mult), name
        assert g["lr"] == pytest.approx(1e-3 * mult)
    assert sum(len(g["params"]) for g in groups) == len(names)
    # no multiplier: no offset group (as the official code with dconv_lr_ratio 1)
    assert [g["name"] for g in param_groups(model, 0.05, offset_lr_mult=1.0)] == ["decay", "no_decay"]


def test_param_groups_relative_tables_and_wrapped_backbone():
    swin = litvit.create_model("lit_s", img_size=64, **TINY_ARCH)
    groups = param_groups(swin, 0.05)
    assert _group_of(groups, "stages.2.blocks.0.attn.relative_position_bias_table")["weight_decay"] == 0.0

    class Detector(nn.Module):  # a backbone inside a dense model keeps the rules, with its prefix
        def __init__(self):
            super().__init__()
            self.backbone = litvit.create_model("lit_ti", img_size=32, **TINY_ARCH)
            self.neck = nn.Conv2d(64, 8, 1)

    groups = param_groups(Detector(), 0.05, offset_lr_mult=0.01)
    assert _group_of(groups, "backbone.stages.0.pos_embed")["name"] == "decay"
    assert _group_of(groups, "backbone.stages.3.cls_token")["name"] == "no_decay"
    assert _group_of(groups, "backbone.stages.2.downsample.dtm.dconv.conv_offset.weight")["lr_mult"] == 0.01
    assert _group_of(groups, "neck.weight")["name"] == "decay"


# --- recipes ------------------------------------------------------------------------------------------

def test_recipes_hold_the_papers_values():
    from litvit.recipes import get_recipe
    ti, smb = get_recipe("lit-ti"), get_recipe("lit-smb")
    common = dict(lr=5e-4, weight_decay=0.05, opt_eps=1e-8, epochs=300, aa="rand-m9-mstd0.5-inc1", mixup=0.8,
                  cutmix=1.0, smoothing=0.1, reprob=0.25, interpolation="bicubic", batch_size=1024)
    for r in (ti, smb):
        assert {k: r[k] for k in common} == common
    assert (ti["warmup_epochs"], ti["warmup_lr"], ti["min_lr"], ti["clip_grad"], ti["repeated_aug"]) == (5, 1e-6, 1e-5, None, 3)
    assert (smb["warmup_epochs"], smb["warmup_lr"], smb["min_lr"], smb["clip_grad"], smb["repeated_aug"]) == (20, 5e-7, 5e-6, 5.0, 0)
    assert ti["model"] == "lit_ti" and smb["model"] == "lit_s" and smb["drop_path"] is None  # the model's own


def test_repeated_augmentation_sampler(tmp_path):
    """timm's RepeatAugSampler under the engine: every picked image three times in an epoch, order set by the seed."""
    from litvit.engine import DistInfo
    task = tiny_task(repeated_aug=3)
    train, _ = task.build_datasets()
    sampler = task.train_sampler(train, DistInfo())
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 1280  # DeiT's choice: floor(1437 / 256) * 256 per process
    assert first[0] == first[1] == first[2] and first[3] == first[4] == first[5]
    sampler.set_epoch(1)
    assert list(sampler) != first
    summary = fit(task, tiny_train_cfg(tmp_path, max_steps=2))
    assert summary["steps"] == 2


# --- training ------------------------------------------------------------------------------------------

def test_fit_learns_and_writes_everything(trained):
    out, summary = trained
    recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["event"] == "train"]
    assert len(losses) == 22  # 1,437 images / 64 per step
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    final = summary["final"]
    assert final["val_top1"] > 40  # ten classes: chance is 10%
    for name in ("last.pth", "best.pth", "log.jsonl", "metrics.csv", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = engine.load_checkpoint(out / "last.pth")
    assert {"model", "optimizer", "scheduler", "model_ema", "rng", "epoch", "step", "config", "extra"} <= set(ckpt)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 0, 22)
    lrs = {g["name"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs["offset"] <= lrs["decay"]
    # the checkpoint reloads into a fresh model and reproduces the logged accuracy
    m = validate_checkpoint(str(out / "best.pth"), batch_size=100, quiet=True)
    assert m["top1"] == pytest.approx(final["val_top1"])
    assert m["loss"] == pytest.approx(final["val_loss"], rel=1e-4)
    ema = validate_checkpoint(str(out / "best.pth"), batch_size=100, quiet=True, use_ema=True)
    assert ema["top1"] == pytest.approx(final["ema_top1"])


def test_bf16_autocast_and_accumulation_on_cpu(tmp_path):
    summary = fit(tiny_task(mixup=0.8, cutmix=1.0), tiny_train_cfg(
        tmp_path, batch_size=16, accum_steps=2, amp="bf16", max_steps=3, grad_checkpointing=True))
    assert summary["steps"] == 3
    assert engine.load_checkpoint(tmp_path / "last.pth")["batch_in_epoch"] == 6


class _Float64NoBatchStats(ClassificationTask):
    """The tiny classifier in float64 with DTM's BatchNorm layers kept in eval mode: batch
    statistics over 16 images are not those over 64, so with them a micro-batch of 16 cannot
    equal a batch of 64 (what accumulation leaves out by design, as in timm and torchvision)."""

    def build_model(self):
        return super().build_model().double()

    def train_step(self, model, batch, device):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        images, targets = batch
        return self.criterion(model(images.double()), targets), {}


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """4 micro-batches of 16 per step train the same weights as one batch of 64, and log the same
    loss per step (it was the last micro-batch's). No mixup, drop path or dropout (their random
    draws depend on the batch); the per-sample crops are seeded by sample, not by batch. AdamW is
    invariant to the gradient's scale but for ``eps``: a large ``eps`` (0.1, the gradients' order)
    makes the update proportional to the gradient, so a loss left undivided by the accumulation
    steps would show."""
    task = dict(model_kwargs=dict(TINY_ARCH, drop_path_rate=0.0), smoothing=0.1)
    cfg = dict(max_steps=3, opt_eps=0.1, clip_grad=None)
    fit(_Float64NoBatchStats(tiny_task(**task).cfg), tiny_train_cfg(tmp_path / "big", batch_size=64, **cfg))
    fit(_Float64NoBatchStats(tiny_task(**task).cfg),
        tiny_train_cfg(tmp_path / "accum", batch_size=16, accum_steps=4, **cfg))
    big, accum = (engine.load_checkpoint(tmp_path / name / "last.pth") for name in ("big", "accum"))
    assert big["step"] == accum["step"] == 3
    for k, v in big["model"].items():
        # float64: only the order of the sums differs (mean of 64 vs four means of 16, / 4)
        assert v.dtype == (torch.float64 if v.is_floating_point() else v.dtype)
        torch.testing.assert_close(accum["model"][k], v, rtol=1e-9, atol=1e-12, msg=k)
    torch.manual_seed(0)  # the engine's initialisation (seed 0): the steps moved the weights far beyond the tolerance
    first = tiny_task(**task).build_model().double().state_dict()
    assert max((big["model"][k] - first[k]).abs().max() for k in first if first[k].is_floating_point()) > 1e-4
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines())
               if r["event"] == "train"] for name in ("big", "accum")]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_worker_processes_do_not_change_the_run(tmp_path):
    """Each sample is augmented under its own seed, so loader workers change nothing."""
    sds = []
    for workers in (0, 2):
        fit(tiny_task(mixup=0.8), tiny_train_cfg(tmp_path / str(workers), max_steps=3, workers=workers))
        sds.append(engine.load_checkpoint(tmp_path / str(workers) / "last.pth")["model"])
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])


_DiesAt = dies_at(ClassificationTask)  # dies (as a SIGKILL would: no clean-up, no save) when micro-batch `at` starts


def test_resume_after_interruption_is_exact(tmp_path):
    """Killed mid-epoch 2 (after the step-30 checkpoint), resumed: the same weights as never stopping.
    Mixup, drop path and random crops are all in play, so every RNG stream must be restored."""
    kw = dict(mixup=0.8, cutmix=1.0, smoothing=0.1)
    cfg = dict(epochs=2, save_every_steps=10, ema_decay=0.9)
    fit(tiny_task(**kw), tiny_train_cfg(tmp_path / "a", **cfg))
    with pytest.raises(Killed):
        fit(_DiesAt(tiny_task(**kw).cfg, at=34), tiny_train_cfg(tmp_path / "b", **cfg))
    ck = engine.load_checkpoint(tmp_path / "b" / "last.pth")
    assert (ck["epoch"], ck["batch_in_epoch"], ck["step"]) == (1, 8, 30)
    summary = fit(tiny_task(**kw), tiny_train_cfg(tmp_path / "b", **cfg))  # resume="auto"
    a = engine.load_checkpoint(tmp_path / "a" / "last.pth")
    b = engine.load_checkpoint(tmp_path / "b" / "last.pth")
    for key in ("model", "model_ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["history"][-1]["val_top1"] == b["history"][-1]["val_top1"] == summary["final"]["val_top1"]
    # the log holds each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()
             if json.loads(l)["event"] == "train"]
    assert steps == list(range(1, 45))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_processes_gloo(tmp_path):
    """torchrun, 2 processes, gloo on CPU: one writer, metrics reduced over both shards."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = launcher + ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                      "-m", "litvit", "train", "--output", str(tmp_path), "--epochs", "1", "--batch-size", "64",
                      "--log-every", "5", *TINY_FLAGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "32 x 2 x 1 accum" in r.stdout and r.stdout.count("epoch 1/1") == 1
    ckpt = engine.load_checkpoint(tmp_path / "last.pth")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 22
    logged = ckpt["history"][-1]
    assert logged["val_images"] == 360  # each validation image counted once over the two shards
    m = validate_checkpoint(str(tmp_path / "best.pth"), batch_size=100, quiet=True)
    assert m["top1"] == pytest.approx(logged["val_top1"])


# --- command line: validate, predict, bad input -----------------------------------------------------------

@pytest.mark.cli
def test_cli_validate_and_predict(trained, tmp_path, capsys):
    out, summary = trained
    code, stdout, err = run_cli(capsys, "validate", "--checkpoint", str(out / "best.pth"), "--img-size", "64",
                                "--crop-pct", "0.9")
    assert code == 0, err
    assert "top-1" in stdout and "64px, crop 0.9" in stdout
    images = tmp_path / "imgs"
    images.mkdir()
    ds = DigitsDataset("val")
    for i in range(3):
        ds.image(i).save(images / f"digit{i}_{ds.targets[i]}.png")
    csv_path = tmp_path / "pred.csv"
    code, stdout, err = run_cli(capsys, "predict", str(images), "--checkpoint", str(out / "best.pth"),
                                "--topk", "3", "--output", str(csv_path))
    assert code == 0, err
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "image,class1,prob1,class2,prob2,class3,prob3" and len(rows) == 4
    assert stdout.count("digit") == 3


@pytest.mark.cli
def test_validate_an_official_layout_checkpoint(tmp_path, capsys):
    """A bare state dict in the released LIT-Ti layout (full size, 10 classes) through `validate --model`."""
    from litvit.models.convert import litvit_to_official
    model = litvit.create_model("lit_ti", num_classes=10).eval()
    torch.save(litvit_to_official(model.state_dict(), "pvt"), tmp_path / "lit_ti_digits.pth")
    code, out, err = run_cli(capsys, "validate", "--model", "lit_ti", "--checkpoint", str(tmp_path / "lit_ti_digits.pth"),
                             "--img-size", "32", "--crop-pct", "1.0", "--batch-size", "180")
    assert code == 0, err
    assert "official layout" in out and "(360 images" in out
    ds = DigitsDataset("val", transform=ClassificationTask(ClassificationConfig(
        img_size=32, crop_pct=1.0))._transform(False))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        top1 = (model(x).argmax(1) == torch.tensor(ds.targets)).float().mean().item() * 100
    assert f"top-1 {top1:.2f}%" in out


@pytest.mark.cli
def test_missing_and_empty_dataset(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "dataset folder not found", "nope")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no 'train' sub-folder")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "holds no images")
    (tmp_path / "noimg").mkdir()
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "noimg"), "--checkpoint", "x.pth")
    assert_one_line_error(code, err, "no images")
    assert not (tmp_path / "o").exists()


@pytest.mark.cli
def test_class_folders_without_images_and_a_single_class(tmp_path, capsys):
    root = image_folder(tmp_path / "data", n=2)
    (root / "train" / "zebra").mkdir()
    (root / "val" / "yak").mkdir()
    with pytest.warns(UserWarning, match=r"class folder\(s\) without images: zebra"):
        train = ImageFolder(root, "train")
    assert train.empty_classes == ["zebra"] and "zebra" in train.classes  # still a class: a model output for it
    # an empty folder in val/ is not a class the training set lacks: a warning, not an error
    with pytest.warns(UserWarning, match=r"class folder\(s\) without images: yak"):
        ImageFolder(root, "val", classes=train.classes)
    # a training set with images of one class only: refused in one line, nothing written
    one = tmp_path / "one"
    for split in ("train", "val"):
        (one / split / "seven").mkdir(parents=True)
        DigitsDataset("val").image(0).save(one / split / "seven" / "0.png")
        DigitsDataset("val").image(1).save(one / split / "seven" / "1.png")
    argv = ["train", "--data", str(one), "--recipe", "digits", "--batch-size", "2", "--max-steps", "1",
            "--output", str(tmp_path / "o"), *TINY_FLAGS]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "one/train holds images of one class only (seven)", "at least 2")
    (one / "train" / "eight").mkdir()
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "one class only (seven)", "class folders without images: eight")
    assert not (tmp_path / "o").exists()
    with pytest.warns(UserWarning, match="single class"):  # evaluating one class: allowed, said
        ImageFolder(one, "val")


@pytest.mark.cli
def test_unreadable_image_fails_with_path_or_is_skipped(tmp_path, capsys):
    root = image_folder(tmp_path / "data")
    bad = next((root / "train").glob("*/*.png"))
    bad.write_bytes(b"not a png")
    argv = ["train", "--data", str(root), "--batch-size", "4", "--epochs", "1", "--recipe", "digits",
            "--output", str(tmp_path / "o"), *TINY_FLAGS]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "cannot read image", str(bad))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        code, out, err = run_cli(capsys, *argv, "--bad-images", "skip", "--output", str(tmp_path / "o2"),
                                 "--batch-size", "2")
    assert code == 0, err
    assert "3 train" in out  # the unreadable image is left out before training, not replaced
    assert (tmp_path / "o2" / "last.pth").exists()


@pytest.mark.cli
def test_unreadable_image_error_from_a_worker_is_one_line(tmp_path):
    root = image_folder(tmp_path / "data", n=2)
    bad = next((root / "val").glob("*/*.png"))
    bad.write_bytes(b"\x89PNG broken")
    ds = ImageFolder(root, "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(UnreadableImageError) as e:
        list(loader)
    assert str(e.value).startswith("cannot read image") and "\n" not in str(e.value) and str(bad) in str(e.value)


@pytest.mark.cli
def test_checkpoint_of_another_model(trained, tmp_path, capsys):
    out, _ = trained
    code, _, err = run_cli(capsys, "validate", "--checkpoint", str(out / "best.pth"), "--model", "lit_s")
    assert_one_line_error(code, err, "holds a lit_ti model, not lit_s")
    other = litvit.create_model("lit_s", img_size=32, num_classes=10, **TINY_ARCH)
    torch.save({"model": other.state_dict()}, tmp_path / "lit_s.pth")
    code, _, err = run_cli(capsys, "validate", "--checkpoint", str(tmp_path / "lit_s.pth"), "--model", "lit_ti")
    assert_one_line_error(code, err, "does not fit")
    # resuming a run folder with another model's checkpoint: refused, the checkpoint untouched
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = (run / "last.pth").read_bytes()
    wider = [("24" if f == "16" else f) for f in TINY_FLAGS]  # embed_dims (24, 32, 48, 64)
    code, _, err = run_cli(capsys, "train", "--output", str(run), *wider)
    assert_one_line_error(code, err, "written with other settings", "model_kwargs", "--resume-changed")
    code, _, err = run_cli(capsys, "train", "--output", str(run), *wider, "--resume-changed")
    assert_one_line_error(code, err, "does not fit the model", "last.pth")
    assert (run / "last.pth").read_bytes() == before
    (tmp_path / "trunc.pth").write_bytes(before[: len(before) // 2])
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "trunc.pth"), "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "cannot read checkpoint")
    code, _, err = run_cli(capsys, "validate", "--checkpoint", str(tmp_path / "missing.pth"))
    assert_one_line_error(code, err, "checkpoint not found")


@pytest.mark.cli
def test_bad_batch_size_recipe_and_overwrite(trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--batch-size", "30", "--accum-steps", "4", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "batch size 30 does not divide", "4 accumulation")
    code, _, err = run_cli(capsys, "train", "--batch-size", "30", "--accum-steps", "2", "--mixup", "0.8",
                           "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "even batch", "15 per process")
    code, _, err = run_cli(capsys, "train", "--recipe", "lit-xl", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "invalid choice: 'lit-xl'", "'lit-ti', 'lit-smb', 'litv2', 'digits'")
    code, _, err = run_cli(capsys, "train", "--amp", "fp16", "--device", "cpu", "--output", str(tmp_path / "o"),
                           *TINY_FLAGS)
    assert_one_line_error(code, err, "fp16' needs CUDA")
    out, _ = trained
    code, _, err = run_cli(capsys, "train", "--resume", "never", "--output", str(out))
    assert_one_line_error(code, err, "already holds a run")
    assert not (tmp_path / "o").exists()
