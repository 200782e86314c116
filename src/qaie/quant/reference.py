"""The quantized reference model as PyTorch runs it to judge deployed files, computed exactly.

`qaie.quant.quantize.convert` gives int8 quantize/dequantize around every op, with the ops in
float32. Most of them are exact there (adds, products, pools, resizes, concatenations each round
once, the same on every CPU), but three are not: a convolution's float32 sum, tanh and the norms'
means are computed in an order (or by a polynomial) that depends on the CPU's kernels and on the
tensor's size. A value on a rounding tie then lands one int8 code apart, from machine to machine,
and between a photo run whole and the same photo run in windows (`qaie.runtime.wholephoto`).

Here those three are computed from the int8 codes, where exact arithmetic is cheap:

- convolutions: integer sums of code products (float32 holds them exactly in groups of input
  channels small enough; groups add in float64), then the scales, as the integer kernels do;
- tanh: a table over the 256 codes of its input (the platform's libm, once per node);
- norm statistics: `qaie.runtime.wholephoto.norm_statistics`, the whole-photo path's own, from
  exact sums of codes.

The result is the same function on every CPU, and the one the staged whole-photo path computes.
Export keeps using `convert`: LiteRT runs its own integer kernels.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from qaie.config import ModelConfig
from qaie.imageio import Size
from qaie.quant import quantize
from qaie.quant.fxgraph import DEQUANTIZE, DEQUANTIZE_CHANNEL, is_op
from qaie.quant.split import find_norms, read_from, run_stage, split, static_graph, value_of
from qaie.runtime.codec import Codec
from qaie.runtime.wholephoto import norm_statistics

aten = torch.ops.aten
_FLOAT32_EXACT = 1 << 24  # every integer up to 2^24 is a float32


def reference_model(prepared: GraphModule, phases: bool = False) -> GraphModule:
    """A prepared QAT/PTQ graph's quantized reference model, computed exactly (see above);
    with `phases`, a static graph's upsample + conv3x3 in phase form (`quantize.convert`)."""
    return exact_statistics(exact_ops(quantize.convert(prepared, phases)))


def exact_ops(converted: GraphModule) -> GraphModule:
    """Convolutions and tanh of a converted graph computed from their input codes, in place.
    Ops that do not read int8 codes (an FP32 graph) are left as they are."""
    graph = converted.graph
    for node in list(graph.nodes):
        if is_op(node, aten.conv2d.default) and is_op(node.args[0], DEQUANTIZE):
            x, w = node.args[:2]
            bias, rest = (node.args[2] if len(node.args) > 2 else None), node.args[3:]
            assert is_op(w, DEQUANTIZE_CHANNEL) and w.args[3] == 0, w  # per output channel
            codes, x_scale, x_zero = x.args[:3]
            args = (codes, float(x_scale), int(x_zero), w.args[0], w.args[1], bias, *rest)
            _replace(graph, node, _integer_conv, args)
        elif is_op(node, aten.tanh.default) and is_op(node.args[0], DEQUANTIZE):
            codes, scale, zero = node.args[0].args[:3]
            _replace(graph, node, _tanh_table, (codes, float(scale), int(zero)))
    graph.eliminate_dead_code()
    converted.recompile()
    return converted


def exact_statistics(converted: GraphModule) -> GraphModule:
    """Each norm's statistics (mean and rstd, and a second pass's) computed by
    `qaie.runtime.wholephoto.norm_statistics` from the int8 map's codes, in place. An FP32
    graph is returned as it is."""
    graph = converted.graph
    for norm in find_norms(graph, converted):
        chain = norm.chain()
        if chain is None:
            return converted
        codes = value_of(norm.input)
        with graph.inserting_after(codes):
            stats = graph.call_function(_norm_statistics, (codes, {"eps": norm.eps, "chain": chain}))
        last = stats
        for name, node in norm.statistics().items():
            with graph.inserting_after(last):
                last = graph.call_function(operator.getitem, (stats, name))
            read_from(graph, node, last)
    graph.eliminate_dead_code()
    converted.recompile()
    return converted


def _replace(graph, node: Node, function, args: tuple) -> None:
    with graph.inserting_before(node):
        new = graph.call_function(function, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _integer_conv(
    codes: Tensor,
    x_scale: float,
    x_zero: int,
    weight_codes: Tensor,
    weight_scales: Tensor,
    bias: Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """conv2d of dequantized int8 codes, exactly: sum((x - x_zero) * w) over each output, then
    x_scale * w_scale[c] and the bias. Zero padding is code x_zero, real 0, as in the reference."""
    x = codes.float() - x_zero  # integers in [-255, 255]
    w = weight_codes.float()  # integers in [-127, 127]
    per_channel = 255 * 127 * w.shape[-2] * w.shape[-1]  # the largest sum one input channel adds
    step = max(1, _FLOAT32_EXACT // per_channel)  # input channels whose sum float32 holds exactly
    if groups > 1:  # each output reads its own group (the norms' affine: one channel)
        assert w.shape[1] <= step, "a group too wide to sum exactly in float32"
        acc = F.conv2d(x, w, None, stride, padding, dilation, groups).double()
    else:
        acc = sum(
            F.conv2d(x[:, i : i + step], w[:, i : i + step], None, stride, padding, dilation).double()
            for i in range(0, x.shape[1], step)
        )
    out = acc * (x_scale * weight_scales.double()).view(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.double().view(1, -1, 1, 1)
    return out.float()


def _tanh_table(codes: Tensor, scale: float, zero: int) -> Tensor:
    """tanh of dequantized int8 codes, from a table of the 256 codes (libm's tanh, rounded once)."""
    low = -128 if codes.dtype == torch.int8 else 0
    return _table(low, scale, zero)[codes.long() - low]


@functools.cache
def _table(low: int, scale: float, zero: int) -> Tensor:
    """tanh of the 256 codes from `low`, dequantized as dequantize does (one per tanh node)."""
    inputs = (torch.arange(low, low + 256, dtype=torch.float32) - zero) * scale
    return torch.tensor([math.tanh(v) for v in inputs.tolist()], dtype=torch.float32)


def _norm_statistics(codes: Tensor, norm: dict) -> dict[str, Tensor]:
    """(N, C, H, W) int8 codes -> the (N, C, 1, 1) statistics of each sample's channels, by name."""
    quant = Codec(np.dtype(np.int8), *norm["chain"]["input"])
    per_sample = [norm_statistics(c.permute(1, 2, 0).numpy(), quant, norm) for c in codes]
    return {
        name: torch.tensor(np.stack([s[name] for s in per_sample]), dtype=torch.float32)[..., None, None]
        for name in per_sample[0]
    }


class TorchStageRunner:
    """A network's stages in PyTorch, one split per window size (a `wholephoto.StageRunner`).

    Maps and statistics pass as float32 real values; a quantized graph re-quantizes them at
    its own scales, so this runs the quantized reference model (`qaie.quant.reference`) stage by
    stage, with the same exact integer arithmetic.
    """

    def __init__(self, net: nn.Module, window_sizes: list[Size], config: ModelConfig | None = None) -> None:
        self.window_sizes = tuple(window_sizes)
        self._stages = {size: split(exact_ops(static_graph(net, size)), config) for size in self.window_sizes}
        self.meta = next(iter(self._stages.values())).meta

    def quant(self, name: str) -> Codec:
        return Codec(np.dtype(np.float32))

    def run(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph = self._stages[size].graphs[stage]
        tensors = {
            k: torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2) for k, v in inputs.items()
        }
        outputs = run_stage(graph, tensors)
        return {k: v.permute(0, 2, 3, 1).contiguous().numpy() for k, v in outputs.items()}
