"""Tests for fracdet.io.images: pixel convention, robustness and error messages."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fracdet.errors import ImageReadError
from fracdet.io import IMAGE_EXTENSIONS, XRay, is_image_file, read_image, register_reader
from fracdet.io import images as images_mod
from fracdet.io.images import iter_image_files


def _ramp(h: int = 32, w: int = 48) -> np.ndarray:
    """Deterministic 8-bit gradient with a bright 'bone' block."""
    a = (np.add.outer(np.arange(h), np.arange(w)) * 3 % 256).astype(np.uint8)
    a[4:12, 4:12] = 250
    return a


def test_png_8bit_values(tmp_path: Path) -> None:
    a = _ramp()
    p = tmp_path / "g.png"
    Image.fromarray(a, "L").save(p)
    x = read_image(p)
    assert isinstance(x, XRay)
    assert x.pixels.dtype == np.float32 and x.pixels.shape == a.shape
    np.testing.assert_allclose(x.pixels, a / 255.0, atol=1e-6)
    assert x.meta["bit_depth"] == 8 and x.meta["original_size"] == (48, 32)
    assert x.meta["truncated"] is False and x.path == str(p)


def test_png_16bit_scaled_by_bit_depth(tmp_path: Path) -> None:
    a = (np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) * 50).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    x = read_image(p)
    assert x.meta["bit_depth"] == 16
    np.testing.assert_allclose(x.pixels, a / 65535.0, atol=1e-6)
    assert 0.0 <= x.pixels.min() and x.pixels.max() <= 1.0


def test_tiff_16bit_big_endian_and_float(tmp_path: Path) -> None:
    a = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    p = tmp_path / "g16.tif"
    Image.fromarray(a).save(p)
    np.testing.assert_allclose(read_image(p).pixels, a / 65535.0, atol=1e-6)
    f = (np.linspace(0, 1, 20 * 30, dtype=np.float32)).reshape(20, 30)
    pf = tmp_path / "f.tif"
    Image.fromarray(f, "F").save(pf)
    np.testing.assert_allclose(read_image(pf).pixels, f, atol=1e-6)


def test_colour_modes_share_the_luminance_convention(tmp_path: Path) -> None:
    a = _ramp()
    gray = Image.fromarray(a, "L")
    expected = a / 255.0
    variants = {
        "rgb.png": gray.convert("RGB"),
        "rgba.png": gray.convert("RGBA"),
        "la.png": gray.convert("LA"),
        "pal.png": gray.convert("P"),
        "l.bmp": gray,
        "rgb.tif": gray.convert("RGB"),
        "cmyk.tif": gray.convert("RGB").convert("CMYK"),
    }
    for name, im in variants.items():
        p = tmp_path / name
        im.save(p)
        x = read_image(p)
        assert x.pixels.shape == a.shape, name
        np.testing.assert_allclose(x.pixels, expected, atol=2.5 / 255, err_msg=name)


def test_rgb_uses_luma_weights_and_alpha_over_black(tmp_path: Path) -> None:
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    p = tmp_path / "red.png"
    Image.fromarray(rgb, "RGB").save(p)
    assert read_image(p).pixels.mean() == pytest.approx(0.299, abs=1e-3)
    rgba = np.full((20, 20, 4), 255, np.uint8)
    rgba[:10, :, 3] = 0  # transparent top half → black
    q = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(q)
    px = read_image(q).pixels
    assert px[:10].max() == 0.0 and px[10:].min() == pytest.approx(1.0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    a = np.zeros((40, 64), np.uint8)  # stored W=64, H=40
    a[:10, :10] = 255  # bright block top-left as stored
    im = Image.fromarray(a, "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    x = read_image(p)
    assert x.pixels.shape == (64, 40)
    assert x.meta["original_size"] == (40, 64) and x.meta["orientation"] == 6
    assert x.pixels[:8, -8:].mean() > 0.8  # top-left moved to top-right
    assert x.pixels[-8:, :8].mean() < 0.2


def _jpeg_bytes(h: int, w: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(0)
    a = (rng.random((h, w)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_truncated_jpeg_warns_and_decodes(tmp_path: Path) -> None:
    data = _jpeg_bytes(64, 64)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.warns(UserWarning, match="truncated image"):
        x = read_image(p)
    assert x.meta["truncated"] is True and x.pixels.shape == (64, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_draft_decoding_honours_min_size(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    p.write_bytes(_jpeg_bytes(1600, 2000, quality=70))
    x = read_image(p, min_size=200)
    assert min(x.pixels.shape) >= 200
    assert max(x.pixels.shape) < 2000  # decoded at reduced scale
    assert x.meta["original_size"] == (2000, 1600)
    assert read_image(p).pixels.shape == (1600, 2000)
    # never below min_size even when it is not a power-of-two fraction
    assert min(read_image(p, min_size=300).pixels.shape) >= 300


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.png", b"", "empty file"),
        ("notes.txt", b"hello, not an image\n", "unsupported file type '.txt'"),
        ("fake.jpg", b"just some text\nover two lines\n", "corrupt or not an image"),
        ("noise.png", bytes(range(256)) * 4, "corrupt or not an image"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
    ],
)
def test_bad_files_raise_one_line_errors(
    tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and needle in msg
    assert info.value.path == str(p)


def test_missing_and_too_small(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    p = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 40), np.uint8)).save(p)
    with pytest.raises(ImageReadError, match="too small"):
        read_image(p)


def test_registered_reader_is_tried_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_mod, "_READERS", [])
    calls: list[tuple[Path, int | None]] = []

    def read(path: Path, min_size: int | None) -> XRay:
        calls.append((path, min_size))
        return XRay(np.full((20, 30), 0.5, np.float32), str(path), {"original_size": (30, 20)})

    register_reader("fake", lambda path, head: head.startswith(b"FAKE"), read)
    p = tmp_path / "scan.dcm"
    p.write_bytes(b"FAKE" + b"\x00" * 200)
    x = read_image(p, min_size=64)
    assert calls == [(p, 64)] and x.pixels.shape == (20, 30)
    # a reader that crashes becomes an ImageReadError naming it
    def crash(path: Path, min_size: int | None) -> XRay:
        raise RuntimeError("boom")

    register_reader("fake", lambda path, head: True, crash)
    with pytest.raises(ImageReadError, match="fake reader failed"):
        read_image(p)


def test_dicom_without_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_mod, "_READERS", [])
    p = tmp_path / "a.dcm"
    p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    with pytest.raises(ImageReadError, match="no DICOM reader"):
        read_image(p)


def test_extensions_and_iteration(tmp_path: Path) -> None:
    assert ".dcm" in IMAGE_EXTENSIONS and is_image_file("A.JPG") and not is_image_file("a.txt")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / ".hidden").mkdir()
    for rel in ["d/b.png", "d/a.jpg", "d/sub/c.tif", "d/notes.txt", "d/.x.png", "d/.hidden/y.png"]:
        (tmp_path / rel).write_bytes(b"x")
    loose = tmp_path / "readme.md"
    loose.write_text("x")
    found = list(iter_image_files([tmp_path / "d", loose]))
    assert found == [tmp_path / "d/a.jpg", tmp_path / "d/b.png", tmp_path / "d/sub/c.tif", loose]


def test_no_warnings_on_clean_file(tmp_path: Path) -> None:
    p = tmp_path / "ok.jpg"
    p.write_bytes(_jpeg_bytes(32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(p, min_size=16).meta["truncated"] is False


# ----------------------------------------------------------------------------- limits, hostile files


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width``×``height`` (8-bit grey) with a few bytes of data:
    a decompression bomb as far as the header goes, a few hundred bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("w", "h"), [(30000, 30000), (12000, 9000), (200_000, 600)])
def test_bomb_refused_from_the_header(tmp_path: Path, w: int, h: int) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_claiming(w, h))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        with pytest.raises(ImageReadError, match="too large") as err:
            read_image(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)
    assert "FRACDET_MAX_PIXELS" in str(err.value)


def test_pixel_limit_argument_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "g.png"
    Image.fromarray(np.zeros((100, 120), np.uint8), "L").save(p)
    assert images_mod.max_pixels() == images_mod.DEFAULT_MAX_PIXELS == 100_000_000
    assert read_image(p).pixels.shape == (100, 120)
    with pytest.raises(ImageReadError, match=r"image too large \(120x100 = 0.0 Mpx; the limit is 0.01 Mpx"):
        read_image(p, max_pixels=10_000)
    assert read_image(p, max_pixels=12_000).pixels.shape == (100, 120)  # the limit is inclusive
    monkeypatch.setenv("FRACDET_MAX_PIXELS", "1e4")
    assert images_mod.max_pixels() == 10_000
    with pytest.raises(ImageReadError, match="too large"):
        read_image(p)
    assert read_image(p, max_pixels=20_000).pixels.shape == (100, 120)  # the argument wins
    monkeypatch.setenv("FRACDET_MAX_PIXELS", "lots")
    from fracdet.errors import FracdetError

    with pytest.raises(FracdetError, match="FRACDET_MAX_PIXELS must be a positive number"):
        read_image(p)
    with pytest.raises(ValueError):
        read_image(p, max_pixels=0)


def test_raising_the_limit_raises_pillows_own(tmp_path: Path) -> None:
    """Pillow's bomb check follows the limit up (never down), so a larger limit is honoured."""
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None and before >= images_mod.DEFAULT_MAX_PIXELS
    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((16, 20000), np.uint8), "L").save(p)
    assert read_image(p).pixels.shape == (16, 20000)


def test_fifo_symlink_loop_and_folder_are_one_line_errors(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for p, needle in [(fifo, "not a regular file (a named pipe)"), (loop, "symbolic link loop"),
                      (folder, "is a folder")]:
        with pytest.raises(ImageReadError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            read_image(p)
    assert images_mod.has_dicom_preamble(fifo) is False  # folder walks never open a FIFO
    assert [q.name for q in iter_image_files([tmp_path])] == ["loop.png", "pipe.jpg"]
