"""Evaluate a model on a data split: PSNR/SSIM of its output and of the input (the baseline).

The model is anything that maps an image to an image (a `Predictor`): a checkpoint through
`qaie.quant.checkpoint.load_model`, or an exported `.tflite` through the LiteRT runtime (uint8 in
and out, as on the phone). Metrics follow `qaie.nn.metrics.CONVENTION`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from qaie.imageio import to_uint8
from qaie.nn import metrics
from qaie.progress import progress as progress_bar
from qaie.quant.predict import Predictor, checkpoint_predictor


@dataclass
class EvalResult:
    """Means over the split's images (JSON keys of `qaie evaluate --json`)."""

    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float
    n_images: int
    convention: str
    data: str
    split: str
    model: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class FidelityResult:
    """Means over the images of MODEL's output against REFERENCE's output on the same input
    (no targets needed: `qaie evaluate --reference`)."""

    psnr: float
    ssim: float
    n_images: int
    convention: str
    data: str
    split: str
    model: str
    reference: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def tflite_predictor(path: str | os.PathLike) -> Predictor:
    """An exported model (.tflite, .onnx, .pte) in its runtime; inputs rounded to uint8 as a
    camera gives them."""
    from qaie.runtime.litert import enhance_image
    from qaie.runtime.registry import open_deployed

    model = open_deployed(path)

    def predict(x: torch.Tensor) -> np.ndarray:
        pixels = to_uint8(x[0].permute(1, 2, 0))  # (H, W, 3)
        return enhance_image(model, pixels)

    return predict


def predictor_for(path: str | os.PathLike) -> Predictor:
    """The predictor for a model file: an exported file through its runtime, anything else as
    a checkpoint."""
    from qaie.runtime.registry import is_deployed

    return tflite_predictor(path) if is_deployed(path) else checkpoint_predictor(path)


def evaluate(
    predict: Predictor,
    dataset: torch.utils.data.Dataset,
    *,
    model: str,
    data: str,
    split: str,
    progress: bool = True,
) -> EvalResult:
    """Mean PSNR/SSIM of `predict`'s outputs, and of the inputs, against the targets."""
    sums = np.zeros(4)  # psnr, ssim, input psnr, input ssim
    n = len(dataset)
    for i in progress_bar(range(n), desc="evaluate", unit="image", disable=not progress):
        x, y = dataset[i]  # (3, H, W) each
        x, y = x[None], y[None]
        pred = predict(x)
        sums += [
            float(metrics.psnr(pred, y)[0]),
            float(metrics.ssim(pred, y)[0]),
            float(metrics.psnr(x, y)[0]),
            float(metrics.ssim(x, y)[0]),
        ]
    means = sums / n
    return EvalResult(
        *means.tolist(), n_images=n, convention=metrics.CONVENTION, data=data, split=split, model=model
    )


def evaluate_fidelity(
    predict: Predictor,
    reference: Predictor,
    dataset: torch.utils.data.Dataset,
    *,
    model: str,
    reference_name: str,
    data: str,
    split: str,
    progress: bool = True,
) -> FidelityResult:
    """Mean PSNR/SSIM of `predict`'s outputs against `reference`'s, whole image to whole image
    (each model sees the same whole input: instance norms make outputs depend on all of it)."""
    sums = np.zeros(2)
    n = len(dataset)
    for i in progress_bar(range(n), desc="fidelity", unit="image", disable=not progress):
        x = dataset[i][0][None]  # (1, 3, H, W)
        pred, ref = predict(x), reference(x)
        sums += [float(metrics.psnr(pred, ref)[0]), float(metrics.ssim(pred, ref)[0])]
    means = sums / n
    return FidelityResult(
        *means.tolist(), n_images=n, convention=metrics.CONVENTION, data=data, split=split, model=model,
        reference=reference_name,
    )  # fmt: skip
