"""Registries: a new attention mixer is one class and one ``register_mixer``; a new data source is
one class and one ``register_data_source``."""
import pytest
import torch
from torch import nn

import litvit
from litvit.data import sources
from litvit.data.sources import DATA_SOURCES, DataSource, data_source, register_data_source
from litvit.models.lit import MIXERS, Attention, build_mixer, mixer_names, register_mixer
from litvit.tasks.classification import ClassificationConfig, ClassificationTask

pytestmark = pytest.mark.unit

TINY = dict(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


class _Pool(nn.Module):
    """A toy token mixer: a linear map of the mean token, added to every token."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=qkv_bias, device=device, dtype=dtype)

    def forward(self, x, feat_size):
        return self.proj(x.mean(dim=1, keepdim=True)).expand_as(x)


def test_the_models_own_mixers_are_registered():
    assert mixer_names("lit") == ("none", "msa", "sra") and mixer_names("litv2") == ("none", "hilo")
    assert MIXERS["msa"][0] is Attention and build_mixer("msa", 16, 2, sr_ratio=4).sr_ratio == 1
    assert build_mixer("sra", 16, 2, sr_ratio=4).sr_ratio == 4
    with pytest.raises(ValueError, match="attn_type must be one of \\('none', 'hilo'\\), got 'msa'"):
        build_mixer("msa", 16, 2, "litv2")


@pytest.mark.parametrize("name", ["lit_ti", "litv2_s"])
def test_a_new_mixer_is_one_class_and_one_registration(monkeypatch, name):
    monkeypatch.setitem(MIXERS, "pool", (None, {}, ()))  # restored (removed) after the test
    register_mixer("pool")(_Pool)
    model = litvit.create_model(name, num_classes=3, attn_types=("none", "none", "pool", "pool"),
                                **({"window_sizes": (0, 0, 2, 1)} if name == "litv2_s" else {}), **TINY).eval()
    stage = model.stages[2].blocks[0]
    assert isinstance(stage.attn, _Pool) and stage.norm1 is not None
    assert isinstance(model.stages[0].blocks[0].attn, type(None))
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    assert "stages.2.blocks.0.attn.proj.weight" in model.state_dict()
    with pytest.raises(ValueError, match="is not one of"):
        litvit.create_model(name, attn_types=("none", "none", "nope", "nope"), **TINY)


class _Ones(DataSource):
    """A toy source: ``ones:N`` is N white 8x8 images of two classes."""
    name = "ones"

    def matches(self, data):
        return str(data).startswith("ones:")

    def train(self, data, transform, classes=None, bad_images="fail"):
        return self.evaluation(data, "train", transform, classes)

    def evaluation(self, data, split, transform, classes=None, bad_images="fail"):
        from PIL import Image
        n = int(data.split(":")[1])

        class Ones(torch.utils.data.Dataset):
            classes = ["a", "b"]

            def __len__(self):
                return n

            def __getitem__(self, i):
                return transform(Image.new("RGB", (8, 8), "white")), i % 2
        return Ones()


def test_data_sources_resolve_data(monkeypatch):
    assert list(DATA_SOURCES) == ["digits", "shards", "folder"]
    assert [data_source(d).name for d in ("digits", "s/train-{0..3}.tar", "one.tar", "/data/imagenet")] == \
        ["digits", "shards", "shards", "folder"]
    assert data_source("s.tar").streams and not data_source("digits").streams
    monkeypatch.setattr(sources, "DATA_SOURCES", dict(DATA_SOURCES))  # the registry restored after the test
    register_data_source(_Ones(), first=True)
    assert list(sources.DATA_SOURCES)[0] == "ones" and data_source("ones:6").name == "ones"
    task = ClassificationTask(ClassificationConfig(data="ones:6", img_size=32, model_kwargs=dict(
        embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))))
    assert task.setup() == dict(num_classes=2, classes=["a", "b"])
    train, val = task.build_datasets()
    assert len(train) == len(val) == 6 and train[0][0].shape == (3, 32, 32)
