"""Fixtures and hooks only; shared helpers live in helpers.py."""
import pytest
import torch

torch.set_num_threads(1)  # the suite runs two workers on two cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_KINDS = ("unit", "cli", "distributed")


def pytest_collection_modifyitems(items):
    """Every test says what kind it is (markers in pyproject.toml): a module's ``pytestmark`` or the test's own."""
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(k) for k in _KINDS)]
    if unmarked:
        raise pytest.UsageError(f"tests without a unit/cli/distributed marker: {unmarked[:5]}")
