"""Exported `.tflite` files: integer-only INT8, the I/O contract, one signature per size with
shared weights, the sidecar, FP32 numerics, and the export/inspect commands."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from qaie.cli import main
from qaie.quant import quantize
from qaie.quant.export import signature_name
from qaie.quant.tflite_ops import inspect_tflite
from qaie.runtime.litert import TFLiteModel, sidecar_path
from tests.conftest import QUANT_SIZES


@pytest.mark.parametrize("name", ["ptq", "qat"])
def test_int8_is_integer_only(quant_models, name: str) -> None:
    table = inspect_tflite(quant_models.tflite[name])
    assert table.float_ops == 0
    assert table.quantize_ops == 0 and table.dequantize_ops == 0
    assert all(dtype in ("INT8", "INT32") for row in table.ops for dtype in row.inputs + row.outputs)
    ops = {row.op for row in table.ops}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TANH", "RSQRT", "MEAN", "CONCATENATION", "LEAKY_RELU"} <= ops


@pytest.fixture(scope="module")
def cli_uint8(quant_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`qaie export` of the QAT checkpoint at the first size with uint8 I/O, and its stdout
    (whole signatures only: the stage signatures are tested in test_wholephoto.py)."""
    out = tmp_path_factory.mktemp("cli") / "qat_uint8.tflite"
    size = "x".join(map(str, QUANT_SIZES[0]))
    args = ["export", str(quant_models.ckpt["qat"]), "--format", "int8", "--size", size, "--uint8-io"]
    args.append("--no-stages")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main([*args, "--out", str(out)]) == 0
    return out, stdout.getvalue()


def test_export_command_from_a_qat_checkpoint(quant_models, cli_uint8: tuple[Path, str]) -> None:
    """Checkpoint -> `qaie export`: the same pixels as exporting the trained graph directly."""
    path, stdout = cli_uint8
    assert "int8 (qat)" in stdout and "uint8" in stdout
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["quant"] == "qat" and meta["io"]["dtype"] == "uint8" and meta["io"]["zero_point"] == 0
    pixels = np.random.default_rng(1).integers(0, 256, (*QUANT_SIZES[0], 3), dtype=np.uint8)
    direct, via_cli = (TFLiteModel(p, num_threads=1) for p in (quant_models.tflite["qat"], path))
    np.testing.assert_array_equal(via_cli.run(pixels), direct.run(pixels))


def test_export_leaves_xnnpack_whole_kernels(quant_models, cli_uint8, tmp_path, monkeypatch) -> None:
    """No identity clamp, one reader per PAD (XNNPACK folds it into that convolution), and the
    same pixels as the file converted as it comes (docs/performance.md)."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    def pads_and_clamps(path: Path) -> tuple[list[int], int]:
        model = fb.read_model(str(path))
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
        graph = model.subgraphs[0]
        readers = [sum(int(op.outputs[0]) in r.inputs for r in graph.operators) for op in graph.operators
                   if codes[op.opcodeIndex] == 34]  # fmt: skip
        return readers, sum(codes[op.opcodeIndex] == 152 for op in graph.operators)

    monkeypatch.setattr("qaie.quant.export._xnnpack_friendly", lambda model_bytes: model_bytes)
    plain = tmp_path / "as_converted.tflite"
    size = "x".join(map(str, QUANT_SIZES[0]))
    args = ["export", str(quant_models.ckpt["qat"]), "--format", "int8", "--size", size, "--uint8-io"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--no-stages", "--out", str(plain)]) == 0
    (plain_pads, plain_clamps), (pads, clamps) = pads_and_clamps(plain), pads_and_clamps(cli_uint8[0])
    assert plain_clamps == 1 and max(plain_pads) == 2  # as converted: the shared PADs, the clamp
    assert clamps == 0 and pads == [1] * sum(plain_pads)
    pixels = np.random.default_rng(2).integers(0, 256, (*QUANT_SIZES[0], 3), dtype=np.uint8)
    friendly, converted = (TFLiteModel(p, num_threads=1) for p in (cli_uint8[0], plain))
    np.testing.assert_array_equal(friendly.run(pixels), converted.run(pixels))


def test_uint8_io_adds_only_edge_requantizes(cli_uint8: tuple[Path, str]) -> None:
    table = inspect_tflite(cli_uint8[0])
    assert table.float_ops == 0 and table.dequantize_ops == 0
    assert table.quantize_ops == table.requantize_ops == 2  # uint8 -> int8 in, int8 -> uint8 out
    for r in table.requantizations:  # the zero point moves by 128, the step stays 1/255
        assert math.isclose(r.coarser, 1.0, rel_tol=1e-6), r
    (inp,), (out,) = table.inputs, table.outputs
    for t in (inp, out):
        assert (t.dtype, t.zero_point) == ("UINT8", 0) and math.isclose(t.scale, 1 / 255, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["fp32", "ptq", "qat"])
def test_io_contract(quant_models, name: str) -> None:
    """One signature per size, each with one NHWC image input and output of that size."""
    table = inspect_tflite(quant_models.tflite[name])
    sizes = QUANT_SIZES[:1] if name == "fp32" else QUANT_SIZES
    assert table.signatures == [signature_name(s) for s in sizes]
    for (h, w), sig, inp, out in zip(sizes, table.signatures, table.inputs, table.outputs, strict=True):
        assert inp.signature == out.signature == sig
        assert (inp.name, out.name) == ("image", "enhanced")
        assert inp.shape == out.shape == (1, h, w, 3)
        if name == "fp32":
            assert inp.dtype == out.dtype == "FLOAT32"
        else:
            assert inp.dtype == out.dtype == "INT8"
            assert (inp.zero_point, out.zero_point) == (-128, -128)
            assert math.isclose(inp.scale, 1 / 255, rel_tol=1e-6) and math.isclose(
                out.scale, 1 / 255, rel_tol=1e-6
            )


def _constant_bytes(path: Path) -> int:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    return sum(len(b.data) for b in model.buffers if b.data is not None)


def test_second_size_shares_the_weights(quant_models, cli_uint8: tuple[Path, str]) -> None:
    """Two signatures cost a second graph, not a second copy of the weights."""
    two = _constant_bytes(quant_models.tflite["qat"])
    one = _constant_bytes(cli_uint8[0])  # same model, first size only
    weights = sum(p.numel() for p in quant_models.fp32.parameters())
    assert one > weights  # int8 weights, int32 biases
    assert two < 1.1 * one, (two, one)


def test_sidecar(quant_models) -> None:
    meta = json.loads(sidecar_path(quant_models.tflite["qat"]).read_text())
    assert meta["format"] == "int8" and meta["quant"] == "qat"
    assert meta["model_config"]["width"] == 4
    assert [s["name"] for s in meta["signatures"]] == [signature_name(s) for s in QUANT_SIZES]
    assert meta["io"] == {
        "layout": "NHWC",
        "input": "image",
        "output": "enhanced",
        "dtype": "int8",
        "scale": 1 / 255,
        "zero_point": -128,
    }
    assert meta["float_ops"] == 0 and meta["source_checkpoint"] == str(quant_models.ckpt["qat"])
    assert {"torch", "torchao", "litert-torch", "ai-edge-litert"} <= meta["versions"].keys()
    fp32 = json.loads(sidecar_path(quant_models.tflite["fp32"]).read_text())
    assert fp32["format"] == "fp32" and fp32["quant"] is None and fp32["io"]["dtype"] == "float32"


def test_fp32_matches_pytorch(quant_models) -> None:
    interpreter = Interpreter(model_path=str(quant_models.tflite["fp32"]))
    for h, w in QUANT_SIZES[:1]:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        run = interpreter.get_signature_runner(signature_name((h, w)))
        out = run(image=x.permute(0, 2, 3, 1).numpy())["enhanced"]  # (1, h, w, 3)
        with torch.no_grad():
            ref = quant_models.fp32(x).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


def test_int8_weights_use_the_fake_quant_scales(quant_models) -> None:
    """The converter keeps QAT's weight scales (amax/127): no re-quantization on export. The
    three upsample convs are exported as phase kernels (qaie.quant.phases), with the scales
    their conversion gives them."""
    interpreter = Interpreter(model_path=str(quant_models.tflite["qat"]))
    tflite_scales = {
        tuple(np.round(d["quantization_parameters"]["scales"], 9))
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) > 1
    }
    qat = quant_models.qat
    ours = {
        tuple(np.round(qat.get_submodule(n.args[1].target).scale.numpy(), 9))
        for n in qat.graph.nodes
        if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default
    }
    example = torch.rand(1, 3, *QUANT_SIZES[0])
    converted = quantize.convert(quantize.reprepare(qat, example, dynamic=False), phases=True)
    phased = {
        tuple(np.round(getattr(converted, n.args[1].target).numpy(), 9))
        for n in converted.graph.nodes
        if n.op == "call_function" and "dequantize_per_channel" in str(n.target)
    }
    assert len(ours - tflite_scales) == 3 and phased <= tflite_scales


@pytest.mark.parametrize("name", ["ptq", "qat"])
def test_int8_runs_in_the_runtime(quant_models, name: str) -> None:
    model = TFLiteModel(quant_models.tflite[name], num_threads=1)
    assert model.is_int8
    for h, w in model.sizes:
        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = model.run(pixels)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8 and out.std() > 0


def test_inspect_command(quant_models, capsys) -> None:
    assert main(["inspect", str(quant_models.tflite["ptq"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {
        "ops",
        "float_ops",
        "quantize_ops",
        "dequantize_ops",
        "signatures",
        "inputs",
        "outputs",
    } <= data.keys()
    assert data["float_ops"] == 0
    assert main(["inspect", str(quant_models.tflite["fp32"])]) == 0
    text = capsys.readouterr().out
    assert "CONV_2D" in text and "[float]" in text and "float_ops:" in text
