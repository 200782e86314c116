"""A synthetic "old phone camera" (iPhone 3GS class): turns a clean photo into what it would shoot.

Training pairs are (degrade(clean), clean). The model follows the light through the camera:

    optics   misalignment shift + lens blur (defocus, slight motion) as one PSF; vignetting
    sensor   exposure error; signal-dependent noise (shot + read), partly blotchy chroma noise;
             clipping at full well
    ISP      wrong white balance; tone curve; output levels (crushed or lifted shadows,
             clipped or dull highlights); desaturation
    output   8-bit JPEG at a low-ish quality (a real Pillow round trip)

Optics and sensor work in linear light (sRGB decoded), the ISP on encoded values, as in a
camera. `CameraModel` holds the parameter ranges (one dataclass, so calibration moves them in
one place; docs/data.md says why each range is what it is), `CameraModel.sample` draws one
concrete `CameraParams`, and `degrade` applies them deterministically: noise comes from the
seed stored in the params, so the same params give the same image, bit for bit.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, signal, special

from qaie.errors import QaieError

Range = tuple[float, float]
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, as the loss and JPEG use


@dataclass(frozen=True)
class CameraParams:
    """One concrete camera: every value `degrade` needs, including the noise seed.

    Args:
        shift_x, shift_y: misalignment of the input vs the target, pixels (sub-pixel allowed).
        blur_sigma: Gaussian defocus, pixels.
        motion_px, motion_angle: length (pixels) and direction (radians) of a linear motion blur.
        vignette: fraction of light lost in the image corners (0 = none).
        exposure_ev: exposure error in stops (negative = darker).
        shot_noise: Poisson part of the noise variance per unit of linear signal.
        read_noise: signal-independent noise standard deviation (linear units).
        chroma_noise: share of the noise variance that is blotchy per-channel colour noise.
        wb_red, wb_blue: white-balance gains of red and blue relative to green.
        tone_gamma: exponent applied to encoded values (> 1 darkens mid-tones).
        black_level, white_level: where encoded 0 and 1 land before clipping to [0, 1]:
            below 0 / above 1 crush shadows / clip highlights (a small sensor's short
            dynamic range), above 0 / below 1 lift blacks / dull whites.
        saturation: chroma kept (1 = unchanged, 0 = gray).
        jpeg_quality: 1..100, or None for no JPEG round trip.
        noise_seed: seed of the noise pattern.
    """

    shift_x: float
    shift_y: float
    blur_sigma: float
    motion_px: float
    motion_angle: float
    vignette: float
    exposure_ev: float
    shot_noise: float
    read_noise: float
    chroma_noise: float
    wb_red: float
    wb_blue: float
    tone_gamma: float
    black_level: float
    white_level: float
    saturation: float
    jpeg_quality: int | None
    noise_seed: int

    @classmethod
    def neutral(cls) -> CameraParams:
        """A perfect camera: `degrade` returns the image unchanged (up to float rounding)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, None, 0)


@dataclass(frozen=True)
class CameraModel:
    """Ranges of the camera parameters; `sample` draws uniformly within them.

    Ranges marked log are drawn log-uniformly (noise spans orders of magnitude). The defaults
    were calibrated so that statistics of degraded bsds500 photos cover those of 29 real
    iPhone 3GS photos (`qaie camera-stats`, docs/camera-stats.md; reasons in docs/data.md).
    """

    max_shift: float = 1.0  # |shift_x|, |shift_y| <= this
    blur_sigma: Range = (0.2, 1.0)
    motion_px: Range = (0.0, 1.5)
    vignette: Range = (0.0, 0.35)
    exposure_ev: Range = (-1.0, 0.2)
    shot_noise: Range = (5e-5, 1e-3)  # log
    read_noise: Range = (5e-4, 4e-3)  # log
    chroma_noise: Range = (0.1, 0.6)
    wb_red: Range = (0.85, 1.15)
    wb_blue: Range = (0.9, 1.5)
    tone_gamma: Range = (0.85, 1.2)
    black_level: Range = (-0.1, 0.02)
    white_level: Range = (1.05, 1.5)
    saturation: Range = (0.3, 0.8)
    jpeg_quality: Range = (80, 97)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
                raise QaieError(
                    f"camera model {field.name}={value!r}: expected a (low, high) pair, low <= high"
                )
        if not (self.shot_noise[0] > 0 and self.read_noise[0] > 0):
            raise QaieError("camera model noise ranges must be positive (they are drawn log-uniformly)")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise QaieError(f"camera model jpeg_quality={self.jpeg_quality!r}: must lie within 1..100")

    def sample(self, rng: np.random.Generator) -> CameraParams:
        def uniform(r: Range) -> float:
            return float(rng.uniform(r[0], r[1]))

        def log_uniform(r: Range) -> float:
            return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))

        return CameraParams(
            shift_x=float(rng.uniform(-self.max_shift, self.max_shift)),
            shift_y=float(rng.uniform(-self.max_shift, self.max_shift)),
            blur_sigma=uniform(self.blur_sigma),
            motion_px=uniform(self.motion_px),
            motion_angle=float(rng.uniform(0.0, math.pi)),
            vignette=uniform(self.vignette),
            exposure_ev=uniform(self.exposure_ev),
            shot_noise=log_uniform(self.shot_noise),
            read_noise=log_uniform(self.read_noise),
            chroma_noise=uniform(self.chroma_noise),
            wb_red=uniform(self.wb_red),
            wb_blue=uniform(self.wb_blue),
            tone_gamma=uniform(self.tone_gamma),
            black_level=uniform(self.black_level),
            white_level=uniform(self.white_level),
            saturation=uniform(self.saturation),
            jpeg_quality=int(rng.integers(int(self.jpeg_quality[0]), int(self.jpeg_quality[1]) + 1)),
            noise_seed=int(rng.integers(0, 2**31)),
        )


@dataclass(frozen=True)
class Frame:
    """Where an image window lies in the full photo, so vignetting follows the photo's centre.

    Args:
        top, left: window origin in the full photo, pixels.
        height, width: size of the full photo.
    """

    top: int
    left: int
    height: int
    width: int


def degrade(image: np.ndarray, params: CameraParams, frame: Frame | None = None) -> np.ndarray:
    """Shoot `image` with the camera `params`. Deterministic: same inputs, same output.

    Args:
        image: float32 (H, W, 3) in [0, 1], sRGB. The clean scene.
        params: the camera.
        frame: where `image` lies in its full photo (default: it is the full photo).

    Returns:
        float32 (H, W, 3) in [0, 1], same shape. Misalignment shifts the content by a fraction
        of a pixel to a pixel, with mirrored edges: crop a margin off both images (the dataset
        degrades a window larger than its crop) so the mirrored border never reaches training.
    """
    assert image.ndim == 3 and image.shape[2] == 3, image.shape
    h, w, _ = image.shape
    frame = frame or Frame(0, 0, h, w)
    linear = _srgb_to_linear(np.clip(image.astype(np.float32), 0.0, 1.0))  # (H, W, 3)

    # Optics: misalignment and blur as one point-spread function, then vignetting.
    x = _convolve(linear, psf(params))
    x *= _vignette(frame, h, w, params.vignette)[:, :, None]

    # Sensor: exposure, noise with variance shot * signal + read^2, clipping at full well.
    x *= np.float32(2.0**params.exposure_ev)
    sigma = np.sqrt(params.shot_noise * np.maximum(x, 0.0) + params.read_noise**2)
    x = np.clip(x + sigma * _noise_pattern(h, w, params), 0.0, 1.0)

    # ISP: white balance (gains on linear values), encode, tone curve, contrast, saturation.
    x = np.clip(x * np.array([params.wb_red, 1.0, params.wb_blue], np.float32), 0.0, 1.0)
    y = _linear_to_srgb(x) ** np.float32(params.tone_gamma)
    y = params.black_level + (params.white_level - params.black_level) * y
    luma = (y @ LUMA)[:, :, None]
    y = np.clip(luma + params.saturation * (y - luma), 0.0, 1.0).astype(np.float32)

    if params.jpeg_quality is not None:
        y = _jpeg_round_trip(y, params.jpeg_quality)
    return y


def psf(params: CameraParams) -> np.ndarray:
    """The optics' point-spread function, float32 (K, K), sums to 1, centroid at the shift.

    A Gaussian (defocus) swept along a line (motion), integrated over each pixel's area (erf)
    so a sub-pixel shift or a sigma well below a pixel stays exact.
    """
    half_motion = params.motion_px / 2
    radius = psf_radius(params)
    grid = np.arange(-radius, radius + 1, dtype=np.float64)  # pixel centres
    sigma = max(params.blur_sigma, 1e-3)
    steps = np.linspace(-half_motion, half_motion, max(1, math.ceil(params.motion_px * 2) + 1))
    kernel = np.zeros((grid.size, grid.size))
    for t in steps:  # (K, K) += outer(profile_y, profile_x) for each point of the motion path
        cx = params.shift_x + t * math.cos(params.motion_angle)
        cy = params.shift_y + t * math.sin(params.motion_angle)
        kernel += np.outer(_pixel_gaussian(grid, cy, sigma), _pixel_gaussian(grid, cx, sigma))
    return (kernel / kernel.sum()).astype(np.float32)


def psf_radius(params: CameraParams) -> int:
    """Half the PSF size: how far, in pixels, the optics pull content in from. A window degraded
    with this margin around a crop gives the crop the optics of the whole photo."""
    reach = 3 * params.blur_sigma + params.motion_px / 2 + max(abs(params.shift_x), abs(params.shift_y))
    return math.ceil(reach) + 1


def blockiness(image: np.ndarray) -> float:
    """JPEG blocking: mean luma step across 8x8 block borders over the mean step elsewhere.

    About 1 for an image without blocking, larger when 8x8 block edges show. image: float
    (H, W, 3) or (H, W), block grid anchored at (0, 0).
    """
    luma = image @ LUMA if image.ndim == 3 else image
    steps = np.abs(np.diff(luma, axis=1))  # (H, W-1): step between column j and j+1
    border = (np.arange(steps.shape[1]) % 8) == 7
    return float(steps[:, border].mean() / (steps[:, ~border].mean() + 1e-8))


# --- helpers ------------------------------------------------------------------------------------


def _pixel_gaussian(grid: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """Mass of N(centre, sigma^2) falling in each unit pixel [g - 0.5, g + 0.5)."""
    scale = sigma * math.sqrt(2.0)
    return 0.5 * (special.erf((grid + 0.5 - centre) / scale) - special.erf((grid - 0.5 - centre) / scale))


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same'-size convolution with mirrored borders. image (H, W, 3), kernel (K, K), K odd."""
    r = kernel.shape[0] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
    out = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return np.maximum(out, 0.0).astype(np.float32)  # FFT round-off can dip just below 0


def _vignette(frame: Frame, h: int, w: int, strength: float) -> np.ndarray:
    """Gain (H, W): cos^4-like fall-off, 1 at the photo centre, 1 - strength in its corners."""
    if strength == 0:
        return np.ones((h, w), np.float32)
    ys = (np.arange(frame.top, frame.top + h) + 0.5 - frame.height / 2)[:, None]
    xs = (np.arange(frame.left, frame.left + w) + 0.5 - frame.width / 2)[None, :]
    r2 = (ys**2 + xs**2) / ((frame.height / 2) ** 2 + (frame.width / 2) ** 2)  # 1 at the corners
    k = (1.0 - strength) ** -0.5 - 1.0  # (1 + k)^-2 = 1 - strength
    return ((1.0 + k * r2) ** -2).astype(np.float32)


def _noise_pattern(h: int, w: int, params: CameraParams) -> np.ndarray:
    """Unit-variance noise (H, W, 3): fine luma grain shared by the channels plus blotchy
    per-channel chroma noise (demosaicing and the ISP's denoiser smear colour noise)."""
    rng = np.random.default_rng(params.noise_seed)
    grain = rng.standard_normal((h, w, 1), dtype=np.float32)
    blotch = ndimage.gaussian_filter(rng.standard_normal((h, w, 3), dtype=np.float32), (1.0, 1.0, 0.0))
    blotch /= np.float32(0.2821)  # std of white noise after a sigma-1 Gaussian: 1 / (2 sqrt(pi))
    c = np.float32(params.chroma_noise)
    return np.sqrt(1 - c) * grain + np.sqrt(c) * blotch


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=quality)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / np.float32(255)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(
        np.float32
    )
