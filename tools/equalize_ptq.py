"""Experiment: PTQ after per-channel range equalization of the maps between convolutions, an
exact FP32 rewrite that should suit per-tensor int8 maps; it did not help on the official
weights and is not in qaie (docs/results.md, "The validation frames lose their fidelity in the
norms' statistics"). `--maps norm-inputs` is what `qaie quantize` does (qaie.quant.equalize).

int8 activations have one scale per tensor, so a channel whose values span a tenth of the
tensor's range gets a tenth of its 256 codes. Most maps of the network can be rescaled channel by
channel without changing the function: a map written by convolutions (and the norms' per-channel
affine), passed through LeakyReLU, max-pooling, nearest resizes, sums and concatenations, and read
only by convolutions. Dividing channel i where it is written by s_i (the writers' weights and
biases) and multiplying the readers' input channel i by s_i is exact, because each op on the
way commutes with a positive per-channel scale. PTQ then sees maps whose channels span about
the same range (each as if quantized with its own scale); the writers' weights are quantized
per output channel, so their scale costs them nothing, and the readers' int8 weights take the
scale. Exact rescalings of this kind are the "cross-layer equalization" of Nagel et al. 2019
(data-free quantization); here the scales come from the channels' observed ranges.

Maps that cannot be rescaled: the tanh gates and their products (tanh is not homogeneous), the
norms' inputs (`--maps norm-inputs`: nearly exact, eps aside) and the output.
`--strength` a moves each channel's range r_i to r_i / (r_i / r_max)^a (1: all at r_max).

    python tools/equalize_ptq.py runs/official/fp32.ckpt --photos ../shared/data/dped-iphone-fullsize \
        --size 1920x1080 --strength 1 --work runs/equalize/a1
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from qaie.data.datasets import make_dataset
from qaie.experiment.quantize_photos import QuantizeConfig, fidelity
from qaie.nn.model import EnhanceNet, InstanceNorm, RefinementBlock
from qaie.quant.calibrate import calibrate_checkpoint, calibration_batches
from qaie.quant.checkpoint import load_model, save_model
from qaie.quant.equalize import MIN_SCALE, channel_peaks, equalize_norm_inputs
from qaie.quant.predict import checkpoint_predictor
from qaie.runtime.litert import parse_size


@dataclass(frozen=True)
class Group:
    """One rescalable map: `writers` lists its channel segments in order, each the modules whose
    outputs are summed into those channels; `readers` the convolutions reading the map, each with
    the index of the map's first channel among its input channels."""

    writers: tuple[tuple[nn.Module, ...], ...]
    readers: tuple[tuple[nn.Conv2d, int], ...]


def groups(net: EnhanceNet) -> list[Group]:
    """The rescalable maps of `net`, read off its forward (qaie.nn.model)."""
    c = net.config.width
    found: list[Group] = []

    def refiner(block: nn.Module, readers: tuple[tuple[nn.Conv2d, int], ...]) -> None:
        if isinstance(block, RefinementBlock):
            # cat(act(affine), conv_point) -> conv_a, project; conv_a -> act -> conv_b;
            # act(conv_b) + project -> the block's output
            found.append(Group(((block.norm,), (block.conv_point,)), ((block.conv_a, 0), (block.project, 0))))
            found.append(Group(((block.conv_a,),), ((block.conv_b, 0),)))
            found.append(Group(((block.conv_b, block.project),), readers))
        else:  # ConvRefiner: act(conv)
            found.append(Group(((block.conv,),), readers))

    refiner(net.refine2, ((net.enc4.conv_a, 0), (net.enc4.conv_b, 0), (net.dec2.reduce, c)))
    bottleneck_in = ((net.bottleneck.conv_norm, 0), (net.bottleneck.conv_point, 0))
    refiner(net.refine4, (*bottleneck_in, (net.dec4.reduce, 2 * c)))  # max-pooled on the way
    refiner(net.bottleneck, ((net.dec4.up.conv, 0),))
    refiner(net.dec4.refine, ((net.dec2.up.conv, 0),))
    refiner(net.dec2.refine, ((net.up1.conv, 0),))
    for dec in (net.dec4, net.dec2):
        found.append(Group(((dec.up.conv,),), ((dec.reduce, 0),)))  # cat(up, refined) -> reduce
        refine_in = (
            ((dec.refine.conv_norm, 0), (dec.refine.conv_point, 0))
            if isinstance(dec.refine, RefinementBlock)
            else ((dec.refine.conv, 0),)
        )
        found.append(Group(((dec.reduce, dec.reduce_skip),), refine_in))
    found.append(Group(((net.up1.conv,),), ((net.head, 0),)))
    return found


@torch.no_grad()
def equalize(net: EnhanceNet, batches: Iterable[Tensor], strength: float) -> EnhanceNet:
    """A copy of `net` computing the same function (to float rounding) whose rescalable maps
    have each channel's range (largest |value| over `batches`) moved towards the map's largest."""
    net = copy.deepcopy(net).eval()
    found = groups(net)
    ranges = channel_peaks(net, batches, {m for g in found for segment in g.writers for m in segment})
    for group in found:
        peaks = torch.cat([torch.stack([ranges[m] for m in segment]).amax(0) for segment in group.writers])
        scale = (peaks / peaks.max()).clamp_min(MIN_SCALE) ** strength  # channel i is divided by it
        start = 0
        for segment in group.writers:
            width = len(ranges[segment[0]])
            for module in segment:
                _scale_outputs(module, 1 / scale[start : start + width])
            start += width
        for conv, first in group.readers:
            conv.weight[:, first : first + len(scale)] *= scale.view(1, -1, 1, 1)
    return net


def _scale_outputs(module: nn.Module, factor: Tensor) -> None:
    if isinstance(module, InstanceNorm):  # its affine
        module.weight *= factor
    else:
        module.weight *= factor.view(-1, 1, 1, 1)
    if module.bias is not None:
        module.bias *= factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an FP32 checkpoint")
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--size", required=True, help="HxW, as given to qaie quantize")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--maps", choices=("between", "norm-inputs", "both"), default="between")
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    size, data = parse_size(args.size), f"photos:{args.photos}"
    loaded = load_model(args.checkpoint)
    photos = len(make_dataset(data, "train", crop=size, held_out=True))
    batches = calibration_batches(data, images=photos, crop=size, held_out=True)
    net = loaded.net
    if args.maps in ("norm-inputs", "both"):  # what qaie quantize does
        net = equalize_norm_inputs(net, batches)
    if args.maps in ("between", "both"):
        net = equalize(net, batches, args.strength)
    args.work.mkdir(parents=True, exist_ok=True)
    save_model(args.work / "fp32.ckpt", net, loaded.config)
    calibrate_checkpoint(
        args.work / "fp32.ckpt", data, args.work / "ptq.ckpt", images=photos, crop=size, held_out=True
    )
    config = QuantizeConfig(args.checkpoint, args.photos, size, args.work / "unused.tflite", args.work)
    predict = checkpoint_predictor(args.work / "ptq.ckpt")
    scores = {split: fidelity(predict, "equalized", config, split).psnr for split in ("val", "test")}
    print(json.dumps({"strength": args.strength, "maps": args.maps, "reference_model_psnr": scores}))


if __name__ == "__main__":
    main()
