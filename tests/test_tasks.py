"""The engine's order (data, then model, then optimizer and schedule, then the loop) and what the
tasks learn from their data before their model is built."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from litvit import data as D
from litvit.engine import Task, TrainConfig, evaluate, fit
from litvit.tasks.classification import ClassificationConfig, ClassificationTask
from litvit.tasks.segmentation import SegmentationTask

pytestmark = pytest.mark.unit

TINY_ARCH = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2))


class RecordingTask(Task):
    """A 3-class linear classifier on random vectors that records which hook ran when, and what the
    model was built from."""
    name = "recording"

    def __init__(self, n_train: int = 12, n_val: int = 6):
        g = torch.Generator().manual_seed(0)
        self.tensors = {"train": (torch.randn(n_train, 4, generator=g), torch.arange(n_train) % 3),
                        "val": (torch.randn(n_val, 4, generator=g), torch.arange(n_val) % 3)}
        self.calls, self.reads = [], 0
        self.classes = None
        self._sets = None

    def setup(self):
        self.calls.append("setup")
        self.build_datasets()
        self.classes = int(self.tensors["train"][1].max()) + 1
        return dict(num_classes=self.classes)

    def build_datasets(self):
        self.calls.append("build_datasets")
        if self._sets is None:
            self.reads += 1
            self._sets = tuple(TensorDataset(*self.tensors[s]) for s in ("train", "val"))
        return self._sets

    def build_model(self):
        self.calls.append("build_model")
        if self.classes is None:
            raise AssertionError("build_model ran before setup() read the data")
        return nn.Linear(4, self.classes)

    def build_scheduler(self, optimizer, cfg, steps_per_epoch):
        self.calls.append("build_scheduler")
        self.scheduler = super().build_scheduler(optimizer, cfg, steps_per_epoch)
        return self.scheduler

    def train_step(self, model, batch, device):
        if "train_step" not in self.calls:
            self.calls.append("train_step")
        x, y = batch
        return nn.functional.cross_entropy(model(x.to(device)), y.to(device)), {}

    @torch.no_grad()
    def evaluate(self, model, loader, device, dist):
        self.calls.append("evaluate")
        right, n = 0, 0
        for x, y in loader:
            right += int((model(x).argmax(1) == y).sum())
            n += len(y)
        right, n = dist.reduce_sum([right, n])
        return dict(score=100.0 * right / max(n, 1))


def _cfg(out, **kw):
    base = dict(output_dir=str(out), epochs=2, batch_size=4, lr=1e-2, scale_lr=False, warmup_epochs=0.0,
                progress=False, verbose=False, device="cpu", threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _order(calls):
    """First occurrence of each hook, in call order."""
    seen = []
    for c in calls:
        if c not in seen:
            seen.append(c)
    return seen


def test_fit_reads_data_before_it_builds_the_model(tmp_path):
    task = RecordingTask()
    summary = fit(task, _cfg(tmp_path))
    assert _order(task.calls) == ["setup", "build_datasets", "build_model", "build_scheduler", "train_step", "evaluate"]
    assert task.reads == 1, "the datasets were built more than once"
    assert summary["epochs_done"] == 2 and summary["steps"] == 6


def test_iterations_are_first_class_in_the_engine(tmp_path):
    """``iters`` (the dense recipes' unit): as many epochs as the steps need (the epoch count given is
    ignored), a stop at step ``iters`` inside the last epoch, and a schedule that spans ``iters`` steps."""
    task = RecordingTask(n_train=12)  # batch 4: 3 steps per epoch
    summary = fit(task, _cfg(tmp_path, epochs=1, iters=7))
    assert summary["steps"] == 7
    assert task.scheduler.t_initial == 7
    # the third epoch, cut after its first step, is the run's last: recorded, evaluated, finished
    assert summary["epochs_done"] == 3 and task.calls.count("evaluate") == 3
    assert summary["best_epoch"] is not None
    again = RecordingTask(n_train=12)
    fit(again, _cfg(tmp_path, epochs=1, iters=7))  # resumes the finished run: nothing left to train
    assert "train_step" not in again.calls


def test_a_max_steps_stop_inside_an_iteration_run_is_a_pause(tmp_path):
    """``max_steps`` below ``iters`` stops mid-epoch without evaluating; the resume finishes the run."""
    task = RecordingTask(n_train=12)
    summary = fit(task, _cfg(tmp_path, iters=7, max_steps=4))
    assert summary["steps"] == 4 and summary["epochs_done"] == 1 and task.calls.count("evaluate") == 1
    task = RecordingTask(n_train=12)
    summary = fit(task, _cfg(tmp_path, iters=7))
    assert summary["steps"] == 7 and summary["epochs_done"] == 3 and task.calls.count("evaluate") == 2


def test_evaluate_reads_data_before_it_builds_the_model(tmp_path):
    task = RecordingTask()
    metrics = evaluate(task, _cfg(tmp_path))
    assert _order(task.calls)[:3] == ["setup", "build_datasets", "build_model"]
    assert metrics["images"] == 6.0 and 0.0 <= metrics["score"] <= 100.0


def test_classification_learns_its_classes_in_setup(monkeypatch):
    """The digits are read once, by setup(); build_model() then only builds."""
    made = []
    real = D.DigitsDataset

    def counting(*args, **kwargs):
        made.append(args[0] if args else kwargs.get("split"))
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "DigitsDataset", counting)
    task = ClassificationTask(ClassificationConfig(img_size=32, model_kwargs=dict(TINY_ARCH)))
    info = task.setup()
    assert info == dict(num_classes=10, classes=[str(i) for i in range(10)])
    assert sorted(made) == ["train", "val"]
    model = task.build_model()
    assert model.num_classes == 10 and sorted(made) == ["train", "val"], "build_model read the data again"


def test_classification_with_given_classes_reads_no_data(monkeypatch):
    """A class list from a checkpoint or the caller: the model is built without touching the data."""
    monkeypatch.setattr(D, "DigitsDataset", lambda *a, **k: pytest.fail("the data were read"))
    task = ClassificationTask(ClassificationConfig(img_size=32, model_kwargs=dict(TINY_ARCH), classes=["a", "b", "c"]))
    assert task.build_model().num_classes == 3


def test_segmentation_builds_its_model_without_data():
    """Semantic segmentation is told its classes (K): no data path is needed to build the model."""
    task = SegmentationTask(backbone="lit_ti", data=None, num_classes=5, fpn_channels=8, head_channels=8,
                            backbone_kwargs=dict(TINY_ARCH))
    with torch.device("meta"):
        model = task.build_model()
    assert model.decode_head.conv_seg.out_channels == 5
