"""`qaie info`, `qaie env` and `qaie camera-stats`: facts about a network, the installation, the camera model."""

from __future__ import annotations

import argparse

from qaie.cli.common import add_model_args, model_config_from_args, print_json_or_lines


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and MACs per pixel of a network width")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from qaie.nn.model import EnhanceNet, macs_per_pixel, param_count

    config = model_config_from_args(args)
    data = {"params": param_count(EnhanceNet(config)), "macs_per_pixel": macs_per_pixel(config)}
    print_json_or_lines(data, args.json)


def add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="versions a bug report needs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_env)


def _run_env(args: argparse.Namespace) -> None:
    from qaie.versions import versions

    print_json_or_lines(versions(), args.json)


def add_camera_stats(sub: argparse._SubParsersAction) -> None:
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
