"""Rewrite each nearest 2x upsample + conv3x3 of a static network graph into its phase form
(`qaie.nn.phases`: four 2x2 convolutions as one, then interleaved; 4/9 of the multiply-adds).

Works on a torch.export of the FP32 network (exact: the phase kernels are sums of the 3x3
taps) and on a converted QAT/PTQ graph (`qaie.quant.quantize.convert`). There the phase
kernels, sums of up to four int8 taps, are new weights: they are the sums of the trained
3x3 weights as the int8 model holds them, quantized per output channel as the weight
observers do (symmetric, amax / 127); the conv's output keeps the trained scale of the
3x3 conv's output (the same values in FP32), and the interleave moves int8 codes only.
Upsamples whose output is not exactly twice their input (sizes off the 8-pixel grid, or
symbolic sizes) are left as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.utils import getattr_from_fqn

from qaie.nn.phases import depth_to_space, fold_kernels, interleave, phase_bias, phase_kernels
from qaie.quant.fxgraph import DEQUANTIZE, DEQUANTIZE_CHANNEL, QUANTIZE, QUANTIZE_CHANNEL, is_op

aten = torch.ops.aten
_qd = torch.ops.quantized_decomposed
_QDQ = (QUANTIZE, DEQUANTIZE, QUANTIZE_CHANNEL, DEQUANTIZE_CHANNEL)
_WEIGHT_QMAX = 127  # per-channel symmetric int8 weights in [-127, 127] (qaie.quant.quantize)


def rewrite(module: GraphModule) -> int:
    """Fold each exact 2x upsample + conv3x3 + conv3x3 (`fold`), then put every exact 2x
    upsample + conv3x3 of `module` in phase form, in place; how many of the latter."""
    for up in list(module.graph.nodes):
        pair = _conv_pair(up)
        if pair is not None:
            fold(module, up, *pair)
    graph = module.graph
    count = 0
    for up in list(graph.nodes):
        conv = _upsample_conv(up)
        if conv is None:
            continue
        x, weight, bias = up.args[0], conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        quantized = is_op(weight, DEQUANTIZE_CHANNEL)
        w3 = _dequantized(module, weight) if quantized else getattr_from_fqn(module, weight.target)
        b3 = None if bias is None else getattr_from_fqn(module, bias.target)
        name = conv.name
        with graph.inserting_before(conv):
            kernels = _constant(module, f"_phase_{name}_weight", phase_kernels(w3).contiguous())
            if quantized:
                kernels = _quantized_weight(module, name, kernels, weight)
            b4 = None if b3 is None else _constant(module, f"_phase_{name}_bias", phase_bias(b3))
            phased = graph.call_function(aten.conv2d.default, (x, kernels, b4, [1, 1], [1, 1]))
            if quantized:  # at the 3x3 conv's output quantization: the same values
                q = next(iter(conv.users))
                phased = graph.call_function(q.target, (phased, *q.args[1:]))
                phased = graph.call_function(_qd.dequantize_per_tensor.default, (phased, *q.args[1:]))
            out = graph.call_function(interleave, (phased,))
        out.meta = dict(conv.meta)
        conv.replace_all_uses_with(out)
        graph.erase_node(conv)
        count += 1
    graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return count


def _upsample_conv(up: Node) -> Node | None:
    """The conv3x3 (stride 1, padding 1) an exact nearest 2x upsample feeds alone, else None."""
    if not is_op(up, aten.upsample_nearest2d.vec):
        return None
    source, target = _value(up.args[0]), _value(up)
    if source is None or target is None:
        return None
    sides = (*source.shape[-2:], *target.shape[-2:])
    if not all(isinstance(s, int) for s in sides) or tuple(sides[2:]) != (2 * sides[0], 2 * sides[1]):
        return None
    return _conv3x3_reading(up)


def _conv3x3_reading(node: Node) -> Node | None:
    """The plain conv3x3 (stride 1, padding 1) that alone reads `node`, through its quantize and
    dequantize, else None."""
    while len(node.users) == 1 and (
        is_op(next(iter(node.users)), QUANTIZE) or is_op(next(iter(node.users)), DEQUANTIZE)
    ):
        node = next(iter(node.users))
    (conv,) = node.users if len(node.users) == 1 else (None,)
    if not is_op(conv, aten.conv2d.default) or conv.args[0] is not node:
        return None
    weight = _value(conv.args[1])
    rest = list(conv.args[3:]) + [None] * (4 - len(conv.args[3:]))
    stride, padding, dilation, groups = rest
    plain = (
        stride in (None, [1, 1]) and padding == [1, 1] and dilation in (None, [1, 1]) and groups in (None, 1)
    )
    return conv if plain and weight is not None and tuple(weight.shape[-2:]) == (3, 3) else None


def _conv_pair(up: Node) -> tuple[Node, Node] | None:
    """(first, second) when the exact 2x upsample `up` feeds a conv3x3 that alone feeds another
    (the network's `up1` and `head`), on a low-resolution map of at least 2x2."""
    first = _upsample_conv(up)
    second = None if first is None else _conv3x3_reading(first)
    if second is None or min(_value(up.args[0]).shape[-2:]) < 2:
        return None
    return first, second


def fold(module: GraphModule, up: Node, first: Node, second: Node) -> None:
    """Replace upsample `up` + conv3x3 `first` + conv3x3 `second` by one conv3x3 on the
    low-resolution map and depth-to-space (`qaie.nn.phases.fold_kernels`), in place.

    The output's outermost ring of pixels, where `second`'s zero padding matters, is computed
    as before: both convolutions on the four strips of the input 2 pixels deep along its edges
    (in phase form too, once `rewrite` goes on), with their own weights and, quantized, their
    own scales, so the ring is what the unfolded graph computes. Quantized, the folded kernels
    are new weights like the phase kernels: quantized per output channel from the two
    convolutions' int8 weights; the folded conv writes at `second`'s output scale."""
    graph = module.graph
    x = up.args[0]
    quantized = is_op(second.args[1], DEQUANTIZE_CHANNEL)

    def weight(conv: Node) -> Tensor:
        return (
            _dequantized(module, conv.args[1]) if quantized else getattr_from_fqn(module, conv.args[1].target)
        )

    def bias(conv: Node, channels: int) -> Tensor:
        b = conv.args[2] if len(conv.args) > 2 else None
        return torch.zeros(channels) if b is None else getattr_from_fqn(module, b.target)

    w1, w2 = weight(first), weight(second)
    kernels, folded_bias = fold_kernels(w1, bias(first, w1.shape[0]), w2, bias(second, w2.shape[0]))
    # quantize args of what `up`, `first` and `second` write (None: an FP32 graph)
    out_q = [next(iter(n.users)).args[1:] if quantized else None for n in (up, first, second)]
    n_, c_in, h, w = _value(x).shape
    c_out = w2.shape[0]

    def call(target, args: tuple, shape: tuple, q: tuple | None = None) -> Node:
        node = graph.call_function(target, args)
        node.meta["val"] = torch.empty(shape)  # the shape `_upsample_conv` reads
        if q is None:
            return node
        node = graph.call_function(_qd.quantize_per_tensor.default, (node, *q))
        return graph.call_function(_qd.dequantize_per_tensor.default, (node, *q))

    def cut(node: Node, dim: int, start: int, end: int, q: tuple | None = None) -> Node:
        shape = tuple(end - start if d == dim else s for d, s in enumerate(_value(node).shape))
        return call(aten.slice.Tensor, (node, dim, start, end), shape, q)

    def edge(dim: int, last: bool) -> Node:
        """`first` then `second` on the input's 2 rows (dim 2) or columns (3) at one edge; the
        output's row or column there."""
        start = (h if dim == 2 else w) - 2 if last else 0
        strip = cut(x, dim, start, start + 2, x.args[1:] if quantized else None)
        size = [2 * s for s in _value(strip).shape[-2:]]
        upsampled = call(up.target, (strip, size, *up.args[2:]), (n_, c_in, *size), out_q[0])
        y = call(aten.conv2d.default, (upsampled, *first.args[1:]), (n_, w1.shape[0], *size), out_q[1])
        y = cut(y, dim, 2 if last else 0, 4 if last else 2, out_q[1])  # the exact rows
        z = call(aten.conv2d.default, (y, *second.args[1:]), (n_, c_out, *_value(y).shape[-2:]), out_q[2])
        return cut(z, dim, 1 if last else 0, 2 if last else 1)

    with graph.inserting_before(second):
        k = _constant(module, f"_fold_{second.name}_weight", kernels.contiguous())
        if quantized:
            k = _quantized_weight(module, f"fold_{second.name}", k, second.args[1])
        b = _constant(module, f"_fold_{second.name}_bias", folded_bias)
        grouped = call(aten.conv2d.default, (x, k, b, [1, 1], [1, 1]), (n_, 4 * c_out, h, w), out_q[2])
        full = (n_, c_out, 2 * h, 2 * w)
        out = call(depth_to_space, (grouped,), full)
        top, bottom, left, right = edge(2, False), edge(2, True), edge(3, False), edge(3, True)
        inner = cut(cut(out, 2, 1, 2 * h - 1), 3, 1, 2 * w - 1)
        sides = [cut(left, 2, 1, 2 * h - 1), inner, cut(right, 2, 1, 2 * h - 1)]
        middle = call(aten.cat.default, (sides, 3), (n_, c_out, 2 * h - 2, 2 * w))
        out = call(aten.cat.default, ([top, middle, bottom], 2), full)
    out.meta = dict(second.meta)
    second.replace_all_uses_with(out)
    graph.erase_node(second)
    graph.eliminate_dead_code()


def _value(node: Node) -> Tensor | None:
    """The traced value of `node`, or of the op behind its quantize/dequantize (which have none)."""
    while "val" not in node.meta and any(is_op(node, op) for op in _QDQ):
        node = node.args[0]
    return node.meta.get("val")


def _constant(module: GraphModule, name: str, value: Tensor) -> Node:
    module.register_buffer(name, value.detach())
    return module.graph.get_attr(name)


def _dequantized(module: GraphModule, weight: Node) -> Tensor:
    """The float weights the int8 model holds: the codes of dequantize_per_channel(quantize(w))."""
    quantize = weight.args[0]
    assert is_op(quantize, QUANTIZE_CHANNEL), quantize
    w, scale, zero = (getattr_from_fqn(module, a.target) for a in quantize.args[:3])
    axis, qmin, qmax, dtype = quantize.args[3:7]
    codes = _qd.quantize_per_channel(w, scale, zero, axis, qmin, qmax, dtype)
    return _qd.dequantize_per_channel(codes, scale, zero, axis, qmin, qmax, dtype)


def _quantized_weight(module: GraphModule, name: str, kernels: Node, weight3: Node) -> Node:
    """The phase kernels quantized per output channel as the weight observers do: amax / 127."""
    value = getattr_from_fqn(module, kernels.target)
    eps = torch.finfo(torch.float32).eps
    scale = (value.abs().amax(dim=(1, 2, 3)) / _WEIGHT_QMAX).clamp_min(eps)
    zero_template = getattr_from_fqn(module, weight3.args[2].target)
    scale_node = _constant(module, f"_phase_{name}_scale", scale.to(zero_template.device))
    zero_node = _constant(
        module, f"_phase_{name}_zero_point", torch.zeros_like(scale, dtype=zero_template.dtype)
    )
    params = (scale_node, zero_node, *weight3.args[3:])
    codes = module.graph.call_function(weight3.args[0].target, (kernels, *params))
    return module.graph.call_function(weight3.target, (codes, *params))
