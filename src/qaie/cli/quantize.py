"""`qaie quantize` and `qaie calibrate`: an FP32 model to INT8, from photos or by PTQ on a data spec."""

from __future__ import annotations

import argparse

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError
from qaie.jsonio import dumps


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="an FP32 model and unlabelled photos -> an INT8 file: PTQ, label-free QAT, export, fidelity",
    )
    p.add_argument("checkpoint", metavar="FP32.ckpt", help="FP32 checkpoint (qaie's, or from qaie import)")
    p.add_argument("--photos", required=True, metavar="DIR", help="photos, split by name into train/val/test")
    p.add_argument("--size", required=True, metavar="HxW", help="the size the model runs at (export, frames)")
    p.add_argument("--out", required=True, help="the INT8 file: .tflite, .onnx or .pte")
    p.add_argument("--work", help="folder for the PTQ checkpoint and the QAT run (default OUT.work)")
    p.add_argument(
        "--qat-epochs",
        type=int,
        default=7,
        help="label-free QAT epochs after PTQ, one frame per training photo each (default 7: +0.7 dB over "
        "PTQ on held-out 1920x1080 frames of the official weights, docs/results.md; 0: PTQ only)",
    )
    p.add_argument(
        "--shrink",
        type=int,
        help="QAT frames (of --size) average-pooled by this factor (default 2 for sizes of 512 px a side "
        "and more, else 1)",
    )
    p.add_argument(
        "--lr", type=float, help="QAT learning rate (default 5e-5, as measured in docs/results.md)"
    )
    p.add_argument(
        "--learn-ranges",
        type=float,
        metavar="LR",
        help="QAT trains the activations' scales from PTQ's at this learning rate (default 1e-4, "
        "docs/results.md; 0: PTQ's ranges kept)",
    )
    p.add_argument(
        "--crops",
        type=int,
        default=1,
        metavar="N",
        help="windows of --size per photo for calibration, QAT, validation and test (default 1; e.g. 64 "
        "for 100x100 patches)",
    )
    add_norm_passes(p, default=2)
    p.add_argument("--test-limit", type=int, help="fidelity on the first N test photos only")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON to OUT")
    p.set_defaults(handler=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.experiment.quantize_photos import (
        LABEL_FREE_LR,
        RANGES_LR,
        QuantizeConfig,
        quantize_from_photos,
        summary,
    )
    from qaie.runtime.litert import parse_size

    out = Path(args.out)
    if args.json:
        check_writable(Path(args.json), overwrite=True)
    photos = Path(args.photos)
    if not photos.is_dir():
        raise QaieError(f"{photos}: not a folder of photos")
    config = QuantizeConfig(
        checkpoint=Path(args.checkpoint),
        photos=photos,
        size=parse_size(args.size, "--size"),
        out=out,
        work=Path(args.work) if args.work else out.with_name(out.name + ".work"),
        qat_epochs=args.qat_epochs,
        shrink=args.shrink,
        lr=args.lr if args.lr is not None else LABEL_FREE_LR,
        learn_ranges=RANGES_LR if args.learn_ranges is None else args.learn_ranges or None,
        crops=args.crops,
        test_limit=args.test_limit,
        norm_passes=args.norm_passes,
    )
    result = quantize_from_photos(config)
    f, p = result.fidelity, result.parity.overall
    print(f"wrote {result.out} (INT8 of {result.checkpoint})")
    held_out = f"{f.n_images} held-out photos"
    if result.crops > 1:
        held_out = f"{f.n_images} held-out windows ({result.crops} of each of {result.test_photos} photos)"
    print(f"  fidelity to FP32 on {held_out} at {args.size}: PSNR {f.psnr:.2f} dB  SSIM {f.ssim:.4f}")
    if result.ptq_fidelity is not None:
        print(f"  (PTQ alone: PSNR {result.ptq_fidelity.psnr:.2f} dB)")
    if result.validation:
        scores = ", ".join(f"{k.upper()} {v:.2f}" for k, v in result.validation.items())
        print(f"  chosen on the validation photos (each file's PSNR to FP32, dB): {scores}")
    identical = " (identical)" if p.max_abs_lsb == 0 else ""
    print(f"  parity with its checkpoint: PSNR {p.psnr:.2f} dB, max {p.max_abs_lsb} LSB{identical}")
    print("  minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in result.minutes.items()))
    if args.json:
        write_text_atomic(args.json, dumps(summary(result)))


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="PTQ: calibrate an FP32 checkpoint into an INT8 (PTQ) checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", help="FP32 checkpoint")
    p.add_argument(
        "--data", required=True, help=f"data spec: {SPEC_SYNTAX}; crops of its training split are used"
    )
    p.add_argument("--images", type=int, default=128, help="calibration crops (default 128)")
    p.add_argument(
        "--crop",
        default="100",
        metavar="N|HxW",
        help="crop size (default 100, as DPED; HxW for photos: data, e.g. the size the model will run at)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the crops and degradations")
    p.add_argument(
        "--equalize",
        action="store_true",
        help="first bring each norm's input channels to one range (the same function; as `qaie quantize` "
        "does): for models whose flat photos lose their norm statistics, e.g. imported ones",
    )
    add_norm_passes(p, default=None)
    p.add_argument("--out", required=True, help="PTQ checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_calibrate)


def add_norm_passes(p: argparse.ArgumentParser, default: int | None) -> None:
    """`--norm-passes`: 2 for `qaie quantize` (measured better everywhere it was tried), the
    checkpoint's form for `qaie calibrate` and `qaie train` (None: its --ranges checkpoint's),
    which the demo and the shipped model use."""
    p.add_argument(
        "--norm-passes",
        type=int,
        choices=(1, 2),
        default=default,
        help=f"2{' (default)' if default == 2 else ''}: each norm takes its statistics a second time from its "
        "normalised map, the same FP32 function with int8 statistics fitted to each map (+1.6-2.3 dB on the "
        "official weights, 6%% slower); 1: the plain form"
        + ("" if default else "; default: the checkpoint's")
        + " (docs/results.md, 'Norms in two passes')",
    )


def _run_calibrate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable
    from qaie.quant.calibrate import calibrate_checkpoint
    from qaie.runtime.litert import parse_size

    check_writable(Path(args.out), args.overwrite)
    crop = parse_size(args.crop, "--crop")
    calibrate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        images=args.images,
        crop=crop,
        seed=args.seed,
        equalize=args.equalize,
        norm_passes=args.norm_passes,
    )
    equalized = ", norm inputs equalized" if args.equalize else ""
    print(f"wrote {args.out} (PTQ, {args.images} training crops of {args.data}{equalized})")
