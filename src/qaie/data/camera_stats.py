"""Does the synthetic camera look like a real old phone? Simple photo statistics, compared.

`compare` measures real phone photos (e.g. the 29 iPhone 3GS photos of DPED) and clean photos
degraded by `CameraModel` (e.g. bsds500 train) with the same statistics, each at the photo's
own resolution (the network sees phone photos at full resolution): colour cast, saturation,
brightness and contrast, noise in flat regions, sharpness and JPEG blockiness. The camera's
ranges are good when the real photos fall inside the simulated spread; `to_markdown` writes
the table docs/camera-stats.md holds.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from qaie.data.degrade import LUMA, CameraModel, blockiness, degrade
from qaie.errors import QaieError, QaieWarning
from qaie.imageio import list_images, read_rgb

# (name, what it measures) in table order; PhotoStats has one field per name.
STATISTICS = (
    ("brightness", "mean luma"),
    ("contrast", "luma spread, 99th - 1st percentile"),
    ("saturation", "mean of max(RGB) - min(RGB)"),
    ("cast_red", "log2 mean R / mean G (gray-world cast)"),
    ("cast_blue", "log2 mean B / mean G"),
    ("noise", "std of the high-pass residual in the flattest 10% of 16x16 blocks, 8-bit levels"),
    ("sharpness", "RMS luma gradient on the strongest edges over the same after a 2 px blur"),
    ("blockiness", "luma steps across 8x8 block borders / steps elsewhere (1 = none)"),
)


@dataclass(frozen=True)
class PhotoStats:
    brightness: float
    contrast: float
    saturation: float
    cast_red: float
    cast_blue: float
    noise: float
    sharpness: float
    blockiness: float


@dataclass(frozen=True)
class Spread:
    """Percentiles 5, 50, 95 of one statistic over a set of photos."""

    p5: float
    median: float
    p95: float


@dataclass(frozen=True)
class Comparison:
    """Per statistic: the spread of real, clean and simulated photos, and the share of real
    photos inside the simulated 5..95% range."""

    real: dict[str, Spread]
    clean: dict[str, Spread]
    simulated: dict[str, Spread]
    covered: dict[str, float]
    n_real: int
    n_simulated: int
    camera: CameraModel


def photo_stats(image: np.ndarray) -> PhotoStats:
    """Statistics of one photo, float (H, W, 3) in [0, 1]; block grids anchored at (0, 0)."""
    image = image.astype(np.float32)
    luma = image @ LUMA  # (H, W)
    lo, hi = np.percentile(luma, [1, 99])
    contrast = float(hi - lo)
    means = image.reshape(-1, 3).mean(axis=0) + 1e-4
    return PhotoStats(
        brightness=float(luma.mean()),
        contrast=contrast,
        saturation=float((image.max(axis=2) - image.min(axis=2)).mean()),
        cast_red=math.log2(means[0] / means[1]),
        cast_blue=math.log2(means[2] / means[1]),
        noise=_flat_noise(luma) * 255,
        sharpness=_edge_sharpness(luma),
        blockiness=blockiness(luma),
    )


def compare(
    real: Sequence[Path],
    clean: Sequence[Path],
    camera: CameraModel,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Measure `real` photos, `clean` photos, and the clean photos shot by sampled cameras."""
    if not real or not clean:
        raise QaieError("camera statistics need at least one real and one clean photo")
    rng = np.random.default_rng(seed)
    real_stats, clean_stats, sim_stats = [], [], []
    for path in real:
        real_stats.append(photo_stats(_read(path)))
        if progress:
            progress(path.name)
    for path in clean:
        image = _read(path)
        clean_stats.append(photo_stats(image))
        sim_stats.append(photo_stats(degrade(image, camera.sample(rng))))
        if progress:
            progress(path.name)
    spreads = [_spreads(s) for s in (real_stats, clean_stats, sim_stats)]
    covered = {
        name: float(
            np.mean([spreads[2][name].p5 <= getattr(s, name) <= spreads[2][name].p95 for s in real_stats])
        )
        for name, _ in STATISTICS
    }
    return Comparison(*spreads, covered, len(real_stats), len(sim_stats), camera)


def folder_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The first `limit` images of `folder` by name (all if None); none is an error."""
    if limit is not None and limit < 1:
        raise QaieError(f"--limit must be at least 1, got {limit}")
    images = list_images(folder)[:limit]
    if not images:
        raise QaieError(f"{folder}: no images found")
    return images


def to_markdown(result: Comparison, command: str) -> str:
    """The comparison as a Markdown page: one row per statistic."""
    lines = [
        "# Synthetic camera vs real old-phone photos",
        "",
        f"Produced by `{command}`. Each cell: median [5th - 95th percentile] over "
        f"{result.n_real} real photos and {result.n_simulated} clean photos, plain and degraded by "
        "a camera sampled from `CameraModel` (qaie.data.degrade). Statistics are taken at each photo's "
        "own resolution. *Covered*: share of real photos inside the simulated 5-95% range.",
        "",
        "| statistic | real phone | clean | simulated | covered |",
        "|---|---|---|---|---|",
    ]
    for name, _ in STATISTICS:
        cells = [_cell(spread[name]) for spread in (result.real, result.clean, result.simulated)]
        lines.append(f"| {name} | {' | '.join(cells)} | {result.covered[name]:.0%} |")
    lines += ["", "Statistics:", ""]
    lines += [f"- **{name}**: {what}" for name, what in STATISTICS]
    lines += ["", "Camera ranges used (`CameraModel`, docs/data.md explains each):", ""]
    lines += [f"- {f.name}: {getattr(result.camera, f.name)}" for f in dataclasses.fields(result.camera)]
    return "\n".join(lines) + "\n"


# --- helpers ------------------------------------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    image = read_rgb(path)
    if image.note:  # e.g. a grayscale photo: its colour statistics mean little
        warnings.warn(QaieWarning(f"{path}: {image.note}"), stacklevel=2)
    return image.pixels.astype(np.float32) / 255


def _flat_noise(luma: np.ndarray, block: int = 16) -> float:
    """Noise std in flat regions: the residual after a 3x3 mean, in the flattest blocks.

    Scene texture dominates the residual except where the scene is flat, so the 10th percentile
    of block stds tracks the noise. Blocks are aligned to the 8x8 JPEG grid.
    """
    residual = luma - ndimage.uniform_filter(luma, 3, mode="reflect")
    h, w = (s - s % block for s in luma.shape)
    blocks = residual[:h, :w].reshape(h // block, block, w // block, block)
    stds = blocks.std(axis=(1, 3)) / math.sqrt(8 / 9)  # the residual keeps 8/9 of white noise power
    return float(np.percentile(stds, 10))


def _edge_sharpness(luma: np.ndarray) -> float:
    """How much sharper the strongest edges are than a 2-pixel blur of them (1 = already blurred).

    RMS gradient at full resolution over RMS gradient after a sigma-2 blur, on the 10% of
    pixels with the strongest blurred gradient: a ratio, so scene contrast cancels out.
    """
    fine = np.hypot(ndimage.sobel(luma, 0), ndimage.sobel(luma, 1))
    smooth = ndimage.gaussian_filter(luma, 2.0)
    coarse = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    edges = coarse >= np.percentile(coarse, 90)
    return float(np.sqrt((fine[edges] ** 2).mean() / ((coarse[edges] ** 2).mean() + 1e-12)))


def _spreads(stats: list[PhotoStats]) -> dict[str, Spread]:
    out = {}
    for name, _ in STATISTICS:
        values = np.array([getattr(s, name) for s in stats])
        out[name] = Spread(*(float(v) for v in np.percentile(values, [5, 50, 95])))
    return out


def _cell(spread: Spread) -> str:
    digits = 3 if max(abs(spread.p5), abs(spread.p95)) < 10 else 1
    return f"{spread.median:.{digits}f} [{spread.p5:.{digits}f} - {spread.p95:.{digits}f}]"
