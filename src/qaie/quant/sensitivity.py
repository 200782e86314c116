"""Per-layer quantization sensitivity: how much PSNR each layer loses when it alone is
quantized with PTQ (the demo's sensitivity stage and figure).

Built on the quantizer's fake-quant graph, so a "layer" here is exactly what the INT8 export
quantizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torchao.quantization.pt2e import FakeQuantizeBase, disable_fake_quant

from qaie.nn import metrics
from qaie.progress import progress
from qaie.quant import quantize


@dataclass(frozen=True)
class Sensitivity:
    """PSNR on a few images with nothing, everything, and each layer alone quantized (PTQ).

    Args:
        float_psnr: the graph with every quantizer off (the FP32 network).
        all_psnr: every quantizer on: the PTQ model as fake-quant.
        layers: [{"layer": module path, "psnr_drop": float_psnr - PSNR with only it on}],
            worst first.
    """

    float_psnr: float
    all_psnr: float
    layers: list[dict]


def layer_sensitivity(
    net: torch.nn.Module, calibration: Iterable[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> Sensitivity:
    """How much PSNR each layer loses when it alone is quantized with PTQ.

    One fake-quant graph (`qaie.quant.quantize.prepare_qat`, the same quantizer as PTQ and QAT) is
    calibrated with observers on and fake quantization off (QAT's moving averages: the ranges
    are close to, not the same as, PTQ's histogram search), then the quantizers are switched on
    one layer at a time: a layer's
    quantizers are its weights' and those of the activations its ops produce. An activation
    scale shared by several ops (through a concatenation, LeakyReLU, max-pool or resize) is one
    quantizer; it counts for the layer that produces it first. The input's fixed 1/255
    quantizer is the layer "input"; the residual add and clamp at the end are "output".

    Args:
        net: the FP32 EnhanceNet.
        calibration: (B, 3, h, w) training batches in [0, 1], as for PTQ.
        x, y: (N, 3, H, W) inputs and targets the PSNR is measured on.
    """
    graph = quantize.prepare_qat(net, x[:2])
    graph.apply(disable_fake_quant)
    quantize.calibrate(graph, calibration)
    quantize.freeze_observers(graph)

    layers: dict[str, list[FakeQuantizeBase]] = {}
    seen: set[int] = set()
    for node in graph.graph.nodes:
        module = graph.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, FakeQuantizeBase) and id(module) not in seen:
            seen.add(id(module))
            layers.setdefault(_layer_of(node), []).append(module)

    @torch.no_grad()
    def score() -> float:
        return float(metrics.psnr(graph(x), y).mean())

    float_psnr = score()
    drops = []
    for layer, quantizers in progress(layers.items(), desc="sensitivity", unit="layer", leave=False):
        for q in quantizers:
            q.enable_fake_quant()
        drops.append({"layer": layer, "psnr_drop": float_psnr - score()})
        for q in quantizers:
            q.disable_fake_quant()
    for quantizers in layers.values():
        for q in quantizers:
            q.enable_fake_quant()
    all_psnr = score()
    drops.sort(key=lambda d: d["psnr_drop"], reverse=True)
    return Sensitivity(float_psnr, all_psnr, drops)


def _layer_of(quantizer_node: torch.fx.Node) -> str:
    """The module path of the op a quantizer belongs to: the producer of the activation it
    quantizes, or the op that reads the weight (or constant) it quantizes."""
    source = quantizer_node.args[0]
    if source.op == "placeholder":
        return "input"
    if source.op == "get_attr":
        source = next(iter(quantizer_node.users))
    stack = source.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path or "output"
