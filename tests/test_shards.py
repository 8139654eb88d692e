"""WebDataset tar shards: ``litvit shards`` writes what timm's wds reader reads; training and
validation stream them, split across processes and workers; a killed run resumes exactly."""
import json
import sys
import tarfile

import numpy as np
import pytest
import torch

from litvit import engine
from litvit.cli import main
from litvit.data import ImageFolder, build_transform
from litvit.data.shards import ShardStream, write_shards
from litvit.engine import TrainConfig, fit
from litvit.tasks.classification import ClassificationConfig, ClassificationTask

from helpers import Killed, dies_at, image_folder

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TINY_ARCH = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2))
TINY_FLAGS = ["--img-size", "32", "--embed-dims", "16", "32", "48", "64", "--depths", "1", "1", "1", "1",
              "--num-heads", "1", "2", "3", "4", "--mlp-ratios", "2", "2", "2", "2", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 digit images per split as 5 shards of 8 (and the folder they came from)."""
    root = tmp_path_factory.mktemp("shards")
    image_folder(root / "folder", n=40)
    info = write_shards(root / "folder", root / "out", shard_size=8, progress=False)
    return root / "folder", root / "out", info


def _pixels(img) -> bytes:
    return np.asarray(img).tobytes()


def test_shards_hold_the_folder_and_timm_reads_them(shards):
    folder, out, info = shards
    assert info["train"]["filenames"] == [f"train-{i:06d}.tar" for i in range(5)]
    assert info["train"]["shard_lengths"] == [8] * 5 and info["val"]["num_samples"] == 40
    assert json.loads((out / "_info.json").read_text())["splits"]["val"]["filenames"][0] == "val-000000.tar"
    ref = ImageFolder(folder, "val")
    assert (out / "classes.txt").read_text().split() == ref.classes
    with tarfile.open(out / "val-000000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 16 and {n.rsplit(".", 1)[1] for n in names} == {"png", "cls"}  # the PNGs' own bytes
        member = next(n for n in names if n.endswith(".png"))
        data = tar.extractfile(member).read()
        label = int(tar.extractfile(member[:-3] + "cls").read())
    by_bytes = {p.read_bytes(): t for p, t in ref.samples}
    assert by_bytes[data] == label
    # every image once, with its class, as timm's own reader of the format reads them
    from timm.data import create_dataset
    timm_items = sorted((t, _pixels(img)) for img, t in create_dataset("wds/digits", root=str(out), split="val",
                                                                      is_training=False, batch_size=1))
    ours = sorted((t, _pixels(img)) for img, t in ShardStream(str(out / "val-{000000..000004}.tar")))
    assert timm_items == ours == sorted((t, _pixels(ref._load(i)[0])) for i, (_, t) in enumerate(ref.samples))


def test_evaluation_stream_reads_every_sample_once_over_ranks_and_workers(shards):
    _, out, _ = shards
    pattern = str(out / "val-{000000..000004}.tar")
    seen = []
    for rank in range(2):
        ds = ShardStream(pattern, transform=build_transform(False, 32)).split(rank, 2)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
        seen += [int(t) for _, targets in loader for t in targets]
    assert sorted(seen) == sorted(t for _, t in ImageFolder(shards[0], "val").samples)


def _keys(items):
    return [np.asarray(img).tobytes() for img, _ in items]


def _epoch(stream, epoch, skip=0):
    stream.set_epoch(epoch)
    stream.skip_batches = skip
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.workers)
    return [batch for batch in loader]


def test_training_stream_deals_shards_to_ranks_and_workers(shards):
    """2 processes x 2 workers over 5 shards of 8: the same number of batches on each rank, no image
    on two ranks in an epoch, another dealing the next epoch, and a stream resumed at batch 3 gives
    exactly the rest of the epoch."""
    files = sorted(shards[1].glob("train-*.tar"))
    per_rank = []
    for rank in range(2):
        stream = ShardStream(files).configure(3, 0, rank, 2, 2, ShardStream(files).max_batches(3, 2, 2), collate=_keys)
        assert stream.num_batches == 2 * (8 // 3)  # each worker is dealt one shard of 8 (one shard left out)
        epochs = [_epoch(stream, e) for e in range(2)]
        assert all(len(batches) == stream.num_batches for batches in epochs)
        assert _epoch(stream, 1, skip=3) == epochs[1][3:]
        per_rank.append([{k for batch in batches for k in batch} for batches in epochs])
    for e in range(2):
        assert not per_rank[0][e] & per_rank[1][e] and len(per_rank[0][e]) == len(per_rank[1][e]) == 12
    assert per_rank[0][0] != per_rank[0][1]


_DiesAt = dies_at(ClassificationTask)  # dies (as a SIGKILL would: no clean-up, no save) when micro-batch `at` starts


def _task(data):
    return ClassificationTask(ClassificationConfig(
        data=data, img_size=32, model_kwargs=dict(TINY_ARCH, drop_path_rate=0.1), hflip=0.5, scale=(0.5, 1.0),
        mixup=0.8, smoothing=0.1, crop_pct=1.0))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_shard_run_resumes_exactly(shards, tmp_path, workers):
    """Killed mid-epoch 2 at an odd batch (the loader's worker 0 then takes over batch 7's stream),
    resumed: the same weights and validation as the run never stopped. Random crops, flips, mixup
    and drop path all draw, so every stream and seed must be restored."""
    pattern = str(shards[1] / "train-{000000..000004}.tar")
    cfg = dict(epochs=2, batch_size=4, workers=workers, save_every_steps=1, lr=1e-2, warmup_epochs=0.5,
               progress=False, verbose=False, device="cpu", log_every=1)
    steps = fit(_task(pattern), TrainConfig(output_dir=str(tmp_path / "a"), **cfg))["steps"]
    per_epoch = steps // 2
    with pytest.raises(Killed):
        fit(_DiesAt(_task(pattern).cfg, at=per_epoch + 4), TrainConfig(output_dir=str(tmp_path / "b"), **cfg))
    assert engine.load_checkpoint(tmp_path / "b" / "last.pth")["batch_in_epoch"] == 3
    summary = fit(_task(pattern), TrainConfig(output_dir=str(tmp_path / "b"), **cfg))
    a, b = (engine.load_checkpoint(tmp_path / name / "last.pth") for name in ("a", "b"))
    assert a["step"] == b["step"] == steps == (10 if workers == 0 else 8) * 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"] == summary["final"]["val_loss"]
    assert summary["final"]["val_images"] == 40  # the val shards listed beside the training ones


@pytest.mark.distributed
def test_two_processes_train_from_shards(shards, tmp_path):
    """torchrun, 2 processes (gloo), 2 workers each: the stream deals 5 shards' 40 images over 4
    workers (one shard each, 2 batches of 4), every rank trains the same steps; validation counts
    each val image once."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "litvit", "train", "--data", str(shards[1] / "train-{000000..000004}.tar"),
           "--recipe", "digits", "--output", str(tmp_path), "--epochs", "1", "--batch-size", "8", "--workers", "2",
           *TINY_FLAGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ckpt = engine.load_checkpoint(tmp_path / "last.pth")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4 and ckpt["history"][-1]["val_images"] == 40


def test_cli_shards_train_validate(shards, tmp_path, capsys):
    folder, _, _ = shards
    assert main(["shards", str(folder), str(tmp_path / "s"), "--shard-size", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train: 40 images in 4 shard(s)" in out and "train-{000000..000003}.tar" in out
    pattern = str(tmp_path / "s" / "train-{000000..000003}.tar")
    run = tmp_path / "run"
    code = main(["train", "--data", pattern, "--recipe", "digits", "--epochs", "1", "--batch-size", "8",
                 "--repeated-aug", "0", "--output", str(run), *TINY_FLAGS])
    assert code == 0, capsys.readouterr().err
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    code = main(["validate", "--checkpoint", str(run / "last.pth"), "--data",
                 str(tmp_path / "s" / "val-{000000..000003}.tar"), "--batch-size", "7"])
    assert code == 0
    assert f"top-1 {record['val_top1']:.2f}" in capsys.readouterr().out.replace("%", "")
    # bad input: one line each
    for argv, needle in (
            (["train", "--data", str(tmp_path / "s" / "train-{000000..000009}.tar"), "--recipe", "digits",
              "--output", str(tmp_path / "o")], "shard not found"),
            (["train", "--data", pattern, "--recipe", "digits", "--repeated-aug", "3", "--output", str(tmp_path / "o")],
             "--repeated-aug 0"),
            (["shards", str(tmp_path / "nothing"), str(tmp_path / "o2")], "has none of the splits")):
        code = main(argv + (TINY_FLAGS if argv[0] == "train" else []))
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_without_webdataset_one_line(shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # not installed (an optional extra)
    code = main(["shards", str(shards[0]), str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("litvit shards: error: tar shards need the webdataset package: "
                                         "pip install 'litvit[shards]'")


def test_bench_data_read(shards):
    from litvit.tools.data_bench import bench_data_read
    r = bench_data_read(str(shards[0]), n=16, img_size=32, shard_size=4, batch_size=4, reps=1)
    assert r["images"] == 16 and r["folder_img_per_s"] > 0 and r["shards_img_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["shards_img_per_s"] / r["folder_img_per_s"])
