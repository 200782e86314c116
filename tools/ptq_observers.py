"""PTQ observer experiment (README, "Closing the gap"): which activation ranges bring a PTQ model
of the imported official weights close to its FP32 network on whole 1920x1080 frames?

qaie's PTQ observes every activation with a moving-average min/max (constant 0.01, so the first
batch decides). Here the observers are swapped by the kind of tensor they watch, after
`prepare_ptq` and before calibration: `stat` (the instance norms' means, variances and var + eps),
`square` (the norms' squared deviations), `head` (the last convolution's output), `other`.
Choices: `movavg` (qaie's), `minmax` (over all batches), `avg` (moving average, constant 0.1),
`hist` (torchao's HistogramObserver), `unit` (min/max seeded with [-1, 1]). The converted PT2E
model is evaluated in PyTorch (its .tflite matches it to about 49 dB), centre 1920x1080 crops,
PSNR against the FP32 network's output; one JSON line.

    python tools/ptq_observers.py runs/official/fp32.ckpt --calibrate runs/dped/even \\
        --evaluate runs/dped/odd --limit 5 --crop whole stat=minmax other=avg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchao.quantization.pt2e import observer

from qaie.data.datasets import make_dataset
from qaie.imageio import to_uint8
from qaie.nn import metrics
from qaie.quant import quantize
from qaie.quant.calibrate import calibration_batches
from qaie.quant.checkpoint import load_model
from qaie.runtime.litert import parse_size

FRAME = (1920, 1080)
INT8 = {"dtype": torch.int8, "quant_min": -128, "quant_max": 127, "qscheme": torch.per_tensor_affine}


def centre_frames(folder: Path, limit: int | None = None) -> list[torch.Tensor]:
    """(1, 3, 1920, 1080) centre crops in [0, 1] of the photos in `folder` (first `limit` by
    name), each turned to portrait: what `qaie evaluate --crop 1920x1080` feeds the model."""
    frames = make_dataset(f"photos:{folder}", "test", crop=FRAME, limit=limit)
    return [frames[i][0][None] for i in range(len(frames))]


def kind(node) -> str:
    """What an activation observer watches (see the module docstring)."""
    source = node.args[0]
    stack = source.meta.get("nn_module_stack", {})
    if stack and list(stack.values())[-1][0] == "head":
        return "head"
    target = str(source.target)
    if "mean" in target or any("rsqrt" in str(user.target) for user in node.users):
        return "stat"
    if "mul" in target and len(source.args) == 2 and source.args[0] is source.args[1]:
        return "square"
    return "other"


def make(choice: str) -> observer.ObserverBase:
    if choice == "unit":
        made = observer.MinMaxObserver(**INT8)
        made.min_val, made.max_val = torch.tensor(-1.0), torch.tensor(1.0)
        return made
    if choice == "avg":
        return observer.MovingAverageMinMaxObserver(averaging_constant=0.1, **INT8)
    return {"minmax": observer.MinMaxObserver, "hist": observer.HistogramObserver}[choice](**INT8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="FP32 checkpoint")
    parser.add_argument("--calibrate", type=Path, required=True, help="folder of calibration photos")
    parser.add_argument("--evaluate", type=Path, required=True, help="folder of evaluation photos")
    parser.add_argument("--limit", type=int, default=5, help="first N evaluation photos (by name)")
    parser.add_argument("--crop", default="whole", help="calibration: 'whole' (1920x1080 frames) or N|HxW")
    parser.add_argument("policy", nargs="*", help="KIND=CHOICE, e.g. stat=minmax other=avg")
    args = parser.parse_intermixed_args()
    policy = dict(item.split("=") for item in args.policy)
    torch.set_num_threads(2)

    graph = quantize.prepare_ptq(load_model(args.checkpoint).net, torch.rand(1, 3, 64, 64))
    for node in graph.graph.nodes:
        module = getattr(graph, str(node.target), None) if node.op == "call_module" else None
        if isinstance(module, observer.MovingAverageMinMaxObserver) and module.dtype == torch.int8:
            choice = policy.get(kind(node), "movavg")
            if choice != "movavg":
                setattr(graph, str(node.target), make(choice))
    if args.crop == "whole":
        batches = centre_frames(args.calibrate)
    else:
        batches = calibration_batches(f"photos:{args.calibrate}", images=128, crop=parse_size(args.crop))
    quantize.calibrate(graph, batches)
    converted = quantize.convert(graph)

    net = load_model(args.checkpoint).net.eval()
    scores = []
    with torch.no_grad():
        for x in centre_frames(args.evaluate, args.limit):
            out, ref = (to_uint8(y(x)[0].permute(1, 2, 0)) for y in (converted, net))  # as qaie evaluate
            scores.append(round(float(metrics.psnr(out, ref)[0]), 2))
    result = {"crop": args.crop, "policy": policy, "psnr_mean": round(float(np.mean(scores)), 2)}
    print(json.dumps({**result, "per_photo": scores}))


if __name__ == "__main__":
    main()
