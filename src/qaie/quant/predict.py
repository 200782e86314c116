"""Any model file as something that enhances photos: a deployed file in its runtime
(`qaie.runtime.registry`), or a training checkpoint in PyTorch (FP32, or QAT/PTQ as its
quantized reference model).

`open_model` opens any model path for enhancing (`qaie enhance`, `qaie figure`, `qaie.load`);
which runtime a deployed file gets is the registry's answer. torch is imported only when the
path is a checkpoint or a `.pte`, so enhancing with a `.tflite` stays torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qaie.errors import QaieError
from qaie.imageio import Size, to_uint8
from qaie.runtime import registry
from qaie.runtime.litert import TileModel
from qaie.runtime.models import default_model
from qaie.runtime.wholephoto import check_window

if TYPE_CHECKING:
    import torch

    from qaie.quant.checkpoint import LoadedModel

# (1, 3, H, W) float32 in [0, 1] -> the enhanced image: a tensor of that shape, or a uint8
# (H, W, 3) array (what a LiteRT model returns); `qaie.nn.metrics` accepts both.
Predictor = Callable[["torch.Tensor"], "torch.Tensor | np.ndarray"]

CHECKPOINT_TILE = (512, 512)  # PyTorch runs any size; windows bound its activation memory


def open_model(
    path: str | os.PathLike | None,
    num_threads: int | None = None,
    tile: Size | None = None,
    *,
    whole: bool = False,
) -> TileModel:
    """A `.tflite` in LiteRT or a `.onnx` in ONNX Runtime (torch-free; `num_threads` applies), a
    `.pte` in ExecuTorch, a training checkpoint in PyTorch (stages in windows of `tile`, default
    CHECKPOINT_TILE; with `whole`, the whole photo in one pass: the reference), or, when None,
    the shipped model."""
    path = default_model() if path is None else Path(path)
    runtime = registry.find(path)
    if runtime is not None:
        if whole and runtime.name == "litert":
            raise QaieError(
                "--tile none runs a checkpoint on the whole photo in one pass; a .tflite has fixed "
                "sizes (it computes the whole-photo output in windows by itself)"
            )
        return runtime.open(path, num_threads)
    if registry.is_checkpoint_name(path):
        return CheckpointModel(path, None if whole else tile or CHECKPOINT_TILE)
    raise QaieError(
        f"{path}: unknown model type {path.suffix!r}; pass an exported "
        f"{', '.join(registry.DEPLOYED_SUFFIXES[:-1])} or {registry.DEPLOYED_SUFFIXES[-1]}, or a "
        f"checkpoint ({', '.join(registry.CHECKPOINT_SUFFIXES)})"
    )


class CheckpointModel:
    """A training checkpoint run in PyTorch (imports torch): FP32, or QAT/PTQ as its quantized
    reference model. For comparing with the deployed `.tflite`, which is what a phone runs.

    With a `window`, photos run stage by stage in windows of that size (qaie.quant.split;
    memory bounded, the whole-photo output); with None, in one pass over the whole photo.
    """

    def __init__(self, path: Path, window: Size | None) -> None:
        from qaie.quant.checkpoint import load_model
        from qaie.quant.reference import TorchStageRunner

        if window is not None:
            check_window(window)
        loaded = load_model(path)  # read once: the one-pass predictor and the stages share it
        self._predict = loaded_predictor(loaded)
        self.sizes = None if window is None else (window,)
        self.stages = None if window is None else TorchStageRunner(loaded.net, [window], loaded.config)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W) in [0, 1]
        return to_uint8(self._predict(x)[0].permute(1, 2, 0))  # (H, W, 3)


def checkpoint_predictor(path: str | os.PathLike) -> Predictor:
    """A checkpoint's network; a QAT/PTQ one as its quantized reference model (int8 simulated)."""
    from qaie.quant.checkpoint import load_model

    return loaded_predictor(load_model(path))


def loaded_predictor(loaded: LoadedModel) -> Predictor:
    """`checkpoint_predictor` of a checkpoint already loaded (its `net` is left as it is)."""
    import torch

    net = loaded.net
    if loaded.quant is not None:
        from qaie.quant.reference import reference_model

        net = reference_model(net)

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return net(x)

    return predict
