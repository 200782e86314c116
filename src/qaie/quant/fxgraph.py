"""Reading torch.fx graphs: the node test and the quantize/dequantize op names every graph pass
here uses (split, phases, reference), in a module of its own so that they can import them
without importing each other."""

from __future__ import annotations

from torch.fx import Node

# quantized_decomposed ops exist once torchao is imported: matched by name, so FP32 graphs
# are read without it
QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"
DEQUANTIZE = "quantized_decomposed.dequantize_per_tensor.default"
QUANTIZE_CHANNEL = "quantized_decomposed.quantize_per_channel.default"
DEQUANTIZE_CHANNEL = "quantized_decomposed.dequantize_per_channel.default"


def is_op(node: object, target) -> bool:
    """Whether `node` calls `target` (an op, or its name as a string)."""
    if not (isinstance(node, Node) and node.op == "call_function"):
        return False
    return str(node.target) == target if isinstance(target, str) else node.target == target
