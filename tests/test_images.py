"""Image files as cameras and scanners write them: EXIF orientation, 16-bit data, every PIL mode,
multi-frame files, decompression bombs, and the datasets that read them (litvit.data.io)."""
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from litvit.data import ImageFolder
from litvit.data.io import ORIENTATION, UnreadableImageError, check_image, exif_orientation, read_image
from litvit.dense_data import SegmentationDataset

pytestmark = pytest.mark.unit

W, H = 40, 20  # stored size of the "phone photos": 40 wide, 20 high

# orientation -> what shows the stored array upright, written with numpy (independent of PIL's table)
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
           8: lambda a: np.rot90(a, 1)}


def stored(seed: int = 0) -> np.ndarray:
    """A 40x20 RGB picture with no symmetry (a smooth ramp, so JPEG keeps it well, plus a corner mark)."""
    y, x = np.mgrid[0:H, 0:W]
    a = np.stack([x * 6, y * 12, (x + y) * 4], -1).astype(np.uint8)
    a[:5, :5] = (255, 0, 0)  # top-left of the stored rows
    return a


def exif(orientation) -> Image.Exif:
    e = Image.Exif()
    e[ORIENTATION] = orientation
    return e


def save_oriented(path, arr, orientation):
    img = Image.fromarray(arr)
    suffix = path.suffix
    if suffix == ".jpg":
        img.save(path, quality=95, exif=exif(orientation))
    elif suffix == ".webp":
        img.save(path, lossless=True, exif=exif(orientation))
    elif suffix == ".tif":
        img.save(path, tiffinfo={ORIENTATION: orientation})
    else:
        img.save(path, exif=exif(orientation))
    return path


def as_stored(path) -> np.ndarray:
    """The file's pixels in stored order, decoded by PIL without any orientation (the reference)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def png_bytes(arr: np.ndarray, colour_type: int, depth: int, before_idat=(), after_idat=()) -> bytes:
    """A PNG written chunk by chunk (16-bit colour, eXIf placed after the pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1).astype(">u2" if depth == 16 else "u1")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(*c) for c in before_idat)
            + chunk(b"IDAT", zlib.compress(raw)) + b"".join(chunk(*c) for c in after_idat) + chunk(b"IEND", b""))


def tiff_rgb16_bytes(arr: np.ndarray) -> bytes:
    """An uncompressed big-endian 16-bit RGB TIFF (PIL cannot write one)."""
    h, w, _ = arr.shape
    data = arr.astype(">u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, "bps"), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, "data"),
            (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    bps_at = 8 + 2 + 12 * len(tags) + 4
    out = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", len(tags))
    for tag, kind, count, value in tags:
        value = {"bps": bps_at, "data": bps_at + 6}.get(value, value)
        out += struct.pack(">HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack(">HHII", tag, kind, count, value)
    return out + struct.pack(">I", 0) + struct.pack(">HHH", 16, 16, 16) + data


# --- EXIF orientation ------------------------------------------------------------------------------

def test_phone_photo_comes_out_upright(tmp_path):
    """The issue's case: saved 40x20 with orientation 6 (turned 90 degrees clockwise to be seen)."""
    path = save_oriented(tmp_path / "phone.jpg", stored(), 6)
    img = read_image(path)
    assert img.size == (20, 40) and check_image(path) == (20, 40)
    a = np.asarray(img).astype(int)
    red = a[..., 0] - a[..., 1:].max(-1)
    assert red[1:4, -4:-1].min() > 100 and red[:5, :5].max() < 0  # the stored top-left mark is now top-right


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation(tmp_path, suffix, orientation):
    path = save_oriented(tmp_path / f"o{orientation}{suffix}", stored(), orientation)
    expected = UPRIGHT[orientation](as_stored(path) if suffix == ".jpg" else stored())  # lossless: the array
    img = read_image(path)
    np.testing.assert_array_equal(np.asarray(img), expected)
    assert check_image(path) == img.size == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_agrees_with_pil_and_torchvision(tmp_path, orientation):
    """Two independent readers of the tag: PIL's exif_transpose and torchvision's decoder."""
    tvio = pytest.importorskip("torchvision.io")
    for suffix in (".jpg", ".png"):
        path = save_oriented(tmp_path / f"o{orientation}{suffix}", stored(), orientation)
        ours = np.asarray(read_image(path)).astype(int)
        with Image.open(path) as im:
            np.testing.assert_array_equal(ours, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        try:
            t = tvio.decode_image(str(path), mode=tvio.ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            pytest.skip("torchvision without its image extension")
        # another libjpeg build may round a level or two differently; the geometry must be the same
        assert np.abs(t.permute(1, 2, 0).numpy().astype(int) - ours).max() <= 2


def test_png_exif_after_the_pixel_data(tmp_path):
    """An eXIf chunk after IDAT (allowed by the PNG spec) is found by the reader and the cheap check."""
    tiff = exif(6).tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
    path = tmp_path / "late.png"
    path.write_bytes(png_bytes(stored(), 2, 8, after_idat=[(b"eXIf", tiff)]))
    np.testing.assert_array_equal(np.asarray(read_image(path)), np.rot90(stored(), -1))
    assert check_image(path) == (20, 40)
    path.write_bytes(png_bytes(stored(), 2, 8, before_idat=[(b"eXIf", tiff)]))
    assert read_image(path).size == check_image(path) == (20, 40)


@pytest.mark.parametrize("value", [0, 9, 300])
def test_invalid_orientation_is_ignored(tmp_path, value):
    path = save_oriented(tmp_path / "bad.jpg", stored(), value)
    assert read_image(path).size == check_image(path) == (W, H)


def test_malformed_exif_never_makes_an_image_unreadable(tmp_path):
    path = tmp_path / "garbage.jpg"
    Image.fromarray(stored()).save(path, exif=b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff not a directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL may warn that the EXIF block is corrupt
        assert read_image(path).size == check_image(path) == (W, H)
        with Image.open(path) as im:
            assert exif_orientation(im) == 1


def test_mode_none_keeps_values_and_applies_orientation(tmp_path):
    g = (np.arange(H * W).reshape(H, W) * 81).astype(np.uint16)  # up to 64719
    path = tmp_path / "g16.png"
    Image.fromarray(g).save(path, exif=exif(8))
    img = read_image(path, mode=None)
    assert img.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(img), np.rot90(g, 1))


# --- 16 bits and wider ----------------------------------------------------------------------------

def ramp16() -> np.ndarray:
    return np.linspace(0, 65535, 8 * 256).round().astype(np.uint16).reshape(8, 256)


def write_grey16(path, g):
    if path.suffix == ".pgm":
        path.write_bytes(b"P5\n%d %d\n65535\n" % (g.shape[1], g.shape[0]) + g.astype(">u2").tobytes())
    elif path.name.endswith("b.tif"):
        Image.fromarray(g.astype(">u2")).save(path)  # mode I;16B
    else:
        Image.fromarray(g).save(path)  # mode I;16
    return path


@pytest.mark.parametrize("name", ["g16.png", "g16.tif", "g16b.tif", "g16.pgm"])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, name):
    g = ramp16()
    path = write_grey16(tmp_path / name, g)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I;16B", "I")
    a = np.asarray(read_image(path)).astype(int)
    assert a.shape == (8, 256, 3) and (a[..., 0] == a[..., 2]).all()
    np.testing.assert_array_equal(a[..., 0], np.round(g / 257).astype(int))  # 0..65535 -> 0..255
    assert (a == 255).mean() < 0.01  # today: 99.6 % of the ramp is clipped to 255
    assert np.asarray(read_image(path, mode="L")).max() == 255 and read_image(path, mode="L").mode == "L"


def test_pgm_of_another_depth_is_scaled_by_its_maximum(tmp_path):
    v = np.arange(1024, dtype=np.uint16).reshape(4, 256)  # 10-bit data, maxval 1023
    path = tmp_path / "g10.pgm"
    path.write_bytes(b"P5\n256 4\n1023\n" + v.astype(">u2").tobytes())
    a = np.asarray(read_image(path))[..., 0].astype(int)
    assert np.abs(a - np.round(v.astype(int) * 255 / 1023)).max() <= 1


@pytest.mark.parametrize("kind", ["rgb16.png", "rgba16.png", "la16.png", "rgb16.tif"])
def test_16bit_colour_is_scaled(tmp_path, kind):
    g = ramp16()
    rgb = np.stack([g, g // 2, 65535 - g], -1)
    path = tmp_path / kind
    if kind == "rgb16.png":
        path.write_bytes(png_bytes(rgb, 2, 16))
    elif kind == "rgba16.png":
        path.write_bytes(png_bytes(np.concatenate([rgb, g[..., None]], -1), 6, 16))
    elif kind == "la16.png":
        path.write_bytes(png_bytes(np.stack([g, g], -1), 4, 16))
        rgb = np.stack([g, g, g], -1)
    else:
        path.write_bytes(tiff_rgb16_bytes(rgb))
    a = np.asarray(read_image(path)).astype(int)
    assert np.abs(a - rgb / 257).max() <= 1


def test_32bit_integer_is_read_as_16bit_data(tmp_path):
    v = np.array([[-5, 0, 257 * 100, 65535, 70000, 2 ** 31 - 1]], np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(v).save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
    np.testing.assert_array_equal(np.asarray(read_image(path))[0, :, 0], [0, 0, 100, 255, 255, 255])


# --- the modes that keep working as before ---------------------------------------------------------

def _modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    rgba = np.concatenate([np.asarray(rgb), rng.integers(0, 256, (12, 16, 1), dtype=np.uint8)], -1)
    files = {}

    def add(name, img, **kw):
        img.save(tmp_path / name, **kw)
        files[name] = tmp_path / name

    add("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    add("cmyk.tif", rgb.convert("CMYK"))
    add("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), transparency=3)
    add("palette.gif", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    add("la.png", Image.fromarray(rgba[..., [0, 3]]))
    add("rgba.png", Image.fromarray(rgba))
    add("rgba.webp", Image.fromarray(rgba), lossless=True)
    add("bits.png", rgb.convert("1"))
    add("bits.tif", rgb.convert("1"))
    add("grey.jpg", rgb.convert("L"), quality=95)
    add("float.tif", Image.fromarray(rng.uniform(-20, 300, (12, 16)).astype(np.float32)))
    add("ycbcr.jpg", rgb, quality=90, subsampling=0)
    add("plain.bmp", rgb)
    add("plain.ppm", rgb)
    return files


def test_every_mode_reads_as_pil_converts_it(tmp_path):
    """CMYK, palette (with transparency), LA, RGBA, 1-bit, grey, float, ...: what PIL's conversion
    gives, as before (float values are 0..255 levels, truncated and clipped)."""
    for name, path in _modes(tmp_path).items():
        with Image.open(path) as im:
            im.load()
            expected = np.asarray(im.convert("RGB"))
        img = read_image(path)
        assert img.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(img), expected, err_msg=name)


def test_alpha_is_dropped_not_composited(tmp_path):
    a = np.array([[[255, 255, 255, 0], [10, 20, 30, 128], [200, 100, 0, 255]]], np.uint8)
    Image.fromarray(a).save(tmp_path / "alpha.png")
    Image.fromarray(a[..., [0, 3]]).save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "alpha.png"))[0], a[0, :, :3])
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "la.png"))[0, :, 0], a[0, :, 0])


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".png", ".webp"])
def test_multi_frame_files_give_their_first_frame(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 6), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = tmp_path / f"frames{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], **({"lossless": True} if suffix == ".webp" else {}))
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 3
    a = np.asarray(read_image(path)).astype(int)
    assert a.shape == (6, 8, 3) and np.abs(a - (250, 0, 0)).max() <= 4


# --- limits and errors ----------------------------------------------------------------------------

def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(stored()).save(path)  # 800 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # over twice the limit: refused before decoding
    with pytest.raises(UnreadableImageError, match="big.jpg"):
        read_image(path)
    with pytest.raises(UnreadableImageError, match="big.jpg"):
        check_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # between once and twice: read, with PIL's warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert read_image(path).size == (W, H)


@pytest.mark.parametrize("what", ["truncated", "not an image", "missing"])
def test_unreadable_files_are_named(tmp_path, what):
    path = tmp_path / "x.jpg"
    if what != "missing":
        Image.fromarray(stored()).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if what == "truncated" else b"hello, not a picture")
    with pytest.raises(UnreadableImageError, match=r"cannot open image .*x\.jpg"):
        read_image(path, verb="open")
    with pytest.raises(UnreadableImageError, match=r"x\.jpg"):
        check_image(path)


# --- the datasets read it the same way ------------------------------------------------------------

def test_classification_dataset_sees_the_photo_upright(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        save_oriented(tmp_path / split / "cat" / "phone.jpg", stored(), 6)
    with pytest.warns(UserWarning, match="single class"):  # one class folder here, on purpose
        ds = ImageFolder(tmp_path, "train")
    assert ds.scan(progress=False) == []
    img, target = ds[0]
    assert img.size == (20, 40) and target == 0


def test_segmentation_photo_rotated_label_left_as_stored(tmp_path):
    """The photo follows its EXIF orientation; the label PNG (class indices, drawn on the picture as
    shown) is never rotated nor rescaled, even with an orientation tag or 16 bits of its own."""
    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    save_oriented(tmp_path / "images" / "training" / "a.jpg", stored(), 6)
    label = np.ones((40, 20), np.uint8)  # H, W of the photo as shown
    label[:10] = 2
    label[-5:, :3] = 3
    Image.fromarray(label).save(tmp_path / "annotations" / "training" / "a.png", exif=exif(6))
    save_oriented(tmp_path / "images" / "training" / "b.jpg", stored(), 8)
    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "annotations" / "training" / "b.png")  # I;16
    ds = SegmentationDataset(str(tmp_path), "training", num_classes=3)
    assert ds.scan(progress=False) == []
    for i in range(2):
        image, target = ds[i]
        assert image.shape == (3, 40, 20)
        np.testing.assert_array_equal(target.numpy(), label.astype(np.int64) - 1)  # reduce_zero_label


def test_coco_dataset_sees_the_photo_upright(tmp_path):
    pytest.importorskip("pycocotools")
    from litvit.dense_data import CocoDetection
    (tmp_path / "img").mkdir()
    save_oriented(tmp_path / "img" / "phone.jpg", stored(), 6)
    ann = dict(images=[dict(id=1, file_name="phone.jpg", width=20, height=40)],
               annotations=[dict(id=1, image_id=1, category_id=1, iscrowd=0, bbox=[2, 22, 10, 15], area=150.0)],
               categories=[dict(id=1, name="thing")])
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoDetection(str(tmp_path / "img"), str(tmp_path / "ann.json"), train=True, hflip_prob=0.0)
    assert ds.scan(progress=False) == []  # the box (y up to 37) lies inside the upright 20x40 picture
    image, target = ds[0]
    assert image.shape == (3, 40, 20)
    assert target["boxes"].tolist() == [[2.0, 22.0, 12.0, 37.0]]


# --- the decode benchmark -------------------------------------------------------------------------

def test_decode_bench_runs_and_readers_agree(capsys):
    from litvit.tools.decode_bench import bench_decode, print_decode
    r = bench_decode(n=2, reps=1, warmup=0, size=(64, 48))
    assert {"before", "after"} <= set(r["readers"]) and r["readers"]["before"]["ratio"] == 1.0
    assert all(v["median"] > 0 for v in r["readers"].values()) and max(r["max_diff"].values()) <= 2
    print_decode(r)
    assert "read_image" in capsys.readouterr().out


@pytest.mark.cli
def test_bench_decode_command(capsys):
    from litvit.cli import main
    assert main(["bench", "--decode", "2", "--reps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 synthetic 500x375 photos at quality 90" in out and "x1.00 of before" in out
