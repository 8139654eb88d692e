"""Fixtures and hooks only; shared helpers live in helpers.py."""
import os
import sys
import types

import pytest
import torch

pytest_plugins = ["pytester"]  # test_global_state runs the leak check on a suite of its own

torch.set_num_threads(1)  # the suite runs two workers on two cores
_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _test_made(obj) -> bool:
    """A function or class written in a test file (a patch's stand-in), not in litvit or a library."""
    if not isinstance(obj, (types.FunctionType, type)):
        return False
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[-1].startswith(("test_", "conftest", "helpers"))


def _leaked_patches() -> list:
    """``module.name`` of every litvit module attribute that holds a test's stand-in."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "litvit" or name.startswith("litvit.")):
            continue
        for attr, value in list(vars(module).items()):
            if _test_made(value):
                found.append(f"{name}.{attr}")
    return found


# environment variables that change what later tests do, also when a test only adds them
_WATCHED_PREFIXES = ("LITVIT", "OMP_", "MKL_", "CUDA_", "TORCH_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_",
                     "PYTHON", "HOME", "XDG_")


def _watched(key: str, before: dict) -> bool:
    """Changed or removed variables always count; added ones when they steer torch or litvit
    (libraries set a few of their own on first import, e.g. scikit-learn's KMP_*)."""
    if key == "PYTEST_CURRENT_TEST":
        return False
    return key in before or key.startswith(_WATCHED_PREFIXES)


def _made_up(name: str) -> bool:
    """A module put into ``sys.modules`` by hand: neither it nor its top-level package was imported
    from a file (a test's stand-in for an optional package such as yacs). Private names (compiled
    extensions' ``_cython_*`` shared modules) are not stand-ins."""
    if name.startswith("_"):
        return False
    top = sys.modules.get(name.split(".")[0])
    return all(m is None or (getattr(m, "__spec__", None) is None and getattr(m, "__file__", None) is None)
               for m in (sys.modules.get(name), top))


@pytest.fixture(autouse=True)
def _no_leaks(request):
    """Fail a test that leaves global state behind for the tests after it: torch's thread count,
    default dtype or grad mode, the working directory, environment variables, modules in
    ``sys.modules`` that it made up, or a patched function bound into a litvit module (the leak of
    ``litvit flops`` whose CLI once bound a test's stand-in for the rest of the process)."""
    settings = [("torch threads", torch.get_num_threads, torch.set_num_threads),
                ("default dtype", torch.get_default_dtype, torch.set_default_dtype),
                ("grad mode", torch.is_grad_enabled, torch.set_grad_enabled),
                ("working directory", os.getcwd, os.chdir)]
    before = [get() for _, get, _ in settings]
    before[0] = _THREADS  # the suite's own choice, also when an earlier test broke it
    env, modules = dict(os.environ), set(sys.modules)
    yield
    leaks = []
    for (what, get, put), value in zip(settings, before):
        if get() != value:
            leaks.append(f"{what} {value} -> {get()}")
            put(value)  # the next test starts clean even so
    changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k) and _watched(k, env))
    if changed:
        leaks.append(f"environment variables {changed}")
    made_up = sorted(n for n in set(sys.modules) - modules if _made_up(n))
    if made_up:
        leaks.append(f"made-up modules left in sys.modules: {made_up}")
    removed = sorted(modules - set(sys.modules))
    if removed:
        leaks.append(f"modules removed from sys.modules: {removed[:5]}")
    patched = _leaked_patches()
    if patched:
        leaks.append(f"test stand-ins bound in litvit modules: {patched}")
    if leaks:
        pytest.fail(f"{request.node.nodeid} leaves state behind: " + "; ".join(leaks), pytrace=False)


def pytest_terminal_summary(terminalreporter, config):
    """Name the random order last (pytest-randomly's header is hidden by -q), so a failure that
    depends on the order can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and getattr(config.option, "randomly_reorganize", True):
        terminalreporter.write_line(f"test order: random, --randomly-seed={seed} (replay: make test SEED={seed})")


_KINDS = ("unit", "cli", "distributed")


def pytest_collection_modifyitems(items):
    """Every test says what kind it is (markers in pyproject.toml): a module's ``pytestmark`` or the test's own."""
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(k) for k in _KINDS)]
    if unmarked:
        raise pytest.UsageError(f"tests without a unit/cli/distributed marker: {unmarked[:5]}")
