"""Atomic writes: the target is the old content or the new one, never a partial file."""
import os

import pytest

from litvit.utils import atomic_path, atomic_write

pytestmark = pytest.mark.unit


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "sub" / "a.png"
    atomic_write(out, lambda p: open(p, "w").write("one"))
    atomic_write(out, lambda p: open(p, "w").write("two"), fsync=False)
    assert out.read_text() == "two"
    assert sorted(os.listdir(out.parent)) == ["a.png"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "ckpt.pth"
    out.write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "complete"
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_temporary_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "curves.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
