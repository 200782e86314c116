"""The `qaie` command line: each subcommand is a parser plus a few lines calling the library.

One module per group of commands (info, enhance, serve, evaluate, train, quantize, export, demo), each
with its `add_*` parser builders and `_run_*` handlers; common holds the argument helpers that
several commands share. This module orders the commands and runs one.

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

from qaie.cli.demo import add_demo, add_report
from qaie.cli.enhance import add_enhance, add_figure, add_models
from qaie.cli.evaluate import add_bench, add_evaluate, add_parity
from qaie.cli.export import add_export, add_import, add_inspect
from qaie.cli.info import add_camera_stats, add_env, add_info
from qaie.cli.quantize import add_calibrate, add_quantize
from qaie.cli.serve import add_serve
from qaie.cli.train import add_train
from qaie.errors import QaieError, QaieWarning

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_info,
    add_env,
    add_enhance,
    add_serve,
    add_bench,
    add_train,
    add_evaluate,
    add_camera_stats,
    add_calibrate,
    add_quantize,
    add_export,
    add_import,
    add_inspect,
    add_parity,
    add_demo,
    add_report,
    add_models,
    add_figure,
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
