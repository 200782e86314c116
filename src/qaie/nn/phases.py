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
"""

from __future__ import annotations

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
