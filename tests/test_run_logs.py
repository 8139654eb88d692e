"""``--log tensorboard`` / ``--log wandb``: every ``log.jsonl`` record also goes to TensorBoard's
event files (read back here with TensorBoard's own reader) or to an offline wandb run."""
import json
import sys
import types

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litvit.cli import main
from litvit.engine import TrainConfig, fit
from litvit.tasks.classification import ClassificationConfig, ClassificationTask

from helpers import Killed

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TINY_ARCH = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2))


class _Task(ClassificationTask):
    """The tiny digits classifier; dies (as a kill would: no save) when micro-batch ``die_at`` starts."""

    def __init__(self, die_at: int = 0):
        super().__init__(ClassificationConfig(img_size=32, model_kwargs=dict(TINY_ARCH), hflip=0.0, color_jitter=0.0,
                                              scale=(0.7, 1.0), crop_pct=1.0))
        self.die_at, self.calls = die_at, 0

    def train_step(self, model, batch, device):
        self.calls += 1
        if self.calls == self.die_at:
            raise Killed
        return super().train_step(model, batch, device)


def _cfg(out, **overrides) -> TrainConfig:
    cfg = dict(output_dir=str(out), epochs=1, batch_size=128, lr=1.6e-2, warmup_epochs=0.2, min_lr=1e-5,
               warmup_lr=1e-5, progress=False, verbose=False, log_every=1, device="cpu", save_every_steps=2)
    cfg.update(overrides)
    return TrainConfig(**cfg)


def _records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def _expected(records):
    """``{tag: [(step, value as float32), ...]}`` from log.jsonl (TensorBoard keeps float32 scalars)."""
    want = {}
    for rec in records:
        for key, value in rec.items():
            if key not in ("event", "step") and isinstance(value, (int, float)):
                want.setdefault(f"{rec['event']}/{key}", []).append((rec["step"], float(np.float32(value))))
    return want


def test_tensorboard_events_equal_the_log_also_across_a_resume(tmp_path):
    """Killed at step 3 (checkpoint at step 2), resumed to the end of the epoch: TensorBoard's reader
    sees exactly log.jsonl's values, step 3 of the killed run dropped as from log.jsonl."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        fit(_Task(die_at=4), _cfg(out, log=("tensorboard",)))
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # written and closed although it failed
    assert max(r["step"] for r in _records(out)) == 3  # logged after the step-2 checkpoint
    fit(_Task(), _cfg(out, log=("tensorboard",)))
    records = _records(out)
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(1, 12))
    train = records[0]
    assert {"loss", "lr", "lr_decay", "lr_no_decay", "lr_offset"} <= set(train)
    epoch = records[-1]
    assert epoch["event"] == "epoch" and {"val_top1", "img_per_s", "train_loss", "epoch_time_s"} <= set(epoch)

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    want = _expected(records)
    assert sorted(acc.Tags()["scalars"]) == sorted(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == points, tag


def test_wandb_gets_the_same_records_offline_and_resumes_its_run(tmp_path, monkeypatch):
    """A stand-in ``wandb`` module records what the engine sends it (wandb is not a dependency)."""
    runs = []

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.exit_code = kwargs, [], None
            runs.append(self)

        def log(self, data, step=None):
            self.logged.append((step, data))

        def finish(self, exit_code=0):
            self.exit_code = exit_code

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: Run(**kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        fit(_Task(die_at=4), _cfg(out, log=("wandb",), max_steps=5))
    fit(_Task(), _cfg(out, log=("wandb",), max_steps=5))
    assert [r.exit_code for r in runs] == [1, 0]
    for run in runs:
        assert run.kwargs["mode"] == "offline" and run.kwargs["dir"] == str(out)
        assert run.kwargs["config"]["seed"] == 0 and run.kwargs["config"]["task"] == "classification"
    assert runs[0].kwargs["id"] == runs[1].kwargs["id"] == (out / "wandb_id").read_text().strip()
    records = _records(out)  # steps 1-2 of the first run, 3-5 of the resumed one
    sent = runs[0].logged[:2] + runs[1].logged
    assert len(sent) == len(records) == 5
    for (step, data), rec in zip(sent, records):
        assert step == rec["step"]
        assert data == {f"train/{k}": v for k, v in rec.items() if k not in ("event", "step")}


def test_log_targets_are_checked(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="log='foo' is not one of"):
        _cfg(tmp_path, log=("foo",)).check()
    with pytest.raises(ValueError, match="tuple of names"):
        _cfg(tmp_path, log="tensorboard").check()
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed (it is not a dependency)
    for argv in (["train"], ["detect", "train"], ["segment", "train"]):
        code = main(argv + ["--log", "wandb", "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "argument --log: wandb is not installed (pip install 'wandb')" in lines[0]
    assert not (tmp_path / "o").exists()
