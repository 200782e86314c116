"""Deployed model files by extension: `.tflite` (LiteRT) and `.onnx` (ONNX Runtime), torch-free.

One place that maps a file to its runtime, so `qaie enhance`, `evaluate`, `parity` and `bench`
take every format the same way. (ExecuTorch's `.pte` runs through torch, so its runner lives
in `qaie.quant.export_executorch`, and `qaie.quant.deployed` adds it to this dispatch.)
"""

from __future__ import annotations

import os
from pathlib import Path

from qaie.errors import QaieError
from qaie.runtime.litert import TileModel

DEPLOYED_SUFFIXES = (".tflite", ".onnx")


def is_deployed(path: str | os.PathLike) -> bool:
    """True for a file this layer runs (by its extension)."""
    return Path(path).suffix.lower() in DEPLOYED_SUFFIXES


def open_deployed(path: str | os.PathLike, num_threads: int | None = None) -> TileModel:
    """The runtime for an exported file: LiteRT for `.tflite`, ONNX Runtime for `.onnx`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        from qaie.runtime.litert import TFLiteModel

        return TFLiteModel(path, num_threads)
    if suffix == ".onnx":
        from qaie.runtime.onnxrt import OnnxModel

        return OnnxModel(path, num_threads)
    raise QaieError(
        f"{path}: unknown model type {suffix!r}; pass an exported {' or '.join(DEPLOYED_SUFFIXES)}"
    )
