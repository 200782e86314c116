"""`qaie export`, `qaie import` and `qaie inspect`: checkpoints to deployed files and back, and
what is inside a deployed file."""

from __future__ import annotations

import argparse

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError
from qaie.jsonio import dumps
from qaie.runtime import registry


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="convert a checkpoint to LiteRT .tflite, ONNX .onnx or ExecuTorch .pte (FP32 or INT8)"
    )
    p.add_argument("checkpoint", metavar="CKPT", help="FP32, QAT or PTQ checkpoint")
    p.add_argument("--format", required=True, choices=("fp32", "int8"), help="INT8 keeps QAT/PTQ scales")
    p.add_argument(
        "--size",
        metavar="HxW[,HxW...]",
        help="input sizes, one signature each (.tflite, .pte; .onnx: any size)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE.tflite|FILE.onnx|FILE.pte",
        help="the runtime follows the extension; sidecar JSON goes to FILE.EXT.json",
    )
    p.add_argument(
        "--runtime",
        choices=tuple(r.name for r in registry.RUNTIMES),
        help="must agree with --out's extension",
    )
    p.add_argument(
        "--calibrate",
        metavar="SPEC",
        help=f"INT8 from an FP32 checkpoint: PTQ on this data spec: {SPEC_SYNTAX}",
    )
    p.add_argument("--calibrate-images", type=int, default=128, help="PTQ training crops (default 128)")
    p.add_argument(
        "--calibrate-crop",
        default="100",
        metavar="N|HxW",
        help="PTQ crop size (default 100, as DPED; HxW for photos: data, e.g. the --size it will run at)",
    )
    p.add_argument("--uint8-io", action="store_true", help="INT8 .tflite: uint8 input/output instead of int8")
    p.add_argument(
        "--no-stages",
        action="store_true",
        help=".tflite, .pte: only the whole-image signatures: larger photos are then tiled, each tile "
        "normalised by its own statistics; .onnx: no stage files, every photo in one pass, memory "
        "growing with its size (default: also the stages, for whole-photo output in bounded memory)",
    )
    p.add_argument(
        "--no-phases",
        action="store_true",
        help="each nearest 2x upsample + conv3x3 as it is (default: as four 2x2 phase "
        "convolutions, the same FP32 function in 4/9 of its multiply-adds, and up1 + head folded into "
        "one convolution; INT8 quantizes the new kernels from the trained weights; .onnx: its stages "
        "only, its one pass takes any size)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=_run_export)


def _export_runtime(args: argparse.Namespace):  # -> registry.Runtime
    """The runtime `qaie export` writes for: --out's extension (other commands tell files by it)."""
    from pathlib import Path

    out = Path(args.out)
    runtime = registry.find(out)
    if runtime is None:
        raise QaieError(
            f"{out}: an exported model's name must end in {', '.join(registry.DEPLOYED_SUFFIXES)}"
        )
    if args.runtime and args.runtime != runtime.name:
        raise QaieError(f"{out}: a {out.suffix} file is for {runtime.name}, not --runtime {args.runtime}")
    runtime.refuse_options(
        out,
        {
            registry.UINT8_IO: args.uint8_io,
            registry.NO_STAGES: args.no_stages,
            registry.NO_PHASES: args.no_phases,
        },
    )
    if registry.SIZE not in runtime.options and args.size:
        raise QaieError(f"--size: an {out.suffix} file takes any size (dynamic H and W); drop --size")
    if registry.SIZE in runtime.options and not args.size:
        raise QaieError(f"--size is required for a {out.suffix} file (e.g. --size 512x512)")
    return runtime


def _run_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.quant.checkpoint import load_model
    from qaie.runtime.litert import parse_sizes

    runtime = _export_runtime(args)
    out = Path(args.out)
    runtime.check_output(out, args.overwrite)
    sizes = parse_sizes(args.size, "--size") if args.size else None
    loaded = load_model(args.checkpoint)
    result = runtime.export(
        loaded.net,
        args.format,
        out,
        sizes=sizes,
        calibration=_calibration(args, loaded),
        source_checkpoint=str(args.checkpoint),
        **{
            registry.UINT8_IO: args.uint8_io,
            registry.NO_STAGES: args.no_stages,
            registry.NO_PHASES: args.no_phases,
        },
    )
    kind = f"int8 ({result.quant})" if result.quant else "fp32"
    print(
        f"wrote {result.path} ({kind}, {result.file_bytes} bytes, {result.seconds:.1f} s) and {result.sidecar}"
    )
    print("\n".join(result.summary()))


def _calibration(args: argparse.Namespace, loaded):  # -> list[Tensor] | None
    """PTQ batches for an INT8 export of an FP32 checkpoint (None otherwise)."""
    if args.format != "int8" or loaded.quant is not None:
        return None
    if not args.calibrate:
        raise QaieError(f"{args.checkpoint}: FP32 checkpoint; INT8 needs PTQ data, pass --calibrate SPEC")
    from qaie.quant.calibrate import calibration_batches
    from qaie.runtime.litert import parse_size

    crop = parse_size(args.calibrate_crop, "--calibrate-crop")
    return calibration_batches(args.calibrate, images=args.calibrate_images, crop=crop)


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="the paper's official INT8 .tflite, or the authors' training .ckpt, as an FP32 checkpoint",
    )
    p.add_argument(
        "model",
        metavar="FILE",
        help="an INT8 LiteRT file of the paper's network, or a Lightning checkpoint (.ckpt, .pth, .pt) "
        "of the authors' training code",
    )
    p.add_argument("--out", required=True, metavar="CKPT", help="FP32 checkpoint to write")
    p.add_argument(
        "--no-output-residual",
        action="store_true",
        help="the checkpoint is their hybrid_ablate_residual variant (its weights cannot tell)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_import)


def _run_import(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable
    from qaie.nn.model import param_count
    from qaie.quant.importer import import_checkpoint

    check_writable(Path(args.out), args.overwrite)
    imported = import_checkpoint(args.model, args.out, False if args.no_output_residual else None)
    config, source = imported.config, imported.source
    ablated = [
        name
        for name, kept in (
            ("encoder refiners", config.encoder_refiners),
            ("fusion refiners", config.fusion_refiners),
            ("output residual", config.output_residual),
        )
        if not kept
    ]
    print(
        f"wrote {args.out} (FP32, width {config.width}, {param_count(imported.net):,} parameters"
        f"{''.join(f', no {name}' for name in ablated)}; "
        f"from {source['file']} sha256 {source['sha256'][:12]})"
    )


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="op table of a .tflite, .onnx or .pte: dtypes, float ops, quantize/dequantize ops"
    )
    p.add_argument("model", metavar="FILE.tflite|FILE.onnx|FILE.pte")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> None:
    runtime = registry.find(args.model) or registry.RUNTIMES[0]  # LiteRT's reader says what else it is
    table = runtime.inspect(args.model)
    print(dumps(table.to_json()) if args.json else runtime.format_table(table), end="" if args.json else "\n")
