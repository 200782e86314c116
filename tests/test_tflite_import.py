"""`qaie import`: an INT8 .tflite of the paper's network becomes an FP32 EnhanceNet checkpoint.

The refusals run everywhere (real files: qaie's own shipped INT8 model, an FP32 export, a text
file). The identity proof needs the authors' files (../shared/models/qatie) and the real
iPhone 3GS photos (../shared/data/dped-iphone-fullsize) and skips where they are absent: the
imported FP32 network against the official INT8 file, whole input to whole input, with two
controls that must score clearly lower (one block's weights perturbed; two tensors swapped,
as a wrong mapping would). Thresholds come from the measurement in the README ("The official
release, re-exported"): 27.99 dB mean over the 29 photos at 100x100, 22.59 dB perturbed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from qaie.cli import main
from qaie.config import ModelConfig
from qaie.nn import metrics
from qaie.nn.model import EnhanceNet, param_count
from qaie.quant.tflite_import import FUSED, conv_order, import_tflite

SMALL = "model_with_qat_c32_int8_100x100.tflite"
LARGE = "model_with_qat_c32_int8_1920x1080.tflite"


def test_conv_order_names_every_convolution_once():
    net = EnhanceNet(ModelConfig())
    convs = {n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    fused = {f"{n}_skip" for n in conv_order() if n.endswith(f".{FUSED}")}
    assert sorted([*conv_order(), *fused]) == sorted(convs)


def test_both_official_files_give_the_same_network(official_models, tmp_path):
    from qaie.quant.checkpoint import load_model, read_checkpoint

    out = tmp_path / "official.ckpt"
    assert main(["import", str(official_models / LARGE), "--out", str(out)]) == 0
    loaded = load_model(out)
    assert loaded.quant is None and loaded.config.width == 32 and param_count(loaded.net) == 915_331
    source = read_checkpoint(out)["source"]
    assert source["file"] == LARGE and len(source["sha256"]) == 64
    small = import_tflite(official_models / SMALL).net.state_dict()
    for key, value in loaded.net.state_dict().items():
        # The int8 weights are the same; biases sit on each file's own int32 grid (input scale x
        # weight scale), which differs where the activation scales differ.
        tolerance = 0.0 if key.endswith("weight") else 2e-3
        torch.testing.assert_close(value, small[key], atol=tolerance, rtol=0.0, msg=key)


def _controls(net: EnhanceNet) -> dict[str, EnhanceNet]:
    """The imported network, dec2 with each weight tensor + 25% of its std of noise, and enc2's two
    convolutions swapped (a mapping error)."""
    perturbed, swapped = copy.deepcopy(net), copy.deepcopy(net)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in perturbed.dec2.named_parameters():
            if name.endswith("weight"):
                p += 0.25 * p.std() * torch.randn(p.shape, generator=generator)
        a, b = swapped.enc2.conv_a, swapped.enc2.conv_b
        a.load_state_dict(net.enc2.conv_b.state_dict())
        b.load_state_dict(net.enc2.conv_a.state_dict())
    return {"imported": net, "perturbed": perturbed, "swapped": swapped}


def _fidelity(tflite: Path, crop: tuple[int, int], photos: Path, limit: int | None) -> dict[str, float]:
    from qaie.data.datasets import make_dataset
    from qaie.runtime.litert import TFLiteModel

    nets = _controls(import_tflite(tflite).net)
    official = TFLiteModel(tflite, num_threads=2)
    assert official.sizes == (crop,)  # whole crop to whole crop: no tiling, no padding
    dataset = make_dataset(f"photos:{photos}", "test", crop=crop, limit=limit)
    scores: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(len(dataset)):
        x = dataset[i][0][None]  # (1, 3, H, W), a centre crop
        pixels = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        out = official.run(pixels)
        with torch.no_grad():
            for name, net in nets.items():
                scores[name].append(float(metrics.psnr(out, net(x))[0]))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def test_imported_network_is_the_official_one_on_100x100_patches(official_models, shared_data):
    scores = _fidelity(official_models / SMALL, (100, 100), shared_data / "dped-iphone-fullsize", None)
    assert scores["imported"] > 27.5  # measured 27.99 dB (29 photos); limited by the file's int8
    assert scores["perturbed"] < scores["imported"] - 3.5  # measured 22.59 dB
    assert scores["swapped"] < scores["imported"] - 7  # measured 18.11 dB


def test_runtime_runs_both_official_layouts(official_models):
    from ai_edge_litert.interpreter import Interpreter

    from qaie.runtime.litert import TFLiteModel

    model = TFLiteModel(official_models / SMALL, num_threads=1)  # float NHWC in, float NCHW out
    pixels = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    runner = Interpreter(model_path=str(official_models / SMALL)).get_signature_runner()
    (nchw,) = runner(input=pixels[None].astype(np.float32) / 255).values()  # (1, 3, 100, 100)
    expected = np.clip(np.rint(nchw[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(model.run(pixels), expected)
    large = TFLiteModel(official_models / LARGE, num_threads=1)  # int8 NHWC both ways
    assert large.sizes == ((1920, 1080),) and large.is_int8


def test_inspect_names_the_official_files_coarse_tanh_requantizations(official_models):
    """What limits the official files (README): each encoder's two tanh outputs (step 1/128) are
    requantized to the step of the decoder concatenation they also feed, and the gate a*b reads
    those copies. The 1920x1080 file's steps are the coarsest (about 3 values per tanh)."""
    from qaie.quant.tflite_ops import format_table, inspect_tflite

    for name, least in ((SMALL, 15), (LARGE, 79)):
        table = inspect_tflite(official_models / name)
        found = table.requantizations
        assert format_table(table).count("requantize: TANH output, step 0.0078125 -> ") == 4
        assert [r.producer for r in found] == ["TANH"] * 4, name
        assert all(r.in_scale == 1 / 128 for r in found)
        assert min(r.coarser for r in found) > least, name  # measured 15.2, 48 / 92.7, 79.2
