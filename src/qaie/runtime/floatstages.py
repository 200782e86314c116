"""Stage graphs with float NCHW inputs and outputs (the `.onnx` and `.pte` stages), as int8 maps.

The stages of `qaie.quant.split` exported to ONNX or ExecuTorch take and return float32 NCHW
tensors: a quantized map enters through the graph's own quantize at its trained scale and leaves
through its dequantize. `enhance_whole` keeps the maps between stages as int8 codes (a quarter
of the memory of float ones); here they are decoded to exactly the float values the graph's
dequantize would give, and the graph's outputs encoded back to the codes it computed, so the
stages see the same integers as the LiteRT stages, which pass int8 tensors directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Callable

import numpy as np

from qaie.imageio import Size
from qaie.runtime.codec import Codec

FLOAT = Codec(np.dtype(np.float32))

# (stage, window size, NCHW float32 inputs by name) -> NCHW float32 outputs by name
RunGraph = Callable[[int, Size, dict[str, np.ndarray]], dict[str, np.ndarray]]


@functools.cache
def map_large_blocks() -> None:
    """Make glibc's malloc serve blocks of 4 MiB and more from their own mappings for good.

    Its default threshold rises to the size of each large block freed (up to 32 MiB), and
    later blocks below it come from the heap, where freed ones stay resident: a window's float
    inputs and outputs (14-28 MB at 808x1064) then pile up, about 150 MB at 12 MP. Fixing the
    threshold returns every such block to the system when it is freed.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
            ctypes.CDLL(None).mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD


class FloatIoStages:
    """A `wholephoto.StageRunner` over stage graphs with float I/O (`run_graph`): int8 codes of
    every quantized map (the scale and zero point `meta` records), float32 for the rest."""

    def __init__(self, meta: dict, window_sizes: tuple[Size, ...], run_graph: RunGraph) -> None:
        map_large_blocks()
        self.meta = meta
        self.window_sizes = window_sizes
        self._run_graph = run_graph
        self._quant = {
            name: Codec(np.dtype(np.int8), m["q"][0], int(m["q"][1]))
            for name, m in meta["maps"].items()
            if m["q"] is not None
        }
        # code -> the float32 value the graph's dequantize computes, for every int8 code
        self._values = {
            name: ((np.arange(-128, 128, dtype=np.float32) - c.zero_point) * np.float32(c.scale))
            for name, c in self._quant.items()
        }

    def quant(self, name: str) -> Codec:
        return self._quant.get(name, FLOAT)

    def run(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph_inputs = {}
        for name, value in inputs.items():  # (1, h, w, C) -> (1, C, h, w) float32
            nchw = value.transpose(0, 3, 1, 2)
            if name in self._values:  # transposed as codes (a quarter of the bytes), then decoded
                nchw = self._values[name][np.ascontiguousarray(nchw).view(np.uint8) ^ np.uint8(128)]
            graph_inputs[name] = np.ascontiguousarray(nchw, np.float32)
        outputs = self._run_graph(stage, size, graph_inputs)
        del graph_inputs
        return {
            name: self.quant(name).encode(value.transpose(0, 2, 3, 1), scratch=value.dtype == np.float32)
            for name, value in outputs.items()
        }
