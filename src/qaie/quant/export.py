"""Export EnhanceNet to LiteRT (`.tflite`) with litert-torch: FP32, or integer-only INT8.

The I/O contract (what `qaie.runtime.litert` relies on):
- one signature per exported size, named ``enhance_{H}x{W}``, all in one file (they share
  the weight buffers, so a second size adds only its graph, not a second copy of the weights);
- each signature has exactly one input ``image`` and one output ``enhanced``, both
  (1, H, W, 3) NHWC RGB;
- FP32: float32 in [0, 1]. INT8: int8 with scale 1/255, zero point -128 (pixel value
  p in 0..255 is stored as p - 128), or with ``uint8_io`` uint8 with scale 1/255, zero point 0;
- beside each ``enhance_{H}x{W}``, the six stage signatures ``stage{k}_{H}x{W}`` of the
  network split at its instance-norm statistics (qaie.quant.split), whose inputs and outputs are
  named feature maps and statistics, int8 at their trained scales in an INT8 file: with them
  `qaie.runtime.wholephoto` computes the whole-photo output of any photo in windows of that size.
  The sidecar's ``stages`` entry says how they connect.

INT8 files are integer-only: every op between input and output runs on int8/int32 tensors.
With int8 I/O there is no QUANTIZE or DEQUANTIZE op at all; uint8 I/O adds one uint8->int8
QUANTIZE at the input and one int8->uint8 QUANTIZE at the output of each signature.

Beside every `FILE.tflite` a sidecar `FILE.tflite.json` records config, format, signatures,
I/O quantization, versions and the source checkpoint. Both are written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.fx import GraphModule

from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.nativelog import quiet_native_stderr
from qaie.nn.model import EnhanceNet
from qaie.quant import quantize
from qaie.quant.export_base import (
    Format,
    StageGraph,
    check_outputs,
    common_sidecar,
    export_sizes,
    io_summary,
    source_for,
    stage_graphs,
    write_export,
)
from qaie.quant.tflite_io import TENSOR_TYPES, integer_io, op_codes
from qaie.quant.tflite_ops import OpTable, inspect_tflite
from qaie.runtime import registry
from qaie.runtime.wholephoto import is_window

INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"


def signature_name(size: Size) -> str:
    return f"enhance_{size[0]}x{size[1]}"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    format: Format
    quant: str | None  # "qat" | "ptq" for INT8, None for FP32
    sizes: list[Size]
    signatures: list[str]
    io: dict  # dtype, scale, zero_point, layout of every input and output
    file_bytes: int
    seconds: float
    ops: OpTable
    stages: dict | None  # qaie.quant.split meta: how the stage signatures connect (None: none)

    def summary(self) -> list[str]:
        """What `qaie export` prints below its `wrote` line."""
        lines = [f"  signatures: {', '.join(self.signatures)}"]
        if self.stages:
            lines.append(
                f"  stages: {len(self.stages['stages'])} per size (whole-photo output in windows of each size)"
            )
        ops = self.ops
        return [
            *lines,
            "  " + io_summary(self.io, "(1, H, W, 3) "),
            f"  ops: {ops.total_ops}, float {ops.float_ops}, quantize {ops.quantize_ops}"
            f" (requantize {ops.requantize_ops}), dequantize {ops.dequantize_ops}",
        ]


class _NhwcIo(nn.Module):
    """(1, H, W, 3) in -> network (NCHW) -> (1, H, W, 3) out, named for the signature."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        out = self.net(image.permute(0, 3, 1, 2))  # (1, 3, H, W)
        return {OUTPUT_NAME: out.permute(0, 2, 3, 1)}


class _NhwcStage(nn.Module):
    """One stage (`export_base.StageGraph`) with NHWC tensors by name in and out (maps, statistics)."""

    def __init__(self, stage: StageGraph) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, **tensors: Tensor) -> dict[str, Tensor]:
        outputs = self.stage(*(tensors[name].permute(0, 3, 1, 2) for name in self.stage.inputs))
        return {
            name: value.permute(0, 2, 3, 1) for name, value in zip(self.stage.outputs, outputs, strict=True)
        }


def stage_signature_name(stage: int, size: Size) -> str:
    return f"stage{stage}_{size[0]}x{size[1]}"


def _stage_signatures(
    static: nn.Module, size: Size, config: ModelConfig
) -> tuple[dict[str, tuple[nn.Module, dict]], dict]:
    """The stage signatures of one window size (module, NHWC sample inputs by name) and their meta."""
    stages, meta = stage_graphs(static, size, config)
    signatures = {}
    for k, (stage, samples) in enumerate(stages):
        inputs = {name: t.permute(0, 2, 3, 1) for name, t in zip(stage.inputs, samples, strict=True)}
        signatures[stage_signature_name(k, size)] = (_NhwcStage(stage), inputs)
    return signatures, meta


@contextlib.contextmanager
def _strict_static_qdq() -> Iterator[None]:
    """Run the litert-torch (0.10) converter in strict static Q/DQ mode.

    Static: Q/DQ pairs become int8 kernels. Strict: the converter keeps exactly the
    quantization we placed (in its default mode it drops an int8->int8 requantize in front of
    a concatenation, then fails CONCATENATION's equal-scale rule). litert-torch's v1 path does
    not expose the flags, so its config factory is wrapped for the duration of one conversion.
    """
    from litert_torch._convert import litert_converter

    original = litert_converter.converter_api_ext

    class _Patched:
        def __getattr__(self, name: str):
            return getattr(original, name)

        @staticmethod
        def ConvertToTFLConfig():
            config = original.ConvertToTFLConfig()
            config.qdq_conversion_mode = "STATIC"
            config.strict_qdq_mode = True
            return config

    litert_converter.converter_api_ext = _Patched()
    try:
        yield
    finally:
        litert_converter.converter_api_ext = original


_PAD, _RELU_0_TO_1 = 34, 152  # tflite schema BuiltinOperator


def _xnnpack_friendly(model_bytes: bytes) -> bytes:
    """The same integer function in fewer kernels (docs/performance.md): each PAD gets one reader
    and no identity clamp is left."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    codes = op_codes(model)
    for graph in model.subgraphs:
        _split_shared_pads(graph, codes)
        _drop_identity_clamps(graph, codes)
    return bytes(fb.convert_object_to_bytearray(model))


def _split_shared_pads(graph, codes: list[int]) -> None:
    """A PAD read by several ops (the two stride-2 convolutions of a gated encoder) becomes one
    PAD per reader: XNNPACK folds a PAD into the convolution that reads it, but only into its
    sole reader, else it runs it as a copy of the padded map."""
    for op in list(graph.operators):
        if codes[op.opcodeIndex] != _PAD:
            continue
        padded = int(op.outputs[0])
        readers = [r for r in graph.operators if padded in r.inputs]
        if padded in graph.outputs:
            continue
        for reader in readers[1:]:
            graph.tensors.append(copy.deepcopy(graph.tensors[padded]))
            twin = copy.deepcopy(op)
            twin.outputs = [len(graph.tensors) - 1]
            graph.operators.insert(graph.operators.index(reader), twin)
            reader.inputs = [twin.outputs[0] if int(t) == padded else int(t) for t in reader.inputs]


def _drop_identity_clamps(graph, codes: list[int]) -> None:
    """Remove each RELU_0_TO_1 that cannot change a value: its input already has the output's
    quantization and that int8 grid lies inside [0, 1] (the output clamp at 1/255, zero point
    -128: `quantize.annotate_output_clamp`). TFLite runs it outside XNNPACK, single-threaded,
    as a requantize per element; its producer now writes the clamp's output tensor."""
    for op in list(graph.operators):
        if codes[op.opcodeIndex] != _RELU_0_TO_1 or not _is_identity_clamp(graph, op):
            continue
        (x,), (y,) = op.inputs, op.outputs
        producers = [p for p in graph.operators if x in p.outputs]
        readers = [r for r in graph.operators if x in r.inputs]
        if len(producers) != 1 or readers != [op] or x in graph.outputs:
            continue
        producers[0].outputs = [y if t == x else t for t in producers[0].outputs]
        graph.operators.remove(op)


def _is_identity_clamp(graph, op) -> bool:
    """int8 in and out on one grid whose lowest value is 0 and highest at most 1."""
    x, y = (graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]])
    qx, qy = x.quantization, y.quantization
    if x.type != TENSOR_TYPES["int8"] or qx is None or qy is None or qx.scale is None or len(qx.scale) != 1:
        return False
    same = list(qx.scale) == list(qy.scale) and list(qx.zeroPoint) == list(qy.zeroPoint)
    return same and int(qx.zeroPoint[0]) == -128 and 255 * float(qx.scale[0]) <= 1 + 1e-6


@contextlib.contextmanager
def _litert_progress(show: bool) -> Iterator[None]:
    """litert-torch prints a line per conversion stage: only to an interactive terminal."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "y" if show else "n"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _convert(signatures: dict[str, tuple[nn.Module, dict[str, Tensor]]], int8: bool) -> bytes:
    """The signatures as one .tflite; the converter's native log lines only with --debug."""
    with quiet_native_stderr():
        import litert_torch

        converter = litert_torch.Converter()
        for name, (module, samples) in signatures.items():
            converter.signature(name, quantize.for_inference(module), sample_kwargs=samples)
        with (
            _litert_progress(sys.stderr.isatty()),
            _strict_static_qdq() if int8 else contextlib.nullcontext(),
        ):
            return converter.convert().model_content()


def check_output(out: Path, overwrite: bool = True) -> None:
    """Fail before any work if `out` or its sidecar cannot be written (or exist, unless
    `overwrite`), or `out` does not end in .tflite (`qaie enhance` tells models by it)."""
    if registry.find(out) is not registry.by_name("litert"):
        raise QaieError(f"{out}: an exported model's name must end in .tflite")
    check_outputs(out, overwrite)


def export_tflite(
    source: EnhanceNet | GraphModule,
    fmt: Format,
    sizes: list[Size],
    out: Path,
    *,
    uint8_io: bool = False,
    calibration: Iterable[Tensor] | None = None,
    source_checkpoint: str | None = None,
    stages: bool = True,
    phases: bool = True,
) -> ExportResult:
    """Convert `source` to `out` (.tflite) with one signature per (H, W) in `sizes`.

    Args:
        source: an FP32 EnhanceNet, or a prepared QAT/PTQ graph (`qaie.quant.quantize`), whose
            learned/calibrated scales are exported as they are.
        fmt: "fp32" or "int8". INT8 of an FP32 model first runs PTQ on `calibration`.
        sizes: input sizes to export, each becomes signature ``enhance_{H}x{W}``.
        out: the .tflite path; the sidecar goes to ``out`` + ".json".
        uint8_io: INT8 only: uint8 input/output (zero point 0) instead of int8 (-128).
        calibration: (B, 3, h, w) batches in [0, 1] for PTQ (any h, w).
        source_checkpoint: recorded in the sidecar.
        stages: also export the stage signatures ``stage{k}_{H}x{W}`` (qaie.quant.split) of each
            size that can be a window (`wholephoto.is_window`: sides multiples of 8, at least
            88), with which the runtime enhances photos of any size as one whole photo.
            Without them a larger photo is enhanced tile by tile, each tile with its own
            statistics.
        phases: each nearest 2x upsample + conv3x3 in phase form (`qaie.quant.phases`: 4/9 of
            its multiply-adds; INT8 quantizes the phase kernels from the trained 3x3 weights).
    """
    out = Path(out)
    check_output(out)
    sizes = export_sizes(sizes)
    if fmt == "fp32" and uint8_io:
        raise QaieError("--uint8-io applies to INT8 exports only")
    net = source_for(fmt, source, calibration, phases)
    graphs, meta = {}, None
    for size in sizes:  # converted graphs have fixed shapes: one per size, same quant params
        static = net.at(size)
        graphs[signature_name(size)] = (_NhwcIo(static), {INPUT_NAME: torch.rand(1, *size, 3)})
        if stages and is_window(size):
            signatures, meta = _stage_signatures(static, size, net.config)
            graphs |= signatures
    if net.fmt == "fp32":
        with torch.no_grad():
            model_bytes = _convert(graphs, int8=False)
        io = {"dtype": "float32", "scale": None, "zero_point": None}
    else:
        io_dtype = "uint8" if uint8_io else "int8"
        model_bytes = _xnnpack_friendly(integer_io(_convert(graphs, int8=True), io_dtype))
        io = {
            "dtype": io_dtype,
            "scale": quantize.IO_SCALE,
            "zero_point": quantize.IO_ZERO_POINT + (128 if uint8_io else 0),
        }
    io = {"layout": "NHWC", "input": INPUT_NAME, "output": OUTPUT_NAME, **io}
    tables: list[OpTable] = []

    def sidecar(written: Path) -> dict:
        tables.append(inspect_tflite(written))
        ops = tables[0]
        return {
            **common_sidecar(out, net, io, len(model_bytes), source_checkpoint),
            "signatures": [{"name": signature_name(s), "height": s[0], "width": s[1]} for s in sizes],
            "stages": meta,
            "phases": net.phases,
            "float_ops": ops.float_ops,
            "quantize_ops": ops.quantize_ops,
            "requantize_ops": ops.requantize_ops,
            "dequantize_ops": ops.dequantize_ops,
        }

    side = write_export(out, model_bytes, sidecar, ("litert-torch", "ai-edge-litert"))
    return ExportResult(
        path=out,
        sidecar=side,
        format=fmt,
        quant=net.quant,
        sizes=sizes,
        signatures=[signature_name(s) for s in sizes],
        io=io,
        file_bytes=len(model_bytes),
        seconds=time.perf_counter() - net.started,
        ops=tables[0],
        stages=meta,
    )
