"""Shipped models (`qaie models`, `qaie enhance` without --model) and the README figure."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaie.cli import main
from qaie.quant.tflite_ops import inspect_tflite
from qaie.runtime.models import MODELS_DIR, shipped_models


@pytest.fixture
def models_dir(tmp_path: Path, tiny_tflite: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package model folder holding the tiny model, its sidecar and a card."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_tflite, folder / "tiny.tflite")
    shutil.copy(tiny_tflite.with_name(tiny_tflite.name + ".json"), folder / "tiny.tflite.json")
    (folder / "tiny.md").write_text("# tiny\n\nA test model.\n")
    monkeypatch.setattr("qaie.runtime.models.MODELS_DIR", folder)
    return folder


def test_models_lists_cards_and_sidecars(models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["name"] == "tiny" and entry["format"] == "fp32"
    assert entry["signatures"] == ["enhance_96x96", "enhance_192x256"]
    assert entry["checkpoints"] == {}  # none shipped beside this one
    assert (
        entry["card"].startswith("# tiny")
        and entry["file_bytes"] == (models_dir / "tiny.tflite").stat().st_size
    )
    assert main(["models"]) == 0
    assert "A test model." in capsys.readouterr().out


def test_enhance_without_model_uses_the_shipped_one(models_dir: Path, tmp_path: Path) -> None:
    """The pixels written are the package model's output (here the tiny one), not another's."""
    from qaie.runtime.litert import TFLiteModel, enhance_image

    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    pixels = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src)
    assert main(["enhance", str(src), "-o", str(dst)]) == 0
    with Image.open(dst) as img:
        assert img.size == (90, 70) and img.mode == "RGB"
        assert np.array_equal(np.asarray(img), enhance_image(TFLiteModel(models_dir / "tiny.tflite"), pixels))


def test_figure_from_builtin_photos(tiny_tflite: Path, tmp_path: Path) -> None:
    out = tmp_path / "before-after.png"
    assert main(["figure", str(out), "--model", str(tiny_tflite), "--images", "2"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 500 and img.height > 300
    assert main(["figure", str(out), "--model", str(tiny_tflite)]) == 2  # exists: needs --overwrite


# --- the model the package ships -----------------------------------------------------------------

SHIPPED = shipped_models(MODELS_DIR)
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="no model in src/qaie/assets/models")


@needs_shipped
def test_shipped_model_is_integer_only_whole_photo_with_its_checkpoints_and_a_card() -> None:
    model = SHIPPED[0]
    table = inspect_tflite(model.path)
    assert table.float_ops == 0 and table.dequantize_ops == 0 and table.quantize_ops == 0
    assert model.sidecar["io"]["dtype"] == "int8" and model.sidecar["quant"] == "qat"
    assert model.sidecar["stages"] is not None  # whole-photo output in windows (qaie.runtime.wholephoto)
    assert set(model.checkpoints) == {"qat", "fp32"}  # the reference: the QAT checkpoint, --tile none
    assert model.summary()["checkpoints"]["qat"].endswith("qaie-c32-qat.ckpt")
    assert model.file_bytes < 3_000_000
    # the card quotes the deployed artifact's measured numbers and the command behind them
    assert re.search(r"PSNR", model.card) and "qaie evaluate" in model.card


@needs_shipped
def test_shipped_model_enhances_a_builtin_photo(tmp_path: Path) -> None:
    """The shipped model improves a degraded builtin test photo (PSNR vs its target)."""
    from qaie.data.datasets import make_dataset
    from qaie.nn.metrics import psnr

    x, y = make_dataset("builtin", "test", crop=None, limit=1)[0]
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    assert main(["enhance", str(src), "-o", str(dst)]) == 0
    with Image.open(dst) as img:
        out = np.asarray(img, dtype=np.float32) / 255
    import torch

    enhanced = torch.from_numpy(out).permute(2, 0, 1)[None]
    assert float(psnr(enhanced, y[None])) > float(psnr(x[None], y[None]))
