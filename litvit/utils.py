"""Small helpers shared by every floor of litvit."""
import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

__all__ = ["atomic_path", "atomic_write", "plain", "count_parameters", "warn_grid_change", "moved_names",
           "preserved_global_state", "mix_seed", "seeded_rngs"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error the temporary
    file is flushed to disk and renamed over ``path`` (``os.replace``), else it is removed.

    ``path`` is therefore always either its previous complete content or the new complete one,
    also when the process is killed mid-write. The temporary name keeps ``path``'s suffix, so
    writers that infer the format from it (matplotlib, PIL) work unchanged.

    Examples::
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> open(out).read()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files; give the usual permissions
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if fsync:
        with contextlib.suppress(OSError):  # persist the rename itself
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def atomic_write(path: PathLike, write: Callable[[str], object], fsync: bool = True) -> Path:
    """``write(tmp_path)`` then rename onto ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        write(str(tmp))
    return Path(path)


def plain(obj: Any) -> Any:
    """``obj`` with every mapping a dict and every tuple a list (as it reads back from JSON or a
    checkpoint), so that settings compare equal however they were written."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def count_parameters(module) -> int:
    """Number of parameters of an ``nn.Module`` (shapes only: works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


_warned = set()


def warn_grid_change(command: str, trained: Sequence[int], used: Sequence[int]) -> None:
    """Say once, on stderr, when a model runs at an input whose token grid holds more than twice (or
    less than half) the positions of its training grid: position embeddings and relative tables
    are then interpolated far from what was learned, and accuracy usually drops.

    Args:
        command (str): the command's name, for the message.
        trained, used ((H, W)): the training input size and the one fed now, in pixels.
    """
    th, tw = (trained, trained) if isinstance(trained, int) else tuple(trained)
    uh, uw = (used, used) if isinstance(used, int) else tuple(used)
    ratio = (uh * uw) / max(th * tw, 1)
    key = (command, th, tw, uh, uw)
    if (ratio > 2 or ratio < 0.5) and key not in _warned:
        _warned.add(key)
        print(f"litvit {command}: warning: the model was trained at {th}x{tw} px and runs at {uh}x{uw}: its "
              f"position tables are resized to {ratio:.3g}x the positions, far from what was learned; accuracy "
              f"usually drops unless the model is fine-tuned at this size", file=sys.stderr)


def moved_names(module: str, target: str, names: Sequence[str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that finds ``names`` in ``target`` on first use:
    the old import path of what moved up a floor (the command-line functions of the tasks and
    tools, now in :mod:`litvit.cli`), without a module-level import that points upward.

    Examples::
        >>> getattr_ = moved_names("old.place", "json", ["dumps"])
        >>> getattr_("dumps")([1])
        '[1]'
    """
    names = frozenset(names)

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(target), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__



@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Run a block that may reseed or re-thread the process, then put back what it changed: the
    global RNG states of torch (CPU, and every CUDA device once CUDA is initialised), numpy and
    ``random``, and torch's intra-op thread count.

    Training reseeds all three generators and ``--threads`` sets torch's thread count; a command run
    in-process (``litvit.cli.main([...])``, :func:`litvit.engine.fit` from a notebook) leaves the
    caller's process as it found it. (torch's inter-op thread count can be set only once per
    process, so nothing here touches it.)

    Examples::
        >>> import random
        >>> random.seed(3); before = random.random(); random.seed(3)
        >>> with preserved_global_state():
        ...     random.seed(99); _ = random.random()
        >>> random.random() == before
        True
    """
    import random

    import numpy as np
    import torch
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 32-bit seed from integers (splitmix64 steps); seeds one sample's augmentation from
    ``(seed, epoch, rank, position)``.

    Examples::
        >>> mix_seed(0, 1, 2) == mix_seed(0, 1, 2) != mix_seed(0, 2, 1)
        True
    """
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & 0xFFFFFFFF


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python RNGs for a block, then put the previous states back."""
    import random

    import numpy as np
    import torch
    gen = torch.default_generator
    py, np_state, th = random.getstate(), np.random.get_state(legacy=False), gen.get_state()
    random.seed(seed)
    np.random.seed(seed)
    gen.manual_seed(seed)  # not torch.manual_seed: that one also seeds every accelerator
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        gen.set_state(th)
