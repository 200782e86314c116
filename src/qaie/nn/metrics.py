"""Image quality metrics, per image, from torchmetrics (never hand-written).

Convention (stated in every report, see CONVENTION): RGB, values in [0, 1] (data range 1);
PSNR = 10 log10(1 / MSE) over all pixels and channels of one image (inf for identical images);
SSIM with an 11-px Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over channels
and over the SSIM map without its 5-px border (where the window would leave the image), as
scikit-image and Wang et al.'s reference code do; torchmetrics computes the map, reflect-padded,
and we drop that border. Means over a data set are means of the per-image values.

Inputs are float tensors (B, 3, H, W) in [0, 1], or uint8 numpy arrays (H, W, 3) or
(B, H, W, 3) as a LiteRT model returns them: those are converted once, with x / 255.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

CONVENTION = (
    "RGB in [0,1] (data range 1), per-image PSNR and SSIM averaged over images; "
    "SSIM: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, 5-px border excluded (torchmetrics)"
)

SSIM_BORDER = 5  # half the 11-px window

Image = torch.Tensor | np.ndarray


def as_batch(x: Image) -> torch.Tensor:
    """(B, 3, H, W) float32 in [0, 1] from a float tensor of that shape or uint8 (B,)H,W,3 numpy."""
    if isinstance(x, np.ndarray):
        assert x.dtype == np.uint8 and x.shape[-1] == 3, (
            f"expected uint8 (..., H, W, 3), got {x.dtype} {x.shape}"
        )
        t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        t = t.unsqueeze(0) if t.ndim == 3 else t  # (B, H, W, 3)
        return t.permute(0, 3, 1, 2)
    assert x.ndim == 4 and x.shape[1] == 3, f"expected (B, 3, H, W), got {tuple(x.shape)}"
    return x.float()


def psnr(pred: Image, target: Image) -> torch.Tensor:
    """PSNR in dB of each image, shape (B,); inf where pred equals target."""
    pred, target = as_batch(pred), as_batch(target)
    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred: Image, target: Image) -> torch.Tensor:
    """SSIM of each image (Gaussian window 11, sigma 1.5), shape (B,)."""
    pred, target = as_batch(pred), as_batch(target)
    _, ssim_map = structural_similarity_index_measure(
        pred, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, return_full_image=True
    )  # (B, 3, H, W)
    b = SSIM_BORDER
    return ssim_map[..., b:-b, b:-b].mean(dim=(1, 2, 3))
