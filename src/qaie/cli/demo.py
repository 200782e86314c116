"""`qaie demo` and `qaie report`: FP32 vs PTQ vs QAT end to end, and its report."""

from __future__ import annotations

import argparse
import sys

from qaie.cli.common import add_model_args, model_config_from_args
from qaie.data.spec import SPEC_SYNTAX


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="FP32 vs PTQ INT8 vs QAT INT8 end to end, measured on the .tflite files")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (re-running resumes)")
    p.add_argument(
        "--data",
        help=f"data spec: {SPEC_SYNTAX} (photos: has no targets to train on; "
        "default builtin: runs anywhere, no downloads)",
    )
    p.add_argument("--quick", action="store_true", help="tiny network and schedule: a minute or two")
    p.add_argument("--overwrite", action="store_true", help="replace a DIR made with other settings")
    add_model_args(p)
    p.set_defaults(width=None)  # the preset's width (32, or 8 with --quick) unless given
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--epochs", type=int, help="FP32 epochs")
    p.add_argument("--lr", type=float, help="FP32 peak learning rate")
    p.add_argument("--qat-epochs", type=int, help="QAT fine-tuning epochs")
    p.add_argument("--qat-lr", type=float, help="QAT peak learning rate")
    p.add_argument("--batch-size", type=int, help="crops per step")
    p.add_argument("--crop", type=int, help="training crop size")
    p.add_argument("--repeats", type=int, help="training crops per image per epoch")
    p.add_argument("--calibrate-images", type=int, help="PTQ calibration crops")
    p.add_argument("--export-size", metavar="HxW[,HxW...]", help="signatures of the .tflite files")
    p.add_argument("--bench-size", metavar="HxW[,HxW...]", help="benchmarked frame sizes")
    p.add_argument("--threads", help="benchmarked thread counts, e.g. 1,2")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from qaie.experiment.demo import demo_config, run_demo
    from qaie.runtime.litert import parse_counts, parse_sizes

    if args.width is None:
        args.width = demo_config(args.quick).model.width
    config = demo_config(
        args.quick,
        data=args.data,
        model=model_config_from_args(args),
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        batch_size=args.batch_size,
        crop=args.crop,
        repeats=args.repeats,
        calibrate_images=args.calibrate_images,
        export_sizes=tuple(parse_sizes(args.export_size, "--export-size")) if args.export_size else None,
        bench_sizes=tuple(parse_sizes(args.bench_size, "--bench-size")) if args.bench_size else None,
        bench_threads=tuple(parse_counts(args.threads, "--threads")) if args.threads else None,
    )
    result = run_demo(
        config, args.out, overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr)
    )
    _print_results_table(result.report.markdown)
    print(
        f"{result.out_dir}: results.json, {result.report.html.name}, {result.report.markdown.name} "
        f"({result.wall_s:.0f} s)"
    )


def _print_results_table(markdown) -> None:
    """The report's results table (its Markdown table lines)."""
    for line in markdown.read_text().splitlines():
        if line.startswith("|"):
            print(line)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.html and report.md of a demo folder from results.json")
    p.add_argument("dir", metavar="DIR", help="a `qaie demo` run folder")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.experiment.report import build_report

    result = build_report(Path(args.dir))
    _print_results_table(result.markdown)
    print(f"wrote {result.html} and {result.markdown} ({len(result.figures)} figures)")
