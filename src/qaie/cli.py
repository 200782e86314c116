"""The `qaie` command line: each subcommand is a parser plus a few lines calling the library.

Heavy modules (torch, litert) are imported inside the handlers, so `qaie enhance` with a
`.tflite` model never imports torch. User errors (QaieError) print one line on stderr and
exit with 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable

from qaie.data.spec import SPEC_SYNTAX
from qaie.errors import QaieError, QaieWarning
from qaie.jsonio import dumps


def _print_json_or_lines(data: dict, as_json: bool) -> None:
    if as_json:
        print(dumps(data), end="")
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


# --- info -------------------------------------------------------------------------------------


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and MACs per pixel of a network width")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_info)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Width and the paper's ablation switches, shared by every command that builds a network."""
    p.add_argument("--width", type=int, default=32, help="base channel count c (default 32)")
    p.add_argument("--no-encoder-refiners", action="store_true", help="ablation: 3x3 conv instead")
    p.add_argument("--no-fusion-refiners", action="store_true", help="ablation: 3x3 conv instead")
    p.add_argument("--no-output-residual", action="store_true", help="ablation: y = clamp(delta)")


def model_config_from_args(args: argparse.Namespace):  # -> ModelConfig (lazy import)
    from qaie.config import ModelConfig

    return ModelConfig(
        width=args.width,
        encoder_refiners=not args.no_encoder_refiners,
        fusion_refiners=not args.no_fusion_refiners,
        output_residual=not args.no_output_residual,
    )


def _run_info(args: argparse.Namespace) -> None:
    from qaie.nn.model import EnhanceNet, macs_per_pixel, param_count

    config = model_config_from_args(args)
    data = {"params": param_count(EnhanceNet(config)), "macs_per_pixel": macs_per_pixel(config)}
    _print_json_or_lines(data, args.json)


# --- env --------------------------------------------------------------------------------------


def _add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="versions a bug report needs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_env)


def _run_env(args: argparse.Namespace) -> None:
    from qaie.versions import versions

    _print_json_or_lines(versions(), args.json)


# --- camera-stats -----------------------------------------------------------------------------


def _add_camera_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("camera-stats", help="compare the synthetic camera with real old-phone photos")
    p.add_argument("--real", required=True, metavar="DIR", help="real phone photos")
    p.add_argument("--clean", required=True, metavar="DIR", help="clean photos to degrade")
    p.add_argument("--limit", type=int, help="first N clean photos only")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled cameras (default 0)")
    p.add_argument("--out", metavar="FILE.md", help="write the Markdown table to FILE.md (default: print it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=_run_camera_stats)


def _run_camera_stats(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.data.camera_stats import compare, folder_images, to_markdown
    from qaie.data.degrade import CameraModel
    from qaie.progress import progress

    if args.out:
        check_writable(Path(args.out), overwrite=args.overwrite)
    real, clean = folder_images(Path(args.real)), folder_images(Path(args.clean), args.limit)
    with progress(total=len(real) + len(clean), unit="photo", disable=None) as bar:
        result = compare(real, clean, CameraModel(), seed=args.seed, progress=lambda _: bar.update())
    limit = f" --limit {args.limit}" if args.limit else ""
    command = f"qaie camera-stats --real {args.real} --clean {args.clean}{limit} --seed {args.seed}"
    page = to_markdown(result, command + (f" --out {args.out}" if args.out else ""))
    if args.out:
        write_text_atomic(args.out, page)
        print(f"wrote {args.out}")
    else:
        print(page, end="")


# --- enhance ----------------------------------------------------------------------------------


def _add_enhance(sub: argparse._SubParsersAction) -> None:
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


# --- bench ------------------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="latency and peak memory of a .tflite (LiteRT) or .onnx (ONNX Runtime); not .pte"
    )
    p.add_argument("model", metavar="FILE.tflite|FILE.onnx")
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


# --- train ------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--crop", type=int, default=100, help="training crop size (default 100, as DPED)")
    p.add_argument("--repeats", type=int, default=1, help="crops per image per epoch (default 1)")
    p.add_argument("--loss", default="paper", help="paper | msssim | l1 (default paper)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, crops, degradations, order")
    p.add_argument(
        "--val-crop", type=int, default=128, help="validation centre crop (default 128; 0: whole images)"
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
        help="QAT: calibrate the observers on training photos of this size first, then freeze them",
    )
    p.set_defaults(handler=_run_train)


def _add_quantize(sub: argparse._SubParsersAction) -> None:
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
        default=0,
        help="label-free QAT epochs after PTQ (default 0: PTQ only; measured so far it does not beat PTQ, "
        "docs/results.md)",
    )
    p.add_argument("--crop", type=int, default=512, help="QAT training crop side (default 512)")
    p.add_argument("--batch-size", type=int, default=2, help="QAT crops per step (default 2)")
    p.add_argument("--repeats", type=int, default=4, help="QAT crops per photo per epoch (default 4)")
    p.add_argument("--lr", type=float, default=1e-5, help="QAT learning rate (default 1e-5)")
    p.add_argument("--test-limit", type=int, help="fidelity on the first N test photos only")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON to OUT")
    p.set_defaults(handler=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable, write_text_atomic
    from qaie.experiment.quantize_photos import QuantizeConfig, quantize_from_photos, summary
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
        crop=args.crop,
        batch_size=args.batch_size,
        repeats=args.repeats,
        lr=args.lr,
        test_limit=args.test_limit,
    )
    result = quantize_from_photos(config)
    f, p = result.fidelity, result.parity.overall
    print(f"wrote {result.out} (INT8 of {result.checkpoint})")
    print(
        f"  fidelity to FP32 on {f.n_images} held-out photos at {args.size}: PSNR {f.psnr:.2f} dB  SSIM {f.ssim:.4f}"
    )
    if result.ptq_fidelity is not None:
        print(f"  (PTQ alone: PSNR {result.ptq_fidelity.psnr:.2f} dB)")
    identical = " (identical)" if p.max_abs_lsb == 0 else ""
    print(f"  parity with its checkpoint: PSNR {p.psnr:.2f} dB, max {p.max_abs_lsb} LSB{identical}")
    print("  minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in result.minutes.items()))
    if args.json:
        write_text_atomic(args.json, dumps(summary(result)))


def _run_train(args: argparse.Namespace) -> int:
    from qaie.experiment.train import FP32_LR, QAT_LR, TrainConfig, train

    config = TrainConfig(
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (QAT_LR if args.qat else FP32_LR),
        warmup_epochs=args.warmup_epochs,
        crop=args.crop,
        repeats=args.repeats,
        loss=args.loss,
        seed=args.seed,
        val_crop=args.val_crop or None,
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
    )
    result = train(model_config_from_args(args), config, args.out, resume=args.resume)
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


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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


# --- export / inspect / parity ---------------------------------------------------------------


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--out", required=True, help="PTQ checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(handler=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.atomic import check_writable
    from qaie.quant.calibrate import calibrate_checkpoint
    from qaie.runtime.litert import parse_size

    check_writable(Path(args.out), args.overwrite)
    crop = parse_size(args.crop, "--crop")
    calibrate_checkpoint(args.checkpoint, args.data, args.out, images=args.images, crop=crop, seed=args.seed)
    print(f"wrote {args.out} (PTQ, {args.images} training crops of {args.data})")


def _add_export(sub: argparse._SubParsersAction) -> None:
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


EXPORT_RUNTIMES = {".tflite": "litert", ".onnx": "onnx", ".pte": "executorch"}


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


def _add_import(sub: argparse._SubParsersAction) -> None:
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


def _add_inspect(sub: argparse._SubParsersAction) -> None:
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


def _add_parity(sub: argparse._SubParsersAction) -> None:
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


# --- demo / report ----------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
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


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.html and report.md of a demo folder from results.json")
    p.add_argument("dir", metavar="DIR", help="a `qaie demo` run folder")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qaie.experiment.report import build_report

    result = build_report(Path(args.dir))
    _print_results_table(result.markdown)
    print(f"wrote {result.html} and {result.markdown} ({len(result.figures)} figures)")


# --- main -------------------------------------------------------------------------------------


def _add_models(sub: argparse._SubParsersAction) -> None:
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


def _add_figure(sub: argparse._SubParsersAction) -> None:
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_env,
    _add_enhance,
    _add_bench,
    _add_train,
    _add_evaluate,
    _add_camera_stats,
    _add_calibrate,
    _add_quantize,
    _add_export,
    _add_import,
    _add_inspect,
    _add_parity,
    _add_demo,
    _add_report,
    _add_models,
    _add_figure,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qaie", description="Quantization-aware image enhancement: train, quantize, export, enhance."
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. QaieError (bad input) -> one line on stderr, exit 2; any other exception
    is a bug in qaie and keeps its traceback (exit 1). docs/reliability.md has the contract."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:  # native libraries' log lines too, here and in benchmark subprocesses
        os.environ["QAIE_DEBUG"] = "1"
    with warnings.catch_warnings():
        _route_warnings(args.command, args.debug)
        try:
            code = args.handler(args)
        except QaieError as err:
            if args.debug:
                raise
            print(f"qaie {args.command}: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"qaie {args.command}: interrupted", file=sys.stderr)
            return 130
    return int(code or 0)


def _route_warnings(command: str, debug: bool) -> None:
    """Each QaieWarning becomes one `qaie CMD: warning: ...` line (above any progress bar).
    Unless --debug, library noise a user cannot act on is hidden: torchao's log line for each
    CUDA kernel library it cannot load on a CPU, torch's about torchao's enum registration, and
    torchao's LeafSpec deprecation warning."""
    show = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, QaieWarning):
            from tqdm import tqdm

            tqdm.write(f"qaie {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_warning
    warnings.simplefilter("always", QaieWarning)
    if not debug:
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
