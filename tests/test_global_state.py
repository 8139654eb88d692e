"""In-process runs leave the process as they found it: RNG states and torch's thread count are
restored after ``litvit.cli.main([...])``, :func:`litvit.engine.fit` and ``evaluate``."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from litvit.cli import main
from litvit.utils import preserved_global_state

pytestmark = pytest.mark.unit

TINY_FLAGS = ["--img-size", "32", "--embed-dims", "8", "16", "24", "32", "--depths", "1", "1", "1", "1",
              "--num-heads", "1", "1", "1", "1", "--mlp-ratios", "2", "2", "2", "2"]


def _states():
    return (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), torch.get_num_threads())


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]


def test_preserved_global_state_restores_on_error():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = _states()
    with pytest.raises(RuntimeError, match="boom"):
        with preserved_global_state():
            torch.manual_seed(1), np.random.seed(1), random.seed(1)
            torch.set_num_threads(before[3] + 1)
            torch.randn(3), np.random.rand(), random.random()
            raise RuntimeError("boom")
    assert _same(before, _states())


@pytest.mark.cli
def test_training_in_process_restores_rng_and_threads(tmp_path):
    """``train --threads 2 --seed 7`` reseeds every generator and sets the thread count for its
    run; after it, the caller's generators continue where they were."""
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = _states()
    assert main(["train", "--data", "digits", "--output", str(tmp_path / "run"), "--epochs", "1", "--max-steps", "2",
                 "--batch-size", "32", "--seed", "7", "--threads", "2", "--workers", "0", "--no-progress", *TINY_FLAGS]) == 0
    assert _same(before, _states())
    assert main(["validate", "--checkpoint", str(tmp_path / "run" / "last.pth"), "--data", "digits",
                 "--threads", "2", "--workers", "0"]) == 0
    assert _same(before, _states())


LEAKY = """
import os, sys, types
import pytest, torch
pytestmark = pytest.mark.unit

def test_clean(monkeypatch, tmp_path):
    monkeypatch.setenv("LITVIT_LEAK", "1")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    torch.set_num_threads(1)

def test_threads():
    torch.set_num_threads(3)

def test_cwd(tmp_path):
    os.chdir(tmp_path)

def test_env():
    os.environ["LITVIT_LEAK"] = "1"

def test_made_up_module():
    sys.modules["yacs"] = types.ModuleType("yacs")

def test_stand_in():
    import litvit.tools.flops as F
    F.profile_model = lambda *a, **k: None
"""


def test_the_leak_check_catches_each_kind(pytester):
    """The suite's own guard (conftest.py) fails each test that leaves something behind, names
    what, and passes the test that restores everything it changed."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=5)
    out = result.stdout.str()
    for what in ["torch threads 1 -> 3", "working directory", "environment variables ['LITVIT_LEAK']",
                 "made-up modules left in sys.modules: ['yacs']", "litvit.tools.flops.profile_model"]:
        assert what in out, what
