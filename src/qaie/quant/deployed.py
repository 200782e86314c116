"""Every deployed format by extension, ExecuTorch's `.pte` included.

`qaie.runtime.formats.open_deployed` opens the torch-free formats (`.tflite`, `.onnx`);
ExecuTorch's Python runtime is built on torch, so the one dispatch that also takes `.pte`
lives at this layer, for the commands above it (evaluate, parity, enhance).
"""

from __future__ import annotations

import os
from pathlib import Path

from qaie.runtime import formats
from qaie.runtime.litert import TileModel

DEPLOYED_SUFFIXES = (*formats.DEPLOYED_SUFFIXES, ".pte")


def is_deployed(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in DEPLOYED_SUFFIXES


def open_deployed(path: str | os.PathLike, num_threads: int | None = None) -> TileModel:
    """The runtime for an exported file: LiteRT, ONNX Runtime or ExecuTorch (XNNPACK)."""
    if Path(path).suffix.lower() == ".pte":
        from qaie.quant.export_executorch import PteModel

        return PteModel(path, num_threads)
    return formats.open_deployed(path, num_threads)
