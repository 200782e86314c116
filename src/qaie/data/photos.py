"""Unlabelled photos (`photos:FOLDER`): a user's own pictures, with no targets.

They serve where no target is needed: PTQ calibration on the photos a model will see
(`qaie calibrate`, `qaie export --calibrate`), and fidelity of one model to another
(`qaie evaluate MODEL --reference REF`), which measures a deployment gap without labels.

There is no training on them, so there are no splits: every split is the whole folder. Keep
calibration and evaluation photos in different folders.

A crop may be a rectangle (H, W). A photo whose orientation differs from the crop's is turned
a quarter (np.rot90, counter-clockwise) first, so landscape photos give portrait crops for a
portrait model file (as the official 1920x1080 file, H=1920 W=1080, is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qaie.errors import QaieError
from qaie.imageio import read_rgb

Crop = tuple[int, int]  # (H, W)


def turn_to(pixels: np.ndarray, crop: Crop) -> np.ndarray:
    """`pixels` (H, W, 3) turned a quarter if its orientation is not the crop's (squares never)."""
    h, w = pixels.shape[:2]
    if crop[0] != crop[1] and h != w and (crop[0] > crop[1]) != (h > w):
        return np.rot90(pixels)
    return pixels


class PhotoDataset(torch.utils.data.Dataset):
    """(photo, photo) float32 tensors (3, h, w) in [0, 1]: the input, and the input again where a
    target would be (there is none; `qaie evaluate` needs --reference on this data).

    Train: random crops (`repeats` per photo per epoch); val/test: centre crops; crop None: whole
    photos. Randomness from `np.random.default_rng([seed, epoch, index])`, as qaie.data.datasets does.
    """

    def __init__(
        self, paths: list[Path], split: str, crop: Crop | None, seed: int, repeats: int, cache: bool
    ) -> None:
        self.paths, self.split, self.crop, self.seed, self.repeats = paths, split, crop, seed, repeats
        self.names = [p.stem for p in paths]
        self.epoch = 0
        self._cache: dict[Path, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        path = self.paths[index % len(self.paths)]
        pixels = self._load(path)
        if self.crop is not None:
            pixels = turn_to(pixels, self.crop)
            (h, w), (ch, cw) = pixels.shape[:2], self.crop
            if h < ch or w < cw:
                raise QaieError(f"{path}: {w}x{h} pixels are fewer than the {cw}x{ch} crop (W x H)")
            if self.split == "train":
                rng = np.random.default_rng([self.seed, self.epoch, index])
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            pixels = pixels[y : y + ch, x : x + cw]
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)
        return x, x

    def _load(self, path: Path) -> np.ndarray:
        if self._cache is not None and path in self._cache:
            return self._cache[path]
        pixels = read_rgb(path).pixels
        if self._cache is not None:
            self._cache[path] = pixels
        return pixels
