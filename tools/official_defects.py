"""The official INT8 files with their two quantization defects undone, one at a time (README,
"The official release, re-exported"): what costs their fidelity to the FP32 network.

1. `gate`: each encoder's gate a*b reads its tanh outputs (step 1/128) instead of the copies
   requantized to the decoder concatenation's step (`qaie inspect` lists them: 15x to 93x
   coarser, about 3 values per tanh in the 1920x1080 file).
2. `gate+variance`: also each instance norm's squared differences on the step of the variance
   that averages them, not on a step up to 46x coarser (whose small squares round to 0).

Both are edits of tensor wiring and quantization parameters only: weights, ops and every other
scale stay the authors'. Writes FILE stem + `_gate.tflite` and `_gate_variance.tflite` to
--out (keep them under the git-ignored runs/: they hold the authors' weights).

    python tools/official_defects.py ../shared/models/qatie/*.tflite --out runs/official
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ai_edge_litert.tools import flatbuffer_utils as fb

from qaie.quant.tflite_import import TFLiteGraph


class Graph(TFLiteGraph):
    """The authors' graph, with tensor producers and readers for the edits."""

    def __init__(self, path: Path) -> None:
        super().__init__(fb.read_model(str(path)))
        self.producer = {t: op for op in self.graph.operators for t in op.outputs}

    def reader(self, tensor: int, kind: str):
        return next(op for op in self.graph.operators if tensor in op.inputs and self.kind(op) == kind)


def gate_reads_tanh(g: Graph) -> int:
    """Feed every MUL whose inputs are requantized tanh outputs from the tanh outputs themselves."""
    count = 0
    for mul in g.ops("MUL"):
        sources = [g.producer.get(t) for t in mul.inputs]
        if all(s is not None and g.kind(s) == "QUANTIZE" for s in sources):
            tanhs = [g.producer[s.inputs[0]] for s in sources]
            if all(g.kind(t) == "TANH" for t in tanhs):
                mul.inputs = [s.inputs[0] for s in sources]
                count += 1
    return count


def squares_on_variance_step(g: Graph) -> int:
    """Give each SQUARED_DIFFERENCE output the step and zero point of the MEAN that averages it."""
    ops = g.ops("SQUARED_DIFFERENCE")
    for op in ops:
        squares = g.graph.tensors[op.outputs[0]].quantization
        variance = g.graph.tensors[g.reader(op.outputs[0], "MEAN").outputs[0]].quantization
        squares.scale, squares.zeroPoint = list(variance.scale), list(variance.zeroPoint)
    return len(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="the official INT8 .tflite files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the edited files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        g = Graph(path)
        gates = gate_reads_tanh(g)
        fb.write_model(g.model, str(args.out / f"{path.stem}_gate.tflite"))
        norms = squares_on_variance_step(g)
        fb.write_model(g.model, str(args.out / f"{path.stem}_gate_variance.tflite"))
        print(f"{path.name}: {gates} gates read their tanh, {norms} norms' squares on the variance step")


if __name__ == "__main__":
    main()
