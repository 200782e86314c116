"""Export EnhanceNet to ONNX for ONNX Runtime: FP32, or INT8 as QDQ with the trained scales.

INT8 is the PT2E reference graph (`qaie.quant.quantize.convert`) exported as it is: every
quantize/dequantize of the graph becomes a QuantizeLinear/DequantizeLinear at the QAT/PTQ
scale, so nothing is re-quantized. Three rewrites make it the usual deployable QDQ form:

- weights are stored as int8 (per output channel, symmetric, [-127, 127]: the reference's
  own integers, computed by torch's quantize op) behind a DequantizeLinear;
- conv biases are stored as int32 on the grid input scale * weight scale (the reference
  already rounds them to it), so ONNX Runtime fuses each DQ -> Conv -> Q into one integer conv;
- every int8 tensor, activations and weights, is stored as uint8 with its codes and zero point
  moved by 128 (the same values, rounded the same way). ONNX Runtime on x86 then fuses every
  convolution (with int8 activations it fuses only some: it converts int8 pairs to uint8
  only where no tensor is shared), and uint8 weights select its U8U8 kernels, which
  accumulate exactly; its U8S8 kernels (int8 weights) saturate int16 pair sums on CPUs
  without VNNI (vpmaddubsw): 42.9 dB parity instead of 49.1 on this project's AVX2 machine;
- the input and output are uint8 at scale 1/255, zero point 0, like the `.tflite`'s
  `--uint8-io`: pixel p is stored as p, and no float tensor is left at either end.

Layout NCHW (ONNX's own), batch 1, H and W dynamic: one file takes any photo in one pass (the
network's whole-photo output). FP32: float32 in [0, 1], the same layout. Opset 21.

One pass over a 12 MP photo holds every activation (gigabytes), so beside `FILE.onnx` go the six
stages of `qaie.quant.split` in windows of fixed sizes (default STAGE_WINDOW), one file each in
the folder `FILE.onnx.stages/` (``stage{k}_{H}x{W}.onnx``): with them `qaie.runtime.wholephoto`
computes the whole-photo output in bounded memory (`qaie.runtime.onnxrt` picks by a memory
budget). The stages are the same converted graph, split, with the same three rewrites; their
inputs and outputs are float32 NCHW (maps enter through their own QuantizeLinear and leave
through their DequantizeLinear: `qaie.runtime.floatstages`). The split's graphs have their
window's shapes in them (resizes, views), hence fixed sizes rather than dynamic ones.

Beside every `FILE.onnx` a sidecar `FILE.onnx.json` (as for `.tflite`): config, format, I/O,
op counts, the stages and their windows, versions and the source checkpoint. All are written
atomically, the stages first, the sidecar last.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.export import Dim
from torch.fx import GraphModule

from qaie.atomic import atomic_path
from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.nativelog import quiet_loggers
from qaie.nn.model import EnhanceNet
from qaie.quant import quantize
from qaie.quant.export import stage_signature_name
from qaie.quant.export_base import (
    Source,
    check_outputs,
    common_sidecar,
    io_summary,
    source_for,
    stage_graphs,
    write_export,
)
from qaie.runtime.onnxrt import INPUT_NAME, INSTALL_HINT, IO_META, OUTPUT_NAME, onnx_op_table, stage_folder
from qaie.runtime.wholephoto import check_window

OPSET = 21
_MAX_SIDE = 1 << 14
_TRACE_SIZE = (64, 96)  # any size: H and W are exported as dynamic
# The stage window: a 12 MP photo (3000x4000) in 4x4 windows, the fewest pixels computed twice
# for its size (`wholephoto.choose_window`), as the shipped .tflite.
STAGE_WINDOW = (808, 1064)


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    sidecar: Path
    format: str  # "fp32" | "int8"
    quant: str | None  # "qat" | "ptq" for INT8
    io: dict
    file_bytes: int
    seconds: float
    ops: dict[str, int]  # ONNX op type -> count, in the file
    stage_windows: list[Size]  # window sizes of the stage files (none: one pass only)

    def summary(self) -> list[str]:
        """What `qaie export` prints below its `wrote` line."""
        lines = [f"  any size (dynamic H, W); {io_summary(self.io)}"]
        for h, w in self.stage_windows:
            lines.append(f"  stages: 6 in {stage_folder(self.path)}/ (whole-photo output in {h}x{w} windows)")
        return lines


def check_onnx_output(out: Path, overwrite: bool = True) -> None:
    """Fail before any work if the onnx extra is missing, or `out` or its sidecar cannot be
    written (or exist, unless `overwrite`)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError:
        raise QaieError(INSTALL_HINT) from None
    check_outputs(out, overwrite)


def export_onnx(
    source: EnhanceNet | GraphModule,
    fmt: str,
    out: Path,
    *,
    calibration: Iterable[Tensor] | None = None,
    source_checkpoint: str | None = None,
    stages: bool = True,
    stage_windows: Iterable[Size] = (STAGE_WINDOW,),
    phases: bool = True,
) -> OnnxExportResult:
    """Write `source` to `out` (.onnx) with dynamic H and W, and its stages beside it.

    Args:
        source: an FP32 EnhanceNet, or a prepared QAT/PTQ graph (`qaie.quant.quantize`).
        fmt: "fp32" or "int8"; INT8 of an FP32 model first runs PTQ on `calibration`.
        out: the .onnx path; the sidecar goes to ``out`` + ".json".
        calibration: (B, 3, h, w) batches in [0, 1] for PTQ.
        source_checkpoint: recorded in the sidecar.
        stages: also write the stage files of each of `stage_windows` (`wholephoto.is_window`
            sizes); without them every photo runs in one pass, its memory growing with its size.
        phases: the stages' nearest 2x upsample + conv3x3 in phase form, up1 + head folded
            (`qaie.quant.phases`, as `.tflite` exports). They apply at fixed sizes only: the
            one-pass graph, which takes any size, keeps the upsamples.
    """
    import onnx

    out = Path(out)
    check_onnx_output(out)
    windows = list(dict.fromkeys(tuple(s) for s in stage_windows)) if stages else []
    for window in windows:
        check_window(window)
    net = source_for(fmt, source, calibration, phases)
    if net.fmt == "fp32":
        model = _to_onnx(net.net, {INPUT_NAME: torch.rand(1, 3, *_TRACE_SIZE)}, [OUTPUT_NAME], dynamic=True)
        io = {"dtype": "float32", "scale": None, "zero_point": None}
    else:
        model = _to_onnx(
            net.converted(), {INPUT_NAME: torch.rand(1, 3, *_TRACE_SIZE)}, [OUTPUT_NAME], dynamic=True
        )
        _integer_graph(model)
        _integer_io(model)
        io = {"dtype": "uint8", "scale": quantize.IO_SCALE, "zero_point": quantize.IO_ZERO_POINT + 128}
    meta = _write_stages(net, windows, stage_folder(out))
    io = {"layout": "NCHW", "input": INPUT_NAME, "output": OUTPUT_NAME, **io}
    for key in ("dtype", "scale", "zero_point"):
        onnx.helper.set_model_props(model, {**_props(model), f"{IO_META}{key}": str(io[key])})
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    ops = onnx_op_table(model)
    sidecar = write_export(
        out,
        data,
        lambda _: {
            **common_sidecar(out, net, io, len(data), source_checkpoint),
            "runtime": "onnxruntime",
            "opset": OPSET,
            "dynamic_size": True,
            "ops": dict(Counter(ops).most_common()),
            "stages": meta,
            "stage_windows": [list(w) for w in windows],
            "stage_phases": bool(windows) and net.phases,
        },
        ("onnx", "onnxscript", "onnxruntime"),
    )
    return OnnxExportResult(
        out, sidecar, fmt, net.quant, io, len(data), time.perf_counter() - net.started, ops, windows
    )


def _write_stages(net: Source, windows: list[Size], folder: Path) -> dict | None:
    """Each stage of each window size as ``folder/stage{k}_{H}x{W}.onnx`` (float I/O, the
    integer rewrites inside); the split's meta, None without windows."""
    meta = None
    for window in windows:
        graphs, meta = stage_graphs(net.at(window), window, net.config)
        for k, (graph, samples) in enumerate(graphs):
            model = _to_onnx(graph, dict(zip(graph.inputs, samples, strict=True)), graph.outputs)
            if net.fmt == "int8":
                _integer_graph(model)
            folder.mkdir(exist_ok=True)
            with atomic_path(folder / f"{stage_signature_name(k, window)}.onnx") as tmp:
                tmp.write_bytes(model.SerializeToString())
    return meta


def _integer_graph(model) -> None:
    """The converted graph's QDQ form as ONNX Runtime fuses it into integer kernels (see above)."""
    _int8_weights(model)
    _int32_biases(model)
    _uint8(model)


def _props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _to_onnx(module: torch.nn.Module, inputs: dict[str, Tensor], outputs: list[str], dynamic: bool = False):
    """torch.onnx (dynamo) export of `module` on `inputs` (positional, named): an
    onnx.ModelProto, with batch 1 and, if `dynamic`, dynamic H and W of its one input."""
    dynamic_shapes = None
    if dynamic:
        height = Dim("height", min=quantize.MIN_TRACED_SIDE, max=_MAX_SIDE)
        width = Dim("width", min=quantize.MIN_TRACED_SIDE, max=_MAX_SIDE)
        dynamic_shapes = ({2: height, 3: width},)
    with torch.no_grad(), quiet_loggers("torch.onnx"):
        program = torch.onnx.export(
            quantize.for_inference(module),
            tuple(inputs.values()),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=outputs,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    for value in (*model.graph.input, *model.graph.output):
        del value.metadata_props[:]  # torch.export bookkeeping, not the model's
    return model


def _initializers(model) -> dict[str, object]:
    return {t.name: t for t in model.graph.initializer}


def _array(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(_initializers(model)[name])


def _set_initializer(model, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            del graph.initializer[i]
            break
    graph.initializer.append(numpy_helper.from_array(value, name))


def _producers(model) -> dict[str, object]:
    return {o: n for n in model.graph.node for o in n.output}


def _int8_weights(model) -> None:
    """QuantizeLinear(float weight) -> Clip(-127, 127) -> DequantizeLinear  ==>  int8 weight ->
    DequantizeLinear: the reference's own integers (torch's per-channel quantize computes them)."""
    graph, inits, producer = model.graph, _initializers(model), _producers(model)
    dead = []
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
            continue
        clip = producer[dq.input[0]]
        q = producer.get(clip.input[0]) if clip.op_type == "Clip" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inits:
            continue
        scale, zero = _array(model, q.input[1]), _array(model, q.input[2])
        low, high = (int(_array(model, name)) for name in clip.input[1:3])
        axis = next(a.i for a in q.attribute if a.name == "axis")
        weight = torch.from_numpy(_array(model, q.input[0]).copy())
        codes = torch.ops.quantized_decomposed.quantize_per_channel(
            weight,
            torch.from_numpy(scale.copy()).double(),
            torch.from_numpy(zero.copy()).long(),
            axis,
            low,
            high,
            torch.int8,
        )
        name = f"{q.input[0]}_int8"
        _set_initializer(model, name, codes.numpy())
        dq.input[0] = name
        dead += [q, clip]
    for node in dead:
        graph.node.remove(node)
    _drop_unused_initializers(model)


def _int32_biases(model) -> None:
    """A float conv bias -> int32 on the grid input scale * weight scale, behind a
    DequantizeLinear: the form ONNX Runtime fuses into one integer conv. Exact: the reference
    (`quantize.convert`) already rounded each bias to that grid. Named by the conv, whose input
    scale sets the grid: convs that share a bias (the edge strips of `qaie.quant.phases.fold`)
    each get their own."""
    from onnx import helper

    graph, inits, producer = model.graph, _initializers(model), _producers(model)
    for conv in [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits]:
        dq_x, dq_w = producer[conv.input[0]], producer[conv.input[1]]
        assert dq_x.op_type == dq_w.op_type == "DequantizeLinear", (dq_x.op_type, dq_w.op_type)
        step = _array(model, dq_x.input[1]).astype(np.float64) * _array(model, dq_w.input[1]).astype(
            np.float64
        )
        bias = _array(model, conv.input[2]).astype(np.float64)
        codes = np.rint(bias / step)
        assert np.all(np.abs(codes) < 2**31), "bias out of int32 range"
        name = f"{conv.output[0]}_bias_int32"
        _set_initializer(model, name, codes.astype(np.int32))
        _set_initializer(model, f"{name}_scale", step.astype(np.float32))
        _set_initializer(model, f"{name}_zero_point", np.zeros_like(codes, np.int32))
        graph.node.append(
            helper.make_node(
                "DequantizeLinear", [name, f"{name}_scale", f"{name}_zero_point"], [f"{name}_dq"], axis=0
            )
        )
        conv.input[2] = f"{name}_dq"
    _drop_unused_initializers(model)
    _toposort(model)


def _uint8(model) -> None:
    """Every int8 tensor of the QDQ graph (activations and weights) -> uint8, its codes and zero
    point moved by 128: the same values, rounded and clamped the same way."""
    graph, inits = model.graph, _initializers(model)
    shifted: dict[str, str] = {}

    def shift(name: str) -> str:
        if name not in shifted:
            shifted[name] = f"{name}_uint8"
            _set_initializer(
                model, shifted[name], (_array(model, name).astype(np.int16) + 128).astype(np.uint8)
            )
        return shifted[name]

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if _array(model, node.input[2]).dtype != np.int8:
            continue  # int32 biases
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            node.input[0] = shift(node.input[0])  # a weight
        node.input[2] = shift(node.input[2])
    del graph.value_info[:]  # the exporter's recorded int8 types are stale now
    _drop_unused_initializers(model)


def _integer_io(model) -> None:
    """Float image -> QuantizeLinear  ==>  uint8 image; DequantizeLinear -> float output  ==>
    uint8 output (scale 1/255, zero point 0 at both ends, as the reference fixes them)."""
    from onnx import TensorProto

    graph, producer = model.graph, _producers(model)
    (inp,), (outp,) = graph.input, graph.output
    first = [n for n in graph.node if inp.name in n.input and n.op_type == "QuantizeLinear"]
    others = [n for n in graph.node if inp.name in n.input and n.op_type not in ("QuantizeLinear", "Shape")]
    last = producer[outp.name]
    assert first and not others and last.op_type == "DequantizeLinear", "unexpected I/O of the QDQ graph"
    for q in first:
        assert float(_array(model, q.input[1])) == np.float32(quantize.IO_SCALE), "input scale is not 1/255"
        _rename_input(model, q.output[0], inp.name)
        graph.node.remove(q)
    assert float(_array(model, last.input[1])) == np.float32(quantize.IO_SCALE), "output scale is not 1/255"
    quantized = last.input[0]
    graph.node.remove(last)
    _rename_output(model, quantized, outp.name)
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    outp.type.tensor_type.elem_type = TensorProto.UINT8
    _drop_unused_initializers(model)


def _rename_input(model, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _rename_output(model, old: str, new: str) -> None:
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]


def _drop_unused_initializers(model) -> None:
    used = {name for n in model.graph.node for name in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _toposort(model) -> None:
    """Nodes in dependency order (ONNX requires it; appended DequantizeLinears are not)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        assert len(rest) < len(pending), "cycle in the ONNX graph"
        pending = rest
    nodes = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)
