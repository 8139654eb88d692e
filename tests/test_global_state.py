"""In-process runs leave the process as they found it: RNG states and torch's thread count are
restored after ``litvit.cli.main([...])``, :func:`litvit.engine.fit` and ``evaluate``."""
import random

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
