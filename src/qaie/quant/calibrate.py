"""PTQ calibration data (training crops) and PTQ as a checkpoint (`qaie calibrate`).

Apart from the quantizer (`quantize`) because it reads data and checkpoints, which
`checkpoint` in turn builds on the quantizer: this module sits above both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.fx import GraphModule

from qaie.data.datasets import make_dataset
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet
from qaie.quant.checkpoint import EXAMPLE_SIZE, load_model, save_model
from qaie.quant.equalize import equalize_norm_inputs
from qaie.quant.quantize import calibrate, prepare_ptq

BATCH_PIXELS = 16 * 128 * 128  # calibration batches hold at most 16 crops of 128x128


def calibration_batches(
    spec: str, images: int = 128, crop: int | tuple[int, int] = 100, seed: int = 0, held_out: bool = False
) -> list[Tensor]:
    """PTQ calibration data: `images` training crops of the data `spec` (cycling through small
    datasets with fresh random crops), as (B, 3, H, W) batches in [0, 1].

    `crop` is a side or (H, W) (photos: data, turned to the crop's orientation). The instance
    norms' statistics are those of whatever the network sees, so calibrating on crops of the
    size the model will run at (e.g. 1920x1080 for whole frames) gives it the ranges it meets
    there. Batches shrink with the crop (down to 1) to bound memory. `held_out`: photos: data
    split by name (`make_dataset`), calibrating on its train split only."""
    if images < 1:
        raise QaieError(f"--calibrate-images must be at least 1, got {images}")
    dataset = make_dataset(spec, "train", crop=crop, seed=seed, held_out=held_out)
    if len(dataset) < images:
        repeats = -(-images // len(dataset))
        dataset = make_dataset(spec, "train", crop=crop, seed=seed, repeats=repeats, held_out=held_out)
    h, w = (crop, crop) if isinstance(crop, int) else crop
    batch_size = max(1, min(16, BATCH_PIXELS // (h * w)))
    crops = [dataset[i][0] for i in range(images)]  # (3, H, W) inputs
    return [torch.stack(crops[i : i + batch_size]) for i in range(0, images, batch_size)]


def quantized_graph(source: EnhanceNet | GraphModule, calibration: Iterable[Tensor] | None) -> GraphModule:
    """The prepared QAT/PTQ graph an INT8 export converts: `source` itself, or an FP32 network
    calibrated on `calibration` (PTQ)."""
    if not isinstance(source, EnhanceNet):
        return source
    if calibration is None:
        raise QaieError("INT8 export of an FP32 model needs calibration images (PTQ); pass --calibrate SPEC")
    prepared = prepare_ptq(source, torch.rand(1, 3, *EXAMPLE_SIZE))  # dynamic H, W
    calibrate(prepared, calibration)
    return prepared


def calibrate_checkpoint(
    source: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    *,
    images: int = 128,
    crop: int | tuple[int, int] = 100,
    seed: int = 0,
    held_out: bool = False,
    equalize: bool = False,
    norm_passes: int | None = None,
) -> GraphModule:
    """PTQ as a checkpoint: the FP32 checkpoint `source` prepared, calibrated on `images`
    training crops of `data`, saved to `out` (reloads like a QAT checkpoint; `qaie export`
    and `qaie parity` take it). No training. `equalize`: the norms' input channels first
    brought to one range on the same crops (`qaie.quant.equalize`; the saved weights are those).
    `norm_passes`: the norms' form to quantize (`ModelConfig.norm_passes`; default the checkpoint's)."""
    loaded = load_model(source)
    if norm_passes is not None and loaded.quant is None:
        loaded = load_model(source, expect=dataclasses.replace(loaded.config, norm_passes=norm_passes))
    if loaded.quant is not None:
        raise QaieError(f"{source}: already quantized ({loaded.quant}); PTQ starts from an FP32 checkpoint")
    batches = calibration_batches(data, images=images, crop=crop, seed=seed, held_out=held_out)
    net = equalize_norm_inputs(loaded.net, batches) if equalize else loaded.net
    prepared = prepare_ptq(net, torch.rand(2, 3, *EXAMPLE_SIZE))  # dynamic H, W
    calibrate(prepared, batches)
    save_model(out, prepared, loaded.config, "ptq", train_config=loaded.train_config)
    return prepared
