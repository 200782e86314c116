"""Reading torch.fx graphs: the one node test every graph pass here uses (split, phases,
reference), in a module of its own so that they can import it without importing each other."""

from __future__ import annotations

from torch.fx import Node


def is_op(node: object, target) -> bool:
    """Whether `node` calls `target` (an op, or its name as a string)."""
    if not (isinstance(node, Node) and node.op == "call_function"):
        return False
    return str(node.target) == target if isinstance(target, str) else node.target == target
