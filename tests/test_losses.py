"""Losses: values and gradients are sane, identical images sit at the floor, selection by name."""

from __future__ import annotations

import pytest
import torch

from qaie.errors import QaieError
from qaie.nn.losses import (
    LOSSES,
    MSSSIM_MIN_SIZE,
    PaperLoss,
    cosine_loss,
    luma,
    make_loss,
    outlier_loss,
    psnr_y_loss,
)


def _pair(size: int = 32, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, size, size, generator=g)  # (B, 3, H, W) in [0, 1]
    pred = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_is_finite_positive_and_has_gradients(name: str) -> None:
    pred, target = _pair()
    pred.requires_grad_(True)
    loss = make_loss(name)(pred, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_images_sit_at_the_floor(name: str) -> None:
    _, target = _pair()
    assert make_loss(name)(target, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_more_noise_costs_more(name: str) -> None:
    loss = make_loss(name)
    assert loss(*_pair(noise=0.02)) < loss(*_pair(noise=0.1))


def test_paper_loss_is_its_weighted_sum() -> None:
    pred, target = _pair()
    expected = 2 * psnr_y_loss(pred, target) + cosine_loss(pred, target) + outlier_loss(pred, target)
    assert PaperLoss()(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_psnr_term_follows_its_definition_on_luma() -> None:
    pred, target = _pair()
    mse = ((luma(pred) - luma(target)) ** 2).mean(dim=(1, 2, 3))
    expected = ((50 - 10 * torch.log10(1 / mse)) / 100).mean()
    assert psnr_y_loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert luma(torch.ones(1, 3, 2, 2)).allclose(torch.ones(1, 1, 2, 2))  # BT.601 weights sum to 1


def test_cosine_term_ignores_brightness_scale() -> None:
    _, target = _pair()
    assert cosine_loss(0.5 * target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_outlier_weight_is_detached() -> None:
    """The gradient is sign(d) * weight / N: the tanh weight itself is not differentiated."""
    pred, target = _pair()
    pred.requires_grad_(True)
    outlier_loss(pred, target).backward()
    d = (pred - target).detach()
    mean, std = d.mean(dim=(2, 3), keepdim=True), d.std(dim=(2, 3), keepdim=True)
    weight = torch.tanh((d - mean).abs() / (std / 2**0.5 + 1e-8))
    assert pred.grad.allclose(torch.sign(d) * weight / d.numel(), atol=1e-9)


def test_msssim_refuses_crops_below_its_minimum_with_the_fix() -> None:
    pred, target = _pair(size=MSSSIM_MIN_SIZE - 4)
    with pytest.raises(QaieError, match="--crop"):
        make_loss("msssim")(pred, target)
    assert torch.isfinite(make_loss("msssim")(*_pair(size=MSSSIM_MIN_SIZE)))


def test_unknown_loss_name_lists_the_choices() -> None:
    with pytest.raises(QaieError, match=r"l1.*mse|mse.*l1"):
        make_loss("huber")


def test_mse_is_what_psnr_measures() -> None:
    """Label-free QAT's loss: its value gives the PSNR of the prediction directly."""
    pred, target = torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.25)
    loss = make_loss("mse")(pred, target)
    assert loss.item() == pytest.approx(0.0625)
    assert (10 * torch.log10(1 / loss)).item() == pytest.approx(12.04, abs=0.01)
