"""One row type and one formatter for the op tables of `qaie inspect` (`.tflite`, `.onnx`).

Torch-free: `qaie.quant.tflite_ops` reads a `.tflite`'s ops with it, `qaie.runtime.onnxrt`
the kernels ONNX Runtime runs. Each reader says which rows compute in float.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

Kind = tuple[str, tuple[str, ...], tuple[str, ...]]  # (op, input types, output types)


@dataclass(frozen=True)
class OpRow:
    """One kind of op: its name, input/output element types, how often it occurs, and whether
    it computes in float (the reader's rule)."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    count: int
    is_float: bool


def op_rows(
    counts: Counter[Kind], is_float: Callable[[str, tuple[str, ...], tuple[str, ...]], bool]
) -> list[OpRow]:
    """The counted kinds as rows, sorted by op and types."""
    return [OpRow(op, ins, outs, n, is_float(op, ins, outs)) for (op, ins, outs), n in sorted(counts.items())]


def format_rows(rows: list[OpRow], what: str = "op") -> list[str]:
    """A header and one line per row, float rows flagged."""
    lines = [f"{'count':>5}  {what:<26} inputs -> outputs"]
    for r in rows:
        flag = "  [float]" if r.is_float else ""
        lines.append(f"{r.count:>5}  {r.op:<26} {','.join(r.inputs)} -> {','.join(r.outputs)}{flag}")
    return lines
