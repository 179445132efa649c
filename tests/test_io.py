"""Image reading: every format, every kind of bad file, one exception type with the file name."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from leukoseg.errors import LeukosegError
from leukoseg.io import atomic_write, find_images, read_image, write_image, write_json


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_lossless_formats_round_trip(tmp_path, rgb_image, ext):
    path = _save(tmp_path / f"a{ext}", rgb_image)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == rgb_image.shape
    np.testing.assert_array_equal(out, rgb_image)


def test_jpeg_reads_as_rgb(tmp_path, rgb_image):
    big = np.kron(rgb_image, np.ones((8, 8, 1), np.uint8))
    out = read_image(_save(tmp_path / "a.jpg", big, quality=98))
    assert out.shape == big.shape
    err = np.abs(out.astype(int) - big.astype(int)).mean()
    swapped = np.abs(out[..., ::-1].astype(int) - big.astype(int)).mean()
    assert err < 12  # JPEG chroma subsampling on random 8x8 blocks
    assert swapped > 4 * err  # RGB, not BGR


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    base = np.kron((np.arange(12).reshape(3, 4) * 20).astype(np.uint8), np.ones((16, 16), np.uint8))
    rgb = np.stack([base, 255 - base, np.full_like(base, 128)], axis=-1)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, exif=exif, quality=95)
    from PIL import ImageOps

    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    out = read_image(path)
    assert out.shape == expected.shape
    assert out.shape[:2] == ((48, 64) if orientation < 5 else (64, 48))
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_rgb_is_scaled(tmp_path):
    rgb16 = np.zeros((8, 8, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 257 * 100
    path = tmp_path / "a16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes 16-bit colour PNGs (BGR order)
    out = read_image(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 100, 0])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize(("bits", "orientation"), [(12, 1), (10, 6), (14, 3)])
def test_sixteen_bit_files_of_a_narrower_camera_are_scaled_from_their_bit_depth(tmp_path, rgb_image, caplog, suffix,
                                                                                 bits, orientation):
    """12-bit data in a 16-bit file: its top byte would be 16 times too dark."""
    top = (1 << bits) - 1
    image = rgb_image.copy()
    image[0, 0] = 255  # white somewhere, as the glass of a smear
    raw = np.rint(image * (top / 255.0)).astype(np.uint16)
    path = tmp_path / f"narrow{suffix}"
    if orientation == 1:
        cv2.imwrite(str(path), raw[..., ::-1])
    else:  # a camera that wrote its orientation: the scaled pixels turn as Pillow turns the image
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(image).save(tmp_path / "8bit.png", exif=exif.tobytes())
        ok, png = cv2.imencode(".png", raw[..., ::-1])
        assert ok
        # The 16-bit data with the eXIf chunk of the 8-bit file, placed before its first IDAT chunk.
        eight = (tmp_path / "8bit.png").read_bytes()
        start = eight.index(b"eXIf") - 4
        chunk = eight[start : start + 12 + int.from_bytes(eight[start : start + 4], "big")]
        png = png.tobytes()
        idat = png.index(b"IDAT") - 4
        path = path.with_suffix(".png")
        path.write_bytes(png[:idat] + chunk + png[idat:])
    with caplog.at_level("WARNING", logger="leukoseg"):
        out = read_image(path)
    expected = read_image(tmp_path / "8bit.png") if orientation != 1 else image
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 1  # one rounding each way
    assert f"16-bit samples reach only {top}: read as {bits}-bit data" in caplog.text


def test_alpha_is_dropped(tmp_path, rgb_image):
    rgba = np.dstack([rgb_image, np.full(rgb_image.shape[:2], 7, np.uint8)])
    out = read_image(_save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgb_image)


def test_colour_palette_is_expanded(tmp_path, rgb_image):
    path = tmp_path / "p.png"
    Image.fromarray(rgb_image).quantize(16).save(path)
    assert read_image(path).shape == rgb_image.shape


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _save(p, np.zeros((8, 8), np.uint8)),  # 8-bit grayscale
        lambda p: Image.fromarray(np.zeros((8, 8), np.uint16)).save(p) or p,  # 16-bit grayscale
        lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).convert("1").save(p) or p,  # bilevel
        lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(p) or p,  # gray palette
    ],
    ids=["L", "I;16", "1", "gray-palette"],
)
def test_grayscale_is_refused(tmp_path, make):
    path = tmp_path / "g.png"
    make(path)
    with pytest.raises(LeukosegError, match="grayscale") as info:
        read_image(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_grey_picture_saved_as_rgb_is_refused(tmp_path, ext):
    """A smear converted to grey and saved in colour has lost its stain: refused as grayscale, not read as empty."""
    from leukoseg.synthetic import make_smear

    smear = make_smear(shape=(120, 160), kinds=("blast_L1",), n_touching_pairs=0, seed=0).image
    grey = np.asarray(Image.fromarray(smear).convert("L").convert("RGB"))
    path = _save(tmp_path / f"g{ext}", grey, **({"quality": 90} if ext == ".jpg" else {}))
    with pytest.raises(LeukosegError, match=r"grayscale image \(its red, green and blue channels are equal\)") as info:
        read_image(path)
    assert info.value.path == str(path)
    assert read_image(_save(tmp_path / f"c{ext}", smear)).shape == smear.shape  # the colour original is read
    # A uniform neutral field holds nothing to lose: read (it segments to no cells), not refused.
    assert read_image(_save(tmp_path / f"w{ext}", np.full((40, 40, 3), 240, np.uint8))).shape == (40, 40, 3)


def test_colour_between_the_sampled_pixels_still_counts(tmp_path):
    """The grey check looks at every pixel before it refuses: a few stained pixels keep an image in colour."""
    grey = np.repeat(np.linspace(60, 220, 64).astype(np.uint8)[None, :, None], 3, axis=2).repeat(48, axis=0)
    grey[1:4, 1:4] = (120, 60, 170)  # purple, off the 4-pixel grid of the coarse looks
    assert read_image(_save(tmp_path / "c.png", grey)).shape == (48, 64, 3)


def test_a_float_tiff_is_named_as_such(tmp_path):
    path = tmp_path / "f.tif"
    cv2.imwrite(str(path), np.random.default_rng(0).random((20, 20, 3)).astype(np.float32))
    with pytest.raises(LeukosegError, match="TIFF that cannot be decoded"):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(LeukosegError, match="no such file") as info:
        read_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(LeukosegError, match="folder"):
        read_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(LeukosegError, match="empty"):
        read_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(LeukosegError, match="not a readable image"):
        read_image(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_jpeg(tmp_path, rgb_image, keep):
    full = tmp_path / "full.jpg"
    _save(full, np.kron(rgb_image, np.ones((8, 8, 1), np.uint8)), quality=90)
    data = full.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(LeukosegError, match="truncated|corrupt|not a readable") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path, rgb_image):
    full = _save(tmp_path / "full.png", np.kron(rgb_image, np.ones((8, 8, 1), np.uint8)))
    data = full.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LeukosegError, match="truncated or corrupt image data") as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: ")  # the message names the file


def test_huge_image_refused_before_decoding(tmp_path, png_header_only):
    path = png_header_only(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(LeukosegError, match="too large"):
        read_image(path)


def test_pixel_limit_is_configurable(tmp_path, rgb_image):
    path = _save(tmp_path / "a.png", rgb_image)
    with pytest.raises(LeukosegError, match="too large"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=rgb_image.shape[0] * rgb_image.shape[1]).shape == rgb_image.shape


def test_one_pixel_image(tmp_path):
    assert read_image(_save(tmp_path / "dot.png", np.full((1, 1, 3), 200, np.uint8))).shape == (1, 1, 3)


def test_non_ascii_path_with_spaces(tmp_path, rgb_image):
    folder = tmp_path / "frottis sanguin à étudier"
    folder.mkdir()
    path = _save(folder / "lâme 1 ü.png", rgb_image)
    np.testing.assert_array_equal(read_image(path), rgb_image)
    write_image(folder / "copie é.png", rgb_image)
    np.testing.assert_array_equal(read_image(folder / "copie é.png"), rgb_image)


def test_find_images(tmp_path, rgb_image):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/x.jpg", "a/b/y.PNG", "a/b/z.tif", "a/notes.txt", "a/b/w.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / "a"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/w.bmp", "a/b/y.PNG", "a/b/z.tif", "a/x.jpg"]
    # Globs, explicit files of any extension, duplicates dropped, missing paths kept (reported later).
    found = find_images([str(tmp_path / "a" / "*.jpg"), tmp_path / "a" / "notes.txt", tmp_path / "a" / "x.jpg",
                         tmp_path / "missing.jpg"])
    assert [p.name for p in found] == ["x.jpg", "notes.txt", "missing.jpg"]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target, "w") as f:
        f.write("whole")
    assert target.read_text() == "whole"


def test_umask_is_read_without_changing_it():
    import os

    from leukoseg.io import _umask

    before = os.umask(0o027)
    try:
        assert _umask() == 0o027
        assert _umask() == 0o027  # reading it left it as it was
    finally:
        os.umask(before)


def test_swap_folder_puts_the_old_result_back_when_the_rename_fails(tmp_path, monkeypatch):
    import os

    from leukoseg import io as lio

    target, tmp = tmp_path / "result", tmp_path / ".result.part"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src) == tmp:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(lio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        lio._swap_folder(tmp, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".result.part", "result"]  # nothing stranded
    assert (target / "old.txt").read_text() == "old"
    monkeypatch.undo()
    lio._swap_folder(tmp, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    assert (target / "new.txt").read_text() == "new" and not (target / "old.txt").exists()


def test_write_label_png_keeps_uint16(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 300
    labels[10:12, 1:2] = 65535
    write_image(tmp_path / "l.png", labels)
    back = cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_encode_image_keeps_rgb_order(tmp_path, ext):
    from leukoseg.io import encode_image

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 220, 30  # red
    view = np.pad(rgb, ((2, 2), (3, 3), (0, 0)))[2:-2, 3:-3]  # not contiguous, as crops are
    data = encode_image(view, ext)
    back = read_image(_write(tmp_path / f"e{ext}", data))
    assert np.abs(back.astype(int) - rgb).max() <= 3


def test_write_image_failure_names_the_file(tmp_path):
    with pytest.raises(LeukosegError, match="x.png"):
        write_image(tmp_path / "x.png", np.zeros((0, 0), np.uint8))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_find_images_skips_outputs_hidden_and_excluded(tmp_path):
    for name in ["x.jpg", "sub/y.png", "out/z.jpg", "res/overlay.jpg", "res/crops/cell_0001.png", ".hid/w.jpg",
                 "sub/._y.png"]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "res" / "segmentation.json").write_text("{}")
    rel = lambda found: [p.relative_to(tmp_path).as_posix() for p in found]  # noqa: E731
    assert rel(find_images([tmp_path], exclude=[tmp_path / "out"])) == ["sub/y.png", "x.jpg"]
    # The folder searched is searched even when it is the excluded (output) folder itself.
    assert rel(find_images([tmp_path], exclude=[tmp_path])) == ["out/z.jpg", "sub/y.png", "x.jpg"]
    assert rel(find_images([str(tmp_path / "**" / "*.*")], exclude=[tmp_path / "out"])) == ["sub/y.png", "x.jpg"]
    assert rel(find_images([str(tmp_path / "*.jpg")], exclude=[tmp_path])) == ["x.jpg"]
    # Named explicitly, any file is kept; a pattern that matches nothing is kept, to be reported as missing.
    assert rel(find_images([tmp_path / "res" / "overlay.jpg", tmp_path / "out" / "z.jpg"], exclude=[tmp_path / "out"])) \
        == ["res/overlay.jpg", "out/z.jpg"]
    assert find_images([str(tmp_path / "nosuch*.jpg")]) == [tmp_path / "nosuch*.jpg"]


def test_max_pixels_above_pillows_own_limit(tmp_path, png_header_only):
    """A --max-pixels above Pillow's bomb limit (about 179 million pixels) is the limit that counts."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    path = png_header_only(tmp_path / "big.png", 20000, 10000)  # 200 million pixels, no pixel data
    with pytest.raises(LeukosegError, match=r"too large .*150,000,000"):
        read_image(path, max_pixels=150_000_000)
    # Accepted by the limit; it fails on the missing pixel data instead.
    with pytest.raises(LeukosegError, match="truncated or corrupt image data") as info:
        read_image(path, max_pixels=300_000_000)
    assert "too large" not in str(info.value)
    assert Image.MAX_IMAGE_PIXELS == before


def test_corrupt_jpeg_data_is_refused(tmp_path, rgb_image):
    path = _save(tmp_path / "a.jpg", rgb_image, quality=95)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 :] = data[len(data) // 3 : len(data) // 2] + b"\xff\xd9"  # cut short, then "ended"
    path.write_bytes(bytes(data))
    with pytest.raises(LeukosegError, match="corrupt JPEG data"):
        read_image(path)


def test_c_stderr_capture_keeps_what_it_does_not_drop(capfd):
    import os

    from leukoseg._stderr import c_stderr_captured

    with c_stderr_captured(drop=lambda line: "noise" in line) as lines:
        os.write(2, b"noise from a C library\nkeep this\n")
    assert lines == ["noise from a C library\n", "keep this\n"]
    assert capfd.readouterr().err == "keep this\n"


def test_not_a_regular_file(tmp_path):
    with pytest.raises(LeukosegError, match="not a regular file"):
        read_image("/dev/null")


def test_find_images_lists_a_file_once_however_it_is_named(tmp_path, rgb_image):
    image = _save(tmp_path / "a.png", rgb_image)
    (tmp_path / "link.png").symlink_to(image)
    names = [image, tmp_path / "." / "a.png", tmp_path / "link.png", tmp_path]
    assert find_images(names) == [image]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_write_json_refuses_nan_and_infinity(tmp_path, value):
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(path, {"auc": [0.5, value]})
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    path.write_text("kept\n")
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(path, {"nested": {"x": value}})
    assert path.read_text() == "kept\n" and list(tmp_path.iterdir()) == [path]


def test_write_json_writes_indented_json(tmp_path):
    import json

    path = tmp_path / "a.json"
    write_json(path, {"b": [1, 2.5], "a": None})
    text = path.read_text()
    assert text == '{\n  "b": [\n    1,\n    2.5\n  ],\n  "a": null\n}\n'  # keys in the given order
    assert json.loads(text) == {"b": [1, 2.5], "a": None}
