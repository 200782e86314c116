"""Training losses, chosen by name (`qaie train --loss paper|msssim|l1`).

Every loss takes ``pred`` and ``target`` of shape (B, 3, H, W) in [0, 1] (RGB) and returns a
scalar. PSNR and MS-SSIM come from torchmetrics' differentiable functional API; only the
BT.601 luma weighting (a fixed colour transform) and the paper's cosine/outlier terms are
written here. Losses are computed in float32 even under bf16 autocast: PSNR's log and the
outlier term's std are not safe in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)

from qaie.errors import QaieError

# ITU-R BT.601 luma weights (R, G, B): Y = 0.299 R + 0.587 G + 0.114 B.
BT601 = (0.299, 0.587, 0.114)

# The paper's L_psnr = (50 - PSNR_Y) / 100 treats 50 dB as the ceiling; PSNR is capped there so
# identical images give a finite loss (the floor: 0) instead of -inf. Real outputs are far below.
PSNR_CEILING_DB = 50.0

# MS-SSIM on small crops: the standard 5 scales with an 11-px window need images >= 176 px in
# torchmetrics' check, but training crops are 100 px (DPED) or smaller. We use the first three
# of the standard scale weights (Wang et al. 2003), renormalized to sum to 1, and a 7-px
# Gaussian window (sigma 1.5): torchmetrics then accepts crops of MSSSIM_MIN_SIZE px and up.
MSSSIM_BETAS = tuple(b / sum((0.0448, 0.2856, 0.3001)) for b in (0.0448, 0.2856, 0.3001))
MSSSIM_KERNEL = 7
MSSSIM_MIN_SIZE = MSSSIM_KERNEL * (len(MSSSIM_BETAS) - 1) ** 2  # torchmetrics: H // (n-1)^2 > kernel - 1
# Weight of (1 - MS-SSIM) against L1 in the mix of Zhao et al., "Loss Functions for Image
# Restoration with Neural Networks" (2017): alpha = 0.84.
MSSSIM_ALPHA = 0.84


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images: (B, 3, H, W) -> (B, 1, H, W)."""
    weights = x.new_tensor(BT601).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def psnr_y_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_psnr = (50 - PSNR_Y) / 100, PSNR per image on BT.601 luma, averaged over the batch."""
    psnr = peak_signal_noise_ratio(
        luma(pred), luma(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )  # (B,)
    return ((PSNR_CEILING_DB - psnr.clamp(max=PSNR_CEILING_DB)) / 100.0).mean()


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_cos = 1 - cosine similarity of each flattened image, averaged over the batch."""
    return (1.0 - F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1, eps=1e-8)).mean()


def outlier_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_outlier = mean(|d| * tanh(|d - mean(d)| / (std(d) / sqrt 2))), d = pred - target.

    Statistics per image and channel; the weight is detached, so it only re-weights the L1
    gradient towards pixels that deviate from the image's typical error (outliers).
    """
    d = pred - target  # (B, 3, H, W)
    mean = d.mean(dim=(2, 3), keepdim=True)
    std = d.std(dim=(2, 3), keepdim=True)
    weight = torch.tanh((d - mean).abs() / (std / math.sqrt(2.0) + 1e-8)).detach()
    return (d.abs() * weight).mean()


class PaperLoss(nn.Module):
    """The paper's loss: 2.0 * L_psnr(Y, BT.601) + 1.0 * L_cos + 1.0 * L_outlier. Floor 0."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        return 2.0 * psnr_y_loss(pred, target) + cosine_loss(pred, target) + outlier_loss(pred, target)


class MSSSIMLoss(nn.Module):
    """0.84 * (1 - MS-SSIM) + 0.16 * L1 (Zhao et al. 2017), MS-SSIM with 3 scales, 7-px window."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if min(pred.shape[-2:]) < MSSSIM_MIN_SIZE:
            raise QaieError(
                f"MS-SSIM loss needs images of at least {MSSSIM_MIN_SIZE} px, got "
                f"{pred.shape[-2]}x{pred.shape[-1]}; use a larger --crop or --loss paper"
            )
        msssim = multiscale_structural_similarity_index_measure(
            pred, target, data_range=1.0, kernel_size=MSSSIM_KERNEL, sigma=1.5, betas=MSSSIM_BETAS
        )
        return MSSSIM_ALPHA * (1.0 - msssim) + (1.0 - MSSSIM_ALPHA) * F.l1_loss(pred, target)


class L1Loss(nn.Module):
    """Mean absolute error."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred.float(), target.float())


class MSELoss(nn.Module):
    """Mean squared error: what PSNR measures (label-free QAT's default: fidelity to the teacher)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred.float(), target.float())


LOSSES: dict[str, type[nn.Module]] = {"paper": PaperLoss, "msssim": MSSSIMLoss, "l1": L1Loss, "mse": MSELoss}


def make_loss(name: str) -> nn.Module:
    """The loss registered under `name`."""
    if name not in LOSSES:
        raise QaieError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]()
