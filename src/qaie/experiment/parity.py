"""Does the deployed artifact compute what the PyTorch model computes? One comparison helper
(`compare`), reused by the tests and by `qaie parity`.

Both sides are compared as 8-bit images, the resolution of the deployed output: one LSB is
1/255 of the [0, 1] range. The quantized PyTorch reference already ends on that grid (its
output is quantized at scale 1/255, exactly like the INT8 artifact's), so rounding it to
uint8 is exact; an FP32 output is rounded to the nearest level, as the runtime does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qaie.config import ModelConfig, to_dict
from qaie.errors import QaieError
from qaie.imageio import to_uint8
from qaie.runtime.litert import read_sidecar, sidecar_path


@dataclass(frozen=True)
class ParityStats:
    """PSNR (dB, peak 255) between two 8-bit images and their absolute difference in LSB."""

    psnr: float  # inf when identical
    mean_abs_lsb: float
    max_abs_lsb: int
    pixels: int  # values compared (H * W * 3 per image)


def compare(reference: np.ndarray, actual: np.ndarray) -> ParityStats:
    """Compare two images (or stacks) of the same shape: float in [0, 1] or uint8 levels."""
    from skimage.metrics import peak_signal_noise_ratio

    if reference.shape != actual.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {actual.shape}")
    ref, act = (a if a.dtype == np.uint8 else to_uint8(a) for a in (reference, actual))
    diff = np.abs(ref.astype(np.int32) - act.astype(np.int32))
    with np.errstate(divide="ignore"):  # identical images: inf dB
        psnr = float(peak_signal_noise_ratio(ref, act, data_range=255))
    return ParityStats(psnr, float(diff.mean()), int(diff.max()), diff.size)


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) -> (height, width, 3): centre crop where larger, mirror padding where smaller."""
    pads = []
    for axis, size in enumerate((height, width)):
        extra = image.shape[axis] - size
        if extra >= 0:
            image = image.take(range(extra // 2, extra // 2 + size), axis=axis)
            pads.append((0, 0))
        else:
            pads.append((-extra // 2, -extra - (-extra // 2)))
    return np.pad(image, [*pads, (0, 0)], mode="symmetric")


@dataclass(frozen=True)
class ParityReport:
    """`qaie parity`: the quantized PyTorch model vs the LiteRT artifact on the same images."""

    checkpoint: str
    tflite: str
    reference: str  # what ran on the PyTorch side
    images: int  # per size
    overall: ParityStats
    per_size: dict[str, ParityStats]

    def to_json(self) -> dict:
        return {
            "parity_psnr": self.overall.psnr,  # null (JSON has no Infinity) when identical
            "identical": self.overall.max_abs_lsb == 0,
            "mean_abs_lsb": self.overall.mean_abs_lsb,
            "max_abs_lsb": self.overall.max_abs_lsb,
            "images": self.images,
            "reference": self.reference,
            "checkpoint": self.checkpoint,
            "tflite": self.tflite,
            "sizes": {k: asdict(v) for k, v in self.per_size.items()},
        }


def run_parity(
    checkpoint: Path, tflite: Path, data: str, *, limit: int | None = None, seed: int = 0
) -> ParityReport:
    """Run the checkpoint's model and the exported file (.tflite, .onnx) on the same validation
    images at every size the file exports (each image centre-cropped or mirror-padded to the
    size; a file of any size takes each image whole); the checkpoint is QAT/PTQ for an INT8
    file, FP32 for an FP32 one.

    PyTorch side: for QAT/PTQ checkpoints the quantized reference (`qaie.quant.reference.reference_model`
    of the prepared graph, which is also the frozen fake-quant model's function); for FP32
    the float network. Both sides get the same 8-bit input (the crop rounded to uint8).
    """
    import torch

    from qaie.data.datasets import make_dataset
    from qaie.progress import progress
    from qaie.quant import quantize
    from qaie.quant.checkpoint import load_model
    from qaie.quant.reference import reference_model
    from qaie.runtime.registry import open_deployed

    model = open_deployed(tflite)
    loaded = load_model(checkpoint)
    _check_same_network(checkpoint, loaded.config, tflite)
    if loaded.quant is None and model.is_int8:
        raise QaieError(f"{checkpoint}: FP32 checkpoint but {tflite} is INT8; give the QAT/PTQ checkpoint")
    if loaded.quant is not None and not model.is_int8:
        raise QaieError(f"{checkpoint}: {loaded.quant} checkpoint but {tflite} is FP32; give the FP32 one")
    # A file whose upsample + conv3x3 are in phase form (`qaie.quant.phases`) has its own int8
    # phase kernels: its reference is converted at each of its sizes the same way.
    phases = bool(loaded.quant and read_sidecar(tflite).get("phases"))
    net = None if phases else reference_model(loaded.net) if loaded.quant else loaded.net.eval()
    reference = f"reference_model ({loaded.quant} graph)" if loaded.quant else "FP32 EnhanceNet"
    reference += " in phase form" if phases else ""

    dataset = make_dataset(data, "val", crop=None, seed=seed, limit=limit)  # whole images
    images = [dataset[i][0].permute(1, 2, 0).numpy() for i in range(len(dataset))]  # (h, w, 3)
    per_size, refs, acts = {}, [], []
    for size in model.sizes or [None]:  # None: any size (ONNX), each image whole
        key = f"{size[0]}x{size[1]}" if size else "whole"
        if phases:
            net = reference_model(
                quantize.reprepare(loaded.net, torch.rand(1, 3, *size), dynamic=False), True
            )
        size_refs, size_acts = [], []
        for image in progress(images, desc=f"parity {key}", leave=False):
            pixels = to_uint8(fit(image, *size) if size else image)  # (h, w, 3): what both sides see
            with torch.no_grad():
                x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
                size_refs.append(to_uint8(net(x)[0].permute(1, 2, 0).numpy()).ravel())
            size_acts.append(model.run(pixels).ravel())
        per_size[key] = compare(np.concatenate(size_refs), np.concatenate(size_acts))
        refs += size_refs
        acts += size_acts
    overall = compare(np.concatenate(refs), np.concatenate(acts))
    return ParityReport(str(checkpoint), str(tflite), reference, len(images), overall, per_size)


def _check_same_network(checkpoint: Path, config: ModelConfig, tflite: Path) -> None:
    """The export sidecar records the network a .tflite came from: a checkpoint of another
    architecture is a mix-up, named before any work (without a sidecar nothing is known)."""
    exported = read_sidecar(tflite).get("model_config")
    if exported and exported != to_dict(config):
        diff = ", ".join(
            f"{k} {exported.get(k)} vs {v}" for k, v in to_dict(config).items() if exported.get(k) != v
        )
        raise QaieError(
            f"{checkpoint}: not the network {tflite} was exported from ({diff}; see {sidecar_path(Path(tflite)).name})"
        )
