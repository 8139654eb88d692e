"""Fixtures and hooks only; shared helpers live in helpers.py."""
import pytest
import torch

torch.set_num_threads(1)  # the suite runs two workers on two cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
