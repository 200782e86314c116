"""The phase form of nearest 2x upsample + conv3x3, and the fold of up1 + head (qaie.nn.phases,
qaie.quant.phases): the same FP32 function in fewer multiply-adds, and in INT8 an integer-only file that computes its own
reference model, exported from checkpoints trained before the rewrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.fx.interpreter import Interpreter

from qaie.cli import main
from qaie.experiment.parity import run_parity
from qaie.nn.model import macs_per_pixel
from qaie.nn.phases import depth_to_space, fold_kernels, interleave, phase_bias, phase_kernels
from qaie.quant import phases, split
from qaie.quant.checkpoint import load_model
from qaie.quant.tflite_ops import inspect_tflite
from qaie.runtime.litert import sidecar_path

MODELS = Path(__file__).parents[1] / "src" / "qaie" / "assets" / "models"
SHIPPED_QAT, SHIPPED_FP32 = MODELS / "qaie-c32-qat.ckpt", MODELS / "qaie-c32-fp32.ckpt"


@pytest.mark.parametrize(("batch", "h", "w"), [(1, 8, 8), (2, 16, 24), (1, 40, 8)])
def test_phase_form_is_the_upsample_conv(batch: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * w)
    x = torch.rand(batch, 16, h, w, generator=g)
    weight, bias = torch.randn(24, 16, 3, 3, generator=g) * 0.1, torch.randn(24, generator=g)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    out = interleave(F.conv2d(x, phase_kernels(weight), phase_bias(bias), padding=1))
    assert out.shape == expected.shape
    assert (out - expected).abs().max() < 1e-5


def _conv_macs(graph: torch.fx.GraphModule, x: torch.Tensor) -> int:
    """Multiply-adds of the convolutions `graph` runs on `x`, as `macs_per_pixel` counts them:
    without the norms' depthwise affine (one input channel per output)."""
    total = 0

    class Count(Interpreter):
        def call_function(self, target, args, kwargs):
            nonlocal total
            out = super().call_function(target, args, kwargs)
            if target == torch.ops.aten.conv2d.default and args[1].shape[1] > 1:
                weight = args[1]
                total += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
            return out

    with torch.no_grad():
        Count(graph).run(x)
    return total


def test_rewrite_keeps_the_fp32_network_in_fewer_macs() -> None:
    """The shipped FP32 weights (width 32): the three upsample convs are 18,432 of the 69,520
    multiply-adds per pixel and `head` 864. dec4.up and dec2.up go in phase form, 4/9 of theirs
    on an (H + 1, W + 1) grid per phase; up1 + head fold into one conv3x3 on the S/2 map with
    4 x 3 output channels, the output's ring computed from four edge strips (in phase form).
    The rewritten graph is the network, ring included."""
    net = load_model(SHIPPED_FP32).net
    config = net.config
    size, c = 64, 32
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    graph = split.static_graph(net, (size, size))
    before = _conv_macs(graph, x)
    assert phases.rewrite(graph) == 2 + 4
    after = _conv_macs(graph, x)
    with torch.no_grad():
        assert (graph(x) - net(x)).abs().max() < 1e-5
    assert before == macs_per_pixel(config) * size * size == 69_520 * size * size
    # (in, out, low-resolution side) of dec4.up, dec2.up
    ups = [(128, 64, size // 8), (64, 32, size // 4)]
    phase_macs = sum(16 * (s + 1) ** 2 * c_in * c_out for c_in, c_out, s in ups)
    low = size // 2
    folded = 4 * 3 * c * 9 * low * low
    strips = 4 * (16 * c * c * 3 * (low + 1) + 3 * c * 9 * 2 * 2 * low)  # up1 on a 2-deep strip, head
    assert after == before - (18_432 + 864) * size * size + phase_macs + folded + strips
    limit = 69_520 - 18_432 - 864 + sum(16 * c_in * c_out * (s / size) ** 2 for c_in, c_out, s in ups) + 864
    assert limit == 55_184  # per pixel once the grids' extra rows and the strips are negligible


@pytest.mark.parametrize(("h", "w"), [(2, 2), (5, 7)])
def test_folded_pair_is_the_two_convs_inside_the_ring(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * w)
    x = torch.rand(2, 8, h, w, generator=g)
    w1, b1 = torch.randn(8, 8, 3, 3, generator=g), torch.randn(8, generator=g)
    w2, b2 = torch.randn(3, 8, 3, 3, generator=g), torch.randn(3, generator=g)
    upsampled = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = F.conv2d(F.conv2d(upsampled, w1, b1, padding=1), w2, b2, padding=1)
    kernels, bias = fold_kernels(w1, b1, w2, b2)
    out = depth_to_space(F.conv2d(x, kernels, bias, padding=1))
    assert out.shape == expected.shape
    error = (out - expected).abs() / expected.abs().max()
    assert error[..., 1:-1, 1:-1].max() < 1e-6
    assert error.max() > 1e-3  # the ring is not: `head`'s zero padding (qaie.quant.phases computes it)


def test_int8_export_is_phased_integer_only_with_stages(quant_models, tmp_path: Path) -> None:
    """The QAT model in phase form, whole and in stage windows: no resize is left, every op is
    int8, and the staged whole-photo path runs on the rewritten graph."""
    from qaie.quant.export import export_tflite
    from qaie.runtime.litert import TFLiteModel

    out = tmp_path / "qat.tflite"
    export_tflite(quant_models.qat, "int8", [(96, 96)], out)
    ops = inspect_tflite(out)
    names = {row.op for row in ops.ops}
    assert "RESIZE_NEAREST_NEIGHBOR" not in names and "CONV_2D" in names
    assert ops.float_ops == 0 and ops.quantize_ops == 0 and ops.dequantize_ops == 0
    assert json.loads(sidecar_path(out).read_text())["phases"] is True
    model = TFLiteModel(out, num_threads=1)
    assert model.stages is not None
    pixels = np.random.default_rng(0).integers(0, 256, (152, 200, 3), dtype=np.uint8)
    from qaie.runtime.enhance import enhance_image

    enhanced = enhance_image(model, pixels)
    assert enhanced.shape == pixels.shape and enhanced.std() > 0


def test_a_checkpoint_trained_before_the_rewrite_exports_in_phase_form(tmp_path: Path) -> None:
    """The shipped QAT checkpoint (3x3 upsample convs, trained without phases) exports with the
    rewrite by default, and the file computes its phase-form reference model to 45 dB; with
    --no-phases the resizes stay."""
    out, plain = tmp_path / "phases.tflite", tmp_path / "plain.tflite"
    common = ["export", str(SHIPPED_QAT), "--format", "int8", "--size", "64x64", "--no-stages"]
    assert main([*common, "--out", str(out)]) == 0
    assert main([*common, "--out", str(plain), "--no-phases"]) == 0
    assert {r.op for r in inspect_tflite(out).ops}.isdisjoint({"RESIZE_NEAREST_NEIGHBOR"})
    assert "RESIZE_NEAREST_NEIGHBOR" in {r.op for r in inspect_tflite(plain).ops}
    assert json.loads(sidecar_path(plain).read_text())["phases"] is False
    report = run_parity(SHIPPED_QAT, out, "builtin", limit=3)
    assert report.reference.endswith("in phase form")
    assert report.overall.psnr >= 45


def test_onnx_stages_take_the_phase_form_its_one_pass_the_upsamples(tmp_path: Path) -> None:
    """An .onnx file's stages (fixed window sizes) are exported in phase form with up1 + head
    folded, as .tflite files; its one-pass graph takes any size and keeps its resizes, and
    --no-phases keeps them in the stages too. Both compute the same whole photo: the phase
    kernels are quantized anew from the trained int8 weights, a few LSB apart (as in parity)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'qaie[onnx]')")
    import onnx

    from qaie.quant.export_onnx import export_onnx, stage_folder
    from qaie.runtime.enhance import enhance_image
    from qaie.runtime.registry import open_deployed

    qat = load_model(SHIPPED_QAT).net
    outs = {"phases": tmp_path / "phases.onnx", "plain": tmp_path / "plain.onnx"}
    for name, out in outs.items():
        export_onnx(qat, "int8", out, stage_windows=[(128, 128)], phases=name == "phases")

    def ops(*files: Path) -> set[str]:
        return {node.op_type for f in files for node in onnx.load(str(f)).graph.node}

    stage_files = {name: sorted(stage_folder(out).glob("*.onnx")) for name, out in outs.items()}
    assert len(stage_files["phases"]) == len(stage_files["plain"]) == 6
    assert "Resize" not in ops(*stage_files["phases"]) and "Resize" in ops(*stage_files["plain"])
    assert "Resize" in ops(outs["phases"])  # the one pass, any size
    assert json.loads(sidecar_path(outs["phases"]).read_text())["stage_phases"] is True
    assert json.loads(sidecar_path(outs["plain"]).read_text())["stage_phases"] is False
    photo = np.random.default_rng(0).integers(0, 256, (200, 264, 3), dtype=np.uint8)
    enhanced = {}
    for name, out in outs.items():
        model = open_deployed(out, 1)
        model.memory_budget = 0  # the stages, in windows of 128x128
        enhanced[name] = enhance_image(model, photo).astype(np.float64)
    mse = np.mean((enhanced["phases"] - enhanced["plain"]) ** 2)
    assert mse > 0 and 10 * np.log10(255**2 / mse) >= 45
