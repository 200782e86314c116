"""`qaie evaluate`, `qaie parity` and `qaie bench`: measuring a model's quality, its exported file's
agreement with its checkpoint, and its speed."""

from __future__ import annotations

import argparse

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError
from qaie.jsonio import dumps


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="PSNR/SSIM of a model (checkpoint, .tflite, .onnx or .pte) vs its input baseline"
    )
    p.add_argument("model", help="checkpoint (.ckpt, .pt, .pth) or exported model (.tflite, .onnx, .pte)")
    p.add_argument("--data", required=True, help=f"data spec: {SPEC_SYNTAX} (photos: needs --reference)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="default test")
    p.add_argument(
        "--crop", metavar="N|HxW", help="centre crop (default: whole images; HxW for photos: data)"
    )
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument(
        "--reference",
        metavar="REF",
        help="checkpoint or .tflite, .onnx, .pte: PSNR/SSIM against its output, not targets",
    )
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.data.datasets import VAL_SEED, make_dataset, parse_spec
    from qaie.experiment.evaluate import evaluate, predictor_for
    from qaie.runtime.litert import parse_size

    if args.json:
        check_writable(Path(args.json), overwrite=args.overwrite)
    spec = parse_spec(args.data)
    if spec.kind == "photos" and not args.reference:
        raise QaieError(
            f"{args.data}: photos have no targets; pass --reference REF (a checkpoint or .tflite)"
        )
    crop = parse_size(args.crop, "--crop") if args.crop else None
    predict = predictor_for(args.model)
    dataset = make_dataset(spec, args.split, crop=crop, seed=VAL_SEED, limit=args.limit)
    if args.reference:
        _run_fidelity(args, predict, dataset)
        return
    result = evaluate(predict, dataset, model=args.model, data=args.data, split=args.split)
    print(f"{args.model} on {args.data} ({args.split}, {result.n_images} images)")
    print(f"  model: PSNR {result.psnr:.3f} dB  SSIM {result.ssim:.4f}")
    print(f"  input: PSNR {result.input_psnr:.3f} dB  SSIM {result.input_ssim:.4f}  (baseline)")
    print(f"  convention: {result.convention}")
    if args.json:
        write_text_atomic(args.json, dumps(result.to_dict()))


def _run_fidelity(args: argparse.Namespace, predict, dataset) -> None:
    from qaie.atomic import write_text_atomic
    from qaie.experiment.evaluate import evaluate_fidelity, predictor_for

    reference = predictor_for(args.reference)
    result = evaluate_fidelity(
        predict, reference, dataset, model=args.model, reference_name=args.reference, data=args.data,
        split=args.split,
    )  # fmt: skip
    print(f"{args.model} vs {args.reference} on {args.data} ({args.split}, {result.n_images} images)")
    print(f"  fidelity: PSNR {result.psnr:.3f} dB  SSIM {result.ssim:.4f}")
    print(f"  convention: {result.convention}")
    if args.json:
        write_text_atomic(args.json, dumps(result.to_dict()))


def add_parity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parity",
        help="the PyTorch (quantized) model vs its exported .tflite, .onnx or .pte on the same images",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint the file was exported from")
    p.add_argument("model", metavar="FILE.tflite|FILE.onnx|FILE.pte")
    p.add_argument("--data", required=True, help=f"data spec: {SPEC_SYNTAX}; its validation split is used")
    p.add_argument("--limit", type=int, help="first N validation images only")
    p.add_argument("--json", nargs="?", const="-", metavar="OUT", help="JSON to OUT (or stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    p.set_defaults(handler=_run_parity)


def _run_parity(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.experiment.parity import run_parity

    to_file = args.json not in (None, "-")
    if to_file:
        check_writable(Path(args.json), args.overwrite)
    report = run_parity(Path(args.checkpoint), Path(args.model), args.data, limit=args.limit)
    data = report.to_json()
    if to_file:
        write_text_atomic(args.json, dumps(data))
    if args.json == "-":
        print(dumps(data), end="")
        return
    print(f"{args.model} vs {args.checkpoint} [{report.reference}], {report.images} images per size")
    for size, s in report.per_size.items():
        print(
            f"  {size}: PSNR {s.psnr:.2f} dB  mean |diff| {s.mean_abs_lsb:.3f} LSB  max {s.max_abs_lsb} LSB"
        )
    o = report.overall
    print(f"  parity_psnr {o.psnr:.2f} dB  mean |diff| {o.mean_abs_lsb:.3f} LSB  max {o.max_abs_lsb} LSB")


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency and peak memory of a .tflite (LiteRT), .onnx (ONNX Runtime) or .pte (ExecuTorch)",
    )
    p.add_argument("model", metavar="FILE.tflite|FILE.onnx|FILE.pte")
    p.add_argument(
        "--size",
        help="frame sizes HxW[,HxW...]; larger than exported = tiled (default: exported; "
        "required for .onnx, which takes any size)",
    )
    p.add_argument("--threads", default="1", help="thread counts, e.g. 1,2 (default 1)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per configuration (default 10)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 2; 1 with --whole)")
    p.add_argument("--json", nargs="?", const="-", metavar="OUT", help="JSON to OUT (or stdout, no table)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    p.add_argument(
        "--compare",
        metavar="OTHER.tflite",
        help="time FILE and OTHER alternately in one process and print FILE/OTHER (median ratio); "
        ".tflite files only",
    )
    p.add_argument(
        "--whole",
        metavar="HxW",
        help="time the whole-photo path (what `qaie enhance` runs, in stage windows) on a synthetic "
        "photo of HxW against one pass of the largest exported size, warm, in s/MP, and their ratio; "
        ".tflite with stage signatures only",
    )
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    import pathlib

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.runtime.bench import bench, compare, format_compare, format_table, format_whole, whole
    from qaie.runtime.litert import parse_counts, parse_size, parse_sizes

    if args.whole and (args.size or args.compare):
        raise QaieError("--whole times one photo size of one file; it takes no --size or --compare")
    sizes = parse_sizes(args.size, "--size") if args.size else None
    to_file = args.json not in (None, "-")
    if to_file:
        check_writable(pathlib.Path(args.json), args.overwrite)
    threads = parse_counts(args.threads, "--threads")
    warmup = args.warmup if args.warmup is not None else 1 if args.whole else 2
    if args.whole:
        report = whole(args.model, parse_size(args.whole, "--whole"), threads, runs=args.runs, warmup=warmup)
        table = format_whole(report)
    elif args.compare:
        report = compare(args.model, args.compare, sizes, threads, runs=args.runs, warmup=warmup)
        table = format_compare(report)
    else:
        report = bench(args.model, sizes, threads, runs=args.runs, warmup=warmup)
        table = format_table(report)
    if to_file:
        write_text_atomic(args.json, dumps(report.to_dict()))
    print(dumps(report.to_dict()) if args.json == "-" else table, end="" if args.json == "-" else "\n")
