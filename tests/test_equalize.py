"""Norm-input equalization (`qaie.quant.equalize`): the same function, level channels."""

from __future__ import annotations

import numpy as np
import skimage.data
import torch

from qaie.config import ModelConfig
from qaie.nn.model import EnhanceNet, RefinementBlock
from qaie.quant.equalize import channel_peaks, equalize_norm_inputs


def photos() -> list[torch.Tensor]:
    """Two real 96x128 photos as (1, 3, H, W) batches in [0, 1]."""
    crops = [skimage.data.astronaut()[100:196, 150:278], skimage.data.coffee()[200:296, 250:378]]
    return [torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1)[None].float() / 255 for c in crops]


def uneven_net() -> EnhanceNet:
    """A width-8 network whose norm inputs span ranges 100x apart, channel to channel. Its norms'
    eps is 1e-12: equalization is exact only where a channel's variance is far above eps, which
    a random network's is not at the default 1e-5 (trained ones are: the official weights' output
    moves by at most 0.006 LSB on 1920x1080 photos, docs/results.md)."""
    torch.manual_seed(0)
    net = EnhanceNet(ModelConfig(width=8)).eval()
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, RefinementBlock):
                block.norm.eps = 1e-12
                factor = torch.logspace(-1, 1, block.conv_norm.out_channels)
                block.conv_norm.weight *= factor.view(-1, 1, 1, 1)
                block.conv_norm.bias.copy_(torch.randn(len(factor)) * factor)  # not 0: ranges see it
    return net


def norm_input_peaks(net: EnhanceNet, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    convs = [m.conv_norm for m in net.modules() if isinstance(m, RefinementBlock)]
    peaks = channel_peaks(net, batches, convs)
    return [peaks[conv] for conv in convs]


def test_equalized_network_computes_the_same_with_every_norm_input_channel_at_the_top() -> None:
    net, batches = uneven_net(), photos()
    before = [p.clone() for p in norm_input_peaks(net, batches)]
    assert all(p.max() / p.min() > 30 for p in before)  # the channels start far apart
    equalized = equalize_norm_inputs(net, batches)
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(equalized(batch), net(batch), atol=2e-4, rtol=0)
    for peak, old in zip(norm_input_peaks(equalized, batches), before, strict=True):
        torch.testing.assert_close(peak, torch.full_like(peak, float(old.max())), rtol=1e-5, atol=0)
    assert [p.tolist() for p in norm_input_peaks(net, batches)] == [p.tolist() for p in before]  # a copy
