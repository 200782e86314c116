"""The synthetic camera: deterministic, in range, and each effect does what its name says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qaie.data.degrade import CameraModel, CameraParams, Frame, blockiness, degrade, psf
from qaie.errors import QaieError

NEUTRAL = CameraParams.neutral()


def _scene(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """Smooth colourful texture plus a few edges, float32 (H, W, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = np.random.default_rng(seed).random(3).astype(np.float32) * 6
    smooth = 0.5 + 0.35 * np.sin(xx[..., None] / 6 + yy[..., None] / 9 + phase)
    edges = ((xx // 16 + yy // 16) % 2)[..., None] * 0.1
    return np.clip(smooth + edges, 0, 1).astype(np.float32)


def _flat(value: float = 0.5, h: int = 64, w: int = 64) -> np.ndarray:
    return np.full((h, w, 3), value, np.float32)


def _saturation(image: np.ndarray) -> float:
    return float((image.max(axis=2) - image.min(axis=2)).mean())


def _with(**changes) -> CameraParams:
    return dataclasses.replace(NEUTRAL, **changes)


def test_neutral_camera_is_the_identity() -> None:
    image = _scene()
    np.testing.assert_allclose(degrade(image, NEUTRAL), image, atol=1e-5)


def test_same_params_same_image_and_sampling_is_seeded() -> None:
    model = CameraModel()
    params = model.sample(np.random.default_rng(7))
    assert params == model.sample(np.random.default_rng(7))
    assert params != model.sample(np.random.default_rng(8))
    image = _scene()
    first = degrade(image, params)
    np.testing.assert_array_equal(first, degrade(image.copy(), params))
    assert not np.array_equal(
        first, degrade(image, dataclasses.replace(params, noise_seed=params.noise_seed + 1))
    )


@pytest.mark.parametrize("seed", range(8))
def test_sampled_cameras_keep_shape_dtype_and_range(seed: int) -> None:
    params = CameraModel().sample(np.random.default_rng(seed))
    out = degrade(_scene(37, 53), params)  # odd sizes on purpose
    assert out.shape == (37, 53, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_sampled_params_stay_inside_the_ranges() -> None:
    model = CameraModel()
    for seed in range(50):
        p = model.sample(np.random.default_rng(seed))
        assert model.blur_sigma[0] <= p.blur_sigma <= model.blur_sigma[1]
        assert model.shot_noise[0] <= p.shot_noise <= model.shot_noise[1]
        assert model.jpeg_quality[0] <= p.jpeg_quality <= model.jpeg_quality[1]
        assert abs(p.shift_x) <= model.max_shift and abs(p.shift_y) <= model.max_shift


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(QaieError, match="blur_sigma"):
        CameraModel(blur_sigma=(2.0, 1.0))
    with pytest.raises(QaieError, match="jpeg_quality"):
        CameraModel(jpeg_quality=(0, 90))
    with pytest.raises(QaieError, match="positive"):
        CameraModel(read_noise=(0.0, 0.01))


def test_noise_raises_std_in_a_flat_image_and_grows_with_signal() -> None:
    assert degrade(_flat(), NEUTRAL).std() < 1e-5
    shot = _with(shot_noise=3e-3, read_noise=1e-3, noise_seed=1)
    dark, bright = degrade(_flat(0.1), shot), degrade(_flat(0.6), shot)
    assert dark.std() > 0.005
    # Poisson: linear-light std grows with signal (compare in linear units, undoing the encoding).
    to_linear = lambda y: np.where(y <= 0.04045, y / 12.92, ((y + 0.055) / 1.055) ** 2.4)  # noqa: E731
    assert to_linear(bright).std() > 2 * to_linear(dark).std()


def test_chroma_noise_decorrelates_the_channels() -> None:
    def channel_correlation(chroma: float) -> float:
        out = degrade(_flat(), _with(read_noise=0.02, chroma_noise=chroma, noise_seed=3))
        return float(np.corrcoef(out[..., 0].ravel(), out[..., 2].ravel())[0, 1])

    assert channel_correlation(0.0) > 0.99
    assert channel_correlation(0.8) < 0.5


def test_vignetting_darkens_the_corners_of_the_full_photo() -> None:
    out = degrade(_flat(0.6, 60, 90), _with(vignette=0.3))
    centre, corner = out[28:32, 43:47].mean(), out[:3, :3].mean()
    assert corner < centre - 0.05
    np.testing.assert_allclose(centre, 0.6, atol=0.01)
    # A window at the photo's corner is darkened like that corner, not like a centre.
    window = degrade(_flat(0.6, 20, 20), _with(vignette=0.3), Frame(top=0, left=0, height=60, width=90))
    np.testing.assert_allclose(window[:3, :3].mean(), corner, atol=0.01)


def test_desaturation_lowers_saturation_and_white_balance_casts() -> None:
    image = _scene()
    assert _saturation(degrade(image, _with(saturation=0.5))) < 0.6 * _saturation(image)
    warm = degrade(_flat(0.5), _with(wb_red=1.15, wb_blue=0.8))
    assert warm[..., 0].mean() > 0.52 and warm[..., 2].mean() < 0.48


def test_exposure_tone_and_contrast() -> None:
    image = _scene()
    assert degrade(image, _with(exposure_ev=-1.0)).mean() < image.mean() - 0.1
    assert degrade(image, _with(tone_gamma=1.2)).mean() < image.mean()
    flat = degrade(image, _with(black_level=0.06, white_level=0.88))
    assert flat.std() < 0.85 * image.std() and flat.min() >= 0.06 - 1e-6


def test_blur_removes_detail() -> None:
    image = _scene()

    def detail(x: np.ndarray) -> float:  # mean |second difference|: edges and fine texture
        return float(np.abs(np.diff(x, 2, axis=1)).mean())

    assert detail(degrade(image, _with(blur_sigma=1.2))) < 0.5 * detail(image)
    assert detail(degrade(image, _with(motion_px=3.0))) < detail(image)


def test_misalignment_moves_content_and_psf_is_exact() -> None:
    params = _with(shift_x=0.75, shift_y=-0.5, blur_sigma=0.6, motion_px=2.0, motion_angle=0.0)
    kernel = psf(params)
    r = kernel.shape[0] // 2
    grid = np.arange(-r, r + 1)
    np.testing.assert_allclose(kernel.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose([kernel.sum(1) @ grid, kernel.sum(0) @ grid], [-0.5, 0.75], atol=1e-4)
    # A bright dot moves by a whole pixel shift.
    dot = np.zeros((21, 21, 3), np.float32)
    dot[10, 10] = 1.0
    out = degrade(dot, _with(shift_x=1.0))
    assert np.unravel_index(out[..., 1].argmax(), (21, 21)) == (10, 11)


def test_low_jpeg_quality_shows_8x8_blocks() -> None:
    image = _scene(96, 96)
    assert blockiness(degrade(image, _with(jpeg_quality=10))) > 1.2 * blockiness(image)
    assert blockiness(degrade(image, _with(jpeg_quality=10))) > blockiness(
        degrade(image, _with(jpeg_quality=90))
    )
    out = degrade(image, _with(jpeg_quality=50))
    assert np.allclose(out * 255, np.round(out * 255), atol=1e-4)  # 8-bit levels, as decoded
