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


def open_deployed(path: str | os.PathLike, num_threads: int | None = None) -> TileModel:
    """The runtime for an exported file: ONNX Runtime for `.onnx`, LiteRT for anything else
    (which says whether the file is a `.tflite`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from qaie.runtime.onnxrt import OnnxModel

        return OnnxModel(path, num_threads)
    if suffix == ".pte":
        raise QaieError(
            f"{path}: an ExecuTorch file runs through torch, not here; time it with tools/runtime_latency.py"
        )
    from qaie.runtime.litert import TFLiteModel

    return TFLiteModel(path, num_threads)
