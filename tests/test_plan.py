"""The run plan: batches, steps, learning rates and precision resolved once (litvit.engine.plan),
the same object in ``--print-config``, in a run's checkpoints and in its summary; ``--batch-size``
the global batch for every train command; a dense run of the old per-process meaning refused."""
import json

import pytest
import torch
from torch import nn

from litvit.checkpoint import read_training_checkpoint, write_checkpoint
from litvit.cli import main
from litvit.engine import RunPlan, TrainConfig, changed_settings, fit, param_groups, resolve_amp

from helpers import toy_task_class

pytestmark = pytest.mark.unit

TINY_FLAGS = ["--img-size", "32", "--embed-dims", "16", "32", "48", "64", "--depths", "1", "1", "1", "1",
              "--num-heads", "1", "2", "3", "4", "--mlp-ratios", "2", "2", "2", "2", "--no-progress", "--threads", "1"]


def _groups():
    """Three parameter groups (decay, no_decay, offset at 0.01) of a small module."""
    model = nn.Sequential(nn.Linear(4, 4))
    model.add_module("conv_offset", nn.Linear(4, 4))
    return param_groups(model, 0.05, offset_lr_mult=0.01)


def test_world_2_accum_4_resolved_once():
    """A global batch of 64 over 2 processes x 4 accumulation steps: 8 images per forward; 400
    images per process are 50 micro-batches, 12 steps an epoch; the paper's lr rule on 64 images."""
    cfg = TrainConfig(global_batch=64, batch_size=None, accum_steps=4, lr=5e-4, epochs=3, warmup_epochs=1)
    plan = RunPlan.resolve(cfg, world_size=2, count_micro_batches=lambda b: 400 // b, groups=_groups())
    assert (plan.batch_per_process, plan.global_batch, plan.batch_given) == (8, 64, "global")
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch, plan.epochs, plan.total_steps) == (50, 12, 3, 36)
    assert plan.warmup_steps == 12 and plan.stop_step is None
    assert plan.peak_lr == pytest.approx(5e-4 * 64 / 512)
    assert dict(plan.group_lrs) == pytest.approx({"decay": 6.25e-5, "no_decay": 6.25e-5, "offset": 6.25e-7})
    # the Python API's per-process batch gives the same plan
    same = RunPlan.resolve(TrainConfig(batch_size=8, accum_steps=4, lr=5e-4, epochs=3, warmup_epochs=1),
                           world_size=2, count_micro_batches=lambda b: 400 // b, groups=_groups())
    assert dataclass_values(same, skip="batch_given") == dataclass_values(plan, skip="batch_given")
    # an iteration-based run: as many epochs as 30 steps need, stopping at step 30
    iters = RunPlan.resolve(TrainConfig(global_batch=64, batch_size=None, accum_steps=4, iters=30, warmup_epochs=0),
                            world_size=2, count_micro_batches=lambda b: 400 // b)
    assert (iters.epochs, iters.total_steps, iters.stop_step) == (3, 30, 30)


def dataclass_values(plan, skip):
    return {k: v for k, v in plan.describe().items() if k != skip}


def test_a_batch_that_does_not_split_or_fit_is_one_line():
    with pytest.raises(ValueError, match="batch size 60 does not divide into 2 process.*4 accumulation"):
        RunPlan.resolve(TrainConfig(global_batch=60, batch_size=None, accum_steps=4), world_size=2)
    with pytest.raises(ValueError, match=r"global batch 64 is larger than the training set \(40 images"):
        RunPlan.resolve(TrainConfig(global_batch=64, batch_size=None), count_micro_batches=lambda b: 40 // b,
                        data_note="40 images, 40 per process")
    with pytest.raises(ValueError, match="batch_size or global_batch"):
        TrainConfig(batch_size=None).check()


def test_precision_on_the_cpu_in_one_place():
    """A recipe's fp16 turns off off CUDA, with the reason in the plan; an fp16 asked for is refused."""
    plan = RunPlan.resolve(TrainConfig(amp="fp16", defaulted=("amp",)), device_type="cpu")
    assert plan.amp == "none" and "needs CUDA" in plan.amp_note
    assert RunPlan.resolve(TrainConfig(amp="fp16", defaulted=("amp",)), device_type="cuda").amp == "fp16"
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        RunPlan.resolve(TrainConfig(amp="fp16"), device_type="cpu")
    assert resolve_amp("bf16", "cpu") == ("bf16", "")


class _Toy(toy_task_class()):
    def setup(self):
        return dict(num_classes=2)


class _SGDToy(_Toy):
    def build_optimizer(self, groups, cfg, plan):
        return torch.optim.SGD([dict(params=g["params"], lr=plan.group_lr(g["name"])) for g in groups],
                               lr=plan.peak_lr, momentum=0.9)


def _cfg(out, **kw):
    return TrainConfig(**dict(dict(output_dir=str(out), epochs=1, global_batch=16, batch_size=None, lr=1e-2,
                                   scale_lr=False, warmup_epochs=0, progress=False, verbose=True, device="cpu"), **kw))


def test_fit_records_and_returns_its_plan_and_builds_the_task_optimizer(tmp_path, capsys):
    summary = fit(_SGDToy(), _cfg(tmp_path, accum_steps=2))
    ckpt = read_training_checkpoint(tmp_path / "last.pth")
    assert ckpt["plan"] == summary["plan"]
    assert (summary["plan"]["batch_per_process"], summary["plan"]["steps_per_epoch"], summary["steps"]) == (8, 4, 4)
    assert "momentum" in ckpt["optimizer"]["param_groups"][0]  # the task's SGD, not the default AdamW
    out = capsys.readouterr().out
    assert "global batch 16 = 8 x 1 x 2 accum" in out and "data: num_classes 2" in out  # setup()'s answer shown


def test_a_dense_run_of_the_per_process_meaning_is_refused_in_one_line(tmp_path):
    """A detection checkpoint written before the run plan (no "plan" record) with --batch-size 4 per
    process over 2 accumulation steps (global 8), resumed with --batch-size 4, now the global batch."""

    class Det(_Toy):
        name = "detection"

    fit(Det(), _cfg(tmp_path, global_batch=None, batch_size=4, accum_steps=2, max_steps=1))
    old = read_training_checkpoint(tmp_path / "last.pth")
    del old["plan"]
    write_checkpoint(old, tmp_path / "last.pth")
    with pytest.raises(ValueError) as e:
        fit(Det(), _cfg(tmp_path, global_batch=4, accum_steps=2))
    msg = str(e.value)
    assert "\n" not in msg
    assert ("--batch-size 4 meant 4 images per process when the checkpoint was written (global batch 8 = 4 x 1 "
            "process(es) x 2 accumulation) and now means the global batch: --batch-size 8 continues it") in msg
    # the same number of images per step resumes
    assert fit(Det(), _cfg(tmp_path, global_batch=8, accum_steps=2))["steps"] == 64 // 8
    # the public comparison says the same for 2 processes
    texts = changed_settings(dict(old, world_size=2), TrainConfig(global_batch=4, batch_size=None, accum_steps=2),
                             {}, world_size=2)
    assert [t for t in texts if "--batch-size 4 meant" in t and "global batch 16 = 4 x 2 process(es) x 2" in t]


def _print_config(capsys, argv):
    assert main(argv + ["--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [
    ["train", "--data", "unused", "--recipe", "lit-ti"],
    ["detect", "train", "--recipe", "retinanet-1x", "--backbone", "lit_ti"],
    ["segment", "train", "--recipe", "semantic-fpn-80k", "--backbone", "lit_ti", "--num-classes", "150"],
], ids=["train", "detect", "segment"])
def test_batch_size_is_the_global_batch_for_every_train_command(argv, capsys, monkeypatch):
    """Under 2 processes with 4 accumulation steps, --batch-size 64 is 8 images per forward for
    classification, detection and segmentation alike; --print-config shows the plan."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _print_config(capsys, argv + ["--batch-size", "64", "--accum-steps", "4", "--device", "cpu"])
    plan = cfg["plan"]
    assert (plan["global_batch"], plan["batch_per_process"], plan["world_size"]) == (64, 8, 2)
    assert plan["steps_per_epoch"] is None  # no data read
    assert (cfg["engine"]["batch_size"], cfg["engine"]["batch_per_process"]) == (64, 8)
    assert cfg["optimizer"]["lr"] == plan["peak_lr"]
    assert {g["name"]: g["lr"] for g in cfg["optimizer"]["param_groups"]} == pytest.approx(plan["group_lrs"])
    try:
        main(argv[:1 if argv[0] == "train" else 2] + ["--help"])
    except SystemExit:
        pass
    assert "the global batch: images per optimizer step over all processes" in " ".join(capsys.readouterr().out.split())


def test_print_config_shows_the_plan_the_run_uses(tmp_path, capsys):
    """The plan --print-config shows is the one the run records, but for the counts that need the data."""
    argv = ["train", *TINY_FLAGS, "--batch-size", "32", "--accum-steps", "2", "--epochs", "1", "--device", "cpu",
            "--max-steps", "1", "--output", str(tmp_path / "o")]
    shown = _print_config(capsys, argv)["plan"]
    assert main(argv) == 0
    used = read_training_checkpoint(tmp_path / "o" / "last.pth")["plan"]
    counts = ("micro_batches_per_epoch", "steps_per_epoch", "epochs", "total_steps", "warmup_steps")
    assert {k: v for k, v in used.items() if k not in counts} == {k: v for k, v in shown.items() if k not in counts}
    assert used["batch_per_process"] == 16 and used["stop_step"] == 1 and used["steps_per_epoch"] > 1
