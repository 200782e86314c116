"""`qaie export`, `qaie import` and `qaie inspect`: checkpoints to deployed files and back, and
what is inside a deployed file."""

from __future__ import annotations

import argparse

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError
from qaie.jsonio import dumps

EXPORT_RUNTIMES = {".tflite": "litert", ".onnx": "onnx", ".pte": "executorch"}


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
        "--runtime", choices=tuple(EXPORT_RUNTIMES.values()), help="must agree with --out's extension"
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
        help=".tflite: only the whole-image signatures: larger photos are then tiled, each tile "
        "normalised by its own statistics (default: also the stage signatures, for whole-photo output)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=_run_export)


def _export_runtime(args: argparse.Namespace) -> str:
    """The runtime `qaie export` writes for: --out's extension (other commands tell files by it)."""
    from pathlib import Path

    suffix = Path(args.out).suffix.lower()
    runtime = EXPORT_RUNTIMES.get(suffix)
    if runtime is None:
        raise QaieError(f"{args.out}: an exported model's name must end in {', '.join(EXPORT_RUNTIMES)}")
    if args.runtime and args.runtime != runtime:
        raise QaieError(f"{args.out}: a {suffix} file is for {runtime}, not --runtime {args.runtime}")
    for flag, given in (("--uint8-io", args.uint8_io), ("--no-stages", args.no_stages)):
        if given and runtime != "litert":  # the ONNX and ExecuTorch exports have no such option
            raise QaieError(
                f"{args.out}: {flag} applies to .tflite exports only; drop it for a {suffix} file"
            )
    if runtime == "onnx" and args.size:
        raise QaieError("--size: an .onnx file takes any size (dynamic H and W); drop --size")
    if runtime != "onnx" and not args.size:
        raise QaieError(f"--size is required for a {suffix} file (e.g. --size 512x512)")
    return runtime


def _run_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.quant.checkpoint import load_model
    from qaie.quant.export import check_output, export_tflite
    from qaie.runtime.litert import parse_sizes

    runtime = _export_runtime(args)
    if runtime != "litert":
        _run_export_other(args, runtime)
        return
    out = Path(args.out)
    check_output(out, args.overwrite)
    sizes = parse_sizes(args.size, "--size")
    loaded = load_model(args.checkpoint)
    result = export_tflite(
        loaded.net,
        args.format,
        sizes,
        out,
        uint8_io=args.uint8_io,
        calibration=_calibration(args, loaded),
        source_checkpoint=str(args.checkpoint),
        stages=not args.no_stages,
    )
    kind = f"int8 ({result.quant})" if result.quant else "fp32"
    print(
        f"wrote {result.path} ({kind}, {result.file_bytes} bytes, {result.seconds:.1f} s) and {result.sidecar}"
    )
    print(f"  signatures: {', '.join(result.signatures)}")
    if result.stages:
        print(
            f"  stages: {len(result.stages['stages'])} per size (whole-photo output in windows of each size)"
        )
    io = result.io
    q = f" scale {io['scale']:.8g} zero point {io['zero_point']}" if io["scale"] else ""
    print(f"  I/O: {io['input']} -> {io['output']}, (1, H, W, 3) {io['layout']} {io['dtype']}{q}")
    print(
        f"  ops: {result.ops.total_ops}, float {result.ops.float_ops}, quantize {result.ops.quantize_ops}"
        f" (requantize {result.ops.requantize_ops}), dequantize {result.ops.dequantize_ops}"
    )


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


def _run_export_other(args: argparse.Namespace, runtime: str) -> None:
    """`qaie export` to ONNX (any size) or ExecuTorch (one method per --size)."""
    from pathlib import Path

    from qaie.quant.checkpoint import load_model

    out = Path(args.out)
    if runtime == "onnx":
        from qaie.quant.export_onnx import check_onnx_output, export_onnx

        check_onnx_output(out, args.overwrite)
        loaded = load_model(args.checkpoint)
        result = export_onnx(
            loaded.net, args.format, out, calibration=_calibration(args, loaded),
            source_checkpoint=str(args.checkpoint),
        )  # fmt: skip
        sizes = "any size (dynamic H, W)"
    else:
        from qaie.quant.export_executorch import check_pte_output, export_pte
        from qaie.runtime.litert import parse_sizes

        check_pte_output(out, args.overwrite)
        size_list = parse_sizes(args.size, "--size")
        loaded = load_model(args.checkpoint)
        result = export_pte(
            loaded.net, args.format, size_list, out, calibration=_calibration(args, loaded),
            source_checkpoint=str(args.checkpoint),
        )  # fmt: skip
        sizes = "methods " + ", ".join(result.methods)
    kind = f"int8 ({result.quant})" if result.quant else "fp32"
    print(f"wrote {out} ({kind}, {result.file_bytes} bytes, {result.seconds:.1f} s) and {result.sidecar}")
    io = result.io
    q = f" scale {io['scale']:.8g} zero point {io['zero_point']}" if io["scale"] else ""
    print(f"  {sizes}; I/O: {io['input']} -> {io['output']}, {io['layout']} {io['dtype']}{q}")


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
    from qaie.quant.tflite_ops import format_table, inspect_tflite

    suffix = args.model.lower().rsplit(".", 1)[-1]
    if suffix == "onnx":
        from qaie.runtime import onnxrt

        inspect_tflite, format_table = onnxrt.inspect_onnx, onnxrt.format_onnx_table
    elif suffix == "pte":
        from qaie.quant import export_executorch

        inspect_tflite, format_table = export_executorch.inspect_pte, export_executorch.format_pte_table
    table = inspect_tflite(args.model)
    print(dumps(table.to_json()) if args.json else format_table(table), end="" if args.json else "\n")
