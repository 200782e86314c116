"""`qaie enhance` end to end: real image files in tmp_path, the real LiteRT interpreter."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from qaie.cli import main
from qaie.runtime.enhance import plan_jobs


def _photo(path: Path, size: tuple[int, int] = (120, 160), **save) -> Path:
    """Write a crop (H, W) of a real photo to `path` (format from the extension)."""
    pixels = skimage.data.chelsea()[: size[0], : size[1]]
    Image.fromarray(pixels).save(path, **save)
    return path


def _enhance(*args: str | Path) -> int:
    return main(["enhance", *map(str, args)])


def _error_line(capsys) -> str:
    """The one line on stderr of a failed run."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _dims(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return im.size  # (W, H)


def test_one_file_to_file(tmp_path, tiny_tflite, capsys):
    src = _photo(tmp_path / "cat.jpg")
    assert _enhance(src, "-o", tmp_path / "out.png", "--model", tiny_tflite) == 0
    assert _dims(tmp_path / "out.png") == (160, 120)
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'out.png'}"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o666 & ~umask  # not owner-only
    enhanced = np.asarray(Image.open(tmp_path / "out.png"))
    original = np.asarray(Image.open(src))
    assert 1 < np.abs(enhanced.astype(np.int16) - original).mean() < 30  # changed, mildly


def test_int8_model(tmp_path, tiny_int8_tflite):
    src = _photo(tmp_path / "cat.jpg", (300, 200))  # tiled with 192x256
    assert _enhance(src, "-o", tmp_path / "out.png", "--model", tiny_int8_tflite) == 0
    assert _dims(tmp_path / "out.png") == (200, 300)


def test_folder_and_files_to_folder(tmp_path, tiny_tflite, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "b.png", (64, 80))
    _photo(photos / "a.jpg", (300, 200))  # larger than every exported size: tiled
    (photos / "notes.txt").write_text("not an image")  # folders are filtered by extension
    extra = _photo(tmp_path / "c.jpg")
    out = tmp_path / "out"  # created
    assert _enhance(photos, extra, "-o", out, "--model", tiny_tflite, "--threads", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png", "c.jpg"]
    assert _dims(out / "a.jpg") == (200, 300) and _dims(out / "b.png") == (80, 64)
    assert "wrote 3 of 3 images" in capsys.readouterr().out


def test_format_option(tmp_path, tiny_tflite):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.jpg")
    _photo(photos / "b.png")
    assert _enhance(photos, "-o", tmp_path / "out", "--model", tiny_tflite, "--format", "webp") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.webp", "b.webp"]


def test_jpeg_quality(tmp_path, tiny_tflite):
    src = _photo(tmp_path / "cat.png")
    sizes = {}
    for quality in (30, 95):
        dst = tmp_path / f"q{quality}.jpg"
        assert _enhance(src, "-o", dst, "--model", tiny_tflite, "--quality", quality) == 0
        sizes[quality] = dst.stat().st_size
    assert sizes[30] < sizes[95]


def test_exif_rotated_input_comes_out_rotated(tmp_path, tiny_tflite, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 160x120 (W x H), shown rotated 90 degrees: 120x160
    src = _photo(tmp_path / "rotated.jpg", exif=exif)
    assert _enhance(src, "-o", tmp_path / "out.jpg", "--model", tiny_tflite) == 0
    assert _dims(tmp_path / "out.jpg") == (120, 160)
    assert f"warning: {src}: EXIF orientation 6 applied" in capsys.readouterr().err


def test_grayscale_input_noted(tmp_path, tiny_tflite, capsys):
    src = tmp_path / "gray.png"
    Image.fromarray(skimage.data.camera()[:100, :100]).save(src)
    assert _enhance(src, "-o", tmp_path / "out.png", "--model", tiny_tflite) == 0
    assert _dims(tmp_path / "out.png") == (100, 100)
    assert _error_line(capsys) == f"qaie enhance: warning: {src}: converted from grayscale"


def test_overwrite_replaces_an_existing_output(tmp_path, tiny_tflite):
    """(Refusal without --overwrite: test_cli_errors.)"""
    src = _photo(tmp_path / "cat.jpg")
    dst = tmp_path / "out.jpg"
    dst.write_bytes(b"keep me")
    assert _enhance(src, "-o", dst, "--model", tiny_tflite, "--overwrite") == 0
    assert _dims(dst) == (160, 120)


def test_batch_goes_on_past_bad_files(tmp_path, tiny_tflite, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.jpg")
    (photos / "b.jpg").write_bytes(b"")
    _photo(photos / "c.png")
    out = tmp_path / "out"
    assert _enhance(photos, "-o", out, "--model", tiny_tflite) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"qaie enhance: error: {photos / 'b.jpg'}: file is empty (0 bytes)"
    assert "wrote 2 of 3 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "c.png"]


def test_one_file_into_a_folder(tmp_path, tiny_tflite, capsys):
    src = _photo(tmp_path / "cat.jpg")
    (tmp_path / "out").mkdir()
    assert [job.dst for job in plan_jobs([src], tmp_path / "out")] == [tmp_path / "out" / "cat.jpg"]
    assert _enhance(src, "-o", tmp_path / "new", "--model", tiny_tflite) == 0  # no extension: a folder
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'new' / 'cat.jpg'}"


def test_tflite_path_never_imports_torch(tmp_path, tiny_tflite):
    src = _photo(tmp_path / "cat.jpg", (300, 200))
    code = (
        "import sys, qaie.cli\n"
        f"assert qaie.cli.main(['enhance', {str(src)!r}, '-o', {str(tmp_path / 'o.jpg')!r}, "
        f"'--model', {str(tiny_tflite)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert _dims(tmp_path / "o.jpg") == (200, 300)


def test_checkpoint_model_matches_its_tflite(tmp_path, tiny_tflite, tiny_checkpoint):
    """A photo of an exported size: the file runs it in one call, the checkpoint with --tile
    none in one pass (whole image to whole image)."""
    src = _photo(tmp_path / "cat.png", (192, 256))
    assert _enhance(src, "-o", tmp_path / "tflite.png", "--model", tiny_tflite) == 0
    assert _enhance(src, "-o", tmp_path / "ckpt.png", "--model", tiny_checkpoint, "--tile", "none") == 0
    from_tflite = np.asarray(Image.open(tmp_path / "tflite.png"))
    from_checkpoint = np.asarray(Image.open(tmp_path / "ckpt.png"))
    assert from_checkpoint.shape == (192, 256, 3)
    assert np.abs(from_tflite.astype(np.int16) - from_checkpoint).max() <= 1  # float vs float: rounding


def test_12_megapixel_photo_stays_under_memory_budget(tmp_path, tiny_tflite):
    """Issue 6: a 4000x3000 photo must not need whole-image activations (peak RSS < 1.5 GB)."""
    src = tmp_path / "big.jpg"
    Image.fromarray(skimage.data.coffee()).resize((4000, 3000)).save(src, quality=90)
    code = (
        "import resource, sys, qaie.cli\n"
        f"assert qaie.cli.main(['enhance', {str(src)!r}, '-o', {str(tmp_path / 'o.jpg')!r}, "
        f"'--model', {str(tiny_tflite)!r}]) == 0\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    peak_mb = int(proc.stdout.split()[-1])
    assert peak_mb < 1500, peak_mb
    assert _dims(tmp_path / "o.jpg") == (4000, 3000)


def test_real_iphone_photo_full_size(tmp_path, tiny_tflite, shared_data):
    src = shared_data / "dped-iphone-fullsize" / "0.jpg"
    if not src.is_file():
        pytest.skip(f"{src} not present")
    dst = tmp_path / "enhanced.jpg"
    assert _enhance(src, "-o", dst, "--model", tiny_tflite) == 0
    assert _dims(dst) == (2048, 1536)
