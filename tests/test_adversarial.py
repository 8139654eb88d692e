"""Bad input never becomes a traceback, nothing is ever lost: the real CLI, in subprocesses, on tiny data.

Every failing case asserts exit code 2, exactly one line on stderr naming the culprit, no
``Traceback``, and that the files already in the folders it touches are byte for byte unchanged.

Flag and file cases that fail before any work run in *one* subprocess (``run_batch``: a fresh
``python`` that calls ``litvit.cli.main`` once per command line, with stderr captured per call and
anything escaping ``main`` printed as a traceback), so that ~90 cases cost one interpreter start;
the cases that train, lock, fill the disk or predict run ``python -m litvit`` each.
"""
import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litvit import engine
from litvit.cli import build_parser, main
from litvit.data import DigitsDataset
from litvit.engine import OutputLock, OutputLockedError, TrainConfig, fit

from helpers import image_folder, toy_task_class

pytestmark = [pytest.mark.cli, pytest.mark.slow]

TINY_FLAGS = ["--img-size", "32", "--embed-dims", "16", "32", "48", "64", "--depths", "1", "1", "1", "1",
              "--num-heads", "1", "2", "3", "4", "--mlp-ratios", "2", "2", "2", "2", "--no-progress",
              "--threads", "1"]
TINY_BB = json.dumps(dict(img_size=64, embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4]))
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


# --- helpers -------------------------------------------------------------------------------------------

def run_cli(*argv, cwd=None, preexec_fn=None, timeout=300):
    """``python -m litvit ARGV`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "litvit", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV, preexec_fn=preexec_fn)


_BATCH = r'''
import contextlib, io, json, sys, traceback
from litvit.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            code = "escaped"
            traceback.print_exc(file=err)
    results.append([code, err.getvalue()])
print(json.dumps(results))
'''


def run_batch(cases, cwd):
    """Run ``main(argv)`` for every case in one fresh interpreter; returns [(exit code, stderr)]."""
    proc = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps([[str(a) for a in argv] for argv, _ in cases]),
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_line(code, err, *needles):
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def snapshot(*folders):
    """Hash of every file under the folders (to prove a failure left them as they were)."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- shared fixtures: a finished tiny run, bad files, tiny COCO / ADE data ----------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding a finished 1-epoch tiny digits run (``run/``), a classification folder, bad
    checkpoint files, tiny COCO and ADE20K data and a detection checkpoint."""
    root = tmp_path_factory.mktemp("adversarial")
    assert main(["train", "--output", str(root / "run"), "--epochs", "1", "--max-steps", "4", "--batch-size", "64",
                 *TINY_FLAGS]) == 0
    # the run stopped at max-steps mid-epoch; finish the epoch so that run/ holds a complete epoch
    assert main(["train", "--output", str(root / "run"), "--epochs", "1", *TINY_FLAGS, "--batch-size", "64"]) == 0
    image_folder(root / "folder")
    (root / "text.pth").write_text("hi\n")
    good = (root / "run" / "last.pth").read_bytes()
    (root / "trunc.pth").write_bytes(good[: len(good) // 3])
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(str(root / "pwned"))}, root / "evil.pth")
    torch.save([1, 2, 3], root / "list.pth")
    (root / "notimg.png").write_bytes(b"not an image")
    DigitsDataset("val").image(0).save(root / "digit.png")
    from test_detection import make_coco
    make_coco(root / "coco")
    from test_segmentation import make_ade
    make_ade(root / "ade", n_train=4, n_val=2)
    return root


class _Evil:
    """A pickle that would create a file if it were ever unpickled in full."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _det_train_flags(coco, out):
    return ["detect", "train", "--train-images", coco / "train_images", "--train-ann", coco / "train.json",
            "--epochs", "1", "--batch-size", "2", "--min-size", "64", "--max-size", "96", "--fpn-channels", "16",
            "--backbone-kwargs", TINY_BB, "--warmup-iters", "1", "--workers", "0", "--no-progress",
            "--device", "cpu", "--threads", "1", "--output", out]


def _seg_train_flags(ade, out):
    return ["segment", "train", "--data", ade, "--num-classes", "3", "--iters", "1", "--batch-size", "2",
            "--crop-size", "64", "--scale", "128", "64", "--fpn-channels", "16", "--backbone-kwargs", TINY_BB,
            "--workers", "0", "--no-progress", "--device", "cpu", "--threads", "1", "--output", out]


# --- one process, many command lines: flags, JSON overrides, checkpoint files ------------------------------

def _flag_cases(w: Path):
    run, ck = w / "run", w / "run" / "last.pth"
    t = ["train", "--output", w / "never_written"]
    det = _det_train_flags(w / "coco", w / "never_written")
    seg = _seg_train_flags(w / "ade", w / "never_written")
    return [
        # classification training: every numeric and enumerated flag out of range
        ([*t, "--accum-steps", "0"], "--accum-steps"),
        ([*t, "--interpolation", "foo"], "--interpolation"),
        ([*t, "--aa", "garbage"], "--aa"),
        ([*t, "--aa", "rand-zz9"], "--aa"),
        ([*t, "--epochs", "-1"], "--epochs"),
        ([*t, "--epochs", "1.5"], "--epochs"),
        ([*t, "--batch-size", "0"], "--batch-size"),
        ([*t, "--lr", "0"], "--lr"),
        ([*t, "--lr", "nan"], "--lr"),
        ([*t, "--min-lr", "-1"], "--min-lr"),
        ([*t, "--warmup-epochs", "-2"], "--warmup-epochs"),
        ([*t, "--weight-decay", "inf"], "--weight-decay"),
        ([*t, "--opt-eps", "0"], "--opt-eps"),
        ([*t, "--clip-grad", "-1"], "--clip-grad"),
        ([*t, "--ema-decay", "1"], "--ema-decay"),
        ([*t, "--img-size", "100"], "--img-size"),
        ([*t, "--img-size", "0"], "--img-size"),
        ([*t, "--drop-path", "1.5"], "--drop-path"),
        ([*t, "--embed-dims", "0", "32", "48", "64"], "--embed-dims"),
        ([*t, "--depths", "1", "1", "1"], "--depths"),
        ([*t, "--num-heads", "1", "2", "3", "-4"], "--num-heads"),
        ([*t, "--mlp-ratios", "0", "2", "2", "2"], "--mlp-ratios"),
        ([*t, "--scale", "0", "1"], "--scale"),
        ([*t, "--scale", "0.9", "0.1"], "--scale"),
        (["train", "--output", w / "text.pth"], "text.pth"),
        (["train", "--output", w / "never_written", "--init-checkpoint", w / "evil.pth", *TINY_FLAGS], "posix.system"),
        (["train", "--data", w / "text.pth", "--output", w / "never_written"], "dataset folder not found"),
        ([*t, "--hflip", "2"], "--hflip"),
        ([*t, "--color-jitter", "-1"], "--color-jitter"),
        ([*t, "--reprob", "-0.1"], "--reprob"),
        ([*t, "--remode", "x"], "--remode"),
        ([*t, "--recount", "0"], "--recount"),
        ([*t, "--mixup", "-1"], "--mixup"),
        ([*t, "--mixup-prob", "1.5"], "--mixup-prob"),
        ([*t, "--smoothing", "1"], "--smoothing"),
        ([*t, "--repeated-aug", "-1"], "--repeated-aug"),
        ([*t, "--crop-pct", "0"], "--crop-pct"),
        ([*t, "--seed", "-1"], "--seed"),
        ([*t, "--amp", "fp8"], "--amp"),
        ([*t, "--device", "tpu"], "--device"),
        ([*t, "--workers", "-1"], "--workers"),
        ([*t, "--threads", "0"], "--threads"),
        ([*t, "--threads", "-1"], "--threads"),
        ([*t, "--val-batch-size", "0"], "--val-batch-size"),
        ([*t, "--save-every-steps", "-1"], "--save-every-steps"),
        ([*t, "--log-every", "0"], "--log-every"),
        ([*t, "--eval-every", "0"], "--eval-every"),
        ([*t, "--max-steps", "0"], "--max-steps"),
        ([*t, "--recipe", "lit-xl"], "--recipe"),
        ([*t, "--model", "lit_xl"], "--model"),
        ([*t, "--bad-images", "maybe"], "--bad-images"),
        ([*t, "--bogus-flag"], "--bogus-flag"),
        (["demo", "--epochs", "0"], "--epochs"),
        ([*t, "--num-heads", "1", "2", "5", "4", *TINY_FLAGS[:2]], "divisible"),  # 48 % 5: the model says so
        # validate / predict
        (["validate", "--checkpoint", ck, "--crop-pct", "2"], "--crop-pct"),
        (["validate", "--checkpoint", ck, "--img-size", "48"], "--img-size"),
        (["validate", "--checkpoint", ck, "--batch-size", "-3"], "--batch-size"),
        (["validate", "--checkpoint", ck, "--amp", "half"], "--amp"),
        (["validate", "--checkpoint", ck, "--interpolation", "cubic"], "--interpolation"),
        (["validate"], "--checkpoint"),
        (["predict", w / "folder", "--checkpoint", ck, "--topk", "-1"], "--topk"),
        (["predict", w / "folder", "--checkpoint", ck, "--topk", "0"], "--topk"),
        (["predict", w / "folder", "--checkpoint", ck, "--num-classes", "0"], "--num-classes"),
        (["predict", w / "folder", "--checkpoint", ck, "--workers", "x"], "--workers"),
        (["predict", w / "nowhere", "--checkpoint", ck], "nowhere"),
        # bench / export / flops / viz
        (["bench", "--img-size", "0"], "--img-size"),
        (["bench", "--threads", "-1"], "--threads"),
        (["bench", "--reps", "0"], "--reps"),
        (["bench", "--warmup", "-1"], "--warmup"),
        (["bench", "--batch-size", "0"], "--batch-size"),
        (["bench", "--dtype", "fp64"], "--dtype"),
        (["bench", "--mode", "fly"], "--mode"),
        (["bench", "--device", "tpu"], "--device"),
        (["bench", "--models", "lit_ti", "--model-args", '{"foo": 1}'], "--model-args"),
        (["bench", "--models", "lit_ti", "--model-args", "[1, 2]"], "--model-args"),
        (["bench", "--models", "lit_ti", "--model-args", '{"embed_dims": 3}'], "--model-args"),
        (["export", "--img-size", "32", "--out", w / "never.onnx"], "--img-size"),
        (["export", "--img-size", "33", "--out", w / "never.onnx"], "--img-size"),
        (["export", "--opset", "99", "--out", w / "never.onnx"], "--opset"),
        (["export", "--atol", "0", "--out", w / "never.onnx"], "--atol"),
        (["export", "--model-args", '{"bogus": 1}', "--out", w / "never.onnx"], "bogus"),
        (["export", "--model-args", "{not json", "--out", w / "never.onnx"], "--model-args"),
        (["export", "--model", "lit_xl", "--out", w / "never.onnx"], "--model"),
        (["export", "--checkpoint", w / "text.pth", "--out", w / "never.onnx"], "text.pth"),
        (["flops", "--img-size", "0"], "--img-size"),
        (["flops", "--resolutions", "224", "100"], "--resolutions"),
        (["flops", "--format", "xml"], "--format"),
        (["flops", "--dtm-impl", "cuda"], "--dtm-impl"),
        (["flops", "lit_xl"], "lit_xl"),
        (["viz", "offsets", w / "digit.png", "--checkpoint", ck, "--grid", "0"], "--grid"),
        (["viz", "offsets", w / "digit.png", "--checkpoint", ck, "--img-size", "31"], "--img-size"),
        (["viz", "offsets", w / "digit.png", "--checkpoint", ck, "--points", "a,b"], "--points"),
        (["viz", "attention", w / "folder", "--model", "lit_xl"], "--model"),
        (["viz", "attention", w / "notimg.png", "--checkpoint", ck], "notimg.png"),
        (["viz", "nothing"], "nothing"),
        # detection / segmentation
        ([*det, "--backbone-kwargs", '{"foo": 1}'], "--backbone-kwargs"),
        ([*det, "--backbone-kwargs", '{"depths": [1, 1]}'], "--backbone-kwargs"),
        ([*det, "--frozen-stages", "5"], "--frozen-stages"),
        ([*det, "--epochs", "0"], "--epochs"),
        ([*det, "--min-size", "0"], "--min-size"),
        ([*det, "--min-size", "200"], "--min-size"),
        ([*det, "--arch", "yolo"], "--arch"),
        ([*det, "--backbone", "resnet50"], "--backbone"),
        ([*det, "--lr", "-1"], "--lr"),
        ([*det, "--drop-path", "2"], "--drop-path"),
        (["detect", "eval", "--val-images", w, "--val-ann", w / "x.json"], "--checkpoint"),
        (["detect", "predict", "--checkpoint", ck, w / "folder", "--score-thresh", "2"], "--score-thresh"),
        (["detect", "predict", "--checkpoint", ck, w / "folder"], "not a litvit detection checkpoint"),
        (["detect", "params", "--num-classes", "0"], "--num-classes"),
        ([*seg, "--num-classes", "300"], "--num-classes"),
        ([*seg, "--crop-size", "100"], "--crop-size"),
        ([*seg, "--ratio-range", "0", "2"], "--ratio-range"),
        ([*seg, "--ratio-range", "2", "0.5"], "--ratio-range"),
        ([*seg, "--iters", "0"], "--iters"),
        ([*seg, "--backbone-kwargs", "not json"], "--backbone-kwargs"),
        (["segment", "eval", "--checkpoint", ck, "--data", w / "ade", "--workers", "-2"], "--workers"),
        (["segment", "predict", "--checkpoint", ck, w / "nowhere.png"], "nowhere.png"),
        (["segment", "params", "--num-classes", "-3"], "--num-classes"),
        # checkpoint files: read with weights_only=True, never a full unpickle
        (["validate", "--checkpoint", w / "text.pth"], "not a PyTorch checkpoint"),
        (["validate", "--checkpoint", w / "trunc.pth"], "trunc.pth"),
        (["validate", "--checkpoint", w / "evil.pth"], "posix.system"),
        (["validate", "--checkpoint", w / "list.pth"], "list.pth"),
        (["validate", "--checkpoint", w / "missing.pth"], "checkpoint not found"),
        (["predict", w / "folder", "--checkpoint", w / "text.pth"], "not a PyTorch checkpoint"),
        (["viz", "offsets", w / "digit.png", "--checkpoint", w / "evil.pth"], "posix.system"),
        (["viz", "offsets", w / "digit.png", "--checkpoint", w / "list.pth", "--model", "lit_ti"], "list.pth"),
        (["export", "--checkpoint", w / "list.pth", "--out", w / "never.onnx"], "list.pth"),
        (["train", "--resume", w / "text.pth", "--output", w / "never_written"], "not a PyTorch checkpoint"),
        (["segment", "eval", "--checkpoint", w / "evil.pth", "--data", w / "ade"], "posix.system"),
        (["train", "--output", run, *TINY_FLAGS, "--resume", "never"], "already holds a run"),
    ]


def test_bad_flags_and_files_are_one_line(work):
    cases = _flag_cases(work)
    before = snapshot(work / "run", work / "folder", work / "coco", work / "ade")
    results = run_batch(cases, cwd=work)
    failures = []
    for (argv, needle), (code, err) in zip(cases, results):
        try:
            assert_one_line(code, err, needle)
        except AssertionError as e:
            failures.append(f"{' '.join(map(str, argv))[:160]}\n    -> exit {code}: {err.strip()[:400]} ({e})")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
    assert snapshot(work / "run", work / "folder", work / "coco", work / "ade") == before
    assert not (work / "pwned").exists()  # the malicious pickle was never run
    assert not (work / "never_written").exists() and not (work / "never.onnx").exists()


# --- a bad validation item stops the run before the first step ------------------------------------------------

def test_bad_validation_items_stop_before_training(work, tmp_path):
    # classification: an unreadable image in val/
    data = image_folder(tmp_path / "data")
    bad = next((data / "val").glob("*/*.png"))
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG: the header reads, the file ends too early
    r = run_cli("train", "--data", data, "--batch-size", "2", "--epochs", "1", "--output", tmp_path / "o1", *TINY_FLAGS)
    assert_one_line(r.returncode, r.stderr, str(bad))
    assert not (tmp_path / "o1").exists()  # stopped before anything was written
    # COCO: a validation image that will not open
    coco = work / "coco"
    broken = tmp_path / "val_images"
    broken.mkdir()
    for p in (coco / "train_images").iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = _det_train_flags(coco, tmp_path / "o2") + ["--val-images", broken, "--val-ann", coco / "train.json"]
    r = run_cli(*argv)
    assert_one_line(r.returncode, r.stderr, "img1.png")
    assert not (tmp_path / "o2").exists()
    # ADE20K: a label out of range in the validation split
    import shutil
    ade = tmp_path / "ade"
    shutil.copytree(work / "ade", ade)
    lab_path = next((ade / "annotations" / "validation").glob("*.png"))
    lab = np.asarray(Image.open(lab_path)).copy()
    lab[5, 5] = 9
    Image.fromarray(lab).save(lab_path)
    r = run_cli(*_seg_train_flags(ade, tmp_path / "o3"))
    assert_one_line(r.returncode, r.stderr, lab_path.name, "holds value 9")
    assert not (tmp_path / "o3").exists()


# --- the output-folder lock -----------------------------------------------------------------------------

def test_second_writer_is_refused_and_stale_lock_taken_over(work, tmp_path):
    run = work / "run"
    before = snapshot(run)
    lock = OutputLock(run).acquire()  # this process plays the first writer
    try:
        r = run_cli("train", "--output", run, *TINY_FLAGS)
        assert_one_line(r.returncode, r.stderr, "in use by another litvit process", f"pid {os.getpid()}")
        assert snapshot(run) == {**before, str(run / ".lock"): snapshot(run)[str(run / ".lock")]}
    finally:
        lock.release()
    assert snapshot(run) == before and not (run / ".lock").exists()
    # in-process: a second lock is refused; a lock file left by a dead process is stale
    first = OutputLock(tmp_path / "o").acquire()
    with pytest.raises(OutputLockedError, match="in use by another litvit process"):
        OutputLock(tmp_path / "o").acquire()
    first.release()
    (tmp_path / "o").mkdir(exist_ok=True)
    (tmp_path / "o" / ".lock").write_text("999999999 elsewhere\n")
    again = OutputLock(tmp_path / "o").acquire()
    assert again.stale_owner == "999999999"
    again.release()
    assert not (tmp_path / "o" / ".lock").exists()


# --- resume with changed settings, a full disk --------------------------------------------------------------

def test_changed_resume_is_refused_and_full_disk_keeps_the_checkpoint(work, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    before = snapshot(run)
    r = run_cli("train", "--output", run, *TINY_FLAGS, "--batch-size", "64", "--epochs", "3", "--lr", "0.01")
    assert_one_line(r.returncode, r.stderr, "--epochs 1 -> 3", "--lr 0.016 -> 0.01", "--resume-changed")
    assert snapshot(run) == before

    def small_files():  # files above 64 KiB cannot be written: the checkpoint save fails, the log does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = run_cli("train", "--output", run, *TINY_FLAGS, "--batch-size", "64", "--epochs", "2", "--resume-changed",
                "--max-steps", "30", preexec_fn=small_files)
    assert_one_line(r.returncode, r.stderr, "cannot write checkpoint", "last.pth", "the previous last.pth is kept")
    assert (run / "last.pth").read_bytes() == (work / "run" / "last.pth").read_bytes()
    assert not [p for p in run.iterdir() if p.name.startswith(".last")]  # no temporary file left behind
    # and the same resume on a normal disk goes on with the new settings
    r = run_cli("train", "--output", run, *TINY_FLAGS, "--batch-size", "64", "--epochs", "2", "--resume-changed",
                "--max-steps", "26")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "changed settings" in r.stdout and "--epochs 1 -> 2" in r.stdout


def test_refused_resume_names_what_the_user_set(work, tmp_path):
    """Only the changes of settings given on the command line are listed; those that follow from
    them (a warm-up shortened with --epochs, the whole recipe when the recipe changed) are counted."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    before = snapshot(run)
    r = run_cli("train", "--output", run, *TINY_FLAGS, "--batch-size", "64", "--epochs", "3")
    assert_one_line(r.returncode, r.stderr, "--epochs 1 -> 3 (and 1 value that follows from it)")
    assert "warmup" not in r.stderr  # the run's warm-up is a tenth of --epochs: never set by the user
    r = run_cli("train", "--output", run, *TINY_FLAGS, "--batch-size", "64", "--recipe", "lit-ti", "--epochs", "1")
    assert_one_line(r.returncode, r.stderr, "recipe digits -> lit-ti (and ", "values that follow from it)")
    assert "--aa" not in r.stderr and "mixup" not in r.stderr
    assert snapshot(run) == before


def test_output_holding_another_tasks_run_is_named(work, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    before = snapshot(run)
    r = run_cli(*_det_train_flags(work / "coco", run))
    assert_one_line(r.returncode, r.stderr, f"{run} holds a classification run (last.pth), not a detection one",
                    "--output")
    ckpt = torch.load(run / "last.pth", map_location="cpu", weights_only=False)
    ckpt["task"] = "detection"
    torch.save(ckpt, tmp_path / "det.pth")
    r = run_cli("train", "--output", tmp_path / "o", "--resume", tmp_path / "det.pth", *TINY_FLAGS)
    assert_one_line(r.returncode, r.stderr, "det.pth is a detection checkpoint, not a classification one")
    assert snapshot(run) == before and not (tmp_path / "o").exists()


# --- predict, validate, export, detect/segment predict: right results ---------------------------------------

def test_predict_skip_reports_skipped_rows(work, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ds = DigitsDataset("val")
    for i in range(5):
        ds.image(i).save(imgs / f"{i}.png")
    (imgs / "1.png").write_bytes(b"broken")
    (imgs / "3.png").write_bytes((imgs / "4.png").read_bytes()[:50])
    ck = work / "run" / "last.pth"
    r = run_cli("predict", imgs, "--checkpoint", ck, "--bad-images", "skip", "--output", tmp_path / "p.csv",
                "--topk", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows = [ln.split("\t") for ln in r.stdout.strip().splitlines()]
    assert [Path(p).name for p, _ in rows] == [f"{i}.png" for i in range(5)]  # one row per file, in order
    assert [("skipped" in text) for _, text in rows] == [False, True, False, True, False]
    import csv
    table = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [Path(t["image"]).name for t in table] == [f"{i}.png" for i in range(5)]
    assert [bool(t["skipped"]) for t in table] == [False, True, False, True, False]
    assert table[0]["class1"] and not table[1]["class1"]
    # --bad-images fail (default): one line, before the model runs
    r = run_cli("predict", imgs, "--checkpoint", ck, "--output", tmp_path / "q.csv")
    assert_one_line(r.returncode, r.stderr, "1.png")
    assert not (tmp_path / "q.csv").exists()
    # a model run far from its training size is named once
    r = run_cli("validate", "--checkpoint", ck, "--img-size", "64", "--crop-pct", "1.0", "--threads", "1")
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "trained at 32x32" in warn[0] and "64x64" in warn[0] and "Traceback" not in r.stderr


def test_predict_lists_every_file_with_a_readable_reason(work, tmp_path):
    """A dangling symlink and a symlink loop are rows of their own, skipped with the reason in words."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    DigitsDataset("val").image(0).save(imgs / "a.png")
    (imgs / "b.png").write_bytes(b"not an image")
    os.symlink("missing.png", imgs / "c.png")  # dangling
    os.symlink("e.png", imgs / "d.png")  # d -> e -> d
    os.symlink("d.png", imgs / "e.png")
    r = run_cli("predict", imgs, "--checkpoint", work / "run" / "last.pth", "--bad-images", "skip",
                "--output", tmp_path / "p.csv", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows = dict(ln.split("\t") for ln in r.stdout.strip().splitlines())
    assert sorted(Path(p).name for p in rows) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    why = {Path(p).name: text for p, text in rows.items()}
    assert "skipped" not in why["a.png"]
    assert "not an image" in why["b.png"]
    assert "dangling symlink" in why["c.png"] and "missing.png" in why["c.png"]
    assert "symlink loop" in why["d.png"] and "symlink loop" in why["e.png"]
    assert "BufferedReader" not in r.stdout and "4 of 5 image(s) skipped" in r.stderr
    import csv
    with open(tmp_path / "p.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and [bool(t["skipped"]) for t in table] == [False, True, True, True, True]
    r = run_cli("predict", imgs, "--checkpoint", work / "run" / "last.pth", "--output", tmp_path / "q.csv")
    assert_one_line(r.returncode, r.stderr, "b.png", "not an image", "and 3 more")


def test_predict_on_an_ascii_console(tmp_path):
    """Class names and file names outside ASCII: the CSV is UTF-8, the console gets escapes, exit 0."""
    root = tmp_path / "data"
    ds = DigitsDataset("val")
    for split in ("train", "val"):
        for i in range(4):
            d = root / split / ("café" if i % 2 else "東京")
            d.mkdir(parents=True, exist_ok=True)
            ds.image(i).save(d / f"{i}.png")
    r = run_cli("train", "--data", root, "--output", tmp_path / "run", "--recipe", "digits", "--batch-size", "4",
                "--epochs", "1", *TINY_FLAGS)
    assert r.returncode == 0, r.stderr[-2000:]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    ds.image(0).save(imgs / "ünï.png")
    env = dict(ENV, PYTHONIOENCODING="ascii")
    r = subprocess.run([sys.executable, "-m", "litvit", "predict", str(imgs), "--checkpoint",
                        str(tmp_path / "run" / "best.pth"), "--topk", "2", "--output", str(tmp_path / "p.csv")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "caf\\xe9" in r.stdout and "\\u6771\\u4eac" in r.stdout and "\\xfcn\\xef.png" in r.stdout
    text = (tmp_path / "p.csv").read_text(encoding="utf-8")
    assert "café" in text and "東京" in text and "ünï.png" in text


def test_dense_predict_folders_names_and_extreme_aspect(work, tmp_path):
    coco = work / "coco"
    # a box wholly outside its image: dropped, training goes on
    data = json.loads((coco / "train.json").read_text())
    data["annotations"][0]["bbox"] = [500.0, 500.0, 20.0, 20.0]
    data["annotations"].append(dict(data["annotations"][1], id=999, bbox=[-50.0, 10.0, 20.0, 10.0]))
    ann = tmp_path / "outside.json"
    ann.write_text(json.dumps(data))
    argv = _det_train_flags(coco, tmp_path / "det")
    argv[argv.index("--train-ann") + 1] = ann
    r = run_cli(*argv, "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    # folders, same names in two inputs, and a 4000x20 image
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Image.fromarray(np.full((20, 4000, 3), 128, np.uint8)).save(a / "x.png")
    Image.open(coco / "train_images" / "img0.png").save(b / "x.png")
    Image.open(coco / "train_images" / "img1.png").save(b / "y.jpg")
    r = run_cli("detect", "predict", "--checkpoint", tmp_path / "det" / "last.pth", a, b, "--output", tmp_path / "p",
                "--score-thresh", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a__x_det.png", "b__x_det.png", "detections.json",
                                                                   "y_det.png"]
    assert Image.open(tmp_path / "p" / "a__x_det.png").size == (4000, 20)
    # the machine-readable results beside the pictures (their records: tests/test_dense_releases.py)
    assert isinstance(json.loads((tmp_path / "p" / "detections.json").read_text(encoding="utf-8")), list)
    r = run_cli("detect", "predict", "--checkpoint", tmp_path / "det" / "last.pth", tmp_path / "nope")
    assert_one_line(r.returncode, r.stderr, "image not found", "nope")


# --- the engine: loss over a resumed epoch, saving before evaluating ------------------------------------------

class _Toy(toy_task_class()):
    def __init__(self, fail_eval=False):
        self.fail_eval = fail_eval

    def evaluate(self, model, loader, device, dist):
        if self.fail_eval:
            raise OSError("evaluation failed (simulated)")
        return super().evaluate(model, loader, device, dist)


def _toy_cfg(out, **kw):
    cfg = dict(output_dir=str(out), epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0, progress=False, verbose=False,
               log_every=1, device="cpu")
    return TrainConfig(**dict(cfg, **kw))


def test_resumed_epoch_loss_averages_every_step(tmp_path):
    whole = fit(_Toy(), _toy_cfg(tmp_path / "a"))
    fit(_Toy(), _toy_cfg(tmp_path / "b", max_steps=11))  # stops 3 steps into epoch 2
    resumed = fit(_Toy(), _toy_cfg(tmp_path / "b"))
    assert resumed["final"]["train_loss"] == pytest.approx(whole["final"]["train_loss"], abs=1e-9)
    epochs = [json.loads(ln) for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["event"] == "epoch"] == [1, 2]


def test_epoch_is_saved_before_it_is_evaluated(tmp_path):
    with pytest.raises(OSError, match="simulated"):
        fit(_Toy(fail_eval=True), _toy_cfg(tmp_path))
    ckpt = engine.load_checkpoint(tmp_path / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["pending_eval"] and ckpt["step"] == 8  # the epoch's training is kept
    summary = fit(_Toy(), _toy_cfg(tmp_path))  # resumes: evaluates epoch 1 first, then trains epoch 2
    assert summary["epochs_done"] == 2 and all("val_score" in r for r in engine.load_checkpoint(
        tmp_path / "last.pth")["history"])


def test_changed_settings_are_named():
    ckpt = dict(config=dataclasses_asdict(_toy_cfg("x")), world_size=1, task_config={"model": {"depth": 1}, "aa": None})
    changes = engine.changed_settings(ckpt, _toy_cfg("y", epochs=5, workers=3), {"model": {"depth": 2}, "aa": None}, 1)
    assert changes == ["--epochs 2 -> 5", "model.depth 1 -> 2"]  # output_dir and workers may change freely


def dataclasses_asdict(cfg):
    import dataclasses
    return dataclasses.asdict(cfg)


# --- small pieces: threads from the load, output names, official checkpoint objects, --help -----------------

def test_auto_threads_follows_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert engine.auto_threads() is None  # idle: torch's default
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 0.0, 0.0))
    assert engine.auto_threads() == 1  # saturated: one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert engine.auto_threads() is None  # torchrun's choice is left alone


def test_output_names_never_collide():
    from litvit.cli.dense import output_stems
    paths = [Path("a/x.jpg"), Path("b/x.jpg"), Path("b/x.png"), Path("c/y.png"), Path("c/y.png")]
    names = output_stems(paths)
    assert len(set(names)) == len(names)
    assert names == ["a__x", "b__x_jpg", "b__x_png", "y_png", "y_png_2"]


def test_official_checkpoint_objects_load_without_unpickling(tmp_path):
    """argparse.Namespace (DeiT/PVT trainers) and a yacs CfgNode (Swin trainer) are read; the
    CfgNode's class never runs (it is not even importable when the file is read)."""
    import argparse
    import types
    from litvit.models.convert import load_state_dict_file
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __setstate__(self, state):
            raise AssertionError("a CfgNode method ran")

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = CfgNode
    with pytest.MonkeyPatch.context() as mp:  # the stand-in exists only while the file is written
        mp.setitem(sys.modules, "yacs", yacs)
        mp.setitem(sys.modules, "yacs.config", config)
        torch.save({"model": {"w": torch.ones(2)}, "config": CfgNode(MODEL=CfgNode(TYPE="lit_s")),
                    "max_accuracy": np.float64(81.5), "args": argparse.Namespace(lr=5e-4)}, tmp_path / "off.pth")
    ck = load_state_dict_file(tmp_path / "off.pth")
    assert ck["config"] == {"MODEL": {"TYPE": "lit_s"}} and ck["args"].lr == 5e-4 and float(ck["max_accuracy"]) == 81.5
    assert torch.equal(ck["model"]["w"], torch.ones(2))


def _actions(parser, prefix=()):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, prefix + (name,))
        else:
            yield prefix, parser, action


def test_every_flag_has_help_and_every_command_a_description():
    import argparse
    missing, no_description = [], set()
    for path, parser, action in _actions(build_parser()):
        if not path or isinstance(action, argparse._HelpAction):
            continue
        if not action.help:
            missing.append(f"litvit {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
        if not parser.description:
            no_description.add(" ".join(path))
    assert not missing, missing
    assert not no_description, no_description


def test_demo_help_and_readme_point_at_files_that_exist(capsys):
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "99%" in text and "99%%" not in text and "(default: runs/demo)" in text
    import re
    readme = (REPO / "README.md").read_text()
    assert "LIT.md" not in readme and "../shared" not in readme
    links = re.findall(r"\]\(((?!https?:)[^)#]+)", readme)
    assert "docs/architecture.md" in links
    assert all((REPO / link).exists() for link in links), [l for l in links if not (REPO / l).exists()]
    from litvit.tools.flops import PAPER_NOTES
    assert not any("LIT.md" in n or "shared" in n for n in PAPER_NOTES)
