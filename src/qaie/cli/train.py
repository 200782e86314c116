"""`qaie train`: FP32 or QAT training on Lightning."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from qaie.cli.common import add_model_args, model_config_from_args
from qaie.cli.quantize import add_norm_passes
from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (FP32, or QAT with --qat) on Lightning")
    p.add_argument(
        "--data", required=True, help=f"data spec: {SPEC_SYNTAX} (photos: has no targets to train on)"
    )
    p.add_argument("--out", required=True, help="run folder: best.ckpt, last.ckpt, metrics.csv, config.json")
    p.add_argument("--epochs", type=int, default=50, help="total epochs (default 50, the paper's)")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="crops per step and device (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4; 1e-5 with --qat)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="linear warm-up, then cosine (default 1)")
    p.add_argument(
        "--crop", default="100", help="training crop size (default 100, as DPED); HxW: frames of photos: data"
    )
    p.add_argument("--repeats", type=int, default=1, help="crops per image per epoch (default 1)")
    p.add_argument("--loss", default="paper", help="paper | msssim | l1 | mse (default paper)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, crops, degradations, order")
    p.add_argument(
        "--val-crop", default="128", help="validation centre crop, N or HxW (default 128; 0: whole images)"
    )
    p.add_argument("--val-limit", type=int, help="validate on the first N images only")
    p.add_argument("--precision", default="32", help="32 | bf16-mixed (default 32)")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | cuda (default auto: CUDA if present)")
    p.add_argument("--devices", type=int, default=1, help="devices per node (default 1)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--strategy", default="auto", help="auto | ddp | ddp_spawn (default auto)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    p.add_argument("--qat", action="store_true", help="quantization-aware training (fake int8)")
    p.add_argument("--init", help="FP32 checkpoint to start from (QAT fine-tuning)")
    p.add_argument("--freeze-observers-after", type=int, metavar="STEPS", help="QAT: freeze observers")
    p.add_argument(
        "--teacher",
        metavar="CKPT",
        help="FP32 checkpoint whose outputs are the targets (default with --qat on photos: data: --init)",
    )
    p.add_argument(
        "--calibrate-size",
        metavar="HxW",
        help="QAT: set the ranges by PTQ's observers on training photos of this size first, then freeze them",
    )
    p.add_argument(
        "--ranges",
        metavar="CKPT",
        help="QAT: start from this PTQ checkpoint (qaie calibrate) or QAT checkpoint: its weights, and "
        "its ranges, kept",
    )
    add_norm_passes(p, default=None)  # None: the --ranges checkpoint's form, else 1
    p.add_argument(
        "--shrink", type=int, default=1, help="average-pool each training batch by this factor (default 1)"
    )
    p.add_argument(
        "--learn-ranges",
        type=float,
        metavar="LR",
        help="QAT with --ranges or --calibrate-size: train each activation's scale (LSQ) at this learning "
        "rate, e.g. 1e-4 (default: the ranges stay as set)",
    )
    p.set_defaults(handler=_run_train)


def _model_config(args: argparse.Namespace):  # -> ModelConfig (lazy import)
    """The flags' network, its norms in the form --norm-passes gives, or else the --ranges
    checkpoint's (a two-pass PTQ checkpoint of `qaie quantize` trains as two-pass QAT)."""
    from qaie.quant.checkpoint import checkpoint_config, read_checkpoint

    passes = args.norm_passes
    if passes is None and args.ranges is not None:
        passes = checkpoint_config(args.ranges, read_checkpoint(args.ranges), None).norm_passes
    return dataclasses.replace(model_config_from_args(args), norm_passes=passes or 1)


def _crop(text: str, flag: str) -> int | tuple[int, int]:
    """'N' -> N (0 allowed: --val-crop's whole images), 'HxW' -> (H, W)."""
    from qaie.runtime.litert import parse_size

    if "x" in text.lower():
        return parse_size(text, flag)
    try:
        return int(text)
    except ValueError:
        raise QaieError(f"{flag} {text!r}: expected N or HxW") from None


def _run_train(args: argparse.Namespace) -> int:
    from qaie.experiment.train import FP32_LR, QAT_LR, TrainConfig, train

    config = TrainConfig(
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (QAT_LR if args.qat else FP32_LR),
        warmup_epochs=args.warmup_epochs,
        crop=_crop(args.crop, "--crop"),
        repeats=args.repeats,
        loss=args.loss,
        seed=args.seed,
        val_crop=_crop(args.val_crop, "--val-crop") or None,
        val_limit=args.val_limit,
        precision=args.precision,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        accelerator=args.accelerator,
        num_workers=args.num_workers,
        qat=args.qat,
        init=args.init,
        freeze_observers_after=args.freeze_observers_after,
        teacher=args.teacher,
        calibrate_size=args.calibrate_size,
        ranges=args.ranges,
        shrink=args.shrink,
        learn_ranges=args.learn_ranges,
    )
    result = train(_model_config(args), config, args.out, resume=args.resume)
    if result.rank != 0:
        return 0
    if result.already_finished:
        print(
            f"{result.run_dir}: run already finished its {result.epochs_done} epochs; pass a larger --epochs"
        )
        return 0
    if result.interrupted:
        held = (
            f"holds epoch {result.epochs_done}"
            if result.epochs_done
            else "was not written (no epoch finished)"
        )
        print(f"qaie train: interrupted; {result.last} {held}; continue with --resume", file=sys.stderr)
        return 130
    print(
        f"{result.run_dir}: {result.epochs_done} epochs in {result.wall_s:.0f} s; best val PSNR "
        f"{result.best_val_psnr:.2f} dB -> {result.best} (last: {result.last}, metrics.csv)"
    )
    return 0
