"""Nearest 2x upsample + conv3x3 (zero padding 1) computed as four 2x2 convolutions on the
low-resolution map, one per output phase, then interleaved: the same function, 4/9 of the
multiply-adds.

Output pixel (2i + a, 2j + b) of the upsample-then-conv reads upsampled rows 2i + a - 1 ..
2i + a + 1, which are low-resolution rows {i - 1, i, i} for a = 0 and {i, i, i + 1} for a = 1:
phase a's row taps are [w0, w1 + w2] over rows (i - 1, i), or [w0 + w1, w2] over (i, i + 1);
columns the same. One conv 2x2 with padding 1 over x (H, W) holds all four phases as 4 groups
of output channels on an (H + 1, W + 1) grid; phase (a, b) is its group's [a:a + H, b:b + W].
Applies where the upsampled map is exactly twice x (sizes on the 8-pixel grid).

The interleave moves each phase's window into place without cutting it out: with the groups
in the order (1, 1), (1, 0), (0, 1), (0, 0), the (H + 1, W + 1, 2, 2, C) grid read as
(2H + 2, 2W + 2, C) puts phase (a, b)'s pixel (i, j) at (2i + 1 - a, 2j + 1 - b), one row and
one column after where the output wants it: output (2i + a, 2j + b) reads row 2i + a + 1 of
phase a's window. One transpose and one crop, in channels-last (what LiteRT runs).

The same trick folds two convolutions with nothing between them. The network's `up1` (upsample
+ conv3x3, C -> C) feeds `head` (conv3x3, C -> 3) alone: output pixel (2i + a, 2j + b) reads
low-resolution rows and columns i - 1 .. i + 1 only, so the pair is one conv3x3 on the
low-resolution map with 4 x 3 output channels (one group per phase, `fold_kernels`), then
depth-to-space: 864 multiply-adds per output pixel where the pair took 4,096 + 864 in phase
form. Exact away from the outermost ring of output pixels, where `head`'s zero padding stands
for values `up1` would compute beyond the edge (qaie.quant.phases computes that ring apart).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

# Rows of the 3x3 kernel each phase's 2 taps sum: PHASE_TAPS[a] @ w3x3 @ PHASE_TAPS[b].T.
PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
PHASES = ((1, 1), (1, 0), (0, 1), (0, 0))  # group order of the phase conv's output channels


def phase_kernels(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) -> (4 C_out, C_in, 2, 2): the kernels of the phases in PHASES'
    order, each a group of C_out output channels."""
    taps = PHASE_TAPS.to(weight)
    return torch.cat([taps[a] @ weight @ taps[b].T for a, b in PHASES])


def phase_bias(bias: Tensor) -> Tensor:
    """The conv's bias for each of the four groups."""
    return bias.repeat(len(PHASES))


def interleave(phased: Tensor) -> Tensor:
    """(N, 4 C, H + 1, W + 1) phase-conv output -> (N, C, 2H, 2W): each phase's window, interleaved."""
    n, c4, h1, w1 = phased.shape
    c = c4 // len(PHASES)
    rows = phased.permute(0, 2, 3, 1).reshape(n * h1, w1, 2, 2 * c)  # (N (H + 1), W + 1, 1 - a, (1 - b, C))
    grid = rows.transpose(1, 2).reshape(n, 2 * h1, 2 * w1, c)  # (N, 2H + 2, 2W + 2, C)
    return grid[:, 1 : 2 * h1 - 1, 1 : 2 * w1 - 1].permute(0, 3, 1, 2)


def fold_kernels(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest 2x upsample, conv3x3 (w1, b1), conv3x3 (w2, b2), both zero-padded by 1, as one
    conv3x3 (padding 1) on the low-resolution map: (4 C_out, C_in, 3, 3) kernels and their
    bias, the groups of C_out in the (a, b) order `depth_to_space` reads (the ring aside)."""
    c_out, c_in = w2.shape[0], w1.shape[1]
    w1, w2 = w1.double(), w2.double()
    kernels = torch.zeros(2, 2, c_out, c_in, 3, 3, dtype=torch.float64, device=w1.device)
    taps = (-1, 0, 1)
    for a, b, u, v, s, t in itertools.product((0, 1), (0, 1), taps, taps, taps, taps):
        # output (2i + a, 2j + b) <- w2 tap (u, v) <- w1 tap (s, t) <- upsampled row 2i + a + u + s
        row, col = (a + u + s) // 2 + 1, (b + v + t) // 2 + 1
        kernels[a, b, :, :, row, col] += w2[:, :, u + 1, v + 1] @ w1[:, :, s + 1, t + 1]
    bias = b2.double() + torch.einsum("omuv,m->o", w2, b1.double())
    return kernels.reshape(4 * c_out, c_in, 3, 3).to(b2.dtype), bias.repeat(4).to(b2.dtype)


def depth_to_space(grouped: Tensor) -> Tensor:
    """(N, 4 C, H, W) in groups (a, b) -> (N, C, 2H, 2W), group (a, b) at pixels (2i + a, 2j + b)."""
    n, c4, h, w = grouped.shape
    c = c4 // 4
    return grouped.reshape(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)
