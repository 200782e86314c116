"""Integer inputs and outputs for a converted `.tflite`: its float I/O edges made int8 or uint8.

The converter gives every signature float inputs, each read by one QUANTIZE, and float outputs,
each written by one DEQUANTIZE. `integer_io` rewrites those edges in every subgraph and renumbers
each subgraph's tensors. TFLite's own tool for this (modify_model_interface) is not used: it
erases tensors at positions counted from the first subgraph alone, without renumbering the
others, which corrupts a file of many signatures.
"""

from __future__ import annotations

import copy

TENSOR_TYPES = {"float32": 0, "int8": 9, "uint8": 3}  # tflite schema TensorType values
QUANTIZE, DEQUANTIZE = 114, 6  # tflite schema BuiltinOperator values


def op_codes(model) -> list[int]:
    """The builtin operator of each operator code of `model` (a schema ModelT)."""
    return [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]


def integer_io(model_bytes: bytes, dtype: str) -> bytes:
    """`model_bytes` with `dtype` ("int8" or "uint8") inputs and outputs in every signature.

    int8: each edge op is removed and its int8 tensor becomes the input or output. uint8: each
    float tensor becomes uint8 on the int8 tensor's step with its zero point moved by 128, and
    each edge op a QUANTIZE between the two (uint8 -> int8 in, int8 -> uint8 out).
    """
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    codes = op_codes(model)
    for index, graph in enumerate(model.subgraphs):
        signatures = [s for s in model.signatureDefs if s.subgraphIndex == index]
        for ends, code in ((graph.inputs, QUANTIZE), (graph.outputs, DEQUANTIZE)):
            for position, tensor in enumerate(ends):
                if graph.tensors[tensor].type != TENSOR_TYPES["float32"]:
                    continue
                op = _edge_op(graph, codes, int(tensor), code)
                integer = int(op.outputs[0] if code == QUANTIZE else op.inputs[0])
                if dtype == "int8":
                    graph.operators.remove(op)
                    ends[position] = integer
                    for end in (e for s in signatures for e in (*s.inputs, *s.outputs)):
                        if end.tensorIndex == tensor:
                            end.tensorIndex = integer
                else:
                    _as_uint8(graph.tensors[tensor], graph.tensors[integer])
                    op.opcodeIndex = codes.index(QUANTIZE)
        _drop_unused_tensors(graph, signatures)
    return bytes(fb.convert_object_to_bytearray(model))


def _edge_op(graph, codes: list[int], tensor: int, code: int):
    """The one op that reads (QUANTIZE) or writes (DEQUANTIZE) float I/O tensor `tensor`."""
    ops = [op for op in graph.operators if tensor in op.inputs or tensor in op.outputs]
    if len(ops) != 1 or codes[ops[0].opcodeIndex] != code:
        name = graph.tensors[tensor].name.decode()
        raise ValueError(f"{name}: a float input or output behind anything but one (DE)QUANTIZE")
    return ops[0]


def _as_uint8(tensor, integer) -> None:
    """Make float `tensor` uint8 on int8 tensor `integer`'s grid (zero point + 128)."""
    tensor.type = TENSOR_TYPES["uint8"]
    tensor.quantization = copy.deepcopy(integer.quantization)
    tensor.quantization.zeroPoint = [int(z) + 128 for z in integer.quantization.zeroPoint]


def _drop_unused_tensors(graph, signatures: list) -> None:
    """Remove the tensors that no op, subgraph end or signature refers to; renumber the rest."""
    kept = sorted(
        {
            int(t)
            for op in graph.operators
            for t in (*op.inputs, *op.outputs, *(op.intermediates or ()))
            if t >= 0
        }
        | {int(t) for t in (*graph.inputs, *graph.outputs)}
    )
    number = {old: new for new, old in enumerate(kept)}
    graph.tensors = [graph.tensors[t] for t in kept]
    for op in graph.operators:
        op.inputs = [number[int(t)] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [number[int(t)] for t in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [number[int(t)] for t in op.intermediates]
    graph.inputs = [number[int(t)] for t in graph.inputs]
    graph.outputs = [number[int(t)] for t in graph.outputs]
    for end in (e for s in signatures for e in (*s.inputs, *s.outputs)):
        end.tensorIndex = number[end.tensorIndex]
