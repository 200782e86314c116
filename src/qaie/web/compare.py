"""One uploaded photo through each model, and two outputs compared (the INT8-vs-FP32 view)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaie import api
from qaie.imageio import RGBImage, decode_rgb
from qaie.runtime.litert import TileModel

DIFF_GAIN = 8  # the difference map shows |a - b| x 8, so a 1-LSB difference is visible
WARM_UP_SIDE = 64


@dataclass(frozen=True)
class NamedModel:
    """A model loaded once at start-up, with the name the page shows."""

    name: str
    model: TileModel


@dataclass(frozen=True)
class Output:
    name: str
    pixels: np.ndarray  # (H, W, 3) uint8: qaie.enhance of the photo with this model
    seconds: float


@dataclass(frozen=True)
class Comparison:
    """What the page shows for one photo: the decoded input, each model's output, and for two
    models their amplified difference and the PSNR between them."""

    photo: RGBImage
    outputs: list[Output]
    diff: np.ndarray | None = None  # (H, W, 3) uint8: min(255, |a - b| * DIFF_GAIN)
    psnr_db: float | None = None  # inf when the outputs are equal


def load_models(specs: list[str | os.PathLike] | None, threads: int | None = None) -> list[NamedModel]:
    """Each spec (a model file, a checkpoint, a shipped name) loaded by `qaie.load`; none: the
    shipped model. Names are the files' names, numbered where two are the same. Each model
    enhances a small gray image once, so the first photo's time is not its first call's."""
    specs = specs or [None]
    names = [_name(spec) for spec in specs]
    named = [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]
    models = [NamedModel(n, api.load(spec, threads=threads)) for n, spec in zip(named, specs, strict=True)]
    for m in models:
        api.enhance(np.full((WARM_UP_SIDE, WARM_UP_SIDE, 3), 128, np.uint8), m.model)
    return models


class Comparer:
    """Enhances uploads with the loaded models, one photo at a time (an interpreter is not
    thread-safe, and two photos at once would only share the same cores)."""

    def __init__(self, models: list[NamedModel]) -> None:
        self.models = models
        self._lock = threading.Lock()

    def compare(self, data: bytes, filename: str, chosen: list[int]) -> Comparison:
        """`data`, an uploaded image file, through the models at the indices `chosen` (1 or 2).
        Bad files raise the QaieError `qaie enhance` prints, naming `filename`."""
        photo = decode_rgb(data, filename)
        with self._lock:
            outputs = [self._run(self.models[i], photo.pixels) for i in chosen]
        if len(outputs) < 2:
            return Comparison(photo, outputs)
        a, b = outputs[0].pixels, outputs[1].pixels
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)) * DIFF_GAIN
        return Comparison(photo, outputs, np.minimum(diff, 255).astype(np.uint8), psnr_between(a, b))

    @staticmethod
    def _run(named: NamedModel, pixels: np.ndarray) -> Output:
        start = time.perf_counter()
        out = api.enhance(pixels, named.model)
        return Output(named.name, out, time.perf_counter() - start)


def psnr_between(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 photos, by the project's metric (qaie.nn.metrics; imports torch)."""
    from qaie.nn.metrics import psnr

    return float(psnr(a, b)[0])


def _name(spec: str | os.PathLike | None) -> str:
    if spec is None:
        from qaie.runtime.models import default_model

        return default_model().stem
    return Path(spec).name
