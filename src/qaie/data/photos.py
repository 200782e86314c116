"""Unlabelled photos (`photos:FOLDER`): a user's own pictures, with no targets.

They serve where no target is needed: PTQ calibration on the photos a model will see
(`qaie calibrate`, `qaie export --calibrate`), and fidelity of one model to another
(`qaie evaluate MODEL --reference REF`), which measures a deployment gap without labels.

Every split is the whole folder, so keep calibration and evaluation photos in different
folders; or split it by name (`make_dataset(..., held_out=True)`), as label-free QAT
(`qaie train --qat --data photos:`, `qaie quantize`) does.

A crop may be a rectangle (H, W). A photo whose orientation differs from the crop's is turned
a quarter (np.rot90, counter-clockwise) first, so landscape photos give portrait crops for a
portrait model file (as the official 1920x1080 file, H=1920 W=1080, is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qaie.data.base import PhotoItems
from qaie.errors import QaieError

Crop = tuple[int, int]  # (H, W)


def turn_to(pixels: np.ndarray, crop: Crop) -> np.ndarray:
    """`pixels` (H, W, 3) turned a quarter if its orientation is not the crop's (squares never)."""
    h, w = pixels.shape[:2]
    if crop[0] != crop[1] and h != w and (crop[0] > crop[1]) != (h > w):
        return np.rot90(pixels)
    return pixels


class PhotoDataset(PhotoItems):
    """(photo, photo) float32 tensors (3, h, w) in [0, 1]: the input, and the input again where a
    target would be (there is none; `qaie evaluate` needs --reference on this data).

    Train: random crops (`repeats` per photo per epoch); val/test: the centre crop, or with
    `repeats` > 1 that many windows per photo at fixed places (patches: many per photo, the same
    in every epoch and run); crop None: whole photos. Randomness from
    `np.random.default_rng([seed, epoch, index])` (val/test: `[seed, index]`), as
    qaie.data.datasets does.
    """

    def __init__(
        self, paths: list[Path], split: str, crop: Crop | None, seed: int, repeats: int, cache: bool
    ) -> None:
        super().__init__(len(paths), repeats, cache)
        self.paths, self.split, self.crop, self.seed = paths, split, crop, seed
        self.names = [p.stem for p in paths]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.paths[self._item(index)]
        pixels = self._load(path)
        if self.crop is not None:
            pixels = turn_to(pixels, self.crop)
            (h, w), (ch, cw) = pixels.shape[:2], self.crop
            if h < ch or w < cw:
                raise QaieError(f"{path}: {w}x{h} pixels are fewer than the {cw}x{ch} crop (W x H)")
            if self.split == "train" or self.repeats > 1:
                draw = [self.seed, self.epoch, index] if self.split == "train" else [self.seed, index]
                rng = np.random.default_rng(draw)
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            pixels = pixels[y : y + ch, x : x + cw]
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)
        return x, x
