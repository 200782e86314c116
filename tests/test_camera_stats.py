"""Photo statistics respond to what they name; the comparison command writes its table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaie.cli import main
from qaie.data.camera_stats import STATISTICS, PhotoStats, compare, photo_stats, to_markdown
from qaie.data.degrade import CameraModel, CameraParams, degrade

NEUTRAL = CameraParams.neutral()


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Flat sky above textured ground with a few hard edges, float32 (H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.float32)
    image[: h // 2] = [0.55, 0.65, 0.8]
    yy, xx = np.mgrid[0 : h - h // 2, 0:w]
    ground = 0.35 + 0.2 * np.sign(np.sin(xx / 7.0 + yy / 11.0))[..., None] * [1.0, 0.8, 0.5]
    image[h // 2 :] = ground + rng.normal(0, 0.02, (h - h // 2, w, 3))
    return np.clip(image, 0, 1)


def _stats(**changes) -> PhotoStats:
    return photo_stats(degrade(_scene(), dataclasses.replace(NEUTRAL, **changes)))


def test_each_statistic_tracks_its_effect() -> None:
    base = photo_stats(_scene())
    assert set(dataclasses.asdict(base)) == {name for name, _ in STATISTICS}
    assert _stats(read_noise=0.02, noise_seed=1).noise > base.noise + 1.0
    assert _stats(blur_sigma=1.5).sharpness < base.sharpness - 0.2
    assert _stats(jpeg_quality=10).blockiness > base.blockiness + 0.1
    assert _stats(saturation=0.3).saturation < 0.5 * base.saturation
    assert _stats(wb_blue=1.4).cast_blue > base.cast_blue + 0.2
    assert _stats(exposure_ev=-1.0).brightness < base.brightness - 0.1
    assert _stats(black_level=0.1, white_level=0.8).contrast < 0.8 * base.contrast


def _folder(root: Path, n: int, seed: int) -> Path:
    root.mkdir()
    for i in range(n):
        Image.fromarray((_scene(64, 80, seed + i) * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def test_compare_and_markdown(tmp_path: Path) -> None:
    real, clean = _folder(tmp_path / "real", 3, 0), _folder(tmp_path / "clean", 4, 10)
    result = compare(sorted(real.iterdir()), sorted(clean.iterdir()), CameraModel(), seed=1)
    assert (result.n_real, result.n_simulated) == (3, 4)
    assert all(0.0 <= result.covered[name] <= 1.0 for name, _ in STATISTICS)
    spread = result.simulated["noise"]
    assert spread.p5 <= spread.median <= spread.p95
    page = to_markdown(result, "qaie camera-stats ...")
    assert page.count("\n| ") == len(STATISTICS) + 1 and "qaie camera-stats ..." in page


def test_camera_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real, clean = _folder(tmp_path / "real", 2, 0), _folder(tmp_path / "clean", 3, 10)
    out = tmp_path / "stats.md"
    args = ["camera-stats", "--real", str(real), "--clean", str(clean), "--limit", "2", "--out", str(out)]
    assert main(args) == 0
    assert "| blockiness |" in out.read_text() and "--limit 2" in out.read_text()
    assert main(args) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["camera-stats", "--real", str(tmp_path / "none"), "--clean", str(clean)]) == 2
    assert "none: not a folder" in capsys.readouterr().err
