"""Checkpoint files as people have them, through every door that reads one.

The forms: the bare state dict (LIT-Ti's release), the DeiT/PVT trainer's ``{'model', 'optimizer',
'lr_scheduler', 'epoch', 'model_ema', 'scaler', 'args': Namespace}``, the Swin trainer's ``{'model',
'optimizer', 'lr_scheduler', 'max_accuracy': numpy float, 'epoch', 'config': yacs CfgNode, 'amp'}``
(LIT-S/M/B), and safetensors. The doors: ``litvit.create_model(checkpoint_path=)``, timm's
``pretrained=True`` with ``pretrained_cfg_overlay(file=)`` or ``(url=)`` (a local HTTP server on
127.0.0.1; nothing else is reached), ``validate`` / ``predict`` / ``export``, ``--init-checkpoint``
and a dense backbone's ``--pretrained``. One reader, one trust policy: a pickle of anything beyond
the allow-list is refused wherever it comes in.
"""
import argparse
import functools
import http.server
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import litvit
from litvit.checkpoint import read_checkpoint, record_entries, write_checkpoint, write_safetensors
from litvit.cli import main
from litvit.errors import CheckpointMismatchError
from litvit.models.convert import litvit_to_official

from helpers import TINY, image_folder, randomize_

pytestmark = pytest.mark.unit

FAMILY = {"lit_ti": "pvt", "lit_s": "swin"}
FORMS = ("bare", "deit", "swin", "safetensors")


# --- the files ----------------------------------------------------------------------------------------

def _optimizer_and_scheduler(model):
    """One AdamW step and timm's cosine scheduler, as both trainers save them."""
    from timm.scheduler import CosineLRScheduler
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    opt.step()
    opt.zero_grad()
    sched = CosineLRScheduler(opt, t_initial=300, lr_min=1e-5, warmup_t=5, warmup_lr_init=1e-6)
    return opt.state_dict(), sched.state_dict()


@pytest.fixture
def yacs_cfgnode(monkeypatch):
    """A stand-in for ``yacs.config.CfgNode`` (a dict subclass) importable while a file is written;
    the caller removes it (``monkeypatch.delitem``) before reading, so reading cannot import it.
    Every change to sys.modules is undone after the test."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __setstate__(self, state):
            raise AssertionError("a CfgNode method ran while reading")

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    return CfgNode


def write_release(src, name, form, path, monkeypatch=None, cfgnode=None):
    """``src``'s weights in the official key layout of ``name``'s family, saved in ``form``."""
    sd = litvit_to_official(src.state_dict(), FAMILY[name])
    if form == "bare":
        torch.save(sd, path)
    elif form == "safetensors":
        write_safetensors(sd, path)  # no litvit record: as a state dict converted elsewhere
    else:
        opt, sched = _optimizer_and_scheduler(litvit.create_model(name, **TINY))
        if form == "deit":
            args = argparse.Namespace(model=name, lr=5e-4, epochs=300, drop_path=0.1, model_ema=True)
            torch.save({"model": sd, "optimizer": opt, "lr_scheduler": sched, "epoch": 299,
                        "model_ema": {k: v + 1 for k, v in sd.items()},  # must not be taken over 'model'
                        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}, "args": args}, path)
        else:
            config = cfgnode(MODEL=cfgnode(TYPE="lit", NAME=name, DROP_PATH_RATE=0.2),
                             TRAIN=cfgnode(EPOCHS=300, BASE_LR=1e-3), AMP_OPT_LEVEL="O1")
            amp = {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}  # apex O1
            torch.save({"model": sd, "optimizer": opt, "lr_scheduler": sched, "max_accuracy": np.float64(81.5),
                        "epoch": 299, "config": config, "amp": amp}, path)
    if monkeypatch is not None:  # the stand-in yacs is not importable while the file is read
        monkeypatch.delitem(sys.modules, "yacs", raising=False)
        monkeypatch.delitem(sys.modules, "yacs.config", raising=False)
    return path


def assert_same_weights(src, model):
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


_ran = []


def _payload():
    _ran.append(True)


class Evil:
    """Unpickling this calls a function: what no checkpoint read may do."""

    def __reduce__(self):
        return _payload, ()


# --- a local web server -------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path, monkeypatch):
    """A web server on 127.0.0.1 serving ``tmp_path/www``; timm's download cache in tmp_path; any
    connection elsewhere fails the test. Yields (folder, base URL, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a connection to {address} left the machine")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- every form through every door ---------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_every_trainer_form_through_checkpoint_path_and_file(tmp_path, monkeypatch, yacs_cfgnode, name, form):
    src = randomize_(litvit.create_model(name, **TINY))
    path = write_release(src, name, form, tmp_path / f"{name}.{'safetensors' if form == 'safetensors' else 'pth'}",
                         monkeypatch, yacs_cfgnode)
    assert "yacs" not in sys.modules
    overlay = dict(pretrained_cfg_overlay=dict(file=str(path)))
    for model in (litvit.create_model(name, checkpoint_path=str(path), **TINY),
                  timm.create_model(name, pretrained=True, **overlay, **TINY),
                  litvit.create_model(name, pretrained=True, **overlay, **TINY)):
        assert_same_weights(src, model)
    # fine-tuning from the release: another number of classes keeps all but the classifier
    model = timm.create_model(name, pretrained=True, num_classes=3, **overlay, **TINY)
    assert model.head.out_features == 3
    torch.testing.assert_close(model.stages[2].blocks[0].attn.qkv.weight, src.stages[2].blocks[0].attn.qkv.weight)
    # and a features_only backbone
    feats = timm.create_model(name, pretrained=True, features_only=True, **overlay, **TINY)
    torch.testing.assert_close(feats.model.patch_embed.proj.weight, src.patch_embed.proj.weight)


def test_swin_trainer_objects_read_as_plain_values(tmp_path, monkeypatch, yacs_cfgnode):
    src = litvit.create_model("lit_s", **TINY)
    ck = read_checkpoint(write_release(src, "lit_s", "swin", tmp_path / "lit_s.pth", monkeypatch, yacs_cfgnode))
    assert type(ck["config"]) is not yacs_cfgnode and ck["config"]["MODEL"]["NAME"] == "lit_s"
    assert float(ck["max_accuracy"]) == 81.5 and ck["epoch"] == 299
    ck = read_checkpoint(write_release(src, "lit_s", "deit", tmp_path / "deit.pth"))
    assert isinstance(ck["args"], argparse.Namespace) and ck["args"].lr == 5e-4


@pytest.mark.parametrize("form", FORMS)
def test_url_through_a_local_server(web, tmp_path, monkeypatch, yacs_cfgnode, form):
    """timm downloads the release into its hub cache (TORCH_HOME) and hands it to litvit's reader."""
    root, base, requests = web
    src = randomize_(litvit.create_model("lit_s", **TINY))
    write_release(src, "lit_s", form, root / f"lit_s_{form}.pth", monkeypatch, yacs_cfgnode)
    overlay = dict(pretrained_cfg_overlay=dict(url=f"{base}/lit_s_{form}.pth"))
    assert_same_weights(src, litvit.create_model("lit_s", pretrained=True, **overlay, **TINY))
    assert requests == [f"/lit_s_{form}.pth"]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / f"lit_s_{form}.pth").is_file()
    assert_same_weights(src, timm.create_model("lit_s", pretrained=True, **overlay, **TINY))
    assert len(requests) == 1  # the second model comes from the cache


def test_a_malicious_pickle_is_refused_at_every_door(web, tmp_path):
    root, base, requests = web
    sd = litvit.create_model("lit_ti", **TINY).state_dict()
    torch.save({"model": sd, "args": Evil()}, root / "evil.pth")
    path = str(root / "evil.pth")
    doors = [
        lambda: litvit.create_model("lit_ti", checkpoint_path=path, **TINY),
        lambda: timm.create_model("lit_ti", pretrained=True, pretrained_cfg_overlay=dict(file=path), **TINY),
        lambda: litvit.create_model("lit_ti", pretrained=True, pretrained_cfg_overlay=dict(url=f"{base}/evil.pth"),
                                    **TINY),
    ]
    for door in doors:
        with pytest.raises(CheckpointMismatchError, match=r"pickles objects litvit does not load .*_payload"):
            door()
    assert requests == ["/evil.pth"] and not _ran


def test_pretrained_configs_route_through_litvit():
    """Every registered release is loaded by LIT.load_pretrained (timm's custom_load)."""
    for name in litvit.list_models():
        with torch.device("meta"):
            cfg = timm.create_model(name).pretrained_cfg
        assert cfg["custom_load"] is True, name


def test_an_rgb_release_into_a_one_channel_model(tmp_path):
    src = randomize_(litvit.create_model("lit_ti", **TINY))
    path = write_release(src, "lit_ti", "bare", tmp_path / "lit_ti.pth")
    overlay = dict(file=str(path))
    model = timm.create_model("lit_ti", pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1, **TINY)
    torch.testing.assert_close(model.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


# --- safetensors --------------------------------------------------------------------------------------

def test_safetensors_is_recognised_by_content_and_damage_is_one_error(tmp_path):
    src = randomize_(litvit.create_model("lit_ti", **TINY))
    path = write_release(src, "lit_ti", "safetensors", tmp_path / "weights.bin")  # any name
    assert_same_weights(src, litvit.create_model("lit_ti", checkpoint_path=str(path), **TINY))
    data = path.read_bytes()
    for cut in (100, len(data) // 2):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointMismatchError, match=r"cut\.safetensors: damaged safetensors file"):
            read_checkpoint(tmp_path / "cut.safetensors")


def test_safetensors_written_elsewhere_and_by_litvit(tmp_path):
    from safetensors.torch import save_file
    src = randomize_(litvit.create_model("lit_ti", num_classes=5, **TINY))
    save_file(src.state_dict(), str(tmp_path / "hub.safetensors"), metadata={"format": "pt", "note": "not JSON"})
    ck = read_checkpoint(tmp_path / "hub.safetensors")
    assert set(ck) == set(src.state_dict())  # a bare state dict: its metadata is not a litvit record
    write_safetensors(src.state_dict(), tmp_path / "ours.safetensors", task="classification",
                      extra=dict(model="lit_ti", classes=["a", "b", "c", "d", "e"], mean=[0.5, 0.5, 0.5]), version="9")
    ck = read_checkpoint(tmp_path / "ours.safetensors")
    assert ck["task"] == "classification" and ck["extra"]["classes"][-1] == "e" and ck["extra"]["mean"] == [0.5] * 3
    assert set(ck["model"]) == set(src.state_dict())
    with pytest.raises(ValueError, match="clash"):
        write_safetensors(src.state_dict(), tmp_path / "x.safetensors", extra=dict(format="x"))
    assert not (tmp_path / "x.safetensors").exists()


def test_safetensors_as_init_checkpoint_and_dense_backbone(tmp_path):
    from litvit.models.backbone import build_backbone
    from litvit.tasks.classification import ClassificationConfig, ClassificationTask
    src = randomize_(litvit.create_model("lit_ti", num_classes=1000, **TINY))
    path = write_release(src, "lit_ti", "safetensors", tmp_path / "lit_ti.safetensors")
    arch = {k: v for k, v in TINY.items() if k != "img_size"}
    task = ClassificationTask(ClassificationConfig(model="lit_ti", img_size=64, model_kwargs=arch,
                                                   init_checkpoint=str(path)))
    model = task.build_model()  # the digits: 10 classes, a new classifier
    assert model.head.out_features == 10
    torch.testing.assert_close(model.stages[3].cls_token, src.stages[3].cls_token)
    body = build_backbone("lit_ti", pretrained=str(path), **TINY)
    torch.testing.assert_close(body.model.patch_embed.proj.weight, src.patch_embed.proj.weight)


# --- the command line ----------------------------------------------------------------------------------

def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _training_checkpoint(tmp_path, data):
    """A litvit classification checkpoint of a tiny LIT-Ti over the classes of ``data``, as the engine writes it."""
    from litvit.tasks.classification import ClassificationConfig, ClassificationTask
    arch = {k: v for k, v in TINY.items() if k != "img_size"}
    task = ClassificationTask(ClassificationConfig(model="lit_ti", data=str(data), img_size=64, model_kwargs=arch,
                                                   crop_pct=1.0))
    task.setup()
    model = randomize_(task.build_model())
    path = tmp_path / "best.pth"
    write_checkpoint(dict(model=model.state_dict(), **record_entries(task.name, task.checkpoint_extra())), path)
    return path


@pytest.mark.cli
def test_export_safetensors_then_validate_and_predict_without_model(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    ckpt = _training_checkpoint(tmp_path, data)
    out = tmp_path / "model.safetensors"
    code, stdout, err = _run(capsys, "export", "--checkpoint", ckpt, "--out", out, "--threads", "1")
    assert code == 0, err
    assert "rebuilt from" in stdout and "the same logits" in stdout
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == '"lit_ti"' and meta["classes"] == '["1", "4", "6", "8"]'
    assert meta["input_size"] == "[3, 64, 64]" and meta["mean"] == "[0.485, 0.456, 0.406]"
    assert '"num_classes": 4' in meta["model_kwargs"] and '"embed_dims": [16, 32, 48, 64]' in meta["model_kwargs"]
    results = []
    for path in (ckpt, out):
        code, stdout, err = _run(capsys, "validate", "--checkpoint", path, "--data", data, "--threads", "1")
        assert code == 0, err
        results.append(stdout.splitlines()[-1].split("(")[0])
    assert results[0] == results[1]
    code, stdout, err = _run(capsys, "predict", data / "val", "--checkpoint", out, "--topk", "1", "--threads", "1")
    assert code == 0, err
    assert all(line.split("\t")[1].split()[0] in ("1", "4", "6", "8") for line in stdout.splitlines())
    # --format from the flag, the file name from the model
    code, stdout, err = _run(capsys, "export", "--model", "lit_ti", "--model-args",
                             '{"img_size": 64, "embed_dims": [16, 32, 48, 64], "depths": [1, 2, 2, 1], '
                             '"num_heads": [1, 2, 3, 4], "num_classes": 3}', "--format", "safetensors",
                             "--out", tmp_path / "random.st", "--no-check")
    assert code == 0, err
    assert read_checkpoint(tmp_path / "random.st")["extra"]["model_kwargs"]["num_classes"] == 3


@pytest.mark.cli
def test_validate_an_official_release_without_model(tmp_path, capsys):
    """Issue 16, 5.8: a release of 1000 classes on a 4-class folder is one error line naming both
    counts (no warning about the classifier before it); a release that fits no registered model
    asks for --model; one that fits a registered model is evaluated as that model."""
    data = image_folder(tmp_path / "data")
    full = litvit.create_model("lit_ti")
    torch.save(litvit_to_official(full.state_dict(), "pvt"), tmp_path / "lit_ti.pth")
    code, _, err = _run(capsys, "validate", "--checkpoint", tmp_path / "lit_ti.pth", "--data", data)
    _one_line_error(code, err, "lit_ti.pth: its classifier has 1000 classes", "has 4")
    code, _, err = _run(capsys, "validate", "--checkpoint", tmp_path / "lit_ti.pth", "--data", data,
                        "--model", "lit_ti")
    _one_line_error(code, err, "its classifier has 1000 classes", "has 4")
    tiny = litvit.create_model("lit_s", **TINY)
    torch.save({"model": litvit_to_official(tiny.state_dict(), "swin")}, tmp_path / "tiny.pth")
    code, _, err = _run(capsys, "validate", "--checkpoint", tmp_path / "tiny.pth", "--data", data)
    _one_line_error(code, err, "tiny.pth records no model", "--model")
    full.reset_classifier(4)
    torch.save(litvit_to_official(full.state_dict(), "pvt"), tmp_path / "lit_ti4.pth")
    code, out, err = _run(capsys, "validate", "--checkpoint", tmp_path / "lit_ti4.pth", "--data", data,
                          "--img-size", "32", "--threads", "1")
    assert code == 0, err
    assert "lit_ti official layout" in out and "(4 images" in out
    # predict names the classifier's 4 classes (not ImageNet's 1000) without --model or --num-classes
    code, out, err = _run(capsys, "predict", data / "val", "--checkpoint", tmp_path / "lit_ti4.pth", "--topk", "4",
                          "--img-size", "32", "--threads", "1")
    assert code == 0, err
    assert all(sorted(line.split("\t")[1].split()[::2]) == ["0", "1", "2", "3"] for line in out.splitlines())


def test_a_classifier_that_does_not_fit(tmp_path, caplog):
    """Fine-tuning keeps the new classifier (a warning; timm's pretrained path only logs it);
    evaluation refuses it with one error naming both counts."""
    from litvit.models import load_weights
    src = randomize_(litvit.create_model("lit_ti", num_classes=10, **TINY))
    path = write_release(src, "lit_ti", "bare", tmp_path / "lit_ti.pth")
    model = litvit.create_model("lit_ti", num_classes=3, **TINY)
    with caplog.at_level("INFO", logger="litvit"):
        assert load_weights(model, path)["missing"] == ["head.weight", "head.bias"]
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "its classifier has 10 classes, the model 3" in caplog.records[0].getMessage()
        caplog.clear()
        load_weights(model, path, classifier_mismatch="quiet")
        assert [r.levelname for r in caplog.records] == ["INFO"]
        caplog.clear()
        fresh = litvit.create_model("lit_ti", num_classes=3, **TINY)
        before = fresh.stages[0].blocks[0].mlp.fc1.weight.clone()
        with pytest.raises(CheckpointMismatchError, match=r"lit_ti\.pth: its classifier has 10 classes, the model 3$"):
            load_weights(fresh, path, classifier_mismatch="raise")
        assert caplog.records == []
    assert torch.equal(fresh.stages[0].blocks[0].mlp.fc1.weight, before)  # refused before anything was loaded
    headless = {k: v for k, v in litvit_to_official(src.state_dict(), "pvt").items() if not k.startswith("head.")}
    torch.save(headless, tmp_path / "headless.pth")
    with pytest.raises(CheckpointMismatchError, match="headless.pth: it holds no classifier"):
        load_weights(model, tmp_path / "headless.pth", classifier_mismatch="raise")
