"""The Python API: `qaie.load`, `qaie.enhance`, `qaie.create_model`, `qaie.list_models`.

What `qaie enhance` does, callable from Python: a `.tflite` runs in LiteRT without torch, a
photo of any size gets the whole-photo output (stages in windows when the file has them). The
names are re-exported lazily by `qaie/__init__.py`, so `import qaie` loads no framework.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qaie.errors import QaieError
from qaie.imageio import from_pil, read_rgb
from qaie.runtime.litert import TileModel, enhance_image
from qaie.runtime.models import MODELS_DIR, shipped_models

if TYPE_CHECKING:
    from PIL import Image

    from qaie.nn.model import EnhanceNet

ModelSpec = str | os.PathLike | TileModel | None


def list_models() -> list[str]:
    """Names `create_model` builds (the paper's widths, ``qaie_c16`` ... ``qaie_c64``) and then
    the shipped models `load` and `enhance` take (e.g. ``qaie-c32-int8``)."""
    from qaie.nn.model import VARIANTS  # torch: only the architecture table lives with the network

    return [*VARIANTS, *(m.name for m in shipped_models())]


def create_model(
    name_or_width: str | int = "qaie_c32", *, pretrained: bool = False, **ablations: Any
) -> EnhanceNet:
    """A PyTorch EnhanceNet (FP32, eval mode) by name (``qaie_c32``) or base width (32).

    `ablations` are `ModelConfig` switches (``encoder_refiners``, ``fusion_refiners``,
    ``output_residual``, ``relu_slope``). With `pretrained`, the weights of the shipped FP32
    checkpoint of that width (only the full network has one).
    """
    from qaie.config import ModelConfig
    from qaie.nn.model import VARIANTS, EnhanceNet

    if isinstance(name_or_width, str):
        if name_or_width not in VARIANTS:
            raise QaieError(f"unknown model {name_or_width!r}; known: {', '.join(VARIANTS)}, or a width")
        width = VARIANTS[name_or_width].width
    else:
        width = name_or_width
    try:
        config = ModelConfig(width=width, **ablations)
    except TypeError as err:  # an unknown keyword
        raise QaieError(f"create_model: {err}") from None
    if not pretrained:
        return EnhanceNet(config).eval()
    from qaie.quant.checkpoint import load_model

    path = MODELS_DIR / f"qaie-c{width}-fp32.ckpt"
    if not path.is_file():
        raise QaieError(f"no pretrained weights for width {width}; shipped: {_shipped_fp32()}")
    return load_model(path, expect=config).net


def load(model: ModelSpec = None, *, threads: int | None = None) -> TileModel:
    """A model ready to enhance photos: a `.tflite` (LiteRT; torch is not imported), a training
    checkpoint (PyTorch, its whole-photo output in windows), a shipped model's name, or None for
    the default shipped model. A model already loaded is returned as it is."""
    from qaie.quant.predict import open_model  # torch-free until a checkpoint is opened

    if model is not None and not isinstance(model, str | os.PathLike):
        return model
    if isinstance(model, str) and not Path(model).suffix:
        model = _shipped_path(model)
    return open_model(model, threads)


def enhance(
    image: str | os.PathLike | Image.Image | np.ndarray,
    model: ModelSpec = None,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Enhance one photo: a file path, a Pillow image or an (H, W, 3) uint8 array; returns the
    enhanced uint8 (H, W, 3) array of the same size (EXIF orientation applied, as
    `qaie enhance` writes it). `model` is anything `load` takes."""
    return enhance_image(load(model, threads=threads), _pixels(image))


def _pixels(image: Any) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        return read_rgb(image).pixels
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise QaieError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image)
    from PIL import Image

    if isinstance(image, Image.Image):
        return from_pil(image).pixels
    raise QaieError(f"expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def _shipped_path(name: str) -> Path:
    for shipped in shipped_models():
        if shipped.name == name:
            return shipped.path
    known = ", ".join(m.name for m in shipped_models()) or "none installed"
    raise QaieError(f"{name!r}: not a model file or a shipped model (shipped: {known})")


def _shipped_fp32() -> str:
    return ", ".join(p.name for p in sorted(MODELS_DIR.glob("*-fp32.ckpt"))) or "none"
