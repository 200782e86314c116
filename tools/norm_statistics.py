"""What the instance norms' int8 steps cost a PTQ/QAT checkpoint: its fidelity to the FP32 network
on held-out photos, with the quantization after chosen norm ops switched off (docs/results.md,
"The validation frames lose their fidelity in the norms' statistics").

The checkpoint's quantized reference model (`quantize.convert`, computed in float by PyTorch)
loses the quantize/dequantize pair after each chosen op of every InstanceNorm, so that op's
float value passes on; every other tensor stays int8. One op each: `mean` (both means: the mean
and the variance), `square` ((x - mean)^2), `eps` (var + eps), `rsqrt`, `scaled` ((x - mean) x
rstd, the norm's output before its affine), `centered` (x - mean); `stats` is the first five
(what the tables of docs/results.md labelled "the statistics" measured, the scaled map
included); `OPS:NORM` only in the norm of that module path (e.g. `stats:refine2.norm`). In a
two-pass checkpoint (`--norm-passes 2`) the second pass's ops carry a `2`: `mean2`, `centered2`,
`square2`, `rstd_sq2` (rstd^2), `eps_rstd2` (eps x rstd^2), `eps2`, `rsqrt2`, `scaled2`; `stats2`
is all of them. Each
choice is scored on the validation and test photos of `qaie quantize`'s split (a hash of the
names) at --size, as PSNR of the output rounded to 8 bits against the FP32 checkpoint's output,
per photo. The output's mean error per photo (in LSB) and the share of the squared error it
makes show a shift of the whole image. `--crops N` scores N windows per photo (patches, as
`qaie quantize --crops`): their mean and worst PSNR.

    python tools/norm_statistics.py runs/official/q/work/ptq.ckpt runs/official/fp32.ckpt \\
        --photos ../shared/data/dped-iphone-fullsize --size 1920x1080 none stats stats,centered
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.fx import GraphModule

from qaie.data.datasets import VAL_SEED, make_dataset
from qaie.nn import metrics
from qaie.quant.checkpoint import load_model
from qaie.quant.predict import checkpoint_predictor
from qaie.quant.quantize import convert, for_inference
from qaie.runtime.litert import parse_size

aten = torch.ops.aten
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default
SECOND = {"mean2", "centered2", "square2", "rstd_sq2", "eps_rstd2", "eps2", "rsqrt2", "scaled2"}
GROUPS = {"stats": {"mean", "square", "eps", "rsqrt", "scaled"}, "stats2": SECOND}


def op_kind(node: torch.fx.Node) -> str | None:
    """Which op of an InstanceNorm's chain `node` is (see the module docstring)."""
    if node.op != "call_function":
        return None
    stack = _stack(node)
    second = "2" if stack and str(stack[-1][1]).endswith("SecondPass") else ""
    if node.target == aten.mul.Tensor:
        a, b = (_computed(x) for x in node.args)
        if a is b:  # a square: of the centred map, or (second pass) of the first pass's rstd
            return "square" + second if not second or a.target == aten.sub.Tensor else "rstd_sq2"
        constant = not isinstance(b, torch.fx.Node) or b.op == "get_attr"
        return "eps_rstd2" if second and constant else "scaled" + second
    kinds = {
        aten.mean.dim: "mean",
        aten.add.Tensor: "eps",
        aten.rsqrt.default: "rsqrt",
        aten.sub.Tensor: "centered",
    }
    return kinds[node.target] + second if node.target in kinds else None


def _computed(arg: object) -> object:
    """The op that computed `arg`, past the quantize/dequantize pairs between."""
    while isinstance(arg, torch.fx.Node) and arg.target in (QUANTIZE, DEQUANTIZE):
        arg = arg.args[0]
    return arg


def _stack(node: torch.fx.Node) -> list[tuple[str, object]]:
    return list((node.meta.get("nn_module_stack") or {}).values())


def norm_of(node: torch.fx.Node) -> str | None:
    """The module path of the InstanceNorm `node` belongs to (its second pass included), if any."""
    return next((path for path, kind in reversed(_stack(node)) if "InstanceNorm" in str(kind)), None)


def float_norm_ops(prepared: GraphModule, choice: str) -> tuple[GraphModule, int]:
    """The reference model with the chosen norm ops' outputs unquantized; how many were."""
    names, _, only = choice.partition(":")
    kinds = set().union(*(GROUPS.get(name, {name}) for name in names.split(",") if name != "none"))
    converted = convert(prepared)
    count = 0
    for node in list(converted.graph.nodes):
        if node.target is QUANTIZE:
            source = node.args[0]
            norm = norm_of(source) if op_kind(source) in kinds else None
            if norm is not None and norm.startswith(only):
                for dequantize in list(node.users):
                    dequantize.replace_all_uses_with(source)
                count += 1
    converted.graph.eliminate_dead_code()
    converted.recompile()
    return for_inference(converted), count


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a PTQ or QAT checkpoint")
    parser.add_argument("fp32", help="the FP32 checkpoint it was made from")
    parser.add_argument(
        "choices",
        nargs="+",
        help="none, stats, stats2, or ops (mean, square, eps, rsqrt, scaled, centered; a second pass's "
        "with a 2, see above), comma-joined; :NORM for one norm",
    )
    parser.add_argument("--photos", required=True)
    parser.add_argument("--size", required=True, help="HxW, as given to qaie quantize")
    parser.add_argument("--crops", type=int, default=1, help="windows per photo, as qaie quantize --crops")
    args = parser.parse_args()
    size = parse_size(args.size)
    reference = checkpoint_predictor(args.fp32)
    prepared = load_model(args.checkpoint).net
    splits = {
        split: make_dataset(
            f"photos:{args.photos}", split, crop=size, seed=VAL_SEED, repeats=args.crops, held_out=True
        )
        for split in ("val", "test")
    }
    targets = {
        split: [reference(photos[i][0][None]) for i in range(len(photos))] for split, photos in splits.items()
    }
    for choice in args.choices:
        model, count = float_norm_ops(prepared, choice)
        for split, photos in splits.items():
            psnrs, shifts, shares = [], [], []
            for i, target in enumerate(targets[split]):
                out = (model(photos[i][0][None]).clamp(0, 1) * 255).round() / 255
                error = (out - target).double() * 255
                shift = error.mean(dim=(0, 2, 3))
                psnrs.append(round(float(metrics.psnr(out, target)[0]), 2))
                shifts.append([round(float(s), 2) for s in shift])
                shares.append(round(float((shift**2).mean() / (error**2).mean()), 3))
            row = {"float": choice, "unquantized": count, "split": split, "photos": photos.names}
            row |= {"mean_psnr": round(sum(psnrs) / len(psnrs), 2)}
            if args.crops > 1:
                row |= {"windows": len(psnrs), "min_psnr": min(psnrs)}
            else:
                row |= {"psnr": psnrs, "mean_error_lsb": shifts, "shift_share_of_mse": shares}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
