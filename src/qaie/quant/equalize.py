"""Norm-input equalization: each instance norm's input channels brought to one range before PTQ.

A norm's input is one int8 tensor with one scale, and its statistics (the centred map, its
square, the variance) are int8 tensors with one scale each. A channel whose values span a
small part of the tensor's range gets few codes; on a flat photo (sky) its variance then rounds
to 0 and rsqrt saturates, which shifts the whole output (docs/results.md, "The validation
frames lose their fidelity in the norms' statistics"). The convolution that writes the map
(`conv_norm`) is quantized per output channel and the norm reads it alone, so dividing its
output channel i by s_i, where s_i = r_i / max(r) from each channel's largest |value| r_i over
calibration images, leaves the network's function as it was except against eps (var + eps
becomes var / s_i^2 + eps): exact wherever a channel's variance is far above eps (1e-5).

Rescalings of maps between convolutions ("cross-layer equalization", Nagel et al. 2019) were
measured too and did not help (tools/equalize_ptq.py); only the norms' inputs are rescaled.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from qaie.nn.model import EnhanceNet, RefinementBlock

MIN_SCALE = 1e-3  # a (nearly) dead channel is enlarged at most 1000x


@torch.no_grad()
def channel_peaks(net: EnhanceNet, batches: Iterable[Tensor], modules: Iterable[nn.Module]) -> dict:
    """Each of `modules`' largest |output| per channel while `net` runs `batches`."""
    peaks: dict[nn.Module, Tensor] = {}

    def record(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        peak = output.abs().amax(dim=(0, 2, 3))
        peaks[module] = torch.maximum(peaks[module], peak) if module in peaks else peak

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        for batch in batches:
            net(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return peaks


@torch.no_grad()
def equalize_norm_inputs(net: EnhanceNet, batches: Iterable[Tensor]) -> EnhanceNet:
    """A copy of `net` whose norms' input channels all reach the largest one's |value| over
    `batches` (FP32 images), computing the same function up to eps."""
    net = copy.deepcopy(net).eval()
    convs = [m.conv_norm for m in net.modules() if isinstance(m, RefinementBlock)]
    peaks = channel_peaks(net, batches, convs)
    for conv in convs:
        factor = 1 / (peaks[conv] / peaks[conv].max()).clamp_min(MIN_SCALE)
        conv.weight *= factor.view(-1, 1, 1, 1)
        conv.bias *= factor
    return net
