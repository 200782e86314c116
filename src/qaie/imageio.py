"""Reading and writing photos: any file a user may hand us becomes 8-bit RGB, or one clear error.

numpy and Pillow only (never torch): the `.tflite` enhance path uses this module. Every
conversion that changes what the user gave us (grayscale, alpha, 16 bits, EXIF rotation) is
reported in `RGBImage.note` so the CLI can say so; inputs we cannot read sensibly are refused
with a `QaieError` that names the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from qaie.atomic import atomic_path
from qaie.errors import QaieError

# The network downsamples three times (S/2, S/4, S/8): below 8 px a side the bottleneck has no
# pixel left, so smaller images are refused rather than enhanced into garbage.
MIN_IMAGE_SIDE = 8
# Decoding more than this many pixels is refused: a real photo is at most a few tens of
# megapixels, while a tiny crafted file can claim billions ("decompression bomb").
MAX_PIXELS = 100_000_000

Size = tuple[int, int]  # an image or tile size, (H, W)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
_WRITE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_EXIF_ORIENTATION = 0x0112
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height


@dataclass(frozen=True)
class RGBImage:
    """A decoded photo.

    Args:
        pixels: uint8 array (H, W, 3), RGB, rows top to bottom as the photo is meant to be seen.
        note: what was converted to get there (e.g. "converted from grayscale"), None if nothing.
    """

    pixels: np.ndarray
    note: str | None = None


def read_rgb(
    path: str | os.PathLike, min_size: int = MIN_IMAGE_SIDE, max_pixels: int = MAX_PIXELS
) -> RGBImage:
    """Decode any common image file into 8-bit RGB, applying EXIF orientation.

    Conversions: 1-bit/grayscale -> gray RGB; palette -> RGB; alpha (LA, PA, RGBA) ->
    composited on white, so transparent areas become white as on a page (the RGB under zero
    alpha is often undefined); CMYK -> RGB without colour management; 16-bit grayscale ->
    scaled to 8 bits (v/257, rounded); 16-bit-per-channel RGB -> 8 bits as Pillow reads it
    (the high byte). Float images and exotic modes are refused.
    """
    path = Path(path)
    with _opened(path, max_pixels) as im:
        return _decoded(path, im, min_size)


def decode_rgb(
    data: bytes, name: str, min_size: int = MIN_IMAGE_SIDE, max_pixels: int = MAX_PIXELS
) -> RGBImage:
    """An image file's bytes (an upload) decoded as `read_rgb` decodes the file, with the same
    one-line errors, naming the file `name`."""
    if not data:
        raise QaieError(f"{name}: file is empty (0 bytes)")
    with _pil_opened(name, io.BytesIO(data), max_pixels) as im:
        return _decoded(name, im, min_size)


def from_pil(image: Image.Image, min_size: int = MIN_IMAGE_SIDE) -> RGBImage:
    """A Pillow image already opened by the caller, converted as `read_rgb` converts files."""
    return _decoded("image", image, min_size)


def _decoded(name: str | Path, im: Image.Image, min_size: int) -> RGBImage:
    try:
        notes = _format_notes(im)
        im.load()
        orientation = _orientation(im)
        if orientation in range(2, 9):
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied")
        pixels, note = _to_rgb8(name, im)
    except QaieError:
        raise
    except Exception as err:  # Pillow raises many types on corrupt data; all mean "cannot decode"
        raise QaieError(
            f"{name}: cannot decode image ({_why(err)}); the file is truncated or corrupt"
        ) from err
    if note:
        notes.append(note)
    h, w = pixels.shape[:2]
    if min(h, w) < min_size:
        raise QaieError(f"{name}: image is {w}x{h}, smaller than the minimum {min_size}x{min_size}")
    # Pillow's arrays can be read-only views: hand out a writable C-contiguous array (torch.from_numpy).
    return RGBImage(np.require(pixels, np.uint8, ["C", "W"]), "; ".join(notes) or None)


@dataclass(frozen=True)
class ImageHeader:
    """What a photo's header tells, without decoding its pixels.

    Args:
        width, height: as `read_rgb` will return them (EXIF rotation applied).
        note: what `read_rgb` will convert (e.g. "mode L: converted to 8-bit RGB"); None for
            plain 8-bit RGB.
    """

    width: int
    height: int
    note: str | None = None


def read_header(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Size and conversions from the header only: cheap enough to check thousands of pairs
    before training starts (a corrupt body is only found by `read_rgb`)."""
    path = Path(path)
    with _opened(path, max_pixels) as im:
        (w, h), orientation, notes = im.size, _orientation(im), _format_notes(im)
        if im.mode != "RGB":
            notes.append(f"mode {im.mode}: converted to 8-bit RGB")
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    if orientation in _ROTATING_ORIENTATIONS:
        w, h = h, w
    return ImageHeader(w, h, "; ".join(notes) or None)


def image_size(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as `read_rgb` will return it, from the header only (no pixel decoding)."""
    header = read_header(path, max_pixels)
    return header.width, header.height


def write_image(path: str | os.PathLike, pixels: np.ndarray, quality: int = 95) -> None:
    """Write uint8 (H, W, 3) RGB atomically; the format comes from the extension.

    `quality` applies to JPEG and WebP (1..100).
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_WRITE_FORMATS))
        raise QaieError(f"{path}: unknown image extension {path.suffix!r}; use one of {known}")
    if not 1 <= quality <= 100:
        raise QaieError(f"JPEG/WebP quality must be in 1..100, got {quality}")
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, pixels.shape
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:  # an OSError becomes a QaieError naming `path`
        Image.fromarray(pixels, "RGB").save(tmp, format=fmt, **options)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension, any case) directly in `folder`, sorted by name.

    Hidden files are skipped: macOS `._*` resource forks and our own atomic temp files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise QaieError(f"{folder}: not a folder")
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open (header only) with the file checks and one-line errors read_rgb promises."""
    if not path.exists():
        raise QaieError(f"{path}: no such file")
    if path.is_dir():
        raise QaieError(f"{path}: is a folder, expected an image file")
    try:
        if path.stat().st_size == 0:
            raise QaieError(f"{path}: file is empty (0 bytes)")
    except OSError as err:  # permissions
        raise QaieError(f"{path}: cannot open image ({_why(err)})") from err
    with _pil_opened(path, path, max_pixels) as im:
        yield im


@contextlib.contextmanager
def _pil_opened(name: str | Path, source: Path | BinaryIO, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open of a file or a byte stream, its errors as one line naming `name`."""
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's global one (its warning, its error).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Image.DecompressionBombError as err:
        raise QaieError(f"{name}: image too large ({_why(err)})") from err
    except Image.UnidentifiedImageError as err:
        raise QaieError(f"{name}: not an image file Pillow can read") from err
    except Exception as err:  # OSError (permissions), or Pillow choking on a corrupt header
        raise QaieError(f"{name}: cannot open image ({_why(err)})") from err
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise QaieError(
                f"{name}: image is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f} MP "
                "limit; downscale it first"
            )
        yield im


def _format_notes(im: Image.Image) -> list[str]:
    """Conversions the file format forces, known from the header: extra frames, 16-bit RGB."""
    notes = []
    if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: photo + previews
        notes.append("multi-frame file: first frame used")
    if im.mode in ("RGB", "RGBA") and any(";16" in _rawmode(tile) for tile in im.tile):
        notes.append("16-bit per channel: reduced to 8 bits")
    return notes


def _to_rgb8(path: str | Path, im: Image.Image) -> tuple[np.ndarray, str | None]:
    """Pixels of a loaded image as uint8 (H, W, 3), and a note on the conversion done."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), None
    if mode in ("1", "L"):
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[:, :, None], 3, axis=2), "converted from " + (
            "1-bit" if mode == "1" else "grayscale"
        )
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise QaieError(
                f"{path}: 32-bit integer image with values outside 0..65535; convert it to 8 bits"
            )
        gray = np.round(values / 257.0).astype(np.uint8)  # 65535 -> 255 exactly
        return np.repeat(gray[:, :, None], 3, axis=2), "16-bit grayscale: scaled to 8 bits"
    if mode in ("P", "PA") and ("transparency" in im.info or mode == "PA"):
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        alpha = rgba[:, :, 3:] / 255.0
        if (alpha == 1.0).all():
            return rgba[:, :, :3].astype(np.uint8), f"{mode}: opaque alpha channel dropped"
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)  # composite on white
        return np.round(rgb).astype(np.uint8), f"{mode}: transparency composited on white"
    if mode == "P":
        return np.asarray(im.convert("RGB")), "converted from palette"
    if mode in ("CMYK", "YCbCr", "HSV"):
        return np.asarray(im.convert("RGB")), f"converted from {mode} (no colour management)"
    raise QaieError(f"{path}: image mode {mode} is not supported; convert it to 8-bit RGB")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8. Never decodes pixels: Pillow's PNG getexif() would load the image
    (and swallow its errors) to look for an eXIf chunk after the pixel data, so a PNG that has
    none in its header counts as upright until `read_rgb` has loaded it."""
    if im.format == "PNG" and "exif" not in im.info and im.tile:
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a corrupt EXIF block: the pixels may still be fine, so show them unrotated
        return 1


def _rawmode(tile: object) -> str:
    args = getattr(tile, "args", None)
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def _why(err: BaseException) -> str:
    """An exception as one short line (Pillow messages can span lines or be empty)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (an array, or a CPU tensor) -> uint8, rounded half to even: the one
    rounding every model output and every compared image goes through."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
