"""imageio on real files written to tmp_path: every bad input is one QaieError naming the file."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qaie.errors import QaieError
from qaie.imageio import IMAGE_EXTENSIONS, MIN_IMAGE_SIDE, image_size, list_images, read_rgb, write_image


def _photo(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly), uint8 (H, W, 3)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    phase = rng.random(3) * 6
    return (127 + 120 * np.sin(xx[..., None] / 5 + yy[..., None] / 7 + phase)).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _png16_rgb(values: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one), values uint16 (H, W, 3)."""
    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    return _png_chunks(struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0), zlib.compress(raw))


def _png_chunks(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _error_for(path: Path, **kwargs) -> str:
    with pytest.raises(QaieError) as info:
        read_rgb(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


# --- bad inputs ---------------------------------------------------------------------------------


def test_missing_folder_and_empty_files(tmp_path: Path) -> None:
    assert "no such file" in _error_for(tmp_path / "absent.jpg")
    assert "folder" in _error_for(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _error_for(tmp_path / "empty.png")


def test_non_image_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    assert "not an image" in _error_for(tmp_path / "notes.jpg")
    png = bytearray(_encoded(_photo(), "PNG"))
    png[60:80] = bytes(20)  # clobber compressed data: CRC and zlib both break
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    _error_for(tmp_path / "corrupt.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused_not_half_read(tmp_path: Path, fmt: str) -> None:
    data = _encoded(_photo(64, 64), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error_for(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # Claims 20000x20000 (400 MP) with almost no data: Pillow's own bomb check fires in open().
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_chunks(struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0), zlib.compress(b"")))
    assert "too large" in _error_for(bomb)
    # Below Pillow's threshold, our own limit applies.
    small = tmp_path / "small.png"
    small.write_bytes(_encoded(_photo(40, 40), "PNG"))
    assert "over the" in _error_for(small, max_pixels=1000)


def test_images_below_the_minimum_size_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    path.write_bytes(_encoded(_photo(MIN_IMAGE_SIDE - 1, 40), "PNG"))
    assert f"minimum {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}" in _error_for(path)
    assert read_rgb(path, min_size=1).pixels.shape == (MIN_IMAGE_SIDE - 1, 40, 3)


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((16, 16), np.float32)).save(path)
    assert "mode F" in _error_for(path)


# --- conversions --------------------------------------------------------------------------------


def _save_mode(tmp_path: Path, mode: str, fmt: str = "PNG") -> Path:
    rgb = Image.fromarray(_photo(16, 20))
    image = rgb.convert(mode) if mode not in ("LA", "PA") else rgb.convert(mode[0]).convert(mode)
    path = tmp_path / f"{mode}.{fmt.lower()}"
    image.save(path, fmt)
    return path


@pytest.mark.parametrize(
    ("mode", "fmt", "note"),
    [
        ("1", "PNG", "1-bit"),
        ("L", "PNG", "grayscale"),
        ("LA", "PNG", "opaque alpha"),
        ("P", "PNG", "palette"),
        ("PA", "TIFF", "opaque alpha"),
        ("RGBA", "PNG", "opaque alpha"),
        ("CMYK", "TIFF", "CMYK"),
        ("I;16", "PNG", "16-bit"),
        ("I;16", "TIFF", "16-bit"),
        ("I", "TIFF", "16-bit"),
    ],
)
def test_every_mode_becomes_uint8_rgb_with_a_note(tmp_path: Path, mode: str, fmt: str, note: str) -> None:
    image = read_rgb(_save_mode(tmp_path, mode, fmt))
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (16, 20, 3)
    assert image.note is not None and note in image.note


def test_plain_rgb_has_no_note(tmp_path: Path) -> None:
    path = _save_mode(tmp_path, "RGB")
    image = read_rgb(path)
    assert image.note is None and image.pixels.flags.writeable and image.pixels.flags.c_contiguous
    np.testing.assert_array_equal(image.pixels, _photo(16, 20))


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200  # red under the alpha
    rgba[:, :5, 3] = 255  # left half opaque, right half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_rgb(path)
    assert "composited on white" in image.note
    np.testing.assert_array_equal(image.pixels[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(image.pixels[0, 9], [255, 255, 255])


def test_palette_transparency_is_composited(tmp_path: Path) -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    path = tmp_path / "pal.png"
    image.save(path, transparency=1)
    result = read_rgb(path)
    assert "composited on white" in result.note
    np.testing.assert_array_equal(result.pixels[5, 5], [255, 255, 255])


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.uint16) * 257  # 8-bit level k stored as k*257
    values = np.tile(levels, (MIN_IMAGE_SIDE, 1))
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    image = read_rgb(path)
    np.testing.assert_array_equal(image.pixels[0, :, 1], np.arange(256))


def test_48bit_rgb_png_is_reduced_to_8_bits(tmp_path: Path) -> None:
    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    values = np.stack([levels, 65535 - levels, np.full_like(levels, 32896)], axis=-1)
    path = tmp_path / "rgb48.png"
    path.write_bytes(_png16_rgb(values))
    image = read_rgb(path)
    assert "16-bit" in image.note
    np.testing.assert_allclose(image.pixels.astype(int), values / 257.0, atol=1.0)


def test_exif_orientation_6_rotates_the_photo(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:10] = [255, 0, 0]  # top half red as stored
    stored[10:] = [0, 0, 255]  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored top becomes displayed right
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = read_rgb(path)
    assert image.pixels.shape == (40, 20, 3)
    assert image_size(path) == (20, 40)
    assert "EXIF orientation 6" in image.note
    assert image.pixels[20, -1, 0] > 200 and image.pixels[20, 0, 2] > 200


# --- writing and listing -------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp", ".jpg"])
def test_write_then_read_round_trip(tmp_path: Path, ext: str) -> None:
    pixels = _photo(24, 32)
    path = tmp_path / f"out{ext}"
    write_image(path, pixels, quality=95)
    back = read_rgb(path).pixels
    error = np.abs(back.astype(int) - pixels)
    if ext in (".png", ".bmp", ".tif"):
        assert error.max() == 0
    else:  # lossy, chroma subsampled
        assert error.mean() < 4
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_jpeg_quality_changes_the_file(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "lo.jpg", pixels, quality=20)
    write_image(tmp_path / "hi.jpg", pixels, quality=95)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


def test_write_errors_name_the_file_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(QaieError, match=r"out\.gif.*unknown image extension"):
        write_image(tmp_path / "out.gif", _photo())
    with pytest.raises(QaieError, match="quality"):
        write_image(tmp_path / "out.jpg", _photo(), quality=0)
    target = tmp_path / "taken.png"
    target.mkdir()  # the final rename fails after the temp file was fully written
    with pytest.raises(QaieError, match=r"taken\.png: cannot write"):
        write_image(target, _photo())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keep.png"
    write_image(path, _photo(seed=1))
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(QaieError, match="No space left"):
        write_image(path, _photo(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_list_images_sorted_by_name_skipping_others(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.txt", ".hidden.jpg", "._a.jpg", "d.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.jpeg", "sub.jpg"]
    with pytest.raises(QaieError, match="not a folder"):
        list_images(tmp_path / "a.jpg")
    assert ".jpg" in IMAGE_EXTENSIONS


# --- fuzz ---------------------------------------------------------------------------------------

_SEEDS = [_encoded(_photo(16, 16), "PNG"), _encoded(_photo(16, 16), "JPEG")]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(min_size=0, max_size=300), _mutated()))
def test_fuzz_read_rgb_gives_pixels_or_a_clean_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.img"
        path.write_bytes(data)
        try:
            image = read_rgb(path, min_size=1)
        except QaieError as err:
            assert str(path) in str(err) and "\n" not in str(err)
        else:
            assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3
