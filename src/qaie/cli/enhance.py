"""`qaie enhance`, `qaie figure` and `qaie models`: running a model on photos, and the shipped models.

Torch-free at import, like every CLI module: a `.tflite` model never imports torch."""

from __future__ import annotations

import argparse
import sys

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError
from qaie.jsonio import dumps


def add_enhance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enhance", help="enhance photos of any size with an exported model")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--out", required=True, help="output file (one input file) or folder")
    p.add_argument(
        "--model",
        help="FILE.tflite, .onnx or .pte, or a checkpoint (.ckpt, .pt, .pth) (default: the model shipped in the package)",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1..100 (default 95)")
    p.add_argument("--format", help="output format for a folder: jpg, png, ... (default: the input's)")
    p.add_argument("--threads", help="LiteRT interpreter threads (default: all cores)")
    p.add_argument(
        "--tile",
        metavar="HxW|none",
        help="window size: one of the .tflite's sizes (default: the largest that fits); "
        "none: a checkpoint on the whole photo in one pass (the reference)",
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        metavar="GB",
        help=".onnx: photos whose one pass would take more memory run in the file's stages "
        "(default 1.5; the other formats always run in bounded memory)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(handler=_run_enhance)


def _run_enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qaie.progress import progress
    from qaie.quant.predict import open_model
    from qaie.runtime.enhance import enhance_files, plan_jobs
    from qaie.runtime.litert import parse_counts, parse_size

    whole = args.tile is not None and args.tile.strip().lower() == "none"
    tile = parse_size(args.tile, "--tile") if args.tile and not whole else None
    threads = parse_counts(args.threads, "--threads")[0] if args.threads else None
    model = open_model(args.model, threads, tile, whole=whole)
    if args.memory_budget is not None:
        if not hasattr(model, "memory_budget") or args.memory_budget <= 0:
            raise QaieError("--memory-budget takes a positive number of GB, for an .onnx model")
        model.memory_budget = args.memory_budget * 1e9
    jobs = plan_jobs(args.inputs, args.out, fmt=args.format, overwrite=args.overwrite)
    single, failed = len(jobs) == 1, 0
    with progress(total=len(jobs), unit="tile" if single else "image", disable=None) as bar:

        def on_tile(done: int, total: int) -> None:  # one photo: its tiles are the progress
            if single:
                bar.total = total
                bar.update(done - bar.n)

        for result in enhance_files(jobs, model, quality=args.quality, tile=tile, progress=on_tile):
            if result.error:
                failed += 1
                tqdm.write(f"qaie enhance: error: {result.error}", file=sys.stderr)
            elif result.note:
                tqdm.write(f"qaie enhance: warning: {result.job.src}: {result.note}", file=sys.stderr)
            if not single:
                bar.update()
    if failed < len(jobs):
        print(
            f"wrote {jobs[0].dst}"
            if single
            else f"wrote {len(jobs) - failed} of {len(jobs)} images to {args.out}"
        )
    return 2 if failed else 0


def add_figure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figure", help="before/after figure of a model on the builtin photos (README)")
    p.add_argument("out", help="image file to write (.png or .jpg)")
    p.add_argument("--model", help="FILE.tflite, .onnx or .pte, or a checkpoint (default: the shipped model)")
    p.add_argument("--data", default="builtin", help=f"data spec: {SPEC_SYNTAX} (default builtin)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="default test")
    p.add_argument("--images", type=int, default=3, help="rows (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_figure)


def _run_figure(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qaie.atomic import check_writable
    from qaie.experiment.report import before_after_figure

    out = Path(args.out)
    check_writable(out, args.overwrite)
    before_after_figure(out, args.model, data=args.data, split=args.split, images=args.images)
    print(f"wrote {out}")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models shipped in the package, with their cards")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the cards")
    p.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from qaie.runtime.models import MODELS_DIR, shipped_models

    models = shipped_models()
    if args.json:
        print(dumps([m.summary() for m in models]), end="")
        return 0
    if not models:
        print(f"no model is installed in the package ({MODELS_DIR})")
    for m in models:
        print(f"{m.name}  ({m.path}, {m.file_bytes / 1e6:.2f} MB)\n")
        print(m.card or "(no model card)\n")
    return 0
