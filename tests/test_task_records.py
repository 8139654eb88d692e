"""One config and one record per task: the run settings and the checkpoint's record come from the
task's dataclass config, and every command rebuilds a task from a checkpoint through one function,
:func:`litvit.tasks.records.task_from_checkpoint`."""
import pytest
import torch

from helpers import TINY
from litvit.tasks.classification import ClassificationConfig, ClassificationTask, task_for_checkpoint
from litvit.tasks.detection import DEFINITION, DetectionConfig, DetectionTask
from litvit.tasks.records import task_from_checkpoint
from litvit.tasks.segmentation import SegmentationConfig, SegmentationTask
from litvit.utils import plain

pytestmark = pytest.mark.unit

KW = {k: v for k, v in TINY.items() if k != "img_size"}

# the keys of the records checkpoints hold today (read by earlier litvit versions too)
# init_checkpoint and backbone_heads: how a model started from another checkpoint is rebuilt (from its weights)
DETECTION_RECORD = {"definition", "arch", "backbone", "num_classes", "class_names", "cat_ids", "min_size", "max_size",
                    "backbone_kwargs", "fpn_channels", "init_checkpoint", "backbone_heads"}
SEGMENTATION_RECORD = {"backbone", "num_classes", "reduce_zero_label", "crop_size", "scale", "backbone_kwargs",
                       "fpn_channels", "head_channels", "class_names", "palette", "init_checkpoint", "backbone_heads"}


def _save(path, task, extra):
    torch.save(dict(model={}, task=task, extra=extra), path)
    return str(path)


def test_detection_config_is_the_task_and_its_record(tmp_path):
    cfg = DetectionConfig("mask_rcnn", "lit_ti", num_classes=2, class_names=["a", "b"], cat_ids=[3, 7], min_size=64,
                          max_size=96, backbone_kwargs=KW, fpn_channels=16, val_ann="val.json")
    task = DetectionTask(cfg)
    assert task.cfg == cfg and task.cfg is not cfg  # a copy: the task's settings are its own
    assert task.min_size == [64] and task.arch == "mask_rcnn"
    assert DetectionTask("mask_rcnn", "lit_ti", num_classes=2, class_names=["a", "b"], cat_ids=[3, 7], min_size=64,
                         max_size=96, backbone_kwargs=KW, fpn_channels=16, val_ann="val.json").cfg == cfg
    record = task.checkpoint_extra()
    assert set(record) == DETECTION_RECORD and record["definition"] == DEFINITION
    assert record["min_size"] == [64] and record["cat_ids"] == [3, 7]
    run = task.run_config()
    assert "val_ann" not in run and "init_checkpoint" not in run and run["lr_steps"] == [8, 11]
    path = _save(tmp_path / "det.pth", "detection", record)
    back = task_from_checkpoint(path, val_images="imgs", progress=False)
    assert type(back) is DetectionTask and back.checkpoint_extra() == record
    assert back.val_images == "imgs" and back.progress is False
    assert DetectionTask.from_checkpoint(path).checkpoint_extra() == record
    with pytest.raises(TypeError, match="not both"):
        DetectionTask(cfg, num_classes=3)


def test_segmentation_config_is_the_task_and_its_record(tmp_path):
    task = SegmentationTask(SegmentationConfig("lit_ti", num_classes=3, iters=7, backbone_kwargs=KW, fpn_channels=8,
                                               head_channels=8, palette=[[1, 2, 3]] * 3))
    assert task.iters == 7 and task.class_names == ["class_0", "class_1", "class_2"]
    record = task.checkpoint_extra()
    assert set(record) == SEGMENTATION_RECORD and record["scale"] == [2048, 512]
    assert task.run_config()["iters"] == 7
    path = _save(tmp_path / "seg.pth", "segmentation", record)
    back = task_from_checkpoint(path, data="ade", val_split="val")
    assert type(back) is SegmentationTask and back.iters == 0  # rebuilt for evaluation
    assert back.checkpoint_extra() == record and (back.data, back.val_split) == ("ade", "val")


def test_old_records_still_load(tmp_path):
    """Records written before ``backbone_kwargs`` / ``fpn_channels`` (detection) or ``palette`` /
    ``backbone_kwargs`` (segmentation) existed rebuild with the defaults, as they did."""
    det = dict(definition=DEFINITION, arch="retinanet", backbone="lit_ti", num_classes=2, class_names=["a", "b"],
               cat_ids=[1, 2], min_size=[64], max_size=96)
    task = task_from_checkpoint(_save(tmp_path / "det.pth", "detection", det))
    assert task.fpn_channels == 256 and task.backbone_kwargs == {}
    seg = dict(backbone="lit_ti", num_classes=2, reduce_zero_label=True, crop_size=64, scale=[128, 64],
               fpn_channels=8, head_channels=8, class_names=["a", "b"])
    task = task_from_checkpoint(_save(tmp_path / "seg.pth", "segmentation", seg))
    assert task.palette is None and task.scale == (128, 64)


def test_a_record_without_a_needed_field_is_one_error(tmp_path):
    seg = dict(backbone="lit_ti", num_classes=2, reduce_zero_label=True, scale=[128, 64], fpn_channels=8,
               head_channels=8, class_names=["a", "b"])  # no crop_size
    with pytest.raises(ValueError, match="its record lacks crop_size"):
        SegmentationTask.from_checkpoint(_save(tmp_path / "seg.pth", "segmentation", seg))


def test_one_path_refuses_another_tasks_checkpoint(tmp_path):
    seg = SegmentationTask("lit_ti", num_classes=2, backbone_kwargs=KW, fpn_channels=8, head_channels=8)
    path = _save(tmp_path / "seg.pth", "segmentation", seg.checkpoint_extra())
    with pytest.raises(ValueError, match="not a litvit detection checkpoint \\(task: 'segmentation'\\)"):
        DetectionTask.from_checkpoint(path)
    with pytest.raises(ValueError, match="not a litvit classification checkpoint \\(task: 'segmentation'\\)"):
        task_for_checkpoint(path)  # once: its weights were looked up as an official release's


def test_classification_record_and_rebuild(tmp_path):
    task = ClassificationTask(ClassificationConfig(img_size=32, model_kwargs=dict(KW), classes=[str(i) for i in range(10)]))
    record = task.checkpoint_extra()
    assert set(record) == {"model", "model_kwargs", "classes", "data", "img_size", "crop_pct", "interpolation",
                           "mean", "std"}
    assert record["model_kwargs"]["num_classes"] == 10 and record["mean"] == [0.485, 0.456, 0.406]
    model = task.build_model()
    path = tmp_path / "cls.pth"
    torch.save(dict(model=model.state_dict(), task="classification", extra=record), path)
    back = task_from_checkpoint(str(path), img_size=64)
    assert isinstance(back, ClassificationTask) and back.classes == task.classes
    assert (back.cfg.img_size, back.cfg.eval_img_size, back.cfg.model_kwargs) == (32, 64, plain(KW))
    assert back.checkpoint_record["model"] == "lit_ti" and back.checkpoint_classes == 10


def test_every_task_rebuilds_through_the_one_path(tmp_path, monkeypatch):
    """``from_checkpoint`` of each task is task_from_checkpoint with that task (so are validate,
    predict, detect/segment eval and predict, and the figures' load_model)."""
    import litvit.tasks.records as records
    seen = []
    real = records.task_from_checkpoint

    def spy(path, task=None, **overrides):
        seen.append(task)
        return real(path, task=task, **overrides)
    for module in ("classification", "detection", "segmentation"):
        monkeypatch.setattr(f"litvit.tasks.{module}.task_from_checkpoint", spy)
    seg = SegmentationTask("lit_ti", num_classes=2, backbone_kwargs=KW, fpn_channels=8, head_channels=8)
    path = _save(tmp_path / "seg.pth", "segmentation", seg.checkpoint_extra())
    SegmentationTask.from_checkpoint(path)
    with pytest.raises(ValueError, match="not a litvit classification checkpoint"):
        ClassificationTask.from_checkpoint(path)
    with pytest.raises(ValueError, match="not a litvit classification checkpoint"):
        task_for_checkpoint(path)
    assert seen == ["segmentation", "classification", "classification"]
