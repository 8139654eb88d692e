"""One image lister (:func:`litvit.data.io.find_images`) for every command that takes images, and one
dataset of image files (:class:`litvit.data.ImageList`)."""
import os

import pytest
import torch
from PIL import Image

from litvit.data import ImageList, find_images
from litvit.cli.dense import expand_images
from litvit.tools.viz import find_images as viz_find_images

pytestmark = pytest.mark.unit


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path, format="PNG")
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "B.JPG")        # extensions in any case
    _png(root / "c.Jpeg")
    (root / "notes.txt").write_text("not an image")
    _png(root / ".hidden.png")   # hidden files and folders: left out
    _png(root / "._a.png")       # macOS's AppleDouble file beside a.png
    _png(root / ".cache" / "x.png")
    _png(root / "sub" / "d.png")
    return root


def test_a_folder_by_extension_any_case_hidden_left_out(tree):
    assert [p.relative_to(tree).as_posix() for p in find_images(tree)] == ["B.JPG", "a.png", "c.Jpeg", "sub/d.png"]
    assert [p.name for p in find_images(tree, recursive=False)] == ["B.JPG", "a.png", "c.Jpeg"]
    assert find_images(tree / ".hidden.png") == [tree / ".hidden.png"]  # named: taken as named
    assert find_images(str(tree / "notes.txt")) == [tree / "notes.txt"]


def test_symlinks_are_followed_and_dangling_ones_listed(tree, tmp_path):
    other = tmp_path / "other"
    _png(other / "e.png")
    os.symlink(other, tree / "linked")                    # a folder elsewhere: followed
    os.symlink(tree / "a.png", tree / "sub" / "f.png")    # a file: listed
    os.symlink(tree / "missing.png", tree / "g.png")      # dangling: listed, so that reading it says why
    os.symlink(tree, tree / "sub" / "up")                 # a loop back up: its images listed once
    names = [p.relative_to(tree).as_posix() for p in find_images(tree)]
    assert names == ["B.JPG", "a.png", "c.Jpeg", "g.png", "linked/e.png", "sub/d.png", "sub/f.png"]
    assert find_images(tree / "g.png") == [tree / "g.png"]


def test_several_paths_and_errors(tree, tmp_path):
    assert find_images([tree / "sub", tree / "a.png"]) == [tree / "sub" / "d.png", tree / "a.png"]
    with pytest.raises(FileNotFoundError, match="image not found: .*nope"):
        find_images([tree, tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "empty" / ".only_hidden.png")
    with pytest.raises(ValueError, match="no images .* in .*empty"):
        find_images(tmp_path / "empty")


def test_every_command_lists_alike(tree):
    """``predict`` (litvit.data), the dense ``predict`` commands (expand_images) and the figures
    (viz, the folder's own images) list through the same function."""
    os.symlink(tree / "missing.png", tree / "g.png")
    assert expand_images([str(tree)]) == find_images(tree)
    assert viz_find_images(str(tree)) == find_images(tree, recursive=False)
    assert tree / "g.png" in viz_find_images(str(tree))  # once left out: now reported when read
    assert tree / "._a.png" not in expand_images([str(tree)])  # once read as a broken image


def test_image_list_keeps_a_row_per_file(tree):
    (tree / "broken.png").write_bytes(b"\x89PNG not really")
    files = [tree / "a.png", tree / "broken.png"]
    rows = ImageList(files, transform=lambda im: torch.tensor(im.size), with_reasons=True)
    image, index, why = rows[0]
    assert image.tolist() == [4, 4] and (index, why) == (0, "")
    image, index, why = rows[1]
    assert image is None and index == 1 and "broken.png" in why
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert ImageList(files, transform=lambda im: im.size, bad_images="skip")[1] == ((4, 4), 0)
