"""The error contract of every command (docs/reliability.md), through `qaie.cli.main` in-process.

Each bad input must give exactly one line on stderr that names the file or value and what is
wrong, exit status 2, no traceback, and leave no output or temporary file behind. Inputs that
are converted (grayscale, palette, alpha, 16 bits, EXIF rotation) give one `warning:` line and
the command succeeds. All files are real, written here or by the session fixtures. This is the
one home of CLI error cases; other test files test what commands do when they succeed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tifffile
from PIL import Image

from qaie.cli import main
from qaie.runtime.models import default_model

# --- the inputs (written once) -------------------------------------------------------------------


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def _pairs(root: Path, names: list[str], size: tuple[int, int] = (40, 48)) -> Path:
    """root/{input,target}/NAME.png, crops (H, W) of a real photo."""
    photo = skimage.data.coffee()
    for folder in ("input", "target"):
        (root / folder).mkdir(parents=True)
        for k, name in enumerate(names):
            crop = photo[k * 20 : k * 20 + size[0], : size[1]]
            Image.fromarray(crop).save(root / folder / f"{name}.png")
    return root


def _other_width_checkpoint(path: Path) -> Path:
    from qaie.config import ModelConfig
    from qaie.nn.model import EnhanceNet
    from qaie.quant.checkpoint import save_model

    save_model(path, EnhanceNet(ModelConfig(width=8)), ModelConfig(width=8))
    return path


def _their_checkpoints(folder: Path) -> dict[str, Path]:
    """Torch files `qaie import` refuses: a Lightning checkpoint of the authors' network with its
    first gated conv only, and a file that needs unpickling a Python object."""
    import argparse

    import torch

    partial = {"model.down1.a.weight": torch.zeros(4, 3, 3, 3), "model.down1.a.bias": torch.zeros(4)}
    paths = {"partial_ckpt": folder / "partial.ckpt", "pickled_ckpt": folder / "pickled.pt"}
    torch.save({"epoch": 0, "state_dict": partial}, paths["partial_ckpt"])
    torch.save({"state_dict": partial, "config": argparse.Namespace(channels=4)}, paths["pickled_ckpt"])
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_tflite: Path, tiny_checkpoint: Path) -> dict:
    """Good and bad files by name; string paths ready for argv and messages."""
    d = tmp_path_factory.mktemp("inputs")
    rgb = Image.fromarray(skimage.data.chelsea()[:120, :160])  # (H, W) = (120, 160)
    f = {
        "photo": _save(d / "photo.jpg", rgb),
        "photo_png": _save(d / "photo.png", rgb),
        "gray": _save(d / "gray.png", rgb.convert("L")),
        "palette": _save(d / "palette.png", rgb.convert("P")),
        "tiny": _save(d / "tiny.png", Image.new("RGB", (5, 4))),
        "empty": d / "empty.jpg",
        "text": d / "text.jpg",
        "truncated": d / "truncated.jpg",
        "gray16_png": _save(d / "gray16.png", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)),
        "gray16_tif": _save(d / "gray16.tif", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)),
        "rgb16_tif": d / "rgb16.tif",
        "float_tif": d / "float.tif",
        "text_tflite": d / "text.tflite",
        "truncated_tflite": d / "truncated.tflite",
        "truncated_ckpt": d / "truncated.ckpt",
        "text_ckpt": d / "text.ckpt",
        "empty_ckpt": d / "empty.ckpt",
        "tflite": tiny_tflite,
        "ckpt": tiny_checkpoint,
        "dir": d,
    }
    rgba = np.asarray(rgb.convert("RGBA")).copy()
    rgba[:40, :40, 3] = 0  # a transparent corner
    f["rgba"] = _save(d / "rgba.png", Image.fromarray(rgba))
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    f["exif6"] = _save(d / "exif6.jpg", rgb, exif=exif)
    f["empty"].write_bytes(b"")
    f["text"].write_text("hello, not a picture\n")
    jpeg = f["photo"].read_bytes()
    f["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    tifffile.imwrite(f["rgb16_tif"], np.asarray(rgb, np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(f["float_tif"], np.asarray(rgb, np.float32) / 255, photometric="rgb")
    f["text_tflite"].write_text("not a model\n")
    model = tiny_tflite.read_bytes()
    f["truncated_tflite"].write_bytes(model[: len(model) // 2])
    ckpt = tiny_checkpoint.read_bytes()
    f["truncated_ckpt"].write_bytes(ckpt[: len(ckpt) // 2])
    f["text_ckpt"].write_text("not a checkpoint\n")
    f["empty_ckpt"].write_bytes(b"")
    f["w8_ckpt"] = _other_width_checkpoint(d / "w8.ckpt")
    f["shipped"] = default_model()
    f |= _their_checkpoints(d)
    # Paired folders (10 names: hash split 8 train / 1 val ("9") / 1 test ("8")).
    names = [str(k) for k in range(10)]
    f["pairs_missing"] = _pairs(d / "missing", names)
    (f["pairs_missing"] / "target" / "3.png").unlink()
    f["pairs_size"] = _pairs(d / "size", names)
    Image.open(f["pairs_size"] / "input" / "8.png").crop((0, 0, 40, 40)).save(
        f["pairs_size"] / "input" / "8.png"
    )
    f["pairs_corrupt"] = _pairs(d / "corrupt", names)
    png = (f["pairs_corrupt"] / "target" / "8.png").read_bytes()
    (f["pairs_corrupt"] / "target" / "8.png").write_bytes(png[: len(png) // 2])
    f["pairs_gray"] = _pairs(d / "gray", names)
    Image.open(f["pairs_gray"] / "input" / "8.png").convert("L").save(f["pairs_gray"] / "input" / "8.png")
    f["pairs_train_corrupt"] = _pairs(d / "train_corrupt", names)
    png = (f["pairs_train_corrupt"] / "target" / "0.png").read_bytes()
    (f["pairs_train_corrupt"] / "target" / "0.png").write_bytes(png[: len(png) // 2])
    return {name: str(path) for name, path in f.items()}


@pytest.fixture(scope="module")
def ptq_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_net) -> str:
    """A PTQ checkpoint of the tiny network (calibrated on one batch: seconds)."""
    import torch

    from qaie.quant import quantize
    from qaie.quant.checkpoint import save_model

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prepared = quantize.prepare_ptq(tiny_net, x)
    quantize.calibrate(prepared, [x])
    path = tmp_path_factory.mktemp("ptq") / "ptq.ckpt"
    save_model(path, prepared, tiny_net.config, "ptq")
    return str(path)


PROGRESS_BAR = re.compile(r".*\d+%\|.*\| \d+/\d+ \[.*")  # tqdm's redrawn line, e.g. "evaluate: 0%| | 0/1 ["


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines (progress bars left out: a terminal redraws them in place)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.fullmatch(line)]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- bad inputs: one line, exit 2, nothing written -----------------------------------------------

# (id, argv, the exact stderr line). {name} is a path from `files`; outputs are relative to the
# test's empty working folder. A line given as re.compile(...) must match fully.
NOT_CKPT = "not a checkpoint (not a torch.save zip archive); pass a .ckpt written by qaie"
TRUNC_CKPT = "checkpoint is truncated (its zip archive has no end); use a complete copy"
NOT_TFLITE = "not a TFLite model (The model is not a valid Flatbuffer buffer); pass an exported .tflite"
SIZE = "expected HxW with both sides at least 8 (e.g. 256x256)"
THREADS = "expected positive integers separated by commas (e.g. 1,2)"
EXISTS = "output exists; pass --overwrite to replace it"
ENHANCE = ["enhance", "{photo}", "-o", "out.jpg", "--model", "{tflite}"]
EVALUATE = ["evaluate", "{ckpt}", "--data", "builtin", "--limit", "1", "--crop", "32"]
BENCH = ["bench", "{tflite}", "--runs", "1", "--warmup", "0"]
EXPORT = ["export", "{ckpt}", "--format", "fp32", "--size", "32x32", "--out", "out.tflite"]
TRAIN = ["train", "--data", "builtin", "--out", "run", "--width", "4", "--epochs", "1", "--crop", "16"]
TRAIN += ["--val-crop", "16", "--batch-size", "2", "--val-limit", "1"]
CAMERA = ["camera-stats", "--real", "{dir}", "--clean", "{dir}"]
DECODE = r"cannot decode image \(.+\); the file is truncated or corrupt"

CASES = [
    # enhance: images
    ("enhance-empty", ["enhance", "{empty}", "-o", "out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: {empty}: file is empty (0 bytes)"),
    ("enhance-text", ["enhance", "{text}", "-o", "out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: {text}: not an image file Pillow can read"),
    ("enhance-truncated", ["enhance", "{truncated}", "-o", "out.jpg", "--model", "{tflite}"],
     re.compile(r"qaie enhance: error: {truncated}: " + DECODE)),
    ("enhance-tiny", ["enhance", "{tiny}", "-o", "out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: {tiny}: image is 5x4, smaller than the minimum 8x8"),
    ("enhance-float-tiff", ["enhance", "{float_tif}", "-o", "out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: {float_tif}: not an image file Pillow can read"),
    ("enhance-missing", ["enhance", "missing.jpg", "-o", "out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: missing.jpg: no such file or folder"),
    # serve: checked before it listens
    ("serve-missing-model", ["serve", "--model", "missing.tflite", "--port", "0"],
     "qaie serve: error: missing.tflite: model file not found"),
    ("serve-port", ["serve", "--port", "70000"], "qaie serve: error: --port 70000: expected 0..65535 (0: any free port)"),
    ("serve-upload-limit", ["serve", "--max-upload-mb", "0", "--port", "0"],
     "qaie serve: error: --max-upload-mb 0: expected a positive size in MB"),
    # enhance: models
    ("enhance-text-tflite", [*ENHANCE[:4], "--model", "{text_tflite}"],
     "qaie enhance: error: {text_tflite}: " + NOT_TFLITE),
    ("enhance-truncated-tflite", [*ENHANCE[:4], "--model", "{truncated_tflite}"],
     "qaie enhance: error: {truncated_tflite}: " + NOT_TFLITE),
    ("enhance-missing-tflite", [*ENHANCE[:4], "--model", "missing.tflite"],
     "qaie enhance: error: missing.tflite: model file not found"),
    ("enhance-truncated-ckpt", [*ENHANCE[:4], "--model", "{truncated_ckpt}"],
     "qaie enhance: error: {truncated_ckpt}: " + TRUNC_CKPT),
    ("enhance-text-ckpt", [*ENHANCE[:4], "--model", "{text_ckpt}"],
     "qaie enhance: error: {text_ckpt}: " + NOT_CKPT),
    ("enhance-image-as-model", [*ENHANCE[:4], "--model", "{photo}"],
     "qaie enhance: error: {photo}: unknown model type '.jpg'; pass an exported .tflite, .onnx or .pte, "
     "or a checkpoint (.ckpt, .pt, .pth)"),
    # enhance: outputs and values
    ("enhance-no-folder", ["enhance", "{photo}", "-o", "nodir/out.jpg", "--model", "{tflite}"],
     "qaie enhance: error: nodir/out.jpg: folder nodir does not exist"),
    ("enhance-bad-extension", ["enhance", "{photo}", "-o", "out.gif", "--model", "{tflite}"],
     "qaie enhance: error: out.gif: unknown image extension '.gif'; use one of .jpg, .jpeg, .png, .webp, "
     ".tif, .tiff, .bmp"),
    ("enhance-threads-0", [*ENHANCE, "--threads", "0"], f"qaie enhance: error: --threads '0': {THREADS}"),
    ("enhance-threads-neg", [*ENHANCE, "--threads", "-1"], f"qaie enhance: error: --threads '-1': {THREADS}"),
    ("enhance-threads-x", [*ENHANCE, "--threads", "x"], f"qaie enhance: error: --threads 'x': {THREADS}"),
    ("enhance-tile-0x5", [*ENHANCE, "--tile", "0x5"], f"qaie enhance: error: --tile '0x5': {SIZE}"),
    ("enhance-tile-abc", [*ENHANCE, "--tile", "abc"], f"qaie enhance: error: --tile 'abc': {SIZE}"),
    ("enhance-tile-4x4", [*ENHANCE, "--tile", "4x4"], f"qaie enhance: error: --tile '4x4': {SIZE}"),
    ("enhance-tile-not-exported", [*ENHANCE, "--tile", "64x64"],
     "qaie enhance: error: tile 64x64 is not an exported size of the model (96x96, 192x256)"),
    ("enhance-tile-too-small", [*ENHANCE[:4], "--model", "{ckpt}", "--tile", "16x16"],
     "qaie enhance: error: --tile 16x16: windows need sides that are multiples of 8 and at least 88"),
    ("enhance-tile-none-tflite", [*ENHANCE, "--tile", "none"],
     "qaie enhance: error: --tile none runs a checkpoint on the whole photo in one pass; a .tflite has "
     "fixed sizes (it computes the whole-photo output in windows by itself)"),
    ("enhance-quality", [*ENHANCE, "--quality", "101"], "qaie enhance: error: quality must be in 1..100, got 101"),
    ("enhance-format-disagrees", [*ENHANCE[:3], "out.png", *ENHANCE[4:], "--format", "jpg"],
     "qaie enhance: error: out.png: extension disagrees with --format jpg; drop one of them"),
    ("enhance-replaces-input", [*ENHANCE[:3], "{photo}", *ENHANCE[4:], "--overwrite"],
     "qaie enhance: error: {photo}: output would replace its input; choose another output"),
    ("enhance-two-to-one-name", ["enhance", "{photo}", "{photo_png}", "-o", "out", "--format", "png", "--model", "{tflite}"],
     "qaie enhance: error: out/photo.png: both {photo} and {photo_png} would be written here; rename one"),
    ("enhance-several-to-a-file", ["enhance", "{photo}", "{photo_png}", "-o", "new.jpg", "--model", "{tflite}"],
     "qaie enhance: error: new.jpg: names a file, but several inputs need an output folder"),
    ("enhance-several-no-folder", ["enhance", "{photo}", "{photo_png}", "-o", "nodir/out", "--model", "{tflite}"],
     "qaie enhance: error: nodir/out: folder nodir does not exist"),
    ("enhance-missing-ckpt", [*ENHANCE[:4], "--model", "missing.ckpt"],
     "qaie enhance: error: missing.ckpt: checkpoint not found"),
    # evaluate
    ("evaluate-missing-ckpt", ["evaluate", "missing.ckpt", "--data", "builtin"],
     "qaie evaluate: error: missing.ckpt: checkpoint not found"),
    ("evaluate-truncated-ckpt", ["evaluate", "{truncated_ckpt}", "--data", "builtin"],
     "qaie evaluate: error: {truncated_ckpt}: " + TRUNC_CKPT),
    ("evaluate-text-ckpt", ["evaluate", "{text_ckpt}", "--data", "builtin"],
     "qaie evaluate: error: {text_ckpt}: " + NOT_CKPT),
    ("evaluate-empty-ckpt", ["evaluate", "{empty_ckpt}", "--data", "builtin"],
     "qaie evaluate: error: {empty_ckpt}: checkpoint file is empty (0 bytes)"),
    ("evaluate-image-as-ckpt", ["evaluate", "{photo}", "--data", "builtin"],
     "qaie evaluate: error: {photo}: " + NOT_CKPT),
    ("evaluate-text-tflite", ["evaluate", "{text_tflite}", "--data", "builtin"],
     "qaie evaluate: error: {text_tflite}: " + NOT_TFLITE),
    ("evaluate-no-data-folder", ["evaluate", "{ckpt}", "--data", "pairs:nodir"],
     "qaie evaluate: error: nodir: data folder does not exist (data spec 'pairs:nodir')"),
    ("evaluate-bad-spec", ["evaluate", "{ckpt}", "--data", "photos"],
     "qaie evaluate: error: data spec 'photos': expected builtin | synthetic:FOLDER | pairs:FOLDER | "
     "dped:FOLDER[:iphone|blackberry|sony] | photos:FOLDER"),
    ("evaluate-missing-partner", ["evaluate", "{ckpt}", "--data", "pairs:{pairs_missing}"],
     "qaie evaluate: error: {pairs_missing}/input/3.png: no partner named 3.* in {pairs_missing}/target "
     "(pairs are matched by name)"),
    ("evaluate-size-mismatch", ["evaluate", "{ckpt}", "--data", "pairs:{pairs_size}"],
     "qaie evaluate: error: {pairs_size}/input/8.png: size 40x40 differs from its partner "
     "{pairs_size}/target/8.png (48x40); pairs must be aligned images of one size"),
    ("evaluate-corrupt-pair", ["evaluate", "{ckpt}", "--data", "pairs:{pairs_corrupt}"],
     re.compile(r"qaie evaluate: error: {pairs_corrupt}/target/8.png: " + DECODE)),
    ("evaluate-crop-4", [*EVALUATE[:4], "--crop", "4"],
     "qaie evaluate: error: --crop '4': expected HxW with both sides at least 8 (e.g. 256x256)"),
    ("evaluate-crop-too-big", [*EVALUATE[:4], "--crop", "5000"],
     re.compile(r"qaie evaluate: error: .+\.(png|jpg): \d+x\d+ pixels are fewer than the 5000x5000 crop; "
                r"use a smaller --crop or remove the image")),
    ("evaluate-limit-0", [*EVALUATE[:4], "--limit", "0"], "qaie evaluate: error: limit must be at least 1, got 0"),
    ("evaluate-json-no-folder", [*EVALUATE, "--json", "nodir/out.json"],
     "qaie evaluate: error: nodir/out.json: folder nodir does not exist"),
    # bench
    ("bench-text-tflite", ["bench", "{text_tflite}"], "qaie bench: error: {text_tflite}: " + NOT_TFLITE),
    ("bench-ckpt", ["bench", "{ckpt}"],
     "qaie bench: error: {ckpt}: not an exported model ('.ckpt'); pass a .tflite, .onnx, .pte file"),
    ("bench-missing", ["bench", "missing.tflite"], "qaie bench: error: missing.tflite: model file not found"),
    ("bench-size-0x5", [*BENCH, "--size", "0x5"], f"qaie bench: error: --size '0x5': {SIZE}"),
    ("bench-size-abc", [*BENCH, "--size", "abc"], f"qaie bench: error: --size 'abc': {SIZE}"),
    ("bench-size-4x4", [*BENCH, "--size", "96x96,4x4"], f"qaie bench: error: --size '4x4': {SIZE}"),
    ("bench-threads-0", [*BENCH, "--threads", "0"], f"qaie bench: error: --threads '0': {THREADS}"),
    ("bench-threads-neg", [*BENCH, "--threads", "-1"], f"qaie bench: error: --threads '-1': {THREADS}"),
    ("bench-threads-x", [*BENCH, "--threads", "1,x"], f"qaie bench: error: --threads '1,x': {THREADS}"),
    ("bench-runs-0", [*BENCH[:2], "--runs", "0"],
     "qaie bench: error: need runs >= 1 and warmup >= 0, got runs=0, warmup=2"),
    ("bench-compare-text-tflite", [*BENCH, "--compare", "{text_tflite}"],
     "qaie bench: error: {text_tflite}: " + NOT_TFLITE),
    ("bench-json-no-folder", [*BENCH, "--json", "nodir/out.json"],
     "qaie bench: error: nodir/out.json: folder nodir does not exist"),
    # export
    ("export-missing-ckpt", ["export", "missing.ckpt", *EXPORT[2:]],
     "qaie export: error: missing.ckpt: checkpoint not found"),
    ("export-truncated-ckpt", ["export", "{truncated_ckpt}", *EXPORT[2:]],
     "qaie export: error: {truncated_ckpt}: " + TRUNC_CKPT),
    ("export-tflite-as-ckpt", ["export", "{tflite}", *EXPORT[2:]], "qaie export: error: {tflite}: " + NOT_CKPT),
    ("export-size-0x5", [*EXPORT[:4], "--size", "0x5", *EXPORT[6:]], f"qaie export: error: --size '0x5': {SIZE}"),
    ("export-size-abc", [*EXPORT[:4], "--size", "abc", *EXPORT[6:]], f"qaie export: error: --size 'abc': {SIZE}"),
    ("export-size-4x4", [*EXPORT[:4], "--size", "32x32,4x4", *EXPORT[6:]],
     f"qaie export: error: --size '4x4': {SIZE}"),
    ("export-int8-no-calibration", [*EXPORT[:3], "int8", *EXPORT[4:]],
     "qaie export: error: {ckpt}: FP32 checkpoint; INT8 needs PTQ data, pass --calibrate SPEC"),
    ("export-calibrate-0", [*EXPORT[:3], "int8", *EXPORT[4:], "--calibrate", "builtin", "--calibrate-images", "0"],
     "qaie export: error: --calibrate-images must be at least 1, got 0"),
    ("export-calibrate-missing-partner", [*EXPORT[:3], "int8", *EXPORT[4:], "--calibrate", "pairs:{pairs_missing}"],
     "qaie export: error: {pairs_missing}/input/3.png: no partner named 3.* in {pairs_missing}/target "
     "(pairs are matched by name)"),
    ("export-not-tflite", [*EXPORT[:-1], "out.jpg"],
     "qaie export: error: out.jpg: an exported model's name must end in .tflite, .onnx, .pte"),
    ("export-no-folder", [*EXPORT[:-1], "nodir/out.tflite"],
     "qaie export: error: nodir/out.tflite: folder nodir does not exist"),
    ("export-uint8-io-fp32", [*EXPORT, "--uint8-io"], "qaie export: error: --uint8-io applies to INT8 exports only"),
    ("export-onnx-uint8-io", [*EXPORT[:4], "--out", "out.onnx", "--uint8-io"],
     "qaie export: error: out.onnx: --uint8-io applies to .tflite exports only; drop it for a .onnx file"),
    ("enhance-memory-budget-tflite", ["enhance", "in.png", "-o", "o.png", "--memory-budget", "1"],
     "qaie enhance: error: --memory-budget takes a positive number of GB, for an .onnx model"),
    ("export-pte-uint8-io", [*EXPORT[:-1], "out.pte", "--uint8-io"],
     "qaie export: error: out.pte: --uint8-io applies to .tflite exports only; drop it for a .pte file"),
    # inspect
    ("inspect-missing", ["inspect", "missing.tflite"],
     "qaie inspect: error: missing.tflite: cannot read (No such file or directory); give an existing .tflite file"),
    ("inspect-text", ["inspect", "{text_tflite}"],
     "qaie inspect: error: {text_tflite}: not a TFLite model (no TFL3 identifier); give a .tflite file"),
    ("inspect-ckpt", ["inspect", "{ckpt}"],
     "qaie inspect: error: {ckpt}: not a TFLite model (no TFL3 identifier); give a .tflite file"),
    ("inspect-truncated", ["inspect", "{truncated_tflite}"],
     "qaie inspect: error: {truncated_tflite}: truncated or corrupt TFLite model (its flatbuffer does not "
     "parse); export it again"),
    # parity (its kind checks are in test_parity_needs_matching_kinds)
    ("parity-other-network", ["parity", "{w8_ckpt}", "{tflite}", "--data", "builtin"],
     "qaie parity: error: {w8_ckpt}: not the network {tflite} was exported from (width 4 vs 8; see "
     "tiny_fp32.tflite.json)"),
    # import
    ("import-text", ["import", "{text_tflite}", "--out", "x.ckpt"],
     "qaie import: error: {text_tflite}: not a TFLite model (no TFL3 identifier); give an official INT8 .tflite"),
    ("import-fp32", ["import", "{tflite}", "--out", "x.ckpt"],
     "qaie import: error: {tflite}: float convolutions; qaie import reads INT8 files (per-channel int8 weights)"),
    ("import-other-network", ["import", "{shipped}", "--out", "x.ckpt"],
     "qaie import: error: {shipped}: 44 convolutions, the paper's network has 35; not its INT8 file"),
    ("import-qaie-ckpt", ["import", "{ckpt}", "--out", "x.ckpt"],
     "qaie import: error: {ckpt}: a qaie checkpoint already; use it as it is (qaie import reads the authors' "
     "files)"),
    ("import-missing-keys", ["import", "{partial_ckpt}", "--out", "x.ckpt"],
     "qaie import: error: {partial_ckpt}: model.down1.b.weight missing; not a complete checkpoint of the "
     "paper's network"),
    ("import-pickled", ["import", "{pickled_ckpt}", "--out", "x.ckpt"],
     "qaie import: error: {pickled_ckpt}: holds pickled Python objects, not only tensors and plain data; qaie "
     "does not unpickle them (re-save its state_dict alone where the file is trusted)"),
    ("import-text-ckpt", ["import", "{text_ckpt}", "--out", "x.ckpt"],
     "qaie import: error: {text_ckpt}: not a torch.save archive; give the authors' Lightning .ckpt or a .tflite"),
    ("import-residual-tflite", ["import", "{tflite}", "--out", "x.ckpt", "--no-output-residual"],
     "qaie import: error: --no-output-residual applies to the authors' training checkpoints (.ckpt) only"),
    # report, demo
    ("report-no-results", ["report", "{dir}"],
     "qaie report: error: {dir}/results.json: not found; run `qaie demo --out {dir}` first"),
    ("demo-foreign-folder", ["demo", "--quick", "--out", "{dir}"],
     "qaie demo: error: {dir}: not empty and not a qaie demo folder (no demo.json); choose a new or empty --out"),
    ("parity-text-tflite", ["parity", "{ckpt}", "{text_tflite}", "--data", "builtin"],
     "qaie parity: error: {text_tflite}: " + NOT_TFLITE),
    ("parity-truncated-ckpt", ["parity", "{truncated_ckpt}", "{tflite}", "--data", "builtin"],
     "qaie parity: error: {truncated_ckpt}: " + TRUNC_CKPT),
    ("parity-limit-0", ["parity", "{ckpt}", "{tflite}", "--data", "builtin", "--limit", "0"],
     "qaie parity: error: limit must be at least 1, got 0"),
    ("parity-json-no-folder", ["parity", "{ckpt}", "{tflite}", "--data", "builtin", "--json", "nodir/p.json"],
     "qaie parity: error: nodir/p.json: folder nodir does not exist"),
    # train
    ("train-epochs-0", [*TRAIN, "--epochs", "0"], "qaie train: error: --epochs must be a positive integer, got 0"),
    ("train-crop-4", [*TRAIN, "--crop", "4"],
     "qaie train: error: --crop must be at least 8 (the network's minimum size), got 4"),
    ("train-val-crop-4", [*TRAIN, "--val-crop", "4"],
     "qaie train: error: --val-crop must be at least 8 (the network's minimum size), got 4"),
    ("train-crop-word", [*TRAIN, "--crop", "big"], "qaie train: error: --crop 'big': expected N or HxW"),
    ("train-frame-crop-pairs", [*TRAIN, "--crop", "16x24"],
     "qaie train: error: --crop 16x24: an HxW crop applies to photos: data only"),
    ("train-shrink-0", [*TRAIN, "--shrink", "0"], "qaie train: error: --shrink must be a positive integer, got 0"),
    ("train-ranges-no-qat", [*TRAIN, "--ranges", "{ckpt}"], "qaie train: error: --ranges applies to --qat only"),
    ("train-ranges-fp32", [*TRAIN, "--qat", "--ranges", "{ckpt}"],
     "qaie train: error: {ckpt}: --ranges needs a PTQ or QAT checkpoint (qaie calibrate, qaie train --qat), not FP32"),
    ("train-workers-neg", [*TRAIN, "--num-workers", "-1"], "qaie train: error: --num-workers must be >= 0, got -1"),
    ("train-width-0", [*TRAIN, "--width", "0"], "qaie train: error: width must be a positive integer, got 0"),
    ("train-missing-init", [*TRAIN, "--init", "missing.ckpt"], "qaie train: error: missing.ckpt: checkpoint not found"),
    ("train-truncated-init", [*TRAIN, "--init", "{truncated_ckpt}"],
     "qaie train: error: {truncated_ckpt}: " + TRUNC_CKPT),
    ("train-init-other-width", [*TRAIN, "--init", "{ckpt}", "--width", "8"],
     "qaie train: error: {ckpt}: checkpoint is width 4 but --width 8 was given"),
    ("train-resume-nothing", [*TRAIN, "--resume"], "qaie train: error: run/last.ckpt: checkpoint not found"),
    ("train-missing-partner", [*TRAIN[:2], "pairs:{pairs_missing}", *TRAIN[3:]],
     "qaie train: error: {pairs_missing}/input/3.png: no partner named 3.* in {pairs_missing}/target "
     "(pairs are matched by name)"),
    ("train-out-is-file", [*TRAIN[:4], "{photo}", *TRAIN[5:]],
     "qaie train: error: {photo}: exists and is not a folder; choose another --out"),
    # info, camera-stats
    ("info-width-0", ["info", "--width", "0"], "qaie info: error: width must be a positive integer, got 0"),
    ("camera-stats-no-folder", ["camera-stats", "--real", "nodir", "--clean", "{dir}"],
     "qaie camera-stats: error: nodir: not a folder"),
    ("camera-stats-limit-0", [*CAMERA, "--limit", "0"], "qaie camera-stats: error: --limit must be at least 1, got 0"),
    ("camera-stats-out-no-folder", [*CAMERA, "--out", "nodir/stats.md"],
     "qaie camera-stats: error: nodir/stats.md: folder nodir does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argv: list[str], expected: str | re.Pattern, files: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, lines = _run([a.format(**files) for a in argv], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    if isinstance(expected, re.Pattern):
        assert re.fullmatch(
            expected.pattern.format(**{k: re.escape(v) for k, v in files.items()}), lines[0]
        ), lines
    else:
        assert lines[0] == expected.format(**files)
    assert _leftovers(tmp_path) == []


def test_no_shipped_model_says_so(files: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("qaie.runtime.models.MODELS_DIR", tmp_path / "no-models")
    code, lines = _run(["enhance", files["photo"], "-o", str(tmp_path / "out.jpg")], capsys)
    assert (code, lines) == (
        2,
        ["qaie enhance: error: no model is installed in the package; pass --model FILE.tflite"],
    )


def test_debug_shows_the_traceback(files: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from qaie.errors import QaieError

    monkeypatch.setenv("QAIE_DEBUG", "")  # main(--debug) sets it for its subprocesses; undone after this test
    with pytest.raises(QaieError, match="checkpoint is truncated"):
        main(["--debug", "evaluate", files["truncated_ckpt"], "--data", "builtin"])


# --- existing outputs: refused unless --overwrite, and left as they were ---------------------------

EXISTING = [
    ("enhance", [*ENHANCE], "out.jpg"),
    ("evaluate", [*EVALUATE, "--json", "out.json"], "out.json"),
    ("bench", [*BENCH, "--json", "out.json"], "out.json"),
    ("export", [*EXPORT], "out.tflite"),
    ("export-sidecar", [*EXPORT], "out.tflite.json"),
    ("parity", ["parity", "{ckpt}", "{tflite}", "--data", "builtin", "--json", "out.json"], "out.json"),
    ("camera-stats", [*CAMERA, "--out", "out.md"], "out.md"),
]


@pytest.mark.parametrize(("argv", "output"), [c[1:] for c in EXISTING], ids=[c[0] for c in EXISTING])
def test_existing_output_is_refused_unless_overwrite(
    argv: list[str], output: str, files: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / output).write_text("keep me")
    command = argv[0]
    code, lines = _run([a.format(**files) for a in argv], capsys)
    assert (code, lines) == (2, [f"qaie {command}: error: {output}: {EXISTS}"])
    assert (tmp_path / output).read_text() == "keep me"
    assert _leftovers(tmp_path) == [output]


def test_train_refuses_a_folder_that_holds_a_run(files: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    """`train` never overwrites: --resume continues a run, another --out starts a new one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"keep me")
    code, lines = _run(TRAIN, capsys)
    assert (code, lines) == (
        2,
        [
            "qaie train: error: run: holds a run already (last.ckpt); pass --resume to continue it or choose another --out"
        ],
    )
    assert _leftovers(tmp_path) == ["run", "run/last.ckpt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize(
    "argv",
    [
        [*ENHANCE[:3], "ro/out.jpg", *ENHANCE[4:]],
        [*EVALUATE, "--json", "ro/out.json"],
        [*EXPORT[:-1], "ro/out.tflite"],
    ],
    ids=["enhance", "evaluate", "export"],
)
def test_read_only_folder_fails_before_the_work(
    argv, files: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o500)
    code, lines = _run([a.format(**files) for a in argv], capsys)
    target = next(a for a in argv if a.startswith("ro/"))
    assert (code, lines) == (2, [f"qaie {argv[0]}: error: {target}: folder ro is not writable"])


# --- model kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny_int8_tflite", ["int8"], indirect=True)
def test_parity_needs_matching_kinds(
    files: dict, ptq_checkpoint: str, tiny_int8_tflite: Path, tmp_path: Path, capsys
) -> None:
    """INT8 is required exactly where the checkpoint is quantized: parity compares like with like."""
    int8 = str(tiny_int8_tflite)
    code, lines = _run(["parity", files["ckpt"], int8, "--data", "builtin"], capsys)
    assert (code, lines) == (
        2,
        [
            f"qaie parity: error: {files['ckpt']}: FP32 checkpoint but {int8} is INT8; give the QAT/PTQ checkpoint"
        ],
    )
    code, lines = _run(["parity", ptq_checkpoint, files["tflite"], "--data", "builtin"], capsys)
    assert (code, lines) == (
        2,
        [
            f"qaie parity: error: {ptq_checkpoint}: ptq checkpoint but {files['tflite']} is FP32; give the FP32 one"
        ],
    )
    code, lines = _run(
        [
            "export",
            ptq_checkpoint,
            "--format",
            "fp32",
            "--size",
            "32x32",
            "--out",
            str(tmp_path / "x.tflite"),
        ],
        capsys,
    )
    assert (code, lines) == (
        2,
        ["qaie export: error: FP32 export needs an FP32 checkpoint, not a quantized (QAT/PTQ) one"],
    )
    assert _leftovers(tmp_path) == []


# --- converted inputs: one warning line, and the work is done -------------------------------------

CONVERTED = [
    ("gray", "converted from grayscale"),
    ("palette", "converted from palette"),
    ("rgba", "RGBA: transparency composited on white"),
    ("gray16_png", "16-bit grayscale: scaled to 8 bits"),
    ("gray16_tif", "16-bit grayscale: scaled to 8 bits"),
    ("rgb16_tif", "16-bit per channel: reduced to 8 bits"),
    ("exif6", "EXIF orientation 6 applied"),
]


@pytest.mark.parametrize(("name", "note"), CONVERTED, ids=[c[0] for c in CONVERTED])
def test_enhance_converts_with_one_warning_line(
    name: str, note: str, files: dict, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out.png"
    code, lines = _run(["enhance", files[name], "-o", str(out), "--model", files["tflite"]], capsys)
    assert (code, lines) == (0, [f"qaie enhance: warning: {files[name]}: {note}"])
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == ((120, 160) if name == "exif6" else (160, 120))


def test_evaluate_warns_once_about_converted_data(files: dict, capsys) -> None:
    code, lines = _run(["evaluate", files["ckpt"], "--data", f"pairs:{files['pairs_gray']}"], capsys)
    assert code == 0
    assert lines == [
        f"qaie evaluate: warning: {files['pairs_gray']}/input/8.png: mode L: converted to 8-bit RGB"
    ]


def test_camera_stats_warns_per_converted_photo(files: dict, tmp_path: Path, capsys) -> None:
    real = tmp_path / "real"
    real.mkdir()
    for name in ("photo", "gray"):
        shutil.copy(files[name], real)
    code, lines = _run(["camera-stats", "--real", str(real), "--clean", str(real)], capsys)
    assert code == 0
    gray = real / "gray.png"
    assert lines == [f"qaie camera-stats: warning: {gray}: converted from grayscale"] * 2  # as real, as clean


# --- errors met mid-run --------------------------------------------------------------------------


def test_corrupt_image_met_by_a_dataloader_worker_is_one_line(
    files: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    """torch re-raises a worker's error with the worker's traceback as its message: still one line."""
    monkeypatch.chdir(tmp_path)
    data = f"pairs:{files['pairs_train_corrupt']}"
    code, lines = _run([*TRAIN[:2], data, *TRAIN[3:], "--num-workers", "1"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(
        f"qaie train: error: {re.escape(files['pairs_train_corrupt'])}/target/0.png: {DECODE}", lines[0]
    ), lines
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob(".*tmp*"))


def test_real_stderr_is_one_line_in_a_fresh_process(files: dict, tmp_path: Path) -> None:
    """Library noise that only a fresh process shows (torchao's import logging) stays hidden."""
    proc = subprocess.run(
        [sys.executable, "-m", "qaie.cli", "export", files["text_ckpt"], "--format", "fp32", "--size", "32x32",
         "--out", str(tmp_path / "x.tflite")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"qaie export: error: {files['text_ckpt']}: {NOT_CKPT}"]
    assert _leftovers(tmp_path) == []


# --- damaged model files: every format, every command that opens one ------------------------------


@pytest.fixture(scope="module")
def model_files(
    tmp_path_factory: pytest.TempPathFactory, tiny_net, tiny_tflite: Path, tiny_checkpoint: Path
) -> dict:
    """A real file of each format (made once, 32x32) and corrupt, truncated and empty copies.

    Corrupt: a `.pte` with its XNNPACK delegate's flatbuffer identifier flipped (the log line
    that quotes those bytes once aborted the process), any other file with its first 64 bytes
    flipped (the identifier or magic number of every format)."""
    from qaie.quant.export_onnx import export_onnx

    d = tmp_path_factory.mktemp("models")
    real = {".tflite": tiny_tflite, ".ckpt": tiny_checkpoint, ".onnx": d / "real.onnx"}
    export_onnx(tiny_net, "fp32", real[".onnx"])
    if importlib.util.find_spec("executorch") is not None:
        from qaie.quant.export_executorch import export_pte

        real[".pte"] = d / "real.pte"
        export_pte(tiny_net, "fp32", [(32, 32)], real[".pte"])
    files = {}
    for ext, path in real.items():
        data = bytearray(path.read_bytes())
        at = data.find(b"XN01") if ext == ".pte" else 0
        span = 4 if ext == ".pte" else 64
        data[at : at + span] = bytes(b ^ 0xFF for b in data[at : at + span])
        damaged = {"corrupt": bytes(data), "truncated": path.read_bytes()[: len(data) // 2], "empty": b""}
        for kind, content in damaged.items():
            files[ext, kind] = d / f"{kind}{ext}"
            files[ext, kind].write_bytes(content)
    return files


# Every command that opens a model, with the formats it takes: {model} is the damaged file.
MODEL_COMMANDS = {
    "enhance": (["enhance", "{photo}", "-o", "out.jpg", "--model", "{model}"], ".tflite .onnx .pte .ckpt"),
    "evaluate": (["evaluate", "{model}", "--data", "builtin", "--limit", "1", "--crop", "32"], ".tflite .onnx .pte .ckpt"),
    "parity": (["parity", "{ckpt}", "{model}", "--data", "builtin", "--limit", "1"], ".tflite .onnx .pte"),
    "parity-ckpt": (["parity", "{model}", "{tflite}", "--data", "builtin", "--limit", "1"], ".ckpt"),
    "bench": (["bench", "{model}", "--size", "32x32", "--runs", "1", "--warmup", "0"], ".tflite .onnx .pte"),
    "inspect": (["inspect", "{model}"], ".tflite .onnx .pte"),
    "import": (["import", "{model}", "--out", "x.ckpt"], ".tflite .ckpt"),
    "export": (["export", "{model}", "--format", "fp32", "--size", "32x32", "--out", "out.tflite"], ".ckpt"),
    "quantize": (["quantize", "{model}", "--photos", "{dir}", "--size", "32x32", "--out", "q.tflite"], ".ckpt"),
}  # fmt: skip
MODEL_CASES = [
    (command, ext, kind)
    for command, (_, exts) in MODEL_COMMANDS.items()
    for ext in exts.split()
    for kind in ("corrupt", "truncated", "empty")
]


@pytest.mark.parametrize(("command", "ext", "kind"), MODEL_CASES, ids=["-".join(c) for c in MODEL_CASES])
def test_a_damaged_model_file_is_one_line_exit_2(
    command: str, ext: str, kind: str, model_files: dict, files: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    if (ext, kind) not in model_files:
        pytest.skip("the executorch extra is not installed")
    monkeypatch.chdir(tmp_path)
    model = str(model_files[ext, kind])
    argv = [a.format(**files, model=model) for a in MODEL_COMMANDS[command][0]]
    code, lines = _run(argv, capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"qaie {argv[0]}: error: {model}: "), lines
    assert _leftovers(tmp_path) == []
