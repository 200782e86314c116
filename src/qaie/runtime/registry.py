"""Model files by extension: the one place a file is mapped to its runtime.

Each deployed format is one `Runtime` entry: the suffixes it owns, how to open a file of it for
inference, how to inspect it, how to export to it and which export options it takes. Every
command (enhance, evaluate, parity, bench, inspect, export, quantize) asks this module, so a
fourth runtime is one new module plus one line in `RUNTIMES`. Entries name their code as
"module:attribute" strings, imported on first use: the torch-based ExecuTorch runner is
registered here while `qaie.runtime` itself stays torch-free.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qaie.errors import QaieError

if TYPE_CHECKING:
    from qaie.runtime.litert import TileModel

# Export options a format may take (`qaie export` flags without the dashes, as argparse names them).
SIZE, UINT8_IO, NO_STAGES, NO_PHASES = "size", "uint8_io", "no_stages", "no_phases"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")  # training checkpoints (PyTorch), not deployed files


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Runtime:
    """One deployed format.

    Args:
        name: the `qaie export --runtime` value.
        suffixes: file extensions (lower case) it owns.
        runner: "module:class" called as (path, num_threads) -> a `TileModel`; raises QaieError
            for a file that is missing, corrupt, truncated or empty.
        inspector: "module:function" path -> its op table (`qaie inspect`; `.to_json()`).
        formatter: "module:function" op table -> the text `qaie inspect` prints.
        exporter: "module:function" (source, fmt, sizes, out, **options) -> `ExportResult`.
        output_check: "module:function" (out, overwrite): fails before an export's work.
        options: export options it takes beyond the common ones (SIZE, UINT8_IO, NO_STAGES, NO_PHASES).
        native: the module its runner loads (`qaie bench` imports it before measuring memory).
    """

    name: str
    suffixes: tuple[str, ...]
    runner: str
    inspector: str
    formatter: str
    exporter: str
    output_check: str
    options: frozenset[str]
    native: str

    def open(self, path: str | os.PathLike, num_threads: int | None = None) -> TileModel:
        return _load(self.runner)(path, num_threads)

    def inspect(self, path: str | os.PathLike) -> Any:
        return _load(self.inspector)(Path(path))

    def format_table(self, table: Any) -> str:
        return _load(self.formatter)(table)

    def export(
        self,
        source: Any,
        fmt: str,
        out: Path,
        *,
        sizes: list | None = None,
        calibration: Any = None,
        source_checkpoint: str | None = None,
        **options: bool,
    ) -> Any:
        """Write `source` (an FP32 EnhanceNet or a QAT/PTQ graph) to `out` in this format.
        `options` are UINT8_IO / NO_STAGES / NO_PHASES flags; one this format does not take is refused."""
        self.refuse_options(out, options)
        kwargs: dict[str, Any] = {"calibration": calibration, "source_checkpoint": source_checkpoint}
        if UINT8_IO in self.options:
            kwargs["uint8_io"] = bool(options.get(UINT8_IO))
        if NO_STAGES in self.options:
            kwargs["stages"] = not options.get(NO_STAGES)
        if NO_PHASES in self.options:
            kwargs["phases"] = not options.get(NO_PHASES)
        args = (source, fmt, sizes, out) if SIZE in self.options else (source, fmt, out)
        return _load(self.exporter)(*args, **kwargs)

    def check_output(self, out: Path, overwrite: bool) -> None:
        _load(self.output_check)(out, overwrite)

    def refuse_options(self, out: Path, given: dict[str, object]) -> None:
        """One line for an export option this format does not take (`given`: option -> value)."""
        for option, value in given.items():
            if value and option not in self.options:
                flag = "--" + option.replace("_", "-")
                owners = " ".join(s for r in RUNTIMES if option in r.options for s in r.suffixes)
                raise QaieError(
                    f"{out}: {flag} applies to {owners} exports only; drop it for a {out.suffix} file"
                )


RUNTIMES = (
    Runtime(
        "litert", (".tflite",), "qaie.runtime.litert:TFLiteModel", "qaie.quant.tflite_ops:inspect_tflite",
        "qaie.quant.tflite_ops:format_table", "qaie.quant.export:export_tflite", "qaie.quant.export:check_output",
        frozenset({SIZE, UINT8_IO, NO_STAGES, NO_PHASES}), "ai_edge_litert.interpreter",
    ),
    Runtime(
        "onnx", (".onnx",), "qaie.runtime.onnxrt:OnnxModel", "qaie.runtime.onnxrt:inspect_onnx",
        "qaie.runtime.onnxrt:format_onnx_table",
        "qaie.quant.export_onnx:export_onnx", "qaie.quant.export_onnx:check_onnx_output",
        frozenset({NO_STAGES, NO_PHASES}), "onnxruntime",
    ),
    Runtime(
        "executorch", (".pte",), "qaie.quant.export_executorch:PteModel",
        "qaie.quant.export_executorch:inspect_pte", "qaie.quant.export_executorch:format_pte_table",
        "qaie.quant.export_executorch:export_pte",
        "qaie.quant.export_executorch:check_pte_output", frozenset({SIZE, NO_STAGES, NO_PHASES}),
        "executorch.runtime",
    ),
)  # fmt: skip
DEPLOYED_SUFFIXES = tuple(s for r in RUNTIMES for s in r.suffixes)


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def find(path: str | os.PathLike) -> Runtime | None:
    """The runtime of a deployed file by its extension; None for any other file."""
    return next((r for r in RUNTIMES if _suffix(path) in r.suffixes), None)


def runtime(path: str | os.PathLike) -> Runtime:
    """The runtime of a deployed file; one line naming the formats for any other extension."""
    found = find(path)
    if found is None:
        raise QaieError(
            f"{path}: not an exported model ({_suffix(path) or 'no extension'!r}); pass a "
            f"{', '.join(DEPLOYED_SUFFIXES)} file"
        )
    return found


def by_name(name: str) -> Runtime:
    return next(r for r in RUNTIMES if r.name == name)


def is_deployed(path: str | os.PathLike) -> bool:
    return find(path) is not None


def is_checkpoint_name(path: str | os.PathLike) -> bool:
    """A name training checkpoints use (`.ckpt`, `.pt`, `.pth`)."""
    return _suffix(path) in CHECKPOINT_SUFFIXES


def open_deployed(path: str | os.PathLike, num_threads: int | None = None) -> TileModel:
    """An exported file in its runtime: LiteRT, ONNX Runtime or ExecuTorch (XNNPACK)."""
    return runtime(path).open(path, num_threads)
