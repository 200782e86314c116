"""qaie evaluate: model vs input baseline on real (builtin) data; checkpoints and .tflite alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qaie.cli import main
from qaie.config import ModelConfig
from qaie.data.datasets import VAL_SEED, make_dataset
from qaie.experiment.evaluate import evaluate, predictor_for
from qaie.nn.metrics import CONVENTION, psnr, ssim
from qaie.nn.model import EnhanceNet
from qaie.quant.checkpoint import load_model, save_model

KEYS = {"psnr", "ssim", "input_psnr", "input_ssim", "n_images", "convention", "data", "split", "model"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = EnhanceNet(ModelConfig(width=4))
    with torch.no_grad():
        net.head.weight *= 0.02  # a mild correction, not a saturated random output
    path = tmp_path_factory.mktemp("eval") / "tiny.ckpt"
    save_model(path, net, net.config)
    return path


def test_cli_json_has_the_keys_and_the_input_baseline(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        str(checkpoint),
        "--data",
        "builtin",
        "--split",
        "val",
        "--crop",
        "48",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert result["n_images"] == 7 and result["split"] == "val" and result["convention"] == CONVENTION
    assert result["psnr"] != result["input_psnr"]
    # The baseline is the inputs' own PSNR/SSIM against the targets.
    val = make_dataset("builtin", "val", crop=48, seed=VAL_SEED)
    inputs = torch.stack([val[i][0] for i in range(len(val))])
    targets = torch.stack([val[i][1] for i in range(len(val))])
    assert result["input_psnr"] == pytest.approx(psnr(inputs, targets).mean().item(), abs=1e-4)
    assert result["input_ssim"] == pytest.approx(ssim(inputs, targets).mean().item(), abs=1e-5)
    # The model's: its outputs on the same inputs, scored here.
    with torch.no_grad():
        outputs = load_model(checkpoint).net(inputs).clamp(0, 1)
    assert result["psnr"] == pytest.approx(psnr(outputs, targets).mean().item(), abs=1e-3)
    assert result["ssim"] == pytest.approx(ssim(outputs, targets).mean().item(), abs=1e-4)
    printed = capsys.readouterr().out
    assert "baseline" in printed and CONVENTION in printed

    assert main(args) == 2  # the JSON exists now: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_identity_and_uint8_predictors() -> None:
    val = make_dataset("builtin", "val", crop=32, seed=VAL_SEED, limit=3)
    same = evaluate(lambda x: x, val, model="identity", data="builtin", split="val", progress=False)
    assert same.psnr == same.input_psnr and same.ssim == same.input_ssim and same.n_images == 3

    def as_uint8(x: torch.Tensor) -> np.ndarray:  # what a LiteRT model returns: (H, W, 3) uint8
        return (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    rounded = evaluate(as_uint8, val, model="uint8", data="builtin", split="val", progress=False)
    assert rounded.psnr == pytest.approx(same.psnr, abs=0.05)


@pytest.mark.slow
def test_tflite_and_its_checkpoint_agree(tiny_tflite: Path, tiny_checkpoint: Path) -> None:
    """The same weights evaluated as a .ckpt (float) and as an FP32 .tflite (uint8 in/out)."""
    val = make_dataset("builtin", "val", crop=96, seed=VAL_SEED)  # an exported size
    results = [
        evaluate(predictor_for(path), val, model=str(path), data="builtin", split="val", progress=False)
        for path in (tiny_checkpoint, tiny_tflite)
    ]
    assert results[0].input_psnr == results[1].input_psnr
    assert results[1].psnr == pytest.approx(results[0].psnr, abs=0.05)
    assert results[1].ssim == pytest.approx(results[0].ssim, abs=0.002)
