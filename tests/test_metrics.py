"""Metrics: torchmetrics per image, checked against scikit-image on a known pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qaie.nn.metrics import CONVENTION, as_batch, psnr, ssim


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A real photo crop and a noisy copy, uint8 (H, W, 3)."""
    clean = data.astronaut()[100:196, 150:278]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean.astype(int) + rng.integers(-25, 26, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_psnr_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    assert psnr(noisy, clean).item() == pytest.approx(peak_signal_noise_ratio(clean, noisy), abs=1e-3)


def test_ssim_matches_skimage_gaussian_window(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    expected = structural_similarity(
        clean / 255, noisy / 255, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(noisy, clean).item() == pytest.approx(expected, abs=1e-4)
    assert "sigma 1.5" in CONVENTION and "[0,1]" in CONVENTION


def test_tensor_and_uint8_inputs_agree_and_are_per_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    batch = np.stack([noisy, clean])  # (2, H, W, 3): second image identical to its target
    as_tensor = as_batch(batch)
    assert as_tensor.shape == (2, 3, *clean.shape[:2]) and as_tensor.max() <= 1
    values = psnr(as_tensor, as_batch(np.stack([clean, clean])))
    assert values.shape == (2,) and values[0].item() == pytest.approx(psnr(noisy, clean).item(), rel=1e-6)
    assert math.isinf(values[1].item())  # identical images: inf, not an error
    assert ssim(torch.tensor(clean).permute(2, 0, 1)[None] / 255, as_batch(clean)).item() == pytest.approx(
        1.0
    )
