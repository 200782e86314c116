"""Integer I/O of a converted file of several signatures (`qaie.quant.tflite_io.integer_io`):
every signature must allocate in LiteRT and compute what the float-I/O file computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from qaie.config import ModelConfig
from qaie.nn.model import EnhanceNet
from qaie.quant import export, quantize
from qaie.quant.export_base import source_for
from qaie.quant.tflite_io import integer_io
from qaie.quant.tflite_ops import inspect_tflite

pytestmark = pytest.mark.slow

SIZE = (88, 88)  # the smallest stage window


@pytest.fixture(scope="module")
def float_io() -> bytes:
    """Stages 0 and 1 of a width-4 PTQ network at SIZE converted into one file with float I/O:
    32 tensors in the first subgraph, 13 float inputs and outputs in the two. TFLite's
    modify_model_interface erased each float I/O tensor at position 32 - 13 or above, in
    either subgraph, without renumbering the others: a corrupt file."""
    torch.manual_seed(0)
    batch = torch.rand(4, 3, 32, 32)
    ptq = quantize.prepare_ptq(EnhanceNet(ModelConfig(width=4)).eval(), batch[:2])
    quantize.calibrate(ptq, [batch])
    stages, _ = export._stage_signatures(source_for("int8", ptq, None).at(SIZE), SIZE, ModelConfig(width=4))
    return export._convert(dict(list(stages.items())[:2]), int8=True)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_integer_io_keeps_every_signature(float_io: bytes, dtype: str, tmp_path: Path) -> None:
    path = tmp_path / f"{dtype}.tflite"
    path.write_bytes(integer_io(float_io, dtype))
    table = inspect_tflite(path)
    assert table.dequantize_ops == table.float_ops == 0
    assert table.quantize_ops == (0 if dtype == "int8" else 13)  # uint8: one per input and output
    floating, integer = Interpreter(model_content=float_io), Interpreter(model_path=str(path))
    rng = np.random.default_rng(0)
    assert list(integer.get_signature_list()) == ["stage0_88x88", "stage1_88x88"]
    for key in integer.get_signature_list():
        runner = integer.get_signature_runner(key)  # allocates its subgraph
        codes, values = {}, {}
        for name, detail in runner.get_input_details().items():
            assert detail["dtype"] == np.dtype(dtype)
            low, high = np.iinfo(detail["dtype"]).min, np.iinfo(detail["dtype"]).max
            codes[name] = rng.integers(low, high + 1, detail["shape"]).astype(detail["dtype"])
            scale, zero = detail["quantization"]
            values[name] = ((codes[name].astype(np.float32) - zero) * scale).astype(np.float32)
        got, want = runner(**codes), floating.get_signature_runner(key)(**values)
        assert got.keys() == want.keys()
        for name, detail in runner.get_output_details().items():
            assert got[name].dtype == np.dtype(dtype)
            scale, zero = detail["quantization"]
            np.testing.assert_array_equal(
                got[name], np.round(want[name] / scale) + zero, err_msg=f"{key} {name}"
            )
