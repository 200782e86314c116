"""What is inside a `.tflite` file: op table, float ops, Q/DQ ops, signatures and their I/O.

Reads the flatbuffer with the schema reader that ai-edge-litert ships (no interpreter, no
torch: the runtime side may import this module).

Definitions (over every op of every subgraph in the file):
- ``float_ops``: ops with at least one floating-point (float16/32/64, bfloat16) input or
  output tensor. An integer-only model has 0; a model with float I/O has at least its
  edge QUANTIZE/DEQUANTIZE.
- ``quantize_ops``: QUANTIZE ops, of which ``requantize_ops`` take an integer input
  (int8 -> int8 rescale, or uint8 <-> int8 at uint8 I/O edges): integer-only ops.
- ``dequantize_ops``: DEQUANTIZE ops.
- ``requantizations``: each requantize, with the op whose output it rescales and how much
  coarser its step is. A converter adds them where an int8 op needs one scale on all its
  inputs (TFLite's CONCATENATION): a tanh (step 1/128) requantized to the step of the
  features it is concatenated with keeps only a few of its 256 values, and any op reading
  the copy (the authors' gates a*b) computes with those.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from qaie.errors import QaieError
from qaie.runtime.optable import OpRow, format_rows, op_rows

_FLOAT_TYPES = {"FLOAT16", "FLOAT32", "FLOAT64", "BFLOAT16"}
T = TypeVar("T")


def _is_float(op: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> bool:
    """A floating-point input or output tensor."""
    return any(t in _FLOAT_TYPES for t in inputs + outputs)


@dataclass(frozen=True)
class TensorInfo:
    """A signature input or output: shape (NHWC for our models), dtype and quantization."""

    signature: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True)
class Requantization:
    """An integer QUANTIZE: the op whose output it rescales ("input" for a graph input) and
    the steps before and after. `coarser` = out_scale / in_scale (1: only the zero point or the
    dtype changes, as at uint8 I/O; 92.7: 256 input values land on about 3 output values)."""

    producer: str
    in_scale: float
    out_scale: float

    @property
    def coarser(self) -> float:
        return self.out_scale / self.in_scale


@dataclass(frozen=True)
class OpTable:
    ops: list[OpRow]
    signatures: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    requantizations: list[Requantization]

    @property
    def float_ops(self) -> int:
        return sum(r.count for r in self.ops if r.is_float)

    @property
    def quantize_ops(self) -> int:
        return sum(r.count for r in self.ops if r.op == "QUANTIZE")

    @property
    def requantize_ops(self) -> int:
        return sum(r.count for r in self.ops if r.op == "QUANTIZE" and not r.is_float)

    @property
    def dequantize_ops(self) -> int:
        return sum(r.count for r in self.ops if r.op == "DEQUANTIZE")

    @property
    def total_ops(self) -> int:
        return sum(r.count for r in self.ops)

    def to_json(self) -> dict:
        return {
            "ops": [asdict(r) for r in self.ops],
            "total_ops": self.total_ops,
            "float_ops": self.float_ops,
            "quantize_ops": self.quantize_ops,
            "requantize_ops": self.requantize_ops,
            "dequantize_ops": self.dequantize_ops,
            "requantizations": [{**asdict(r), "coarser": r.coarser} for r in self.requantizations],
            "signatures": self.signatures,
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
        }


def read_tflite(path: str | os.PathLike, parse: Callable[[bytes], T], *, advice: str, corrupt: str = "") -> T:
    """`parse(data)` of a .tflite's bytes, or a one-line QaieError: unreadable, not a TFLite
    flatbuffer (`advice` says what to give), or damaged (`corrupt` says what to do)."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise QaieError(f"{path}: cannot read ({err.strerror}); give an existing .tflite file") from err
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise QaieError(f"{path}: not a TFLite model (no TFL3 identifier); {advice}")
    try:
        return parse(data)
    except Exception as err:  # flatbuffers follows offsets unchecked: a damaged file fails anywhere
        raise QaieError(
            f"{path}: truncated or corrupt TFLite model (its flatbuffer does not parse){corrupt}"
        ) from err


def inspect_tflite(path: Path) -> OpTable:
    """Op table of every subgraph in `path`, plus each signature's inputs and outputs."""
    from ai_edge_litert import schema_py_generated as schema

    return read_tflite(
        path,
        lambda data: _op_table(schema.Model.GetRootAs(data, 0)),
        advice="give a .tflite file",
        corrupt="; export it again",
    )


def _op_table(model) -> OpTable:  # model: schema.Model
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def tensor_dtype(graph, index: int) -> str:
        return type_names[graph.Tensors(index).Type()]

    def qparams(graph, index: int) -> tuple[float | None, int | None]:
        """A per-tensor quantized tensor's (scale, zero point); (None, None) otherwise."""
        q = graph.Tensors(index).Quantization()
        if q is None or q.ScaleLength() != 1:
            return None, None
        return float(q.Scale(0)), int(q.ZeroPoint(0))

    counts: Counter[tuple[str, tuple[str, ...], tuple[str, ...]]] = Counter()
    requantizations = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        producers: dict[int, str] = {}
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(fb.get_builtin_code_from_operator_code(code), "CUSTOM")
            if name == "CUSTOM" and code.CustomCode():
                name = f"CUSTOM:{code.CustomCode().decode()}"
            ins = tuple(tensor_dtype(graph, i) for i in op.InputsAsNumpy() if i >= 0)
            outs = tuple(tensor_dtype(graph, i) for i in op.OutputsAsNumpy() if i >= 0)
            counts[(name, ins, outs)] += 1
            source, target = int(op.Inputs(0)), int(op.Outputs(0))
            if name == "QUANTIZE" and not _is_float(name, ins, outs):
                (in_scale, _), (out_scale, _) = qparams(graph, source), qparams(graph, target)
                if in_scale and out_scale:
                    requantizations.append(
                        Requantization(producers.get(source, "input"), in_scale, out_scale)
                    )
            producers.update((int(t), name) for t in op.OutputsAsNumpy())

    def tensor_info(sig_name: str, graph, tensor_map) -> TensorInfo:
        index = tensor_map.TensorIndex()
        t = graph.Tensors(index)
        scale, zero_point = qparams(graph, index)
        return TensorInfo(
            signature=sig_name,
            name=tensor_map.Name().decode(),
            shape=tuple(int(d) for d in t.ShapeAsNumpy()),
            dtype=type_names[t.Type()],
            scale=scale,
            zero_point=zero_point,
        )

    signatures, inputs, outputs = [], [], []
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        name = sig.SignatureKey().decode()
        graph = model.Subgraphs(sig.SubgraphIndex())
        signatures.append(name)
        inputs += [tensor_info(name, graph, sig.Inputs(i)) for i in range(sig.InputsLength())]
        outputs += [tensor_info(name, graph, sig.Outputs(i)) for i in range(sig.OutputsLength())]

    return OpTable(op_rows(counts, _is_float), signatures, inputs, outputs, requantizations)


def format_table(table: OpTable) -> str:
    """Human-readable op table (what `qaie inspect` prints without --json)."""
    lines = format_rows(table.ops)
    lines.append(
        f"total_ops: {table.total_ops}  float_ops: {table.float_ops}  quantize_ops: {table.quantize_ops}"
        f" (requantize {table.requantize_ops})  dequantize_ops: {table.dequantize_ops}"
    )
    for r in table.requantizations:
        what = "graph input" if r.producer == "input" else f"{r.producer} output"
        lines.append(
            f"requantize: {what}, step {r.in_scale:.6g} -> {r.out_scale:.6g} ({r.coarser:.3g}x coarser)"
        )
    for t in table.inputs + table.outputs:
        kind = "input " if t in table.inputs else "output"
        q = f" scale={t.scale:.8g} zero_point={t.zero_point}" if t.scale is not None else ""
        lines.append(f"{t.signature}: {kind} {t.name} {list(t.shape)} {t.dtype}{q}")
    return "\n".join(lines)
