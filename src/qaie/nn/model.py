"""The gated multi-scale enhancement network (QATIE, arXiv 2604.21743).

Three scales (S/2, S/4, S/8). Gated encoder blocks produce two tanh streams a, b and their
product; the product is refined, a|b is kept as a skip for the fusing decoder. The output is
a residual: y = clamp(x + delta, 0, 1).

The model knows nothing of quantization, but it is written so PT2E can quantize every op:
no Python control flow on tensor values, InstanceNorm as mean/sub/rsqrt/mul (integer-friendly),
resizes to the skip's size so any H, W works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qaie.config import ModelConfig

# Named widths from the paper's width study; each is the full (non-ablated) network.
VARIANTS: dict[str, ModelConfig] = {f"qaie_c{c}": ModelConfig(width=c) for c in (16, 24, 32, 64)}


class InstanceNorm(nn.Module):
    """Affine instance norm written as mean/sub/mul/rsqrt so it quantizes to integer ops.

    Same math and state dict (``weight``, ``bias``) as ``torch.nn.InstanceNorm2d(c, affine=True)``.
    With ``passes=2`` the statistics are taken again from the normalised map (`SecondPass`).
    """

    def __init__(self, channels: int, eps: float = 1e-5, passes: int = 1) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.second = SecondPass(eps) if passes == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)  # biased, as InstanceNorm2d
        rstd = torch.rsqrt(var + self.eps)
        normed = centered * rstd
        if self.second is not None:
            normed = self.second(normed, rstd)
        # The affine as a depthwise 1x1 conv: the same math as normed * w + b, but one integer
        # op with exact per-channel int8 weights and an int32 bias once quantized.
        return F.conv2d(normed, self.weight.view(-1, 1, 1, 1), self.bias, groups=self.weight.numel())


class SecondPass(nn.Module):
    """The statistics of a normalised map y = (x - mean) * rstd, taken again: (y - mean(y)) *
    rsqrt(var(y) + eps * rstd^2). In float mean(y) = 0 and var(y) + eps * rstd^2 = 1, so it
    returns y: the norm's function does not change, whatever rstd is.

    Quantized, it is why the pass exists: one int8 range per statistic must hold the variance
    of every map the norm sees, and a flat map's variance rounds to a step or to 0 (its rstd
    saturates). Here the first pass's rstd may be off by any factor k; y then has variance
    k^2, close to 1, on a range fixed around 1 (`qaie.quant.quantize`), and this pass divides
    k out. On 100x100 patches of the official weights, PTQ: 38.6 -> 40.8 dB of fidelity to
    FP32 (docs/results.md).
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
        centered = y - y.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        return centered * torch.rsqrt(var + (rstd * rstd) * self.eps)


class RefinementBlock(nn.Module):
    """UNet-style refinement: (conv3x3-IN-LReLU | conv1x1) -> cat -> 2x(conv3x3-LReLU) + 1x1 proj."""

    def __init__(self, in_ch: int, out_ch: int, relu_slope: float, norm_passes: int = 1) -> None:
        super().__init__()
        self.conv_norm = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.norm = InstanceNorm(in_ch, passes=norm_passes)
        self.conv_point = nn.Conv2d(in_ch, in_ch, 1)
        self.conv_a = nn.Conv2d(2 * in_ch, out_ch, 3, padding=1)
        self.conv_b = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.project = nn.Conv2d(2 * in_ch, out_ch, 1)
        self.act = nn.LeakyReLU(relu_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.act(self.norm(self.conv_norm(x))), self.conv_point(x)], dim=1)
        out = self.act(self.conv_b(self.act(self.conv_a(both))))
        return out + self.project(both)


class ConvRefiner(nn.Module):
    """Ablation stand-in for a refinement block: one conv3x3 + LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, relu_slope: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.act = nn.LeakyReLU(relu_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def refiner(in_ch: int, out_ch: int, relu_slope: float, full: bool, norm_passes: int = 1) -> nn.Module:
    if full:
        return RefinementBlock(in_ch, out_ch, relu_slope, norm_passes)
    return ConvRefiner(in_ch, out_ch, relu_slope)


class GatedEncoder(nn.Module):
    """Two parallel stride-2 conv3x3 + tanh; returns (gate a*b, skip a|b)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.conv_b = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.tanh(self.conv_a(x))
        b = torch.tanh(self.conv_b(x))
        return a * b, torch.cat([a, b], dim=1)


class Upsample(nn.Module):
    """Nearest resize to a reference tensor's size, then conv3x3 (works for odd sizes)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=like.shape[-2:], mode="nearest"))


class FusionDecoder(nn.Module):
    """Upsample the coarser scale, fuse it with the refined features and the a|b skip through
    a 1x1 conv over the three, refine.

    The 1x1 conv over concat(up, refined, skip) is written as a conv over concat(up, refined)
    plus a bias-free conv over the skip: the same function and parameter count, but the tanh
    skip never shares a concatenation with decoder features. Quantized, the skip then keeps
    the fixed 1/128 scale TFLite's tanh writes, and the features keep their own scale, with
    no requantize between them.
    """

    def __init__(self, in_ch: int, out_ch: int, relu_slope: float, full: bool, norm_passes: int = 1) -> None:
        super().__init__()
        self.up = Upsample(in_ch, out_ch)
        self.reduce = nn.Conv2d(2 * out_ch, out_ch, 1)  # up (c) + refined (c)
        self.reduce_skip = nn.Conv2d(2 * out_ch, out_ch, 1, bias=False)  # skip a|b (2c)
        self.refine = refiner(out_ch, out_ch, relu_slope, full, norm_passes)

    def forward(self, coarse: torch.Tensor, refined: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.up(coarse, refined), refined], dim=1)
        return self.refine(self.reduce(features) + self.reduce_skip(skip))


class EnhanceNet(nn.Module):
    """The full network. Input (B, 3, H, W) in [0, 1], output the same shape in [0, 1].

    Args:
        config: architecture (width and the paper's ablation switches).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, slope, passes = config.width, config.relu_slope, config.norm_passes
        self.enc2 = GatedEncoder(3, c)
        self.refine2 = refiner(c, c, slope, config.encoder_refiners, passes)
        self.enc4 = GatedEncoder(c, 2 * c)
        self.refine4 = refiner(2 * c, 2 * c, slope, config.encoder_refiners, passes)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = RefinementBlock(2 * c, 4 * c, slope, passes)
        self.dec4 = FusionDecoder(4 * c, 2 * c, slope, config.fusion_refiners, passes)
        self.dec2 = FusionDecoder(2 * c, c, slope, config.fusion_refiners, passes)
        self.up1 = Upsample(c, c)
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for dec in (self.dec4, self.dec2):  # as one 1x1 conv over all 4c inputs, which they are
            fused = torch.cat([dec.reduce.weight, dec.reduce_skip.weight], dim=1)
            nn.init.kaiming_normal_(fused, a=slope, nonlinearity="leaky_relu")
            with torch.no_grad():
                dec.reduce.weight.copy_(fused[:, : dec.reduce.in_channels])
                dec.reduce_skip.weight.copy_(fused[:, dec.reduce.in_channels :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate2, skip2 = self.enc2(x)  # (B, c, H/2, W/2), (B, 2c, H/2, W/2)
        s2 = self.refine2(gate2)
        gate4, skip4 = self.enc4(s2)  # (B, 2c, H/4, W/4), (B, 4c, H/4, W/4)
        s4 = self.refine4(gate4)
        s8 = self.bottleneck(self.pool(s4))  # (B, 4c, H/8, W/8)
        d4 = self.dec4(s8, s4, skip4)  # (B, 2c, H/4, W/4)
        d2 = self.dec2(d4, s2, skip2)  # (B, c, H/2, W/2)
        delta = self.head(self.up1(d2, x))  # (B, 3, H, W)
        out = x + delta if self.config.output_residual else delta
        return torch.clamp(out, 0.0, 1.0)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(config: ModelConfig, size: int = 256) -> float:
    """Multiply-accumulates of the convolutions per input pixel, counted on a size x size input."""
    model = EnhanceNet(config)
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += output.numel() * module.in_channels * kh * kw // module.groups

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total / (size * size)
