"""What every qaie dataset shares: `repeats` passes over its photos per epoch, the epoch that
seeds training randomness, and decoded photos cached when they fit in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qaie.imageio import read_rgb


class PhotoItems(torch.utils.data.Dataset):
    """Base of the paired and the unlabelled datasets: items are `count` photos, `repeats`
    times over; subclasses implement `__getitem__` with `_item` and `_load`."""

    def __init__(self, count: int, repeats: int, cache: bool) -> None:
        self._count, self.repeats = count, repeats
        self.epoch = 0
        self._cache: dict[Path, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return self._count * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Training crops depend on the epoch: call before each epoch (in every worker's copy)."""
        self.epoch = epoch

    def _item(self, index: int) -> int:
        """The photo an index serves (IndexError past the end, as a Dataset must)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return index % self._count

    def _load(self, path: Path) -> np.ndarray:
        """The photo's uint8 (H, W, 3) pixels, from the cache when there is one."""
        if self._cache is not None and path in self._cache:
            return self._cache[path]
        pixels = read_rgb(path).pixels
        if self._cache is not None:
            self._cache[path] = pixels
        return pixels
